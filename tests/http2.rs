//! HTTP/2 to clients, end to end: the real binary on loopback, spoken to by
//! a raw HTTP/2 client (tests/common/h2.rs) over h2c, and by curl over TLS.
//! Every route works as over HTTP/1.1; each defence is driven by a hostile
//! client while another client is served, and the upstream is watched for
//! anything it should not have seen.

mod common;

use common::h2::{self, Client, End, RST_STREAM};
use common::{recording_upstream, wait_for, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// A server with h2c on its plain listener; `extra` is TOML that goes
/// before the `[http2]` table.
fn h2c_server(extra: &str, http2: &str) -> Server {
    Server::builder().config(&format!("{extra}\n[http2]\nh2c = true\n{http2}\n")).start()
}

fn proxy_to(upstream: SocketAddr) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\n\
         [[route]]\npath = \"/api/\"\nupstream = \"app\"\n\n\
         [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n"
    )
}

/// An upstream that reads each request whole (a Content-Length or chunked
/// body) and answers with what it received: every request's bytes are kept.
fn body_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Some(end) = request_end(&buf) else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let request: Vec<u8> = buf.drain(..end).collect();
                    record.lock().unwrap().extend_from_slice(&request);
                    let answer = format!("received {} bytes", request.len());
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                }
            });
        }
    });
    (addr, seen)
}

/// Where the first request in `buf` ends, once it is all there.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        return buf[head..].windows(5).position(|w| w == b"0\r\n\r\n").map(|p| head + p + 5);
    }
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head + length).then_some(head + length)
}

#[test]
fn static_files_over_h2c_as_over_http1() {
    let server = h2c_server("", "");
    server.write_file("a.txt", b"hello world");
    let big = common::pseudo_random(1 << 20, 7);
    server.write_file("big.bin", &big);
    let mut c = Client::connect(server.addr, &[]);

    let r = c.get(1, "/a.txt");
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(r.header("content-length"), Some("11"));
    assert!(r.header("date").is_some(), "tine's own replies are dated");
    assert!(r.header("connection").is_none(), "no connection-specific field over HTTP/2");
    let etag = r.header("etag").unwrap().to_string();

    c.request(3, "GET", "/a.txt", &[("range", "bytes=0-4")], true);
    let r = c.response(3);
    assert_eq!((r.status, &r.body[..]), (206, &b"hello"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 0-4/11"));

    c.request(5, "GET", "/a.txt", &[("if-none-match", &etag)], true);
    let r = c.response(5);
    assert_eq!((r.status, r.body.len()), (304, 0));

    c.request(7, "HEAD", "/a.txt", &[], true);
    let r = c.response(7);
    assert_eq!((r.status, r.body.len(), r.header("content-length")), (200, 0, Some("11")));

    assert_eq!(c.get(9, "/missing").status, 404);

    // A mebibyte through the default 64 KiB windows, opened as it arrives.
    let r = c.get(11, "/big.bin");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "the file arrives whole and in order");
    server.wait_until("the connection and its requests counted", |s| {
        s["total"]["http2_connections"] == 1
            && s["total"]["http2_active"] == 1
            && s["total"]["http2_requests"] == 6
    });
    drop(c);
    server.wait_until("the connection gone from the gauge", |s| s["total"]["http2_active"] == 0);
}

#[test]
fn many_streams_on_one_connection_are_served_together() {
    let (upstream, _) = body_upstream();
    let server = h2c_server(&proxy_to(upstream), "");
    let big = common::pseudo_random(300_000, 3);
    server.write_file("big.bin", &big);
    server.write_file("small.txt", b"small");
    let mut c = Client::connect(server.addr, &[]);
    let streams: Vec<u32> = (0..30).map(|i| 1 + 2 * i).collect();
    for (i, &id) in streams.iter().enumerate() {
        let path = match i % 3 {
            0 => "/big.bin",
            1 => "/small.txt",
            _ => "/api/x",
        };
        c.request(id, "GET", path, &[], true);
    }
    let responses = c.responses(&streams);
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "stream {}: {r:?}", streams[i]);
        match i % 3 {
            0 => assert!(r.body == big, "stream {}: the whole file", streams[i]),
            1 => assert_eq!(r.body, b"small"),
            _ => assert!(r.body.starts_with(b"received "), "{:?}", String::from_utf8_lossy(&r.body)),
        }
    }
}

#[test]
fn proxied_requests_reach_an_http1_upstream_as_http1() {
    let (upstream, seen) = body_upstream();
    let server = h2c_server(&proxy_to(upstream), "");
    let mut c = Client::connect(server.addr, &[]);

    c.request(1, "GET", "/api/a?b=1", &[("cookie", "a=1"), ("cookie", "b=2"), ("x-custom", "v")], true);
    let r = c.response(1);
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(text.starts_with("GET /api/a?b=1 HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("Host: a.test\r\n"), ":authority becomes Host: {text}");
    assert!(text.contains("cookie: a=1; b=2\r\n"), "cookie crumbs joined: {text}");
    assert!(text.contains("x-custom: v\r\n"), "{text}");
    seen.lock().unwrap().clear();

    // A body of undeclared length is chunked for the HTTP/1.1 hop.
    c.request(3, "POST", "/api/upload", &[], false);
    c.frame(h2::DATA, 0, 3, b"hello ");
    c.frame(h2::DATA, h2::END_STREAM, 3, b"world");
    let r = c.response(3);
    assert_eq!(r.status, 200, "{r:?}");
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"), "{text:?}");
    seen.lock().unwrap().clear();

    // A declared length goes as Content-Length, the body as it came.
    c.request(5, "POST", "/api/upload", &[("content-length", "4")], false);
    c.frame(h2::DATA, h2::END_STREAM, 5, b"abcd");
    assert_eq!(c.response(5).status, 200);
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(text.contains("Content-Length: 4\r\n") && text.ends_with("\r\n\r\nabcd"), "{text:?}");
}

#[test]
fn a_request_body_larger_than_the_window_is_streamed_upstream() {
    let (upstream, seen) = body_upstream();
    let server = h2c_server(&proxy_to(upstream), "initial_window_size = 16384");
    let mut c = Client::connect(server.addr, &[]);
    let body = common::pseudo_random(200_000, 9);
    c.request(1, "POST", "/api/up", &[("content-length", "200000")], false);
    // Send as the server's windows allow: each WINDOW_UPDATE is room.
    let mut window: i64 = 16_384;
    let mut conn_window: i64 = 65_535;
    let mut sent = 0;
    while sent < body.len() {
        let room = window.min(conn_window).min(16_384) as usize;
        if room == 0 {
            let f = c.next_frame().expect("the server opens the window");
            if f.kind == h2::WINDOW_UPDATE {
                let n = i64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                if f.stream == 0 {
                    conn_window += n;
                } else {
                    window += n;
                }
            }
            continue;
        }
        let n = room.min(body.len() - sent);
        let end = if sent + n == body.len() { h2::END_STREAM } else { 0 };
        c.frame(h2::DATA, end, 1, &body[sent..sent + n]);
        sent += n;
        window -= n as i64;
        conn_window -= n as i64;
    }
    let r = c.response(1);
    assert_eq!(r.status, 200, "{r:?}");
    let recorded = seen.lock().unwrap().clone();
    assert!(recorded.ends_with(&body), "the body arrives whole upstream");
}

#[test]
fn a_rapid_reset_flood_is_cut_off_and_never_reaches_the_upstream() {
    let (upstream, seen) = recording_upstream();
    let server = h2c_server(&proxy_to(upstream), "max_pending_resets = 10");
    server.write_file("a.txt", b"fine");
    let mut attacker = Client::connect(server.addr, &[]);
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        let block = attacker.block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/api/reset-me"),
            (":authority", "a.test"),
        ]);
        burst.extend(h2::encode_frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &block));
        burst.extend(h2::encode_frame(RST_STREAM, 0, id, &h2::CANCEL.to_be_bytes()));
    }
    attacker.write(&burst);
    assert_eq!(attacker.until_end(), End::GoAway(h2::ENHANCE_YOUR_CALM));
    server.wait_until("the GOAWAY counted as abuse", |s| s["total"]["http2_goaway_calm"] == 1);
    let mut other = Client::connect(server.addr, &[]);
    assert_eq!(other.get(1, "/a.txt").status, 200, "another client is served");
    let upstream_saw: usize =
        seen.lock().unwrap().iter().map(|c| c.windows(8).filter(|w| w == b"reset-me").count()).sum();
    assert!(
        upstream_saw <= 2,
        "streams reset before they were taken up never go upstream: {upstream_saw} did"
    );
}

/// A malformed request was refused: its stream reset, answered 400, or
/// the whole connection ended with an error.
fn refused(r: &h2::Response, c: &Client) -> bool {
    r.reset.is_some() || r.status == 400 || matches!(c.ended, Some(End::GoAway(code)) if code != h2::NO_ERROR)
}

#[test]
fn fields_that_would_smuggle_into_http1_never_reach_the_upstream() {
    let (upstream, seen) = recording_upstream();
    let server = h2c_server(&proxy_to(upstream), "");
    let mut c = Client::connect(server.addr, &[]);
    let base = |c: &mut Client| {
        c.block(&[(":method", "GET"), (":scheme", "http"), (":path", "/api/s"), (":authority", "a.test")])
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CR LF in a value", h2::raw_literal(b"x-a", b"1\r\nx-smuggled: 1")),
        ("LF in a value", h2::raw_literal(b"x-a", b"1\nx-smuggled: 1")),
        ("NUL in a value", h2::raw_literal(b"x-a", b"1\0x-smuggled")),
        ("an upper-case name", h2::raw_literal(b"X-Smuggled", b"1")),
        ("a space in a name", h2::raw_literal(b"x smuggled", b"1")),
        ("a connection field", h2::raw_literal(b"connection", b"x-smuggled")),
        ("transfer-encoding", h2::raw_literal(b"transfer-encoding", b"chunked")),
        ("a repeated :path", h2::raw_literal(b":path", b"/x-smuggled")),
        ("an empty name", h2::raw_literal(b"", b"x-smuggled")),
    ];
    for (i, (case, field)) in cases.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        let mut block = base(&mut c);
        block.extend_from_slice(field);
        c.frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &block);
        let r = c.response(id);
        assert!(refused(&r, &c), "{case}: refused, got {r:?} and {:?}", c.ended);
        if c.ended.is_some() {
            c = Client::connect(server.addr, &[]);
        }
    }
    // A :path with a space, sent raw.
    let mut block = h2::raw_literal(b":method", b"GET");
    block.extend(h2::raw_literal(b":scheme", b"http"));
    block.extend(h2::raw_literal(b":path", b"/api/s x-smuggled"));
    block.extend(h2::raw_literal(b":authority", b"a.test"));
    let mut c = Client::connect(server.addr, &[]);
    c.frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block);
    let r = c.response(1);
    assert!(refused(&r, &c), ":path with a space: refused, got {r:?}");
    // A Content-Length the DATA disagrees with.
    let mut c = Client::connect(server.addr, &[]);
    c.request(1, "POST", "/api/s", &[("content-length", "3")], false);
    c.frame(h2::DATA, h2::END_STREAM, 1, b"x-smuggled");
    let r = c.response(1);
    assert!(refused(&r, &c), "content-length disagreeing with DATA: refused, got {r:?}");

    let mut ok = Client::connect(server.addr, &[]);
    assert_eq!(ok.get(1, "/api/fine").status, 200, "a clean request still goes through");
    let all: Vec<u8> = seen.lock().unwrap().concat();
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains("smuggled"), "nothing of a refused request reached the upstream: {text}");
}

/// An upstream that takes connections and never answers.
fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    addr
}

#[test]
fn streams_past_the_limit_are_refused_and_the_connection_goes_on() {
    let server = h2c_server(&proxy_to(silent_upstream()), "max_concurrent_streams = 2");
    server.write_file("a.txt", b"fine");
    let mut c = Client::connect(server.addr, &[]);
    c.settle();
    // Two streams that wait on the upstream, then a third.
    c.request(1, "GET", "/api/wait", &[], true);
    c.request(3, "GET", "/api/wait", &[], true);
    c.request(5, "GET", "/a.txt", &[], true);
    let refused = c.response(5);
    assert_eq!(refused.reset, Some(h2::REFUSED_STREAM), "{refused:?}");
    server.wait_until("two exchanges under way", |s| s["upstreams"][0]["active"] == 2);
    c.frame(RST_STREAM, 0, 1, &h2::CANCEL.to_be_bytes());
    c.frame(RST_STREAM, 0, 3, &h2::CANCEL.to_be_bytes());
    assert_eq!(c.get(7, "/a.txt").status, 200, "the connection stays usable");
    // The streams the client reset let their upstream connections go at
    // once, not at their deadline.
    server.wait_until("the reset exchanges ended", |s| {
        s["upstreams"][0]["active"] == 0 && s["upstreams"][0]["open"] == 0
    });
    server.wait_until("the client's resets counted", |s| s["total"]["http2_client_resets"] == 2);
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    let server = h2c_server("", "max_header_list_size = 16384");
    server.write_file("a.txt", b"fine");
    let mut c = Client::connect(server.addr, &[]);
    let block =
        c.block(&[(":method", "GET"), (":scheme", "http"), (":path", "/a.txt"), (":authority", "a.test")]);
    let mut flood = h2::encode_frame(h2::HEADERS, h2::END_STREAM, 1, &block);
    let filler = h2::raw_literal(b"x-filler", &[b'f'; 200]);
    for _ in 0..5_000 {
        flood.extend(h2::encode_frame(h2::CONTINUATION, 0, 1, &filler));
    }
    c.write(&flood);
    let end = c.until_end();
    assert!(matches!(end, End::GoAway(code) if code != h2::NO_ERROR) || end == End::Closed, "{end:?}");
    let mut other = Client::connect(server.addr, &[]);
    assert_eq!(other.get(1, "/a.txt").status, 200, "another client is served");
}

#[test]
fn a_stream_whose_window_stays_shut_is_reset() {
    let server = h2c_server("[timeouts]\nsend = \"1s\"\n", "");
    server.write_file("big.bin", &common::pseudo_random(500_000, 1));
    server.write_file("a.txt", b"fine");
    // The client's windows are shut from the start and never open.
    let mut c = Client::connect(server.addr, &[(0x4, 0)]);
    c.request(1, "GET", "/big.bin", &[], true);
    let reset = loop {
        let f = c.next_frame().expect("the server resets the stalled stream");
        if f.kind == RST_STREAM && f.stream == 1 {
            break f.error_code();
        }
    };
    assert_eq!(reset, h2::CANCEL);
    server.wait_until("the stall counted", |s| {
        s["total"]["http2_stalled"] == 1 && s["total"]["http2_tine_resets"] == 1
    });
    // The client opens its windows: the connection serves it again.
    c.frame(h2::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    assert_eq!(c.get(3, "/a.txt").status, 200, "the connection goes on");
}

#[test]
fn a_reload_tells_http2_clients_goaway_and_their_streams_finish() {
    let server = h2c_server("", "");
    server.write_file("a.txt", b"fine");
    let mut c = Client::connect(server.addr, &[]);
    assert_eq!(c.get(1, "/a.txt").status, 200);
    server.signal(libc::SIGHUP);
    assert_eq!(c.until_end(), End::GoAway(h2::NO_ERROR));
    let mut fresh = Client::connect(server.addr, &[]);
    assert_eq!(fresh.get(1, "/a.txt").status, 200, "the new workers serve");
}

#[test]
fn access_log_lines_say_http2() {
    let server =
        Server::builder().config("access_log = \"{root}/../access.log\"\n[http2]\nh2c = true\n").start();
    server.write_file("a.txt", b"fine");
    let mut c = Client::connect(server.addr, &[]);
    assert_eq!(c.get(1, "/a.txt").status, 200);
    let log = server.dir.path().join("access.log");
    wait_for("the access line", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("\"GET /a.txt HTTP/2.0\" 200 4")
    });
}

#[test]
fn without_h2c_the_preface_is_a_bad_http1_request() {
    let server = Server::start(1);
    let answer = common::exchange_raw(server.addr, h2::PREFACE);
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 4") || answer.starts_with(b"HTTP/1.1 5"));
}

/// A TLS server with a certificate for a.test (and `extra` TOML), and its
/// TLS address.
fn tls_server(dir: &std::path::Path, extra: &str) -> (Server, SocketAddr) {
    use common::tls::{certificate_toml, make_cert, tls_addr, Alg};
    let cert = make_cert(dir, "a", &["a.test"], Alg::Ecdsa);
    let config = format!("tls_listen = [\"127.0.0.1:0\"]\n{extra}\n{}", certificate_toml(&cert, true));
    let server = Server::builder().config(&config).start();
    let addr = tls_addr(&server);
    (server, addr)
}

#[test]
fn curl_speaks_http2_over_tls_to_static_and_proxied_routes() {
    let (upstream, _) = body_upstream();
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = tls_server(dir.path(), &proxy_to(upstream));
    server.write_file("a.txt", b"static over h2");
    let curl = |path: &str, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-k", "--http2", "-w", "\n%{http_version} %{http_code}"])
            .arg("--resolve")
            .arg(format!("a.test:{}:127.0.0.1", addr.port()))
            .args(extra)
            .arg(format!("https://a.test:{}{path}", addr.port()))
            .output()
            .expect("curl runs (bash .ci/run installs it)");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl("/a.txt", &[]), "static over h2\n2 200");
    let proxied = curl("/api/x", &["--data-binary", "abc"]);
    assert!(proxied.starts_with("received ") && proxied.ends_with("\n2 200"), "{proxied}");
    assert!(curl("/a.txt", &["--http1.1"]).ends_with("\n1.1 200"), "HTTP/1.1 is still offered");
    server.wait_until("both HTTP/2 connections counted", |s| s["total"]["http2_connections"] == 2);
}

#[test]
fn chromium_loads_a_page_of_many_assets_over_http2() {
    if !common::browser_ready() {
        return;
    }
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = tls_server(dir.path(), "");
    let mut page = String::from(
        "<!doctype html><title>assets</title><link rel=\"icon\" href=\"data:,\"><script>window.loaded = 0</script>\n",
    );
    for i in 0..40 {
        let svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><text y='9'>{i}</text></svg>"
        );
        server.write_file(&format!("img/{i}.svg"), svg.as_bytes());
        page.push_str(&format!("<img src=\"/img/{i}.svg\" width=\"10\" height=\"10\">\n"));
    }
    for i in 0..10 {
        server.write_file(&format!("js/{i}.js"), b"window.loaded += 1;\n");
        page.push_str(&format!("<script src=\"/js/{i}.js\"></script>\n"));
    }
    server.write_file("index.html", page.as_bytes());
    let out = std::process::Command::new("node")
        .arg(browser.join("page_h2.mjs"))
        .arg(format!("https://a.test:{}/index.html", addr.port()))
        .arg(format!("MAP a.test 127.0.0.1:{}", addr.port()))
        .output()
        .expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["page"], "h2", "{report}");
    let assets = report["assets"].as_array().unwrap();
    assert_eq!(assets.len(), 50, "{report}");
    assert!(assets.iter().all(|p| p == "h2"), "every asset over h2: {report}");
    assert_eq!((report["images"].as_u64(), report["scripts"].as_u64()), (Some(40), Some(10)), "{report}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    server.wait_until("the page and its assets on one HTTP/2 connection", |s| {
        s["total"]["http2_connections"] == 1 && s["total"]["http2_requests"] == 51
    });
}

#[test]
fn every_kind_of_route_answers_over_http2() {
    let (upstream, _) = body_upstream();
    let config = format!(
        "root = \"{{root}}\"\nhealth_path = \"/healthz\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\
             [[upstream]]\nname = \"down\"\nservers = [\"127.0.0.1:1\"]\n\
             [[route]]\npath = \"/old/\"\nredirect_prefix = \"/new/\"\nredirect_status = 308\n\
             [[route]]\npath = \"/api/\"\nupstream = \"app\"\nheaders = {{ X-Frame-Options = \"DENY\" }}\n\
             [[route]]\npath = \"/down/\"\nupstream = \"down\"\nerror_pages = {{ 502 = \"/oops.html\" }}\n\
             [[route]]\npath = \"/\"\nroot = \"{{root}}\"\nprecompressed = true\n\
             try_files = [\"$uri\", \"/index.html\"]\nheaders = {{ Cache-Control = \"no-cache\" }}\n\
             error_pages = {{ 404 = \"/missing.html\" }}\n\
             [http2]\nh2c = true\n"
    );
    // Error pages are read as the configuration loads.
    let server = Server::builder().config(&config).start_with(|dir| {
        std::fs::write(dir.join("www/oops.html"), b"upstream trouble").unwrap();
        std::fs::write(dir.join("www/missing.html"), b"not here").unwrap();
    });
    server.write_file("index.html", b"shell");
    server.write_file("app.js", b"plain js");
    server.write_file("app.js.gz", b"gzipped js");
    let mut c = Client::connect(server.addr, &[]);
    let mut id = 1;
    let mut ask = |c: &mut Client, method: &str, path: &str, extra: &[(&str, &str)]| {
        c.request(id, method, path, extra, true);
        let r = c.response(id);
        id += 2;
        r
    };
    let r = ask(&mut c, "GET", "/healthz", &[]);
    assert_eq!(r.status, 200, "health_path: {r:?}");
    let r = ask(&mut c, "GET", "/old/page?x=1", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/new/page?x=1")));
    let r = ask(&mut c, "GET", "/api/x", &[]);
    assert_eq!((r.status, r.header("x-frame-options")), (200, Some("DENY")), "{r:?}");
    let r = ask(&mut c, "GET", "/down/x", &[]);
    assert_eq!((r.status, &r.body[..]), (502, &b"upstream trouble"[..]), "the route's error page");
    let r = ask(&mut c, "GET", "/app.js", &[("accept-encoding", "gzip")]);
    assert_eq!((r.header("content-encoding"), &r.body[..]), (Some("gzip"), &b"gzipped js"[..]));
    assert_eq!(r.header("cache-control"), Some("no-cache"), "the route's headers");
    let r = ask(&mut c, "GET", "/settings/profile", &[]);
    assert_eq!((r.status, &r.body[..]), (200, &b"shell"[..]), "try_files");
    let r = ask(&mut c, "DELETE", "/app.js", &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[test]
fn a_stream_whose_client_reads_nothing_does_not_hold_up_the_others() {
    let server = h2c_server("", "");
    let big = common::pseudo_random(400_000, 5);
    server.write_file("big.bin", &big);
    server.write_file("small.txt", b"small");
    // Every stream's window starts shut; the connection's is wide open.
    let mut c = Client::connect(server.addr, &[(0x4, 0)]);
    c.frame(h2::WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes());
    c.request(1, "GET", "/big.bin", &[], true);
    c.request(3, "GET", "/big.bin", &[], true);
    // Stream 3's reader reads: its window opens as its data comes (the
    // client helper opens it by each DATA frame's size, and here by the
    // whole file first); stream 1's stays shut.
    c.frame(h2::WINDOW_UPDATE, 0, 3, &(big.len() as u32).to_be_bytes());
    let r = c.response(3);
    assert!(r.status == 200 && r.body == big, "stream 3 is served whole while stream 1 waits");
    c.request(5, "GET", "/small.txt", &[], true);
    c.frame(h2::WINDOW_UPDATE, 0, 5, &100u32.to_be_bytes());
    assert_eq!(c.response(5).body, b"small", "and so is a new stream");
    c.frame(h2::WINDOW_UPDATE, 0, 1, &(big.len() as u32).to_be_bytes());
    let r = c.response(1);
    assert!(r.body == big, "stream 1 goes on once its reader reads");
}

/// Writes `frame` `count` times on a clone of the client's socket from
/// another thread, never reading; returns how many were written before the
/// server stopped taking them (closed, or stopped reading for 3 s).
fn flood_in_background(c: &Client, frame: Vec<u8>, count: usize) -> std::thread::JoinHandle<usize> {
    let mut w = c.socket.try_clone().unwrap();
    w.set_write_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    std::thread::spawn(move || {
        let batch: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 1000).collect();
        let mut sent = 0;
        while sent < count && w.write_all(&batch).is_ok() {
            sent += 1000;
        }
        sent
    })
}

#[test]
fn ping_and_settings_floods_are_answered_at_the_clients_pace_and_a_client_that_never_reads_is_closed() {
    let server = h2c_server("[timeouts]\nsend = \"1s\"\n", "");
    server.write_file("a.txt", b"fine");
    for (name, kind, frame) in [
        ("PING", h2::PING, h2::encode_frame(h2::PING, 0, 0, &[0; 8])),
        ("SETTINGS", h2::SETTINGS, h2::encode_frame(h2::SETTINGS, 0, 0, &[])),
    ] {
        // A client that reads gets an answer to each, and its connection goes on.
        let mut reader = Client::connect(server.addr, &[]);
        let writer = flood_in_background(&reader, frame.clone(), 20_000);
        let mut answers = 0;
        while answers < 20_000 {
            let f = reader.next_frame().expect("answers keep coming");
            answers += usize::from(f.kind == kind && f.flags & h2::ACK != 0);
        }
        assert_eq!(writer.join().unwrap(), 20_000, "{name}");
        assert_eq!(reader.get(1, "/a.txt").status, 200, "{name}: the connection goes on");
        // One that never reads what it asked for: the server stops reading
        // it (its answers wait on the socket, not in memory), and closes it
        // once it has not read for the send timeout.
        let silent = Client::connect(server.addr, &[]);
        let flood = flood_in_background(&silent, frame, 10_000_000);
        let mut other = Client::connect(server.addr, &[]);
        assert_eq!(other.get(1, "/a.txt").status, 200, "{name}: another client is served meanwhile");
        assert!(flood.join().unwrap() < 10_000_000, "{name}: the flood was cut off");
    }
    server
        .wait_until("the silent clients closed as timeouts", |s| s["total"]["timeouts"].as_u64() >= Some(2));
}

#[test]
fn an_empty_data_flood_and_an_hpack_bomb_end_the_connection_as_abuse() {
    let server = h2c_server("", "");
    server.write_file("a.txt", b"fine");
    let mut c = Client::connect(server.addr, &[]);
    c.request(1, "POST", "/a.txt", &[], false);
    let _flood = flood_in_background(&c, h2::encode_frame(h2::DATA, 0, 1, &[]), 100_000);
    assert_eq!(c.until_end(), End::GoAway(h2::ENHANCE_YOUR_CALM), "empty DATA flood");

    // One 4000-byte field put in the dynamic table, then referenced by a
    // one-byte index again and again: 2000 references decode to 8 MB.
    let mut c = Client::connect(server.addr, &[]);
    let mut block =
        c.block(&[(":method", "GET"), (":scheme", "http"), (":path", "/a.txt"), (":authority", "a.test")]);
    let big = "x".repeat(4000);
    block.extend(c.block(&[("x-bomb", big.as_str())]));
    block.extend(std::iter::repeat_n(0xbe, 2000)); // index 62: the newest dynamic entry
    c.frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block[..block.len().min(16_000)]);
    let r = c.response(1);
    assert_eq!((r.status, &c.ended), (0, &Some(End::GoAway(h2::ENHANCE_YOUR_CALM))), "HPACK bomb: {r:?}");

    let mut other = Client::connect(server.addr, &[]);
    assert_eq!(other.get(1, "/a.txt").status, 200, "another client is served");
    server.wait_until("both counted as abuse", |s| s["total"]["http2_goaway_calm"] == 2);
}

#[test]
fn window_update_and_priority_floods_change_nothing() {
    let server = h2c_server("", "");
    server.write_file("a.txt", b"fine");
    for frame in [
        h2::encode_frame(h2::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        h2::encode_frame(h2::PRIORITY, 0, 3, &[0, 0, 0, 0, 16]),
    ] {
        let mut c = Client::connect(server.addr, &[]);
        assert_eq!(flood_in_background(&c, frame, 100_000).join().unwrap(), 100_000);
        assert_eq!(c.get(5, "/a.txt").status, 200, "the same connection still answers");
    }
}
