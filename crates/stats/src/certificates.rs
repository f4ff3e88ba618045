//! The certificate table's entries (docs/stats-abi.md, "Certificate
//! table"): what each says of a served certificate, and its encoding, one
//! place for the master that writes it and every reader.

use crate::layout::{CERTIFICATE_ACME_OFFSET, CERTIFICATE_ERROR_OFFSET, CERTIFICATE_TEXT_END};
use std::sync::atomic::{AtomicU64, Ordering};

/// One served certificate: when it expires, where it comes from, and for
/// one obtained by ACME, how its renewal stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CertificateExpiry {
    /// Its first DNS name.
    pub name: String,
    pub file: String,
    /// notAfter, in seconds since the epoch.
    pub not_after_unix: i64,
    pub source: CertificateSource,
    /// ACME: when the next order is due, in seconds since the epoch (0: not
    /// known yet).
    pub next_attempt_unix: i64,
    /// ACME: orders failed in a row (0 since the last success).
    pub failures: u64,
    /// ACME: why the last order failed, while `failures` is not zero.
    pub last_error: String,
}

/// Where a served certificate comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateSource {
    /// The operator's files.
    #[default]
    File,
    /// Obtained by ACME.
    Acme,
    /// A self-signed stand-in until ACME obtains the certificate.
    AcmeTemporary,
}

impl CertificateSource {
    /// The code in the region's certificate table.
    pub fn code(self) -> u64 {
        match self {
            CertificateSource::File => 0,
            CertificateSource::Acme => 1,
            CertificateSource::AcmeTemporary => 2,
        }
    }

    pub fn from_code(code: u64) -> Self {
        match code {
            1 => CertificateSource::Acme,
            2 => CertificateSource::AcmeTemporary,
            _ => CertificateSource::File,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CertificateSource::File => "file",
            CertificateSource::Acme => "acme",
            CertificateSource::AcmeTemporary => "acme-temporary",
        }
    }
}

impl CertificateExpiry {
    /// Seconds until it expires at `now_unix_ms` (negative once expired).
    /// Saturates: the region is only as sound as its writer, and a damaged
    /// notAfter must not overflow.
    pub fn expires_in(&self, now_unix_ms: u64) -> i64 {
        self.not_after_unix.saturating_sub((now_unix_ms / 1000) as i64)
    }
}

/// Writes `c` into an entry (the caller holds the table's sequence lock).
pub(crate) fn encode(c: &CertificateExpiry, entry: &[AtomicU64]) {
    entry[0].store(c.not_after_unix as u64, Ordering::Relaxed);
    let text = format!("{} {}", c.name.replace(' ', "_"), c.file);
    crate::text::store(&entry[1..CERTIFICATE_TEXT_END / 8], &text);
    let acme = CERTIFICATE_ACME_OFFSET / 8;
    entry[acme].store(c.source.code(), Ordering::Relaxed);
    entry[acme + 1].store(c.next_attempt_unix as u64, Ordering::Relaxed);
    entry[acme + 2].store(c.failures, Ordering::Relaxed);
    crate::text::store(&entry[CERTIFICATE_ERROR_OFFSET / 8..], &c.last_error);
}

/// Decodes one entry of the certificate table (docs/stats-abi.md).
pub(crate) fn decode(entry: &[u64]) -> CertificateExpiry {
    let text = crate::text::load(&entry[1..entry.len().min(CERTIFICATE_TEXT_END / 8)]);
    let (name, file) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    let mut c = CertificateExpiry {
        name: name.to_string(),
        file: file.to_string(),
        not_after_unix: entry[0] as i64,
        ..CertificateExpiry::default()
    };
    let acme = CERTIFICATE_ACME_OFFSET / 8;
    if entry.len() > CERTIFICATE_ERROR_OFFSET / 8 {
        c.source = CertificateSource::from_code(entry[acme]);
        c.next_attempt_unix = entry[acme + 1] as i64;
        c.failures = entry[acme + 2];
        c.last_error = crate::text::load(&entry[CERTIFICATE_ERROR_OFFSET / 8..]);
    }
    c
}
