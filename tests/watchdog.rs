//! The watchdog kills and replaces a worker whose event loop stopped turning.
//! The hang is injected by a test-only build feature, never by a client.
#![cfg(feature = "test-hooks")]

mod common;

use common::*;

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let server = Server::builder().config("[timeouts]\nwatchdog = \"1s\"\n").start();
    server.write_file("a.txt", b"A");
    let hung = server.worker_pids()[0];
    send_signal(hung, libc::SIGUSR2);
    let stats = server.wait_until("watchdog kill and respawn", |s| {
        s["master"]["watchdog_kills"] == 1
            && s["workers"][0]["state"] == "running"
            && s["workers"][0]["pid"] != hung
    });
    assert_eq!(stats["master"]["respawns"], 1);
    server.wait_for_log("has not turned its event loop");
    assert!(!process_running(hung));
    assert_eq!(server.get("/a.txt").body, b"A");
}
