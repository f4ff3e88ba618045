//! Forking a worker into its slot. The child never returns into the master's
//! code: it runs the worker and exits, so none of the master's destructors (pid
//! file, region) ever run in a worker.

use crate::MasterError;
use nix::unistd::{fork, ForkResult, Pid};
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use tine_config::Config;
use tine_net::ListenerSet;
use tine_stats::{GaugeShare, Region, RegionView, SlotState};
use tine_worker::{WorkerError, WorkerInit};

/// Exit code of a worker that panicked: a bug, which the master survives.
pub const EXIT_PANIC: i32 = 70;

pub struct Spawn<'a> {
    pub slot: usize,
    pub cpu: Option<usize>,
    pub listeners: &'a ListenerSet,
    /// Master-only descriptors the child must not keep (its signalfd).
    pub master_fds: &'a [RawFd],
    pub config: &'a Config,
    pub region: &'a Region,
    pub tls: Option<&'a tine_tls::TlsContext>,
    /// The ACME challenge board.
    pub acme_challenges: Option<&'a tine_tls::ChallengeBoard>,
    /// Who the worker drops to once set up.
    pub run_as: Option<&'a crate::privileges::RunAs>,
    /// The client limits' table, when the configuration has limits.
    pub client_limits: Option<tine_worker::client_limits::LimitsInit<'a>>,
}

/// Forks a worker for `spec.slot` and returns its pid, with the share of the
/// slot's gauges it keeps (to be given back once it is reaped).
pub fn spawn_worker(spec: Spawn<'_>) -> Result<(Pid, GaugeShare), MasterError> {
    let share = GaugeShare::new(spec.region.upstream_stats(spec.slot).len())
        .map_err(|e| MasterError::Other(format!("cannot make the worker's gauge share: {e}")))?;
    let stats = spec.region.slot(spec.slot);
    // From here on any older worker still draining in this slot only adds to
    // its counters and leaves the descriptive fields to this one.
    let generation = stats.generation.fetch_add(1, Relaxed) + 1;
    stats.state.store(SlotState::Starting as u64, Relaxed);
    stats.cpu.store(spec.cpu.map_or(u64::MAX, |c| c as u64), Relaxed);
    let master_pid = std::process::id();
    // SAFETY: the master is single-threaded (signals come through a signalfd, no
    // thread is ever started), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| MasterError::Fork(e.into()))? {
        ForkResult::Parent { child } => {
            stats.pid.store(child.as_raw() as u64, Relaxed);
            stats.started_unix_ms.store(tine_stats::unix_millis(), Relaxed);
            Ok((child, share))
        }
        ForkResult::Child => {
            let mut close_fds = spec.listeners.all_but_slot(spec.slot);
            close_fds.extend_from_slice(spec.master_fds);
            let init = WorkerInit {
                slot: spec.slot,
                cpu: spec.cpu,
                master_pid,
                generation,
                listeners: spec.listeners.for_slot(spec.slot),
                close_fds,
                roles: spec.config.listener_roles().into_iter().map(|(_, role)| role).collect(),
                config: spec.config,
                region: spec.region,
                tls: spec.tls,
                acme_challenges: spec.acme_challenges,
                run_as: spec.run_as.map(|r| (r.uid.as_raw(), r.gid.as_raw())),
                gauge_share: &share,
                client_limits: spec.client_limits,
            };
            let code = match std::panic::catch_unwind(AssertUnwindSafe(|| tine_worker::run(init))) {
                Ok(Ok(_)) | Ok(Err(WorkerError::Orphaned(_))) => 0,
                Ok(Err(e)) => {
                    log::error!("worker {}: {e}", spec.slot);
                    1
                }
                // The panic hook has already printed the message.
                Err(_) => EXIT_PANIC,
            };
            std::process::exit(code)
        }
    }
}
