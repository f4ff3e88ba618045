//! Reload, binary upgrade, log reopening and `tine signal`: none of them may cost
//! a client request.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};

const TWO_WORKERS: &str = "listen = [\"127.0.0.1:0\"]\nroot = \"{root}\"\nworkers = 2\n";

#[test]
fn reloads_under_load_lose_no_request_and_apply_the_new_configuration() {
    let server = Server::builder().config_only(TWO_WORKERS).start();
    server.write_file("v.txt", b"old");
    let load = Load::start(&server, 8, "/v.txt");
    server.wait_until("load flowing", |s| s["total"]["requests"].as_u64() > Some(200));
    for generation in 2..=4 {
        server.signal(libc::SIGHUP);
        server.wait_until("reload", |s| s["master"]["generation"] == generation);
        server.wait_until("new workers", |s| {
            s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "running")
        });
    }
    // Change the content the configuration points at: the newest workers serve it.
    let new_root = server.dir.path().join("www2");
    std::fs::create_dir(&new_root).unwrap();
    std::fs::write(new_root.join("v.txt"), b"new").unwrap();
    let text = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(
        server.config_path(),
        text.replace(server.root.to_str().unwrap(), new_root.to_str().unwrap()),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("reload", |s| s["master"]["generation"] == 5);
    wait_for("the new root to be served", || server.get("/v.txt").body == b"new");
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failures (first: {:?}) among {ok} responses",
        failures.len(),
        failures.first()
    );
    assert!(ok > 200);
    let stats = server.stats();
    assert_eq!(stats["master"]["reloads"], 4);
    assert_eq!(stats["master"]["reloads_failed"], 0);
    assert_eq!(stats["master"]["respawns"], 0);
    assert_eq!(stats["workers"].as_array().unwrap().len(), 2);
}

#[test]
fn an_invalid_configuration_is_refused_and_the_old_one_keeps_serving() {
    let server = Server::builder().config_only(TWO_WORKERS).start();
    server.write_file("a.txt", b"A");
    let pids = server.worker_pids();
    std::fs::write(server.config_path(), "workers = \"many\"\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("failed reload counted", |s| s["master"]["reloads_failed"] == 1);
    server.wait_for_log("reload failed");
    server.wait_for_log("tine.toml:1:");
    assert_eq!(server.worker_pids(), pids, "workers untouched");
    assert_eq!(server.get("/a.txt").body, b"A");
    assert_eq!(server.stats()["master"]["generation"], 1);
}

#[test]
fn a_reload_can_add_workers_and_a_listen_address() {
    let server = Server::builder().config_only(TWO_WORKERS).start();
    server.write_file("a.txt", b"A");
    let text = std::fs::read_to_string(server.config_path()).unwrap();
    let grown = text
        .replace("workers = 2", "workers = 3")
        .replace("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"{}\", \"127.0.0.1:0\"]", server.addr));
    std::fs::write(server.config_path(), grown).unwrap();
    server.signal(libc::SIGHUP);
    // The new workers can be running before the master counts the reload.
    let stats = server.wait_until("three workers and the reload counted", |s| {
        let ws = s["workers"].as_array().unwrap();
        ws.len() == 3 && ws.iter().all(|w| w["state"] == "running") && s["master"]["reloads"] == 1
    });
    assert_eq!(listening_sockets(server.addr.port()), 3, "the kept address gained a socket for the new slot");
    assert_eq!(server.get("/a.txt").body, b"A");
    assert_eq!(stats["master"]["reloads"], 1);
}

#[test]
fn a_draining_worker_answers_the_next_keep_alive_request_with_close() {
    let server = Server::builder()
        .config_only(&format!("{TWO_WORKERS}[timeouts]\nkeepalive_grace = \"30s\"\n"))
        .start();
    server.write_file("a.txt", b"A");
    let s = server.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).header("connection"), None);
    server.signal(libc::SIGHUP);
    server.wait_for_log("worker draining 1 connection(s)");
    w.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let last = read_response(&mut r, false);
    assert_eq!((last.status, last.header("connection")), (200, Some("close")));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn upgrade_hands_over_to_a_new_master_without_losing_counters() {
    let mut server = Server::builder().config_only(TWO_WORKERS).start();
    server.write_file("a.txt", b"A");
    for _ in 0..10 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    let old_master = server.master_pid();
    let load = Load::start(&server, 4, "/a.txt");
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit().success(), "the old master leaves once the new one serves");
    let new_master = server.pid_in_pid_file().expect("pid file");
    assert_ne!(new_master, old_master);
    assert!(!server.dir.path().join("tine.pid.oldbin").exists());
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{} failures (first: {:?}) among {ok}", failures.len(), failures.first());
    let stats = server.stats();
    assert_eq!(stats["master"]["pid"], new_master);
    assert!(stats["total"]["requests"].as_u64().unwrap() >= 10 + ok, "counters continued");
    for w in stats["workers"].as_array().unwrap() {
        assert_eq!(parent_pid(w["pid"].as_i64().unwrap() as i32), new_master);
    }
    assert_eq!(server.get("/a.txt").body, b"A");
}

#[test]
fn a_failed_upgrade_leaves_the_old_master_serving() {
    let server = Server::builder().config_only(TWO_WORKERS).start();
    server.write_file("a.txt", b"A");
    // The new binary reads the configuration on disk, which is now broken.
    std::fs::write(server.config_path(), "listen = [\"not an address\"]\n").unwrap();
    server.signal(libc::SIGUSR2);
    server.wait_for_log("upgrade failed, still serving");
    assert_eq!(server.pid_in_pid_file(), Some(server.master_pid()), "pid file restored");
    assert!(!server.dir.path().join("tine.pid.oldbin").exists());
    assert_eq!(server.get("/a.txt").body, b"A");
}

#[test]
fn usr1_reopens_the_access_log_for_logrotate() {
    let server =
        Server::builder().config_only(&format!("{TWO_WORKERS}access_log = \"access.log\"\n")).start();
    server.write_file("a.txt", b"A");
    let log = server.dir.path().join("access.log");
    assert_eq!(server.get("/a.txt?before").status, 200);
    wait_for("first line flushed", || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("?before")));
    let rotated = server.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    tine().args(["signal", "reopen", "--pid-file"]).arg(&server.pid_file).status().unwrap();
    server.wait_for_log("logs reopened");
    // Workers reopen on their own USR1; a request after that lands in the new file.
    wait_for("a line in the new file", || {
        let _ = server.get("/a.txt?after");
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("?after"))
    });
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"GET /a.txt?before HTTP/1.1\" 200 1 \"-\" \"-\""), "{old}");
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    }
}

#[test]
fn tine_signal_quit_stops_gracefully_and_explains_a_missing_pid_file() {
    let mut server = Server::start(1);
    let out = tine().args(["signal", "quit", "--pid-file"]).arg(&server.pid_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.wait_exit().success());
    let out = tine().args(["signal", "reload", "--pid-file"]).arg(&server.pid_file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is tine running?"));
}

/// The admin endpoint answers /metrics and a stream relays bytes to its echo.
fn admin_and_stream_work(server: &Server, when: &str) {
    let admin = admin_addr(server);
    let raw = exchange_raw(admin, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw), 200, "admin endpoint {when}");
    let stream = stream_addr(server, "echo");
    let s = connect(stream);
    let echoed = duplex(s.try_clone().unwrap(), s, b"through the stream");
    assert_eq!(echoed, b"through the stream", "stream {when}");
}

fn with_admin_and_stream(echo: std::net::SocketAddr) -> String {
    format!(
        "{TWO_WORKERS}admin_listen = \"127.0.0.2:0\"\n[[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n\
         [[stream]]\nlisten = \"127.0.0.3:0\"\nupstream = \"echo\"\n"
    )
}

#[test]
fn reloads_and_an_upgrade_keep_the_admin_endpoint_and_every_stream() {
    let mut server = Server::builder().config_only(&with_admin_and_stream(echo_server())).start();
    admin_and_stream_work(&server, "at start");
    for generation in 2..=4 {
        server.signal(libc::SIGHUP);
        server.wait_until("the reload", |s| {
            s["master"]["generation"] == generation
                && s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "running")
        });
        admin_and_stream_work(&server, &format!("after HUP number {}", generation - 1));
    }
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit().success(), "the old master leaves once the new one serves");
    admin_and_stream_work(&server, "after USR2");
}

#[test]
fn a_reload_opens_an_added_listener_and_closes_a_removed_one_everywhere() {
    let echo = echo_server();
    let server = Server::builder().config_only(TWO_WORKERS).start();
    std::fs::write(
        server.config_path(),
        with_admin_and_stream(echo).replace("{root}", server.root.to_str().unwrap()),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("the reload", |s| s["master"]["generation"] == 2);
    admin_and_stream_work(&server, "once a reload added them");
    let (admin, stream) = (admin_addr(&server), stream_addr(&server, "echo"));
    std::fs::write(server.config_path(), TWO_WORKERS.replace("{root}", server.root.to_str().unwrap()))
        .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("the reload", |s| s["master"]["generation"] == 3);
    // Closed in the master once the old workers are gone, and never held by
    // the new ones: connecting is refused, not left waiting in a queue.
    for addr in [admin, stream] {
        wait_for("the removed listener to refuse connections", || {
            std::net::TcpStream::connect(addr).is_err()
        });
    }
    assert_eq!(server.get("/").status, 403, "the kept listener still serves");
}
