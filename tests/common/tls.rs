//! A real TLS client for the end-to-end tests (rustls), certificates made on
//! the spot (rcgen), and a verifier that records the certificate a server
//! presented, so that a test can tell which one tine chose.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key written as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

#[derive(Clone, Copy)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

/// Makes a self-signed certificate for `names` and writes it to
/// `dir/stem.pem` and `dir/stem.key`.
pub fn make_cert(dir: &Path, stem: &str, names: &[&str], alg: Alg) -> CertFiles {
    let key = match alg {
        Alg::Ecdsa => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::Rsa => rsa_key(),
    };
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        der: cert.der().to_vec(),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

/// rcgen cannot generate RSA keys; openssl can.
fn rsa_key() -> rcgen::KeyPair {
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl genpkey");
    assert!(out.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
    rcgen::KeyPair::from_pem(std::str::from_utf8(&out.stdout).unwrap()).unwrap()
}

/// The `[[certificate]]` table for `files`.
pub fn certificate_toml(files: &CertFiles, default: bool) -> String {
    format!(
        "[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\ndefault = {default}\n",
        files.cert.display(),
        files.key.display()
    )
}

/// Accepts any certificate (whose signatures it does check) and records the
/// leaf each handshake presented; offers only `schemes` when set.
#[derive(Debug)]
pub struct Recorder {
    pub seen: Mutex<Vec<Vec<u8>>>,
    schemes: Option<Vec<SignatureScheme>>,
    provider: Arc<CryptoProvider>,
}

impl Recorder {
    pub fn new(schemes: Option<Vec<SignatureScheme>>) -> Arc<Self> {
        Arc::new(Recorder { seen: Mutex::new(Vec::new()), schemes, provider: provider() })
    }

    pub fn last(&self) -> Vec<u8> {
        self.seen.lock().unwrap().last().cloned().expect("a certificate was presented")
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.lock().unwrap().push(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.schemes {
            Some(s) => s.clone(),
            None => self.provider.signature_verification_algorithms.supported_schemes(),
        }
    }
}

/// How a test client is set up.
pub struct ClientOptions {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub alpn: Vec<Vec<u8>>,
    pub schemes: Option<Vec<SignatureScheme>>,
    pub resume: bool,
    /// Offer only these cipher suites (all of the provider's when None).
    pub suites: Option<Vec<rustls::CipherSuite>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![b"http/1.1".to_vec()],
            schemes: None,
            resume: false,
            suites: None,
        }
    }
}

pub struct Client {
    pub config: Arc<ClientConfig>,
    pub recorder: Arc<Recorder>,
}

impl Client {
    pub fn new(o: ClientOptions) -> Client {
        let recorder = Recorder::new(o.schemes);
        let mut offered = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suites) = &o.suites {
            offered.cipher_suites.retain(|s| suites.contains(&s.suite()));
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(offered))
            .with_protocol_versions(&o.versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        config.alpn_protocols = o.alpn;
        if !o.resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Client { config: Arc::new(config), recorder }
    }

    pub fn plain() -> Client {
        Client::new(ClientOptions::default())
    }

    /// Connects and completes the handshake; `sni` None sends no SNI.
    pub fn connect(&self, addr: SocketAddr, sni: Option<&str>) -> Result<TlsStream, std::io::Error> {
        self.connect_over(TcpStream::connect(addr)?, sni)
    }

    /// As `connect`, over a connection that may already carry bytes of its
    /// own (a PROXY protocol header).
    pub fn connect_over(&self, mut tcp: TcpStream, sni: Option<&str>) -> Result<TlsStream, std::io::Error> {
        let addr = tcp.peer_addr()?;
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_string()).unwrap(),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let mut conn = ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        tcp.set_read_timeout(Some(super::PATIENCE))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(StreamOwned::new(conn, tcp))
    }

    /// One GET on a new connection (Connection: close); the whole answer.
    pub fn get(&self, addr: SocketAddr, sni: Option<&str>, path: &str) -> Vec<u8> {
        let mut s = self.connect(addr, sni).expect("TLS handshake");
        request(&mut s, sni.unwrap_or("t"), path)
    }
}

/// Sends a GET with `Connection: close` and reads until the server closes.
pub fn request(s: &mut TlsStream, host: &str, path: &str) -> Vec<u8> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    out
}

/// The body of a raw response (after the blank line).
pub fn body(raw: &[u8]) -> &[u8] {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    &raw[at + 4..]
}

/// The address of the HTTPS listener, from the master's log.
pub fn tls_addr(server: &super::Server) -> SocketAddr {
    let needle = "listening for TLS on ";
    server.wait_for_log(needle);
    let line = server.log().into_iter().find(|l| l.contains(needle)).unwrap();
    line.split(needle).nth(1).unwrap().trim().parse().unwrap()
}
