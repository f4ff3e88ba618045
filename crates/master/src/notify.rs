//! The systemd notification protocol (sd_notify), so a `Type=notify` unit knows
//! when tine is ready, reloading or stopping, and which pid is the master after
//! a binary upgrade. Without NOTIFY_SOCKET in the environment it does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        log::warn!("cannot notify systemd ({path}): {e}");
    }
}

pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

pub fn reloading() {
    let usec = tine_net::sys::monotonic_usec();
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

pub fn stopping() {
    notify("STOPPING=1");
}

/// A line for `systemctl status`.
pub fn status(text: &str) {
    notify(&format!("STATUS={text}"));
}

/// Whether the unit sets WatchdogSec (systemd then expects a ping within it).
pub fn watchdog_enabled() -> bool {
    std::env::var("WATCHDOG_USEC").is_ok_and(|v| v.parse::<u64>().is_ok_and(|us| us > 0))
        && std::env::var("WATCHDOG_PID").map_or(true, |p| p.parse::<u32>() == Ok(std::process::id()))
}

/// The watchdog ping: the master's loop is turning.
pub fn watchdog() {
    notify("WATCHDOG=1");
}
