//! The master's signals arrive through a signalfd and are handled in the master
//! cycle, never inside a signal handler. Blocking them before the first fork also
//! means every worker starts with them blocked and reads its own from a signalfd.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io;

/// Signals the master acts on.
pub const MASTER_SIGNALS: [Signal; 10] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
    Signal::SIGWINCH,
    Signal::SIGTTOU,
    Signal::SIGTTIN,
];

pub fn master_signalfd() -> io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in MASTER_SIGNALS {
        mask.add(s);
    }
    mask.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)
}

/// Reads every pending signal.
pub fn drain(fd: &SignalFd) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
            out.push(s);
        }
    }
    out
}

/// Waits until one of the descriptors is readable or `timeout_ms` passes.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout_ms: i32) {
    tine_net::sys::wait_readable(fds, timeout_ms);
}
