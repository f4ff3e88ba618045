//! The process model end to end: master and pinned workers, master-held
//! SO_REUSEPORT sockets, respawn into the same slot, signals, orphans.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

#[test]
fn master_forks_named_pinned_workers_each_with_its_own_socket() {
    let server = Server::start(2);
    let master = server.master_pid();
    assert_eq!(comm(master), "tine: master");
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 2);
    let mut cpus = Vec::new();
    for (slot, &pid) in pids.iter().enumerate() {
        assert_eq!(comm(pid), format!("tine: worker {slot}"));
        assert_eq!(parent_pid(pid), master);
        cpus.push(cpus_allowed(pid));
    }
    let stats = server.stats();
    for (slot, cpu) in cpus.iter().enumerate() {
        assert_eq!(
            cpu,
            &stats["workers"][slot]["cpu"].to_string(),
            "slot {slot} pinned where the region says"
        );
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert_ne!(cpus[0], cpus[1], "workers share a CPU");
    }
    assert_eq!(listening_sockets(server.addr.port()), 2, "one SO_REUSEPORT socket per slot");
    assert_eq!(stats["listeners"][0], server.addr.to_string(), "bound address recorded in the region");
    assert_eq!(std::fs::read_to_string(&server.pid_file).unwrap().trim(), master.to_string());
}

#[test]
fn every_request_is_counted_once() {
    let server = Server::start(2);
    server.write_file("a.txt", b"abc");
    // 10 single-request connections and one keep-alive connection with 15.
    for _ in 0..10 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    let s = server.connect();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for _ in 0..15 {
        w.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut reader, false).body, b"abc");
    }
    drop(w);
    drop(reader);
    let stats = server.wait_until("connections closed", |s| s["total"]["active"] == 0);
    assert_eq!(stats["total"]["requests"], 25);
    assert_eq!(stats["total"]["responses_2xx"], 25);
    assert_eq!(stats["total"]["accepted"], 11);
    let per_worker: u64 =
        stats["workers"].as_array().unwrap().iter().map(|w| w["requests"].as_u64().unwrap()).sum();
    assert_eq!(per_worker, 25);
    assert!(stats["total"]["bytes_sent"].as_u64().unwrap() > 25 * 3);
}

#[test]
fn a_killed_worker_comes_back_in_its_slot_with_its_counters() {
    let server = Server::start(2);
    server.write_file("a.txt", b"abc");
    for _ in 0..20 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    let before = server.stats();
    let victim = before["workers"][0].clone();
    let old_pid = victim["pid"].as_i64().unwrap() as i32;
    send_signal(old_pid, libc::SIGKILL);
    let after = server.wait_until("slot 0 respawned", |s| {
        let w = &s["workers"][0];
        w["state"] == "running" && w["pid"].as_i64() != Some(old_pid as i64)
    });
    let slot = &after["workers"][0];
    assert_eq!(slot["cpu"], victim["cpu"], "same CPU");
    assert_eq!(slot["generation"], victim["generation"].as_u64().unwrap() + 1);
    assert_eq!(cpus_allowed(slot["pid"].as_i64().unwrap() as i32), victim["cpu"].to_string());
    assert!(slot["requests"].as_u64() >= victim["requests"].as_u64(), "counters continue");
    assert_eq!(after["master"]["respawns"], 1);
    for (name, value) in before["total"].as_object().unwrap() {
        if name != "active" {
            assert!(after["total"][name].as_u64() >= value.as_u64(), "total {name} went backwards");
        }
    }
    assert_eq!(listening_sockets(server.addr.port()), 2, "the slot kept its socket");
    for _ in 0..20 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    assert_eq!(server.total("requests"), 40);
}

#[test]
fn term_stops_everything_and_cleans_up() {
    let mut server = Server::start(2);
    let workers = server.worker_pids();
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    for pid in workers {
        assert!(!process_running(pid), "worker {pid} outlived its master");
    }
    assert!(!server.pid_file.exists(), "pid file removed");
    assert!(!server.stats_path.exists(), "stats region removed");
    assert!(std::net::TcpStream::connect(server.addr).is_err(), "port closed");
}

#[test]
fn quit_finishes_the_response_in_flight_then_exits() {
    let mut server = Server::start(1);
    let big = pseudo_random(8 << 20, 7);
    server.write_file("big.bin", &big);
    let mut s = server.connect();
    // A small receive buffer keeps most of the file in flight on the server.
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut reader = BufReader::with_capacity(1024, s.try_clone().unwrap());
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut reader, &mut first).unwrap();
    server.signal(libc::SIGQUIT);
    server.wait_until("worker draining", |s| s["workers"][0]["state"] == "draining");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    let mut whole = first.to_vec();
    whole.extend_from_slice(&rest);
    let head_end = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&whole[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(whole[head_end..] == big[..], "body cut short by a graceful stop");
    assert!(server.wait_exit().success());
}

#[test]
fn workers_leave_when_the_master_is_killed() {
    let mut server = Server::start(2);
    let workers = server.worker_pids();
    server.signal(libc::SIGKILL);
    server.wait_exit();
    for pid in workers {
        wait_for("orphaned worker to exit", || !process_running(pid));
    }
    wait_for("port to close", || std::net::TcpStream::connect(server.addr).is_err());
}

#[test]
fn a_second_server_on_the_same_region_is_refused() {
    let server = Server::start(1);
    let out = tine()
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--root"])
        .arg(&server.root)
        .arg("--stats-path")
        .arg(&server.stats_path)
        .arg("--pid-file")
        .arg(server.dir.path().join("other.pid"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to a running tine master"), "{err}");
    assert_eq!(server.get("/").status, 403, "the first server is untouched");
}

#[test]
fn a_slot_that_keeps_crashing_is_backed_off() {
    let server = Server::start(1);
    // Without its root, every new worker exits right after starting.
    std::fs::remove_dir(&server.root).unwrap();
    let first = server.worker_pids()[0];
    send_signal(first, libc::SIGKILL);
    server.wait_for_log("times in a row right after starting");
    let stats = server.wait_until("a backoff counted", |s| s["master"]["backoffs"].as_u64() >= Some(1));
    assert!(stats["master"]["respawns"].as_u64().unwrap() >= 2);
    // Give the root back: the slot recovers on its own.
    std::fs::create_dir(&server.root).unwrap();
    server.wait_until("slot recovered", |s| s["workers"][0]["state"] == "running");
    assert_eq!(server.get("/").status, 403);
}

#[test]
fn at_the_connection_limit_new_connections_wait_instead_of_failing() {
    let server = Server::builder().config("[limits]\nconnections_per_worker = 2\n").start();
    server.write_file("a.txt", b"abc");
    let first = server.connect();
    let second = server.connect();
    server.wait_until("two accepted", |s| s["total"]["accepted"] == 2);
    let mut third = server.connect();
    third.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(server.total("accepted"), 2, "accepted past the limit");
    drop(first);
    let resp = read_response(&mut BufReader::new(third), false);
    assert_eq!(resp.body, b"abc");
    drop(second);
    assert_eq!(server.total("accepted"), 3);
}

// A region file that names a live pid proves nothing: any local user could
// write one where tine's region goes. Only the lock of a running server keeps
// a start from replacing it; a file of another user is refused, not used.
#[test]
fn a_squatted_stats_path_does_not_stop_a_start() {
    let first = Server::start(1);
    // A faithful copy of a live region: valid layout, the pid of a live master.
    let squat = first.dir.path().join("squatted.stats");
    std::fs::copy(&first.stats_path, &squat).unwrap();
    let start_on = |stats: &std::path::Path, pid_file: &str| {
        let mut child = tine()
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--root"])
            .arg(&first.root)
            .arg("--stats-path")
            .arg(stats)
            .arg("--pid-file")
            .arg(first.dir.path().join(pid_file))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let verdict = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on") || l.contains("cannot start"));
        send_signal(child.id() as i32, libc::SIGTERM);
        let _ = child.wait();
        verdict.unwrap_or_default()
    };
    let verdict = start_on(&squat, "second.pid");
    assert!(verdict.contains("listening on"), "the squatted path stopped a start: {verdict}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = first.dir.path().join("theirs.stats");
        std::fs::copy(&first.stats_path, &theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let verdict = start_on(&theirs, "third.pid");
        assert!(verdict.contains("owned by uid 65534"), "{verdict}");
    }
    assert_eq!(first.get("/").status, 403, "the first server is untouched");
}

// HTTP listeners defer accepting until a request arrives (accept and read are
// then one turn); a stream listener does not, since its protocol may have the
// server speak first. Every listener carries TCP_NODELAY for the connections
// it hands over, so no connection costs a setsockopt.
#[test]
fn listeners_carry_the_options_their_connections_inherit() {
    let echo = echo_server();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n[[stream]]\nlisten = \"127.0.0.3:0\"\nupstream = \"echo\"\n"
        ))
        .start();
    let stream = stream_addr(&server, "echo");
    let master = server.master_pid();
    let http_defer = listener_opts(master, server.addr.port(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT);
    assert!(!http_defer.is_empty() && http_defer.iter().all(|&v| v > 0), "{http_defer:?}");
    let stream_defer = listener_opts(master, stream.port(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT);
    assert!(!stream_defer.is_empty() && stream_defer.iter().all(|&v| v == 0), "{stream_defer:?}");
    for port in [server.addr.port(), stream.port()] {
        let nodelay = listener_opts(master, port, libc::IPPROTO_TCP, libc::TCP_NODELAY);
        assert!(!nodelay.is_empty() && nodelay.iter().all(|&v| v == 1), "port {port}: {nodelay:?}");
    }
    // Relayed streams are probed with TCP keepalive; HTTP connections end by
    // tine's own timeouts.
    let keepalive = |port| listener_opts(master, port, libc::SOL_SOCKET, libc::SO_KEEPALIVE);
    assert!(keepalive(server.addr.port()).iter().all(|&v| v == 0));
    assert!(keepalive(stream.port()).iter().all(|&v| v == 1));
    let idle = listener_opts(master, stream.port(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE);
    assert!(idle.iter().all(|&v| v == 60), "{idle:?}");
    // A request is still answered, and a stream still relays at once.
    assert_eq!(server.get("/").status, 403);
    let s = connect(stream);
    assert_eq!(duplex(s.try_clone().unwrap(), s, b"banner"), b"banner");
}

fn int_opts(server: &Server, port: u16, level: i32, name: i32) -> Vec<i32> {
    listener_opts(server.master_pid(), port, level, name)
}

// [tcp] reaches every kind of listener (HTTP, admin, stream), read back from
// the sockets themselves, and [tcp.listener."ADDRESS"] overrides it for one.
#[test]
fn tcp_options_reach_every_kind_of_listener_and_one_can_override_them() {
    let echo = echo_server();
    let server = Server::builder()
        .config(&format!(
            "admin_listen = \"127.0.0.2:0\"\n\
             [tcp]\nkeepalive_idle = \"30s\"\nkeepalive_interval = \"5s\"\nkeepalive_count = 4\n\
             user_timeout = \"20s\"\nsend_buffer = 65536\nreceive_buffer = 131072\nfastopen = 64\n\
             notsent_lowat = 16384\ncongestion = \"reno\"\n\
             [tcp.listener.\"127.0.0.3:0\"]\nkeepalive_count = 2\ndefer_accept = \"2s\"\n\
             [[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n\
             [[stream]]\nlisten = \"127.0.0.3:0\"\nupstream = \"echo\"\n"
        ))
        .start();
    let (http, admin, stream) =
        (server.addr.port(), admin_addr(&server).port(), stream_addr(&server, "echo").port());
    let (tcp, sol) = (libc::IPPROTO_TCP, libc::SOL_SOCKET);
    for (port, count) in [(http, 4), (admin, 4), (stream, 2)] {
        let all = |level, name, want: i32| {
            let got = int_opts(&server, port, level, name);
            assert!(!got.is_empty() && got.iter().all(|&v| v == want), "port {port} option {name}: {got:?}");
        };
        all(sol, libc::SO_KEEPALIVE, 1);
        all(tcp, libc::TCP_KEEPIDLE, 30);
        all(tcp, libc::TCP_KEEPINTVL, 5);
        all(tcp, libc::TCP_KEEPCNT, count);
        all(tcp, libc::TCP_USER_TIMEOUT, 20_000);
        // The kernel doubles a buffer size it is given.
        all(sol, libc::SO_SNDBUF, 131_072);
        all(sol, libc::SO_RCVBUF, 262_144);
        all(tcp, libc::TCP_FASTOPEN, 64);
        all(tcp, libc::TCP_NOTSENT_LOWAT, 16_384);
        all(tcp, libc::TCP_NODELAY, 1);
        let defer = int_opts(&server, port, tcp, libc::TCP_DEFER_ACCEPT);
        assert!(defer.iter().all(|&v| v > 0), "port {port} defers: {defer:?}");
    }
    assert!(!server.log().iter().any(|l| l.contains("refused")), "{:?}", server.log());
    assert_eq!(server.get("/").status, 403);
}

// A congestion control the kernel lacks is a warning, not a failed start;
// a backlog above net.core.somaxconn is a warning too.
#[test]
fn a_missing_congestion_control_and_a_capped_backlog_are_warnings() {
    let server = Server::builder().config("backlog = 1048576\n[tcp]\ncongestion = \"no-such-cc\"\n").start();
    server.wait_for_log("the kernel refused [tcp] congestion");
    server.wait_for_log("net.core.somaxconn");
    assert_eq!(server.get("/").status, 403);
}
