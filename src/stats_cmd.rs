//! `tine stats`: maps a region read-only and prints it once (table, JSON or
//! Prometheus) or as a live view refreshed every second.

use anyhow::{bail, Context};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tine_stats::{prometheus, render, Liveness, Reader, RegionView, Snapshot};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Region to read (default: the only running tine's, or port 8080's).
    #[arg(long)]
    stats_path: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with_all = ["prometheus", "watch"])]
    json: bool,
    /// Print the Prometheus text exposition format.
    #[arg(long, conflicts_with = "watch")]
    prometheus: bool,
    /// Live view, refreshed every second, with rates and recent latency.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many refreshes (default: until interrupted).
    #[arg(long, requires = "watch")]
    count: Option<u64>,
    /// Show only this worker slot.
    #[arg(long)]
    worker: Option<usize>,
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let path = match &args.stats_path {
        Some(p) => p.clone(),
        None => find_region()?,
    };
    let reader = Reader::open(&path)?;
    let first = Snapshot::take(&reader);
    if let Some(w) = args.worker {
        if !first.used_slots().any(|s| s.slot == w) {
            let used: Vec<String> = first.used_slots().map(|s| s.slot.to_string()).collect();
            bail!("no worker slot {w} in {} (slots in use: {})", path.display(), used.join(", "));
        }
    }
    warn_if_stale(&first);
    if args.watch {
        return watch(&reader, first, args.worker, args.count);
    }
    let out = if args.json {
        serde_json::to_string_pretty(&render::json(&first, args.worker))? + "\n"
    } else if args.prometheus {
        prometheus::render(&first, args.worker)
    } else {
        render::text(&first, args.worker)
    };
    std::io::stdout().write_all(out.as_bytes()).context("writing to stdout")?;
    Ok(())
}

fn watch(
    reader: &Reader,
    mut prev: Snapshot,
    worker: Option<usize>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut frames = 0;
    while count.is_none_or(|c| frames < c) {
        std::thread::sleep(Duration::from_secs(1));
        let now = Snapshot::take(reader);
        let frame = render::watch_frame(&prev, &now, worker);
        // Clear the screen and draw from the top, as top does.
        let mut out = std::io::stdout().lock();
        write!(out, "\x1b[H\x1b[2J{frame}").and_then(|()| out.flush()).context("writing to stdout")?;
        prev = now;
        frames += 1;
    }
    Ok(())
}

fn warn_if_stale(s: &Snapshot) {
    if let Liveness::Stale { since_unix_ms } = s.liveness {
        let ago = tine_stats::unix_millis().saturating_sub(since_unix_ms) / 1000;
        eprintln!(
            "tine: warning: the master of {} (pid {}) is gone; its last heartbeat was {ago}s ago. \
             These figures are final.",
            s.path, s.master_pid
        );
    }
}

/// With no --stats-path: the one live region in the default directories,
/// else port 8080's default.
fn find_region() -> anyhow::Result<PathBuf> {
    let mut live: Vec<PathBuf> = Vec::new();
    for dir in tine_master::paths::stats_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        live.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("tine-") && name.ends_with(".stats")
                })
                .filter(|p| Reader::open(p).is_ok_and(|r| r.liveness() == Liveness::Live)),
        );
    }
    live.dedup();
    match live.len() {
        0 => Ok(tine_master::paths::default_stats_path(8080)),
        1 => Ok(live.into_iter().next().expect("one element")),
        _ => {
            let list: Vec<String> = live.iter().map(|p| format!("  {}", p.display())).collect();
            bail!("several tine servers are running; pick one with --stats-path:\n{}", list.join("\n"))
        }
    }
}
