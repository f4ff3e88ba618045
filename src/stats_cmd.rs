//! `tine stats`: maps a region read-only and prints it.

use anyhow::{bail, Context};
use std::path::PathBuf;
use tine_stats::reader::Liveness;
use tine_stats::{render, Reader};

pub fn run(path: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let path = match path {
        Some(p) => p,
        None => find_region()?,
    };
    let reader = Reader::open(&path)?;
    let snapshot = reader.snapshot();
    if let Liveness::Stale { since_unix_ms } = snapshot.liveness {
        eprintln!(
            "tine: warning: the master of {} is gone (last heartbeat {}); figures are final",
            path.display(),
            ago(since_unix_ms)
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&render::json(&snapshot))?);
    } else {
        print!("{}", render::text(&snapshot));
    }
    Ok(())
}

/// With no --stats-path: the one live region in /dev/shm, else port 8080's.
fn find_region() -> anyhow::Result<PathBuf> {
    let live: Vec<PathBuf> = std::fs::read_dir("/dev/shm")
        .context("cannot list /dev/shm")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("tine-") && name.ends_with(".stats")
        })
        .filter(|p| Reader::open(p).is_ok_and(|r| r.liveness() == Liveness::Live))
        .collect();
    match live.len() {
        0 => Ok(tine_master::paths::default_stats_path(8080)),
        1 => Ok(live.into_iter().next().expect("one element")),
        _ => {
            let list: Vec<String> = live.iter().map(|p| format!("  {}", p.display())).collect();
            bail!("several tine servers are running; pick one with --stats-path:\n{}", list.join("\n"))
        }
    }
}

fn ago(unix_ms: u64) -> String {
    let secs = tine_stats::unix_millis().saturating_sub(unix_ms) / 1000;
    format!("{secs}s ago")
}
