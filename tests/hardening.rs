//! Regressions from an attacker's review of what tine already deploys: files
//! the root master reads for the operator, Locations tine builds, host
//! matching, what a worker keeps of the stats region, health once the
//! master is gone, gauges after faults, pooled PROXY-protocol connections,
//! and the admin listener's answer to a rebound DNS name. Each test fails
//! on the code before its fix.

mod common;

use common::{
    admin_addr, assert_check_refuses, connect, exchange_raw, read_response, send_signal, status_of, tine,
    wait_for, Response, Server, PATIENCE,
};
use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;

fn request(addr: SocketAddr, head: &str) -> Response {
    let mut s = connect(addr);
    s.write_all(head.as_bytes()).unwrap();
    read_response(&mut BufReader::new(s), head.starts_with("HEAD"))
}

/// Runs `tine check` on `toml` in a thread, so that a check that blocks
/// fails the test instead of hanging it.
fn check_within_patience(config: &Path) -> std::process::Output {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = config.to_owned();
    let mut child = tine()
        .args(["check", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err);
        let status = child.wait().unwrap();
        let _ = tx.send(std::process::Output { status, stdout: Vec::new(), stderr: err });
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out,
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("tine check {} did not finish: it blocked on a file", path.display());
        }
    }
}

#[test]
fn an_error_page_that_is_a_symlink_out_of_the_root_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("shadow"), b"root:secret-hash:19000::::::\n").unwrap();
    let site = tempfile::tempdir().unwrap();
    symlink(outside.path().join("shadow"), site.path().join("404.html")).unwrap();
    let toml =
        format!("[[route]]\nroot = \"{}\"\nerror_pages = {{ 404 = \"/404.html\" }}\n", site.path().display());
    assert_check_refuses(&toml, "leads out of the root");
    // The same file reached by a symlink inside the root is fine.
    std::fs::write(site.path().join("page.html"), b"<h1>gone</h1>").unwrap();
    symlink("page.html", site.path().join("alias.html")).unwrap();
    let server = Server::builder()
        .config(&format!(
            "[[route]]\nroot = \"{}\"\nerror_pages = {{ 404 = \"/alias.html\" }}\n",
            site.path().display()
        ))
        .start();
    assert_eq!(server.get("/nothing").body, b"<h1>gone</h1>");
    // A reload that points the page out of the root is refused; the old one serves.
    std::fs::remove_file(site.path().join("alias.html")).unwrap();
    symlink(outside.path().join("shadow"), site.path().join("alias.html")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("leads out of the root");
    let answer = server.get("/nothing");
    assert_eq!(answer.body, b"<h1>gone</h1>");
    assert!(!String::from_utf8_lossy(&answer.body).contains("secret"));
}

#[test]
fn files_that_block_or_never_end_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    nix_mkfifo(&dir.path().join("page.html"));
    nix_mkfifo(&dir.path().join("key.pem"));
    let write = |name: &str, toml: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path
    };
    let root = dir.path().display();
    let fifo_page =
        write("a.toml", format!("[[route]]\nroot = \"{root}\"\nerror_pages = {{ 404 = \"/page.html\" }}\n"));
    let fifo_key = write(
        "b.toml",
        format!("tls_listen = [\"127.0.0.1:0\"]\n[[certificate]]\ncert = \"/dev/zero\"\nkey = \"{root}/key.pem\"\n"),
    );
    let zero_cert = write(
        "c.toml",
        "tls_listen = [\"127.0.0.1:0\"]\n[[certificate]]\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n"
            .to_string(),
    );
    for (config, want) in
        [(&fifo_page, "a.toml:"), (&fifo_key, "not a regular file"), (&zero_cert, "/dev/zero")]
    {
        let out = check_within_patience(config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {err}", config.display());
        assert!(err.contains(want) && err.contains("not a regular file"), "{}: {err}", config.display());
    }
}

#[test]
fn a_reload_with_a_fifo_error_page_is_refused_and_workers_still_respawn() {
    let server = Server::builder().config_only("listen = [\"127.0.0.1:0\"]\nroot = \"{root}\"\n").start();
    server.write_file("a.txt", b"A");
    nix_mkfifo(&server.root.join("page.html"));
    std::fs::write(
        server.config_path(),
        format!(
            "listen = [\"127.0.0.1:0\"]\nroot = \"{0}\"\n[[route]]\nroot = \"{0}\"\nerror_pages = {{ 404 = \"/page.html\" }}\n",
            server.root.display()
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("not a regular file");
    // The master is not stuck in open(): it still replaces a killed worker.
    let before = server.worker_pids();
    send_signal(before[0], libc::SIGKILL);
    server.wait_until("a new worker", |s| {
        let w = &s["workers"][0];
        w["state"] == "running" && w["pid"].as_i64() != Some(before[0] as i64)
    });
    assert_eq!(server.get("/a.txt").body, b"A");
}

fn nix_mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid C string for the call's duration.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[test]
fn redirect_prefixes_never_send_a_client_to_another_host() {
    let server = Server::builder()
        .config("[[route]]\npath = \"/old\"\nredirect_prefix = \"/\"\n[[route]]\npath = \"/keep/\"\nredirect_prefix = \"/new/\"\n")
        .start();
    let location = |target: &str| {
        let answer =
            request(server.addr, &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        (answer.status, answer.header("location").map(str::to_string))
    };
    assert_eq!(location("/old/evil.test/x"), (301, Some("/evil.test/x".into())));
    assert_eq!(location("/old/\\evil.test/x"), (301, Some("/%5Cevil.test/x".into())));
    assert_eq!(location("/old/a?q=\\x"), (301, Some("/a?q=%5Cx".into())));
    assert_eq!(location("/keep/a/b"), (301, Some("/new/a/b".into())));
    for target in ["/old//evil.test", "/old/%2Fevil.test", "/old/./\\evil.test"] {
        let (_, at) = location(target);
        if let Some(at) = at {
            assert!(!at.starts_with("//") && !at.starts_with("/\\"), "{target} -> {at}");
        }
    }
    assert_check_refuses("[[route]]\npath = \"/a/\"\nredirect = \"/\\\\evil.test/\"\n", "must be a path");
}

#[test]
fn a_fully_qualified_host_with_its_trailing_dot_takes_the_host_route() {
    let server = Server::builder()
        .config(
            "[[route]]\nhost = \"example.test\"\npath = \"/\"\nredirect = \"/moved\"\n\
             [[route]]\nhost = \"dotted.test.\"\npath = \"/\"\nredirect = \"/dotted\"\n\
             [[route]]\npath = \"/\"\nroot = \"{root}\"\n",
        )
        .start();
    server.write_file("index.html", b"catch-all");
    for host in ["example.test", "example.test.", "EXAMPLE.test.:8080"] {
        let answer =
            request(server.addr, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!((answer.status, answer.header("location")), (301, Some("/moved")), "Host: {host}");
    }
    let answer = request(server.addr, "GET / HTTP/1.1\r\nHost: dotted.test\r\nConnection: close\r\n\r\n");
    assert_eq!(answer.header("location"), Some("/dotted"));
    let answer = request(server.addr, "GET / HTTP/1.1\r\nHost: other.test.\r\nConnection: close\r\n\r\n");
    assert_eq!(answer.body, b"catch-all");
}

#[test]
fn workers_hold_no_descriptor_of_the_stats_region() {
    let server = Server::start(2);
    let holds_region = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|link| link == server.stats_path)
    };
    assert!(holds_region(server.master_pid()), "the master keeps the region (and its lock)");
    for pid in server.worker_pids() {
        assert!(!holds_region(pid), "worker {pid} could truncate the region under the master");
    }
    // Still counting through the inherited mapping.
    server.write_file("a.txt", b"A");
    assert_eq!(server.get("/a.txt").body, b"A");
    server.wait_until("the request counted", |s| s["total"]["requests"] == 1);
}

#[test]
fn a_kept_alive_health_check_says_draining_once_the_master_is_gone() {
    let mut server =
        Server::builder().config("admin_listen = \"127.0.0.2:0\"\n[timeouts]\ndrain = \"30s\"\n").start();
    let admin = admin_addr(&server);
    let mut probe = connect(admin);
    let mut reader = BufReader::new(probe.try_clone().unwrap());
    probe.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader, false).status, 200);
    send_signal(server.master_pid(), libc::SIGKILL);
    let _ = server.wait_exit();
    server.wait_for_log("worker draining");
    probe.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n").unwrap();
    let answer = read_response(&mut reader, false);
    assert_eq!((answer.status, &answer.body[..]), (503, &b"draining\n"[..]));
    assert_eq!(answer.header("connection"), Some("close"));
}

#[test]
fn a_worker_killed_beside_a_draining_one_leaves_nothing_in_the_gauges() {
    let server = Server::builder().config("[timeouts]\ndrain = \"60s\"\nsend = \"60s\"\n").start();
    server.write_file("big.bin", &vec![7u8; 32 << 20]);
    // A download the old worker is stuck sending keeps it draining.
    let mut stuck = connect(server.addr);
    stuck.set_read_timeout(None).unwrap();
    stuck.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 16];
    stuck.read_exact(&mut first).unwrap();
    let old = server.worker_pids()[0];
    server.signal(libc::SIGHUP);
    server.wait_until("a new worker beside the draining one", |s| {
        s["workers"][0]["pid"].as_i64().is_some_and(|p| p != old as i64)
            && s["workers"][0]["state"] == "running"
    });
    // The new worker holds a connection of its own when it is killed.
    let mut idle = connect(server.addr);
    idle.write_all(b"GET /big.bin HTTP/1.1\r\n").unwrap();
    server.wait_until("both connections counted", |s| s["total"]["active"] == 2);
    let new = server.worker_pids()[0];
    send_signal(new, libc::SIGKILL);
    server.wait_until("the killed worker's connection gone from the gauge", |s| {
        s["workers"][0]["pid"].as_i64().is_some_and(|p| p != new as i64 && p != 0)
            && s["total"]["active"] == 1
    });
    drop(stuck);
    drop(idle);
    wait_for("the old worker to finish draining", || !common::process_running(old));
    server.wait_until("no connection left", |s| s["total"]["active"] == 0);
}

#[test]
fn pooled_proxy_protocol_connections_close_with_their_client() {
    let (up, _) = common::recording_upstream();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\nproxy_protocol = \"v1\"\nkeepalive_timeout = \"300s\"\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n"
        ))
        .start();
    let mut client = connect(server.addr);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    client.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader, false).body, b"ok");
    server.wait_until("the upstream connection pooled", |s| {
        s["upstreams"][0]["open"] == 1 && s["upstreams"][0]["active"] == 0
    });
    drop(reader);
    drop(client);
    server.wait_until("the pooled connection closed with its client", |s| {
        s["upstreams"][0]["open"] == 0 && s["total"]["active"] == 0
    });
}

#[test]
fn a_416_for_a_file_with_coded_variants_says_vary() {
    let server = Server::start(1);
    let text = "hello, compressible world. ".repeat(200);
    server.write_file("page.html", text.as_bytes());
    let past_the_end = format!(
        "GET /page.html HTTP/1.1\r\nHost: t\r\nRange: bytes={}-\r\nConnection: close\r\n\r\n",
        text.len() * 2
    );
    let answer = request(server.addr, &past_the_end);
    assert_eq!(answer.status, 416);
    assert_eq!(answer.header("vary"), Some("Accept-Encoding"));
    // A file with nothing but its identity form does not vary.
    server.write_file("blob.bin", &[1, 2, 3]);
    let answer = request(
        server.addr,
        "GET /blob.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=10-\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((answer.status, answer.header("vary")), (416, None));
}

#[test]
fn the_admin_listener_answers_only_hosts_it_is_meant_for() {
    let server = Server::builder()
        .config("admin_listen = \"127.0.0.2:0\"\nadmin_hosts = [\"tine-01.internal\"]\n")
        .start();
    let admin = admin_addr(&server);
    let status = |path: &str, host: Option<&str>| {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        let version = if host.is_empty() { "1.0" } else { "1.1" };
        status_of(&exchange_raw(
            admin,
            format!("GET {path} HTTP/{version}\r\n{host}Connection: close\r\n\r\n").as_bytes(),
        ))
    };
    let port = admin.port();
    for host in [
        "127.0.0.2".to_string(),
        format!("127.0.0.2:{port}"),
        "[::1]".into(),
        "localhost".into(),
        "LOCALHOST.:9".into(),
        "tine-01.internal".into(),
        "Tine-01.Internal.".into(),
    ] {
        assert_eq!(status("/stats.json", Some(&host)), 200, "Host: {host}");
    }
    assert_eq!(status("/stats.json", None), 200, "HTTP/1.0 without a Host");
    for host in
        ["evil.test", "evil.test:80", "127.0.0.2.evil.test", "localhost.evil.test", "1.2.3.4.nip.test"]
    {
        assert_eq!(status("/stats.json", Some(host)), 421, "Host: {host}");
        assert_eq!(status("/metrics", Some(host)), 421, "Host: {host}");
    }
    assert_eq!(status("/", Some("evil.test")), 421, "the dashboard too");
    assert_eq!(status("/health", Some("evil.test")), 200, "health reveals nothing");
    assert_check_refuses("admin_hosts = [\"bad host\"]\n", "is not a host name");
}
