//! The proxy part of the configuration: upstream groups, the routes that send
//! requests to them (or to a static root), and raw TCP streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where an upstream server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp(a) => write!(f, "{a}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl UpstreamAddr {
    /// `IP:PORT`, `[IPv6]:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("upstream {text:?}: a unix socket path must be absolute"));
            }
            return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(UpstreamAddr::Tcp)
            .map_err(|_| format!("upstream server {text:?} is not IP:PORT, [IPv6]:PORT or unix:/path"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamServer {
    pub addr: UpstreamAddr,
    /// Share of requests relative to the group's other servers.
    pub weight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin (smooth, as nginx does it).
    RoundRobin,
    /// Fewest open connections from this worker, weighted.
    LeastConn,
}

/// A named group of upstream servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    pub balance: Balance,
    /// Idle keep-alive connections kept per server per worker.
    pub keepalive: usize,
    /// How long an idle pooled connection is kept.
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long the response head may take once the request is sent (504).
    pub response_timeout: Duration,
    /// How long a response body (or a request body) may make no progress.
    pub io_timeout: Duration,
    /// Consecutive failures after which a server is taken out...
    pub max_fails: u32,
    /// ...for this long, before one request probes it again.
    pub fail_timeout: Duration,
    /// Request headers whose names contain `_` are forwarded (dropped by default).
    pub underscores_in_headers: bool,
    /// Socket options of the connections to the group's servers.
    pub tcp: crate::TcpOptions,
    /// A PROXY protocol header this group's servers get first on every
    /// connection, naming the client.
    pub send_proxy: Option<ProxyVersion>,
    /// TLS to the group's servers (`tls = true`); None: cleartext.
    pub tls: Option<UpstreamTls>,
    /// The protocol spoken to the servers.
    pub protocol: UpstreamProtocol,
}

/// How tine speaks TLS to an upstream group's servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Sent as SNI and verified against the server's certificate.
    pub server_name: String,
    /// PEM certificates trusted to issue the servers' certificates; None:
    /// the system's trust store.
    pub ca: Option<PathBuf>,
    /// Verify the server's certificate (false only for testing).
    pub verify: bool,
    /// A client certificate chain and its key, for servers that require
    /// mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// The protocol spoken to an upstream group's servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a connection per exchange under way, kept alive in the pool.
    Http1,
    /// HTTP/2 over TLS (ALPN h2): exchanges multiplexed as streams.
    H2,
    /// HTTP/2 in cleartext with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_http2(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }
}

/// The PROXY protocol version sent to upstream servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// The Host header a proxied request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's Host.
    Keep,
    /// The upstream server's address.
    Upstream,
    Fixed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    Static(crate::StaticSite),
    Proxy { upstream: usize, host: HostHeader },
    Redirect(crate::Redirect),
}

/// Requests whose Host matches (any Host when `None`) and whose path starts with
/// `path` go to `handler`; the longest matching prefix wins, and a route naming
/// the host beats one that does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: Option<String>,
    pub path: String,
    pub handler: Handler,
    /// Requests that arrive over plain HTTP get a 308 to the same URL over
    /// https instead of being served.
    pub redirect_to_https: bool,
    /// Header lines added to every response of the route (replacing a
    /// proxied response's header of the same name).
    pub headers: Vec<(String, String)>,
    /// Pages answering the errors tine itself gives on this route, by status.
    pub error_pages: Vec<(u16, crate::ErrorPage)>,
    /// The route's `client_limits` (indices into `Config::client_limits`),
    /// checked once the request is routed here.
    pub client_limits: Vec<usize>,
}

/// A TCP listener whose connections are relayed raw to an upstream group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub listen: SocketAddr,
    pub upstream: usize,
    /// A tunnel with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// The listener terminates TLS (with the `[[certificate]]`s) and relays
    /// the plaintext.
    pub tls: bool,
}

/// Picks the route for a request: the index of the route in `routes`.
/// `host` is compared without its port, case and the trailing dot of a fully
/// qualified name (`example.test.` is `example.test`); `path` is the request's
/// normalised path (tine_http::target), so every spelling of a path picks
/// the same route. Runs for every request, so it compares in place rather
/// than allocating.
pub fn route_for(routes: &[Route], host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
    let host = host.map(|h| {
        let name = match h.iter().rposition(|&b| b == b':') {
            // Keep IPv6 literals whole: `[::1]:80` -> `[::1]`.
            Some(i) if !h.ends_with(b"]") => &h[..i],
            _ => h,
        };
        name.strip_suffix(b".").unwrap_or(name)
    });
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| path.starts_with(r.path.as_bytes()))
        .filter(|(_, r)| {
            r.host.as_ref().is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want.as_bytes())))
        })
        .max_by_key(|(_, r)| (r.host.is_some(), r.path.len()))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str, n: usize) -> Route {
        Route {
            host: host.map(String::from),
            path: path.into(),
            handler: Handler::Proxy { upstream: n, host: HostHeader::Keep },
            redirect_to_https: false,
            headers: Vec::new(),
            error_pages: Vec::new(),
            client_limits: Vec::new(),
        }
    }

    #[test]
    fn longest_prefix_and_host_win() {
        let routes = [route(None, "/", 0), route(None, "/api/", 1), route(Some("a.test"), "/", 2)];
        let pick = |h: Option<&str>, p: &str| match route_for(&routes, h.map(str::as_bytes), p.as_bytes()) {
            Some(i) => match routes[i].handler {
                Handler::Proxy { upstream, .. } => Some(upstream),
                Handler::Static(_) | Handler::Redirect(_) => None,
            },
            None => None,
        };
        assert_eq!(pick(None, "/x"), Some(0));
        assert_eq!(pick(Some("b.test"), "/api/v1"), Some(1));
        assert_eq!(pick(Some("A.test:8080"), "/api/v1"), Some(2));
        assert_eq!(route_for(&routes[1..2], None, b"/other"), None);
    }

    #[test]
    fn a_fully_qualified_host_is_the_same_host() {
        let routes = [route(None, "/", 0), route(Some("a.test"), "/", 1)];
        for host in ["a.test.", "A.TEST.:443", "a.test.:80"] {
            assert_eq!(route_for(&routes, Some(host.as_bytes()), b"/x"), Some(1), "{host}");
        }
        assert_eq!(route_for(&routes, Some(b"a.test.."), b"/x"), Some(0));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            UpstreamAddr::parse("127.0.0.1:80"),
            Ok(UpstreamAddr::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert!(matches!(UpstreamAddr::parse("unix:/run/a.sock"), Ok(UpstreamAddr::Unix(_))));
        assert!(UpstreamAddr::parse("unix:relative").is_err());
        assert!(UpstreamAddr::parse("localhost:80").is_err());
    }
}
