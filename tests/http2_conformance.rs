//! The standing HTTP/2 conformance run: httpwg-cli (crates.io; `.ci/run`
//! installs it) against an h2c listener of the real binary. Every case must
//! pass, or be one of the exceptions argued in docs/http2.md.

mod common;

use common::Server;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The httpwg binary: on PATH, or where `cargo install` puts it.
fn httpwg() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("httpwg"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin/httpwg"));
    on_path.chain(cargo_home).find(|p| p.is_file())
}

/// The cases docs/http2.md argues for, by name.
fn argued_exceptions() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http2.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `RFC 9113 :: "))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("RFC 9113 :: {name}"))
        .collect()
}

fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence ends with its letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn httpwg_cases_pass_or_are_argued() {
    let Some(httpwg) = httpwg() else {
        assert!(std::env::var_os("CI").is_none(), "CI runs the conformance suite: install httpwg-cli");
        eprintln!("httpwg not installed (cargo install --locked httpwg-cli): conformance not run");
        return;
    };
    let server = Server::builder().config("[http2]\nh2c = true\n").start();
    server.write_file("index.html", b"hello");
    let run = Command::new(httpwg).arg("-a").arg(server.addr.to_string()).output().expect("httpwg runs");
    let text = without_colours(&format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    ));
    let summary =
        text.lines().find(|l| l.contains("Passed ")).unwrap_or_else(|| panic!("no summary: {text}"));
    eprintln!("{summary}");
    let failed: BTreeSet<String> =
        text.lines().filter_map(|l| l.split("Test failed: ").nth(1)).map(|s| s.trim().to_string()).collect();
    let argued = argued_exceptions();
    assert!(argued.len() >= 10, "docs/http2.md lists its exceptions: {argued:?}");
    let unexplained: Vec<&String> = failed.difference(&argued).collect();
    assert!(
        unexplained.is_empty(),
        "cases failing without an argument in docs/http2.md: {unexplained:#?}\n{text}"
    );
}
