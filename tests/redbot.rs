//! REDbot (PyPI `redbot`, HTTP lint) on what a static site sends: a file
//! compressed on the fly, one with a gzip sibling, a small page and a 404.
//! It makes its own negotiation, range and conditional requests; none may
//! draw an error, and the only warnings are the ones docs/operations.md
//! explains.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

/// Whether redbot is here. Under CI (whose script installs it) its absence
/// fails the test.
fn redbot_ready() -> bool {
    let ok = Command::new("redbot").arg("--help").output().is_ok_and(|o| o.status.success());
    assert!(ok || std::env::var_os("CI").is_none(), "redbot is required under CI (bash .ci/run installs it)");
    if !ok {
        eprintln!("SKIPPED: needs redbot (python3 -m pip install redbot; bash .ci/run installs it)");
    }
    ok
}

/// REDbot's notes on `url` that are warnings or errors: (level, subject, summary).
fn complaints(url: &str) -> Vec<(String, String, String)> {
    let out = Command::new("redbot").args(["-o", "har", url]).output().expect("redbot");
    assert!(out.status.success(), "redbot {url}: {}", String::from_utf8_lossy(&out.stderr));
    let har: Value = serde_json::from_slice(&out.stdout).expect("REDbot's HAR output");
    let entries = har["log"]["entries"].as_array().expect("entries");
    assert!(!entries.is_empty(), "{url}: REDbot got no response");
    entries
        .iter()
        .flat_map(|e| e["_red_messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["level"] != "GOOD" && m["level"] != "INFO")
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (text("level"), text("subject"), text("summary"))
        })
        .collect()
}

fn site(server: &Server) {
    let css: String =
        (0..3000).map(|i| format!(".c{i} {{ margin: {i}px; color: #{:03x}; }}\n", i % 4096)).collect();
    server.write_file("style.css", css.as_bytes());
    let js: String = (0..4000).map(|i| format!("export const v{i} = f({i}, \"s{}\");\n", i % 97)).collect();
    server.write_file("app.js", js.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, js.as_bytes()).unwrap();
    server.write_file("app.js.gz", &gz.finish().unwrap());
    server.write_file(
        "page.html",
        &[b"<!doctype html><title>t</title><p>".as_slice(), &[b'x'; 2000], b"</p>"].concat(),
    );
}

#[test]
fn redbot_finds_no_error_in_compressed_and_plain_responses() {
    if !redbot_ready() {
        return;
    }
    let server = Server::builder()
        .config(
            "[[route]]\npath = \"/\"\nroot = \"{root}\"\nheaders = { Cache-Control = \"max-age=3600\" }\n",
        )
        .start();
    site(&server);
    for path in ["/style.css", "/app.js", "/page.html", "/missing.html"] {
        let found = complaints(&format!("http://{}{path}", server.addr));
        assert!(found.is_empty(), "{path}: {found:?}");
    }
}

#[test]
fn without_a_cache_policy_redbot_only_notes_heuristic_freshness() {
    if !redbot_ready() {
        return;
    }
    let server = Server::start(1);
    site(&server);
    for path in ["/style.css", "/app.js"] {
        let found = complaints(&format!("http://{}{path}", server.addr));
        let unexpected: Vec<_> =
            found.iter().filter(|(_, _, summary)| !summary.contains("assign their own freshness")).collect();
        assert!(unexpected.is_empty(), "{path}: {found:?}");
        assert!(found.iter().all(|(level, _, _)| level == "WARN"), "{path}: {found:?}");
        assert!(!found.is_empty(), "{path}: REDbot notes a response without Cache-Control (it ran)");
    }
}
