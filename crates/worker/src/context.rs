//! What every connection of a worker shares: settings, routes and static
//! sites, upstreams, the Date cache, pools, the timer wheel, epoll and the
//! worker's stats slot.

use crate::buffer_pool::{BufferPool, FreeList};
use crate::connection::Exchange;
use crate::file_cache::FileCache;
use crate::relay::PipePool;
use crate::static_files::StaticRoot;
use crate::timer_wheel::TimerWheel;
use crate::upstream::Upstreams;
use std::time::Instant;
use tine_config::{Route, Stream, Timeouts};
use tine_http::date::DateCache;
use tine_http::target::TargetPath;
use tine_logging::AccessLog;
use tine_net::Epoll;
use tine_stats::layout::UpstreamStats;
use tine_stats::{Region, Slot};

/// A document root with its file cache.
pub struct Site {
    pub root: StaticRoot,
    pub files: FileCache,
}

pub struct Ctx<'a> {
    pub timeouts: Timeouts,
    pub http_limits: tine_http::Limits,
    pub discard_body_bytes: u64,
    pub routes: Vec<Route>,
    /// For each route, the index of its site in `sites` (static routes only).
    pub route_sites: Vec<Option<usize>>,
    pub sites: Vec<Site>,
    pub streams: Vec<Stream>,
    pub upstreams: Upstreams,
    pub pipes: PipePool,
    pub epoll: Epoll,
    pub date: DateCache,
    pub stats: &'a Slot,
    /// This worker's entries of the region's upstream table.
    pub upstream_stats: &'a [UpstreamStats],
    /// The whole region, for the admin listener's documents.
    pub region: &'a Region,
    pub pool: BufferPool,
    /// Upstream exchanges that ended, reused by the next proxied requests.
    pub exchanges: FreeList<Box<Exchange>>,
    pub wheel: TimerWheel,
    /// Scratch space for the normalised path of the request being answered.
    pub path: TargetPath,
    /// The time of the current turn of the loop, monotonic and as Unix seconds.
    pub now: Instant,
    pub unix_secs: u64,
    pub access_log: Option<AccessLog>,
    /// A graceful stop is under way: finish what is in flight, take nothing new.
    pub draining: bool,
}
