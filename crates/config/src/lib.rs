//! tine's configuration: the model the rest of the server runs on, its defaults,
//! and loading from TOML with every error pointing at file:line.
//!
//! A configuration file is optional; command-line flags override what it says
//! (see [`Overrides`]). docs/configuration.md is the reference for operators.

#![forbid(unsafe_code)]

pub mod acme;
pub mod client_limit;
mod duration;
mod file;
pub mod http2;
pub mod proxy;
pub mod proxy_protocol;
pub mod static_site;
pub mod tcp;
pub mod tls;
pub use acme::{Acme, AcmeChallenge};
pub use client_limit::ClientLimit;
pub use http2::Http2;
pub use proxy_protocol::ProxyProtocol;
pub use static_site::{Compression, ErrorPage, Redirect, StaticSite, TryFile};
pub use tcp::TcpOptions;
pub use tls::{Certificate, CertificateSource, Tls, TlsVersion, UnknownName};

pub use duration::{parse_duration, parse_period};
pub use proxy::{
    Balance, Handler, HostHeader, ProxyVersion, Route, Stream, Upstream, UpstreamAddr, UpstreamProtocol,
    UpstreamServer, UpstreamTls,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The address tine listens on when neither file nor flags name one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// What connections accepted on a listener are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    Http,
    /// HTTP over TLS (`tls_listen`).
    Https,
    Admin,
    /// Relayed raw to the upstream group of this stream.
    Stream(usize),
}

/// Everything a master and its workers run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// HTTPS listen addresses; their certificates are `certificates`.
    pub tls_listen: Vec<SocketAddr>,
    /// `[[certificate]]`: what TLS listeners (and TLS streams) choose from.
    pub certificates: Vec<Certificate>,
    /// The `[tls]` table.
    pub tls: Tls,
    /// The `[acme]` table; None when no certificate is obtained by ACME.
    pub acme: Option<Acme>,
    /// The `[http2]` table.
    pub http2: Http2,
    /// The `[proxy_protocol]` table.
    pub proxy_protocol: ProxyProtocol,
    /// A path that public listeners answer as the health check (the admin
    /// listener answers `/health` in any case).
    pub health_path: Option<String>,
    /// Names the admin listener answers besides IP literals and `localhost`
    /// (lower case, without a trailing dot): a page whose name was rebound
    /// to the admin address cannot read it.
    pub admin_hosts: Vec<String>,
    /// The user workers run as (the master keeps root to bind, reload and
    /// upgrade); None: workers run as the master does.
    pub user: Option<String>,
    /// The workers' group; None: the user's primary group.
    pub group: Option<String>,
    /// Admin listener answering /metrics and /stats.json; `None` for none.
    pub admin_listen: Option<SocketAddr>,
    /// Directory served as the document root (absolute once loaded).
    pub root: PathBuf,
    pub workers: Workers,
    /// Where the master writes its pid; `None` picks a per-port default.
    pub pid_file: Option<PathBuf>,
    /// Where the stats region lives; `None` picks a per-port default in /dev/shm.
    pub stats_path: Option<PathBuf>,
    /// Accept-queue length asked of the kernel (capped by net.core.somaxconn).
    pub backlog: u32,
    /// Combined-format access log; `None` logs no requests.
    pub access_log: Option<PathBuf>,
    /// Error log file; `None` logs to standard error.
    pub error_log: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub cache: Cache,
    /// The `[compression]` table: on-the-fly compression's bounds.
    pub compression: Compression,
    /// Upstream groups, by index; routes and streams refer to them.
    pub upstreams: Vec<Upstream>,
    /// Where requests go. Empty means everything is served from `root`.
    pub routes: Vec<Route>,
    /// Raw TCP relays.
    pub streams: Vec<Stream>,
    /// `[[client_limit]]`s, by index; routes and `client_limits` refer to them.
    pub client_limits: Vec<ClientLimit>,
    /// The limits (indices into `client_limits`) every request and
    /// connection on a public listener is held to.
    pub global_client_limits: Vec<usize>,
    /// What the `[tcp]` table sets, for every listener.
    pub tcp: TcpOptions,
    /// `[tcp.listener."ADDRESS"]` overrides, by configured listen address.
    pub tcp_listeners: Vec<(SocketAddr, TcpOptions)>,
    /// The file this was loaded from, for reloads and messages.
    pub source: Option<PathBuf>,
}

/// How many worker processes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU this process may run on.
    Auto,
    Count(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From a connection's first byte (or its last response) to a complete head.
    pub header: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle: Duration,
    /// How long a response may make no progress because the client is not reading.
    pub send: Duration,
    /// How long a graceful stop waits for in-flight responses.
    pub drain: Duration,
    /// On a graceful stop or reload, how long an idle keep-alive connection may
    /// still send one more request (answered with `Connection: close`).
    pub keepalive_grace: Duration,
    /// A worker whose event loop has not turned for this long is killed and
    /// replaced.
    pub watchdog: Duration,
    /// After QUIT, how long to go on accepting and serving while health
    /// checks answer 503, so that load balancers take the server out before
    /// its listeners close. Zero: the graceful stop begins at once.
    pub drain_delay: Duration,
}

/// Each worker's cache of open files and small responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cache {
    /// Files kept open (with their metadata) per worker; 0 turns the cache off.
    pub open_files: usize,
    /// Files up to this size are kept in memory whole, so that a hit costs one
    /// write; larger ones are sent with sendfile from the open descriptor.
    pub small_file_bytes: u64,
    /// How long an entry is trusted before the file is looked at again: a file
    /// changed on disk is served fresh within this time.
    pub valid: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per worker; past it the worker stops accepting.
    pub connections_per_worker: usize,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub request_head_bytes: usize,
    /// Longest request target in bytes; longer gets 414.
    pub uri_bytes: usize,
    /// Largest request body read and thrown away on a request that takes none;
    /// larger bodies get the response and then the connection is closed.
    pub discard_body_bytes: u64,
    /// Bytes per second a client must read tine's own responses at, on
    /// average from the response's start, after the send timeout as a grace;
    /// 0 turns the check off.
    pub min_send_rate: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.parse().expect("default address parses")],
            tls_listen: Vec::new(),
            certificates: Vec::new(),
            acme: None,
            tls: Tls::default(),
            http2: Http2::default(),
            proxy_protocol: ProxyProtocol::default(),
            health_path: None,
            admin_hosts: Vec::new(),
            user: None,
            group: None,
            admin_listen: None,
            root: PathBuf::from("."),
            workers: Workers::Auto,
            pid_file: None,
            stats_path: None,
            backlog: 4096,
            access_log: None,
            error_log: None,
            timeouts: Timeouts {
                header: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                send: Duration::from_secs(60),
                drain: Duration::from_secs(30),
                keepalive_grace: Duration::from_secs(1),
                drain_delay: Duration::ZERO,
                watchdog: Duration::from_secs(10),
            },
            limits: Limits {
                connections_per_worker: 16_384,
                request_head_bytes: 16 * 1024,
                uri_bytes: 8 * 1024,
                discard_body_bytes: 1024 * 1024,
                min_send_rate: 0,
            },
            cache: Cache { open_files: 1024, small_file_bytes: 16 * 1024, valid: Duration::from_secs(1) },
            compression: Compression::default(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            streams: Vec::new(),
            client_limits: Vec::new(),
            global_client_limits: Vec::new(),
            tcp: TcpOptions::default(),
            tcp_listeners: Vec::new(),
            source: None,
        }
    }
}

/// A configuration error, located in its file when it came from one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}:{line}:{column}: {message}", file.display())]
    At { file: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Settings given on the command line; each one that is set wins over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub listen: Vec<String>,
    pub workers: Option<usize>,
    pub stats_path: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

/// How a configuration was put together, so that a reload can do it again:
/// re-read the file, then apply the same flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub flags: Overrides,
}

impl Source {
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        Config::resolve(self.file.as_deref(), &self.flags)
    }
}

/// The largest configuration file tine reads.
pub const CONFIG_FILE_LIMIT: u64 = 16 * 1024 * 1024;

impl Config {
    /// Every address to bind, in [`ListenerRole`] order: the HTTP listen
    /// addresses, the HTTPS ones, the admin listener, then the streams.
    pub fn all_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listener_roles().into_iter().map(|(addr, _)| addr).collect()
    }

    /// What each bound address is for, in binding order.
    pub fn listener_roles(&self) -> Vec<(SocketAddr, ListenerRole)> {
        let http = self.listen.iter().map(|&a| (a, ListenerRole::Http));
        let https = self.tls_listen.iter().map(|&a| (a, ListenerRole::Https));
        let admin = self.admin_listen.map(|a| (a, ListenerRole::Admin));
        let streams = self.streams.iter().enumerate().map(|(i, s)| (s.listen, ListenerRole::Stream(i)));
        http.chain(https).chain(admin).chain(streams).collect()
    }

    /// The socket options of the listener at `addr` (as configured) with
    /// `role`: defaults, then the `[tcp]` table, then the listener's own
    /// override. Listeners whose clients speak first (HTTP, admin) defer
    /// accepting for a second by default; a stream gets defer_accept only
    /// from its own override, since its protocol may have the server speak
    /// first, and TCP keepalive by default.
    pub fn listener_tcp(&self, addr: SocketAddr, role: ListenerRole) -> TcpOptions {
        let mut options = TcpOptions::production_defaults();
        match role {
            ListenerRole::Http | ListenerRole::Https | ListenerRole::Admin => {
                options.defer_accept = Some(Duration::from_secs(1));
                options = options.overlaid(&self.tcp);
            }
            ListenerRole::Stream(_) => {
                options = options
                    .overlaid(&TcpOptions::stream_keepalive())
                    .overlaid(&TcpOptions { defer_accept: None, ..self.tcp.clone() });
            }
        }
        match self.tcp_listeners.iter().find(|(a, _)| *a == addr) {
            Some((_, over)) => options.overlaid(over),
            None => options,
        }
    }

    /// Whether connections on this listener begin with a PROXY protocol
    /// header (required from trusted sources, refused from others): the
    /// `listen` and `tls_listen` addresses, once `[proxy_protocol]` trusts
    /// any network, unless the listener opts out.
    pub fn expects_proxy_header(&self, addr: SocketAddr, role: ListenerRole) -> bool {
        let pp = &self.proxy_protocol;
        matches!(role, ListenerRole::Http | ListenerRole::Https)
            && !pp.trusted.is_empty()
            && !pp.skip.contains(&addr)
    }

    /// True when something speaks TLS: an HTTPS listener, a TLS stream, or an
    /// upstream group reached over TLS.
    pub fn uses_tls(&self) -> bool {
        !self.tls_listen.is_empty()
            || self.streams.iter().any(|s| s.tls)
            || self.upstreams.iter().any(|u| u.tls.is_some())
    }

    /// The routes requests are matched against: the configured ones, or one
    /// route serving `root` for everything.
    pub fn effective_routes(&self) -> Vec<Route> {
        if self.routes.is_empty() {
            vec![Route {
                host: None,
                path: "/".into(),
                handler: Handler::Static(StaticSite::new(self.root.clone())),
                redirect_to_https: false,
                headers: Vec::new(),
                error_pages: Vec::new(),
                client_limits: Vec::new(),
            }]
        } else {
            self.routes.clone()
        }
    }

    /// Reads and validates a TOML file (a regular file of at most
    /// [`CONFIG_FILE_LIMIT`] bytes).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file_error = |message: String| ConfigError::File { file: path.to_owned(), message };
        let bytes = tine_fs::read_regular(path, CONFIG_FILE_LIMIT)
            .map_err(|e| file_error(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| file_error("is not UTF-8 text".into()))?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        file::parse(text, path)
    }

    /// Loads `file` if given (defaults otherwise), then applies the flags.
    pub fn resolve(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::load(path)?,
            None => Config::default(),
        };
        config.apply(flags)?;
        Ok(config)
    }

    /// Applies command-line flags over this configuration and checks the result.
    pub fn apply(&mut self, flags: &Overrides) -> Result<(), ConfigError> {
        if let Some(root) = &flags.root {
            self.root = root.clone();
        }
        if !flags.listen.is_empty() {
            self.listen = flags
                .listen
                .iter()
                .map(|a| parse_listen(a).map_err(ConfigError::Invalid))
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = flags.workers {
            self.workers = Workers::Count(check_workers(n as i64).map_err(ConfigError::Invalid)?);
        }
        if let Some(p) = &flags.stats_path {
            self.stats_path = Some(p.clone());
        }
        if let Some(p) = &flags.pid_file {
            self.pid_file = Some(p.clone());
        }
        self.root = check_root(&self.root).map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

/// Parses `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("listen address {text:?} is not IP:PORT (for example 127.0.0.1:8080 or [::1]:8080)")
    })
}

pub(crate) fn check_workers(n: i64) -> Result<usize, String> {
    if (1..=1024).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("workers must be \"auto\" or 1 to 1024, not {n}"))
    }
}

/// The root must be a readable directory; returns it made absolute.
pub(crate) fn check_root(root: &Path) -> Result<PathBuf, String> {
    let abs = std::fs::canonicalize(root).map_err(|e| format!("root {}: {e}", root.display()))?;
    if !abs.is_dir() {
        return Err(format!("root {} is not a directory", root.display()));
    }
    Ok(abs)
}
