//! Typed access to a mapped region, shared by the read-write [`crate::Region`]
//! and the read-only [`crate::Reader`]: both are bytes that were validated (or
//! initialised) to hold a complete region, and everything else follows from the
//! offsets in the header.

use crate::layout::{
    Header, Host, InterfaceEntry, LimitStats, MasterSection, RegionState, Slot, UpstreamStats,
    LIMIT_INFO_SIZE, LIMIT_NAME_SIZE,
};
use crate::{pid_alive, unix_millis};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{fence, AtomicU64};

/// A master stamps its heartbeat every second; this much silence means it is gone.
pub const STALE_AFTER_MS: u64 = 5_000;

/// Whether the master that owns a region is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// The master last showed life at this time.
    Stale {
        since_unix_ms: u64,
    },
}

pub trait RegionView {
    /// The mapped bytes; implementors guarantee they hold a complete region
    /// (validated when opened, or initialised when created).
    fn bytes(&self) -> &[u8];
    fn path(&self) -> &Path;

    fn header(&self) -> &Header {
        // SAFETY: a complete region starts with a Header; mappings are page
        // aligned; every field that changes is an atomic.
        unsafe { &*(self.bytes().as_ptr() as *const Header) }
    }

    fn master(&self) -> &MasterSection {
        // SAFETY: the master offset was validated to lie inside the mapping, on a
        // 64-byte boundary; MasterSection is made only of atomics.
        unsafe { &*(self.bytes().as_ptr().add(self.header().master_offset as usize) as *const MasterSection) }
    }

    fn host(&self) -> &Host {
        // SAFETY: as for master(), for the host section.
        unsafe { &*(self.bytes().as_ptr().add(self.header().host_offset as usize) as *const Host) }
    }

    fn slot_count(&self) -> usize {
        self.header().slot_count as usize
    }

    /// The slot at `index`; an index past `slot_count` is a caller's bug.
    fn slot(&self, index: usize) -> &Slot {
        let h = self.header();
        assert!(index < h.slot_count as usize, "slot {index} out of range");
        let at = h.slots_offset as usize + index * h.slot_size as usize;
        // SAFETY: in range by the assert and the validated sizes; 64-byte aligned;
        // Slot is made only of atomics, safe to share across processes.
        unsafe { &*(self.bytes().as_ptr().add(at) as *const Slot) }
    }

    /// Names of the upstream servers in the upstream section, copied under
    /// the sequence lock so a reload never shows a half-written list. Only
    /// relaxed loads and fences: valid on a read-only mapping.
    fn upstream_names(&self) -> Vec<String> {
        let h = self.header();
        let size = h.upstream_name_size as usize;
        let mut words: Vec<u64> = Vec::new();
        // A rewrite takes microseconds; a master still in the middle of one
        // after a second died there, and its names are unknown.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let before = h.upstream_names_seq.load(Relaxed);
            fence(Acquire);
            if before.is_multiple_of(2) {
                let count = (h.upstream_count.load(Relaxed)).min(h.upstream_capacity) as usize;
                words.clear();
                words.extend(self.upstream_name_words(count).iter().map(|w| w.load(Relaxed)));
                fence(Acquire);
                if h.upstream_names_seq.load(Relaxed) == before {
                    break;
                }
            }
            if std::time::Instant::now() > give_up {
                return Vec::new();
            }
            std::thread::yield_now();
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        text_entries(&bytes, 0, bytes.len() / size.max(1), size)
    }

    /// The first `count` upstream names as atomic words (names are a whole
    /// number of words, on a 64-byte boundary: validate() checked).
    fn upstream_name_words(&self, count: usize) -> &[AtomicU64] {
        let h = self.header();
        let words = count.min(h.upstream_capacity as usize) * h.upstream_name_size as usize / 8;
        // SAFETY: validate() checked that the names lie inside the mapping, start
        // 64-byte aligned and are a multiple of 8 bytes long; shared memory is
        // only ever accessed through atomics here.
        unsafe {
            std::slice::from_raw_parts(
                self.bytes().as_ptr().add(h.upstreams_offset as usize) as *const AtomicU64,
                words,
            )
        }
    }

    /// The certificate table, copied under the sequence lock as the upstream
    /// names are. Entries of a region made before the ACME fields read as
    /// certificates from files.
    fn certificates(&self) -> Vec<crate::certificates::CertificateExpiry> {
        let h = self.header();
        let per_entry = h.certificate_entry_size as usize / 8;
        if per_entry < 2 {
            return Vec::new();
        }
        let mut words: Vec<u64> = Vec::new();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let before = h.upstream_names_seq.load(Relaxed);
            fence(Acquire);
            if before.is_multiple_of(2) {
                let count = (h.certificate_count.load(Relaxed)).min(h.certificate_capacity) as usize;
                words.clear();
                words.extend(self.certificate_words(count).iter().map(|w| w.load(Relaxed)));
                fence(Acquire);
                if h.upstream_names_seq.load(Relaxed) == before {
                    break;
                }
            }
            if std::time::Instant::now() > give_up {
                return Vec::new();
            }
            std::thread::yield_now();
        }
        words.chunks_exact(per_entry).map(crate::certificates::decode).collect()
    }

    /// The first `count` certificate entries as atomic words.
    fn certificate_words(&self, count: usize) -> &[AtomicU64] {
        let h = self.header();
        if h.certificates_offset == 0 {
            return &[];
        }
        let words = count.min(h.certificate_capacity as usize) * h.certificate_entry_size as usize / 8;
        // SAFETY: validate() checked that the table lies inside the mapping,
        // 64-byte aligned, with entries a multiple of 8 bytes; shared memory
        // is only ever accessed through atomics here.
        unsafe {
            std::slice::from_raw_parts(
                self.bytes().as_ptr().add(h.certificates_offset as usize) as *const AtomicU64,
                words,
            )
        }
    }

    /// Every client limit's description as atomic words, [`LIMIT_INFO_SIZE`]
    /// bytes each (none in a region that predates the section).
    fn limit_infos(&self) -> Vec<&[AtomicU64]> {
        let h = self.header();
        if h.limits_offset == 0 {
            return Vec::new();
        }
        let words = h.limit_capacity as usize * LIMIT_INFO_SIZE / 8;
        // SAFETY: validate() checked that the section lies inside the mapping,
        // 64-byte aligned; shared memory is only ever accessed through atomics.
        let all = unsafe {
            std::slice::from_raw_parts(
                self.bytes().as_ptr().add(h.limits_offset as usize) as *const AtomicU64,
                words,
            )
        };
        all.chunks_exact(LIMIT_INFO_SIZE / 8).collect()
    }

    /// The client limits in use, `(index, name, keys in use, keys the table
    /// holds)`, copied under the sequence lock as the upstream names are.
    fn limits(&self) -> Vec<(usize, String, u64, u64)> {
        let h = self.header();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let before = h.upstream_names_seq.load(Relaxed);
            fence(Acquire);
            if before.is_multiple_of(2) {
                let count = h.limit_count.load(Relaxed).min(h.limit_capacity) as usize;
                let copied: Vec<Vec<u64>> = self
                    .limit_infos()
                    .iter()
                    .take(count)
                    .map(|info| info.iter().map(|w| w.load(Relaxed)).collect())
                    .collect();
                fence(Acquire);
                if h.upstream_names_seq.load(Relaxed) == before {
                    return copied
                        .iter()
                        .enumerate()
                        .filter_map(|(i, words)| {
                            let name = crate::text::load(&words[..LIMIT_NAME_SIZE / 8]);
                            let keys = words[LIMIT_NAME_SIZE / 8];
                            (!name.is_empty()).then(|| (i, name, keys, words[LIMIT_NAME_SIZE / 8 + 1]))
                        })
                        .collect();
                }
            }
            if std::time::Instant::now() > give_up {
                return Vec::new();
            }
            std::thread::yield_now();
        }
    }

    /// One slot's client-limit entries (limit_capacity of them; none in a
    /// region that predates the section).
    fn limit_stats(&self, slot: usize) -> &[LimitStats] {
        let h = self.header();
        if h.limits_offset == 0 || slot >= h.slot_count as usize {
            return &[];
        }
        let capacity = h.limit_capacity as usize;
        let at = h.limits_offset as usize
            + capacity * LIMIT_INFO_SIZE
            + slot * capacity * h.limit_entry_size as usize;
        // SAFETY: validate() checked the section lies inside the mapping with
        // entries of exactly LimitStats' size on 64-byte boundaries; the
        // entries are made only of atomics.
        unsafe { std::slice::from_raw_parts(self.bytes().as_ptr().add(at) as *const LimitStats, capacity) }
    }

    /// One slot's upstream entries (upstream_capacity of them).
    fn upstream_stats(&self, slot: usize) -> &[UpstreamStats] {
        let h = self.header();
        assert!(slot < h.slot_count as usize, "slot {slot} out of range");
        let capacity = h.upstream_capacity as usize;
        let names = capacity * h.upstream_name_size as usize;
        let at = h.upstreams_offset as usize + names + slot * capacity * h.upstream_entry_size as usize;
        // SAFETY: validate() checked the section lies inside the mapping with
        // entries of exactly UpstreamStats' size on 64-byte boundaries; the
        // entries are made only of atomics.
        unsafe { std::slice::from_raw_parts(self.bytes().as_ptr().add(at) as *const UpstreamStats, capacity) }
    }

    /// The listen addresses recorded by the master, as text.
    fn listeners(&self) -> Vec<String> {
        let h = self.header();
        text_entries(
            self.bytes(),
            h.listeners_offset as usize,
            h.listener_count as usize,
            h.listener_entry_size as usize,
        )
    }

    /// Whether the server asks to keep its traffic: running, not draining
    /// or stopping (what a health check answers).
    fn serving(&self) -> bool {
        RegionState::from_raw(self.header().state.load(Relaxed)) == Some(RegionState::Running)
    }

    /// Whether the master is gone: it said it stopped, its process no longer
    /// exists, or its heartbeat has been silent too long.
    fn liveness(&self) -> Liveness {
        let h = self.header();
        let heartbeat = h.heartbeat_unix_ms.load(Relaxed);
        let stale = Liveness::Stale { since_unix_ms: heartbeat };
        match RegionState::from_raw(h.state.load(Relaxed)) {
            Some(RegionState::Stopped) => stale,
            _ if !pid_alive(h.master_pid.load(Relaxed)) => stale,
            _ if unix_millis().saturating_sub(heartbeat) > STALE_AFTER_MS => stale,
            _ => Liveness::Live,
        }
    }
}

/// `count` NUL-padded text entries of `size` bytes from `offset` (offsets and
/// sizes were validated when the region was opened).
fn text_entries(bytes: &[u8], offset: usize, count: usize, size: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let entry = &bytes[offset + i * size..offset + (i + 1) * size];
            let end = entry.iter().position(|&b| b == 0).unwrap_or(entry.len());
            String::from_utf8_lossy(&entry[..end]).into_owned()
        })
        .collect()
}

/// Interface names are 16 bytes stored as two atomic words in memory order.
pub fn interface_name(entry: &InterfaceEntry) -> String {
    crate::text::load(&[entry.name[0].load(Relaxed), entry.name[1].load(Relaxed)])
}

pub fn set_interface_name(entry: &InterfaceEntry, name: &str) {
    let mut bytes = [0u8; 16];
    let n = name.len().min(15);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    entry.name[0].store(u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")), Relaxed);
    entry.name[1].store(u64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes")), Relaxed);
}
