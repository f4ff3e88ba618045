//! Per-client limits that hold across every worker: request rates (GCRA,
//! with a burst, refused or delayed) and concurrent connections per client
//! key, kept in a shared-memory region the master makes and every worker
//! maps. Checked without a lock: each entry is updated with compare-and-swap.
//!
//! [`region`] is the file and its layout (docs/limits-abi.md), [`table`] one
//! limit's buckets and the algorithm, [`key`] what a client is counted by,
//! and [`holds`] how a dead worker's connections are given back.
//!
//! The counters of what the limits did live in the statistics region
//! (tine-stats), beside every other counter.

pub mod holds;
pub mod key;
pub mod region;
pub mod table;

pub use holds::{HoldId, HoldShare, Holds};
pub use key::{ClientKey, KeyHasher, KeySource};
pub use region::{LimitsError, LimitsRegion, TableSpec};
pub use table::{AtLimit, Checked, Held, Rate, Table, Verdict, WAYS};

/// Microseconds of CLOCK_MONOTONIC: the clock of every time in a table
/// (shared by every process of one boot, and never set back).
pub fn monotonic_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000,
        Err(_) => 0,
    }
}
