//! TLS termination end to end: a real rustls client against the real binary.
//! Which certificate tine chose is read from the handshake; which worker
//! served is read from the per-worker counters in the stats region.

mod common;

use common::tls::{body, certificate_toml, make_cert, request, tls_addr, Alg, Client, ClientOptions};
use common::{exchange_raw, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A server with an HTTPS listener and these `[[certificate]]` tables.
fn tls_server(workers: usize, certificates: &str, extra: &str) -> Server {
    Server::builder()
        .workers(workers)
        .config(&format!("tls_listen = [\"127.0.0.1:0\"]\n{extra}\n{certificates}"))
        .start()
}

fn per_worker(server: &Server, field: &str) -> Vec<u64> {
    server.stats()["workers"].as_array().unwrap().iter().map(|w| w[field].as_u64().unwrap()).collect()
}

#[test]
fn sni_picks_the_exact_name_then_a_wildcard_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test", "*.wild.test"], Alg::Ecdsa);
    let b = make_cert(dir.path(), "b", &["b.test"], Alg::Ecdsa);
    let certs = certificate_toml(&a, false) + &certificate_toml(&b, true);
    let server = tls_server(1, &certs, "");
    let addr = tls_addr(&server);
    server.write_file("index.html", b"hello over tls\n");
    let client = Client::plain();
    for (sni, want) in [
        (Some("a.test"), &a.der),
        (Some("b.test"), &b.der),
        (Some("x.wild.test"), &a.der),
        (Some("A.TEST"), &a.der),
        // One label only: neither the bare domain nor two labels deep.
        (Some("wild.test"), &b.der),
        (Some("x.y.wild.test"), &b.der),
        (Some("unknown.test"), &b.der),
        (None, &b.der),
    ] {
        let answer = client.get(addr, sni, "/index.html");
        assert_eq!(body(&answer), b"hello over tls\n", "{sni:?}");
        assert!(client.recorder.last() == *want, "{sni:?} got the wrong certificate");
    }
    assert_eq!(server.total("tls_handshakes"), 8);
}

#[test]
fn unknown_names_are_refused_when_configured_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, false), "[tls]\nunknown_name = \"refuse\"\n");
    let addr = tls_addr(&server);
    let client = Client::plain();
    assert!(client.connect(addr, Some("a.test")).is_ok());
    for sni in [Some("other.test"), None] {
        let refused = client.connect(addr, sni).expect_err("refused");
        assert!(refused.to_string().contains("UnrecognisedName"), "{sni:?}: {refused}");
    }
    server.wait_until("two refusals counted", |s| s["total"]["tls_failed_no_certificate"] == 2);
    assert_eq!(server.total("tls_handshakes"), 1);
    assert_eq!(server.total("tls_failed_no_common"), 0);
}

#[test]
fn clients_with_nothing_in_common_get_handshake_failure_and_are_counted_so() {
    let dir = tempfile::tempdir().unwrap();
    let ec = make_cert(dir.path(), "ec", &["site.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&ec, false), "");
    let addr = tls_addr(&server);
    use rustls::{CipherSuite as C, SignatureScheme as S};
    let cases = [
        // A TLS 1.2 client that verifies only RSA signatures, against an ECDSA-only certificate.
        ClientOptions {
            schemes: Some(vec![S::RSA_PKCS1_SHA256]),
            versions: vec![&rustls::version::TLS12],
            ..Default::default()
        },
        ClientOptions {
            schemes: Some(vec![S::RSA_PSS_SHA256]),
            versions: vec![&rustls::version::TLS13],
            ..Default::default()
        },
        // A scanner probing one suite at a time: an RSA suite.
        ClientOptions {
            suites: Some(vec![C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]),
            versions: vec![&rustls::version::TLS12],
            ..Default::default()
        },
    ];
    let count = cases.len() as u64;
    for (i, options) in cases.into_iter().enumerate() {
        let refused = Client::new(options).connect(addr, Some("site.test")).expect_err("no handshake");
        assert!(refused.to_string().contains("HandshakeFailure"), "case {i}: {refused}");
    }
    server.wait_until("the refusals counted", |s| s["total"]["tls_failed_no_common"] == count);
    assert_eq!(server.total("tls_failed_no_certificate"), 0);
    // Anyone who can verify the certificate still gets it.
    assert!(Client::plain().get(addr, Some("site.test"), "/").starts_with(b"HTTP/1.1 "));
}

#[test]
fn an_sni_name_with_its_trailing_dot_gets_the_names_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let b = make_cert(dir.path(), "b", &["b.test"], Alg::Ecdsa);
    let server = tls_server(1, &(certificate_toml(&a, false) + &certificate_toml(&b, true)), "");
    let addr = tls_addr(&server);
    // rustls clients drop the dot before sending; openssl sends the name as given.
    let served = |sni: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -outform DER"
            ))
            .output()
            .expect("openssl");
        assert!(out.status.success() && !out.stdout.is_empty(), "openssl s_client for {sni}: {out:?}");
        out.stdout
    };
    assert!(served("a.test.") == a.der, "a.test. got another certificate");
    assert!(served("a.test") == a.der);
    assert!(served("c.test.") == b.der, "an unknown name gets the default");
}

#[test]
fn ecdsa_or_rsa_is_chosen_by_what_the_client_can_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ec = make_cert(dir.path(), "ec", &["site.test"], Alg::Ecdsa);
    let rsa = make_cert(dir.path(), "rsa", &["site.test"], Alg::Rsa);
    // Listed RSA first: ECDSA is still preferred when the client takes both.
    let certs = certificate_toml(&rsa, false) + &certificate_toml(&ec, false);
    let server = tls_server(1, &certs, "");
    let addr = tls_addr(&server);
    use rustls::SignatureScheme as S;
    let cases = [
        (None, &ec.der),
        (Some(vec![S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256]), &rsa.der),
        (Some(vec![S::ECDSA_NISTP256_SHA256]), &ec.der),
    ];
    for (schemes, want) in cases {
        for versions in [vec![&rustls::version::TLS13], vec![&rustls::version::TLS12]] {
            let client =
                Client::new(ClientOptions { schemes: schemes.clone(), versions, ..Default::default() });
            let answer = client.get(addr, Some("site.test"), "/missing");
            assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
            assert!(client.recorder.last() == *want, "schemes {schemes:?}: wrong certificate");
        }
    }
}

#[test]
fn tls_versions_and_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let only = |v: &'static rustls::SupportedProtocolVersion| {
        Client::new(ClientOptions { versions: vec![v], ..Default::default() })
    };
    let s12 = only(&rustls::version::TLS12).connect(addr, Some("a.test")).unwrap();
    assert_eq!(s12.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let s13 = only(&rustls::version::TLS13).connect(addr, Some("a.test")).unwrap();
    assert_eq!(s13.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(s13.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let both =
        Client::new(ClientOptions { alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()], ..Default::default() });
    let s = both.connect(addr, Some("a.test")).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]), "h2 is preferred");
    let h2_only = Client::new(ClientOptions { alpn: vec![b"h2".to_vec()], ..Default::default() });
    assert_eq!(h2_only.connect(addr, Some("a.test")).unwrap().conn.alpn_protocol(), Some(&b"h2"[..]));
    let other = Client::new(ClientOptions { alpn: vec![b"spdy/3.1".to_vec()], ..Default::default() });
    assert!(other.connect(addr, Some("a.test")).is_err(), "no protocol in common");
    let no_alpn = Client::new(ClientOptions { alpn: Vec::new(), ..Default::default() });
    assert!(no_alpn.get(addr, Some("a.test"), "/missing").starts_with(b"HTTP/1.1 404"));
    server.wait_until("versions counted", |s| {
        s["total"]["tls_v1_2"] == 1 && s["total"]["tls_v1_3"] == 4 && s["total"]["tls_failed_protocol"] == 1
    });

    let strict = tls_server(1, &certificate_toml(&a, true), "[tls]\nmin_version = \"1.3\"\n");
    let addr = tls_addr(&strict);
    assert!(only(&rustls::version::TLS12).connect(addr, Some("a.test")).is_err());
    assert!(only(&rustls::version::TLS13).connect(addr, Some("a.test")).is_ok());
}

#[test]
fn a_ticket_from_one_worker_resumes_on_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(2, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    for versions in [vec![&rustls::version::TLS13], vec![&rustls::version::TLS12]] {
        let client = Client::new(ClientOptions { resume: true, versions, ..Default::default() });
        let first = client.connect(addr, Some("a.test")).unwrap();
        // TLS 1.3 tickets arrive after the handshake, with the response.
        let mut first = first;
        request(&mut first, "a.test", "/");
        let before = per_worker(&server, "tls_resumed");
        // SO_REUSEPORT spreads connections over both workers by their ports;
        // 40 connections all landing on one worker would be a 1 in 2^39 event.
        for i in 0..40 {
            let mut s = client.connect(addr, Some("a.test")).unwrap();
            assert_eq!(
                s.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "connection {i} not resumed"
            );
            request(&mut s, "a.test", "/");
        }
        let after = server.wait_until("40 resumptions counted", |s| {
            s["total"]["tls_resumed"].as_u64().unwrap() == before.iter().sum::<u64>() + 40
        });
        let resumed: Vec<u64> =
            after["workers"].as_array().unwrap().iter().map(|w| w["tls_resumed"].as_u64().unwrap()).collect();
        for (w, (b, a)) in before.iter().zip(&resumed).enumerate() {
            assert!(a > b, "worker {w} resumed no session: before {before:?}, after {resumed:?}");
        }
    }
}

#[test]
fn a_bad_record_in_the_same_read_as_the_last_handshake_message_is_a_record_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let mut conn =
        rustls::ClientConnection::new(Client::plain().config.clone(), "a.test".try_into().unwrap()).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    // Drive the handshake until the client's last flight is ready, unsent.
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        if !conn.is_handshaking() {
            break;
        }
        conn.read_tls(&mut sock).unwrap();
        conn.process_new_packets().unwrap();
    }
    let mut last_flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut last_flight).unwrap();
    }
    assert!(!last_flight.is_empty(), "the client's Finished waits to be sent");
    last_flight.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x20]);
    last_flight.extend_from_slice(&[0xaa; 0x20]);
    sock.write_all(&last_flight).unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    server.wait_until("a completed handshake and a record error", |s| {
        s["total"]["tls_record_errors"] == 1 && s["total"]["tls_handshakes"] == 1
    });
    assert_eq!(server.total("tls_failed_protocol"), 0);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_plain_400() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let answer = exchange_raw(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("Connection: close") && text.contains("HTTPS"), "{text}");
    server.wait_until("counted", |s| s["total"]["tls_failed_plain_http"] == 1);
    assert_eq!(Client::plain().get(addr, Some("a.test"), "/missing")[..12], b"HTTP/1.1 404"[..]);
}

#[test]
fn a_handshake_that_stalls_is_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "[timeouts]\nheader = \"1s\"\n");
    let addr = tls_addr(&server);
    // The first part of a real ClientHello, then nothing.
    let mut hello = Vec::new();
    let mut conn =
        rustls::ClientConnection::new(Client::plain().config.clone(), "a.test".try_into().unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::PATIENCE)).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "the server sends nothing to half a ClientHello, then closes");
    server.wait_until("the timeout counted", |s| s["total"]["tls_failed_timeout"] == 1);
    // A client that connects and says nothing is closed the same way.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(common::PATIENCE)).unwrap();
    assert_eq!(idle.read(&mut [0u8; 16]).unwrap_or(0), 0);
    server.wait_until("both counted", |s| s["total"]["tls_failed_timeout"] == 2);
}

#[test]
fn garbage_and_truncated_records_close_cleanly_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let mut hello = Vec::new();
    let mut conn =
        rustls::ClientConnection::new(Client::plain().config.clone(), "a.test".try_into().unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    // A ClientHello whose handshake type is not one.
    let mut damaged = hello.clone();
    damaged[5] = 0x63;
    let truncated = hello[..hello.len() / 2].to_vec();
    let cases: Vec<Vec<u8>> = vec![
        vec![0u8; 64],
        common::pseudo_random(4096, 7),
        // A handshake record claiming more than it holds, then the end.
        vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00],
        // An alert record as the first thing sent.
        vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
        damaged,
        truncated,
        // A record type that does not exist.
        vec![0x63, 0x03, 0x03, 0x00, 0x01, 0x00],
    ];
    let n = cases.len() as u64;
    for case in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(common::PATIENCE)).unwrap();
        let _ = s.write_all(&case);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // At most an alert record: nothing of HTTP.
        assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    }
    server.wait_until("every case counted", |s| s["total"]["tls_failed_protocol"] == n);
    // After a completed handshake, a bad record ends that connection alone.
    let mut s = Client::plain().connect(addr, Some("a.test")).unwrap();
    s.sock.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    s.sock.write_all(&[0xaa; 0x20]).unwrap();
    let mut rest = Vec::new();
    let _ = s.sock.read_to_end(&mut rest);
    server.wait_until("the record error counted", |s| s["total"]["tls_record_errors"] == 1);
    assert!(Client::plain().get(addr, Some("a.test"), "/missing").starts_with(b"HTTP/1.1 404"));
    assert_eq!(server.total("active"), 0);
}

#[test]
fn static_files_ranges_and_cached_files_are_byte_exact_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let big = common::pseudo_random(1 << 20, 42);
    server.write_file("big.bin", &big);
    server.write_file("small.txt", b"small and cached\n");
    let client = Client::plain();
    assert_eq!(body(&client.get(addr, Some("a.test"), "/big.bin")), &big[..]);
    let mut s = client.connect(addr, Some("a.test")).unwrap();
    s.write_all(
        b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nRange: bytes=1000-300000\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut ranged = Vec::new();
    let _ = s.read_to_end(&mut ranged);
    assert!(ranged.starts_with(b"HTTP/1.1 206"));
    assert_eq!(body(&ranged), &big[1000..=300000]);
    // Keep-alive: several responses on one connection, the small file twice
    // (the second from the cache), then the large one.
    let mut s = client.connect(addr, Some("a.test")).unwrap();
    for path in ["/small.txt", "/small.txt", "/big.bin"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes()).unwrap();
        let mut r = std::io::BufReader::new(&mut s);
        let response = common::read_response(&mut r, false);
        assert_eq!(response.status, 200);
        let want: &[u8] = if path == "/big.bin" { &big } else { b"small and cached\n" };
        assert!(response.body == want, "{path}");
    }
    assert_eq!(server.total("bytes_sent_sendfile"), 0, "no sendfile under TLS");
}

/// A raw upstream that answers each request with what it saw: the
/// X-Forwarded-Proto header and the body, echoed.
fn recording_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let lower = head.to_ascii_lowercase();
                    if lower.contains("upgrade: websocket") {
                        w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
                        let _ = std::io::copy(&mut r, &mut w);
                        return;
                    }
                    let length = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    let mut body = vec![0; length];
                    r.read_exact(&mut body).unwrap();
                    let proto = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("x-forwarded-proto: "))
                        .unwrap_or("none")
                        .trim()
                        .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nX-Seen-Proto: {proto}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    w.write_all(head.as_bytes()).unwrap();
                    w.write_all(&body).unwrap();
                }
            });
        }
    });
    addr
}

#[test]
fn proxied_posts_websockets_and_streams_work_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let upstream = recording_upstream();
    let echo = common::echo_server();
    let config = format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\
         [[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [[stream]]\nlisten = \"127.0.0.1:0\"\nupstream = \"echo\"\ntls = true\n"
    );
    let server = tls_server(1, &certificate_toml(&a, true), &config);
    let addr = tls_addr(&server);
    let client = Client::plain();
    let payload = common::pseudo_random(300_000, 9);
    let mut s = client.connect(addr, Some("a.test")).unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n", payload.len())
            .as_bytes(),
    )
    .unwrap();
    s.write_all(&payload).unwrap();
    let response = common::read_response(&mut std::io::BufReader::new(&mut s), false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-seen-proto"), Some("https"));
    assert!(response.body == payload, "the body came back changed");
    // Over plain HTTP the same route says http.
    assert_eq!(server.get("/").header("x-seen-proto"), Some("http"));

    let mut ws = client.connect(addr, Some("a.test")).unwrap();
    ws.write_all(b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let frames = common::pseudo_random(200_000, 3);
    ws.write_all(&frames).unwrap();
    let mut back = vec![0u8; frames.len()];
    ws.read_exact(&mut back).unwrap();
    assert!(back == frames, "the tunnel changed the bytes");

    let stream = common::stream_addr(&server, "echo");
    let mut relayed = client.connect(stream, Some("a.test")).unwrap();
    assert_eq!(relayed.conn.alpn_protocol(), None, "a TLS stream names no protocol");
    relayed.write_all(&frames).unwrap();
    let mut back = vec![0u8; frames.len()];
    relayed.read_exact(&mut back).unwrap();
    assert!(back == frames, "the stream changed the bytes");
}

#[test]
fn plain_http_is_redirected_to_https_where_a_route_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let config = "[[route]]\npath = \"/\"\nroot = \"{root}\"\nredirect_to_https = true\n";
    let server = tls_server(1, &certificate_toml(&a, true), config);
    let addr = tls_addr(&server);
    server.write_file("page.html", b"secure page\n");
    let raw = exchange_raw(
        server.addr,
        b"GET /page.html?x=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{text}");
    let location = format!("Location: https://a.test:{}/page.html?x=1\r\n", addr.port());
    assert!(text.contains(&location), "{text}");
    assert_eq!(body(&Client::plain().get(addr, Some("a.test"), "/page.html")), b"secure page\n");
}

#[test]
fn new_certificates_take_over_on_reload_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(dir.path(), "site", &["a.test"], Alg::Ecdsa);
    let server = tls_server(2, &certificate_toml(&old, true), "");
    let addr = tls_addr(&server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = Client::plain();
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.connect(addr, Some("a.test")) {
                        Ok(mut s) => {
                            let answer = request(&mut s, "a.test", "/missing");
                            if answer.starts_with(b"HTTP/1.1 404") {
                                ok += 1;
                            } else {
                                failed.push(format!("answer {:?}", String::from_utf8_lossy(&answer)));
                            }
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                let seen = client.recorder.seen.lock().unwrap().clone();
                (ok, failed, seen)
            })
        })
        .collect();
    server.wait_until("handshakes under way", |s| s["total"]["tls_handshakes"].as_u64().unwrap() > 50);
    // The same file names, new contents: a new key and certificate.
    let new = make_cert(dir.path(), "site", &["a.test"], Alg::Ecdsa);
    server.signal(libc::SIGHUP);
    server.wait_until("the reload", |s| s["master"]["reloads"] == 1);
    let probe = Client::plain();
    common::wait_for("the new certificate", || {
        probe.connect(addr, Some("a.test")).is_ok() && probe.recorder.last() == new.der
    });
    let after = server.total("tls_handshakes");
    server.wait_until("more handshakes after the reload", |s| {
        s["total"]["tls_handshakes"].as_u64().unwrap() > after + 50
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed, seen) = c.join().unwrap();
        assert!(failed.is_empty(), "failed handshakes or requests: {failed:?}");
        assert!(seen.contains(&new.der), "a client never saw the new certificate");
        total += ok;
    }
    assert!(total > 100);
    let s = server.stats();
    for class in ["protocol", "timeout", "no_certificate", "plain_http"] {
        assert_eq!(s["total"][format!("tls_failed_{class}")], 0, "{class}");
    }
}

#[test]
fn a_reload_with_a_broken_certificate_is_refused_and_the_old_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_cert(dir.path(), "site", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&good, true), "");
    let addr = tls_addr(&server);
    let client = Client::plain();
    let other = make_cert(dir.path(), "other", &["a.test"], Alg::Ecdsa);
    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (b"not a certificate".to_vec(), std::fs::read(&good.key).unwrap(), "site.pem"),
        // A valid certificate with another certificate's key.
        (std::fs::read(&other.cert).unwrap(), std::fs::read(&good.key).unwrap(), "site.pem"),
        (
            std::fs::read(&good.cert).unwrap(),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
            "site.key",
        ),
    ];
    let pristine = (std::fs::read(&good.cert).unwrap(), std::fs::read(&good.key).unwrap());
    for (i, (cert, key, named)) in cases.into_iter().enumerate() {
        std::fs::write(&good.cert, cert).unwrap();
        std::fs::write(&good.key, key).unwrap();
        server.signal(libc::SIGHUP);
        server.wait_until("the refusal", |s| s["master"]["reloads_failed"] == i as u64 + 1);
        let line = server.log().into_iter().rfind(|l| l.contains("reload failed")).unwrap();
        assert!(line.contains(named), "the error names {named}: {line}");
        assert!(client.get(addr, Some("a.test"), "/missing").starts_with(b"HTTP/1.1 404"));
        assert!(client.recorder.last() == good.der, "the old certificate still serves");
    }
    std::fs::write(&good.cert, &pristine.0).unwrap();
    std::fs::write(&good.key, &pristine.1).unwrap();
    // The key file missing altogether.
    std::fs::remove_file(&good.key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("the refusal", |s| s["master"]["reloads_failed"] == 4);
    assert!(client.connect(addr, Some("a.test")).is_ok());
    assert_eq!(server.stats()["master"]["reloads"], 0);
}

#[test]
fn tine_check_reads_certificates_as_a_start_would() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_cert(dir.path(), "good", &["a.test"], Alg::Ecdsa);
    let other = make_cert(dir.path(), "other", &["b.test"], Alg::Ecdsa);
    // A certificate that expires in 10 days, with a key every user can read.
    let soon = (dir.path().join("soon.pem"), dir.path().join("soon.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "10",
        ])
        .args(["-subj", "/CN=soon.test", "-addext", "subjectAltName=DNS:soon.test", "-keyout"])
        .arg(&soon.1)
        .arg("-out")
        .arg(&soon.0)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&soon.1, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = |toml: &str| {
        let path = dir.path().join("tine.toml");
        std::fs::write(
            &path,
            format!("tls_listen = [\"127.0.0.1:0\"]\nroot = \"{}\"\n{toml}", dir.path().display()),
        )
        .unwrap();
        let out = common::tine().arg("check").arg("--config").arg(&path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let soon_toml =
        format!("[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n", soon.0.display(), soon.1.display());
    let routes =
        "[[route]]\nhost = \"a.test\"\nroot = \".\"\n[[route]]\nhost = \"nobody.test\"\nroot = \".\"\n";
    let (ok, out, err) = check(&(certificate_toml(&good, true) + &soon_toml + routes));
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration is valid") && out.contains("covers a.test"), "{out}");
    assert!(
        err.contains("soon.pem: expires in 9 day(s)") || err.contains("soon.pem: expires in 10 day(s)"),
        "{err}"
    );
    assert!(err.contains("soon.key: the private key is readable by every user"), "{err}");
    assert!(err.contains("nobody.test"), "{err}");
    assert!(!err.contains("routed host a.test"), "{err}");
    // A certificate with another certificate's key is an error naming it.
    let mismatched =
        format!("[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n", good.cert.display(), other.key.display());
    let (ok, _, err) = check(&mismatched);
    assert!(!ok);
    assert!(err.contains("good.pem") && err.contains("does not match"), "{err}");
    let (ok, _, err) = check("");
    assert!(!ok);
    assert!(err.contains("tls_listen needs at least one [[certificate]]"), "{err}");
}

#[test]
fn tickets_issued_before_a_binary_upgrade_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let mut server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    let client = Client::new(ClientOptions { resume: true, ..Default::default() });
    let mut first = client.connect(addr, Some("a.test")).unwrap();
    request(&mut first, "a.test", "/missing");
    let old_master = server.master_pid();
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit().success(), "the old master leaves once the new one serves");
    assert_ne!(server.pid_in_pid_file(), Some(old_master));
    let mut s = client.connect(addr, Some("a.test")).unwrap();
    assert_eq!(
        s.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the new master's workers resume it"
    );
    assert!(request(&mut s, "a.test", "/missing").starts_with(b"HTTP/1.1 404"));
}

#[test]
fn empty_files_and_head_requests_complete_on_a_kept_alive_tls_connection() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = tls_server(1, &certificate_toml(&a, true), "");
    let addr = tls_addr(&server);
    server.write_file("empty.txt", b"");
    server.write_file("big.bin", &common::pseudo_random(300_000, 5));
    let mut s = Client::plain().connect(addr, Some("a.test")).unwrap();
    for (method, path) in
        [("GET", "/empty.txt"), ("HEAD", "/big.bin"), ("GET", "/empty.txt"), ("HEAD", "/empty.txt")]
    {
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes()).unwrap();
        let response = common::read_response(&mut std::io::BufReader::new(&mut s), method == "HEAD");
        assert_eq!(response.status, 200, "{method} {path}");
        assert!(response.body.is_empty());
    }
}

// [tcp] reaches the TLS listener too, and [tcp.listener."ADDRESS"] overrides
// it there; the options are read back from the listening sockets, whose
// connections inherit them. A handshake still completes through them.
#[test]
fn tcp_options_reach_the_tls_listener_and_its_override() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test"], Alg::Ecdsa);
    let server = Server::builder()
        .config(&format!(
            "tls_listen = [\"127.0.0.4:0\"]\n\
             [tcp]\nkeepalive_idle = \"30s\"\nuser_timeout = \"20s\"\nnotsent_lowat = 16384\n\
             [tcp.listener.\"127.0.0.4:0\"]\nuser_timeout = \"7s\"\nfastopen = 32\n\
             {}",
            certificate_toml(&cert, true)
        ))
        .start();
    let (tls, http) = (tls_addr(&server).port(), server.addr.port());
    let (tcp, sol) = (libc::IPPROTO_TCP, libc::SOL_SOCKET);
    let all = |port, level, name, want: i32| {
        let got = common::listener_opts(server.master_pid(), port, level, name);
        assert!(!got.is_empty() && got.iter().all(|&v| v == want), "port {port} option {name}: {got:?}");
    };
    for port in [tls, http] {
        all(port, sol, libc::SO_KEEPALIVE, 1);
        all(port, tcp, libc::TCP_KEEPIDLE, 30);
        all(port, tcp, libc::TCP_NOTSENT_LOWAT, 16_384);
        all(port, tcp, libc::TCP_NODELAY, 1);
    }
    all(tls, tcp, libc::TCP_USER_TIMEOUT, 7_000);
    all(tls, tcp, libc::TCP_FASTOPEN, 32);
    all(http, tcp, libc::TCP_USER_TIMEOUT, 20_000);
    let defer = common::listener_opts(server.master_pid(), tls, tcp, libc::TCP_DEFER_ACCEPT);
    assert!(defer.iter().all(|&v| v > 0), "the TLS listener defers accept: {defer:?}");
    server.write_file("index.html", b"through the options\n");
    let answer = Client::plain().get(tls_addr(&server), Some("a.test"), "/index.html");
    assert_eq!(body(&answer), b"through the options\n");
}
