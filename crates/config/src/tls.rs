//! TLS settings: the `tls_listen` addresses' certificates (`[[certificate]]`)
//! and the `[tls]` table. The files are only named here; tine-tls reads and
//! checks them, so that a reload can refuse what it cannot load.

use std::path::PathBuf;
use std::time::Duration;

/// One `[[certificate]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub source: CertificateSource,
    /// Served to clients that send no SNI or a name no certificate covers.
    pub default: bool,
}

/// Where a certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// `cert` and `key`: a PEM chain (leaf first) and its private key, which
    /// the operator provides and rotates.
    Files { cert: PathBuf, key: PathBuf },
    /// `acme = [...]`: obtained and renewed from the `[acme]` directory for
    /// these names (lower case; the first names its storage).
    Acme { names: Vec<String> },
}

impl Certificate {
    /// The ACME names, when the certificate is obtained by ACME.
    pub fn acme_names(&self) -> Option<&[String]> {
        match &self.source {
            CertificateSource::Acme { names } => Some(names),
            CertificateSource::Files { .. } => None,
        }
    }
}

/// The lowest protocol version a TLS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// What a client gets when its SNI names no certificate (or it sends none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownName {
    /// The default certificate(s): those marked `default`, else the first.
    Default,
    /// The handshake fails (counted as "no certificate").
    Refuse,
}

/// The `[tls]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub min_version: TlsVersion,
    pub unknown_name: UnknownName,
    /// Stateless session tickets, with keys shared by every worker.
    pub session_tickets: bool,
    /// How long a ticket key encrypts new tickets; it then decrypts for one
    /// more period, and is erased after that.
    pub ticket_key_rotation: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            min_version: TlsVersion::Tls12,
            unknown_name: UnknownName::Default,
            session_tickets: true,
            ticket_key_rotation: Duration::from_secs(12 * 3600),
        }
    }
}

impl TlsVersion {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            other => Err(format!("min_version must be \"1.2\" or \"1.3\", not {other:?}")),
        }
    }
}

impl UnknownName {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "default" => Ok(UnknownName::Default),
            "refuse" => Ok(UnknownName::Refuse),
            other => Err(format!("unknown_name must be \"default\" or \"refuse\", not {other:?}")),
        }
    }
}
