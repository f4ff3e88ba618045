//! `[[client_limit]]` as a worker applies it: a request is checked once it
//! is routed (the top level's limits, then its route's), a connection at
//! accept (the top level's limits with `connections`). The state is the
//! master's shared table (tine-limits), so every worker counts against the
//! same allowance; this worker's counters go to its slot's limit entries.

use std::net::IpAddr;
use std::time::Duration;
use tine_config::client_limit::KeySource;
use tine_config::Config;
use tine_limits::{ClientKey, Held, HoldId, HoldShare, Holds, KeyHasher, LimitsRegion, Rate, Table, Verdict};
use tine_stats::layout::LimitStats;

use std::sync::atomic::Ordering::Relaxed;

/// What a worker is given of the limits by its master.
#[derive(Clone, Copy)]
pub struct LimitsInit<'a> {
    pub region: &'a LimitsRegion,
    /// For each `[[client_limit]]` of the configuration, its entry in the
    /// statistics region's limit section.
    pub stats_index: &'a [usize],
    /// Where this worker records the connections it counted, for the master
    /// to give back should the worker die.
    pub holds: &'a HoldShare,
}

struct Limit<'a> {
    name: String,
    table: Table<'a>,
    key: KeySource,
    rate: Option<Rate>,
    connections: u32,
    status: u16,
    stats: Option<&'a LimitStats>,
}

/// What a request's check came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Pass,
    /// Over the rate, within the burst, of a limit with `delay = true`.
    Delay(Duration),
    Refuse(Refusal),
}

/// A request refused by a limit: its status, and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Whole seconds, at least 1, for `Retry-After`.
    pub retry_after_secs: u64,
}

/// The connections one client connection counts against, given back when
/// it closes.
#[derive(Default)]
pub struct ConnHolds(Vec<HeldBy>);

/// One limit's count of a connection, and where the worker recorded it.
struct HeldBy {
    table: usize,
    held: Held,
    id: Option<HoldId>,
}

/// The worker's client limits (none when the configuration has none).
pub struct ClientLimits<'a> {
    hasher: Option<KeyHasher>,
    limits: Vec<Limit<'a>>,
    /// The top-level limits, checked on every public request.
    global: Vec<usize>,
    /// The top-level limits that count connections.
    at_accept: Vec<usize>,
    holds: Option<Holds<'a>>,
    log: RefusalLog,
}

impl<'a> ClientLimits<'a> {
    pub fn none() -> Self {
        ClientLimits {
            hasher: None,
            limits: Vec::new(),
            global: Vec::new(),
            at_accept: Vec::new(),
            holds: None,
            log: RefusalLog::default(),
        }
    }

    pub fn new(config: &Config, init: LimitsInit<'a>, stats: &'a [LimitStats]) -> Self {
        let limits: Vec<Limit<'a>> = config
            .client_limits
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                Some(Limit {
                    name: l.name.clone(),
                    table: init.region.table(i)?,
                    key: l.key.clone(),
                    rate: l.rate,
                    connections: l.connections,
                    status: l.status,
                    stats: init.stats_index.get(i).and_then(|&s| stats.get(s)),
                })
            })
            .collect();
        let at_accept =
            config.global_client_limits.iter().copied().filter(|&i| config.client_limits[i].connections > 0);
        ClientLimits {
            hasher: Some(init.region.hasher()),
            at_accept: at_accept.filter(|&i| i < limits.len()).collect(),
            global: config.global_client_limits.iter().copied().filter(|&i| i < limits.len()).collect(),
            limits,
            holds: Some(Holds::new(init.holds)),
            log: RefusalLog::default(),
        }
    }

    /// Whether any limit counts connections at accept.
    pub fn counts_connections(&self) -> bool {
        !self.at_accept.is_empty()
    }

    /// Counts a request from `peer` against the top-level limits and then
    /// `route`'s, stopping at the first that refuses it; the longest delay
    /// asked for wins.
    pub fn check_request(
        &mut self,
        route: &[usize],
        peer: Option<IpAddr>,
        fields: &[httparse::Header<'_>],
    ) -> Check {
        let Some(hasher) = self.hasher else { return Check::Pass };
        if self.global.is_empty() && route.is_empty() {
            return Check::Pass;
        }
        let now = tine_limits::monotonic_us();
        let mut wait = Duration::ZERO;
        for &i in self.global.iter().chain(route) {
            let Some(limit) = self.limits.get(i) else { continue };
            let Some(rate) = &limit.rate else { continue };
            let Some(key) = request_key(&limit.key, hasher, peer, fields) else { continue };
            let checked = limit.table.check_rate(key, rate, now);
            if let Some(stats) = limit.stats {
                stats.checked.fetch_add(1, Relaxed);
                if checked.evicted {
                    stats.evictions.fetch_add(1, Relaxed);
                }
            }
            match checked.outcome {
                Verdict::Allow => {}
                Verdict::Delay(d) => {
                    if let Some(stats) = limit.stats {
                        stats.delayed.fetch_add(1, Relaxed);
                    }
                    wait = wait.max(d);
                }
                Verdict::Refuse { retry_after } => {
                    if let Some(stats) = limit.stats {
                        stats.refused.fetch_add(1, Relaxed);
                    }
                    let retry_after_secs = retry_after.as_micros().div_ceil(1_000_000).max(1) as u64;
                    self.log.refused(&limit.name, peer, "request rate", now);
                    return Check::Refuse(Refusal { status: limit.status, retry_after_secs });
                }
            }
        }
        if wait.is_zero() {
            Check::Pass
        } else {
            Check::Delay(wait)
        }
    }

    /// Counts a new connection from `peer` against the top-level limits
    /// that count connections: the holds to give back when it closes, or
    /// None when one of them is at its limit (what was taken is given back).
    pub fn admit_connection(&mut self, peer: IpAddr) -> Option<ConnHolds> {
        let hasher = self.hasher?;
        let now = tine_limits::monotonic_us();
        let mut holds = ConnHolds::default();
        for &i in &self.at_accept {
            let limit = &self.limits[i];
            let KeySource::Address { v4_prefix, v6_prefix } = limit.key else { continue };
            let key = hasher.address(peer, v4_prefix, v6_prefix);
            let checked = limit.table.acquire_connection(key, limit.connections, now);
            if checked.evicted {
                if let Some(stats) = limit.stats {
                    stats.evictions.fetch_add(1, Relaxed);
                }
            }
            match checked.outcome {
                Ok(held) => {
                    let id = self.holds.as_mut().and_then(|h| h.record(i, held));
                    holds.0.push(HeldBy { table: i, held, id });
                }
                Err(_) => {
                    if let Some(stats) = limit.stats {
                        stats.connections_refused.fetch_add(1, Relaxed);
                    }
                    self.log.refused(&limit.name, Some(peer), "connections", now);
                    self.release(holds);
                    return None;
                }
            }
        }
        Some(holds)
    }

    /// A connection closed: what it counted is given back.
    pub fn release(&mut self, holds: ConnHolds) {
        for by in holds.0 {
            if let Some(limit) = self.limits.get(by.table) {
                limit.table.release_connection(by.held);
            }
            if let (Some(id), Some(h)) = (by.id, self.holds.as_mut()) {
                h.forget(id);
            }
        }
    }
}

/// The key a request is counted by; None when it has none (no address, or
/// no such header), and the limit does not count it.
fn request_key(
    source: &KeySource,
    hasher: KeyHasher,
    peer: Option<IpAddr>,
    fields: &[httparse::Header<'_>],
) -> Option<ClientKey> {
    match source {
        KeySource::Address { v4_prefix, v6_prefix } => Some(hasher.address(peer?, *v4_prefix, *v6_prefix)),
        KeySource::Header(name) => {
            let field = fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))?;
            Some(hasher.value(field.value))
        }
    }
}

/// Refusals are logged with the limit's name, at most [`LINES_PER_SECOND`]
/// lines a second per worker, so that a flood of refused requests does not
/// become a flood of log lines; the rest are counted in the next line.
#[derive(Default)]
struct RefusalLog {
    second: u64,
    lines: u32,
    unlogged: u64,
}

const LINES_PER_SECOND: u32 = 10;

impl RefusalLog {
    fn refused(&mut self, limit: &str, peer: Option<IpAddr>, what: &str, now_us: u64) {
        let second = now_us / 1_000_000;
        if second != self.second {
            self.second = second;
            self.lines = 0;
        }
        if self.lines >= LINES_PER_SECOND {
            self.unlogged += 1;
            return;
        }
        self.lines += 1;
        let client = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        let more = std::mem::take(&mut self.unlogged);
        if more > 0 {
            log::warn!(
                "client limit {limit:?}: {client} refused over its {what} ({more} more refusals not logged)"
            );
        } else {
            log::warn!("client limit {limit:?}: {client} refused over its {what}");
        }
    }
}
