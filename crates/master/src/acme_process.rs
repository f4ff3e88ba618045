//! The ACME process, seen from the master. The master creates the challenge
//! board (once, for its whole life, so that workers of every generation
//! answer from it), starts the ACME process when the configuration obtains
//! certificates by ACME, restarts it with a backoff when it dies, replaces it
//! when a reload changes its work, and stops it with the master. Its reports
//! arrive on a pipe the master cycle waits on; the master acts on them (a new
//! certificate goes into service as a reload would) and records each
//! certificate's ACME state in the statistics.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tine_acme::{Job, Report};
use tine_config::Config;
use tine_net::sys::set_cloexec_to;
use tine_tls::ChallengeBoard;

/// A process that exits sooner than this after starting counts as failing
/// to start, and waits longer before the next start.
const QUICK_EXIT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One certificate's ACME state, as last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcmeStatus {
    pub next_attempt_unix: i64,
    pub failures: u64,
    pub last_error: String,
}

pub struct AcmeProcess {
    board: ChallengeBoard,
    /// The work of the current configuration; None: no certificate is
    /// obtained by ACME.
    job: Option<Job>,
    running: Option<Running>,
    respawn_at: Option<Instant>,
    quick_exits: u32,
    /// By each certificate's first name.
    statuses: HashMap<String, AcmeStatus>,
}

struct Running {
    pid: Pid,
    reports: std::fs::File,
    partial: Vec<u8>,
    started: Instant,
}

/// What the master cycle does with what the ACME process said.
pub enum Heard {
    /// A certificate for these names was stored: put it into service.
    Stored(Vec<String>),
    /// A certificate's state changed: publish the certificate table again.
    Status,
}

impl AcmeProcess {
    pub fn new() -> io::Result<Self> {
        Ok(AcmeProcess {
            board: ChallengeBoard::create()?,
            job: None,
            running: None,
            respawn_at: None,
            quick_exits: 0,
            statuses: HashMap::new(),
        })
    }

    pub fn board(&self) -> &ChallengeBoard {
        &self.board
    }

    pub fn status(&self, first_name: &str) -> Option<&AcmeStatus> {
        self.statuses.get(first_name)
    }

    /// Takes the configuration's work: starts the process, replaces it when
    /// its work changed, or stops it when there is none left.
    pub fn configure(&mut self, config: &Config) {
        let job = Job::for_config(config, 0, 0);
        let same = match (&job, &self.job) {
            (Some(new), Some(old)) => new.same_work(old),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if self.running.is_some() {
            log::info!("ACME: the configuration changed the ACME work; restarting the ACME process");
            self.stop();
        }
        if let Some(acme) = config.acme.as_ref().filter(|_| job.is_some()) {
            for warning in tine_tls::acme_storage::warnings(acme, config) {
                log::warn!("{warning}");
            }
        }
        self.statuses.retain(|name, _| {
            job.as_ref().is_some_and(|j| j.certificates.iter().any(|names| names.first() == Some(name)))
        });
        self.job = job;
        self.quick_exits = 0;
        self.respawn_at = self.job.as_ref().map(|_| Instant::now());
    }

    /// Starts the process when it is due (and not stopping).
    pub fn start_if_due(&mut self) {
        if self.running.is_some() || self.respawn_at.is_none_or(|at| at > Instant::now()) {
            return;
        }
        let Some(job) = &self.job else { return };
        match self.spawn(job) {
            Ok(running) => {
                log::info!(
                    "ACME: process {} started for {} certificate(s) from {}",
                    running.pid,
                    job.certificates.len(),
                    job.directory
                );
                self.running = Some(running);
                self.respawn_at = None;
            }
            Err(e) => {
                log::error!("ACME: cannot start the ACME process: {e}; retrying in 10s");
                self.respawn_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    fn spawn(&self, job: &Job) -> io::Result<Running> {
        let (read, write) = tine_net::sys::pipe()?;
        let board_fd = self.board.raw_fd();
        let write_fd = write.as_raw_fd();
        let job = Job { board_fd, report_fd: write_fd, ..job.clone() };
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(tine_acme::SUBCOMMAND).env(tine_acme::job::JOB_ENV, job.to_env()).stdin(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and only
        // makes async-signal-safe calls (fcntl, sigprocmask).
        unsafe {
            cmd.pre_exec(move || {
                set_cloexec_to(board_fd, false);
                set_cloexec_to(write_fd, false);
                let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(write);
        Ok(Running {
            pid: Pid::from_raw(child.id() as i32),
            reports: std::fs::File::from(read),
            partial: Vec::new(),
            started: Instant::now(),
        })
    }

    /// The pipe the master cycle waits on, while the process runs.
    pub fn report_fd(&self) -> Option<RawFd> {
        self.running.as_ref().map(|r| r.reports.as_raw_fd())
    }

    /// When the master cycle must wake to start the process.
    pub fn respawn_at(&self) -> Option<Instant> {
        self.respawn_at.filter(|_| self.running.is_none())
    }

    /// Reads what the process reported since the last call.
    pub fn read_reports(&mut self) -> Vec<Heard> {
        let Some(running) = self.running.as_mut() else { return Vec::new() };
        let mut chunk = [0u8; 4096];
        loop {
            match running.reports.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => running.partial.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            // A process that writes without end is broken: drop what it said.
            if running.partial.len() > 1 << 20 {
                log::error!("ACME: the ACME process wrote an over-long report; dropped");
                running.partial.clear();
            }
        }
        let mut heard = Vec::new();
        for report in tine_acme::report::take_reports(&mut running.partial) {
            match report {
                Ok(Report::Stored { names }) => heard.push(Heard::Stored(names)),
                Ok(Report::Status { name, next_attempt_unix, failures, last_error }) => {
                    let status = AcmeStatus {
                        next_attempt_unix,
                        failures,
                        last_error: last_error.unwrap_or_default(),
                    };
                    self.statuses.insert(name, status);
                    heard.push(Heard::Status);
                }
                Err(e) => log::error!("ACME: {e}"),
            }
        }
        heard
    }

    /// True when `pid` was the ACME process; schedules its restart.
    pub fn reaped(&mut self, pid: Pid, how: &str, restart: bool) -> bool {
        if self.running.as_ref().is_none_or(|r| r.pid != pid) {
            return false;
        }
        let Some(running) = self.running.take() else { return false };
        if !restart || self.job.is_none() {
            log::info!("ACME: process {pid} {how}");
            return true;
        }
        if running.started.elapsed() < QUICK_EXIT {
            self.quick_exits += 1;
        } else {
            self.quick_exits = 0;
        }
        let delay = Duration::from_secs(1u64 << self.quick_exits.min(9)).min(MAX_BACKOFF);
        log::error!("ACME: process {pid} {how}; starting a new one in {delay:?}");
        self.respawn_at = Some(Instant::now() + delay);
        true
    }

    /// Tells the process to reopen its log (USR1).
    pub fn reopen_logs(&self) {
        if let Some(r) = &self.running {
            let _ = kill(r.pid, Signal::SIGUSR1);
        }
    }

    /// Stops the process (it holds no state that a stop can lose: each file
    /// it writes replaces the old one whole).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = kill(r.pid, Signal::SIGTERM);
            // Reaped by the master cycle's waitpid like any child.
        }
        self.respawn_at = None;
    }
}
