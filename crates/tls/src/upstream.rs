//! TLS to upstream servers: one rustls client configuration per
//! `[[upstream]]` with `tls = true`, built by the master with the server
//! configurations (so a reload that cannot read a CA or a client key
//! changes nothing) and inherited by every worker across fork.
//!
//! Each configuration keeps rustls's in-memory session store; a fork gives
//! every worker its own copy, so sessions are resumed per worker, which is
//! where connections to upstreams live. Verification is rustls's WebPKI
//! verifier against the group's `tls_ca` or the system's trust store; its
//! refusals are classified ([`VerifyFailure`]) for the statistics and the
//! log, never downgraded.

use crate::certificate::{read_chain, read_key};
use crate::{TlsError, ALPN_H2, ALPN_HTTP_1_1};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tine_config::{Upstream, UpstreamProtocol};

/// What a worker needs to open TLS connections to one group's servers.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    pub config: Arc<ClientConfig>,
    /// Sent as SNI and verified against the server's certificate.
    pub server_name: ServerName<'static>,
}

/// Why rustls refused a server's certificate, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyFailure {
    /// Expired, or not valid yet.
    Expired,
    /// Not issued by a trusted CA.
    UnknownIssuer,
    /// Valid, but not for the name tine asked for.
    NameMismatch,
    /// Any other refusal: a bad signature, a revoked or unsuitable
    /// certificate, a malformed one.
    Other,
}

impl VerifyFailure {
    /// The class of a handshake error, when it is a refused certificate.
    pub fn of(error: &rustls::Error) -> Option<VerifyFailure> {
        use CertificateError as C;
        let rustls::Error::InvalidCertificate(e) = error else { return None };
        Some(match e {
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                VerifyFailure::Expired
            }
            C::UnknownIssuer => VerifyFailure::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => VerifyFailure::NameMismatch,
            _ => VerifyFailure::Other,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            VerifyFailure::Expired => "the certificate has expired or is not valid yet",
            VerifyFailure::UnknownIssuer => "the certificate's issuer is not trusted (unknown issuer)",
            VerifyFailure::NameMismatch => "the certificate is not valid for the name asked for",
            VerifyFailure::Other => "the certificate was refused",
        }
    }
}

/// The client configurations of every group, by index (None for a group
/// in cleartext). The system's trust store is read once, if any group
/// needs it.
pub fn load_all(
    upstreams: &[Upstream],
    provider: &Arc<CryptoProvider>,
) -> Result<Vec<Option<UpstreamClient>>, TlsError> {
    let mut system: Option<Arc<RootCertStore>> = None;
    upstreams
        .iter()
        .map(|u| {
            let Some(tls) = &u.tls else { return Ok(None) };
            let roots = match &tls.ca {
                Some(path) => Arc::new(roots_from(path)?),
                None => match &system {
                    Some(roots) => roots.clone(),
                    None => system.insert(Arc::new(system_roots(&u.name)?)).clone(),
                },
            };
            client(u, roots, provider).map(Some)
        })
        .collect()
}

fn client(
    u: &Upstream,
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<UpstreamClient, TlsError> {
    let Some(tls) = &u.tls else { return Err(TlsError::Config(format!("upstream {}: no tls", u.name))) };
    let server_name = ServerName::try_from(tls.server_name.clone()).map_err(|_| {
        TlsError::Config(format!(
            "upstream {}: tls_server_name {:?} is neither a DNS name nor an IP address",
            u.name, tls.server_name
        ))
    })?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
    };
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_chain(cert)?, read_key(key)?)
            .map_err(|e| TlsError::file(cert, format!("unusable client certificate: {e}")))?,
    };
    config.alpn_protocols = match u.protocol {
        UpstreamProtocol::H2 => vec![ALPN_H2.to_vec()],
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![ALPN_HTTP_1_1.to_vec()],
    };
    Ok(UpstreamClient { config: Arc::new(config), server_name })
}

/// The certificates of a `tls_ca` file.
fn roots_from(path: &std::path::Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The system's trust store (the files OpenSSL would read); an error when
/// it holds nothing, since every verification would then fail.
fn system_roots(group: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Config(format!(
            "upstream {group}: the system's trust store holds no usable certificate ({}); set tls_ca",
            found.errors.first().map_or_else(|| "none found".to_string(), |e| e.to_string())
        )));
    }
    Ok(roots)
}

/// `tls_verify = false`: any certificate is accepted (its signatures over
/// the handshake are still checked, so the session is at least with the
/// holder of the key it presents).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
