//! `tine check` and `tine serve --config`: a file is validated with file:line
//! errors, and flags override what it says.

mod common;

use common::*;

#[test]
fn check_accepts_the_example_config_and_names_the_line_of_an_error() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tine.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The example serves /var/www/html; point it at a directory that exists here.
    let good = dir.path().join("good.toml");
    let root_line = text.lines().find(|l| l.starts_with("root")).expect("example has a root line");
    std::fs::write(&good, text.replace(root_line, &format!("root = {:?}", dir.path()))).unwrap();
    let ok = tine().args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:0\"]\n\n[limits]\nconnections_per_worker = -4\n").unwrap();
    let out = tine().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:"), "{err}");
    assert!(err.contains("connections_per_worker"), "{err}");

    let missing = tine().args(["check", "--config", "/nonexistent/tine.toml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tine.toml"));
}

#[test]
fn flags_override_the_file() {
    // The file asks for a port that the --listen flag replaces, and 3 workers
    // that the --workers flag (set by the harness) replaces.
    let server = Server::builder().config("listen = [\"127.0.0.1:1\"]\nworkers = 3\n").workers(1).start();
    assert_ne!(server.addr.port(), 1);
    assert_eq!(server.stats()["workers"].as_array().unwrap().len(), 1);
}

#[test]
fn serve_refuses_a_bad_root_or_address_clearly() {
    let out =
        tine().args(["serve", "--root", "/nonexistent-root", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-root"));
    let out = tine().args(["serve", "--listen", "localhost"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not IP:PORT"));
}

#[test]
fn stats_explains_a_missing_region() {
    let out = tine().args(["stats", "--stats-path", "/dev/shm/tine-does-not-exist.stats"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stats region"));
}

// `tine check` refuses TCP option values the kernel would refuse, and an
// override for an address no listener has, each at its file:line.
#[test]
fn tcp_values_the_kernel_would_refuse_are_refused_at_check() {
    let dir = tempfile::tempdir().unwrap();
    for (body, line, word) in [
        ("[tcp]\nkeepalive_count = 1000\n", 4, "keepalive_count"),
        ("[tcp]\nkeepalive_idle = \"1500ms\"\n", 4, "whole seconds"),
        ("[tcp]\nkeepalive_interval = \"40000s\"\n", 4, "keepalive_interval"),
        ("[tcp]\nsend_buffer = 4294967296\n", 4, "send_buffer"),
        ("[tcp]\ncongestion = \"two words\"\n", 4, "congestion"),
        ("[tcp]\nnodelay = true\nwindow = 5\n", 5, "window"),
        ("[tcp.listener.\"10.9.9.9:1\"]\nnodelay = false\n", 3, "no listen"),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\ntcp = { fastopen = 5 }\n",
            6,
            "applies to listeners",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\ntcp = { keepalive_count = 0 }\n",
            6,
            "keepalive_count",
        ),
    ] {
        let path = dir.path().join("tcp.toml");
        std::fs::write(&path, format!("listen = [\"127.0.0.1:0\"]\n\n{body}")).unwrap();
        let out = tine().args(["check", "--config"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {err}");
        assert!(err.contains(&format!("tcp.toml:{line}:")) && err.contains(word), "{body}: {err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = [\"127.0.0.1:0\"]\n[tcp]\nkeepalive_idle = \"0s\"\ncongestion = \"bbr\"\n\
         [tcp.listener.\"127.0.0.1:0\"]\nfastopen = 256\n",
    )
    .unwrap();
    let ok = tine().args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
