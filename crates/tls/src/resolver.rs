//! Certificate selection for a ClientHello. rustls's own SNI resolver holds one
//! certificate per name, without wildcards or a default; tine's looks up the
//! exact name, then a one-label wildcard (`*.example.com` covers
//! `a.example.com`, not `example.com` nor `a.b.example.com`), then the
//! default, and among the certificates found takes the first whose key can
//! sign with a scheme the client offers: ECDSA before RSA, since it is the
//! cheaper handshake.

use crate::certificate::{KeyAlgorithm, LoadedCertificate};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use tine_config::UnknownName;

#[derive(Debug)]
pub struct CertResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, Vec<usize>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Empty when unknown names are refused.
    default: Vec<usize>,
}

impl CertResolver {
    pub fn new(certificates: &[LoadedCertificate], unknown: UnknownName) -> Self {
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
        CertResolver { keys: certificates.iter().map(|c| c.key.clone()).collect(), exact, wildcard, default }
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
        self.choose(hello.server_name(), hello.signature_schemes())
    }
}
