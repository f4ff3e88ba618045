//! When a certificate is due, and how long a failed order waits: pure
//! arithmetic on seconds since the epoch, so that it is tested without a
//! clock or a CA.

use std::path::Path;
use std::time::Duration;
use tine_config::acme::MAX_RETRY;

/// What the storage holds for one certificate, as far as renewal cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
}

impl Stored {
    /// Reads the leaf (the first certificate) of a stored file; None when
    /// there is none or it cannot be parsed (an order replaces it).
    pub fn read(path: &Path) -> Option<Stored> {
        let pem = std::fs::read(path).ok()?;
        let block = x509_parser::pem::Pem::iter_from_buffer(&pem)
            .map_while(Result::ok)
            .find(|block| block.label == "CERTIFICATE")?;
        let leaf = tine_tls::certificate::inspect(&block.contents).ok()?;
        Some(Stored { names: leaf.names, not_before: leaf.not_before_unix, not_after: leaf.not_after_unix })
    }
}

/// When the certificate for `names` should be ordered, given what is
/// stored: at once when nothing usable is, or it does not cover every name;
/// else `renew_before` its expiry, but not before half its life has passed
/// (so that a `renew_before` longer than the CA's lifetimes does not order
/// again and again).
pub fn due(stored: Option<&Stored>, names: &[String], renew_before: Duration, now: i64) -> i64 {
    let Some(s) = stored else { return now };
    if !names.iter().all(|n| s.names.contains(n)) {
        return now;
    }
    let by_margin = s.not_after.saturating_sub(renew_before.as_secs() as i64);
    let half_life = s.not_before + (s.not_after - s.not_before) / 2;
    by_margin.max(half_life)
}

/// The wait after `failures` (at least 1) orders in a row failed: `first`,
/// doubling with each further failure, up to MAX_RETRY. A CA's failed
/// validation limit (Let's Encrypt: 5 per name per hour) is respected
/// from `first` = 5 minutes on: the fifth failure comes after 75 minutes.
pub fn retry_wait(failures: u64, first: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20) as u32;
    first.saturating_mul(1 << doublings).min(MAX_RETRY.max(first))
}

/// The wait after a CA said it limits our rate: at least an hour (its
/// windows are hours to a week), or the usual backoff if that is longer.
pub fn rate_limited_wait(failures: u64, first: Duration) -> Duration {
    retry_wait(failures, first).max(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certificate_is_due_by_its_margin_or_half_its_life() {
        let day = 86_400;
        let le = Stored { names: names(&["a.test", "b.test"]), not_before: 0, not_after: 90 * day };
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(due(Some(&le), &names(&["a.test"]), month, 5), 60 * day);
        let short = Stored { not_after: 60, ..le.clone() };
        assert_eq!(due(Some(&short), &names(&["a.test"]), Duration::from_secs(50), 5), 30);
        assert_eq!(due(Some(&le), &names(&["a.test", "c.test"]), month, 5), 5, "a new name orders at once");
        assert_eq!(due(None, &names(&["a.test"]), month, 5), 5);
    }

    #[test]
    fn the_leaf_is_read_after_the_key_in_a_stored_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names(&["a.test", "b.test"])).unwrap().self_signed(&key).unwrap();
        let stored = tine_tls::acme_storage::StoredCertificate::for_names(dir.path(), &names(&["a.test"]));
        stored.write(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        let read = Stored::read(&stored.path).expect("a leaf");
        assert_eq!(read.names, names(&["a.test", "b.test"]));
        assert!(read.not_after > read.not_before);
        std::fs::write(&stored.path, key.serialize_pem()).unwrap();
        assert_eq!(Stored::read(&stored.path), None, "a key alone is no certificate");
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        let first = Duration::from_secs(300);
        assert_eq!(retry_wait(1, first), first);
        assert_eq!(retry_wait(2, first), first * 2);
        assert_eq!(retry_wait(5, first), first * 16);
        assert_eq!(retry_wait(50, first), MAX_RETRY);
        assert_eq!(retry_wait(3, Duration::from_secs(1)), Duration::from_secs(4));
        assert_eq!(rate_limited_wait(1, Duration::from_secs(1)), Duration::from_secs(3600));
    }
}
