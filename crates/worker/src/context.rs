//! What every connection of a worker shares: settings, routes and static
//! sites, upstreams, the Date cache, pools, the timer wheel, epoll and the
//! worker's stats slot.

use crate::buffer_pool::BufferPool;
pub use crate::counters::{Counters, Rejection};
use crate::file_cache::FileCache;
use crate::relay::PipePool;
use crate::timer_wheel::TimerWheel;
use crate::upstream::Upstreams;
use std::time::Instant;
use tine_config::{Route, Stream, Timeouts};
use tine_fs::Root;
use tine_http::date::DateCache;
use tine_http::target::TargetPath;
use tine_logging::AccessLog;
use tine_net::Epoll;

/// A document root with its file cache.
pub struct Site {
    pub root: Root,
    pub files: FileCache,
}

/// What every connection of a worker shares, in parts by concern, so that a
/// function can take the part it uses.
pub struct Ctx<'a> {
    pub clock: Clock,
    pub timers: Timers,
    pub http: Http,
    pub proxy: Proxy,
    pub epoll: Epoll,
    /// Read and write buffers lent to connections.
    pub pool: BufferPool,
    pub stats: Counters<'a>,
    pub access_log: Option<AccessLog>,
    /// A graceful stop is under way: finish what is in flight, take nothing new.
    pub draining: bool,
    /// Server configurations for TLS listeners; `None` when nothing is TLS.
    pub tls: Option<tine_tls::TlsContext>,
    /// Which listeners take a PROXY protocol header, and from whom.
    pub proxy_headers: ProxyHeaders,
    /// `[[client_limit]]`: the shared table and this worker's counters.
    pub client_limits: crate::client_limits::ClientLimits<'a>,
}

/// `[proxy_protocol]` as the worker applies it.
pub struct ProxyHeaders {
    pub settings: tine_config::ProxyProtocol,
    /// By listener index: its connections begin with a header.
    pub on_listener: Vec<bool>,
}

/// The time of the current turn of the loop (read once per turn).
pub struct Clock {
    /// Monotonic.
    pub now: Instant,
    pub unix_secs: u64,
    /// The Date header, formatted once a second.
    pub date: DateCache,
}

/// Deadlines: the configured timeouts and the wheel that files them.
pub struct Timers {
    pub timeouts: Timeouts,
    pub wheel: TimerWheel,
}

/// Serving requests: limits, routes, static sites with their file caches.
pub struct Http {
    pub limits: tine_http::Limits,
    pub discard_body_bytes: u64,
    /// Bytes per second a client must read a response at, on average, once
    /// the send timeout's grace is spent; 0: no minimum.
    pub min_send_rate: u64,
    pub routes: Vec<Route>,
    /// For each route, what it adds to the replies it gives.
    pub route_replies: Vec<crate::responses::RouteReplies>,
    /// For each route, the index of its site in `sites` (static routes only).
    pub route_sites: Vec<Option<usize>>,
    pub sites: Vec<Site>,
    /// Scratch space for the normalised path of the request being answered.
    pub path: TargetPath,
    /// The port of the first HTTPS listener, where `redirect_to_https`
    /// routes send plain-HTTP clients.
    pub https_port: Option<u16>,
    /// The health check's path on public listeners, if configured.
    pub health_path: Option<String>,
    /// Where http-01 challenges are published, when ACME validates by
    /// http-01: plain listeners answer `/.well-known/acme-challenge/TOKEN`.
    pub acme_http01: Option<tine_tls::ChallengeBoard>,
    /// Host names the admin listener answers besides IP literals and localhost.
    pub admin_hosts: Vec<String>,
    /// What each HTTP/2 connection advertises and holds its client to.
    pub http2: tine_h2::Settings,
    /// Plain listeners take HTTP/2 with prior knowledge.
    pub h2c: bool,
}

/// The reverse proxy and the TCP relay: upstream groups with their pools,
/// streams, and pipes for splice.
pub struct Proxy {
    pub upstreams: Upstreams,
    pub streams: Vec<Stream>,
    pub pipes: PipePool,
}
