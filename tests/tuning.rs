//! `tine tune`, the kernel tuning doctor, against a tree of kernel settings
//! of the test's own (`--proc-sys`), so that nothing on the machine changes.

mod common;

use common::tine;
use std::path::Path;

fn write_tree(root: &Path, values: &[(&str, &str)]) {
    for (key, value) in values {
        let path = root.join(key.replace('.', "/"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{value}\n")).unwrap();
    }
}

fn tune(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = tine()
        .arg("tune")
        .arg("--config")
        .arg(dir.join("tine.toml"))
        .arg("--proc-sys")
        .arg(dir.join("sys"))
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Few connections per worker: the test's own descriptor limit is enough.
    std::fs::write(
        dir.path().join("tine.toml"),
        format!(
            "root = \"{}\"\nworkers = 2\n[limits]\nconnections_per_worker = 1000\n{config}",
            dir.path().display()
        ),
    )
    .unwrap();
    dir
}

#[test]
fn check_fails_on_a_short_setting_and_passes_once_it_is_fixed() {
    let dir = setup("");
    std::fs::write(
        dir.path().join("tine.toml"),
        std::fs::read_to_string(dir.path().join("tine.toml"))
            .unwrap()
            .replace("workers = 2", "workers = 2\nbacklog = 8192"),
    )
    .unwrap();
    write_tree(&dir.path().join("sys"), &[("net.core.somaxconn", "4096"), ("net.ipv4.tcp_fastopen", "1")]);
    let (ok, out, err) = tune(dir.path(), &["--check"]);
    assert!(!ok, "{out}");
    assert!(err.contains("net.core.somaxconn"), "{err}");
    assert!(out.lines().any(|l| l.starts_with("net.core.somaxconn") && l.contains("SHORT")), "{out}");
    write_tree(&dir.path().join("sys"), &[("net.core.somaxconn", "65535")]);
    let (ok, out, err) = tune(dir.path(), &["--check"]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("SHORT"), "{out}");
}

#[test]
fn fast_open_and_a_missing_congestion_control_are_shortfalls_of_a_config_that_names_them() {
    let dir = setup("[tcp]\nfastopen = 256\ncongestion = \"bbr\"\n");
    write_tree(
        &dir.path().join("sys"),
        &[("net.ipv4.tcp_fastopen", "1"), ("net.ipv4.tcp_available_congestion_control", "reno cubic")],
    );
    let (ok, _, err) = tune(dir.path(), &["--check"]);
    assert!(!ok);
    assert!(
        err.contains("net.ipv4.tcp_fastopen") && err.contains("tcp_available_congestion_control"),
        "{err}"
    );
}

#[test]
fn apply_writes_the_drop_in_and_a_second_run_changes_nothing() {
    let dir = setup("");
    write_tree(
        &dir.path().join("sys"),
        &[
            ("net.core.somaxconn", "128"),
            ("net.core.netdev_max_backlog", "1000"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
        ],
    );
    let file = dir.path().join("90-tine.conf");
    let (ok, out, err) = tune(dir.path(), &["--apply", "--check", "--sysctl-file", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("set net.core.somaxconn = 4096 (was 128)"), "{out}");
    assert!(out.contains("set net.ipv4.tcp_fin_timeout = 15 (was 60)"), "{out}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("net.core.somaxconn = 4096\n"), "{written}");
    // A value already better than the recommendation is kept, never lowered.
    assert!(written.contains("net.ipv4.tcp_rmem = 4096 131072 33554432\n"), "{written}");
    let read =
        |key: &str| std::fs::read_to_string(dir.path().join("sys").join(key.replace('.', "/"))).unwrap();
    assert_eq!(read("net.core.somaxconn"), "4096\n");
    let (ok, out, _) = tune(dir.path(), &["--apply", "--sysctl-file", file.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("\nset "), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn the_shipped_sysctl_file_is_what_tine_tune_prints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tine.toml"),
        format!("root = \"{}\"\nworkers = 2\n", dir.path().display()),
    )
    .unwrap();
    let (ok, out, err) = tune(dir.path(), &["--sysctl"]);
    assert!(ok, "{err}");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sysctl-tine.conf")).unwrap();
    assert_eq!(out, shipped, "regenerate it: tine tune --sysctl > deploy/sysctl-tine.conf");
}
