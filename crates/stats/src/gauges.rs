//! The gauges of a slot (`active`, `http2_active`, and per upstream server
//! `open`, `active` and `down`) are shared by the slot's worker and any older worker of the
//! slot still draining after a reload or an upgrade, each adding its own
//! connections and taking them away again. A worker that dies without taking
//! its part away (SIGKILL, a watchdog kill, a crash) would leave it in the
//! gauges for good, and the master cannot zero them, since the other worker's
//! part is in there too.
//!
//! So every worker also keeps its own part in a [`GaugeShare`]: a small
//! shared mapping the master makes for it just before the fork (anonymous,
//! its descriptor closed at once: no part of the region's ABI, and no file a
//! reader or another process could open). Once the master has reaped a
//! worker, nothing writes its share any more, and [`GaugeShare::give_back`]
//! takes exactly what it still holds out of the slot's gauges.

use crate::layout::{Slot, UpstreamStats};
use crate::view::RegionView;
use memmap2::MmapMut;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Words per upstream server in a share: open, active, down.
const PER_UPSTREAM: usize = 3;
/// Words for the slot's own gauges, before the upstream servers': active,
/// http2_active.
const SLOT_WORDS: usize = 2;

/// A gauge of an upstream server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamGauge {
    Open = 0,
    Active = 1,
    Down = 2,
}

/// One worker's part of its slot's gauges: word 0 is `active`, word 1
/// `http2_active`, then [`PER_UPSTREAM`] words per entry of the region's
/// upstream table.
pub struct GaugeShare {
    map: MmapMut,
}

impl GaugeShare {
    /// A zeroed share with room for `upstream_capacity` servers.
    pub fn new(upstream_capacity: usize) -> io::Result<Self> {
        let words = SLOT_WORDS + PER_UPSTREAM * upstream_capacity;
        let fd = nix::sys::memfd::memfd_create(c"tine-gauge-share", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len((words * 8) as u64)?;
        // SAFETY: a fresh memfd nobody else holds; the mapping is shared with
        // the worker forked next and accessed only through atomics.
        let map = unsafe { MmapMut::map_mut(&file)? };
        // The mapping outlives the descriptor, which closes here.
        Ok(GaugeShare { map })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page aligned and a whole number of u64s long;
        // the worker and the master only ever access it through atomics.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.map.len() / 8) }
    }

    /// Adds `delta` to a word (wrapping, so a share reads as the signed sum of
    /// its changes). One writer, the worker: a load and a store suffice.
    fn bump(&self, word: usize, delta: i64) {
        if let Some(w) = self.words().get(word) {
            w.store(w.load(Relaxed).wrapping_add(delta as u64), Relaxed);
        }
    }

    /// Master: the worker is gone; takes what its share still holds out of
    /// the gauges of `slot` and zeroes the share.
    pub fn give_back(&self, region: &impl RegionView, slot: usize) {
        let words = self.words();
        let take = |gauge: &AtomicU64, word: &AtomicU64| {
            let held = word.swap(0, Relaxed);
            if held != 0 {
                gauge.fetch_sub(held, Relaxed);
            }
        };
        take(&region.slot(slot).active, &words[0]);
        take(&region.slot(slot).http2_active, &words[1]);
        for (server, stats) in region.upstream_stats(slot).iter().enumerate() {
            let base = SLOT_WORDS + PER_UPSTREAM * server;
            let Some(entry) = words.get(base..base + PER_UPSTREAM) else { break };
            take(&stats.open, &entry[UpstreamGauge::Open as usize]);
            take(&stats.active, &entry[UpstreamGauge::Active as usize]);
            take(&stats.down, &entry[UpstreamGauge::Down as usize]);
        }
    }
}

/// A worker's hand on its slot's gauges: every change goes to the slot (what
/// readers see) and to the worker's own share (what the master gives back
/// should the worker die holding it).
#[derive(Clone, Copy)]
pub struct Gauges<'a> {
    slot: &'a Slot,
    upstreams: &'a [UpstreamStats],
    share: &'a GaugeShare,
}

impl<'a> Gauges<'a> {
    pub fn new(slot: &'a Slot, upstreams: &'a [UpstreamStats], share: &'a GaugeShare) -> Self {
        Gauges { slot, upstreams, share }
    }

    /// Client connections opened (positive) or closed (negative).
    pub fn connections(&self, delta: i64) {
        self.slot.active.fetch_add(delta as u64, Relaxed);
        self.share.bump(0, delta);
    }

    /// HTTP/2 connections opened (positive) or closed (negative).
    pub fn http2_connections(&self, delta: i64) {
        self.slot.http2_active.fetch_add(delta as u64, Relaxed);
        self.share.bump(1, delta);
    }

    /// A gauge of the server at `index` of the upstream table.
    pub fn upstream(&self, index: usize, gauge: UpstreamGauge, delta: i64) {
        let Some(stats) = self.upstreams.get(index) else { return };
        let target = match gauge {
            UpstreamGauge::Open => &stats.open,
            UpstreamGauge::Active => &stats.active,
            UpstreamGauge::Down => &stats.down,
        };
        target.fetch_add(delta as u64, Relaxed);
        self.share.bump(SLOT_WORDS + PER_UPSTREAM * index + gauge as usize, delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::Region;

    #[test]
    fn a_dead_workers_share_leaves_the_gauges_and_the_living_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        let region =
            Region::create_with_upstreams(&dir.path().join("r"), 1, &["a".into()], &["s1".into()]).unwrap();
        let capacity = region.upstream_stats(0).len();
        let (old, new) = (GaugeShare::new(capacity).unwrap(), GaugeShare::new(capacity).unwrap());
        let old_hand = Gauges::new(region.slot(0), region.upstream_stats(0), &old);
        let new_hand = Gauges::new(region.slot(0), region.upstream_stats(0), &new);
        old_hand.connections(3);
        old_hand.connections(-1);
        old_hand.http2_connections(2);
        new_hand.http2_connections(1);
        old_hand.upstream(0, UpstreamGauge::Open, 2);
        old_hand.upstream(0, UpstreamGauge::Down, 1);
        new_hand.connections(5);
        new_hand.upstream(0, UpstreamGauge::Open, 1);
        new_hand.upstream(0, UpstreamGauge::Active, 1);
        assert_eq!(region.slot(0).active.load(Relaxed), 7);
        old.give_back(&region, 0);
        assert_eq!(region.slot(0).active.load(Relaxed), 5);
        assert_eq!(region.slot(0).http2_active.load(Relaxed), 1);
        let up = &region.upstream_stats(0)[0];
        assert_eq!((up.open.load(Relaxed), up.active.load(Relaxed), up.down.load(Relaxed)), (1, 1, 0));
        // Given back once: a second reap of the same share changes nothing.
        old.give_back(&region, 0);
        assert_eq!(region.slot(0).active.load(Relaxed), 5);
    }

    #[test]
    fn a_worker_sees_its_share_through_fork() {
        let share = GaugeShare::new(4).unwrap();
        // SAFETY: the test's child only bumps the share and exits at once.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                share.bump(0, 42);
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { nix::libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(share.words()[0].load(Relaxed), 42);
            }
        }
    }
}
