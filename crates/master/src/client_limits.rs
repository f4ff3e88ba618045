//! The master's side of the client limits: it makes the limits region (a
//! file beside the statistics region), keeps it across reloads that leave
//! the limits as they were (and carries each remaining limit's state into
//! a new one when they change), names each limit's entry in the statistics
//! region, counts the keys in use once a second, and gives back the
//! connections a dead worker still counted.

use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tine_config::Config;
use tine_limits::{HoldShare, LimitsRegion, TableSpec};
use tine_stats::Region;

/// Client limits while the master runs.
pub struct ClientLimits {
    path: PathBuf,
    region: Option<Rc<LimitsRegion>>,
    /// For each limit of the configuration in force, its entry in the
    /// statistics region's limit section.
    stats_index: Vec<usize>,
    /// The name of the limit counted under each entry (None: free), and
    /// whether an entry ever had one: a new limit takes a never-used entry
    /// first, so no limit's counters start from another's.
    entries: Vec<Option<String>>,
    ever_used: Vec<bool>,
    /// Each worker's record of the connections it counted, with the region
    /// it was forked with.
    holds: Vec<(Pid, HoldShare, Rc<LimitsRegion>)>,
}

impl ClientLimits {
    /// The limits region lives at the statistics region's path with the
    /// extension `.limits`.
    pub fn start(config: &Config, stats: &Region) -> Result<Self, String> {
        let path = limits_path(tine_stats::RegionView::path(stats));
        let capacity = tine_stats::layout::LIMIT_CAPACITY;
        let mut limits = ClientLimits {
            path,
            region: None,
            stats_index: Vec::new(),
            entries: vec![None; capacity],
            ever_used: vec![false; capacity],
            holds: Vec::new(),
        };
        limits.apply(config, stats)?;
        Ok(limits)
    }

    /// A reload: the region is kept when no limit changed its name or size,
    /// else made anew with the state of the limits that remain.
    pub fn apply(&mut self, config: &Config, stats: &Region) -> Result<(), String> {
        let specs: Vec<TableSpec> = config
            .client_limits
            .iter()
            .map(|l| TableSpec { name: l.name.clone(), max_keys: l.max_keys })
            .collect();
        if specs.len() > self.entries.len() {
            return Err(format!("at most {} client limits, not {}", self.entries.len(), specs.len()));
        }
        let region = match &self.region {
            _ if specs.is_empty() => None,
            Some(current) if current.fits(&specs) => Some(current.clone()),
            previous => Some(Rc::new(
                LimitsRegion::create(&self.path, &specs, previous.as_deref()).map_err(|e| e.to_string())?,
            )),
        };
        if region.is_none() && self.region.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.region = region;
        self.assign_entries(&specs);
        let described: Vec<Option<(String, u64)>> = self
            .entries
            .iter()
            .map(|name| {
                let spec = specs.iter().position(|s| Some(&s.name) == name.as_ref())?;
                let max_keys = self.region.as_ref()?.table(spec)?.capacity() as u64;
                Some((specs[spec].name.clone(), max_keys))
            })
            .collect();
        let used = described.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        stats.set_limits(&described[..used]);
        Ok(())
    }

    /// Gives each limit its statistics entry: the one it had, else a free
    /// entry never used, else any free one.
    fn assign_entries(&mut self, specs: &[TableSpec]) {
        for entry in self.entries.iter_mut() {
            if entry.as_ref().is_some_and(|name| !specs.iter().any(|s| &s.name == name)) {
                *entry = None;
            }
        }
        self.stats_index = specs
            .iter()
            .map(|spec| {
                if let Some(i) = self.entries.iter().position(|e| e.as_ref() == Some(&spec.name)) {
                    return i;
                }
                let free = |never: bool| {
                    (0..self.entries.len())
                        .find(|&i| self.entries[i].is_none() && (!never || !self.ever_used[i]))
                };
                let i = free(true).or_else(|| free(false)).unwrap_or(0);
                self.entries[i] = Some(spec.name.clone());
                self.ever_used[i] = true;
                i
            })
            .collect();
    }

    /// What a worker about to be forked is given, with the share it records
    /// its connections in (room for every connection it may hold, once per
    /// limit that counts connections).
    pub fn for_worker(&self, config: &Config) -> Result<Option<(Rc<LimitsRegion>, HoldShare)>, String> {
        let Some(region) = &self.region else { return Ok(None) };
        let counting = config.client_limits.iter().filter(|l| l.connections > 0).count();
        let share = HoldShare::new(counting * config.limits.connections_per_worker)
            .map_err(|e| format!("cannot make the worker's share of client-limit holds: {e}"))?;
        Ok(Some((region.clone(), share)))
    }

    pub fn stats_index(&self) -> &[usize] {
        &self.stats_index
    }

    /// A worker was forked with this share.
    pub fn track(&mut self, pid: Pid, share: HoldShare, region: Rc<LimitsRegion>) {
        self.holds.push((pid, share, region));
    }

    /// A worker was reaped: the connections it still counted are given back.
    pub fn worker_gone(&mut self, pid: Pid) {
        if let Some(i) = self.holds.iter().position(|(p, _, _)| *p == pid) {
            let (_, share, region) = self.holds.swap_remove(i);
            share.give_back(&region);
        }
    }

    /// Once a second: each limit's keys in use, into the statistics region.
    pub fn sample(&self, stats: &Region) {
        let Some(region) = &self.region else { return };
        let now = tine_limits::monotonic_us();
        for (limit, &entry) in self.stats_index.iter().enumerate() {
            if let Some(table) = region.table(limit) {
                stats.set_limit_keys(entry, table.live_keys(now));
            }
        }
    }

    /// The server stops: the region's file goes.
    pub fn remove(&self) {
        if self.region.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `tine-8080.stats` -> `tine-8080.limits`.
fn limits_path(stats: &Path) -> PathBuf {
    let path = stats.with_extension("limits");
    if path == stats {
        let mut name = stats.as_os_str().to_owned();
        name.push(".limits");
        PathBuf::from(name)
    } else {
        path
    }
}
