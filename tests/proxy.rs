//! The reverse proxy and the TCP relay end to end, against real upstreams on
//! loopback: another tine serving files, and a small upstream written here that
//! answers chunked, close-delimited, slow, truncated, echoing and upgrading.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A test upstream: one thread per connection, keep-alive, behaviour by path.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let id = counter.fetch_add(1, Ordering::SeqCst) + 1;
                std::thread::spawn(move || serve(stream, id));
            }
        });
        Upstream { addr, connections }
    }
}

fn serve(stream: TcpStream, id: usize) {
    let port = stream.local_addr().unwrap().port();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    // Set by /drop-next: the next request on this connection is read and then
    // dropped unanswered, as a server does that closed an idle connection.
    let mut drop_next = false;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let header = |name: &str| {
            head.lines()
                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .map(|l| l.split_once(':').unwrap().1.trim().to_string())
        };
        let mut body = Vec::new();
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let reply = |w: &mut TcpStream, body: &[u8]| {
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Conn: {id}\r\nX-Server: {port}\r\n\r\n",
                body.len()
            );
            let _ = w.write_all(body);
        };
        if std::mem::take(&mut drop_next) {
            return;
        }
        if head.starts_with("HEAD ") {
            // The length of the body a GET would get, and no body.
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
            continue;
        }
        match path.as_str() {
            "/then-close" => {
                // A keep-alive response, then the server closes anyway.
                reply(&mut w, b"ok");
                return;
            }
            "/drop-next" => {
                drop_next = true;
                reply(&mut w, b"ok");
            }
            "/no-content" => {
                let _ = w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
            "/not-modified" => {
                let _ = w.write_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
            }
            "/echo-head" => reply(&mut w, head.as_bytes()),
            "/echo-body" => reply(&mut w, &body),
            "/chunked" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for part in [&b"hello, "[..], b"chunked ", b"world"] {
                    let _ = write!(w, "{:x}\r\n", part.len());
                    let _ = w.write_all(part);
                    let _ = w.write_all(b"\r\n");
                    let _ = w.flush();
                }
                let _ = w.write_all(b"0\r\nX-Trailer: yes\r\n\r\n");
            }
            "/close" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
                return;
            }
            "/hang" => {
                // Far longer than any test waits: only an abort ends it early.
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            "/slow" => {
                std::thread::sleep(Duration::from_secs(3));
                reply(&mut w, b"late");
            }
            "/truncated" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                let _ = w.write_all(&[b'x'; 1000]);
                return;
            }
            "/upgrade" => {
                let _ = w.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 65536];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = w.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            let _ = w.write_all(&buf[..n]);
                        }
                    }
                }
            }
            _ => reply(&mut w, b"ok"),
        }
    }
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn proxy_to(servers: &[SocketAddr], extra: &str) -> Server {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [{}]\n{extra}\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
            list.join(", ")
        ))
        .start()
}

fn get_on(conn: &mut BufReader<TcpStream>, path: &str, extra: &str) -> Response {
    conn.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: front.test\r\n{extra}\r\n").as_bytes())
        .unwrap();
    read_response(conn, false)
}

#[test]
fn bodies_come_back_identical_through_the_proxy_from_another_tine() {
    let files = Server::start(1);
    let big = pseudo_random(3 << 20, 21);
    files.write_file("big.bin", &big);
    files.write_file("small.txt", b"small");
    let proxy = proxy_to(&[files.addr], "");
    assert!(proxy.get("/big.bin").body == big);
    let small = proxy.get("/small.txt");
    assert_eq!((small.status, &small.body[..]), (200, &b"small"[..]));
    assert_eq!(proxy.get("/missing").status, 404);
    let etag = small.header("etag").unwrap().to_string();
    let raw = exchange_raw(
        proxy.addr,
        format!("GET /small.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&raw), 304);
    let head = exchange_raw(proxy.addr, b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let resp = read_response(&mut &head[..], true);
    assert_eq!(resp.header("content-length"), Some("3145728"));
    assert!(head.ends_with(b"\r\n\r\n"), "HEAD carries no body");
    let upstream = &proxy.stats()["upstreams"][0];
    // What arrived with the response head is copied; the rest is spliced.
    assert!(
        upstream["bytes_spliced"].as_u64().unwrap() >= (3 << 20) - (64 << 10),
        "the large body went by splice"
    );
}

#[test]
fn reloads_of_the_proxy_under_load_lose_no_request() {
    let files = Server::start(1);
    files.write_file("v.txt", b"through the proxy");
    let proxy = Server::builder()
        .workers(2)
        .config(&format!(
            "[[upstream]]\nname = \"files\"\nservers = [\"{}\"]\n[[route]]\npath = \"/\"\nupstream = \"files\"\n",
            files.addr
        ))
        .start();
    let load = Load::start(&proxy, 8, "/v.txt");
    proxy.wait_until("load flowing", |s| s["total"]["requests"].as_u64() > Some(200));
    for generation in 2..=4 {
        let before = proxy.stats()["total"]["requests"].as_u64().unwrap();
        proxy.signal(libc::SIGHUP);
        proxy.wait_until("reload, and requests after it", |s| {
            s["master"]["generation"] == generation && s["total"]["requests"].as_u64() > Some(before + 200)
        });
    }
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{} failures (first: {:?}) among {ok}", failures.len(), failures.first());
    assert!(ok > 600);
}

#[test]
fn the_access_log_shows_what_the_client_got_from_the_proxy() {
    let up = Upstream::start();
    let proxy = Server::builder()
        .config(&format!(
            "access_log = \"access.log\"\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [[upstream]]\nname = \"dead\"\nservers = [\"{}\"]\n\
             [[route]]\npath = \"/gone/\"\nupstream = \"dead\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
            up.addr,
            closed_port()
        ))
        .start();
    assert_eq!(proxy.get("/no-content").status, 204);
    assert_eq!(proxy.get("/gone/x").status, 502);
    let mut s = proxy.connect();
    s.write_all(b"GET /hang?abandoned HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    proxy.wait_until("the exchange under way", |s| s["upstreams"][0]["active"] == 1);
    drop(s);
    let log = proxy.dir.path().join("access.log");
    wait_for("three lines flushed", || std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 3));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"GET /no-content HTTP/1.1\" 204 "), "{text}");
    assert!(text.contains("\"GET /gone/x HTTP/1.1\" 502 "), "{text}");
    assert!(text.contains("\"GET /hang?abandoned HTTP/1.1\" 499 0 "), "{text}");
}

#[test]
fn hop_by_hop_headers_are_dropped_and_forwarding_headers_added() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let s = proxy.connect();
    let mut conn = BufReader::new(s);
    let extra =
        "Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                 Proxy-Authorization: secret\r\nX-Forwarded-For: 10.9.8.7\r\nX-Kept: yes\r\n";
    let resp = get_on(&mut conn, "/echo-head?q=1", extra);
    let seen = String::from_utf8(resp.body).unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /echo-head?q=1 http/1.1\r\n"), "{seen}");
    // HTTP/1.1 upstream connections persist without saying so.
    for gone in ["x-private", "keep-alive:", "te:", "proxy-authorization", "connection:"] {
        assert!(!seen.contains(gone), "{gone} was forwarded: {seen}");
    }
    assert!(seen.contains("x-kept: yes"));
    assert!(seen.contains("host: front.test"));
    assert!(seen.contains("x-forwarded-for: 10.9.8.7, 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"));
    assert!(seen.contains("x-forwarded-host: front.test"));
}

#[test]
fn chunked_and_close_delimited_responses_are_relayed() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut conn = BufReader::new(proxy.connect());
    conn.get_mut().write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        conn.read_line(&mut head).unwrap();
    }
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let mut decoded = Vec::new();
    loop {
        let mut size = String::new();
        conn.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        if n == 0 {
            let mut trailer = String::new();
            while trailer != "\r\n" {
                trailer.clear();
                conn.read_line(&mut trailer).unwrap();
            }
            break;
        }
        conn.read_exact(&mut chunk).unwrap();
        decoded.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(decoded, b"hello, chunked world");
    // The same client connection goes on after a chunked response.
    assert_eq!(get_on(&mut conn, "/", "").body, b"ok");
    // A body that ends when the upstream closes ends the client connection.
    let raw = exchange_raw(proxy.addr, b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("until the end"), "{text}");
    assert!(text.contains("Connection: close"));
}

#[test]
fn request_bodies_are_relayed_with_length_and_chunked() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let body = pseudo_random(200_000, 5);
    let mut conn = BufReader::new(proxy.connect());
    let mut req =
        format!("POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(&body);
    conn.get_mut().write_all(&req).unwrap();
    assert!(read_response(&mut conn, false).body == body);
    let mut chunked = b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(70_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    conn.get_mut().write_all(&chunked).unwrap();
    assert!(read_response(&mut conn, false).body == body);
    assert_eq!(get_on(&mut conn, "/", "").body, b"ok", "the connection is usable after both");
}

#[test]
fn a_client_that_expects_100_continue_is_invited_to_send_its_body() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut conn = BufReader::new(proxy.connect());
    conn.get_mut()
        .write_all(
            b"POST /echo-head HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
    // The body waits for the invitation, as a client like curl does.
    let interim = read_response(&mut conn, true);
    assert_eq!(interim.status, 100);
    conn.get_mut().write_all(b"hello").unwrap();
    let r = read_response(&mut conn, false);
    assert_eq!(r.status, 200);
    let seen = String::from_utf8(r.body).unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("post /echo-head") && !seen.contains("expect:"), "{seen}");
    assert_eq!(get_on(&mut conn, "/", "").body, b"ok", "the connection goes on");
}

#[test]
fn a_client_that_gives_up_abandons_its_upstream_exchange() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "response_timeout = \"1h\"\n");
    let mut s = proxy.connect();
    s.write_all(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    proxy.wait_until("the exchange under way", |s| s["upstreams"][0]["active"] == 1);
    drop(s);
    let after = proxy.wait_until("the exchange abandoned", |s| s["upstreams"][0]["active"] == 0);
    assert_eq!(after["upstreams"][0]["open"], 0, "its upstream connection closed, not pooled");
    // A client that half-closes after pipelining is still served: its end of
    // stream arrives while the slow first answer is awaited, with the second
    // request still to be read.
    let mut s = proxy.connect();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /echo-head HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).body, b"late");
    assert!(read_response(&mut r, false).body.starts_with(b"GET /echo-head"));
}

#[test]
fn a_slow_upload_that_keeps_moving_outlives_io_timeout() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "io_timeout = \"2s\"\n");
    let mut conn = BufReader::new(proxy.connect());
    conn.get_mut().write_all(b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n").unwrap();
    // Three seconds in all, never more than a third of a second without a byte:
    // the client is slow on purpose, the pauses are what is tested.
    for byte in b"0123456789" {
        std::thread::sleep(Duration::from_millis(300));
        conn.get_mut().write_all(&[*byte]).unwrap();
    }
    let r = read_response(&mut conn, false);
    assert_eq!((r.status, &r.body[..]), (200, &b"0123456789"[..]));
}

#[test]
fn keep_alive_connections_to_the_upstream_are_reused() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = proxy.get("/");
        assert_eq!(r.body, b"ok");
        ids.push(r.header("x-conn").unwrap().to_string());
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "one upstream connection served all: {ids:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let u = &proxy.stats()["upstreams"][0];
    assert_eq!((u["pool_misses"].as_u64(), u["pool_hits"].as_u64()), (Some(1), Some(5)));
    assert_eq!(u["requests"], 6);
}

#[test]
fn idle_upstream_connections_close_after_their_timeout() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "keepalive_timeout = \"1s\"\n");
    assert_eq!(proxy.get("/").body, b"ok");
    // Without a request to find it stale, the worker closes it on its own.
    proxy.wait_until("the idle upstream connection to close", |s| s["upstreams"][0]["open"] == 0);
    assert_eq!(proxy.get("/").body, b"ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2, "a new connection after the timeout");
}

#[test]
fn a_kept_upstream_connection_the_server_closes_is_closed_at_once() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut conn = BufReader::new(proxy.connect());
    assert_eq!(get_on(&mut conn, "/then-close", "").body, b"ok");
    // The client stays connected and idle; its upstream connection is gone.
    proxy.wait_until("the closed upstream connection to be closed", |s| s["upstreams"][0]["open"] == 0);
    assert_eq!(get_on(&mut conn, "/", "").body, b"ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.stats()["upstreams"][0]["failures"], 0);
}

#[test]
fn a_pooled_connection_closes_when_its_server_closes_it_after_its_client_left() {
    // The pooled connection's own token brings its server's close to the
    // pool, though the client connection that used it is gone.
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "keepalive_timeout = \"300s\"\n");
    let answer = proxy.get("/then-close");
    assert_eq!(answer.body, b"ok");
    proxy.wait_until("the pooled connection closed", |s| {
        s["upstreams"][0]["open"] == 0 && s["total"]["active"] == 0
    });
    assert_eq!(proxy.get("/").body, b"ok");
    assert_eq!(proxy.stats()["upstreams"][0]["failures"], 0);
}

#[test]
fn upstream_gauges_lose_the_share_of_workers_that_stop_or_die() {
    let up = Upstream::start();
    let proxy = proxy_to(&[closed_port(), up.addr], "max_fails = 1\nfail_timeout = \"1h\"\n");
    let gauges = |s: &serde_json::Value| {
        let u = &s["upstreams"];
        (u[0]["down"].as_u64().unwrap(), u[1]["open"].as_u64().unwrap())
    };
    let warm_up = || {
        for _ in 0..3 {
            assert_eq!(proxy.get("/").body, b"ok");
        }
    };
    warm_up();
    assert_eq!(gauges(&proxy.stats()), (1, 1), "one server out, one idle pooled connection");
    // A reload: the old worker drains and stops, taking its share with it.
    let old = proxy.worker_pids();
    proxy.signal(libc::SIGHUP);
    proxy.wait_until("the old worker to stop", |s| {
        s["master"]["generation"] == 2 && old.iter().all(|&p| !process_running(p))
    });
    assert_eq!(gauges(&proxy.stats()), (0, 0));
    // A crash: the master clears what the dead worker held.
    warm_up();
    assert_eq!(gauges(&proxy.stats()), (1, 1));
    let pid = proxy.worker_pids()[0];
    send_signal(pid, libc::SIGKILL);
    proxy.wait_until("the worker to be back", |s| {
        s["workers"][0]["pid"].as_i64().is_some_and(|p| p != pid as i64 && p != 0)
            && s["workers"][0]["state"] == "running"
    });
    assert_eq!(gauges(&proxy.stats()), (0, 0));
}

#[test]
fn a_pooled_connection_the_server_dropped_is_retried_on_a_fresh_one() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    assert_eq!(proxy.get("/drop-next").body, b"ok");
    // The pooled connection is taken, the request sent, and the server closes
    // it unanswered: a GET is repeated once on a new connection.
    let r = proxy.get("/");
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    let u = &proxy.stats()["upstreams"][0];
    assert_eq!(u["failures"], 0, "a stale pooled connection is no fault of the server");
    assert_eq!(u["down"], 0);
}

#[test]
fn responses_without_a_body_keep_the_framing() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut conn = BufReader::new(proxy.connect());
    conn.get_mut().write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let head = read_response(&mut conn, true);
    assert_eq!((head.status, head.header("content-length")), (200, Some("5")));
    assert_eq!(get_on(&mut conn, "/no-content", "").status, 204);
    assert_eq!(get_on(&mut conn, "/not-modified", "").status, 304);
    // Had any of them waited for a body, this answer would be out of step.
    let r = get_on(&mut conn, "/", "");
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
}

/// Which upstream answered each of `n` requests, each on its own connection.
fn answered_by(proxy: &Server, n: usize) -> Vec<u16> {
    (0..n).map(|_| proxy.get("/").header("x-server").unwrap().parse().unwrap()).collect()
}

#[test]
fn weights_share_requests_in_proportion() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let proxy = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [{{ address = \"{}\", weight = 3 }}, \"{}\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n",
            a.addr, b.addr
        ))
        .start();
    let by = answered_by(&proxy, 8);
    let to_a = by.iter().filter(|&&p| p == a.addr.port()).count();
    assert_eq!(to_a, 6, "3:1 over 8 requests: {by:?}");
}

#[test]
fn least_conn_avoids_the_busy_server() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let proxy = proxy_to(&[a.addr, b.addr], "balance = \"least_conn\"\n");
    // One request held open on one server; everything else goes to the other.
    let mut held = proxy.connect();
    held.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_for("the slow request to reach an upstream", || {
        a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst) == 1
    });
    let busy_index = if a.connections.load(Ordering::SeqCst) == 1 { 0 } else { 1 };
    let busy = [a.addr.port(), b.addr.port()][busy_index];
    let by = answered_by(&proxy, 4);
    assert!(by.iter().all(|&p| p != busy), "the busy server {busy} got requests: {by:?}");
    let active = |s: &serde_json::Value| [0, 1].map(|i| s["upstreams"][i]["active"].as_u64().unwrap());
    let mut expected = [0, 0];
    expected[busy_index] = 1;
    // The client can hold its answer a moment before the worker ends the
    // exchange that sent it: wait for the other server's gauge to settle.
    proxy.wait_until("the gauge shows only the exchange under way", |s| active(s) == expected);
    held.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(read_response(&mut BufReader::new(held), false).body, b"late");
    proxy.wait_until("no exchange under way", |s| active(s) == [0, 0]);
}

#[test]
fn a_refused_server_is_skipped_then_502_then_504() {
    let up = Upstream::start();
    let proxy = proxy_to(&[closed_port(), up.addr], "response_timeout = \"300ms\"\n");
    for _ in 0..4 {
        assert_eq!(proxy.get("/").body, b"ok", "the refusing server is skipped");
    }
    let u = &proxy.stats()["upstreams"];
    assert!(u[0]["failures"].as_u64() >= Some(1));
    assert_eq!(proxy.get("/slow").status, 504);
    assert!(proxy.stats()["upstreams"][1]["timeouts"].as_u64() >= Some(1));

    let dead = proxy_to(&[closed_port()], "");
    let resp = dead.get("/");
    assert_eq!(resp.status, 502);
    assert_eq!(dead.stats()["total"]["responses_5xx"], 1);
}

#[test]
fn an_upstream_that_dies_mid_response_closes_the_client_cleanly() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let mut s = proxy.connect();
    s.write_all(b"GET /truncated HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    // Bounded by the harness's read timeout: a hang would fail here.
    s.read_to_end(&mut got).expect("closed, not hung");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("Content-Length: 100000"));
    assert!(got.len() < 100_000, "the client saw the body cut short by a close");
    assert_eq!(proxy.get("/").body, b"ok", "the worker goes on");
}

#[test]
fn an_upgrade_becomes_a_two_way_tunnel() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "");
    let s = proxy.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        r.read_line(&mut head).unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Upgrade: echo"));
    let message = pseudo_random(300_000, 8);
    assert!(duplex(r, w, &message) == message, "echoed through the tunnel, then half-closed");
}

#[test]
fn a_stream_relays_raw_tcp_with_splice() {
    let echo = echo_server();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n[[stream]]\nlisten = \"127.0.0.1:0\"\nupstream = \"echo\"\n"
        ))
        .start();
    let addr = stream_addr(&server, "echo");
    let data = pseudo_random(8 << 20, 13);
    let s = connect(addr);
    let got = duplex(s.try_clone().unwrap(), s, &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "checksums differ");
    let stats = server.wait_until("tunnel closed", |s| s["total"]["active"] == 0);
    assert!(stats["upstreams"][0]["bytes_spliced"].as_u64().unwrap() >= 2 * (8 << 20));
    assert_eq!(stats["upstreams"][0]["bytes_copied"], 0, "nothing passed through user space");
}

#[test]
fn a_stream_fails_over_to_the_next_server_and_closes_when_idle() {
    let echo = echo_server();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"echo\"\nservers = [\"{}\", \"{echo}\"]\n\
             [[stream]]\nlisten = \"127.0.0.1:0\"\nupstream = \"echo\"\nidle_timeout = \"1s\"\n",
            closed_port()
        ))
        .start();
    let addr = stream_addr(&server, "echo");
    let mut s = connect(addr);
    s.write_all(b"through the second server").unwrap();
    let mut got = [0u8; 25];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through the second server");
    let stats = server.stats();
    assert_eq!(stats["upstreams"][0]["failures"], 1, "the refused server is counted");
    assert_eq!(stats["upstreams"][1]["active"], 1, "the relay counts as under way");
    // Silent both ways for its idle timeout: closed.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.wait_until("the relay gone from the gauges", |s| {
        s["total"]["active"] == 0 && s["upstreams"][1]["active"] == 0 && s["upstreams"][1]["open"] == 0
    });
}

#[test]
fn routes_pick_the_longest_prefix_and_unmatched_is_404() {
    let up = Upstream::start();
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n[[route]]\npath = \"/api/\"\nupstream = \"app\"\n\
             [[route]]\npath = \"/static/\"\nroot = \"{{root}}\"\n",
            up.addr
        ))
        .start();
    server.write_file("static/a.txt", b"from disk");
    assert_eq!(server.get("/api/x").body, b"ok");
    assert_eq!(server.get("/static/a.txt").body, b"from disk");
    assert_eq!(server.get("/elsewhere").status, 404);
    // A target that climbs out of its prefix is refused, not routed by its text.
    assert_eq!(server.get("/api/../static/a.txt").status, 400);
    assert_eq!(server.get("/api/%2e%2e/x").status, 400);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "neither reached the upstream");
}

#[test]
fn a_failing_server_is_taken_out_then_probed() {
    let up = Upstream::start();
    let proxy = proxy_to(&[closed_port(), up.addr], "max_fails = 2\nfail_timeout = \"1h\"\n");
    for _ in 0..12 {
        assert_eq!(proxy.get("/").body, b"ok");
    }
    let u = &proxy.stats()["upstreams"];
    assert_eq!(u[0]["failures"], 2, "out after two failures: round robin stopped sending it requests");
    assert_eq!(u[0]["down"], 1);
    assert_eq!(u[1]["down"], 0);
    assert!(u[1]["requests"].as_u64() >= Some(12));
}

#[test]
fn upstreams_on_unix_sockets_work_for_http_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                // Answers one HTTP request, or echoes raw bytes for a stream.
                let mut first = String::new();
                if r.read_line(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                if first.starts_with("GET ") {
                    let mut line = String::new();
                    while line != "\r\n" {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                    }
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nover unix");
                } else {
                    let _ = w.write_all(first.as_bytes());
                    let _ = std::io::copy(&mut r, &mut w);
                }
            });
        }
    });
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"u\"\nservers = [\"unix:{}\"]\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
             [[stream]]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n",
            path.display()
        ))
        .start();
    assert_eq!(server.get("/").body, b"over unix");
    let addr = stream_addr(&server, "u");
    let mut s = connect(addr);
    s.write_all(b"raw line\nand more").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"raw line\nand more");
}

/// SHA-1 (RFC 3174), only for the WebSocket handshake below.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn websocket_accept(key: &str) -> String {
    base64(&sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()))
}

/// A WebSocket echo server: RFC 6455 handshake, then every masked client frame
/// comes back as an unmasked frame with the same opcode and payload.
fn websocket_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut key = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.strip_prefix("Sec-WebSocket-Key:") {
                        key = v.trim().to_string();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let accept = websocket_accept(&key);
                let _ = write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                loop {
                    let mut h = [0u8; 2];
                    if r.read_exact(&mut h).is_err() {
                        return;
                    }
                    let opcode = h[0] & 0x0f;
                    let mut len = (h[1] & 0x7f) as usize;
                    if len == 126 {
                        let mut l = [0u8; 2];
                        r.read_exact(&mut l).unwrap();
                        len = u16::from_be_bytes(l) as usize;
                    }
                    let mut mask = [0u8; 4];
                    r.read_exact(&mut mask).unwrap();
                    let mut payload = vec![0u8; len];
                    r.read_exact(&mut payload).unwrap();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    let mut frame = vec![0x80 | opcode];
                    if len < 126 {
                        frame.push(len as u8);
                    } else {
                        frame.push(126);
                        frame.extend_from_slice(&(len as u16).to_be_bytes());
                    }
                    frame.extend_from_slice(&payload);
                    let _ = w.write_all(&frame);
                    if opcode == 8 {
                        return; // close frame echoed: done
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_websocket_echo_works_through_the_proxy() {
    assert_eq!(
        websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "RFC 6455 example"
    );
    let ws = websocket_echo_server();
    let proxy = proxy_to(&[ws], "");
    let s = proxy.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    write!(
        w,
        "GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        r.read_line(&mut head).unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(&format!("Sec-WebSocket-Accept: {}", websocket_accept(key))), "{head}");
    for message in ["hello", &"x".repeat(1000)] {
        let mask = [7u8, 1, 2, 3];
        let mut frame = vec![0x81u8];
        if message.len() < 126 {
            frame.push(0x80 | message.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        w.write_all(&frame).unwrap();
        let mut h = [0u8; 2];
        r.read_exact(&mut h).unwrap();
        assert_eq!(h[0], 0x81, "an unmasked final text frame");
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).unwrap();
            len = u16::from_be_bytes(l) as usize;
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).unwrap();
        assert_eq!(payload, message.as_bytes());
    }
}

/// An upstream that answers every connection with the given bytes, then closes.
fn garbage_upstream(seed: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, s) in listener.incoming().flatten().enumerate() {
            let mut s = s;
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head);
            let prefixes: [&[u8]; 5] = [
                b"",
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            ];
            let mut reply = prefixes[i % 5].to_vec();
            reply.extend_from_slice(&pseudo_random(1 + (i * 131) % 3000, seed + i as u64));
            let _ = s.write_all(&reply);
        }
    });
    addr
}

#[test]
fn garbage_from_clients_or_upstreams_never_breaks_a_worker() {
    let up = Upstream::start();
    let proxy = proxy_to(&[up.addr], "io_timeout = \"2s\"\n");
    let pid = proxy.worker_pids()[0];
    let prefixes: [&[u8]; 4] = [
        b"",
        b"GET /x HTTP/1.1\r\n",
        b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n",
        b"GET /echo-head HTTP/1.1\r\nHost: t\r\n",
    ];
    for i in 0..120u64 {
        let mut raw = prefixes[(i % 4) as usize].to_vec();
        raw.extend_from_slice(&pseudo_random(1 + (i as usize * 53) % 900, i + 100));
        raw.extend_from_slice(b"\r\n\r\n");
        answer_is_http_or_nothing(proxy.addr, &raw, i);
    }
    // An upstream that speaks garbage: 502 or a closed connection, nothing else.
    let liar = proxy_to(&[garbage_upstream(7)], "io_timeout = \"2s\"\nmax_fails = 0\n");
    let liar_pid = liar.worker_pids()[0];
    for i in 0..40 {
        answer_is_http_or_nothing(
            liar.addr,
            b"GET /anything HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            i,
        );
    }
    assert_eq!(proxy.get("/").body, b"ok");
    assert_eq!(proxy.worker_pids()[0], pid, "the proxy's worker was never replaced: {:?}", proxy.log());
    assert_eq!(liar.worker_pids()[0], liar_pid, "nor the one facing the garbage upstream");
    assert_eq!(proxy.stats()["master"]["respawns"], 0);
    assert_eq!(liar.stats()["master"]["respawns"], 0);
}

// The connections to an upstream carry the group's `tcp` options (and no
// Nagle by default), read back from the worker's own sockets.
#[test]
fn upstream_connections_carry_their_groups_tcp_options() {
    let up = Upstream::start();
    let proxy = proxy_to(
        &[up.addr],
        "tcp = { keepalive_idle = \"30s\", keepalive_count = 3, user_timeout = \"7s\" }\n",
    );
    let mut conn = BufReader::new(proxy.connect());
    assert_eq!(get_on(&mut conn, "/", "").body, b"ok");
    let worker = proxy.worker_pids()[0];
    let opt = |level, name| connection_opts(worker, up.addr.port(), level, name);
    let (tcp, sol) = (libc::IPPROTO_TCP, libc::SOL_SOCKET);
    for (level, name, want) in [
        (tcp, libc::TCP_NODELAY, 1),
        (sol, libc::SO_KEEPALIVE, 1),
        (tcp, libc::TCP_KEEPIDLE, 30),
        (tcp, libc::TCP_KEEPCNT, 3),
        (tcp, libc::TCP_USER_TIMEOUT, 7000),
    ] {
        let got = opt(level, name);
        assert!(!got.is_empty() && got.iter().all(|&v| v == want), "option {name}: {got:?}");
    }
}
