//! A real ACME server for the tests: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS server (every name resolves to
//! 127.0.0.1), all on loopback, each test its own pair. Pebble validates
//! http-01 and tls-alpn-01 on ports its configuration names: tine's
//! listeners, started first on port 0, so pebble comes up once their ports
//! are known. Pebble's own ports are free ports found by binding port 0.
//!
//! Pebble is reached through a relay the test can take down ("pebble is
//! down": connections refused) and bring back on the same port, with
//! pebble's state (the account, its authorizations) intact.

use super::tls::{provider, Client};
use super::PATIENCE;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How pebble is set up for a test.
pub struct PebbleOptions {
    /// Lifetime of the certificates it issues, in seconds.
    pub validity_secs: u64,
    /// Percentage of good nonces it rejects as bad (its default is 5).
    pub nonce_reject_percent: u32,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions { validity_secs: 7 * 86_400, nonce_reject_percent: 5 }
    }
}

/// Ports and files pebble needs before it starts: chosen before tine starts,
/// so that tine's configuration can name the directory.
pub struct PebblePlan {
    pub dir: tempfile::TempDir,
    /// The relay's port: what tine's `directory` names.
    pub relay_port: u16,
    /// The PEM root of pebble's own HTTPS certificate: tine's `ca`.
    pub https_ca: PathBuf,
}

pub struct Pebble {
    pub plan: PebblePlan,
    pebble: Child,
    dns: Child,
    pebble_addr: SocketAddr,
    management: SocketAddr,
    relay: Option<Relay>,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PebblePlan {
    pub fn new() -> PebblePlan {
        let dir = tempfile::tempdir().unwrap();
        let https_ca = write_https_certificate(dir.path());
        PebblePlan { dir, relay_port: free_port(), https_ca }
    }

    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.relay_port)
    }

    /// The `[acme]` table for tine: this pebble, `challenge`, storage in
    /// `storage`, retries after a second.
    pub fn acme_toml(&self, challenge: &str, storage: &Path, renew_before: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\nstorage = \"{}\"\nchallenge = \"{challenge}\"\n\
             renew_before = \"{renew_before}\"\nca = \"{}\"\nretry = \"1s\"\n",
            self.directory(),
            storage.display(),
            self.https_ca.display()
        )
    }

    /// Starts pebble and its DNS server, validating on `http_port` and
    /// `tls_port` (tine's listeners), and the relay in front of pebble.
    pub fn start(self, http_port: u16, tls_port: u16, options: PebbleOptions) -> Pebble {
        let dir = self.dir.path();
        let dns_port = free_port();
        let dns_management = free_port();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(log_file(dir, "challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; .ci/run installs it)");
        wait_for_port(dns_management, "pebble-challtestsrv");
        let pebble_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = serde_json::json!({ "pebble": {
            "listenAddress": pebble_addr.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": options.validity_secs,
        }});
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}"), "-strict"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", options.nonce_reject_percent.to_string())
            .stdout(log_file(dir, "pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble; .ci/run installs it)");
        wait_for_port(pebble_addr.port(), "pebble");
        wait_for_port(management.port(), "pebble's management interface");
        let relay = Relay::start(self.relay_port, pebble_addr);
        Pebble { plan: self, pebble, dns, pebble_addr, management, relay: Some(relay) }
    }
}

impl Pebble {
    /// Pebble's issuing root (made anew at each pebble start).
    pub fn root(&self) -> Vec<u8> {
        let raw = Client::plain().get(self.management, Some("localhost"), "/roots/0");
        super::tls::body(&raw).to_vec()
    }

    /// A client that trusts pebble's root only.
    pub fn verifying_client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.root()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Pebble is down: connections to it are refused.
    pub fn take_down(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
    }

    /// Pebble is back, on the same port, with the same state.
    pub fn bring_back(&mut self) {
        if self.relay.is_none() {
            self.relay = Some(Relay::start(self.plan.relay_port, self.pebble_addr));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.plan.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.dns.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.wait();
        self.take_down();
    }
}

/// Handshakes with `addr` as `name`, verifying the chain against `client`'s
/// roots; the leaf certificate served, or the error.
pub fn served_leaf(client: &Arc<ClientConfig>, addr: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = ClientConnection::new(client.clone(), server_name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(leaf.to_vec())
}

/// The issuer of a DER certificate, as text.
pub fn issuer(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.issuer().to_string()
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(name)).unwrap())
}

/// Pebble's HTTPS certificate, for localhost and 127.0.0.1, issued by a CA
/// of the test's own; returns the CA's PEM path.
fn write_https_certificate(dir: &Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pebble test HTTPS CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("pebble.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();
    let ca_path = dir.join("https-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

/// A TCP relay on a fixed loopback port: accepts and pipes each connection
/// to `to`, until stopped (the port then refuses connections).
struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
    /// Every connection relayed, cut when the relay stops (a client's
    /// kept-alive connection must not outlive "pebble is down").
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(port: u16, to: SocketAddr) -> Relay {
        let start = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(start.elapsed() < PATIENCE, "cannot bind the relay on {port}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let opened = open.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(to) else { continue };
                        client.set_nonblocking(false).unwrap();
                        opened.lock().unwrap().push(client.try_clone().unwrap());
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { stop, thread: Some(thread), port, open }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for connection in self.open.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        // The listener is closed with the thread: the port refuses now.
        assert!(TcpStream::connect(("127.0.0.1", self.port)).is_err(), "the relay still accepts");
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
