//! Workers drop to the configured user once set up; the master keeps root
//! to reload and upgrade. Needs root (skipped, saying so, otherwise) and
//! the Debian accounts `nobody` and `nogroup`.

mod common;

use common::{tine, Server};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

const NOBODY: u32 = 65534;

fn ids(pid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let values: Vec<u32> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
        // Real, effective, saved and filesystem ids all agree.
        assert!(values.iter().all(|&v| v == values[0]), "{line}");
        values[0]
    };
    (field("Uid:"), field("Gid:"))
}

fn runnable() -> bool {
    if !nix_is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return false;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("nobody:")) || !group.lines().any(|l| l.starts_with("nogroup:"))
    {
        eprintln!("skipped: no nobody/nogroup accounts");
        return false;
    }
    true
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn workers_run_as_the_configured_user_through_reload_and_upgrade() {
    if !runnable() {
        return;
    }
    let mut server = Server::builder()
        .config_only(
            "listen = [\"127.0.0.1:0\"]\nroot = \"{root}\"\nworkers = 2\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
             access_log = \"access.log\"\n",
        )
        .start();
    // The test's own directory must let the workers reach the logs by name.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    server.write_file("a.txt", b"A");
    let workers_are_nobody = |server: &Server| {
        for pid in server.worker_pids() {
            assert_eq!(ids(pid), (NOBODY, NOBODY), "worker {pid}");
        }
    };
    assert_eq!(ids(server.master_pid()).0, 0, "the master keeps root");
    workers_are_nobody(&server);
    assert_eq!(server.get("/a.txt").body, b"A");

    // The logs workers reopen by name are theirs; the stats region is
    // readable by their group and writable by no one else.
    let access = std::fs::metadata(server.dir.path().join("access.log")).unwrap();
    assert_eq!((access.uid(), access.gid()), (NOBODY, NOBODY));
    let region = std::fs::metadata(&server.stats_path).unwrap();
    assert_eq!(region.gid(), NOBODY);
    assert_eq!(region.mode() & 0o777, 0o640);
    // The ops tool runs from a copy the other user can reach, wherever the
    // checkout is (a 0700 directory would refuse it the binary itself).
    let ops_binary = server.dir.path().join("tine-ops");
    std::fs::copy(env!("CARGO_BIN_EXE_tine"), &ops_binary).unwrap();
    let as_ops_tool = run_fresh_copy(|| {
        std::process::Command::new(&ops_binary)
            .args(["stats", "--json", "--stats-path"])
            .arg(&server.stats_path)
            .uid(NOBODY + 1000)
            .gid(NOBODY)
            .output()
    });
    assert!(as_ops_tool.status.success(), "a member of the group reads the stats: {:?}", as_ops_tool);

    // Reload and USR1 still work from the master, and new workers drop too.
    let before = server.worker_pids();
    server.signal(libc::SIGHUP);
    server.wait_until("new workers", |s| {
        let pids: Vec<i64> =
            s["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
        pids.len() == 2 && pids.iter().all(|p| !before.contains(&(*p as i32)))
    });
    workers_are_nobody(&server);
    server.signal(libc::SIGUSR1);
    server.wait_for_log("logs reopened");
    assert_eq!(server.get("/a.txt").body, b"A");

    // An upgrade: the old master (still root) executes the binary, whose
    // workers drop as well.
    let old = server.master_pid();
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit().success());
    let new = server.pid_in_pid_file().expect("the new master's pid");
    assert_ne!(new, old);
    assert_eq!(ids(new).0, 0);
    server.wait_until("the new master's workers", |s| {
        s["master"]["pid"] == new && s["workers"].as_array().unwrap().len() == 2
    });
    workers_are_nobody(&server);
    assert_eq!(server.get("/a.txt").body, b"A");
}

#[test]
fn tine_check_names_the_user_and_warns_about_root() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let path = dir.path().join("tine.toml");
        std::fs::write(&path, format!("root = \"{}\"\n{toml}", dir.path().display())).unwrap();
        tine().args(["check", "--config"]).arg(&path).output().unwrap()
    };
    let out = check("");
    assert!(String::from_utf8_lossy(&out.stderr).contains("workers would serve as root"), "{out:?}");
    let out = check("user = \"nobody\"\n");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("workers run as nobody"),
        "{out:?}"
    );
    let out = check("user = \"no-such-user-here\"\n");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such user"),
        "{out:?}"
    );
}

#[test]
fn logs_in_a_directory_the_workers_user_writes_never_hand_over_another_file() {
    if !runnable() {
        return;
    }
    let mut server = Server::builder()
        .config_only(
            "listen = [\"127.0.0.1:0\"]\nroot = \"{root}\"\nworkers = 1\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
             access_log = \"logs/access.log\"\n",
        )
        .start_with(|dir| {
            // The workers' user may write the log directory: what it leaves
            // there is untrusted.
            let logs = dir.join("logs");
            std::fs::create_dir(&logs).unwrap();
            std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
        });
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    server.write_file("a.txt", b"A");
    let logs = server.dir.path().join("logs");
    let secret = server.dir.path().join("secret");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let untouched = |what: &str| {
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{what}: the root-only file changed owner");
        assert_eq!(std::fs::read(&secret).unwrap(), b"root only\n", "{what}: the root-only file was written");
    };

    // The user swaps the log for a symlink to a root-only file; logrotate's USR1.
    std::fs::remove_file(logs.join("access.log")).unwrap();
    std::os::unix::fs::symlink(&secret, logs.join("access.log")).unwrap();
    server.signal(libc::SIGUSR1);
    server.wait_for_log("logs reopened");
    assert_eq!(server.get("/a.txt").body, b"A");
    untouched("after USR1");

    // A respawned worker opens the access log as its user, so the symlink
    // reaches nothing that user could not open; it serves without the log.
    let worker = server.worker_pids()[0];
    common::send_signal(worker, libc::SIGKILL);
    server.wait_until("the replacement worker", |s| {
        s["workers"][0]["state"] == "running" && s["workers"][0]["pid"].as_i64() != Some(worker as i64)
    });
    assert_eq!(server.get("/a.txt").body, b"A");
    untouched("after a respawn");

    // A hard link to the root-only file is not handed over either.
    std::fs::remove_file(logs.join("access.log")).unwrap();
    std::fs::hard_link(&secret, logs.join("access.log")).unwrap();
    server.signal(libc::SIGUSR1);
    server.wait_until("the second reopen", |_| {
        server.log().iter().filter(|l| l.contains("logs reopened")).count() >= 2
    });
    untouched("after a hard link");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

/// Runs a binary copied a moment ago. Another test thread that forked while
/// the copy's write descriptor was open holds it until its child execs, and
/// until then exec fails with ETXTBSY; that passes by itself, so the run is
/// tried again, a bounded number of times.
fn run_fresh_copy(run: impl Fn() -> std::io::Result<std::process::Output>) -> std::process::Output {
    for _ in 0..100 {
        match run() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.unwrap(),
        }
    }
    panic!("the copied binary stayed busy for a second");
}
