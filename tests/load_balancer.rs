//! Behind an L4 load balancer: the PROXY protocol (v1 and v2) names the
//! client, from trusted sources only, end to end with raw sockets.

mod common;

use common::tls::{body, certificate_toml, make_cert, tls_addr, Alg, Client};
use common::{connect, exchange_raw, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

/// An upstream that answers every request with the head it received.
fn echo_head_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let reply =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", head.len());
            let _ = s.write_all(reply.as_bytes());
            let _ = s.write_all(&head);
        }
    });
    addr
}

/// A version 2 header: PROXY (or LOCAL) over TCP, IPv4 or IPv6.
fn v2(local: bool, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(if local { 0x20 } else { 0x21 });
    let mut addresses = Vec::new();
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.push(0x11);
            addresses.extend_from_slice(&c.ip().octets());
            addresses.extend_from_slice(&s.ip().octets());
        }
        (SocketAddr::V6(c), SocketAddr::V6(s)) => {
            out.push(0x21);
            addresses.extend_from_slice(&c.ip().octets());
            addresses.extend_from_slice(&s.ip().octets());
        }
        _ => panic!("one family"),
    }
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&server.port().to_be_bytes());
    // A TLV a balancer might add (PP2_TYPE_AUTHORITY), which tine skips.
    addresses.extend_from_slice(&[0x02, 0, 6]);
    addresses.extend_from_slice(b"a.test");
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out
}

fn behind_balancer(trusted: &str, extra: &str) -> Server {
    let upstream = echo_head_upstream();
    let server = Server::builder()
        .config(&format!(
            "access_log = \"access.log\"\n\
             [proxy_protocol]\ntrusted = [{trusted}]\ntimeout = \"500ms\"\n{extra}\n\
             [[upstream]]\nname = \"echo\"\nservers = [\"{upstream}\"]\n\
             [[route]]\npath = \"/echo/\"\nupstream = \"echo\"\n[[route]]\npath = \"/\"\nroot = \"{{root}}\"\n"
        ))
        .start();
    server.write_file("a.txt", b"A");
    server
}

fn forwarded_for(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let line = text.lines().find(|l| l.starts_with("x-forwarded-for:")).unwrap_or_else(|| panic!("{text}"));
    line["x-forwarded-for:".len()..].trim().to_string()
}

fn access_log(server: &Server, lines: usize) -> String {
    let log = server.dir.path().join("access.log");
    common::wait_for("access-log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == lines)
    });
    std::fs::read_to_string(&log).unwrap()
}

const ECHO: &str = "GET /echo/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[test]
fn a_trusted_balancers_header_names_the_client_everywhere() {
    let server = behind_balancer("\"127.0.0.0/8\"", "");
    let (client4, client6): (SocketAddr, SocketAddr) =
        ("203.0.113.7:40000".parse().unwrap(), "[2001:db8::9]:40001".parse().unwrap());
    let v1 = format!("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n{ECHO}");
    assert_eq!(forwarded_for(&exchange_raw(server.addr, v1.as_bytes())), "203.0.113.7");
    let mut bin = v2(false, client6, "[2001:db8::1]:80".parse().unwrap());
    bin.extend_from_slice(ECHO.as_bytes());
    assert_eq!(forwarded_for(&exchange_raw(server.addr, &bin)), "2001:db8::9");
    // LOCAL (the balancer's own health check) names nobody: the peer stands.
    let mut local = v2(true, client4, "192.0.2.1:80".parse().unwrap());
    local.extend_from_slice(ECHO.as_bytes());
    assert_eq!(forwarded_for(&exchange_raw(server.addr, &local)), "127.0.0.1");
    // The header and the request may come in pieces.
    let mut s = connect(server.addr);
    s.write_all(b"PROXY TCP4 198.51.100.4 192.0.2.1 ").unwrap();
    s.write_all(b"5555 80\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
    s.write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.ends_with(b"\r\n\r\nA"), "{}", String::from_utf8_lossy(&out));
    let log = access_log(&server, 4);
    for client in ["203.0.113.7 ", "2001:db8::9 ", "127.0.0.1 ", "198.51.100.4 "] {
        assert!(log.lines().any(|l| l.starts_with(client)), "{client}: {log}");
    }
    assert_eq!(server.total("proxy_headers"), 4);
}

#[test]
fn headers_from_untrusted_sources_and_trusted_connections_without_one_are_refused() {
    // 127.0.0.1 is not trusted here: a header from it is refused, and a
    // plain client is served as itself.
    let server = behind_balancer("\"10.0.0.0/8\", \"2001:db8::/32\"", "");
    let v1 = format!("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n{ECHO}");
    assert!(exchange_raw(server.addr, v1.as_bytes()).is_empty());
    assert_eq!(forwarded_for(&exchange_raw(server.addr, ECHO.as_bytes())), "127.0.0.1");
    assert_eq!(server.total("proxy_refused_untrusted"), 1);

    let server = behind_balancer("\"127.0.0.1\"", "");
    assert!(exchange_raw(server.addr, ECHO.as_bytes()).is_empty(), "no header from a trusted source");
    assert!(exchange_raw(server.addr, format!("PROXY TCP4 1.2.3.4\r\n{ECHO}").as_bytes()).is_empty());
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x04\x00".to_vec();
    oversized.extend_from_slice(&[0u8; 1024]);
    assert!(exchange_raw(server.addr, &oversized).is_empty());
    // Half a header, then nothing: the header's own timeout ends it.
    let mut s = connect(server.addr);
    s.write_all(b"PROXY TCP4 203.0.").unwrap();
    // Closed with the half header unread: a reset or an end, never an answer.
    let ended = s.read(&mut [0u8; 64]);
    assert!(
        matches!(&ended, Ok(0))
            || ended.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
    );
    server.wait_until("every refusal counted", |s| {
        s["total"]["proxy_refused_missing"] == 1
            && s["total"]["proxy_refused_malformed"] == 2
            && s["total"]["proxy_refused_timeout"] == 1
            && s["total"]["active"] == 0
    });
    assert_eq!(server.total("proxy_headers"), 0);
}

#[test]
fn a_listener_can_opt_out() {
    let server = Server::builder()
        .config_only(
            "listen = [\"127.0.0.1:0\"]\nroot = \"{root}\"\nworkers = 1\n\
             [proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]\nskip = [\"127.0.0.1:0\"]\n",
        )
        .start();
    server.write_file("a.txt", b"A");
    let raw = exchange_raw(server.addr, b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(raw.ends_with(b"\r\n\r\nA"), "{}", String::from_utf8_lossy(&raw));
}

#[test]
fn a_tls_listener_reads_the_header_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = Server::builder()
        .config(&format!(
            "tls_listen = [\"127.0.0.1:0\"]\naccess_log = \"access.log\"\n\
             [proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]\n{}",
            certificate_toml(&cert, true)
        ))
        .start();
    server.write_file("a.txt", b"A over TLS");
    let addr = tls_addr(&server);
    let mut tcp = connect(addr);
    tcp.write_all(&v2(false, "192.0.2.44:1234".parse().unwrap(), "192.0.2.1:443".parse().unwrap())).unwrap();
    let mut tls = Client::plain().connect_over(tcp, Some("a.test")).expect("handshake after the header");
    let answer = common::tls::request(&mut tls, "a.test", "/a.txt");
    assert_eq!(body(&answer), b"A over TLS");
    assert!(access_log(&server, 1).starts_with("192.0.2.44 "));
    assert_eq!(server.total("proxy_headers"), 1);
    assert_eq!(server.total("tls_handshakes"), 1);
}

// A group with proxy_protocol sends its servers a header naming the client
// first on every connection, and a connection (whose header names one
// client) is never reused for another.
#[test]
fn upstreams_and_streams_get_a_header_naming_the_client() {
    let (http_up, http_seen) = common::recording_upstream();
    let (v2_up, v2_seen) = common::recording_upstream();
    let (stream_up, stream_seen) = common::recording_upstream();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{http_up}\"]\nproxy_protocol = \"v1\"\n\
             [[upstream]]\nname = \"app2\"\nservers = [\"{v2_up}\"]\nproxy_protocol = \"v2\"\n\
             [[upstream]]\nname = \"db\"\nservers = [\"{stream_up}\"]\nproxy_protocol = \"v2\"\n\
             [[route]]\npath = \"/v2/\"\nupstream = \"app2\"\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n\
             [[stream]]\nlisten = \"127.0.0.3:0\"\nupstream = \"db\"\n"
        ))
        .start();
    // Two requests on one client connection: one upstream connection, one header.
    let mut a = connect(server.addr);
    let local_port = a.local_addr().unwrap().port();
    for _ in 0..2 {
        a.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = a.read(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b"ok"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    // A second client gets a connection (and a header) of its own.
    let mut b = connect(server.addr);
    let b_port = b.local_addr().unwrap().port();
    b.write_all(b"GET /y HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    b.read_to_end(&mut out).unwrap();
    let seen = http_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one upstream connection per client");
    let expect = |port: u16| format!("PROXY TCP4 127.0.0.1 127.0.0.1 {port} {}\r\nGET ", server.addr.port());
    assert!(
        String::from_utf8_lossy(&seen[0]).starts_with(&expect(local_port)),
        "{:?}",
        String::from_utf8_lossy(&seen[0])
    );
    assert_eq!(String::from_utf8_lossy(&seen[0]).matches("PROXY ").count(), 1);
    assert!(String::from_utf8_lossy(&seen[1]).starts_with(&expect(b_port)));

    // Version 2 to an HTTP upstream: the header, then the request.
    let mut d = connect(server.addr);
    d.write_all(b"GET /v2/z HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    let seen = v2_seen.lock().unwrap()[0].clone();
    let mut header = Vec::new();
    tine_v2(&mut header, d.local_addr().unwrap(), server.addr);
    assert!(seen.starts_with(&header), "{seen:?}");
    assert!(seen[header.len()..].starts_with(b"GET /v2/z HTTP/1.1\r\n"));

    // A stream: the v2 header, then the client's bytes as they were.
    let stream = common::stream_addr(&server, "db");
    let mut c = connect(stream);
    c.write_all(b"hello\r\n\r\n").unwrap();
    // (The recorder answers per blank line it sees, the v2 signature's too.)
    let mut buf = [0u8; 40];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let seen = stream_seen.lock().unwrap()[0].clone();
    let mut expected = Vec::new();
    tine_v2(&mut expected, c.local_addr().unwrap(), stream);
    expected.extend_from_slice(b"hello\r\n\r\n");
    assert_eq!(seen, expected);
}

/// The version 2 header as the specification lays it out, for comparing
/// byte for byte.
fn tine_v2(out: &mut Vec<u8>, client: SocketAddr, server: SocketAddr) {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else { panic!("IPv4 only") };
    out.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c");
    out.extend_from_slice(&c.ip().octets());
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&c.port().to_be_bytes());
    out.extend_from_slice(&s.port().to_be_bytes());
}

fn health(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw =
        exchange_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

fn signal(server: &Server, action: &str) {
    let out = common::tine().args(["signal", action, "--pid-file"]).arg(&server.pid_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// `tine signal drain` puts a running server in the lame-duck state: health
// checks (admin /health, and health_path on public listeners) answer 503
// while everything else is served; `undrain` ends it.
#[test]
fn drain_and_undrain_turn_health_checks_without_stopping() {
    let server =
        Server::builder().config("admin_listen = \"127.0.0.2:0\"\nhealth_path = \"/healthz\"\n").start();
    server.write_file("a.txt", b"A");
    let admin = common::admin_addr(&server);
    assert_eq!(health(admin, "/health"), (200, "serving\n".into()));
    assert_eq!(health(server.addr, "/healthz?probe=1"), (200, "serving\n".into()));
    signal(&server, "drain");
    common::wait_for("health 503", || health(admin, "/health").0 == 503);
    assert_eq!(health(server.addr, "/healthz"), (503, "draining\n".into()));
    assert_eq!(server.get("/a.txt").body, b"A", "a drained server still serves");
    signal(&server, "undrain");
    common::wait_for("health 200", || health(admin, "/health").0 == 200);
    assert_eq!(health(server.addr, "/healthz").0, 200);
}

// QUIT with a drain_delay: health turns 503 at once, requests go on
// succeeding through the delay, and no request fails before the listener
// closes (after which connections are refused, as a balancer expects).
#[test]
fn quit_with_a_drain_delay_serves_until_the_listener_closes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let server = Server::builder()
        .workers(2)
        .config("admin_listen = \"127.0.0.2:0\"\n[timeouts]\ndrain_delay = \"2s\"\n")
        .start();
    server.write_file("a.txt", b"A");
    let admin = common::admin_addr(&server);
    let addr = server.addr;
    let (ok, failed, ok_while_draining, draining) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ok, failed, ok_while_draining, draining) =
                (ok.clone(), failed.clone(), ok_while_draining.clone(), draining.clone());
            std::thread::spawn(move || loop {
                let Ok(mut s) = std::net::TcpStream::connect(addr) else { return };
                let _ = s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut out = Vec::new();
                let read = s.read_to_end(&mut out);
                // A connection queued at the instant the last listening
                // socket closes is reset before any byte: the same as a
                // refusal to the client (nothing was processed), and only
                // possible once the stop has begun.
                let reset = read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                if reset && out.is_empty() && draining.load(SeqCst) {
                    return;
                }
                if out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"\r\n\r\nA") {
                    ok.fetch_add(1, SeqCst);
                    if draining.load(SeqCst) {
                        ok_while_draining.fetch_add(1, SeqCst);
                    }
                } else {
                    failed.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    common::wait_for("load under way", || ok.load(SeqCst) > 50);
    let master = server.master_pid();
    // SAFETY: kill sends a signal to the master this test started.
    unsafe { libc::kill(master, libc::SIGQUIT) };
    common::wait_for("health 503", || health(admin, "/health").0 != 200);
    draining.store(true, SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failed.load(SeqCst), 0, "every request before the listener closed was answered");
    assert!(ok_while_draining.load(SeqCst) > 0, "requests were served after health turned 503");
}
