//! Round trips through a real file: what the writer stores is what the reader sees,
//! and the reader refuses what is not a region it knows.

use std::sync::atomic::Ordering::Relaxed;
use tine_stats::{ReadError, Reader, Region, RegionView};

#[test]
fn counters_written_are_counters_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.stats");
    let region = Region::create(&path, 3, &["127.0.0.1:8080".into()]).unwrap();
    for i in 0..3 {
        region.slot(i).generation.store(1, Relaxed);
    }
    region.slot(1).requests.fetch_add(7, Relaxed);
    region.slot(2).requests.fetch_add(5, Relaxed);
    region.slot(2).active.fetch_add(2, Relaxed);
    region.master().respawns.fetch_add(1, Relaxed);

    let snap = Reader::open(&path).unwrap().snapshot();
    let json = tine_stats::render::json(&snap, None);
    assert_eq!(snap.slots.len(), 3);
    assert_eq!(snap.slots[1].fields.requests, 7);
    assert_eq!(snap.totals().get("requests"), Some(12));
    assert_eq!(snap.totals().get("active"), Some(2));
    assert_eq!(snap.totals().get("pid"), None, "info fields are not summed");
    assert_eq!(snap.master.respawns, 1);
    assert_eq!(snap.listeners, vec!["127.0.0.1:8080".to_string()]);
    assert_eq!(json["total"]["requests"], 12);
    assert_eq!(json["workers"][2]["requests"], 5);
    assert_eq!(json["workers"][0]["cpu"], serde_json::Value::Null);
}

#[test]
fn a_region_owned_by_a_live_master_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.stats");
    let first = Region::create(&path, 1, &[]).unwrap();
    // Pretend another live process (our parent) owns it.
    let parent = std::os::unix::process::parent_id() as u64;
    first.header().master_pid.store(parent, Relaxed);
    let err = Region::create(&path, 1, &[]).err().expect("must refuse");
    assert!(err.to_string().contains("running tine master"), "{err}");
    first.set_state(tine_stats::RegionState::Stopped);
    Region::create(&path, 1, &[]).expect("a stopped region is replaced");
}

#[test]
fn reader_refuses_what_is_not_a_region() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(Reader::open(&missing), Err(ReadError::Missing { .. })));
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(matches!(Reader::open(&junk), Err(ReadError::NotARegion(5))));

    let path = dir.path().join("r.stats");
    drop(Region::create(&path, 1, &[]).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 99; // layout_version
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Reader::open(&path), Err(ReadError::Version { found: 99 })));

    drop(Region::create(&path, 2, &[]).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 64]).unwrap();
    assert!(matches!(Reader::open(&path), Err(ReadError::Corrupt(_))));
}

#[test]
fn sums_never_overflow_and_gauges_never_read_negative() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.stats");
    let region = Region::create(&path, 2, &[]).unwrap();
    region.slot(0).requests.store(u64::MAX, Relaxed);
    region.slot(1).requests.store(2, Relaxed);
    region.slot(0).active.fetch_sub(1, Relaxed);
    let totals = Reader::open(&path).unwrap().snapshot().totals();
    assert_eq!(totals.get("requests"), Some(1));
    assert_eq!(totals.get("active"), Some(0));
}

#[test]
fn percentiles_come_from_the_histogram() {
    use tine_stats::layout::{latency_bucket, LATENCY_BUCKETS};
    use tine_stats::render::percentile;
    let mut hist = [0u64; LATENCY_BUCKETS];
    assert_eq!(percentile(&hist, 0.5), None);
    // 90 requests around 100 us, 10 around 10 ms.
    hist[latency_bucket(100)] += 90;
    hist[latency_bucket(10_000)] += 10;
    let p50 = percentile(&hist, 0.5).unwrap();
    let p99 = percentile(&hist, 0.99).unwrap();
    assert!((64.0..=128.0).contains(&p50), "{p50}");
    assert!((8192.0..=16384.0).contains(&p99), "{p99}");
}
