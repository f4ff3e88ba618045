//! The `[acme]` table: where certificates named by `[[certificate]] acme =
//! [...]` are obtained and renewed (RFC 8555), and how. tine-acme does the
//! work; this is only what the operator asked for, checked.

use std::path::PathBuf;
use std::time::Duration;

/// Let's Encrypt's production directory: the default `directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the ACME server checks that tine answers for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `http://NAME/.well-known/acme-challenge/TOKEN` on a plain listener
    /// (port 80 for a public CA).
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on a TLS listener (port 443
    /// for a public CA), answered with a challenge certificate (RFC 8737).
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "http-01" => Ok(AcmeChallenge::Http01),
            "tls-alpn-01" => Ok(AcmeChallenge::TlsAlpn01),
            other => Err(format!("challenge must be \"http-01\" or \"tls-alpn-01\", not {other:?}")),
        }
    }

    /// The name RFC 8555 and RFC 8737 give the challenge type.
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// The `[acme]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// The ACME server's directory URL (https).
    pub directory: String,
    /// The account's contact; None registers without one.
    pub email: Option<String>,
    /// Account key, certificates and their keys; created mode 0700.
    pub storage: PathBuf,
    pub challenge: AcmeChallenge,
    /// A certificate is renewed this long before it expires (or halfway
    /// through its life, when that comes later).
    pub renew_before: Duration,
    /// PEM roots trusted for the ACME server's own HTTPS (a private CA);
    /// None: the system's trust store.
    pub ca: Option<PathBuf>,
    /// The first wait after a failed order; each further failure doubles it,
    /// up to [`MAX_RETRY`].
    pub retry: Duration,
}

/// The longest wait between two attempts at a failing order.
pub const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

impl Acme {
    pub fn new(storage: PathBuf) -> Self {
        Acme {
            directory: LETS_ENCRYPT.to_string(),
            email: None,
            storage,
            challenge: AcmeChallenge::Http01,
            renew_before: Duration::from_secs(30 * 86_400),
            ca: None,
            retry: Duration::from_secs(300),
        }
    }
}

/// Checks an `https://` directory URL.
pub fn check_directory(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("directory must be an https:// URL, not {url:?}"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!("directory {url:?} is not a URL"));
    }
    Ok(url.to_string())
}

/// Checks a contact address (a `mailto:` contact for the account).
pub fn check_email(email: &str) -> Result<String, String> {
    let valid = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    }) && email.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if valid {
        Ok(email.to_string())
    } else {
        Err(format!("email {email:?} is not an address like ops@example.com"))
    }
}

/// Checks one name of `acme = [...]` and returns it in lower case: a DNS
/// name a public CA can validate with http-01 or tls-alpn-01 (no wildcard,
/// which needs dns-01; no IP address).
pub fn check_acme_name(name: &str) -> Result<String, String> {
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if lower.starts_with("*.") {
        return Err(format!(
            "{name:?}: a wildcard needs the dns-01 challenge, which tine does not answer; name each host"
        ));
    }
    if lower.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{name:?}: an IP address; acme takes DNS names"));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a DNS name"));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_acme_name("WWW.Example.com."), Ok("www.example.com".to_string()));
        assert!(check_acme_name("*.example.com").unwrap_err().contains("dns-01"));
        assert!(check_acme_name("127.0.0.1").is_err());
        assert!(check_acme_name("exa mple.com").is_err());
        assert!(check_acme_name("-a.example.com").is_err());
        assert!(check_acme_name("").is_err());
        assert!(check_acme_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn directories_and_emails() {
        assert!(check_directory("https://localhost:14000/dir").is_ok());
        assert!(check_directory("http://localhost:14000/dir").is_err());
        assert!(check_directory("https:///dir").is_err());
        assert!(check_email("ops@example.com").is_ok());
        assert!(check_email("ops").is_err());
        assert!(check_email("ops@example.com,evil@x.org").is_err());
    }
}
