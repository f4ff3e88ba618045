//! Binary upgrade (USR2): the master starts the binary on disk again and hands it
//! every listening socket by descriptor; the new master adopts the stats region,
//! writes the pid file and starts its workers, and tells the old master over a
//! pipe when they are all up. Only then does the old master drain its own
//! workers and exit. If the new binary fails, the old master keeps serving.
//!
//! The hand-over is described in the new process's environment:
//!
//! | variable | value |
//! | --- | --- |
//! | `TINE_LISTENERS` | the sockets: `REQUESTED|BOUND|FD,FD,...` per address, `;`-separated (one FD per slot) |
//! | `TINE_ADOPT_STATS` | path of the region to adopt instead of creating one |
//! | `TINE_STATS_FD` | the old master's descriptor of that region, which carries its lock (so it is never free between the two masters) |
//! | `TINE_TICKET_FD` | the TLS session-ticket key ring (a memfd), so tickets issued before the upgrade still resume |
//! | `TINE_READY_FD` | write end of a pipe: one byte when the new workers are up |
//! | `TINE_OLD_MASTER` | pid of the old master |

use crate::pid_file::PidFile;
use crate::MasterError;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tine_net::listener::LISTENERS_ENV;
use tine_net::sys::set_cloexec_to;
use tine_net::ListenerSet;
use tine_stats::{Region, RegionView};

pub const ADOPT_STATS_ENV: &str = "TINE_ADOPT_STATS";
pub const STATS_FD_ENV: &str = "TINE_STATS_FD";
pub const READY_FD_ENV: &str = "TINE_READY_FD";
pub const TICKET_FD_ENV: &str = "TINE_TICKET_FD";
pub const OLD_MASTER_ENV: &str = "TINE_OLD_MASTER";

/// How long the new binary has to get its workers up.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// An upgrade under way, seen from the old master.
pub struct Pending {
    pub pid: Pid,
    ready: std::fs::File,
    pub deadline: Instant,
    pid_path: PathBuf,
}

/// What the old master learned about its upgrade.
pub enum Progress {
    Waiting,
    Ready,
    Failed(String),
}

/// The path the old master's pid file moves to while the new one runs.
pub fn oldbin(pid_path: &Path) -> PathBuf {
    let mut name = pid_path.as_os_str().to_owned();
    name.push(".oldbin");
    PathBuf::from(name)
}

/// Starts the new binary. The pid file moves to `.oldbin` first, so the new
/// master can write its own; on failure it moves back.
pub fn start(
    exe: &Path,
    args: &[OsString],
    listeners: &ListenerSet,
    region: &Region,
    ticket_fd: RawFd,
    pid_file: &PidFile,
) -> Result<Pending, MasterError> {
    let pid_path = pid_file.path().to_owned();
    std::fs::rename(&pid_path, oldbin(&pid_path))
        .map_err(|source| MasterError::PidFile { path: pid_path.clone(), source })?;
    match spawn(exe, args, listeners, region, ticket_fd) {
        Ok((pid, ready)) => Ok(Pending { pid, ready, deadline: Instant::now() + UPGRADE_TIMEOUT, pid_path }),
        Err(e) => {
            restore_pid_file(&pid_path);
            Err(MasterError::Other(format!("cannot start {}: {e}", exe.display())))
        }
    }
}

fn spawn(
    exe: &Path,
    args: &[OsString],
    listeners: &ListenerSet,
    region: &Region,
    ticket_fd: RawFd,
) -> io::Result<(Pid, std::fs::File)> {
    let (ready_read, ready_write) = pipe()?;
    let mut inherit = listeners.all();
    inherit.push(ready_write.as_raw_fd());
    let region_fd = region.lock_fd().as_raw_fd();
    inherit.push(region_fd);
    inherit.push(ticket_fd);
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(LISTENERS_ENV, listeners.to_env())
        .env(ADOPT_STATS_ENV, region.path())
        .env(STATS_FD_ENV, region_fd.to_string())
        .env(TICKET_FD_ENV, ticket_fd.to_string())
        .env(READY_FD_ENV, ready_write.as_raw_fd().to_string())
        .env(OLD_MASTER_ENV, std::process::id().to_string());
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (fcntl, sigprocmask).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                set_cloexec_to(fd, false);
            }
            // The new master starts with no signal blocked, as any process would.
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(ready_write);
    Ok((Pid::from_raw(child.id() as i32), ready_read))
}

impl Pending {
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Reads the ready pipe without blocking.
    pub fn poll(&mut self) -> Progress {
        let mut byte = [0u8; 1];
        match self.ready.read(&mut byte) {
            Ok(1..) => Progress::Ready,
            Ok(0) => Progress::Failed("the new master exited before its workers were up".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= self.deadline {
                    Progress::Failed(format!("the new master was not ready within {UPGRADE_TIMEOUT:?}"))
                } else {
                    Progress::Waiting
                }
            }
            Err(e) => Progress::Failed(format!("reading the ready pipe: {e}")),
        }
    }

    /// Gives the pid file back to the old master after a failed upgrade.
    pub fn abandon(&self) {
        restore_pid_file(&self.pid_path);
    }

    pub fn oldbin(&self) -> PathBuf {
        oldbin(&self.pid_path)
    }
}

fn restore_pid_file(pid_path: &Path) {
    // The failed new master may have written its own pid file; ours wins.
    if let Err(e) = std::fs::rename(oldbin(pid_path), pid_path) {
        log::error!("cannot restore the pid file {}: {e}", pid_path.display());
    }
}

fn pipe() -> io::Result<(std::fs::File, OwnedFd)> {
    let (read, write) = tine_net::sys::pipe()?;
    Ok((std::fs::File::from(read), write))
}

/// Seen from the new master: what the old one handed over, taken out of the
/// environment so that a later upgrade of this master starts clean.
pub struct Inherited {
    pub listeners: Option<String>,
    pub stats_path: Option<PathBuf>,
    /// The old master's descriptor of the region (it holds the region's lock).
    pub stats_fd: Option<OwnedFd>,
    /// The TLS session-ticket key ring.
    pub ticket_fd: Option<OwnedFd>,
    pub ready: Option<OwnedFd>,
    pub old_master: Option<i32>,
}

pub fn take_inherited() -> Inherited {
    let take = |name: &str| {
        let v = std::env::var_os(name);
        std::env::remove_var(name);
        v
    };
    let listeners = take(LISTENERS_ENV).map(|v| v.to_string_lossy().into_owned());
    let stats_path = take(ADOPT_STATS_ENV).map(PathBuf::from);
    let handed_over = |name: &str| {
        take(name).and_then(|v| v.to_str().and_then(|s| s.parse::<RawFd>().ok())).filter(|&fd| fd > 2).map(
            |fd| {
                set_cloexec_to(fd, true);
                // SAFETY: the old master passed this descriptor for this process to own.
                unsafe { OwnedFd::from_raw_fd(fd) }
            },
        )
    };
    let stats_fd = handed_over(STATS_FD_ENV);
    let ticket_fd = handed_over(TICKET_FD_ENV);
    let ready = handed_over(READY_FD_ENV);
    let old_master = take(OLD_MASTER_ENV).and_then(|v| v.to_str().and_then(|s| s.parse().ok()));
    Inherited { listeners, stats_path, stats_fd, ticket_fd, ready, old_master }
}
