//! Bad input of every kind, as raw bytes: each gets a clear status and none
//! harms the worker (no respawn happens across the whole test).

mod common;

use common::*;
use std::io::{BufReader, Read, Write};

fn assert_status_then_close(server: &Server, raw: &[u8], expected: u16) {
    let answer = exchange_raw(server.addr, raw);
    assert_eq!(status_of(&answer), expected, "for {:?}", String::from_utf8_lossy(raw));
}

#[test]
fn malformed_heads_get_a_status_and_a_close() {
    let server = Server::builder().config("access_log = \"access.log\"\n").start();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let huge_head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(17_000));
    let many_headers = format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "X-A: 1\r\n".repeat(150));
    let cases: Vec<(&[u8], u16)> = vec![
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: five\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHo st: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (long_target.as_bytes(), 414),
        (huge_head.as_bytes(), 431),
        (many_headers.as_bytes(), 431),
        (b"GET /a%00b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 400),
        (b"GET /%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 400),
    ];
    for (raw, expected) in &cases {
        assert_status_then_close(&server, raw, *expected);
    }
    let stats = server.stats();
    assert_eq!(stats["total"]["parse_errors"], cases.len() as u64);
    assert_eq!(stats["master"]["respawns"], 0);
    // Each counted by its reason, and the reasons add up.
    let by_reason = [
        ("rejected_malformed", 8),
        ("rejected_version", 1),
        ("rejected_not_implemented", 1),
        ("rejected_uri_too_long", 1),
        ("rejected_head_too_large", 2),
        ("rejected_target", 2),
    ];
    for (reason, n) in by_reason {
        assert_eq!(stats["total"][reason], n, "{reason}");
    }
    // Each has an access-log line with the status it got.
    let log = server.dir.path().join("access.log");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_for("every refusal logged", || lines().lines().count() == cases.len());
    let logged: Vec<u16> =
        lines().lines().map(|l| l.split("\" ").nth(1).unwrap()[..3].parse().unwrap()).collect();
    let mut expected: Vec<u16> = cases.iter().map(|c| c.1).collect();
    let mut got = logged.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{}", lines());
}

#[test]
fn unsupported_methods_get_405_with_allow() {
    let server = Server::start(1);
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "BREW"] {
        let raw = exchange_raw(
            server.addr,
            format!("{method} / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let resp = read_response(&mut &raw[..], false);
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn a_body_on_get_is_discarded_not_parsed_as_the_next_request() {
    let server = Server::start(1);
    server.write_file("a.txt", b"A");
    server.write_file("b.txt", b"B");
    let s = server.connect();
    let mut w = s.try_clone().unwrap();
    // The body looks like a request for /b.txt; it must not be answered.
    let body = b"GET /b.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut batch =
        format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    batch.extend_from_slice(body);
    batch.extend_from_slice(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    w.write_all(&batch).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).body, b"A");
    assert_eq!(read_response(&mut r, false).body, b"A");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a third response appeared: {:?}", String::from_utf8_lossy(&rest));
    assert_eq!(server.total("requests"), 2);
}

// A chunked body sent to a static route is read and thrown away, as nginx
// does, so the request after it is served. What the body holds (here a
// request line in its data, an extension, a trailer) is never a request.
#[test]
fn a_chunked_body_is_discarded_and_the_next_request_served() {
    let server = Server::start(1);
    server.write_file("a.txt", b"A");
    server.write_file("b.txt", b"B");
    let raw = exchange_raw(
        server.addr,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          20;ext=\"x\"\r\nGET /b.txt HTTP/1.1\r\nHost: t\r\n\r\n\r\n0\r\nTrailer-Field: 1\r\n\r\n\
          POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "405", "200"], "{text}");
    assert!(!text.contains("\r\n\r\nB"), "the body's request was answered: {text}");
    assert_eq!(server.total("requests"), 3);
}

// A chunked body that is malformed, or larger than discard_body_bytes, gets
// its answer and then the connection closes: nothing after it is read as a
// request.
#[test]
fn a_chunked_body_that_cannot_be_discarded_closes_after_the_answer() {
    let server = Server::builder().config("[limits]\ndiscard_body_bytes = 64\n").start();
    server.write_file("a.txt", b"A");
    let next = "GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    let big = format!("40\r\n{}\r\n0\r\n\r\n", "x".repeat(64));
    for body in ["5\r\nGET /\r\nX\r\n", "zz\r\n", big.as_str()] {
        let request =
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}{next}");
        let raw = exchange_raw(server.addr, request.as_bytes());
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(status_of(&raw), 200, "{body:?}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{body:?}: {text}");
    }
    assert_eq!(server.get("/a.txt").body, b"A");
}

// A client that asked for 100 (Continue) and got a final answer instead may
// or may not send its body: the connection closes after the answer.
#[test]
fn a_body_behind_expect_continue_closes_after_the_answer() {
    let server = Server::start(1);
    server.write_file("a.txt", b"A");
    let raw = exchange_raw(
        server.addr,
        b"PUT /a.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 26\r\n\r\nGET /a.txt HTTP/1.1\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), 405, "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
}

#[test]
fn a_slow_head_is_cut_off_by_the_header_timeout() {
    let server = Server::builder().config("[timeouts]\nheader = \"300ms\"\n").start();
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).unwrap();
    assert_eq!(n, 0, "closed without a response");
    server.wait_until("timeout counted", |s| s["total"]["timeouts"] == 1);
    // A connection that sends nothing at all is cut off too.
    let mut silent = server.connect();
    let read = silent.read(&mut [0u8; 16]);
    assert!(matches!(read, Ok(0)), "the silent connection ended with {read:?}; log: {:?}", server.log());
    server.wait_until("second timeout", |s| s["total"]["timeouts"] == 2 && s["total"]["active"] == 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::builder().config("[timeouts]\nidle = \"300ms\"\n").start();
    server.write_file("a.txt", b"A");
    let s = server.connect();
    let mut w = s.try_clone().unwrap();
    w.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).body, b"A");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.wait_until("idle close counted", |s| s["total"]["timeouts"] == 1);
}

#[test]
fn random_bytes_never_break_a_worker() {
    let server = Server::start(1);
    server.write_file("a.txt", b"A");
    let pid = server.worker_pids()[0];
    let prefixes: [&[u8]; 4] = [b"", b"GET ", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: t\r\n"];
    for i in 0..200u64 {
        let mut raw = prefixes[(i % 4) as usize].to_vec();
        raw.extend_from_slice(&pseudo_random(1 + (i as usize * 37) % 700, i + 1));
        raw.extend_from_slice(b"\r\n\r\n");
        answer_is_http_or_nothing(server.addr, &raw, i);
    }
    assert_eq!(server.get("/a.txt").body, b"A");
    assert_eq!(server.worker_pids()[0], pid, "the worker was never replaced");
    assert_eq!(server.stats()["master"]["respawns"], 0);
}

#[test]
fn a_malformed_request_after_a_good_pipelined_one_is_refused_cleanly() {
    let server = Server::start(1);
    server.write_file("a.txt", b"A");
    let pid = server.worker_pids()[0];
    let raw = exchange_raw(server.addr, b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE \x01\x02\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("HTTP/1.1 400 Bad Request"), "{text}");
    assert_eq!(server.get("/a.txt").body, b"A");
    assert_eq!(server.worker_pids()[0], pid, "the worker survived");
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// A burst of slowloris connections (each holding a read buffer with a
// partial head) raises a worker's memory; once they are gone the worker
// gives it back instead of keeping its peak for good.
#[test]
fn memory_a_slowloris_burst_took_is_given_back() {
    let server = Server::start(1);
    let worker = server.worker_pids()[0];
    let before = rss_kib(worker);
    let mut held = Vec::new();
    for _ in 0..600 {
        let mut s = server.connect();
        s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}", "p".repeat(2000)).as_bytes()).unwrap();
        held.push(s);
    }
    server.wait_until("the burst held", |s| s["total"]["active"] == 600);
    let peak = rss_kib(worker);
    assert!(peak > before + 4096, "600 partial heads should hold buffers: {before} KiB -> {peak} KiB");
    drop(held);
    server.wait_until("the burst gone", |s| s["total"]["active"] == 0);
    common::wait_for("memory given back", || rss_kib(worker) < before + (peak - before) / 4);
    assert_eq!(server.get("/").status, 403);
}
