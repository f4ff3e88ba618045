//! What every connection of a worker shares: settings, the document root, the
//! Date cache, the buffer pool, the timer wheel and the worker's stats slot.

use crate::buffer_pool::BufferPool;
use crate::file_cache::FileCache;
use crate::static_files::StaticRoot;
use crate::timer_wheel::TimerWheel;
use std::time::Instant;
use tine_config::Timeouts;
use tine_http::date::DateCache;
use tine_http::target::TargetPath;
use tine_logging::AccessLog;
use tine_stats::{Region, Slot};

pub struct Ctx<'a> {
    pub timeouts: Timeouts,
    pub http_limits: tine_http::Limits,
    pub discard_body_bytes: u64,
    pub root: StaticRoot,
    pub files: FileCache,
    pub date: DateCache,
    pub stats: &'a Slot,
    /// The whole region, for the admin listener's documents.
    pub region: &'a Region,
    pub pool: BufferPool,
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
