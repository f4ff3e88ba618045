//! The statistics region as ops tools see it: an independent reader written
//! from the ABI document agrees with `tine stats --json`; Prometheus output
//! parses; the live view maps the region read-only; the admin listener serves
//! the same documents; host TCP counters move when the kernel refuses or drops
//! connections; stale and incompatible regions are explained.
//!
//! Needs python3 with prometheus_client (`.ci/run` installs it).

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// Whether python3 with prometheus_client is here. Under CI (which installs
/// them) their absence fails the test; elsewhere the test says it is skipped.
fn python_ready(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client, jsonschema"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "python3 with prometheus_client and jsonschema is required under CI"
    );
    if !ok {
        eprintln!("SKIPPED {test}: needs python3 with prometheus_client and jsonschema (bash .ci/run installs them)");
    }
    ok
}

fn python(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (bash .ci/run installs it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Checks a statistics document against docs/stats.schema.json with the
/// reference implementation of JSON Schema (python-jsonschema).
fn assert_matches_schema(document: &Value, what: &str) {
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft202012Validator.check_schema(schema)\n\
                 errors = list(jsonschema.Draft202012Validator(schema).iter_errors(json.load(sys.stdin)))\n\
                 print('\\n'.join(f'{list(e.absolute_path)}: {e.message}' for e in errors[:20]))\n";
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/stats.schema.json");
    let mut child = Command::new("python3")
        .args(["-c", check, schema])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(document.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(errors.trim().is_empty(), "{what} does not match docs/stats.schema.json:\n{errors}");
}

#[test]
fn every_statistics_document_matches_its_schema() {
    use common::tls::{certificate_toml, make_cert, tls_addr, Alg, Client};
    if !python_ready("every_statistics_document_matches_its_schema") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "site", &["a.test"], Alg::Ecdsa);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\ntls_listen = [\"127.0.0.1:0\"]\n{}\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{closed}\"]\n\
         [[route]]\npath = \"/api/\"\nupstream = \"app\"\n[[route]]\npath = \"/\"\nroot = \"{{root}}\"\n",
        certificate_toml(&cert, true)
    );
    let server = Server::builder().config(&config).workers(2).start();
    assert!(Client::plain().get(tls_addr(&server), Some("a.test"), "/").starts_with(b"HTTP/1.1 "));
    assert_eq!(server.get("/api/x").status, 502);
    server.wait_until("the requests counted", |s| s["total"]["requests"] == 2 && s["total"]["active"] == 0);
    let admin = admin_addr(&server);
    let mut s = connect(admin);
    s.write_all(b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let answer = read_response(&mut std::io::BufReader::new(s), false);
    let from_admin: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(from_admin["upstreams"].as_array().map(Vec::len), Some(1));
    assert_eq!(from_admin["certificates"].as_array().map(Vec::len), Some(1));
    assert_matches_schema(&from_admin, "GET /stats.json");
    assert_matches_schema(&server.stats(), "tine stats --json");
    let one = tine()
        .args(["stats", "--json", "--worker", "1", "--stats-path"])
        .arg(&server.stats_path)
        .output()
        .unwrap();
    assert_matches_schema(&serde_json::from_slice(&one.stdout).unwrap(), "tine stats --json --worker 1");
    // And a document the schema must refuse: it checks something.
    let mut broken = from_admin.clone();
    broken["workers"][0]["requests"] = Value::from(-1);
    broken["total"]["no_such_counter"] = Value::from(1);
    let check = std::panic::catch_unwind(|| assert_matches_schema(&broken, "a broken document"));
    assert!(check.is_err(), "the schema refuses a negative counter and an unknown field");
}

/// Parses Prometheus text with the official client's parser and returns
/// (name, labels, value) for every sample.
fn parse_prometheus(text: &str) -> Vec<(String, Value, f64)> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parse.py");
    std::fs::write(&path, script).unwrap();
    let parsed: Value = serde_json::from_str(&python(path.to_str().unwrap(), &[], text.as_bytes())).unwrap();
    parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].clone(), s[2].as_f64().unwrap()))
        .collect()
}

fn sample(samples: &[(String, Value, f64)], name: &str) -> f64 {
    samples.iter().filter(|s| s.0 == name).map(|s| s.2).sum()
}

#[test]
fn an_independent_reader_agrees_with_tine_stats_json() {
    if !python_ready("an_independent_reader_agrees_with_tine_stats_json") {
        return;
    }
    // Serve files and proxy to a second server, so the upstream table has
    // something to agree on too.
    let backend = Server::start(1);
    backend.write_file("b.txt", b"from the backend");
    let server = Server::builder()
        .config(&format!(
            "client_limits = [\"all\"]\n[[client_limit]]\nname = \"all\"\nrate = \"1r/m\"\nburst = 1000\n\
             [[upstream]]\nname = \"back\"\nservers = [\"{}\"]\n[[route]]\npath = \"/b/\"\nupstream = \"back\"\n\
             [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n",
            backend.addr
        ))
        .workers(2)
        .start();
    server.write_file("a.txt", b"hello");
    for i in 0..30 {
        let path = if i % 5 == 0 { "/missing" } else { "/a.txt" };
        server.get(path);
    }
    for _ in 0..5 {
        assert_eq!(server.get("/b/../b.txt").status, 400);
        server.get("/b/x");
    }
    server
        .wait_until("idle, host sampled", |s| s["total"]["active"] == 0 && s["host"]["sampled_unix_ms"] != 0);
    let ours = server.stats();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats_reader.py");
    let theirs: Value =
        serde_json::from_str(&python(script, &[server.stats_path.to_str().unwrap()], b"")).unwrap();
    // Fields a sampler or the clock may move between the two reads stay out.
    let moving = ["heartbeat_unix_ms", "cpu_time_us", "rss_bytes"];
    for (name, value) in ours["total"].as_object().unwrap() {
        if !moving.contains(&name.as_str()) {
            assert_eq!(&theirs["total"][name], value, "total {name}");
        }
    }
    assert_eq!(ours["total"]["requests"], 40);
    assert_eq!(ours["upstreams"][0]["requests"], 5);
    assert_eq!(theirs["upstreams"], ours["upstreams"], "upstream table");
    // Keys in use are the master's sample, which may move between the reads.
    let limits = |v: &Value| {
        let mut l = v["client_limits"].clone();
        l[0].as_object_mut().unwrap().remove("keys");
        l
    };
    assert_eq!(ours["client_limits"][0]["checked"], 40);
    assert_eq!(limits(&theirs), limits(&ours), "client limits");
    let (a, b) = (ours["workers"].as_array().unwrap(), theirs["workers"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (w, v) in a.iter().zip(b) {
        for (name, value) in w.as_object().unwrap() {
            if !moving.contains(&name.as_str()) {
                assert_eq!(&v[name], value, "worker {} {name}", w["slot"]);
            }
        }
    }
    for name in ["pid", "generation", "reloads", "respawns", "state", "live"] {
        assert_eq!(theirs["master"][name], ours["master"][name], "master {name}");
    }
    assert_eq!(theirs["listeners"], ours["listeners"]);
    let names = |v: &Value| -> Vec<Value> {
        v["host"]["interfaces"].as_array().unwrap().iter().map(|i| i["name"].clone()).collect()
    };
    assert_eq!(names(&theirs), names(&ours));
    assert!(names(&ours).contains(&Value::from("lo")), "loopback sampled");
}

#[test]
fn prometheus_output_and_the_admin_endpoint_parse_and_count_right() {
    if !python_ready("prometheus_output_and_the_admin_endpoint_parse_and_count_right") {
        return;
    }
    let server = Server::builder().config("admin_listen = \"127.0.0.1:0\"\n").workers(2).start();
    server.write_file("a.txt", b"hello");
    for _ in 0..12 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    server.wait_until("idle", |s| s["total"]["active"] == 0);
    let out =
        tine().args(["stats", "--prometheus", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    assert!(out.status.success());
    let samples = parse_prometheus(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(sample(&samples, "tine_requests_total"), 12.0);
    assert_eq!(sample(&samples, "tine_request_duration_seconds_count"), 12.0);
    assert!(sample(&samples, "tine_request_duration_seconds_sum") > 0.0);
    assert_eq!(sample(&samples, "tine_up"), 1.0);
    let two_xx: f64 =
        samples.iter().filter(|s| s.0 == "tine_responses_total" && s.1["class"] == "2xx").map(|s| s.2).sum();
    assert_eq!(two_xx, 12.0);
    assert!(samples.iter().any(|s| s.0 == "tine_host_tcp_listen_overflows_total"));

    // The admin listener serves the same documents from the region.
    server.wait_for_log("admin endpoint on http://");
    let line = server.log().into_iter().find(|l| l.contains("admin endpoint on")).unwrap();
    let admin: std::net::SocketAddr =
        line.split("http://").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    let get = |path: &str| {
        let raw = exchange_raw(
            admin,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        read_response(&mut &raw[..], false)
    };
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&String::from_utf8(metrics.body).unwrap());
    assert!(sample(&samples, "tine_requests_total") >= 12.0);
    let json = get("/stats.json");
    let doc: Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(doc["workers"].as_array().unwrap().len(), 2);
    assert_eq!(get("/a.txt").status, 404, "the admin listener serves no files");
}

#[test]
fn the_live_view_maps_the_region_read_only() {
    let server = Server::start(1);
    let watch = tine()
        .args(["stats", "--watch", "--count", "2", "--stats-path"])
        .arg(&server.stats_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", watch.id());
    let region = server.stats_path.to_str().unwrap().to_string();
    let mut line = None;
    wait_for("the region mapped by tine stats --watch", || {
        line = std::fs::read_to_string(&maps)
            .ok()
            .and_then(|m| m.lines().find(|l| l.ends_with(&region)).map(String::from));
        line.is_some()
    });
    let perms = line.unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(perms, "r--s", "mapped read-only and shared");
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("requests") && text.contains("p99") && text.contains("host accept queues"),
        "{text}"
    );
}

#[test]
fn host_counters_move_when_the_kernel_refuses_or_drops_connections() {
    let server = Server::builder().config("backlog = 1\n[limits]\nconnections_per_worker = 1\n").start();
    let before = server.stats()["host"].clone();
    // Refused: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for _ in 0..3 {
        assert!(std::net::TcpStream::connect(closed).is_err());
    }
    // Overflow: the worker holds its one allowed connection and stops accepting;
    // the accept queue (backlog 1) fills and the kernel drops further SYNs.
    let held = server.connect();
    server.wait_until("one accepted", |s| s["total"]["accepted"] == 1);
    let mut queued = Vec::new();
    for _ in 0..6 {
        if let Ok(s) =
            std::net::TcpStream::connect_timeout(&server.addr, std::time::Duration::from_millis(200))
        {
            queued.push(s);
        }
    }
    let after = server.wait_until("host counters sampled after the events", |s| {
        let h = &s["host"];
        h["tcp_attempt_fails"].as_u64() >= Some(before["tcp_attempt_fails"].as_u64().unwrap() + 3)
            && h["tcp_listen_overflows"].as_u64() > before["tcp_listen_overflows"].as_u64()
    });
    assert!(after["host"]["tcp_listen_drops"].as_u64() > before["tcp_listen_drops"].as_u64());
    drop(held);
    drop(queued);
}

#[test]
fn counters_never_go_back_across_reloads_and_respawns() {
    let server = Server::start(2);
    server.write_file("a.txt", b"hello");
    let mut previous = server.stats();
    for round in 0..4 {
        for _ in 0..10 {
            server.get("/a.txt");
        }
        if round % 2 == 0 {
            server.signal(libc::SIGHUP);
            server.wait_until("reload", |s| s["master"]["reloads"] == round / 2 + 1);
        } else {
            let pid = server.worker_pids()[1];
            send_signal(pid, libc::SIGKILL);
            server.wait_until("respawn", |s| {
                s["workers"][1]["pid"] != pid && s["workers"][1]["state"] == "running"
            });
        }
        let now = server.stats();
        for (name, value) in previous["total"].as_object().unwrap() {
            if name != "active" && name != "rss_bytes" && name != "latency_us" {
                assert!(now["total"][name].as_u64() >= value.as_u64(), "{name} went back in round {round}");
            }
        }
        for b in 0..32 {
            assert!(now["total"]["latency_us"][b].as_u64() >= previous["total"]["latency_us"][b].as_u64());
        }
        previous = now;
    }
    assert_eq!(previous["total"]["requests"], 40);
}

#[test]
fn stale_and_incompatible_regions_are_explained() {
    let mut server = Server::start(1);
    let copy = server.dir.path().join("copy.stats");
    server.signal(libc::SIGKILL);
    server.wait_exit();
    // A master killed outright leaves its region behind.
    let out = tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is gone") && err.contains("last heartbeat was"), "{err}");
    let json = tine().args(["stats", "--json", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["master"]["live"], false);

    let mut bytes = std::fs::read(&server.stats_path).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_ne_bytes());
    std::fs::write(&copy, &bytes).unwrap();
    let out = tine().args(["stats", "--stats-path"]).arg(&copy).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("layout version 7"));
    let out =
        tine().args(["stats", "--worker", "5", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker slot 5"));
}

#[test]
fn tls_counters_and_certificate_expiry_reach_every_reader() {
    use common::tls::{certificate_toml, make_cert, tls_addr, Alg, Client};
    if !python_ready("tls_counters_and_certificate_expiry_reach_every_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "site", &["a.test", "www.a.test"], Alg::Ecdsa);
    let config = format!("tls_listen = [\"127.0.0.1:0\"]\n{}", certificate_toml(&cert, true));
    let server = Server::builder().config(&config).workers(2).start();
    let addr = tls_addr(&server);
    let client = Client::plain();
    for _ in 0..3 {
        assert!(client.get(addr, Some("a.test"), "/missing").starts_with(b"HTTP/1.1 404"));
    }
    exchange_raw(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let ours = server.wait_until("the handshakes and the plain request counted", |s| {
        s["total"]["tls_handshakes"] == 3
            && s["total"]["tls_failed_plain_http"] == 1
            && s["total"]["active"] == 0
    });
    assert_eq!(ours["total"]["tls_v1_3"], 3);
    let certificates = ours["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 1);
    assert_eq!(certificates[0]["name"], "a.test");
    assert_eq!(certificates[0]["file"], cert.cert.to_str().unwrap());
    assert!(certificates[0]["expires_in_seconds"].as_i64().unwrap() > 0);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats_reader.py");
    let theirs: Value =
        serde_json::from_str(&python(script, &[server.stats_path.to_str().unwrap()], b"")).unwrap();
    for name in ["tls_handshakes", "tls_v1_3", "tls_failed_plain_http", "tls_failed_protocol"] {
        assert_eq!(theirs["total"][name], ours["total"][name], "{name}");
    }
    assert_eq!(theirs["certificates"][0]["name"], "a.test");
    assert_eq!(theirs["certificates"][0]["not_after_unix"], certificates[0]["not_after_unix"]);
    for field in ["source", "next_attempt_unix", "acme_failures", "last_error"] {
        assert_eq!(theirs["certificates"][0][field], certificates[0][field], "certificate {field}");
    }
    assert_eq!(certificates[0]["source"], "file");

    let out =
        tine().args(["stats", "--prometheus", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let samples = parse_prometheus(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(sample(&samples, "tine_tls_handshakes_total"), 3.0);
    let plain: f64 = samples
        .iter()
        .filter(|s| s.0 == "tine_tls_handshake_failures_total" && s.1["class"] == "plain_http")
        .map(|s| s.2)
        .sum();
    assert_eq!(plain, 1.0);
    let expiry =
        samples.iter().find(|s| s.0 == "tine_tls_certificate_expiry_seconds").expect("expiry series");
    assert_eq!(expiry.1["certificate"], "a.test");
    assert!(expiry.2 > 0.0);
    let text = tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("tls: handshakes 3"), "{text}");
    assert!(text.contains("certificate a.test"), "{text}");
}

#[test]
fn closing_connections_are_sampled_for_rtt_and_retransmissions() {
    if !python_ready("closing_connections_are_sampled_for_rtt_and_retransmissions") {
        return;
    }
    let server = Server::start(1);
    server.write_file("a.txt", b"hello");
    for _ in 0..40 {
        assert_eq!(server.get("/a.txt").status, 200);
    }
    // One closing connection in 16 is sampled: the 16th and the 32nd.
    let ours = server
        .wait_until("40 connections closed", |s| s["total"]["accepted"] == 40 && s["total"]["active"] == 0);
    assert_eq!(ours["total"]["tcp_info_samples"], 2);
    let rtt: u64 =
        ours["total"]["sampled_rtt_us"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).sum();
    assert_eq!(rtt, 2, "each sample lands in one RTT bucket");
    assert!(ours["total"]["sampled_segs_out"].as_u64().unwrap() >= 2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats_reader.py");
    let theirs: Value =
        serde_json::from_str(&python(script, &[server.stats_path.to_str().unwrap()], b"")).unwrap();
    for name in [
        "tcp_info_samples",
        "sampled_rtt_us_sum",
        "sampled_segs_out",
        "sampled_retrans_segs",
        "sampled_rtt_us",
    ] {
        assert_eq!(theirs["total"][name], ours["total"][name], "{name}");
    }
    let out =
        tine().args(["stats", "--prometheus", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    let samples = parse_prometheus(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(sample(&samples, "tine_tcp_rtt_seconds_count"), 2.0);
    assert_eq!(sample(&samples, "tine_tcp_info_samples_total"), 2.0);
    let text = tine().args(["stats", "--stats-path"]).arg(&server.stats_path).output().unwrap();
    assert!(String::from_utf8(text.stdout).unwrap().contains("client RTT (2 connections sampled)"));
}
