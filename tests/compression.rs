//! Content codings end to end: precompressed siblings and on-the-fly
//! compression chosen by Accept-Encoding, each representation with its own
//! ETag, ranges and conditionals over the coded bytes, Vary, 406, stale
//! siblings, cache invalidation, and the route keys that turn it off.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};

fn get_with(server: &Server, path: &str, headers: &str) -> Response {
    let mut s = server.connect();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut BufReader::new(s), false)
}

fn accepting(server: &Server, path: &str, accept_encoding: &str) -> Response {
    get_with(server, path, &format!("Accept-Encoding: {accept_encoding}\r\n"))
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096).read_to_end(&mut out).expect("a valid brotli stream");
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("a valid gzip stream");
    out
}

/// JavaScript-like text of about `len` bytes that compresses the way real
/// code does (repetitive, but not trivially).
fn script(len: usize, seed: u64) -> Vec<u8> {
    let noise = pseudo_random(len / 8 + 1, seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(
            format!("export function f{}(a) {{ return a + {}; }}\n", i, noise[i % noise.len()]).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// A file with siblings, and the route defaults (siblings and compression on).
fn with_siblings() -> (Server, Vec<u8>, Vec<u8>, Vec<u8>) {
    let server = Server::start(1);
    let js = script(100 * 1024, 1);
    let (br, gz) = (brotli(&js), gzip(&js));
    server.write_file("app.js", &js);
    server.write_file("app.js.br", &br);
    server.write_file("app.js.gz", &gz);
    (server, js, br, gz)
}

#[test]
fn each_coding_is_chosen_by_accept_encoding() {
    let (server, js, br, gz) = with_siblings();
    let plain = server.get("/app.js");
    assert_eq!((plain.status, plain.header("content-encoding")), (200, None));
    assert_eq!(plain.body, js, "no Accept-Encoding: the file as it is");
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));

    let cases = [
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip, deflate", Some("gzip")),
        ("br;q=0.5, gzip", Some("gzip")),
        ("gzip;q=0.5, br;q=0.9", Some("br")),
        ("*", Some("br")),
        ("br;q=0, *", Some("gzip")),
        ("identity", None),
        ("br;q=0, gzip;q=0", None),
        ("", None),
        ("identity;q=0, gzip", Some("gzip")),
        ("compress, deflate", None),
    ];
    for (accept, want) in cases {
        let r = accepting(&server, "/app.js", accept);
        assert_eq!(r.status, 200, "{accept:?}");
        assert_eq!(r.header("content-encoding"), want, "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        let expected = match want {
            Some("br") => &br,
            Some("gzip") => &gz,
            _ => &js,
        };
        assert!(r.body == *expected, "{accept:?}: the sibling's bytes exactly");
        assert_eq!(r.header("content-length"), Some(expected.len().to_string().as_str()));
        assert_eq!(r.header("content-type"), plain.header("content-type"), "{accept:?}");
    }

    let etags: Vec<String> = ["identity", "br", "gzip"]
        .iter()
        .map(|a| accepting(&server, "/app.js", a).header("etag").unwrap().to_string())
        .collect();
    assert!(etags[0] != etags[1] && etags[1] != etags[2] && etags[0] != etags[2], "{etags:?}");

    // HEAD says what GET would, without the body.
    let mut s = server.connect();
    s.write_all(b"HEAD /app.js HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\nConnection: close\r\n\r\n")
        .unwrap();
    let head = read_response(&mut BufReader::new(s), true);
    assert_eq!(head.header("content-encoding"), Some("br"));
    assert_eq!(head.header("content-length"), Some(br.len().to_string().as_str()));
}

#[test]
fn identity_refused_is_406_only_when_nothing_else_is_acceptable() {
    let (server, _, _, gz) = with_siblings();
    server.write_file("photo.png", &pseudo_random(5000, 3));
    let refused = accepting(&server, "/photo.png", "identity;q=0");
    assert_eq!(refused.status, 406);
    assert_eq!(refused.header("vary"), None, "a PNG has one representation");
    let refused = accepting(&server, "/app.js", "identity;q=0, br;q=0, gzip;q=0");
    assert_eq!(refused.status, 406);
    assert_eq!(refused.header("vary"), Some("Accept-Encoding"));
    assert_eq!(accepting(&server, "/app.js", "*;q=0").status, 406);
    let gzip_only = accepting(&server, "/app.js", "identity;q=0, gzip");
    assert_eq!((gzip_only.status, gzip_only.body == gz), (200, true));
    // An image with no coded form is sent as it is to a client naming
    // codings only (identity is not refused).
    let png = accepting(&server, "/photo.png", "br, gzip");
    assert_eq!((png.status, png.header("content-encoding"), png.header("vary")), (200, None, None));
}

#[test]
fn ranges_and_conditionals_apply_to_the_coded_representation() {
    let (server, js, br, _) = with_siblings();
    let r = get_with(&server, "/app.js", "Accept-Encoding: br\r\nRange: bytes=10-99\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.header("content-range"), Some(format!("bytes 10-99/{}", br.len()).as_str()));
    assert_eq!(r.body, &br[10..100]);
    let tail = get_with(&server, "/app.js", "Accept-Encoding: br\r\nRange: bytes=-5\r\n");
    assert_eq!(tail.body, &br[br.len() - 5..]);

    let br_tag = accepting(&server, "/app.js", "br").header("etag").unwrap().to_string();
    let hit = get_with(&server, "/app.js", &format!("Accept-Encoding: br\r\nIf-None-Match: {br_tag}\r\n"));
    assert_eq!(hit.status, 304);
    assert_eq!(hit.header("etag"), Some(br_tag.as_str()));
    assert_eq!(hit.header("vary"), Some("Accept-Encoding"));
    // The brotli tag does not validate the gzip or the plain representation.
    let other =
        get_with(&server, "/app.js", &format!("Accept-Encoding: gzip\r\nIf-None-Match: {br_tag}\r\n"));
    assert_eq!((other.status, other.header("content-encoding")), (200, Some("gzip")));
    let plain = get_with(&server, "/app.js", &format!("If-None-Match: {br_tag}\r\n"));
    assert_eq!((plain.status, plain.body == js), (200, true));
    // If-Range with the brotli tag: the range holds for brotli only.
    let ranged = format!("Range: bytes=0-9\r\nIf-Range: {br_tag}\r\n");
    assert_eq!(get_with(&server, "/app.js", &format!("Accept-Encoding: br\r\n{ranged}")).status, 206);
    assert_eq!(get_with(&server, "/app.js", &ranged).status, 200);
}

#[test]
fn a_sibling_older_than_its_file_is_ignored() {
    let server =
        Server::builder().config("[[route]]\npath = \"/\"\nroot = \"{root}\"\ncompress = false\n").start();
    let css = script(20_000, 4);
    let stale = server.write_file("site.css.gz", &gzip(b"an older stylesheet"));
    let fresh = server.write_file("site.css", &css);
    let fresh_time = std::fs::metadata(&fresh).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(fresh_time - std::time::Duration::from_secs(60)).unwrap();
    drop(f);
    let r = accepting(&server, "/site.css", "gzip");
    assert_eq!((r.status, r.header("content-encoding"), r.header("vary")), (200, None, None));
    assert_eq!(r.body, css);
    // Brought up to date, it is served (after the cache looks again).
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(fresh_time).unwrap();
    drop(f);
    std::fs::write(&stale, gzip(&css)).unwrap();
    wait_for("the refreshed sibling", || {
        let r = accepting(&server, "/site.css", "gzip");
        r.header("content-encoding") == Some("gzip") && gunzip(&r.body) == css
    });
}

#[test]
fn compression_on_the_fly_decodes_to_the_file_and_is_done_once() {
    let server = Server::start(1);
    // Large enough that its brotli form goes out with sendfile from a memfd,
    // one that fits in memory, one too small to be worth it, and an image.
    let big: Vec<u8> =
        pseudo_random(150_000, 5).iter().flat_map(|b| format!("{b:02x} ").into_bytes()).collect();
    let small = script(4000, 6);
    server.write_file("data.txt", &big);
    server.write_file("small.js", &small);
    server.write_file("tiny.css", b"body{margin:0}");
    server.write_file("photo.jpg", &pseudo_random(50_000, 7));

    for (path, original) in [("/data.txt", &big), ("/small.js", &small)] {
        let b = accepting(&server, path, "br");
        assert_eq!(b.header("content-encoding"), Some("br"), "{path}");
        assert_eq!(b.header("vary"), Some("Accept-Encoding"));
        assert!(b.body.len() < original.len(), "{path}: {} of {}", b.body.len(), original.len());
        assert!(unbrotli(&b.body) == *original, "{path}: brotli decodes to the file");
        let g = accepting(&server, path, "gzip");
        assert_eq!(g.header("content-encoding"), Some("gzip"));
        assert!(gunzip(&g.body) == *original, "{path}: gzip decodes to the file");
        assert!(g.header("etag") != b.header("etag"));
        // The same bytes again: made once, kept.
        assert_eq!(accepting(&server, path, "br").body, b.body);
        assert_eq!(accepting(&server, path, "br").header("etag"), b.header("etag"));
        // And the plain file beside it.
        let p = server.get(path);
        assert!(p.body == *original && p.header("vary") == Some("Accept-Encoding"));
    }
    let before = server.stats()["total"]["bytes_sent_sendfile"].as_u64().unwrap();
    let b = accepting(&server, "/data.txt", "br");
    let after = server.stats()["total"]["bytes_sent_sendfile"].as_u64().unwrap();
    assert!(b.body.len() > 16 * 1024, "large enough for the memfd path");
    assert!(after - before >= b.body.len() as u64, "the large compressed copy goes out by sendfile");

    for path in ["/tiny.css", "/photo.jpg"] {
        let r = accepting(&server, path, "br, gzip");
        assert_eq!((r.status, r.header("content-encoding"), r.header("vary")), (200, None, None), "{path}");
    }
}

#[test]
fn a_compressed_copy_follows_its_file_when_it_changes() {
    let server = Server::builder().config("[cache]\nvalid = \"100ms\"\n").start();
    let first = script(30_000, 8);
    server.write_file("lib.js", &first);
    assert!(unbrotli(&accepting(&server, "/lib.js", "br").body) == first);
    let second = script(31_000, 9);
    server.write_file("lib.js", &second);
    wait_for("the new file's compressed copy", || {
        unbrotli(&accepting(&server, "/lib.js", "br").body) == second
    });
    assert!(gunzip(&accepting(&server, "/lib.js", "gzip").body) == second);
}

#[test]
fn routes_can_turn_codings_off_and_set_types() {
    let server = Server::builder()
        .config(
            "[[route]]\npath = \"/\"\nroot = \"{root}\"\ncharset = \"utf-8\"\n\
             mime_types = { wasm = \"application/wasm\", md = \"text/markdown\" }\n\
             [[route]]\npath = \"/raw/\"\nroot = \"{root}\"\nprecompressed = false\ncompress = false\n",
        )
        .start();
    let js = script(50_000, 10);
    std::fs::create_dir(server.root.join("raw")).unwrap();
    for dir in ["", "raw/"] {
        server.write_file(&format!("{dir}app.js"), &js);
        server.write_file(&format!("{dir}app.js.br"), &brotli(&js));
    }
    server.write_file("notes.md", b"# notes\n");
    server.write_file("page.html", b"<p>hi</p>");
    server.write_file("mod.wasm", b"\0asm\x01\0\0\0");
    server.write_file("photo.png", &pseudo_random(100, 11));

    let raw = accepting(&server, "/raw/app.js", "br, gzip");
    assert_eq!((raw.header("content-encoding"), raw.header("vary")), (None, None));
    assert_eq!(raw.body, js);
    assert_eq!(accepting(&server, "/app.js", "br, gzip").header("content-encoding"), Some("br"));

    let type_of = |path: &str| server.get(path).header("content-type").map(String::from);
    assert_eq!(type_of("/page.html").as_deref(), Some("text/html; charset=utf-8"));
    assert_eq!(type_of("/notes.md").as_deref(), Some("text/markdown; charset=utf-8"));
    assert_eq!(type_of("/mod.wasm").as_deref(), Some("application/wasm"));
    assert_eq!(type_of("/photo.png").as_deref(), Some("image/png"));
    assert_eq!(type_of("/raw/app.js"), type_of("/app.js").map(|t| t.replace("; charset=utf-8", "")));
}

#[test]
fn route_keys_are_checked() {
    let bad = [
        ("[[route]]\nroot = \"{root}\"\nmime_types = { x = \"not a type\" }\n", "not a media type"),
        ("[[route]]\nroot = \"{root}\"\ncharset = \"utf 8\"\n", "not a charset"),
        ("[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:9\"]\n[[route]]\nupstream = \"a\"\ncompress = true\n", "compress applies to routes with a root"),
        ("[compression]\nbrotli_level = 12\n", "brotli_level"),
    ];
    for (toml, message) in bad {
        assert_check_refuses(toml, message);
    }
}

#[test]
fn of_codings_the_client_takes_equally_the_smaller_is_sent() {
    let server = Server::start(1);
    let js = script(60_000, 12);
    // A sibling made carelessly (brotli at its fastest) can be larger than
    // the gzip one beside it.
    let mut fast_brotli = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut fast_brotli, 4096, 0, 22);
        w.write_all(&js).unwrap();
    }
    let gz = gzip(&js);
    assert!(fast_brotli.len() > gz.len(), "{} vs {}", fast_brotli.len(), gz.len());
    server.write_file("lib.js", &js);
    server.write_file("lib.js.br", &fast_brotli);
    server.write_file("lib.js.gz", &gz);
    let equal = accepting(&server, "/lib.js", "br, gzip");
    assert_eq!((equal.header("content-encoding"), equal.body == gz), (Some("gzip"), true));
    let preferred = accepting(&server, "/lib.js", "br, gzip;q=0.9");
    assert_eq!((preferred.header("content-encoding"), preferred.body == fast_brotli), (Some("br"), true));
}
