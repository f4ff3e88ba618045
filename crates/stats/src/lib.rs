//! The statistics region: a file on tmpfs that the master creates, workers write
//! their counters into, and any ops tool maps read-only.
//!
//! The layout in [`layout`] is a documented ABI (docs/stats-abi.md); [`writer`]
//! creates and adopts regions, [`reader`] maps them read-only and validates them,
//! [`snapshot`] is a consistent-enough copy of every counter, and [`render`]
//! and [`prometheus`] turn a snapshot into the table, the live view, JSON and
//! the Prometheus exposition that `tine stats` prints.
//!
//! This crate depends on no other tine crate, so an ops tool can link it alone.

pub mod certificates;
pub mod gauges;
pub mod layout;
pub mod ownership;
pub mod prometheus;
pub mod reader;
pub mod render;
pub mod snapshot;
mod text;
pub mod view;
pub mod writer;

pub use certificates::{CertificateExpiry, CertificateSource};
pub use gauges::{GaugeShare, Gauges, UpstreamGauge};
pub use layout::{Header, MasterSection, RegionState, Slot, SlotState, LAYOUT_VERSION, MAGIC};
pub use reader::{ReadError, Reader};
pub use snapshot::{SlotValues, Snapshot, Totals};
pub use view::{Liveness, RegionView};
pub use writer::{CreateError, Region};

/// Milliseconds since the Unix epoch, the unit of every timestamp in the region.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True when a process with this pid exists (signal 0 probes without sending).
pub fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid == 0 {
        return false;
    }
    // Signal 0 performs only the existence and permission checks.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}
