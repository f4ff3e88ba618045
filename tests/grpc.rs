//! gRPC and HTTP/2 to upstreams end to end: a real gRPC server and client
//! (Python grpcio, tests/grpc_peer.py) with tine between them, speaking
//! HTTP/2 both ways (h2c from the client; h2c or h2 over TLS to the
//! server). Unary, server streaming of 10,000 messages, client streaming,
//! bidirectional streaming where each side waits for the other, a deadline
//! that expires at tine, a client that cancels, the only server down, and a
//! server's status and message in trailers. Also: many calls sharing one
//! upstream connection, a server that says GOAWAY, an HTTP/1.1 client through
//! an HTTP/2 upstream, and an upstream that does not speak HTTP/2.

mod common;

use common::h2 as raw;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");

/// The gRPC test server, stopped when dropped (its stdin closes).
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
    events: PathBuf,
    _dir: tempfile::TempDir,
}

impl GrpcServer {
    fn start(options: &[&str]) -> GrpcServer {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let mut child = Command::new("python3")
            .arg(PEER)
            .arg("server")
            .arg(&events)
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio (bash .ci/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the gRPC server said {line:?}"));
        GrpcServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), events, _dir: dir }
    }

    /// Waits until the server has written `line` to its events.
    fn wait_for_event(&self, line: &str) {
        wait_for(line, || std::fs::read_to_string(&self.events).is_ok_and(|e| e.lines().any(|l| l == line)));
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tine with h2c on its listener, proxying everything to `servers`.
fn tine_for(servers: &[SocketAddr], extra: &str) -> Server {
    let list = servers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    Server::builder()
        .workers(1)
        .config(&format!(
            "[http2]\nh2c = true\n\
             [[upstream]]\nname = \"grpc\"\nservers = [{list}]\nprotocol = \"h2c\"\n{extra}\n\
             [[route]]\npath = \"/\"\nupstream = \"grpc\"\n"
        ))
        .start()
}

/// Runs one client case against tine; panics with what the client said
/// unless it saw what it must.
fn client(server: &Server, case: &str) {
    let out = Command::new("python3")
        .arg(PEER)
        .arg("client")
        .arg(server.addr.to_string())
        .arg(case)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gRPC client case {case} failed:\n{}\n{}\ntine log: {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

fn upstream(server: &Server, name: &str) -> u64 {
    server.stats()["upstreams"][0][name].as_u64().unwrap()
}

#[test]
fn unary_calls_are_answered_and_share_one_upstream_connection() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "unary");
    client(&server, "parallel");
    let s = server.wait_until("every response counted", |s| s["total"]["grpc_ok"] == 103);
    // 103 calls, over one connection: HTTP/2 multiplexes them.
    assert_eq!(s["upstreams"][0]["h2_connections"], 1, "{s}");
    assert_eq!(s["upstreams"][0]["h2_streams"], 103);
    assert_eq!(s["total"]["grpc_by_tine"], 0);
}

#[test]
fn a_server_stream_of_ten_thousand_messages_arrives_whole() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "server_stream");
}

#[test]
fn a_client_stream_arrives_whole() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "client_stream");
}

#[test]
fn a_bidirectional_stream_flows_both_ways_at_once() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "bidi");
}

#[test]
fn the_servers_status_and_message_arrive_in_trailers() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "status");
    server.wait_until("NOT_FOUND counted", |s| s["total"]["grpc_not_found"] == 1);
    let out = tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("grpc: not_found 1 (answered by tine 0)"), "{text}");
    assert!(text.contains("http/2: connections 1, streams 1"), "{text}");
}

#[test]
fn a_client_that_cancels_cancels_the_server_too() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "cancel");
    grpc.wait_for_event("cancelled stream");
    server.wait_until("the upstream stream reset", |s| s["upstreams"][0]["h2_resets"] == 1);
}

#[test]
fn a_deadline_expires_at_tine_as_deadline_exceeded() {
    let grpc = GrpcServer::start(&[]);
    let server = tine_for(&[grpc.addr], "");
    // The client library's own deadline, which tine passes on.
    client(&server, "deadline");
    grpc.wait_for_event("cancelled slow");

    // A client with no timer of its own: only tine's (grpc-timeout) ends it.
    let mut c = raw::Client::connect(server.addr, &[]);
    let extra = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")];
    c.request(1, "POST", "/t.T/Slow", &extra, false);
    c.frame(raw::DATA, raw::END_STREAM, 1, &[0, 0, 0, 0, 0]);
    let r = c.response(1);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("4"), "{r:?}");
    assert!(r.body.is_empty() && r.reset.is_none(), "a trailers-only answer: {r:?}");
    // The first call's deadline may have passed at tine or at the client
    // first; the second's only at tine.
    let s =
        server.wait_until("DEADLINE_EXCEEDED by tine", |s| s["total"]["grpc_by_tine"].as_u64() >= Some(1));
    assert_eq!(s["total"]["grpc_deadline_exceeded"], s["total"]["grpc_by_tine"], "{s}");
}

#[test]
fn the_only_server_down_is_unavailable_not_a_page() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let server = tine_for(&[addr], "");
    client(&server, "unavailable");
    server.wait_until("UNAVAILABLE by tine", |s| {
        s["total"]["grpc_unavailable"] == 1 && s["total"]["grpc_by_tine"] == 1
    });
}

#[test]
fn a_server_that_says_goaway_is_drained_and_replaced() {
    let grpc = GrpcServer::start(&["max-age", "300"]);
    let server = tine_for(&[grpc.addr], "");
    client(&server, "paced");
    let s = server.stats();
    assert!(upstream(&server, "h2_goaways") >= 1, "the server's GOAWAY was seen: {s}");
    assert!(upstream(&server, "h2_connections") >= 2, "new calls went to a new connection: {s}");
    assert_eq!(s["upstreams"][0]["failures"], 0, "nothing failed: {s}");
}

#[test]
fn grpc_reaches_a_server_over_tls_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = tls::make_cert(dir.path(), "grpc", &["grpc.test"], tls::Alg::Ecdsa);
    let grpc = GrpcServer::start(&["tls", cert.cert.to_str().unwrap(), cert.key.to_str().unwrap()]);
    let extra =
        format!("tls = true\ntls_server_name = \"grpc.test\"\ntls_ca = \"{}\"\n", cert.cert.display());
    let list = format!("\"{}\"", grpc.addr);
    let server = Server::builder()
        .workers(1)
        .config(&format!(
            "[http2]\nh2c = true\n\
             [[upstream]]\nname = \"grpc\"\nservers = [{list}]\nprotocol = \"h2\"\n{extra}\n\
             [[route]]\npath = \"/\"\nupstream = \"grpc\"\n"
        ))
        .start();
    client(&server, "unary");
    client(&server, "bidi");
    let s = server.stats();
    assert_eq!(s["upstreams"][0]["tls_handshakes"], 1, "{s}");
    assert_eq!(s["upstreams"][0]["h2_connections"], 1, "{s}");
}

#[test]
fn an_http1_client_is_served_through_an_http2_upstream() {
    // Another tine is the HTTP/2 (h2c) upstream, serving files.
    let backend = Server::builder().workers(1).config("[http2]\nh2c = true\n").start();
    backend.write_file("hello.txt", b"hello over h2c");
    let server = tine_for(&[backend.addr], "");
    let r = server.get("/hello.txt");
    assert_eq!(r.status, 200, "log: {:?}", server.log());
    assert_eq!(r.body, b"hello over h2c");
    // A chunked request body is decoded into DATA frames (the file server
    // refuses the method, which is the answer it must give).
    let raw_response = exchange_raw(
        server.addr,
        b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&raw_response), 405, "{}", String::from_utf8_lossy(&raw_response));
    assert_eq!(upstream(&server, "h2_streams"), 2);
}

#[test]
fn an_upstream_that_does_not_speak_http2_is_a_502_and_breaks_nothing() {
    // It answers the connection preface with an HTTP/1.1 error, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let _ =
                tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let server = tine_for(&[addr], "max_fails = 0\n");
    for _ in 0..3 {
        assert_eq!(server.get("/").status, 502);
    }
    let mut c = raw::Client::connect(server.addr, &[]);
    c.request(1, "POST", "/t.T/Unary", &[("content-type", "application/grpc")], true);
    let r = c.response(1);
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("14")), "{r:?}");
    // The worker is well: it still answers.
    assert_eq!(server.get("/").status, 502);
    assert_eq!(server.stats()["upstreams"][0]["open"], 0);
}
