//! Certificates obtained and renewed by ACME, end to end against a real ACME
//! server (Debian's pebble, on loopback): http-01 and tls-alpn-01, a renewal
//! under load, pebble down during a renewal, nonce rejections, a restart
//! that reuses what is stored, and the challenge paths as an attacker sees
//! them.

mod common;

use common::pebble::{issuer, served_leaf, Pebble, PebbleOptions, PebblePlan};
use common::tls::tls_addr;
use common::{Server, PATIENCE};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// tine with one ACME certificate for `names`, from the pebble `plan`
/// describes, its storage in `storage`.
fn start_tine(
    plan: &PebblePlan,
    challenge: &str,
    names: &[&str],
    storage: &Path,
    renew_before: &str,
) -> Server {
    start_tine_with(plan, challenge, names, storage, renew_before, "")
}

/// As [`start_tine`], with more top-level configuration.
fn start_tine_with(
    plan: &PebblePlan,
    challenge: &str,
    names: &[&str],
    storage: &Path,
    renew_before: &str,
    top: &str,
) -> Server {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let toml = format!(
        "tls_listen = [\"127.0.0.1:0\"]\n{top}{}\n[[certificate]]\nacme = [{}]\n",
        plan.acme_toml(challenge, storage, renew_before),
        names.join(", ")
    );
    Server::builder().workers(2).config(&toml).start()
}

fn start_pebble(plan: PebblePlan, server: &Server, options: PebbleOptions) -> Pebble {
    plan.start(server.addr.port(), tls_addr(server).port(), options)
}

/// The certificate table's first entry.
fn certificate(server: &Server) -> Value {
    server.stats()["certificates"][0].clone()
}

/// Waits until the leaf served for `name` verifies against pebble's root
/// and differs from `not`; returns it.
fn wait_for_new_leaf(server: &Server, pebble: &Pebble, name: &str, not: Option<&[u8]>) -> Vec<u8> {
    let client = pebble.verifying_client();
    let addr = tls_addr(server);
    let start = Instant::now();
    loop {
        if let Ok(leaf) = served_leaf(&client, addr, name) {
            if Some(leaf.as_slice()) != not {
                return leaf;
            }
        }
        assert!(
            start.elapsed() < PATIENCE * 3,
            "no new certificate from pebble for {name}; tine: {:?}\npebble: {}",
            server.log(),
            pebble.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn http01_obtains_one_certificate_for_two_names() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let plan = PebblePlan::new();
    let server = start_tine(&plan, "http-01", &["a.test", "www.a.test"], &storage, "30d");
    // Until ACME has one, a temporary certificate serves, and the log says so.
    server.wait_for_log("no certificate from ACME yet; serving a temporary self-signed one");
    assert_eq!(certificate(&server)["source"], "acme-temporary");
    let pebble = start_pebble(plan, &server, PebbleOptions::default());
    let leaf = wait_for_new_leaf(&server, &pebble, "a.test", None);
    assert!(issuer(&leaf).contains("Pebble Intermediate CA"), "issuer {}", issuer(&leaf));
    let www = served_leaf(&pebble.verifying_client(), tls_addr(&server), "www.a.test").unwrap();
    assert_eq!(www, leaf, "one certificate covers both names");
    server.wait_for_log("ACME: the new certificate for a.test, www.a.test is in service");
    let entry =
        server.wait_until("the certificate table says acme", |s| s["certificates"][0]["source"] == "acme");
    let entry = &entry["certificates"][0];
    assert_eq!(entry["acme_failures"], 0);
    assert!(entry["next_attempt_unix"].as_i64().unwrap() > 0);
    // Keys and the account are the master's user's alone.
    assert_eq!(mode(&storage), 0o700);
    assert_eq!(mode(&storage.join("certificates/a.test/certificate.pem")), 0o600);
    let accounts: Vec<_> = std::fs::read_dir(storage.join("accounts")).unwrap().collect();
    assert_eq!(accounts.len(), 1);
    assert_eq!(mode(&accounts[0].as_ref().unwrap().path()), 0o600);
    let text = common::tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("certificate a.test (acme, "), "{text}");
    assert!(text.contains("ACME renewal in "), "{text}");
}

#[test]
fn tls_alpn01_obtains_a_certificate() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let server = start_tine(&plan, "tls-alpn-01", &["alpn.test"], &storage.path().join("acme"), "30d");
    let pebble = start_pebble(plan, &server, PebbleOptions::default());
    let leaf = wait_for_new_leaf(&server, &pebble, "alpn.test", None);
    assert!(issuer(&leaf).contains("Pebble Intermediate CA"), "issuer {}", issuer(&leaf));
    let log = pebble.log();
    assert!(log.contains("set VALID by completed challenge"), "{log}");
    assert!(!log.contains("validate w/ HTTP"), "validated by tls-alpn-01, not http-01: {log}");
    // With nothing published, a handshake offering only acme-tls/1 gets no
    // certificate (never the served one), and tine goes on serving.
    let acme_only = common::tls::Client::new(common::tls::ClientOptions {
        alpn: vec![b"acme-tls/1".to_vec()],
        ..Default::default()
    });
    assert!(acme_only.connect(tls_addr(&server), Some("alpn.test")).is_err());
    assert_eq!(served_leaf(&pebble.verifying_client(), tls_addr(&server), "alpn.test").unwrap(), leaf);
}

#[test]
fn a_renewal_replaces_the_certificate_under_load_without_a_failed_handshake() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    // 30 s certificates, renewed 15 s before they expire (half their life).
    let server = start_tine(&plan, "http-01", &["load.test"], &storage.path().join("acme"), "15s");
    let pebble = start_pebble(plan, &server, PebbleOptions { validity_secs: 30, ..Default::default() });
    let first = wait_for_new_leaf(&server, &pebble, "load.test", None);
    let client = pebble.verifying_client();
    let addr = tls_addr(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, handshakes, failures, client) =
                (stop.clone(), handshakes.clone(), failures.clone(), client.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match served_leaf(&client, addr, "load.test") {
                        Ok(_) => handshakes.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let renewed = wait_for_new_leaf(&server, &pebble, "load.test", Some(&first));
    // Keep the load on across the old workers' drain too.
    server.wait_for_log("ACME: the new certificate for load.test is in service");
    let before = handshakes.load(Ordering::Relaxed);
    while handshakes.load(Ordering::Relaxed) < before + 50 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_ne!(renewed, first);
    assert!(failures.lock().unwrap().is_empty(), "failed handshakes: {:?}", failures.lock().unwrap());
    eprintln!("handshakes across the renewal: {}, failed: 0", handshakes.load(Ordering::Relaxed));
}

#[test]
fn pebble_down_keeps_the_old_certificate_serving_until_a_retry_succeeds() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let server = start_tine(&plan, "http-01", &["down.test"], &storage.path().join("acme"), "20s");
    let mut pebble = start_pebble(plan, &server, PebbleOptions { validity_secs: 40, ..Default::default() });
    let first = wait_for_new_leaf(&server, &pebble, "down.test", None);
    pebble.take_down();
    // The renewal comes due (20 s in) and fails: loud in the statistics ...
    let failing = server.wait_until_for("a failed renewal", PATIENCE * 2, |s| {
        s["certificates"][0]["acme_failures"].as_u64().unwrap_or(0) > 0
    });
    let entry = &failing["certificates"][0];
    assert!(!entry["last_error"].as_str().unwrap().is_empty(), "{entry}");
    assert!(entry["next_attempt_unix"].as_i64().unwrap() > 0);
    // ... and the log, while the old certificate keeps serving.
    server.wait_for_log("ACME: order for down.test failed");
    assert!(server.log().iter().any(|l| l.contains("the current certificate keeps serving")));
    let client = pebble.verifying_client();
    assert_eq!(served_leaf(&client, tls_addr(&server), "down.test").unwrap(), first);
    pebble.bring_back();
    let renewed = wait_for_new_leaf(&server, &pebble, "down.test", Some(&first));
    assert_ne!(renewed, first);
    server.wait_until("the failures cleared", |s| s["certificates"][0]["acme_failures"] == 0);
}

#[test]
fn nonce_rejections_are_survived() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let server = start_tine(&plan, "http-01", &["nonce.test"], &storage.path().join("acme"), "30d");
    let pebble =
        start_pebble(plan, &server, PebbleOptions { nonce_reject_percent: 25, ..Default::default() });
    let leaf = wait_for_new_leaf(&server, &pebble, "nonce.test", None);
    assert!(issuer(&leaf).contains("Pebble Intermediate CA"));
}

#[test]
fn a_restart_reuses_the_stored_account_and_certificate() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let mut first = start_tine(&plan, "http-01", &["again.test"], &storage.path().join("acme"), "40s");
    let relay_port = plan.relay_port;
    let pebble = start_pebble(plan, &first, PebbleOptions { validity_secs: 60, ..Default::default() });
    let leaf = wait_for_new_leaf(&first, &pebble, "again.test", None);
    first.wait_for_log("ACME: registered account");
    first.signal(libc::SIGTERM);
    first.wait_exit();
    // Pebble validates on the first tine's ports: the second takes them.
    let toml = format!(
        "listen = [\"{}\"]\ntls_listen = [\"{}\"]\nroot = \"{{root}}\"\nworkers = 2\n{}\n[[certificate]]\nacme = [\"again.test\"]\n",
        first.addr,
        tls_addr(&first),
        pebble.plan.acme_toml("http-01", &storage.path().join("acme"), "40s"),
    );
    assert_eq!(pebble.plan.relay_port, relay_port);
    let second = Server::builder().config_only(&toml).start();
    second.wait_for_log("ACME: the stored certificate for again.test is renewed in");
    assert!(!second.log().iter().any(|l| l.contains("ordering a certificate")), "{:?}", second.log());
    assert!(!second.log().iter().any(|l| l.contains("temporary")), "{:?}", second.log());
    assert_eq!(served_leaf(&pebble.verifying_client(), tls_addr(&second), "again.test").unwrap(), leaf);
    // Its renewal (half the 60 s life in) uses the stored account.
    let renewed = wait_for_new_leaf(&second, &pebble, "again.test", Some(&leaf));
    assert_ne!(renewed, leaf);
    second.wait_for_log("ACME: using the account stored in");
    assert!(!second.log().iter().any(|l| l.contains("registered account")), "{:?}", second.log());
}

#[test]
fn challenge_paths_answer_only_what_is_published_and_a_failing_order_is_loud() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let admin = "admin_listen = \"127.0.0.1:0\"\n";
    let server =
        start_tine_with(&plan, "http-01", &["paths.test"], &storage.path().join("acme"), "30d", admin);
    std::fs::create_dir_all(server.root.join(".well-known/acme-challenge")).unwrap();
    std::fs::write(server.root.join(".well-known/acme-challenge/site-file"), "the site's own\n").unwrap();
    // A token nobody published, another name, hostile tokens: routed as any
    // request, never answered from the board.
    for (host, path, status) in [
        ("paths.test", "/.well-known/acme-challenge/unknown-token", 404),
        ("paths.test", "/.well-known/acme-challenge/site-file", 200),
        ("paths.test", "/.well-known/acme-challenge/", 403),
        ("paths.test", "/.well-known/acme-challenge/..%2F..%2Fsecret", 400),
        ("other.test", "/.well-known/acme-challenge/x", 404),
    ] {
        let raw = common::exchange_raw(
            server.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(common::status_of(&raw), status, "{host}{path}: {}", String::from_utf8_lossy(&raw));
    }
    // The ACME process, with no CA to reach, keeps retrying and says so:
    // in the log, the statistics and the dashboard.
    server.wait_until("a failed order", |s| s["certificates"][0]["acme_failures"].as_u64().unwrap_or(0) > 0);
    server.wait_for_log("ACME: order for paths.test failed (1 in a row)");
    let text = common::tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("certificate paths.test (acme-temporary, "), "{text}");
    assert!(text.contains("ACME renewal FAILING ("), "{text}");
    if common::browser_ready() {
        let out = std::process::Command::new("node")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard_text.mjs"))
            .arg(format!("http://{}/", common::admin_addr(&server)))
            .args(["#tls", "FAILING"])
            .arg(server.dir.path().join("dashboard-acme.png"))
            .output()
            .expect("node runs");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shown}{}", String::from_utf8_lossy(&out.stderr));
        assert!(shown.contains("ACME: paths.test"), "{shown}");
        assert!(shown.contains("acme-temporary"), "{shown}");
    }
    drop(plan);
}

#[test]
fn check_refuses_what_acme_cannot_do() {
    let acme = "[acme]\ndirectory = \"https://acme.test/dir\"\nstorage = \"{root}/acme\"\n";
    let tls = "tls_listen = [\"127.0.0.1:0\"]\n";
    for (toml, message) in [
        (format!("{tls}[[certificate]]\nacme = [\"a.test\"]\n"), "acme needs an [acme] table"),
        (
            format!("{tls}{acme}[[certificate]]\nacme = [\"*.a.test\"]\n"),
            "wildcard needs the dns-01 challenge",
        ),
        (format!("{tls}{acme}[[certificate]]\nacme = [\"127.0.0.1\"]\n"), "an IP address"),
        (format!("{tls}{acme}[[certificate]]\nacme = []\n"), "acme needs at least one name"),
        (format!("{tls}{acme}[[certificate]]\nacme = [\"a.test\", \"A.test\"]\n"), "listed twice"),
        (
            format!("{tls}{acme}[[certificate]]\nacme = [\"a.test\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
            "cert and key, or acme, not both",
        ),
        (format!("{acme}[[certificate]]\nacme = [\"a.test\"]\n"), "served on tls_listen addresses"),
        (
            format!("{tls}{acme}challenge = \"dns-01\"\n[[certificate]]\nacme = [\"a.test\"]\n"),
            "challenge must be \"http-01\" or \"tls-alpn-01\"",
        ),
        (
            format!(
                "{tls}[acme]\ndirectory = \"http://acme.test/dir\"\n[[certificate]]\nacme = [\"a.test\"]\n"
            ),
            "directory must be an https:// URL",
        ),
        (
            format!("{tls}{acme}renew_before = \"400d\"\n[[certificate]]\nacme = [\"a.test\"]\n"),
            "at most a year",
        ),
        (format!("{tls}{acme}email = \"ops\"\n[[certificate]]\nacme = [\"a.test\"]\n"), "is not an address"),
    ] {
        common::assert_check_refuses(&toml, message);
    }
}

/// The pids of the ACME processes the log says were started.
fn acme_pids(server: &Server) -> Vec<i32> {
    server
        .log()
        .iter()
        .filter_map(|l| l.split("ACME: process ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn an_upgrade_hands_the_acme_work_to_the_new_master() {
    let storage = tempfile::tempdir().unwrap();
    let plan = PebblePlan::new();
    let mut server = start_tine(&plan, "http-01", &["upgrade.test"], &storage.path().join("acme"), "30d");
    let pebble = start_pebble(plan, &server, PebbleOptions::default());
    let leaf = wait_for_new_leaf(&server, &pebble, "upgrade.test", None);
    let old_acme = acme_pids(&server);
    assert_eq!(old_acme.len(), 1, "{:?}", server.log());
    server.signal(libc::SIGUSR2);
    assert!(server.wait_exit().success(), "the old master leaves once the new one serves");
    let new_master = server.pid_in_pid_file().expect("pid file");
    // The new master's ACME process takes the storage over once the old
    // one has stopped, reads the stored certificate, and orders nothing.
    common::wait_for("the new ACME process", || acme_pids(&server).len() == 2);
    let new_acme = acme_pids(&server)[1];
    assert_eq!(common::parent_pid(new_acme), new_master);
    common::wait_for("the old ACME process to stop", || !common::process_running(old_acme[0]));
    server.wait_for_log("ACME: the stored certificate for upgrade.test is renewed in");
    assert_eq!(served_leaf(&pebble.verifying_client(), tls_addr(&server), "upgrade.test").unwrap(), leaf);
    let issued =
        server.log().iter().filter(|l| l.contains("ACME: certificate for upgrade.test stored")).count();
    assert_eq!(issued, 1, "one certificate, obtained before the upgrade: {:?}", server.log());
}
