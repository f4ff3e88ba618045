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

    let snap = tine_stats::Snapshot::take(&Reader::open(&path).unwrap());
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
fn a_region_held_by_a_running_server_is_not_replaced_and_a_squatted_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.stats");
    let first = Region::create(&path, 1, &[]).unwrap();
    let err = Region::create(&path, 1, &[]).err().expect("must refuse");
    assert!(err.to_string().contains("running tine master"), "{err}");
    // A reader's descriptor and its read lock do not make a region live.
    let reader = std::fs::File::open(&path).unwrap();
    assert!(tine_stats::ownership::held(&reader).unwrap());
    drop(first);
    assert!(!tine_stats::ownership::held(&reader).unwrap(), "the lock goes with its holder");
    // A file that names a live pid (ours) but that nobody holds is a leftover.
    let squatted = Region::create(&path, 1, &[]).unwrap();
    squatted.header().master_pid.store(std::process::id() as u64, Relaxed);
    drop(squatted);
    Region::create(&path, 1, &[]).expect("an unheld region is replaced whatever pid it names");
}

#[test]
fn a_region_file_of_another_user_or_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.stats");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
    let err = Region::create(&link, 1, &[]).err().expect("a symlink is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    if tine_stats::ownership::current_uid() != 0 {
        eprintln!("skipped the other-user half: needs root to give a file away");
        return;
    }
    let path = dir.path().join("theirs.stats");
    std::fs::write(&path, b"squatter").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let err = Region::create(&path, 1, &[]).err().expect("another user's file is refused");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"squatter", "left as it was");
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
    let totals = tine_stats::Snapshot::take(&Reader::open(&path).unwrap()).totals();
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

#[test]
fn a_reader_never_sees_a_half_rewritten_list_of_upstream_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.stats");
    let short: Vec<String> = vec!["a 127.0.0.1:1".into()];
    let long: Vec<String> = (0..8).map(|i| format!("group-{i} 127.0.0.{i}:{}", 9000 + i)).collect();
    let region = Region::create_with_upstreams(&path, 1, &[], &short).unwrap();
    let reader = Reader::open(&path).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..5_000 {
                region.set_upstream_names(if i % 2 == 0 { &long } else { &short });
                // Reloads are spaced; a reader gets its chance between them.
                std::thread::yield_now();
            }
            done.store(true, Relaxed);
        });
        let mut reads = 0;
        while !done.load(Relaxed) || reads == 0 {
            let names = reader.upstream_names();
            assert!(names == short || names == long, "a torn list: {names:?}");
            reads += 1;
        }
    });
}
