//! Where a master puts its files when the configuration does not say.
//!
//! Both defaults are named after the first listen port, so two servers on
//! different ports never collide, and `tine stats` / `tine signal` can find a
//! server from its port alone.

use std::path::PathBuf;

/// `tine-PORT.stats` in a directory on tmpfs (so the region never touches a
/// disk) that, where the platform allows, no other user can write: `/run`
/// for root (tmpfs under systemd, writable by root alone, so nobody can
/// create the file first), `$XDG_RUNTIME_DIR` for other users (their own),
/// else `/dev/shm`, where a file another user left is refused at start.
pub fn default_stats_path(port: u16) -> PathBuf {
    stats_dirs()[0].join(format!("tine-{port}.stats"))
}

/// Where regions are created by default, in the order above; `tine stats`
/// looks in all of them.
pub fn stats_dirs() -> Vec<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
    let mut dirs = Vec::new();
    if is_root() {
        dirs.push(PathBuf::from("/run"));
    }
    dirs.extend(xdg);
    dirs.push(PathBuf::from("/dev/shm"));
    if !is_root() {
        // Root's regions, for an ops user reading them.
        dirs.push(PathBuf::from("/run"));
    }
    dirs
}

fn is_root() -> bool {
    tine_stats::ownership::current_uid() == 0
}

/// `$XDG_RUNTIME_DIR/tine-PORT.pid`, else `/run/tine-PORT.pid` for root, else
/// `/tmp/tine-PORT.pid`.
pub fn default_pid_file(port: u16) -> PathBuf {
    runtime_dir().join(format!("tine-{port}.pid"))
}

fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        PathBuf::from("/run")
    } else {
        PathBuf::from("/tmp")
    }
}
