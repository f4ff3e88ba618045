//! One `[[certificate]]`: its PEM chain and private key read, checked against
//! each other, and inspected for what it covers and until when.

use crate::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate ready to serve.
#[derive(Clone, Debug)]
pub struct LoadedCertificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub default: bool,
    pub key: Arc<CertifiedKey>,
    pub inspection: Inspection,
}

/// What the leaf certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// DNS names of the subject alternative name extension, lowercased;
    /// wildcards as written (`*.example.com`).
    pub names: Vec<String>,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The subject's common name, for messages.
    pub subject: String,
    pub algorithm: KeyAlgorithm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ecdsa,
    Rsa,
    Ed25519,
    Other,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::Ecdsa => "ECDSA",
            KeyAlgorithm::Rsa => "RSA",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Other => "other",
        }
    }
}

impl LoadedCertificate {
    /// Reads and checks one `[[certificate]]`; every error names its file.
    pub fn load(c: &tine_config::Certificate, provider: &CryptoProvider) -> Result<Self, TlsError> {
        let chain = read_chain(&c.cert)?;
        let key_der = read_key(&c.key)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsError::file(&c.key, format!("unusable private key: {e}")))?;
        let key = CertifiedKey::new(chain, signing_key);
        key.keys_match().map_err(|e| {
            TlsError::file(&c.cert, format!("does not match its key {}: {e}", c.key.display()))
        })?;
        let leaf = key.end_entity_cert().map_err(|e| TlsError::file(&c.cert, e.to_string()))?;
        let mut inspection = inspect(leaf.as_ref()).map_err(|m| TlsError::file(&c.cert, m))?;
        inspection.algorithm = match key.key.algorithm() {
            SignatureAlgorithm::ECDSA => KeyAlgorithm::Ecdsa,
            SignatureAlgorithm::RSA => KeyAlgorithm::Rsa,
            SignatureAlgorithm::ED25519 => KeyAlgorithm::Ed25519,
            _ => KeyAlgorithm::Other,
        };
        Ok(LoadedCertificate {
            cert_path: c.cert.clone(),
            key_path: c.key.clone(),
            default: c.default,
            key: Arc::new(key),
            inspection,
        })
    }

    /// True when the certificate covers `host` (exactly, or by a one-label
    /// wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.inspection.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => {
                host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }
            None => *n == host,
        })
    }

    /// Seconds until the certificate expires (negative once it has).
    pub fn expires_in(&self, now_unix: i64) -> i64 {
        self.inspection.not_after_unix.saturating_sub(now_unix)
    }

    /// Warnings for `tine check`: expiry within `soon_secs`, hosts routed to
    /// it that it does not cover are the caller's; a key file others can read.
    pub fn warnings(&self, now_unix: i64, soon_secs: i64) -> Vec<String> {
        let mut warnings = Vec::new();
        let left = self.expires_in(now_unix);
        if left <= 0 {
            warnings.push(format!("{}: expired {} day(s) ago", self.cert_path.display(), -left / 86_400));
        } else if left < soon_secs {
            warnings.push(format!("{}: expires in {} day(s)", self.cert_path.display(), left / 86_400));
        }
        if let Ok(meta) = std::fs::metadata(&self.key_path) {
            if meta.permissions().mode() & 0o004 != 0 {
                warnings.push(format!(
                    "{}: the private key is readable by every user; chmod o-r it",
                    self.key_path.display()
                ));
            }
        }
        warnings
    }
}

/// The largest certificate chain or key file tine reads.
const PEM_FILE_LIMIT: u64 = 1024 * 1024;

/// Reads a certificate or key file: a regular file, opened without blocking
/// (a FIFO would stall the master's reload), at most PEM_FILE_LIMIT bytes.
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    tine_fs::read_regular(path, PEM_FILE_LIMIT).map_err(|e| TlsError::file(path, format!("cannot read: {e}")))
}

pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::file(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(chain)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::file(path, format!("no usable PEM private key (PKCS#8, SEC1 or PKCS#1): {e}")))
}

/// Reads names, expiry and subject from a DER certificate.
pub fn inspect(der: &[u8]) -> Result<Inspection, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(Inspection {
        names,
        not_after_unix: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        algorithm: KeyAlgorithm::Other,
    })
}
