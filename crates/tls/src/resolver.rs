//! Certificate selection for a ClientHello. rustls's own SNI resolver holds one
//! certificate per name, without wildcards or a default; tine's looks up the
//! exact name, then a one-label wildcard (`*.example.com` covers
//! `a.example.com`, not `example.com` nor `a.b.example.com`), then the
//! default, and among the certificates found takes the first whose key can
//! sign with a scheme the client offers: ECDSA before RSA, since it is the
//! cheaper handshake.
//!
//! A handshake that offers ALPN `acme-tls/1` and nothing else is an ACME
//! server validating a tls-alpn-01 challenge: it gets the challenge
//! certificate for its name when the ACME process has published one, and no
//! certificate otherwise (never a served certificate under that protocol).

use crate::acme_challenges::{challenge_certificate, ChallengeBoard};
use crate::certificate::{KeyAlgorithm, LoadedCertificate};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tine_config::UnknownName;

/// Challenge certificates a worker keeps made: a validation comes from a few
/// vantage points, each a handshake.
const CHALLENGE_CACHE: usize = 8;

#[derive(Debug)]
pub struct CertResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, Vec<usize>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Empty when unknown names are refused.
    default: Vec<usize>,
    /// tls-alpn-01: where challenges are published, and the certificates
    /// made for them (name, key authorization, certificate), newest last.
    challenges: Option<Challenges>,
}

#[derive(Debug)]
struct Challenges {
    board: ChallengeBoard,
    provider: Arc<CryptoProvider>,
    made: Mutex<Vec<(String, String, Arc<CertifiedKey>)>>,
}

impl Challenges {
    fn certificate(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = name?.strip_suffix('.').unwrap_or(name?).to_ascii_lowercase();
        let challenge = self.board.tls_alpn01(&name)?;
        let mut made = self.made.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, key)) =
            made.iter().find(|(n, ka, _)| *n == name && *ka == challenge.key_authorization)
        {
            return Some(key.clone());
        }
        let key = match challenge_certificate(&name, &challenge.key_authorization, &self.provider) {
            Ok(key) => Arc::new(key),
            Err(e) => {
                log::error!("cannot make the tls-alpn-01 certificate for {name}: {e}");
                return None;
            }
        };
        if made.len() == CHALLENGE_CACHE {
            made.remove(0);
        }
        made.push((name, challenge.key_authorization, key.clone()));
        Some(key)
    }
}

impl CertResolver {
    pub fn new(
        certificates: &[LoadedCertificate],
        unknown: UnknownName,
        board: Option<ChallengeBoard>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        // ECDSA first: lookups keep this order.
        let mut order: Vec<usize> = (0..certificates.len()).collect();
        order.sort_by_key(|&i| certificates[i].inspection.algorithm != KeyAlgorithm::Ecdsa);
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for &i in &order {
            for name in &certificates[i].inspection.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, name.as_str()),
                };
                let list = map.entry(key.to_string()).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        let default = match unknown {
            UnknownName::Refuse => Vec::new(),
            UnknownName::Default => {
                let marked: Vec<usize> = order.iter().copied().filter(|&i| certificates[i].default).collect();
                if !marked.is_empty() {
                    marked
                } else {
                    // The first certificate, and any other that serves exactly
                    // the same names (its ECDSA or RSA twin).
                    let first = certificates.first().map(|c| &c.inspection.names);
                    order
                        .iter()
                        .copied()
                        .filter(|&i| Some(&certificates[i].inspection.names) == first)
                        .collect()
                }
            }
        };
        CertResolver {
            keys: certificates.iter().map(|c| c.key.clone()).collect(),
            exact,
            wildcard,
            default,
            challenges: board.map(|board| Challenges { board, provider, made: Mutex::new(Vec::new()) }),
        }
    }

    /// The candidates for `name` (None: no SNI), best first.
    fn candidates(&self, name: Option<&str>) -> &[usize] {
        let Some(name) = name else { return &self.default };
        // A fully qualified name's trailing dot names the same host.
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(list) = self.exact.get(name) {
            return list;
        }
        if let Some(list) = name.split_once('.').and_then(|(_, rest)| self.wildcard.get(rest)) {
            return list;
        }
        &self.default
    }

    /// The certificate for a client named `name` that verifies `schemes`.
    /// When none of the name's certificates can sign with what the client
    /// offers, the best of them is still returned: rustls then ends the
    /// handshake with `handshake_failure` (no cipher suite or signature
    /// scheme in common), which is what the client's problem is. Only a name
    /// with no certificate at all (`unknown_name = "refuse"`) gets None.
    pub fn choose(
        &self,
        name: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let candidates = self.candidates(name);
        candidates
            .iter()
            .map(|&i| &self.keys[i])
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first().map(|&i| &self.keys[i]))
            .cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(mut offered) = hello.alpn() {
            if offered.next() == Some(crate::ALPN_ACME_TLS) && offered.next().is_none() {
                return self.challenges.as_ref()?.certificate(hello.server_name());
            }
        }
        self.choose(hello.server_name(), hello.signature_schemes())
    }
}
