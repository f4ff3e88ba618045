//! The master cycle: start up, then loop on signals and child exits until told
//! to stop. Read top to bottom: [`serve`] is the whole life of a master.
//!
//! ```text
//!  start:  sockets (bound, or inherited on upgrade) -> stats region (created
//!          or adopted) -> pid file -> fork one worker per slot
//!  loop:   wait for a signal, the upgrade pipe, or one second
//!          TERM/INT  stop now             QUIT  stop gracefully
//!          HUP       reload: new workers first, then the old ones drain
//!          USR1      reopen logs (and tell the workers)
//!          USR2      upgrade: start the binary on disk with our sockets
//!          TTOU/TTIN drain / undrain: health checks answer 503 / 200
//!          QUIT with timeouts.drain_delay: keep serving, health 503, then stop
//!          CHLD      reap; respawn the slot (backoff if it keeps crashing)
//!          each turn heartbeat, watchdog, old workers past their drain deadline
//!  stop:   tell workers, wait (SIGKILL at the deadline), mark the region
//!          stopped, remove pid file and region (unless handed to a new master)
//! ```

use crate::acme_process::{AcmeProcess, Heard};
use crate::paths::{default_pid_file, default_stats_path};
use crate::pid_file::PidFile;
use crate::sampler::Sampler;
use crate::signals::{self, master_signalfd};
use crate::spawn::{spawn_worker, Spawn};
use crate::upgrade::{self, Progress};
use crate::{notify, MasterError};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tine_config::{Config, ListenerRole, Source, Workers};
use tine_logging::ErrorLogTarget;
use tine_net::ListenerSet;
use tine_stats::{
    CertificateExpiry, CertificateSource, GaugeShare, Region, RegionState, RegionView, SlotState,
};
use tine_tls::{Origin, TicketKeyRing, TlsContext};

/// A worker that exits sooner than this after starting counts as crash-looping.
const CRASH_WINDOW: Duration = Duration::from_secs(2);
/// Longest wait between two starts of a crash-looping slot.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a fast stop waits for workers before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(5);
/// Added to the drain timeout before a draining worker is killed.
const DRAIN_SLACK: Duration = Duration::from_secs(2);

/// How this master was launched: the configuration, how to rebuild it on
/// reload, and the command line to run again on upgrade.
pub struct Launch {
    pub config: Config,
    pub source: Source,
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// Runs a master until it is stopped.
pub fn serve(launch: Launch) -> Result<(), MasterError> {
    let mut master = Master::start(launch)?;
    master.run();
    master.shut_down();
    Ok(())
}

/// The master's record of the current worker of one slot.
struct SlotRecord {
    cpu: Option<usize>,
    pid: Option<Pid>,
    started: Instant,
    /// Consecutive exits within CRASH_WINDOW of starting.
    quick_exits: u32,
    respawn_at: Option<Instant>,
    watchdog_fired: bool,
}

/// A worker of an older generation, draining after a reload or an upgrade.
struct Retiring {
    pid: Pid,
    slot: usize,
    deadline: Instant,
    killed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// QUIT with a drain_delay: still serving, health checks answer 503, the
    /// graceful stop begins at `stop_at`.
    DelayingStop {
        stop_at: Instant,
    },
    /// A new master took over; our workers drain, then we leave quietly.
    HandedOver,
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

struct Master {
    launch: Launch,
    listeners: ListenerSet,
    /// Sockets no longer configured, closed once no old worker accepts on them.
    retired_sockets: Vec<OwnedFd>,
    region: Region,
    /// TLS session-ticket keys, shared with the workers only.
    tickets: TicketKeyRing,
    /// Certificates and server configurations of the current configuration.
    tls: Option<TlsContext>,
    /// The ACME process and the challenge board its workers answer from.
    acme: AcmeProcess,
    pid_file: PidFile,
    signals: SignalFd,
    cpus: Vec<usize>,
    slots: Vec<SlotRecord>,
    retiring: Vec<Retiring>,
    /// Each live worker's part of its slot's gauges, given back when it is reaped.
    gauge_shares: Vec<(Pid, GaugeShare)>,
    /// `[[client_limit]]`: the shared table and each worker's holds.
    client_limits: crate::client_limits::ClientLimits,
    upgrade: Option<upgrade::Pending>,
    /// Set when this master came from an upgrade: where to say "ready".
    tell_old_master: Option<OwnedFd>,
    /// Told to drain (TTOU): health checks answer 503 until TTIN.
    drained: bool,
    /// Who workers run as (`user`, `group`); None: as the master.
    run_as: Option<crate::privileges::RunAs>,
    /// Requests counted at the last status line to systemd.
    requests_seen: u64,
    phase: Phase,
    handed_over: bool,
    sampler: Sampler,
    last_sample: Instant,
}

impl Master {
    fn start(launch: Launch) -> Result<Self, MasterError> {
        raise_fd_limit();
        let mut inherited = upgrade::take_inherited();
        let config = &launch.config;
        let cpus = allowed_cpus();
        let count = worker_count(config, &cpus);
        let first_port = config.listen.first().map_or(0, |a| a.port());
        // Catch a running instance before binding: with SO_REUSEPORT a second
        // server on the same port would otherwise silently share its traffic.
        if first_port != 0 && inherited.old_master.is_none() {
            PidFile::check_free(&config.pid_file.clone().unwrap_or_else(|| default_pid_file(first_port)))?;
        }
        check_access_log(config)?;
        let run_as = crate::privileges::resolve(config)?;
        let tickets = match inherited.ticket_fd.take() {
            Some(fd) => TicketKeyRing::adopt(fd),
            None => TicketKeyRing::create(),
        }
        .map_err(|e| MasterError::Other(format!("TLS session-ticket keys: {e}")))?;
        let acme =
            AcmeProcess::new().map_err(|e| MasterError::Other(format!("ACME challenge board: {e}")))?;
        let tls = load_tls(config, &tickets, &acme).map_err(MasterError::Other)?;
        let signals = master_signalfd().map_err(MasterError::Signals)?;
        let mut listeners = match &inherited.listeners {
            Some(env) => ListenerSet::inherit(env)?,
            None => match ListenerSet::from_systemd()? {
                Some((mut set, passed)) => {
                    adopt_by_name(&mut set, &passed, config);
                    let labels: Vec<String> = passed
                        .iter()
                        .map(
                            |(addr, name)| {
                                if name.is_empty() {
                                    addr.to_string()
                                } else {
                                    format!("{name}={addr}")
                                }
                            },
                        )
                        .collect();
                    log::info!("sockets from systemd: {}", labels.join(", "));
                    set
                }
                None => ListenerSet::default(),
            },
        };
        let passed = listeners.addrs();
        // Inherited sockets no longer configured stay with the old master.
        let unused = bind_listeners(&mut listeners, config, count)?;
        if inherited.listeners.is_none() && !unused.is_empty() {
            let named = listeners.addrs();
            for addr in passed.iter().filter(|a| !named.contains(a)) {
                log::warn!("systemd passed a socket on {addr}, which no listen address of the configuration names; closed");
            }
        }
        drop(unused);
        let port = listeners.addrs()[0].port();
        let addrs: Vec<String> = listeners.addrs().iter().map(|a| a.to_string()).collect();
        let region = match &inherited.stats_path {
            Some(path) => {
                let region = Region::adopt(path, inherited.stats_fd.take())?;
                if region.slot_count() < count {
                    return Err(MasterError::Other(format!(
                        "{count} workers do not fit the {} slots of the adopted stats region; \
                         restart instead of upgrading",
                        region.slot_count()
                    )));
                }
                region.claim_master();
                region
            }
            None => {
                let path = config.stats_path.clone().unwrap_or_else(|| default_stats_path(port));
                let region = Region::create_with_upstreams(
                    &path,
                    slot_capacity(count, &cpus),
                    &addrs,
                    &upstream_names(config),
                )?;
                region.master().generation.store(1, Relaxed);
                region
            }
        };
        publish_certificates(&region, tls.as_ref(), &acme);
        let client_limits =
            crate::client_limits::ClientLimits::start(config, &region).map_err(MasterError::Other)?;
        let pid_file = PidFile::write(&config.pid_file.clone().unwrap_or_else(|| default_pid_file(port)))?;
        tine_worker::name_process("tine: master");
        announce_listeners(config, &listeners, &[]);
        log::info!(
            "master {} serving {} with {count} worker(s); stats {}, pid file {}{}",
            std::process::id(),
            config.root.display(),
            region.path().display(),
            pid_file.path().display(),
            inherited.old_master.map_or(String::new(), |p| format!("; taking over from master {p}"))
        );
        let mut master = Master {
            launch,
            listeners,
            retired_sockets: Vec::new(),
            region,
            tickets,
            tls,
            acme,
            pid_file,
            signals,
            cpus,
            slots: Vec::new(),
            retiring: Vec::new(),
            gauge_shares: Vec::new(),
            client_limits,
            upgrade: None,
            tell_old_master: inherited.ready,
            phase: Phase::Running,
            drained: false,
            requests_seen: 0,
            run_as,
            handed_over: false,
            sampler: Sampler::default(),
            // Sample on the first turn, so readers see host figures at once.
            last_sample: Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now),
        };
        master.hand_files_to_workers();
        master.resize_slots(count);
        master.respawn_due();
        master.acme.configure(&master.launch.config);
        master.acme.start_if_due();
        if master.tell_old_master.is_none() {
            notify::ready();
        }
        Ok(master)
    }

    fn run(&mut self) {
        loop {
            let mut fds = vec![self.signals.as_raw_fd()];
            fds.extend(self.upgrade.as_ref().map(|u| u.ready_fd()));
            fds.extend(self.acme.report_fd());
            signals::wait_readable(&fds, self.wait_ms());
            for signal in signals::drain(&self.signals) {
                self.on_signal(signal);
            }
            self.hear_acme();
            self.reap();
            self.follow_upgrade();
            self.announce_ready_to_old_master();
            self.expire_retiring();
            self.sample_every_second();
            match self.phase {
                Phase::Running => {
                    self.region.heartbeat();
                    self.watchdog();
                    self.respawn_due();
                    self.acme.start_if_due();
                }
                Phase::DelayingStop { stop_at } if Instant::now() >= stop_at => self.stop(true),
                Phase::DelayingStop { .. } => {
                    self.region.heartbeat();
                    self.watchdog();
                    self.respawn_due();
                    self.acme.start_if_due();
                }
                Phase::HandedOver | Phase::Stopping { .. } if self.live_workers() == 0 => return,
                Phase::Stopping { deadline, killed: false } if Instant::now() >= deadline => {
                    self.kill_stragglers()
                }
                Phase::HandedOver | Phase::Stopping { .. } => {}
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match (signal, self.phase) {
            (Signal::SIGTERM | Signal::SIGINT, _) => self.stop(false),
            (Signal::SIGQUIT, Phase::Running) if !self.launch.config.timeouts.drain_delay.is_zero() => {
                self.delay_stop()
            }
            (Signal::SIGQUIT, _) => self.stop(true),
            (Signal::SIGHUP, Phase::Running) => self.reload(),
            (Signal::SIGUSR1, _) => self.reopen_logs(),
            (Signal::SIGUSR2, Phase::Running) => {
                // Health checks answer 503 while an upgrade is under way.
                self.start_upgrade();
                self.region.set_state(self.serving_state());
            }
            (Signal::SIGTTOU, Phase::Running) => self.set_drained(true),
            (Signal::SIGTTIN, Phase::Running) => self.set_drained(false),
            (Signal::SIGHUP | Signal::SIGUSR2 | Signal::SIGTTOU | Signal::SIGTTIN, _) => {
                log::warn!("{signal} ignored while stopping")
            }
            _ => {} // SIGCHLD: reaped right after
        }
    }

    /// QUIT with a drain_delay: health checks turn 503 at once while the
    /// listeners stay open and everything is served, so that load balancers
    /// take the server out before it refuses a connection; then the graceful
    /// stop. A second QUIT stops at once (gracefully).
    fn delay_stop(&mut self) {
        let delay = self.launch.config.timeouts.drain_delay;
        log::info!("graceful stop in {delay:?}: health checks answer 503 until then");
        self.region.set_state(RegionState::Draining);
        self.phase = Phase::DelayingStop { stop_at: Instant::now() + delay };
    }

    /// TTOU / TTIN: the lame-duck state of a rolling restart, without
    /// stopping: health checks answer 503 (and 200 again), nothing else changes.
    fn set_drained(&mut self, drained: bool) {
        self.drained = drained;
        self.region.set_state(self.serving_state());
        log::info!(
            "{}",
            if drained { "drained: health checks answer 503" } else { "undrained: health checks answer 200" }
        );
    }

    /// What the region says while running: draining when told to, or while
    /// an upgrade is under way.
    fn serving_state(&self) -> RegionState {
        if self.drained || self.upgrade.is_some() {
            RegionState::Draining
        } else {
            RegionState::Running
        }
    }

    /// HUP: build a new generation from the configuration on disk. New workers
    /// start first, on the same sockets for unchanged addresses; only then are
    /// the old ones told to drain. An invalid configuration changes nothing.
    fn reload(&mut self) {
        notify::reloading();
        match self.read_configuration().and_then(|config| self.start_generation(config)) {
            Ok(()) => {
                let master = self.region.master();
                master.reloads.fetch_add(1, Relaxed);
                let generation = master.generation.load(Relaxed);
                log::info!("configuration reloaded: generation {generation}, {} worker(s)", self.slots.len());
                self.acme.configure(&self.launch.config);
            }
            Err(why) => {
                self.region.master().reloads_failed.fetch_add(1, Relaxed);
                log::error!("reload failed, still running the previous configuration: {why}");
            }
        }
        notify::ready();
    }

    /// The configuration on disk, with what only a restart changes kept.
    fn read_configuration(&self) -> Result<Config, String> {
        let mut config = self.launch.source.resolve().map_err(|e| e.to_string())?;
        for (name, changed) in [
            ("stats_path", config.stats_path != self.launch.config.stats_path),
            ("pid_file", config.pid_file != self.launch.config.pid_file),
        ] {
            if changed {
                log::warn!("{name} changed; that takes effect only after a restart");
            }
        }
        config.stats_path = self.launch.config.stats_path.clone();
        config.pid_file = self.launch.config.pid_file.clone();
        Ok(config)
    }

    /// What the ACME process reported: a stored certificate goes into service
    /// as a reload would (a new generation of workers with it, the old ones
    /// drain with theirs, no handshake fails); a state change is published.
    fn hear_acme(&mut self) {
        for heard in self.acme.read_reports() {
            match heard {
                Heard::Status => publish_certificates(&self.region, self.tls.as_ref(), &self.acme),
                Heard::Stored(names) if matches!(self.phase, Phase::Running | Phase::DelayingStop { .. }) => {
                    match self.start_generation(self.launch.config.clone()) {
                        Ok(()) => log::info!(
                            "ACME: the new certificate for {} is in service: generation {}",
                            names.join(", "),
                            self.region.master().generation.load(Relaxed)
                        ),
                        Err(why) => log::error!(
                            "ACME: the new certificate for {} cannot be put into service, the current one keeps serving: {why}",
                            names.join(", ")
                        ),
                    }
                }
                Heard::Stored(_) => {}
            }
        }
    }

    /// Starts a new generation of workers on `config` (new certificates
    /// included) and retires the current one; nothing changes on an error.
    fn start_generation(&mut self, config: Config) -> Result<(), String> {
        let run_as = crate::privileges::resolve(&config).map_err(|e| e.to_string())?;
        let count = worker_count(&config, &self.cpus);
        if count > self.region.slot_count() {
            return Err(format!(
                "{count} workers do not fit the {} slots of the stats region; restart to grow that far",
                self.region.slot_count()
            ));
        }
        check_access_log(&config).map_err(|e| e.to_string())?;
        // Certificates are read before anything changes: one that cannot be
        // used refuses the reload, and the current ones keep serving.
        let tls = load_tls(&config, &self.tickets, &self.acme)?;
        if config.error_log != self.launch.config.error_log {
            tine_logging::install(error_log_target(&config)).map_err(|e| e.to_string())?;
        }
        let before = self.listeners.addrs();
        let retired = bind_listeners(&mut self.listeners, &config, count).map_err(|e| e.to_string())?;
        self.client_limits.apply(&config, &self.region)?;
        announce_listeners(&config, &self.listeners, &before);
        if !self.region.set_upstream_names(&upstream_names(&config)) {
            log::warn!("more upstream servers than the stats region has room for: restart to count them all");
        }
        self.launch.config = config;
        self.run_as = run_as;
        self.hand_files_to_workers();
        publish_certificates(&self.region, tls.as_ref(), &self.acme);
        self.tls = tls;
        self.retired_sockets.extend(retired);
        let old = self.retire_current_workers();
        self.resize_slots(count);
        self.respawn_due();
        for pid in old {
            let _ = kill(pid, Signal::SIGQUIT);
        }
        self.region.master().generation.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Moves every current worker to the retiring list (to be told to drain by
    /// the caller, after their replacements are started) and returns their pids.
    fn retire_current_workers(&mut self) -> Vec<Pid> {
        let deadline = Instant::now() + self.launch.config.timeouts.drain + DRAIN_SLACK;
        let mut pids = Vec::new();
        for (slot, record) in self.slots.iter_mut().enumerate() {
            if let Some(pid) = record.pid.take() {
                self.retiring.push(Retiring { pid, slot, deadline, killed: false });
                pids.push(pid);
            }
            record.respawn_at = Some(Instant::now());
            record.quick_exits = 0;
        }
        pids
    }

    fn resize_slots(&mut self, count: usize) {
        for index in count..self.slots.len() {
            self.region.slot(index).state.store(SlotState::Retired as u64, Relaxed);
        }
        self.slots.truncate(count);
        let now = Instant::now();
        let cpus = &self.cpus;
        while self.slots.len() < count {
            let i = self.slots.len();
            self.slots.push(SlotRecord {
                cpu: (!cpus.is_empty()).then(|| cpus[i % cpus.len()]),
                pid: None,
                started: now,
                quick_exits: 0,
                respawn_at: Some(now),
                watchdog_fired: false,
            });
        }
    }

    /// USR1: reopen our error log and have every worker reopen its logs.
    fn reopen_logs(&mut self) {
        if let Err(e) = tine_logging::reopen_error_log() {
            log::error!("cannot reopen the error log: {e}");
        }
        self.hand_files_to_workers();
        for pid in self.all_worker_pids() {
            let _ = kill(pid, Signal::SIGUSR1);
        }
        self.acme.reopen_logs();
        log::info!("logs reopened");
    }

    /// With a `user`: the logs workers reopen by name become theirs, and
    /// the stats region readable by their group.
    fn hand_files_to_workers(&self) {
        let Some(run_as) = &self.run_as else { return };
        let config = &self.launch.config;
        for log in [&config.access_log, &config.error_log].into_iter().flatten() {
            crate::privileges::hand_over(log, run_as);
        }
        crate::privileges::share_region(self.region.path(), run_as);
    }

    /// USR2: start the binary on disk and hand it our sockets and region.
    fn start_upgrade(&mut self) {
        if let Some(u) = &self.upgrade {
            log::warn!("an upgrade to master {} is already under way", u.pid);
            return;
        }
        let exe = &self.launch.exe;
        log::info!("upgrade: starting {}", exe.display());
        let tickets = self.tickets.raw_fd();
        match upgrade::start(exe, &self.launch.args, &self.listeners, &self.region, tickets, &self.pid_file) {
            Ok(pending) => self.upgrade = Some(pending),
            Err(e) => log::error!("upgrade failed, still serving: {e}"),
        }
    }

    /// Checks on an upgrade under way: hand over when the new master is ready,
    /// give up and keep serving when it failed.
    fn follow_upgrade(&mut self) {
        let Some(pending) = self.upgrade.as_mut() else { return };
        match pending.poll() {
            Progress::Waiting => {}
            Progress::Ready => {
                log::info!("upgrade: master {} is serving; draining the old workers", pending.pid);
                let oldbin = pending.oldbin();
                self.upgrade = None;
                self.handed_over = true;
                self.phase = Phase::HandedOver;
                // The new master's ACME process takes the storage over.
                self.acme.stop();
                let _ = std::fs::remove_file(oldbin);
                for pid in self.retire_current_workers() {
                    let _ = kill(pid, Signal::SIGQUIT);
                }
                for record in &mut self.slots {
                    record.respawn_at = None;
                }
            }
            Progress::Failed(why) => {
                log::error!("upgrade failed, still serving: {why}");
                let _ = kill(pending.pid, Signal::SIGKILL);
                pending.abandon();
                self.upgrade = None;
                self.region.set_state(self.serving_state());
            }
        }
    }

    /// A master started by an upgrade tells the old one once all its workers run.
    fn announce_ready_to_old_master(&mut self) {
        if self.tell_old_master.is_none() {
            return;
        }
        let all_running = (0..self.slots.len())
            .all(|i| self.region.slot(i).state.load(Relaxed) == SlotState::Running as u64);
        if all_running {
            if let Some(fd) = self.tell_old_master.take() {
                let _ = std::fs::File::from(fd).write_all(b"1");
                notify::ready();
            }
        }
    }

    /// Tells every worker to stop: QUIT drains in-flight responses first, TERM
    /// stops at once. A TERM during a graceful stop hurries it along.
    fn stop(&mut self, graceful: bool) {
        if graceful && matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        notify::stopping();
        self.acme.stop();
        let (signal, grace) = if graceful {
            (Signal::SIGQUIT, self.launch.config.timeouts.drain + DRAIN_SLACK)
        } else {
            (Signal::SIGTERM, FAST_STOP_GRACE)
        };
        log::info!(
            "{} stop: signalling {} worker(s)",
            if graceful { "graceful" } else { "fast" },
            self.live_workers()
        );
        if !self.handed_over {
            self.region.set_state(RegionState::Stopping);
        }
        if let Some(pending) = self.upgrade.take() {
            let _ = kill(pending.pid, Signal::SIGTERM);
            pending.abandon();
        }
        self.phase = Phase::Stopping { deadline: Instant::now() + grace, killed: false };
        // Nothing will accept on the listening sockets again: once the
        // workers let go of theirs too, connections are refused, not queued.
        if !self.handed_over {
            self.listeners.close_all();
        }
        for slot in &mut self.slots {
            slot.respawn_at = None;
        }
        for pid in self.all_worker_pids() {
            let _ = kill(pid, signal);
        }
    }

    fn kill_stragglers(&mut self) {
        log::warn!("{} worker(s) still running at the stop deadline; killing them", self.live_workers());
        for pid in self.all_worker_pids() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Phase::Stopping { deadline, .. } = self.phase {
            self.phase = Phase::Stopping { deadline, killed: true };
        }
    }

    /// Old workers past their drain deadline are killed; sockets retired by a
    /// reload are closed once no old worker is left to accept on them.
    fn expire_retiring(&mut self) {
        let now = Instant::now();
        for r in self.retiring.iter_mut().filter(|r| !r.killed && now >= r.deadline) {
            log::warn!("old worker {} (pid {}) still busy at its drain deadline; killing it", r.slot, r.pid);
            let _ = kill(r.pid, Signal::SIGKILL);
            r.killed = true;
        }
        if self.retiring.is_empty() && !self.retired_sockets.is_empty() {
            log::info!("closing {} retired listening socket(s)", self.retired_sockets.len());
            self.retired_sockets.clear();
        }
    }

    /// Kills and replaces a worker whose event loop stopped turning.
    fn watchdog(&mut self) {
        let limit_ms = self.launch.config.timeouts.watchdog.as_millis() as u64;
        let now_ms = tine_stats::unix_millis();
        for (index, record) in self.slots.iter_mut().enumerate() {
            let Some(pid) = record.pid else { continue };
            let stats = self.region.slot(index);
            let last_sign = stats.heartbeat_unix_ms.load(Relaxed).max(stats.started_unix_ms.load(Relaxed));
            if record.watchdog_fired || now_ms.saturating_sub(last_sign) <= limit_ms {
                continue;
            }
            log::error!(
                "worker {index} (pid {pid}) has not turned its event loop for {} ms; killing it",
                now_ms - last_sign
            );
            let _ = kill(pid, Signal::SIGKILL);
            record.watchdog_fired = true;
            self.region.master().watchdog_kills.fetch_add(1, Relaxed);
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
            self.client_limits.worker_gone(pid);
            let restart = matches!(self.phase, Phase::Running | Phase::DelayingStop { .. });
            if self.acme.reaped(pid, &how, restart) {
                continue;
            }
            if let Some(index) = self.slots.iter().position(|s| s.pid == Some(pid)) {
                self.give_back_gauges(pid, index);
                self.on_worker_exit(index, pid, &how);
            } else if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
                let r = self.retiring.swap_remove(i);
                self.give_back_gauges(pid, r.slot);
                log::info!("old worker {} (pid {pid}) {how}", r.slot);
                if r.slot >= self.slots.len() {
                    self.region.slot(r.slot).state.store(SlotState::Retired as u64, Relaxed);
                }
            } else if self.upgrade.as_ref().is_some_and(|u| u.pid == pid) {
                // follow_upgrade sees the closed pipe and reports the failure.
                log::error!("upgrade: new master {pid} {how}");
            }
        }
    }

    /// A reaped worker's connections died with it: what it still held in
    /// its slot's gauges leaves them (nothing of another worker's does).
    fn give_back_gauges(&mut self, pid: Pid, slot: usize) {
        if let Some(i) = self.gauge_shares.iter().position(|(p, _)| *p == pid) {
            let (_, share) = self.gauge_shares.swap_remove(i);
            share.give_back(&self.region, slot);
        }
    }

    fn on_worker_exit(&mut self, index: usize, pid: Pid, how: &str) {
        let stats = self.region.slot(index);
        stats.pid.store(0, Relaxed);
        stats.state.store(SlotState::Dead as u64, Relaxed);
        let slot = &mut self.slots[index];
        slot.pid = None;
        if !matches!(self.phase, Phase::Running | Phase::DelayingStop { .. }) {
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
        // A new worker keeps none of the master's own descriptors, nor the
        // sockets a reload retired: closed in the master once the old workers
        // are gone, they must then be closed in every process, or clients
        // would queue on a socket nobody accepts on instead of being refused.
        // The stats region's descriptor is read-write and its holder could
        // truncate the file under the master's mapping (SIGBUS): workers
        // keep only the mapping they inherit.
        let mut master_fds =
            vec![self.signals.as_raw_fd(), self.tickets.raw_fd(), self.region.lock_fd().as_raw_fd()];
        master_fds.extend(self.acme.report_fd());
        master_fds.extend(self.retired_sockets.iter().map(|fd| fd.as_raw_fd()));
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.pid.is_some() || slot.respawn_at.is_none_or(|at| at > now) {
                continue;
            }
            let limits = match self.client_limits.for_worker(&self.launch.config) {
                Ok(limits) => limits,
                Err(e) => {
                    log::error!("worker {index}: {e}; retrying in a second");
                    self.slots[index].respawn_at = Some(now + Duration::from_secs(1));
                    continue;
                }
            };
            let spec = Spawn {
                slot: index,
                cpu: slot.cpu,
                listeners: &self.listeners,
                master_fds: &master_fds,
                config: &self.launch.config,
                region: &self.region,
                tls: self.tls.as_ref(),
                acme_challenges: Some(self.acme.board()),
                run_as: self.run_as.as_ref(),
                client_limits: limits.as_ref().map(|(region, holds)| {
                    tine_worker::client_limits::LimitsInit {
                        region,
                        stats_index: self.client_limits.stats_index(),
                        holds,
                    }
                }),
            };
            match spawn_worker(spec) {
                Ok((pid, share)) => {
                    self.gauge_shares.push((pid, share));
                    if let Some((region, holds)) = limits {
                        self.client_limits.track(pid, holds, region);
                    }
                    let slot = &mut self.slots[index];
                    slot.pid = Some(pid);
                    slot.started = now;
                    slot.respawn_at = None;
                    slot.watchdog_fired = false;
                }
                Err(e) => {
                    log::error!("worker {index}: {e}; retrying in a second");
                    self.slots[index].respawn_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// CPU, memory and host network counters into the region, once a second.
    /// Once a second, under systemd: a status line (workers, connections,
    /// requests per second since the last one) and the watchdog ping when
    /// the unit asks for one. Without NOTIFY_SOCKET this does nothing.
    fn tell_systemd(&mut self, workers: usize) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let totals = tine_stats::Snapshot::take(&self.region).totals();
        let requests = totals.get("requests").unwrap_or(0);
        let per_second = requests.saturating_sub(std::mem::replace(&mut self.requests_seen, requests));
        let state = if self.region.serving() { "" } else { ", draining" };
        notify::status(&format!(
            "{workers} workers, {} connections, {per_second} requests/s{state}",
            totals.get("active").unwrap_or(0)
        ));
        if notify::watchdog_enabled() {
            notify::watchdog();
        }
    }

    fn sample_every_second(&mut self) {
        if self.handed_over || self.last_sample.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_sample = Instant::now();
        let workers: Vec<(usize, i32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.pid.map(|p| (i, p.as_raw())))
            .chain(self.retiring.iter().map(|r| (r.slot, r.pid.as_raw())))
            .collect();
        self.sampler.sample(&self.region, &workers);
        self.client_limits.sample(&self.region);
        self.tell_systemd(workers.len());
        if self.tls.is_some() {
            match self.tickets.rotate_if_due(self.launch.config.tls.ticket_key_rotation) {
                Ok(true) => log::info!("TLS session-ticket key rotated"),
                Ok(false) => {}
                Err(e) => log::error!("cannot rotate the TLS session-ticket key: {e}"),
            }
        }
    }

    fn all_worker_pids(&self) -> Vec<Pid> {
        self.slots.iter().filter_map(|s| s.pid).chain(self.retiring.iter().map(|r| r.pid)).collect()
    }

    fn live_workers(&self) -> usize {
        self.all_worker_pids().len()
    }

    /// Sleep until the next respawn is due, and at least once a second for the
    /// heartbeat and the watchdog; a signal (SIGCHLD included) wakes the master
    /// at once.
    fn wait_ms(&self) -> i32 {
        let now = Instant::now();
        let mut wait = Duration::from_secs(1);
        if let Phase::DelayingStop { stop_at } = self.phase {
            wait = wait.min(stop_at.saturating_duration_since(now));
        }
        if let Some(next) = self.slots.iter().filter_map(|s| s.respawn_at).chain(self.acme.respawn_at()).min()
        {
            wait = wait.min(next.saturating_duration_since(now));
        }
        if self.tell_old_master.is_some() {
            wait = wait.min(Duration::from_millis(20));
        }
        wait.as_millis() as i32
    }

    fn shut_down(&mut self) {
        if self.handed_over {
            log::info!("master {} handed over and stopped", std::process::id());
            return;
        }
        self.region.set_state(RegionState::Stopped);
        self.pid_file.remove();
        let _ = std::fs::remove_file(self.region.path());
        self.client_limits.remove();
        log::info!("master {} stopped", std::process::id());
    }
}

/// `group address` for every upstream server, in configuration order: the
/// names of the region's upstream table.
/// Reads the certificates of `config` and builds the workers' TLS
/// configurations (None when nothing terminates TLS).
fn load_tls(
    config: &Config,
    tickets: &TicketKeyRing,
    acme: &AcmeProcess,
) -> Result<Option<TlsContext>, String> {
    if !config.uses_tls() {
        return Ok(None);
    }
    let tls = TlsContext::load(config, Some(tickets), Some(acme.board())).map_err(|e| format!("TLS: {e}"))?;
    for warning in tls.warnings(config, (tine_stats::unix_millis() / 1000) as i64) {
        log::warn!("TLS: {warning}");
    }
    Ok(Some(tls))
}

/// Names the served certificates in the stats region: expiry, source, and
/// the ACME state of those obtained by ACME.
fn publish_certificates(region: &Region, tls: Option<&TlsContext>, acme: &AcmeProcess) {
    let entries: Vec<CertificateExpiry> = tls
        .map(|t| {
            t.certificates
                .iter()
                .map(|c| {
                    let name =
                        c.inspection.names.first().cloned().unwrap_or_else(|| c.inspection.subject.clone());
                    let status = c
                        .origin
                        .acme_names()
                        .and_then(|names| names.first())
                        .and_then(|first| acme.status(first))
                        .cloned()
                        .unwrap_or_default();
                    CertificateExpiry {
                        name,
                        file: c.cert_path.display().to_string(),
                        not_after_unix: c.inspection.not_after_unix,
                        source: match c.origin {
                            Origin::Files => CertificateSource::File,
                            Origin::Acme { .. } => CertificateSource::Acme,
                            Origin::Temporary { .. } => CertificateSource::AcmeTemporary,
                        },
                        next_attempt_unix: status.next_attempt_unix,
                        failures: status.failures,
                        last_error: status.last_error,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !region.set_certificates(&entries) {
        log::warn!(
            "the stats region has no room for {} certificates: their expiry is not shown",
            entries.len()
        );
    }
}

fn upstream_names(config: &Config) -> Vec<String> {
    config
        .upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(move |s| format!("{} {}", u.name, s.addr)))
        .collect()
}

fn worker_count(config: &Config, cpus: &[usize]) -> usize {
    match config.workers {
        Workers::Count(n) => n,
        Workers::Auto => cpus.len().max(1),
    }
}

/// Slots the region is created with: room for a reload to double the workers
/// (or go to one per CPU) without a restart.
fn slot_capacity(count: usize, cpus: &[usize]) -> usize {
    (count * 2).max(cpus.len()).clamp(4, 4096)
}

pub fn error_log_target(config: &Config) -> ErrorLogTarget {
    config.error_log.clone().map_or(ErrorLogTarget::Stderr, ErrorLogTarget::File)
}

/// Workers open the access log; find out in the master, where a failure can
/// refuse the configuration instead of crash-looping every worker.
fn check_access_log(config: &Config) -> Result<(), MasterError> {
    if let Some(path) = &config.access_log {
        tine_logging::open_append(path)
            .map_err(|e| MasterError::Other(format!("access log {}: {e}", path.display())))?;
    }
    Ok(())
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
    tine_net::sys::raise_fd_limit();
}

/// Makes the listener set match every listener the configuration names
/// (HTTP, admin, streams: [`tine_config::Config::listener_roles`], the one
/// list of them), one socket per slot. Start and reload both come here, so a
/// reload carries every kind of listener over; the sockets it no longer
/// needs are returned, to close once no worker accepts on them.
fn bind_listeners(
    listeners: &mut ListenerSet,
    config: &Config,
    slots: usize,
) -> Result<Vec<OwnedFd>, tine_net::NetError> {
    let retired = listeners.rebind(&config.all_listen_addrs(), slots, config.backlog)?;
    // Set once on each listener: its connections inherit every option.
    for (i, (addr, role)) in config.listener_roles().into_iter().enumerate() {
        for (option, e) in listeners.configure(i, &config.listener_tcp(addr, role)) {
            log::warn!("{addr}: the kernel refused [tcp] {option} ({e}); its default stays");
        }
    }
    warn_of_kernel_shortfalls(config);
    // Upstream connections are made by the workers, one at a time: say once,
    // here, which of their options this kernel refuses.
    for u in &config.upstreams {
        for (option, e) in tine_net::sys::refused_tcp_options(&u.tcp) {
            log::warn!("upstream {}: the kernel refused tcp {option} ({e}); its default stays", u.name);
        }
    }
    Ok(retired)
}

/// Socket activation by name: a passed socket whose address no listener
/// names, but whose FileDescriptorName is a listener kind (`http` for
/// `listen`, `https` for `tls_listen`, `admin` for `admin_listen`, or a
/// stream's upstream group), serves the first listener of that kind that
/// no passed socket matches by address.
fn adopt_by_name(set: &mut ListenerSet, passed: &[(std::net::SocketAddr, String)], config: &Config) {
    let roles = config.listener_roles();
    let by_address: Vec<std::net::SocketAddr> = passed.iter().map(|(a, _)| *a).collect();
    let mut taken: Vec<std::net::SocketAddr> =
        roles.iter().map(|(a, _)| *a).filter(|a| by_address.contains(a)).collect();
    for (bound, name) in passed {
        if name.is_empty() || roles.iter().any(|(a, _)| a == bound) {
            continue;
        }
        let kind_of = |role: &ListenerRole| match role {
            ListenerRole::Http => "http".to_string(),
            ListenerRole::Https => "https".to_string(),
            ListenerRole::Admin => "admin".to_string(),
            ListenerRole::Stream(i) => config
                .streams
                .get(*i)
                .and_then(|s| config.upstreams.get(s.upstream))
                .map_or_else(String::new, |u| u.name.clone()),
        };
        let Some((requested, _)) = roles.iter().find(|(a, r)| kind_of(r) == *name && !taken.contains(a))
        else {
            continue;
        };
        if set.stand_for(*bound, *requested) {
            log::info!("systemd socket {name}={bound} serves {requested}");
            taken.push(*requested);
        }
    }
}

/// One warning per kernel setting this configuration depends on and does
/// not get (the table of `tine tune`).
fn warn_of_kernel_shortfalls(config: &Config) {
    let findings = tine_tune::examine(config, &tine_tune::Kernel::default(), tine_tune::nofile_limit());
    for f in tine_tune::shortfalls(&findings) {
        // A process limit or a missing kernel module is not a sysctl that
        // --apply could set; the reason itself says what to do.
        let remedy = if f.apply.is_some() { " (tine tune --apply, or deploy/sysctl-tine.conf)" } else { "" };
        log::warn!(
            "kernel: {} is {}, {} recommended: {}{remedy}",
            f.key,
            f.current.as_deref().unwrap_or("unknown"),
            f.recommended,
            f.why
        );
    }
}

/// Logs each listener bound since `before` (all of them at start) with what
/// it is for; tests and operators find port-0 addresses here.
fn announce_listeners(config: &Config, listeners: &ListenerSet, before: &[std::net::SocketAddr]) {
    for (a, (_, role)) in listeners.addrs().iter().zip(config.listener_roles()) {
        if before.contains(a) {
            continue;
        }
        match role {
            tine_config::ListenerRole::Http => log::info!("listening on {a}"),
            tine_config::ListenerRole::Https => log::info!("listening for TLS on {a}"),
            tine_config::ListenerRole::Admin => {
                log::info!("admin endpoint on http://{a}/metrics and /stats.json")
            }
            tine_config::ListenerRole::Stream(i) => {
                let upstream = &config.upstreams[config.streams[i].upstream].name;
                let tls = if config.streams[i].tls { "TLS " } else { "" };
                log::info!("{tls}stream on {a} relayed to upstream {upstream}")
            }
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
