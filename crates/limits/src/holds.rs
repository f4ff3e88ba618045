//! The connections a worker has counted against keys, kept where the master
//! can see them. A worker that dies (SIGKILL, a crash) cannot give back what
//! it counted, so each one writes every connection it holds into a
//! [`HoldShare`], an anonymous shared mapping the master makes for it just
//! before the fork (as for the statistics gauges); once the master has reaped
//! it, [`HoldShare::give_back`] releases whatever the share still records.

use crate::region::LimitsRegion;
use crate::table::Held;
use crate::ClientKey;
use memmap2::MmapMut;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Which record of a share a connection's hold is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldId(u32);

/// Records of (table, entry, key): two words each, the first 0 when free.
pub struct HoldShare {
    map: Option<MmapMut>,
}

impl HoldShare {
    /// Room for `capacity` holds (none: a share that records nothing).
    pub fn new(capacity: usize) -> io::Result<Self> {
        if capacity == 0 {
            return Ok(HoldShare { map: None });
        }
        let fd = nix::sys::memfd::memfd_create(c"tine-limit-holds", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len((capacity * 16) as u64)?;
        // SAFETY: a fresh memfd nobody else holds; the mapping is shared with
        // the worker forked next and accessed only through atomics.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(HoldShare { map: Some(map) })
    }

    fn words(&self) -> &[AtomicU64] {
        match &self.map {
            // SAFETY: page aligned, a whole number of u64s, accessed only
            // through atomics by the worker and the master.
            Some(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const AtomicU64, map.len() / 8)
            },
            None => &[],
        }
    }

    fn capacity(&self) -> usize {
        self.words().len() / 2
    }

    /// Master: the worker is gone; gives back every hold it still recorded
    /// in `region` (the region it was forked with) and clears the share.
    pub fn give_back(&self, region: &LimitsRegion) {
        for record in self.words().chunks_exact(2) {
            let first = record[0].swap(0, Relaxed);
            if first == 0 {
                continue;
            }
            let table = (first >> 32) as usize - 1;
            let held = Held { entry: first as u32, key: ClientKey::from_hash(record[1].load(Relaxed)) };
            if let Some(table) = region.table(table) {
                table.release_connection(held);
            }
        }
    }
}

/// The worker's side of its share: which records are free.
pub struct Holds<'a> {
    share: &'a HoldShare,
    free: Vec<u32>,
    next: u32,
}

impl<'a> Holds<'a> {
    pub fn new(share: &'a HoldShare) -> Self {
        Holds { share, free: Vec::new(), next: 0 }
    }

    /// Records a hold on table `table`; None when the share is full (the
    /// hold is then given back only by the connection's close).
    pub fn record(&mut self, table: usize, held: Held) -> Option<HoldId> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if (self.next as usize) < self.share.capacity() => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        let words = self.share.words();
        let at = index as usize * 2;
        words[at + 1].store(held.key.get(), Relaxed);
        words[at].store(((table as u64 + 1) << 32) | u64::from(held.entry), Relaxed);
        Some(HoldId(index))
    }

    /// The connection closed and gave its hold back itself.
    pub fn forget(&mut self, id: HoldId) {
        if let Some(word) = self.share.words().get(id.0 as usize * 2) {
            word.store(0, Relaxed);
            self.free.push(id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::TableSpec;

    #[test]
    fn a_dead_workers_holds_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec = [TableSpec { name: "conn".into(), max_keys: 64 }];
        let region = LimitsRegion::create(&dir.path().join("l"), &spec, None).unwrap();
        let table = region.table(0).unwrap();
        let key = region.hasher().value(b"client");
        let share = HoldShare::new(4).unwrap();
        let mut holds = Holds::new(&share);
        let a = table.acquire_connection(key, 2, 1).outcome.unwrap();
        let b = table.acquire_connection(key, 2, 1).outcome.unwrap();
        let id_a = holds.record(0, a).unwrap();
        holds.record(0, b).unwrap();
        // The first closes normally; the worker then dies holding the second.
        table.release_connection(a);
        holds.forget(id_a);
        assert!(table.acquire_connection(key, 2, 1).outcome.is_ok());
        assert!(table.acquire_connection(key, 2, 1).outcome.is_err());
        share.give_back(&region);
        assert!(table.acquire_connection(key, 2, 1).outcome.is_ok());
        assert!(table.acquire_connection(key, 2, 1).outcome.is_err());
    }
}
