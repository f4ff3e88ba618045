//! tine's TLS, apart from moving bytes (the worker's TLS transport does that):
//!
//! - [`certificate`]: reading a `[[certificate]]` (PEM chain and key), checking
//!   that they match, and what it covers and until when;
//! - [`resolver`]: choosing a certificate for a ClientHello (exact name, then a
//!   one-label wildcard, then the default; ECDSA or RSA by what the client
//!   can verify);
//! - [`ticket_keys`]: the session-ticket key ring the master shares with its
//!   workers, so that a ticket from one worker resumes on any other;
//! - [`upstream`]: the rustls client configurations for upstream groups
//!   reached over TLS, and how a refused server certificate is classified;
//! - [`TlsContext`]: the rustls configurations a worker uses, built once by
//!   the master (on start and reload) and inherited across fork.
//!
//! The crypto provider is aws-lc-rs: docs/architecture.md says why.

pub mod acme_challenges;
pub mod acme_storage;
pub mod certificate;
pub mod resolver;
mod shared_memory;
pub mod ticket_keys;
pub mod upstream;

pub use acme_challenges::{Challenge, ChallengeBoard, ChallengeType};
pub use certificate::{Inspection, LoadedCertificate, Origin};
pub use rustls;
pub use ticket_keys::{SharedTicketer, TicketKeyRing};
pub use upstream::{UpstreamClient, VerifyFailure};

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use tine_config::{AcmeChallenge, Config, TlsVersion};

/// HTTP/1.1's ALPN name.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";
/// HTTP/2's ALPN name (over TLS).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN name of ACME's tls-alpn-01 validation handshakes (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("session-ticket key ring: {0}")]
    TicketRing(std::io::Error),
}

impl TlsError {
    fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        TlsError::File { path: path.to_owned(), message: message.into() }
    }
}

/// What a worker needs to terminate TLS: one server configuration for HTTPS
/// listeners (ALPN `http/1.1`) and one for TLS streams (no ALPN: their
/// protocol is not tine's to name), sharing certificates and ticket keys.
#[derive(Clone)]
pub struct TlsContext {
    pub https: Arc<ServerConfig>,
    pub stream: Arc<ServerConfig>,
    /// What was loaded, for statistics (expiry) and `tine check`.
    pub certificates: Arc<Vec<LoadedCertificate>>,
    /// Per upstream group, by index: its client configuration when it is
    /// reached over TLS.
    pub upstreams: Arc<Vec<Option<UpstreamClient>>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").field("certificates", &self.certificates.len()).finish()
    }
}

/// The crypto provider every TLS configuration of tine uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What TLS listeners offer by ALPN, most preferred first: `h2` when
/// `[http2]` is enabled, and `http/1.1`. A client that offers neither
/// still gets HTTP/1.1 (rustls agrees on nothing rather than refusing).
fn http_alpn(config: &Config) -> Vec<Vec<u8>> {
    let mut offered = Vec::with_capacity(2);
    if config.http2.enabled {
        offered.push(ALPN_H2.to_vec());
    }
    offered.push(ALPN_HTTP_1_1.to_vec());
    offered
}

/// Certificates expiring within this are warned about.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

impl TlsContext {
    /// What an operator should hear about the loaded certificates: one that
    /// expires within 30 days (or has), a key file others can read, and a
    /// host routed to over TLS that no certificate covers (its clients get
    /// the default certificate, or are refused).
    pub fn warnings(&self, config: &Config, now_unix: i64) -> Vec<String> {
        let mut warnings: Vec<String> =
            self.certificates.iter().flat_map(|c| c.warnings(now_unix, EXPIRY_WARNING_SECS)).collect();
        for u in &config.upstreams {
            if u.tls.as_ref().is_some_and(|t| !t.verify) {
                warnings.push(format!(
                    "upstream {}: tls_verify = false accepts any certificate, so anyone on the path can pose as its servers; for testing only",
                    u.name
                ));
            }
        }
        if !config.tls_listen.is_empty() {
            let mut hosts: Vec<&str> = config.routes.iter().filter_map(|r| r.host.as_deref()).collect();
            hosts.dedup();
            for host in hosts {
                if !self.certificates.iter().any(|c| c.covers(host)) {
                    warnings.push(format!(
                        "no [[certificate]] covers the routed host {host}: TLS clients asking for it get {}",
                        match config.tls.unknown_name {
                            tine_config::UnknownName::Default => "the default certificate",
                            tine_config::UnknownName::Refuse => "a refused handshake",
                        }
                    ));
                }
            }
        }
        warnings
    }

    /// Reads every `[[certificate]]` of `config` and builds the server
    /// configurations. `tickets` is the master's key ring (None turns
    /// resumption off); `challenges` the ACME challenge board, answered by
    /// tls-alpn-01 handshakes when that is the `[acme]` challenge. Any file
    /// that cannot be used fails the whole load, naming the file, so that a
    /// reload changes nothing.
    pub fn load(
        config: &Config,
        tickets: Option<&TicketKeyRing>,
        challenges: Option<&ChallengeBoard>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let certificates = config
            .certificates
            .iter()
            .map(|c| LoadedCertificate::load(c, config.acme.as_ref(), &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let tls_alpn01 = config.acme.as_ref().is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01);
        let challenges = challenges.filter(|_| tls_alpn01).cloned();
        let answers_challenges = challenges.is_some();
        let resolver = Arc::new(resolver::CertResolver::new(
            &certificates,
            config.tls.unknown_name,
            challenges,
            provider.clone(),
        ));
        let ticketer: Option<Arc<dyn ProducesTickets>> = match tickets {
            Some(ring) if config.tls.session_tickets => {
                Some(Arc::new(ring.ticketer(config.tls.ticket_key_rotation)))
            }
            _ => None,
        };
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
            let versions: &[&rustls::SupportedProtocolVersion] = match config.tls.min_version {
                TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                TlsVersion::Tls13 => &[&rustls::version::TLS13],
            };
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            server.alpn_protocols = alpn;
            // Resumption goes through tickets only: a per-process session
            // cache would resume a client only on the worker it met first.
            server.session_storage = Arc::new(NoServerSessionStorage {});
            match &ticketer {
                Some(t) => server.ticketer = t.clone(),
                None => server.send_tls13_tickets = 0,
            }
            Ok(Arc::new(server))
        };
        let mut https_alpn = http_alpn(config);
        if answers_challenges {
            https_alpn.push(ALPN_ACME_TLS.to_vec());
        }
        Ok(TlsContext {
            https: build(https_alpn)?,
            stream: build(Vec::new())?,
            certificates: Arc::new(certificates),
            upstreams: Arc::new(upstream::load_all(&config.upstreams, &provider)?),
        })
    }
}
