//! Where a master puts its files when the configuration does not say.
//!
//! Both defaults are named after the first listen port, so two servers on
//! different ports never collide, and `tine stats` / `tine signal` can find a
//! server from its port alone.

use std::path::PathBuf;

/// `/dev/shm/tine-PORT.stats`: tmpfs, so the region never touches a disk.
pub fn default_stats_path(port: u16) -> PathBuf {
    PathBuf::from(format!("/dev/shm/tine-{port}.stats"))
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/run")
    } else {
        PathBuf::from("/tmp")
    }
}
