//! The stats-region reader given a damaged region: a real region (two
//! worker slots, upstream servers, certificates from files and ACME) with bytes overwritten and
//! its length cut as the input says. The reader refuses it or reads it, and
//! everything an ops tool does with what it read (snapshot, table, JSON,
//! Prometheus) finishes without reading outside the mapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tine_stats::{prometheus, render, CertificateExpiry, CertificateSource, Reader, Region, Snapshot};

struct Template {
    bytes: Vec<u8>,
    dir: tempfile::TempDir,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("template.stats");
        let region = Region::create_with_upstreams(
            &path,
            2,
            &["127.0.0.1:8080".into(), "[::1]:8443".into()],
            &["app 10.0.0.1:80".into(), "app 10.0.0.2:80".into()],
        )
        .expect("a region");
        region.set_certificates(&[
            CertificateExpiry {
                name: "example.test".into(),
                file: "/etc/tine/example.pem".into(),
                not_after_unix: 1_900_000_000,
                ..CertificateExpiry::default()
            },
            CertificateExpiry {
                name: "acme.example.test".into(),
                file: "/var/lib/tine/acme/certificates/acme.example.test/certificate.pem".into(),
                not_after_unix: 0,
                source: CertificateSource::Acme,
                next_attempt_unix: 1_800_000_000,
                failures: 3,
                last_error: "client error (Connect): tcp connect error: Connection refused".into(),
            },
        ]);
        let bytes = std::fs::read(&path).expect("the region's bytes");
        drop(region);
        Template { bytes, dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let mut bytes = t.bytes.clone();
    let mut input = data;
    // Up to 16 patches of (offset: 3 bytes, length: 1 byte, the bytes).
    for _ in 0..16 {
        let [a, b, c, n, rest @ ..] = input else { break };
        let at = (usize::from(*a) | usize::from(*b) << 8 | usize::from(*c) << 16) % bytes.len();
        let n = usize::from(*n).min(rest.len()).min(bytes.len() - at);
        bytes[at..at + n].copy_from_slice(&rest[..n]);
        input = &rest[n..];
    }
    // A writer mid-update leaves the names' sequence odd, and the reader
    // then waits up to a second for it to settle: keep it even unless the
    // input asks otherwise, or that wait would swallow the run.
    if data.first() != Some(&0xff) {
        let seq = std::mem::offset_of!(tine_stats::layout::Header, upstream_names_seq);
        bytes[seq] &= !1;
    }
    if let [x, y, ..] = input {
        bytes.truncate(bytes.len() - (usize::from(*x) | usize::from(*y) << 8) % bytes.len());
    }
    let path = t.dir.path().join("damaged.stats");
    std::fs::write(&path, &bytes).expect("writing the damaged region");
    let Ok(reader) = Reader::open(&path) else { return };
    let snapshot = Snapshot::take(&reader);
    let _ = render::text(&snapshot, None);
    let _ = render::json(&snapshot, None);
    let _ = prometheus::render(&snapshot, None);
    let _ = render::text(&snapshot, Some(1));
    let _ = render::watch_frame(&snapshot, &snapshot, None);
});
