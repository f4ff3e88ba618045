//! Upstreams over TLS end to end: a test CA made on the spot, a TLS server
//! written here (rustls) that says in its answer what the handshake was
//! (resumed or not, the client certificate it saw), and tine between a
//! plain client and it. Refused certificates (wrong CA, expired, wrong
//! name) must give the client a 502 and count the reason; a server that
//! requires a client certificate must get tine's; a second connection must
//! resume; a `[[stream]]` relays over TLS; a server that does not speak TLS
//! is a failed handshake, never a downgrade.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate authority for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, stem: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("tine test CA {stem}"));
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{stem}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A leaf for `names` signed by this CA; `expired`: valid only in 2020.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn load_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect()
}

/// What the TLS test server does with a connection once the handshake is
/// done.
#[derive(Clone, Copy)]
enum Behaviour {
    /// HTTP/1.1 keep-alive; the body says how the handshake went.
    Http,
    /// Echoes bytes until the client closes.
    Echo,
}

/// A TLS server on loopback, one thread per connection.
fn tls_server(cert: &(PathBuf, PathBuf), client_ca: Option<&Path>, behaviour: Behaviour) -> SocketAddr {
    let provider = tls::provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_chain(ca) {
                roots.add(c).unwrap();
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_file(&cert.1).unwrap();
    let config = Arc::new(builder.with_single_cert(load_chain(&cert.0), key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = ServerConnection::new(config) else { return };
                let mut tls = StreamOwned::new(conn, tcp);
                match behaviour {
                    Behaviour::Http => serve_http(&mut tls),
                    Behaviour::Echo => {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = tls.read(&mut buf) {
                            if n == 0 || tls.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn serve_http(tls: &mut StreamOwned<ServerConnection, TcpStream>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tls.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let conn = &tls.conn;
        let client = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| format!("{} bytes", c.len()))
            .unwrap_or_else(|| "none".into());
        let body = format!(
            "resumed={} client_cert={client} sni={}",
            conn.handshake_kind() == Some(HandshakeKind::Resumed),
            conn.server_name().unwrap_or("-"),
        );
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if tls.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A plain HTTP server, for an upstream that was meant to speak TLS.
fn plain_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(tcp.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut w = tcp;
                let _ = w.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            });
        }
    });
    addr
}

fn upstream_toml(addr: SocketAddr, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"backend.test\"\nservers = [\"{addr}\"]\ntls = true\nmax_fails = 0\n{extra}\n\
         [[route]]\npath = \"/\"\nupstream = \"backend.test\"\n"
    )
}

fn upstream_counter(server: &Server, name: &str) -> u64 {
    server.stats()["upstreams"][0][name].as_u64().unwrap_or_else(|| panic!("no upstream counter {name}"))
}

#[test]
fn a_verified_upstream_is_served_and_its_handshakes_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue(dir.path(), "backend", &["backend.test"], false);
    let addr = tls_server(&leaf, None, Behaviour::Http);
    let server = Server::builder()
        .workers(1)
        .config(&upstream_toml(addr, &format!("tls_ca = \"{}\"\n", ca.pem.display())))
        .start();
    let r = server.get("/");
    assert_eq!(r.status, 200, "log: {:?}", server.log());
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("sni=backend.test"), "{body}");
    assert!(body.contains("client_cert=none"), "{body}");
    // The connection was pooled: the next request reuses it, with no
    // second handshake (the session ticket that came after the first did
    // not make the pool think the server sent something unasked).
    assert_eq!(server.get("/").status, 200);
    server.wait_until("one handshake, one pool hit", |s| {
        s["upstreams"][0]["tls_handshakes"] == 1 && s["upstreams"][0]["pool_hits"] == 1
    });
    assert_eq!(upstream_counter(&server, "tls_verify_unknown_issuer"), 0);
}

#[test]
fn a_second_connection_resumes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue(dir.path(), "backend", &["backend.test"], false);
    let addr = tls_server(&leaf, None, Behaviour::Http);
    // No keep-alive: each request opens a connection of its own.
    let server = Server::builder()
        .workers(1)
        .config(&upstream_toml(addr, &format!("tls_ca = \"{}\"\nkeepalive = 0\n", ca.pem.display())))
        .start();
    let first = String::from_utf8(server.get("/").body).unwrap();
    assert!(first.contains("resumed=false"), "{first}");
    let second = String::from_utf8(server.get("/").body).unwrap();
    assert!(second.contains("resumed=true"), "the second connection was a full handshake: {second}");
    server.wait_until("two handshakes, one resumed", |s| {
        s["upstreams"][0]["tls_handshakes"] == 2 && s["upstreams"][0]["tls_resumed"] == 1
    });
}

/// Each refusal: a 502 for the client, the reason counted, a log line
/// that says why, and nothing served.
fn assert_refused(extra: impl FnOnce(&Path, &Ca) -> (SocketAddr, String), counter: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (addr, toml) = extra(dir.path(), &ca);
    let server = Server::builder().workers(1).config(&upstream_toml(addr, &toml)).start();
    let r = server.get("/");
    assert_eq!(r.status, 502, "a refused certificate must not be served");
    assert!(!String::from_utf8_lossy(&r.body).contains("resumed="), "the upstream's answer leaked");
    server.wait_until(counter, |s| s["upstreams"][0][counter] == 1);
    assert_eq!(upstream_counter(&server, "tls_handshakes"), 0);
    assert_eq!(upstream_counter(&server, "failures"), 1);
    server.wait_for_log(says);
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_counted() {
    assert_refused(
        |dir, ca| {
            let other = Ca::new(dir, "other-ca");
            let leaf = other.issue(dir, "backend", &["backend.test"], false);
            (tls_server(&leaf, None, Behaviour::Http), format!("tls_ca = \"{}\"\n", ca.pem.display()))
        },
        "tls_verify_unknown_issuer",
        "unknown issuer",
    );
}

#[test]
fn an_expired_certificate_is_refused_and_counted() {
    assert_refused(
        |dir, ca| {
            let leaf = ca.issue(dir, "backend", &["backend.test"], true);
            (tls_server(&leaf, None, Behaviour::Http), format!("tls_ca = \"{}\"\n", ca.pem.display()))
        },
        "tls_verify_expired",
        "expired",
    );
}

#[test]
fn a_certificate_for_another_name_is_refused_and_counted() {
    assert_refused(
        |dir, ca| {
            let leaf = ca.issue(dir, "backend", &["elsewhere.test"], false);
            (tls_server(&leaf, None, Behaviour::Http), format!("tls_ca = \"{}\"\n", ca.pem.display()))
        },
        "tls_verify_name",
        "not valid for the name",
    );
}

#[test]
fn a_server_that_speaks_plain_http_is_a_failed_handshake_not_a_downgrade() {
    assert_refused(
        |_, ca| (plain_server(), format!("tls_ca = \"{}\"\n", ca.pem.display())),
        "tls_failed",
        "TLS handshake failed",
    );
}

#[test]
fn tls_server_name_is_sent_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue(dir.path(), "backend", &["billing.internal"], false);
    let addr = tls_server(&leaf, None, Behaviour::Http);
    let toml = format!("tls_ca = \"{}\"\ntls_server_name = \"billing.internal\"\n", ca.pem.display());
    let server = Server::builder().workers(1).config(&upstream_toml(addr, &toml)).start();
    let r = server.get("/");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8(r.body).unwrap().contains("sni=billing.internal"));
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let client_ca = Ca::new(dir.path(), "client-ca");
    let leaf = ca.issue(dir.path(), "backend", &["backend.test"], false);
    let client = client_ca.issue(dir.path(), "tine-client", &["tine.client"], false);
    let addr = tls_server(&leaf, Some(&client_ca.pem), Behaviour::Http);
    let with_cert = format!(
        "tls_ca = \"{}\"\ntls_certificate = \"{}\"\ntls_key = \"{}\"\n",
        ca.pem.display(),
        client.0.display(),
        client.1.display()
    );
    let server = Server::builder().workers(1).config(&upstream_toml(addr, &with_cert)).start();
    let r = server.get("/");
    assert_eq!(r.status, 200, "log: {:?}", server.log());
    let body = String::from_utf8(r.body).unwrap();
    assert!(!body.contains("client_cert=none"), "{body}");
    drop(server);

    // Without one, the server refuses the connection: a 502, nothing served.
    let without = format!("tls_ca = \"{}\"\n", ca.pem.display());
    let server = Server::builder().workers(1).config(&upstream_toml(addr, &without)).start();
    let r = server.get("/");
    assert_eq!(r.status, 502);
}

#[test]
fn a_stream_relays_over_tls_to_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue(dir.path(), "backend", &["echo.test"], false);
    let addr = tls_server(&leaf, None, Behaviour::Echo);
    let server = Server::builder()
        .workers(1)
        .config(&format!(
            "[[upstream]]\nname = \"echo.test\"\nservers = [\"{addr}\"]\ntls = true\ntls_ca = \"{}\"\n\
             [[stream]]\nlisten = \"127.0.0.1:0\"\nupstream = \"echo.test\"\n",
            ca.pem.display()
        ))
        .start();
    let data = pseudo_random(1 << 20, 7);
    let s = connect(stream_addr(&server, "echo.test"));
    let got = duplex(s.try_clone().unwrap(), s, &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the relayed bytes differ");
    server.wait_until("the handshake counted", |s| s["upstreams"][0]["tls_handshakes"] == 1);
}

#[test]
fn tine_check_refuses_inconsistent_upstream_tls_keys() {
    let base = "[[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n";
    assert_check_refuses(&format!("{base}tls_ca = \"/x.pem\"\n"), "tls_ca applies only with tls = true");
    assert_check_refuses(&format!("{base}protocol = \"h2\"\n"), "HTTP/2 over TLS");
    assert_check_refuses(&format!("{base}tls = true\nprotocol = \"h2c\"\n"), "cleartext HTTP/2");
    assert_check_refuses(
        &format!("{base}tls = true\ntls_certificate = \"/c.pem\"\n"),
        "tls_certificate needs tls_key",
    );
    assert_check_refuses(&format!("{base}protocol = \"spdy\"\n"), "protocol must be");
    // A CA file that cannot be read refuses the configuration, naming it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, format!("{base}tls = true\ntls_ca = \"/nonexistent/ca.pem\"\n")).unwrap();
    let out = tine().arg("check").arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/ca.pem"), "{err}");
}
