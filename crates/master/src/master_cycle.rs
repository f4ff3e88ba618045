//! The master cycle: start up, then loop on signals and child exits until told
//! to stop. Read top to bottom: [`serve`] is the whole life of a master.
//!
//! ```text
//!  start: sockets -> stats region -> pid file -> fork workers
//!  loop:  wait for a signal (or one second)
//!         TERM/INT: stop now    QUIT: stop gracefully
//!         CHLD: reap; respawn the slot (with backoff if it keeps crashing)
//!         every second: heartbeat
//!  stop:  tell workers, wait (SIGKILL after the deadline), mark the region
//!         stopped, remove pid file and region
//! ```

use crate::paths::{default_pid_file, default_stats_path};
use crate::pid_file::PidFile;
use crate::signals::{self, master_signalfd};
use crate::spawn::{spawn_worker, Spawn};
use crate::MasterError;
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tine_config::{Config, Workers};
use tine_net::ListenerSet;
use tine_stats::{Region, RegionState, SlotState};

/// A worker that exits sooner than this after starting counts as crash-looping.
const CRASH_WINDOW: Duration = Duration::from_secs(2);
/// Longest wait between two starts of a crash-looping slot.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a fast stop waits for workers before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(5);
/// Added to the drain timeout before a graceful stop resorts to SIGKILL.
const GRACEFUL_STOP_SLACK: Duration = Duration::from_secs(2);

/// Runs a master until it is stopped.
pub fn serve(config: Config) -> Result<(), MasterError> {
    let mut master = Master::start(config)?;
    master.run();
    master.shut_down();
    Ok(())
}

/// The master's own record of one worker slot.
struct SlotRecord {
    cpu: Option<usize>,
    pid: Option<Pid>,
    started: Instant,
    /// Consecutive exits within CRASH_WINDOW of starting.
    quick_exits: u32,
    respawn_at: Option<Instant>,
}

enum Phase {
    Running,
    Stopping { deadline: Instant, killed: bool },
}

struct Master {
    config: Config,
    listeners: ListenerSet,
    region: Region,
    pid_file: PidFile,
    signals: SignalFd,
    slots: Vec<SlotRecord>,
    phase: Phase,
}

impl Master {
    fn start(config: Config) -> Result<Self, MasterError> {
        raise_fd_limit();
        let cpus = allowed_cpus();
        let count = match config.workers {
            Workers::Count(n) => n,
            Workers::Auto => cpus.len().max(1),
        };
        let first_port = config.listen.first().map_or(0, |a| a.port());
        // Catch a running instance before binding: with SO_REUSEPORT a second
        // server on the same port would otherwise silently share its traffic.
        let pid_path = config.pid_file.clone();
        if first_port != 0 {
            PidFile::check_free(&pid_path.clone().unwrap_or_else(|| default_pid_file(first_port)))?;
        }
        let signals = master_signalfd().map_err(MasterError::Signals)?;
        let listeners = ListenerSet::bind(&config.listen, count, config.backlog)?;
        let port = listeners.addrs()[0].port();
        let addrs: Vec<String> = listeners.addrs().iter().map(|a| a.to_string()).collect();
        let stats_path = config.stats_path.clone().unwrap_or_else(|| default_stats_path(port));
        let region = Region::create(&stats_path, count, &addrs)?;
        region.master().generation.store(1, Relaxed);
        let pid_file = PidFile::write(&pid_path.unwrap_or_else(|| default_pid_file(port)))?;
        tine_worker::name_process("tine: master");
        for a in &addrs {
            log::info!("listening on {a}");
        }
        log::info!(
            "master {} serving {} with {count} worker(s); stats {}, pid file {}",
            std::process::id(),
            config.root.display(),
            stats_path.display(),
            pid_file.path().display()
        );
        let now = Instant::now();
        let slots = (0..count)
            .map(|i| SlotRecord {
                cpu: (!cpus.is_empty()).then(|| cpus[i % cpus.len()]),
                pid: None,
                started: now,
                quick_exits: 0,
                respawn_at: Some(now),
            })
            .collect();
        let mut master =
            Master { config, listeners, region, pid_file, signals, slots, phase: Phase::Running };
        master.respawn_due();
        Ok(master)
    }

    fn run(&mut self) {
        loop {
            signals::wait_readable(self.signals.as_raw_fd(), self.wait_ms());
            for signal in signals::drain(&self.signals) {
                self.on_signal(signal);
            }
            self.reap();
            self.region.heartbeat();
            match self.phase {
                Phase::Running => self.respawn_due(),
                Phase::Stopping { .. } if self.live_workers() == 0 => return,
                Phase::Stopping { deadline, killed: false } if Instant::now() >= deadline => {
                    self.kill_stragglers()
                }
                Phase::Stopping { .. } => {}
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGTERM | Signal::SIGINT => self.stop(false),
            Signal::SIGQUIT => self.stop(true),
            Signal::SIGCHLD => {} // reaped right after
            Signal::SIGHUP | Signal::SIGUSR1 | Signal::SIGUSR2 => {
                log::warn!("{signal}: not supported by this version of tine; ignored")
            }
            _ => {}
        }
    }

    /// Tells every worker to stop: QUIT drains in-flight responses first, TERM
    /// stops at once. A TERM during a graceful stop hurries it along.
    fn stop(&mut self, graceful: bool) {
        if graceful && matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let (signal, grace) = if graceful {
            (Signal::SIGQUIT, self.config.timeouts.drain + GRACEFUL_STOP_SLACK)
        } else {
            (Signal::SIGTERM, FAST_STOP_GRACE)
        };
        log::info!(
            "{} stop: signalling {} worker(s)",
            if graceful { "graceful" } else { "fast" },
            self.live_workers()
        );
        self.region.set_state(RegionState::Stopping);
        self.phase = Phase::Stopping { deadline: Instant::now() + grace, killed: false };
        for slot in &mut self.slots {
            slot.respawn_at = None;
            if let Some(pid) = slot.pid {
                let _ = kill(pid, signal);
            }
        }
    }

    fn kill_stragglers(&mut self) {
        log::warn!("{} worker(s) still running at the stop deadline; killing them", self.live_workers());
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        if let Phase::Stopping { deadline, .. } = self.phase {
            self.phase = Phase::Stopping { deadline, killed: true };
        }
    }

    /// Collects every exited child and decides what happens to its slot.
    fn reap(&mut self) {
        loop {
            let (pid, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with status {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("was killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(index) = self.slots.iter().position(|s| s.pid == Some(pid)) {
                self.on_worker_exit(index, pid, &how);
            }
        }
    }

    fn on_worker_exit(&mut self, index: usize, pid: Pid, how: &str) {
        let stats = self.region.slot(index);
        stats.pid.store(0, Relaxed);
        stats.active.store(0, Relaxed);
        stats.state.store(SlotState::Dead as u64, Relaxed);
        let slot = &mut self.slots[index];
        slot.pid = None;
        if let Phase::Stopping { .. } = self.phase {
            log::info!("worker {index} (pid {pid}) {how}");
            return;
        }
        let now = Instant::now();
        if now.duration_since(slot.started) < CRASH_WINDOW {
            slot.quick_exits += 1;
        } else {
            slot.quick_exits = 0;
        }
        let delay = backoff(slot.quick_exits);
        if delay.is_zero() {
            log::warn!("worker {index} (pid {pid}) {how}; starting a new one in its slot");
        } else {
            log::warn!(
                "worker {index} (pid {pid}) {how}, {} times in a row right after starting; \
                 next start in {delay:?}",
                slot.quick_exits
            );
            self.region.master().backoffs.fetch_add(1, Relaxed);
            stats.state.store(SlotState::Backoff as u64, Relaxed);
        }
        slot.respawn_at = Some(now + delay);
        self.region.master().respawns.fetch_add(1, Relaxed);
    }

    /// Starts a worker in every slot whose time has come.
    fn respawn_due(&mut self) {
        let now = Instant::now();
        let master_fds = [self.signals.as_raw_fd()];
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.pid.is_some() || slot.respawn_at.is_none_or(|at| at > now) {
                continue;
            }
            let spec = Spawn {
                slot: index,
                cpu: slot.cpu,
                listeners: &self.listeners,
                master_fds: &master_fds,
                config: &self.config,
                region: &self.region,
            };
            match spawn_worker(spec) {
                Ok(pid) => {
                    let slot = &mut self.slots[index];
                    slot.pid = Some(pid);
                    slot.started = now;
                    slot.respawn_at = None;
                }
                Err(e) => {
                    log::error!("worker {index}: {e}; retrying in a second");
                    self.slots[index].respawn_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    fn live_workers(&self) -> usize {
        self.slots.iter().filter(|s| s.pid.is_some()).count()
    }

    /// Sleep until the next respawn is due, and at least once a second for the
    /// heartbeat; a signal (SIGCHLD included) wakes the master at once.
    fn wait_ms(&self) -> i32 {
        let now = Instant::now();
        let next = self.slots.iter().filter_map(|s| s.respawn_at).min();
        let until = next.map_or(Duration::from_secs(1), |at| at.saturating_duration_since(now));
        until.min(Duration::from_secs(1)).as_millis() as i32
    }

    fn shut_down(&mut self) {
        self.region.set_state(RegionState::Stopped);
        self.pid_file.remove();
        let _ = std::fs::remove_file(self.region.path());
        log::info!("master {} stopped", std::process::id());
    }
}

/// No delay for an isolated exit; then 250 ms doubling up to MAX_BACKOFF while
/// the slot keeps exiting right after start.
fn backoff(quick_exits: u32) -> Duration {
    if quick_exits <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (quick_exits - 2).min(16);
    (Duration::from_millis(250) * factor).min(MAX_BACKOFF)
}

/// The CPUs this process may run on, in order (empty if that cannot be read).
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

/// Raises the soft descriptor limit to the hard one: every connection costs a
/// descriptor, and the default soft limit of 1024 is far below what a front end
/// needs.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit to fill and then to read back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_millis(500));
        assert_eq!(backoff(10), Duration::from_secs(30));
        assert_eq!(backoff(100), Duration::from_secs(30));
    }
}
