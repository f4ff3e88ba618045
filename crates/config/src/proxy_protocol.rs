//! `[proxy_protocol]`: the listeners behind an L4 load balancer, which says
//! who each client is in a PROXY protocol header (version 1 or 2).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Source networks a header is accepted from, and required of. A
    /// connection from anywhere else that sends one is refused. Empty: off.
    pub trusted: Vec<ipnet::IpNet>,
    /// How long the header may take to arrive.
    pub timeout: Duration,
    /// `listen` and `tls_listen` addresses whose connections carry no header.
    pub skip: Vec<SocketAddr>,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        ProxyProtocol { trusted: Vec::new(), timeout: Duration::from_secs(3), skip: Vec::new() }
    }
}

impl ProxyProtocol {
    /// Whether a header from this address is believed (an IPv4 address
    /// seen as IPv4-mapped IPv6 is matched as IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}
