//! A tine worker process. The master forks it into a slot; it pins itself to the
//! slot's CPU, names itself, arranges to hear of the master's death, and runs one
//! epoll loop ([`event_loop`]) over the slot's listening sockets until it is told
//! to stop. Connections are the state machine in [`connection`].
//!
//! A worker shares nothing mutable with anyone except its own statistics slot.

#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod admin;
pub mod buffer_pool;
pub mod client_limits;
pub mod connection;
pub mod context;
pub mod counters;
pub mod event_loop;
pub mod exchange;
pub mod file_cache;
pub mod file_lookup;
pub mod framing;
pub mod outcome;
pub mod relay;
pub mod responses;
#[cfg(test)]
mod scripted;
pub mod slab;
pub mod static_files;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod timer_wheel;
pub mod token;
pub mod transport;
pub mod upstream;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tine_config::Config;
use tine_stats::{Region, RegionView};

pub use event_loop::Exit;

/// Everything a freshly forked worker needs from its master.
pub struct WorkerInit<'a> {
    pub slot: usize,
    pub cpu: Option<usize>,
    pub master_pid: u32,
    /// The slot generation this worker was started as.
    pub generation: u64,
    /// This slot's listening sockets, one per listen address.
    pub listeners: Vec<RawFd>,
    /// Descriptors inherited across fork that are not the worker's (other
    /// slots' sockets, the master's signalfd); the worker closes them.
    pub close_fds: Vec<RawFd>,
    /// What each of `listeners` is for.
    pub roles: Vec<tine_config::ListenerRole>,
    pub config: &'a Config,
    pub region: &'a Region,
    /// Certificates and server configurations, when anything is TLS.
    pub tls: Option<&'a tine_tls::TlsContext>,
    /// The ACME challenges being validated (answered on plain listeners
    /// when the `[acme]` challenge is http-01).
    pub acme_challenges: Option<&'a tine_tls::ChallengeBoard>,
    /// The user and group to drop to once set up (uid, gid).
    pub run_as: Option<(u32, u32)>,
    /// This worker's own part of its slot's gauges.
    pub gauge_share: &'a tine_stats::GaugeShare,
    /// The client limits' shared table, when the configuration has limits.
    pub client_limits: Option<client_limits::LimitsInit<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the master (pid {0}) is already gone")]
    Orphaned(u32),
    #[error("cannot drop privileges: {0}")]
    Privileges(String),
    #[error("cannot set up the worker: {0}")]
    Setup(#[from] std::io::Error),
    #[error("cannot open the document root {path}: {source}")]
    Root { path: String, source: std::io::Error },
}

/// Runs a worker to completion. Called in the child right after fork.
pub fn run(init: WorkerInit<'_>) -> Result<Exit, WorkerError> {
    die_with_master(init.master_pid)?;
    name_process(&format!("tine: worker {}", init.slot));
    if let Some(cpu) = init.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            log::warn!("worker {}: cannot pin to CPU {cpu}", init.slot);
        }
    }
    for &fd in &init.close_fds {
        // Inherited across fork and unused here; the master's values that own
        // them are never dropped in a worker, which exits without returning
        // into the master's frames.
        tine_net::sys::close_inherited(fd);
    }
    let signals = worker_signals()?;
    let config = init.config;
    let shared = Shared {
        region: init.region,
        slot: init.slot,
        gauge_share: init.gauge_share,
        tls: init.tls,
        acme_challenges: init.acme_challenges,
        client_limits: init.client_limits,
    };
    let ctx = worker_context(config, shared, https_port(&init))?;

    init.region.slot(init.slot).heartbeat_unix_ms.store(tine_stats::unix_millis(), Relaxed);
    let mut event_loop = event_loop::EventLoop::new(
        ctx,
        init.generation,
        init.listeners,
        init.roles,
        signals,
        config.limits.connections_per_worker,
    )?;
    if let Some((uid, gid)) = init.run_as {
        drop_privileges(uid, gid)?;
    }
    // Opened as the user that writes it: a path the workers' user could
    // have replaced with a symlink reaches no file that user could not open.
    // The master checked the path at start; one that fails now (replaced
    // since) costs this worker its access log, not the slot its service.
    if let Some(path) = &config.access_log {
        match tine_logging::AccessLog::open(path) {
            Ok(log) => event_loop.set_access_log(log),
            Err(e) => log::error!("worker {}: {e}; serving without the access log", init.slot),
        }
    }
    Ok(event_loop.run()?)
}

/// What a worker's context borrows from its master's set-up.
pub(crate) struct Shared<'a> {
    pub region: &'a Region,
    pub slot: usize,
    pub gauge_share: &'a tine_stats::GaugeShare,
    pub tls: Option<&'a tine_tls::TlsContext>,
    pub acme_challenges: Option<&'a tine_tls::ChallengeBoard>,
    pub client_limits: Option<client_limits::LimitsInit<'a>>,
}

/// The context every connection of a worker shares, built from the
/// configuration: routes, static sites (their roots opened), upstream
/// groups, pools and this worker's counters.
pub(crate) fn worker_context<'a>(
    config: &Config,
    shared: Shared<'a>,
    https_port: Option<u16>,
) -> Result<context::Ctx<'a>, WorkerError> {
    let routes = config.effective_routes();
    let mut sites: Vec<(tine_config::StaticSite, context::Site)> = Vec::new();
    let mut route_sites = Vec::with_capacity(routes.len());
    for route in &routes {
        let tine_config::Handler::Static(site) = &route.handler else {
            route_sites.push(None);
            continue;
        };
        // Routes that serve one root the same way share its site and cache.
        let index = match sites.iter().position(|(s, _)| s == site) {
            Some(i) => i,
            None => {
                let root = tine_fs::Root::open(&site.root)
                    .map_err(|source| WorkerError::Root { path: site.root.display().to_string(), source })?;
                let files = file_cache::FileCache::new(&config.cache, site, &config.compression);
                sites.push((site.clone(), context::Site { root, files }));
                sites.len() - 1
            }
        };
        route_sites.push(Some(index));
    }
    let now = Instant::now();
    Ok(context::Ctx {
        clock: context::Clock { now, unix_secs: tine_stats::unix_millis() / 1000, date: Default::default() },
        timers: context::Timers { timeouts: config.timeouts, wheel: timer_wheel::TimerWheel::new(now) },
        http: context::Http {
            limits: tine_http::Limits {
                head_bytes: config.limits.request_head_bytes,
                uri_bytes: config.limits.uri_bytes,
            },
            discard_body_bytes: config.limits.discard_body_bytes,
            min_send_rate: config.limits.min_send_rate,
            route_replies: routes.iter().map(crate::responses::RouteReplies::new).collect(),
            routes,
            route_sites,
            sites: sites.into_iter().map(|(_, site)| site).collect(),
            path: Default::default(),
            https_port,
            health_path: config.health_path.clone(),
            acme_http01: shared
                .acme_challenges
                .filter(|_| {
                    config.acme.as_ref().is_some_and(|a| a.challenge == tine_config::AcmeChallenge::Http01)
                })
                .cloned(),
            admin_hosts: config.admin_hosts.clone(),
            http2: http2_settings(&config.http2),
            h2c: config.http2.h2c,
        },
        proxy: context::Proxy {
            upstreams: upstream::Upstreams::new(&config.upstreams, shared.tls),
            streams: config.streams.clone(),
            pipes: Default::default(),
        },
        epoll: tine_net::Epoll::new()?,
        pool: buffer_pool::BufferPool::new(config.limits.request_head_bytes, 1024),
        stats: context::Counters {
            slot: shared.region.slot(shared.slot),
            upstreams: shared.region.upstream_stats(shared.slot),
            gauges: tine_stats::Gauges::new(
                shared.region.slot(shared.slot),
                shared.region.upstream_stats(shared.slot),
                shared.gauge_share,
            ),
            region: shared.region,
        },
        access_log: None,
        draining: false,
        tls: shared.tls.cloned(),
        proxy_headers: context::ProxyHeaders {
            settings: config.proxy_protocol.clone(),
            // The master hands listeners over in listener_roles' order.
            on_listener: config
                .listener_roles()
                .into_iter()
                .map(|(a, r)| config.expects_proxy_header(a, r))
                .collect(),
        },
        client_limits: match shared.client_limits {
            Some(init) => {
                client_limits::ClientLimits::new(config, init, shared.region.limit_stats(shared.slot))
            }
            None => client_limits::ClientLimits::none(),
        },
    })
}

/// The port the first HTTPS listener is bound to (the configured one may be 0).
fn https_port(init: &WorkerInit<'_>) -> Option<u16> {
    let (fd, _) =
        init.listeners.iter().zip(&init.roles).find(|(_, r)| **r == tine_config::ListenerRole::Https)?;
    tine_net::sys::local_addr(*fd).ok().map(|a| a.port())
}

/// Asks the kernel to send SIGQUIT (a graceful stop) when the master dies, even by
/// SIGKILL, so that an orphan never keeps accepting on a port a new master binds.
fn die_with_master(master_pid: u32) -> Result<(), WorkerError> {
    tine_net::sys::quit_when_parent_dies();
    // The master may have died before the request took effect.
    if std::os::unix::process::parent_id() != master_pid {
        return Err(WorkerError::Orphaned(master_pid));
    }
    Ok(())
}

/// Sets the process name shown by ps and top (comm, at most 15 bytes).
pub fn name_process(name: &str) {
    tine_net::sys::set_process_name(name);
}

/// The master blocks its control signals before forking (it reads them from a
/// signalfd), so the worker inherits them blocked and reads the ones it acts on
/// from its own signalfd inside the event loop. The rest stay blocked: a stray
/// HUP or USR1 sent to a worker is ignored rather than fatal.
fn worker_signals() -> std::io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGUSR1] {
        mask.add(s);
    }
    #[cfg(feature = "test-hooks")]
    mask.add(Signal::SIGUSR2);
    let mut blocked = mask;
    for s in [Signal::SIGHUP, Signal::SIGUSR2, Signal::SIGWINCH] {
        blocked.add(s);
    }
    blocked.thread_block().map_err(std::io::Error::from)?;
    // The master's SIGCHLD handling is not the worker's business.
    let mut unblock = SigSet::empty();
    unblock.add(Signal::SIGCHLD);
    unblock.thread_unblock().map_err(std::io::Error::from)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(std::io::Error::from)
}

/// Becomes `uid`:`gid` for good: supplementary groups cleared, group then
/// user set (real, effective and saved), and no_new_privs, so nothing the
/// worker runs later can gain privileges back. Everything that needs root
/// (sockets, logs, the stats region, certificates) is already open.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), WorkerError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let fail = |what: &str, e: nix::Error| WorkerError::Privileges(format!("{what}: {e}"));
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
    setresgid(gid, gid, gid).map_err(|e| fail("setresgid", e))?;
    setresuid(uid, uid, uid).map_err(|e| fail("setresuid", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("no_new_privs", e))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(WorkerError::Privileges("root could be regained after the drop".into()));
    }
    Ok(())
}

/// What each HTTP/2 connection advertises and holds its client to.
fn http2_settings(c: &tine_config::Http2) -> tine_h2::Settings {
    tine_h2::Settings {
        max_concurrent_streams: c.max_concurrent_streams,
        initial_window_size: c.initial_window_size,
        max_header_list_size: c.max_header_list_size,
        max_pending_accept_reset_streams: c.max_pending_resets as usize,
        max_local_error_reset_streams: c.max_stream_errors as usize,
        ..tine_h2::Settings::default()
    }
}
