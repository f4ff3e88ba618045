//! One `[[certificate]]`: its PEM chain and private key read, checked against
//! each other, and inspected for what it covers and until when. A
//! certificate obtained by ACME is read from the ACME storage; until ACME has
//! stored one, a temporary self-signed certificate for its names stands in.

use crate::acme_storage::StoredCertificate;
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
    pub origin: Origin,
}

/// Where a served certificate came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The operator's `cert` and `key` files.
    Files,
    /// Obtained by ACME for these names, read from the storage.
    Acme { names: Vec<String> },
    /// A self-signed stand-in for these ACME names, until ACME stores a
    /// certificate; `why` says what was wrong with the stored one, if any.
    Temporary { names: Vec<String>, why: Option<String> },
}

impl Origin {
    /// As the statistics and `tine stats` name it.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Files => "file",
            Origin::Acme { .. } => "acme",
            Origin::Temporary { .. } => "acme-temporary",
        }
    }

    /// The names ACME obtains the certificate for, when it does.
    pub fn acme_names(&self) -> Option<&[String]> {
        match self {
            Origin::Files => None,
            Origin::Acme { names } | Origin::Temporary { names, .. } => Some(names),
        }
    }
}

/// How long a temporary self-signed certificate is valid.
const TEMPORARY_VALIDITY_DAYS: i64 = 7;

/// What the leaf certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// DNS names of the subject alternative name extension, lowercased;
    /// wildcards as written (`*.example.com`).
    pub names: Vec<String>,
    /// notBefore and notAfter, in seconds since the Unix epoch.
    pub not_before_unix: i64,
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
    /// An ACME certificate (`acme` being the `[acme]` table) that is not
    /// stored yet, or not usable, gets a temporary stand-in rather than an
    /// error: ACME will replace it.
    pub fn load(
        c: &tine_config::Certificate,
        acme: Option<&tine_config::Acme>,
        provider: &CryptoProvider,
    ) -> Result<Self, TlsError> {
        match &c.source {
            tine_config::CertificateSource::Files { cert, key } => {
                Self::from_files(cert, key, c.default, Origin::Files, provider)
            }
            tine_config::CertificateSource::Acme { names } => {
                let acme =
                    acme.ok_or_else(|| TlsError::Config("acme certificates need an [acme] table".into()))?;
                let stored = StoredCertificate::for_names(&acme.storage, names);
                let why = if stored.exists() {
                    let origin = Origin::Acme { names: names.clone() };
                    match Self::from_files(&stored.path, &stored.path, c.default, origin, provider) {
                        Ok(stored) => return Ok(stored),
                        Err(e) => Some(e.to_string()),
                    }
                } else {
                    None
                };
                Self::temporary(names, why, &stored, c.default, provider)
            }
        }
    }

    fn from_files(
        cert: &Path,
        key_path: &Path,
        default: bool,
        origin: Origin,
        provider: &CryptoProvider,
    ) -> Result<Self, TlsError> {
        let chain = read_chain(cert)?;
        let key_der = read_key(key_path)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsError::file(key_path, format!("unusable private key: {e}")))?;
        let key = CertifiedKey::new(chain, signing_key);
        key.keys_match().map_err(|e| {
            TlsError::file(cert, format!("does not match its key {}: {e}", key_path.display()))
        })?;
        Self::serving(key, cert, key_path, default, origin)
    }

    /// A self-signed certificate for `names`, made now with a key of its own.
    fn temporary(
        names: &[String],
        why: Option<String>,
        stored: &StoredCertificate,
        default: bool,
        provider: &CryptoProvider,
    ) -> Result<Self, TlsError> {
        let failed =
            |e: String| TlsError::Config(format!("temporary certificate for {}: {e}", names.join(", ")));
        let key_pair = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| failed(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(TEMPORARY_VALIDITY_DAYS);
        params.distinguished_name.push(rcgen::DnType::CommonName, "tine temporary certificate");
        let cert = params.self_signed(&key_pair).map_err(|e| failed(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let signing_key =
            provider.key_provider.load_private_key(key_der).map_err(|e| failed(e.to_string()))?;
        let key = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        let origin = Origin::Temporary { names: names.to_vec(), why };
        Self::serving(key, &stored.path, &stored.path, default, origin)
    }

    fn serving(
        key: CertifiedKey,
        cert: &Path,
        key_path: &Path,
        default: bool,
        origin: Origin,
    ) -> Result<Self, TlsError> {
        let leaf = key.end_entity_cert().map_err(|e| TlsError::file(cert, e.to_string()))?;
        let mut inspection = inspect(leaf.as_ref()).map_err(|m| TlsError::file(cert, m))?;
        inspection.algorithm = match key.key.algorithm() {
            SignatureAlgorithm::ECDSA => KeyAlgorithm::Ecdsa,
            SignatureAlgorithm::RSA => KeyAlgorithm::Rsa,
            SignatureAlgorithm::ED25519 => KeyAlgorithm::Ed25519,
            _ => KeyAlgorithm::Other,
        };
        Ok(LoadedCertificate {
            cert_path: cert.to_owned(),
            key_path: key_path.to_owned(),
            default,
            key: Arc::new(key),
            inspection,
            origin,
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
        match &self.origin {
            Origin::Temporary { names, why } => {
                warnings.push(format!(
                    "{}: no certificate from ACME yet{}; serving a temporary self-signed one until ACME obtains it",
                    names.join(", "),
                    why.as_ref().map_or(String::new(), |w| format!(" (the stored one is unusable: {w})")),
                ));
                return warnings;
            }
            // Renewing in time is the ACME process's job, and it is loud
            // when it fails.
            Origin::Acme { .. } => return warnings,
            Origin::Files => {}
        }
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
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        algorithm: KeyAlgorithm::Other,
    })
}
