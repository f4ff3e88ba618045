//! TLS input as an HTTPS listener receives it: whatever records arrive, cut
//! however, tine's server configuration (its certificate resolver choosing
//! by SNI and signature schemes, its ALPN, its ticketer) answers with
//! records or an alert and a clean error, never a panic; and once the
//! connection has failed it stays failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::ServerConnection;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tine_fuzz::piece_ends;

fn server_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut certificates = String::new();
            for (i, names) in [vec!["a.test".to_string(), "*.wild.test".into()], vec!["b.test".into()]]
                .into_iter()
                .enumerate()
            {
                let key = rcgen::KeyPair::generate().expect("a key");
                let cert =
                    rcgen::CertificateParams::new(names).expect("names").self_signed(&key).expect("a cert");
                let (cert_path, key_path) =
                    (dir.path().join(format!("{i}.crt")), dir.path().join(format!("{i}.key")));
                std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
                std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
                certificates.push_str(&format!(
                    "[[certificate]]\ncert = {:?}\nkey = {:?}\ndefault = {}\n",
                    cert_path,
                    key_path,
                    i == 1
                ));
            }
            let text = format!("tls_listen = [\"127.0.0.1:0\"]\n{certificates}");
            let config =
                tine_config::Config::parse(&text, Path::new("fuzz.toml")).expect("the configuration");
            let context = tine_tls::TlsContext::load(&config, None, None).expect("the TLS context");
            context.https.clone()
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let mut conn = ServerConnection::new(server_config()).expect("a server connection");
    let mut start = 0;
    let mut failed = false;
    for end in piece_ends(&[seed], input.len()) {
        let mut piece = Cursor::new(&input[start..end]);
        start = end;
        while (piece.position() as usize) < piece.get_ref().len() {
            match conn.read_tls(&mut piece) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break,
            }
            match conn.process_new_packets() {
                Ok(_) => assert!(!failed, "a failed connection recovered"),
                Err(_) => failed = true,
            }
            let mut sink = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut sink).is_err() {
                    break;
                }
            }
            let mut plaintext = [0u8; 4096];
            let _ = conn.reader().read(&mut plaintext);
            if failed {
                return;
            }
        }
    }
});
