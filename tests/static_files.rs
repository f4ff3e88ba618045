//! Static files end to end: bodies byte-identical, headers, validators, ranges,
//! directories, keep-alive and pipelining, and the root as a hard boundary.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};

#[test]
fn files_come_back_byte_identical_with_their_headers() {
    let server = Server::start(1);
    let small = pseudo_random(1000, 1);
    let large = pseudo_random(3 << 20, 2);
    server.write_file("small.bin", &small);
    server.write_file("large.bin", &large);
    server.write_file("page.html", b"<p>hi</p>");
    server.write_file("empty.txt", b"");

    let r = server.get("/small.bin");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, small);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.header("server"), Some("tine"));
    assert!(r.header("date").unwrap().ends_with(" GMT"));
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));
    assert!(r.header("etag").unwrap().starts_with('"'));
    assert!(server.get("/large.bin").body == large);
    assert_eq!(server.get("/page.html").header("content-type"), Some("text/html"));
    let empty = server.get("/empty.txt");
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    assert_eq!(server.get("/missing").status, 404);
    let stats = server.stats();
    let (sent, by_sendfile) = (
        stats["total"]["bytes_sent"].as_u64().unwrap(),
        stats["total"]["bytes_sent_sendfile"].as_u64().unwrap(),
    );
    assert!(by_sendfile >= 3 << 20, "the large file goes out by sendfile");
    assert!(sent - by_sendfile >= 1000, "the small file is sent from memory");
}

#[test]
fn a_file_changed_on_disk_is_served_fresh() {
    let server = Server::builder().config("[cache]\nvalid = \"200ms\"\n").start();
    server.write_file("v.txt", b"first");
    server.write_file("big.bin", &pseudo_random(100_000, 9));
    assert_eq!(server.get("/v.txt").body, b"first");
    assert_eq!(server.get("/big.bin").body.len(), 100_000);
    // Rewritten in place, replaced by a rename, then deleted.
    server.write_file("v.txt", b"second, longer");
    wait_for("the rewritten file", || server.get("/v.txt").body == b"second, longer");
    let tmp = server.root.join("v.tmp");
    std::fs::write(&tmp, b"third").unwrap();
    std::fs::rename(&tmp, server.root.join("v.txt")).unwrap();
    wait_for("the renamed file", || server.get("/v.txt").body == b"third");
    std::fs::remove_file(server.root.join("v.txt")).unwrap();
    wait_for("the deleted file to be gone", || server.get("/v.txt").status == 404);
    let replacement = pseudo_random(50_000, 10);
    server.write_file("big.bin", &replacement);
    wait_for("the replaced large file", || server.get("/big.bin").body == replacement);
}

#[test]
fn with_the_cache_off_every_request_sees_the_disk() {
    let server = Server::builder().config("[cache]\nopen_files = 0\n").start();
    server.write_file("v.txt", b"one");
    assert_eq!(server.get("/v.txt").body, b"one");
    server.write_file("v.txt", b"two");
    assert_eq!(server.get("/v.txt").body, b"two");
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let server = Server::start(1);
    server.write_file("a.txt", b"hello");
    let mut s = server.connect();
    s.write_all(b"HEAD /a.txt HTTP/1.1\r\nHost: t\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let head = read_response(&mut r, true);
    assert_eq!((head.status, head.header("content-length")), (200, Some("5")));
    let missing = read_response(&mut r, true);
    assert_eq!(missing.status, 404);
    // Had either HEAD carried a body, this would not parse as the GET's answer.
    let get = read_response(&mut r, false);
    assert_eq!(get.body, b"hello");
    assert_eq!(get.header("etag"), head.header("etag"));
}

#[test]
fn conditional_requests_get_304() {
    let server = Server::start(1);
    server.write_file("a.txt", b"hello");
    let first = server.get("/a.txt");
    let etag = first.header("etag").unwrap().to_string();
    let lm = first.header("last-modified").unwrap().to_string();
    for (name, value) in [("If-None-Match", etag.as_str()), ("If-Modified-Since", lm.as_str())] {
        let raw = exchange_raw(
            server.addr,
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\n{name}: {value}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let resp = read_response(&mut &raw[..], false);
        assert_eq!(resp.status, 304, "{name}");
        assert_eq!(resp.header("etag"), Some(etag.as_str()));
        assert!(raw.ends_with(b"\r\n\r\n"), "a 304 carries no body");
    }
    let stale = exchange_raw(
        server.addr,
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"other\"\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&stale), 200);
}

#[test]
fn single_byte_ranges() {
    let server = Server::start(1);
    let data = pseudo_random(10_000, 3);
    server.write_file("r.bin", &data);
    let ask = |range: &str| {
        let raw = exchange_raw(
            server.addr,
            format!("GET /r.bin HTTP/1.1\r\nHost: t\r\nRange: {range}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        read_response(&mut &raw[..], false)
    };
    let r = ask("bytes=100-199");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(r.body, &data[100..200]);
    let tail = ask("bytes=-10");
    assert_eq!((tail.status, &tail.body[..]), (206, &data[9990..]));
    let open = ask("bytes=9000-");
    assert_eq!(open.body, &data[9000..]);
    let bad = ask("bytes=20000-");
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */10000"));
    let several = ask("bytes=0-1,5-6");
    assert_eq!((several.status, several.body.len()), (200, 10_000));
}

#[test]
fn directories_use_index_html_and_are_never_listed() {
    let server = Server::start(1);
    server.write_file("index.html", b"root index");
    server.write_file("docs/index.html", b"docs index");
    server.write_file("bare/file.txt", b"x");
    let root = server.get("/");
    assert_eq!((root.status, &root.body[..]), (200, &b"root index"[..]));
    assert_eq!(root.header("content-type"), Some("text/html"));
    assert_eq!(server.get("/docs/").body, b"docs index");
    let redirect = server.get("/docs?x=1");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/docs/?x=1"));
    let bare = server.get("/bare/");
    assert_eq!(bare.status, 403);
    assert!(!String::from_utf8_lossy(&bare.body).contains("file.txt"), "no listing");
    assert_eq!(server.get("/bare/file.txt/").status, 404);
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let server = Server::start(1);
    for i in 0..5 {
        server.write_file(&format!("{i}.txt"), format!("file {i}").as_bytes());
    }
    let s = server.connect();
    let mut w = s.try_clone().unwrap();
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(format!("GET /{i}.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    w.write_all(&batch).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..5 {
        assert_eq!(read_response(&mut r, false).body, format!("file {i}").as_bytes());
    }
    // HTTP/1.0 keeps the connection only when asked, and says so.
    w.write_all(b"GET /0.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let kept = read_response(&mut r, false);
    assert_eq!(kept.header("connection"), Some("keep-alive"));
    w.write_all(b"GET /1.txt HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).header("connection"), Some("close"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after an HTTP/1.0 request without keep-alive");
    assert_eq!(server.total("accepted"), 1);
}

#[test]
fn nothing_outside_the_root_is_ever_served() {
    let server = Server::start(1);
    let secret = server.dir.path().join("secret.txt");
    std::fs::write(&secret, b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, server.root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", server.root.join("etc")).unwrap();
    server.write_file("inside.txt", b"fine");
    std::os::unix::fs::symlink("inside.txt", server.root.join("alias.txt")).unwrap();
    for target in [
        "/../secret.txt",
        "/../../../../etc/passwd",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/..%2fsecret.txt",
        "/a/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/inside.txt%00.html",
        "/escape.txt",
        "/etc/passwd",
        "/./../secret.txt",
        "//../secret.txt",
        "http://t/../secret.txt",
    ] {
        let raw = exchange_raw(
            server.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = status_of(&raw);
        assert!([400, 403, 404].contains(&status), "{target} gave {status}");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("TOP SECRET") && !text.contains("root:"), "{target} leaked: {text}");
    }
    assert_eq!(server.get("/alias.txt").body, b"fine", "a symlink inside the root is fine");
}

#[test]
fn a_fifo_under_the_root_does_not_block_the_worker() {
    let server = Server::start(1);
    let fifo = std::ffi::CString::new(server.root.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    server.write_file("a.txt", b"ok");
    assert_eq!(server.get("/pipe").status, 404);
    assert_eq!(server.get("/a.txt").body, b"ok");
}

#[test]
fn a_slow_reader_of_a_large_file_does_not_hold_up_others() {
    let server = Server::start(1);
    server.write_file("huge.bin", &pseudo_random(32 << 20, 4));
    server.write_file("small.txt", b"quick");
    let mut slow = server.connect();
    slow.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 16];
    slow.read_exact(&mut first).unwrap();
    // The slow client now reads nothing; the single worker must still serve.
    for _ in 0..5 {
        assert_eq!(server.get("/small.txt").body, b"quick");
    }
    drop(slow);
}

#[test]
fn a_client_reading_slower_than_min_send_rate_is_cut_off() {
    let server = Server::builder()
        .config("[timeouts]\nsend = \"1s\"\n[limits]\nmin_send_rate = 1048576\n[tcp]\nsend_buffer = 65536\n")
        .start();
    let file = pseudo_random(8 << 20, 21);
    server.write_file("big.bin", &file);
    let request = b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    // A reader at full speed gets the whole file under the same rule.
    let mut fast = server.connect();
    fast.write_all(request).unwrap();
    let r = read_response(&mut BufReader::new(fast), false);
    assert!(r.status == 200 && r.body == file);

    // 4 KiB every 20 ms is 200 KB/s, a fifth of the minimum: at that pace
    // the file would take 40 s; the server gives up once the send timeout's
    // grace and what was read so far are spent.
    let mut slow = server.connect();
    slow.write_all(request).unwrap();
    let mut got = 0usize;
    let mut chunk = [0u8; 4096];
    let ended = loop {
        match slow.read(&mut chunk) {
            Ok(0) => break "closed",
            Ok(n) => got += n,
            Err(_) => break "reset",
        }
        assert!(got < file.len() + 1024, "the slow reader got the whole file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(got < file.len(), "{ended} after {got} bytes");
    server.wait_until("the slow reader counted as a timeout", |s| s["total"]["timeouts"] == 1);
}
