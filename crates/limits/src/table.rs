//! One limit's table: a fixed array of buckets, each holding [`WAYS`] client
//! keys with their state, updated by every worker with compare-and-swap on
//! the entry itself (no lock of any kind, so a worker killed mid-update
//! leaves nothing held).
//!
//! A key's rate is a GCRA: the entry keeps its *theoretical arrival time*
//! (TAT), the moment the key's allowance is whole again. A request at `now`
//! moves it to `max(TAT, now) + interval`; it is refused when that lands
//! more than `burst + 1` intervals after `now`. A TAT in the past carries no
//! information, so such an entry (with no connection open) is free to take.
//!
//! A key's bucket is full when all its ways hold keys still owing (a TAT in
//! the future, or connections open). A new key then takes the way seen least
//! recently, preferring one without connections: least recently seen within
//! its bucket, which approximates least recently seen over the table.

use crate::key::ClientKey;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// Entries per bucket.
pub const WAYS: usize = 8;
/// Bytes per bucket.
pub const BUCKET_SIZE: usize = std::mem::size_of::<Bucket>();

/// The low 56 bits of a state word are the TAT in microseconds of
/// CLOCK_MONOTONIC; the high 8 count how often the way changed hands, so an
/// update computed for the way's previous key fails its compare-and-swap.
const TAT_MASK: u64 = (1 << 56) - 1;
const GENERATION_ONE: u64 = 1 << 56;

/// One bucket, laid out as four arrays so that a lookup reads one cache
/// line of keys.
#[repr(C, align(64))]
pub struct Bucket {
    /// The way's key ([`ClientKey`], never 0); 0 for an empty way.
    keys: [AtomicU64; WAYS],
    /// Generation and TAT, see [`TAT_MASK`].
    states: [AtomicU64; WAYS],
    /// When the key last made a request or a connection (microseconds of
    /// CLOCK_MONOTONIC).
    seen: [AtomicU64; WAYS],
    /// The key's connections open now, over every worker.
    conns: [AtomicU32; WAYS],
    _reserved: [u32; WAYS],
}

const _: () = assert!(BUCKET_SIZE == 256);

/// How fast a key may make requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds between two requests at the sustained rate.
    pub interval_us: u64,
    /// Requests above the rate accepted at once.
    pub burst: u32,
    /// Requests over the rate (within the burst) wait their turn instead of
    /// going through at once.
    pub delay: bool,
}

impl Rate {
    /// How far ahead of now a key's TAT may run before it is refused.
    fn ceiling_us(&self) -> u64 {
        self.interval_us.saturating_mul(u64::from(self.burst) + 1)
    }
}

/// What a request's check came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed once this time has passed (`delay = true`, within the burst).
    Delay(Duration),
    /// Over the rate and the burst: the key's next request would be allowed
    /// after this long.
    Refuse {
        retry_after: Duration,
    },
}

/// The outcome of one check, and whether taking a way for the key pushed
/// out another key that still owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked<T> {
    pub outcome: T,
    pub evicted: bool,
}

/// A connection counted against a key, to be given back when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Bucket index times [`WAYS`] plus the way.
    pub entry: u32,
    pub key: ClientKey,
}

/// A key at its connection limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtLimit;

/// A view of one limit's buckets.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    buckets: &'a [Bucket],
}

impl<'a> Table<'a> {
    pub(crate) fn new(buckets: &'a [Bucket]) -> Self {
        debug_assert!(buckets.len().is_power_of_two());
        Table { buckets }
    }

    /// Entries the table has room for.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Counts a request of `key` against `rate` at `now_us`.
    pub fn check_rate(&self, key: ClientKey, rate: &Rate, now_us: u64) -> Checked<Verdict> {
        let Some((bucket, way, evicted)) = self.entry(key, now_us) else {
            // Lost the race for a way four times over: let this one request
            // through rather than refuse a client the table cannot place.
            return Checked { outcome: Verdict::Allow, evicted: false };
        };
        bucket.seen[way].store(now_us, Relaxed);
        let state = &bucket.states[way];
        let mut current = state.load(Acquire);
        let outcome = loop {
            let base = (current & TAT_MASK).max(now_us);
            let next = base.saturating_add(rate.interval_us);
            let ceiling = now_us.saturating_add(rate.ceiling_us());
            if next > ceiling {
                break Verdict::Refuse { retry_after: Duration::from_micros(next - ceiling) };
            }
            let updated = (current & !TAT_MASK) | (next & TAT_MASK);
            match state.compare_exchange_weak(current, updated, AcqRel, Acquire) {
                Ok(_) if rate.delay && base > now_us => {
                    break Verdict::Delay(Duration::from_micros(base - now_us))
                }
                Ok(_) => break Verdict::Allow,
                Err(seen) => current = seen,
            }
        };
        Checked { outcome, evicted }
    }

    /// Counts a connection of `key`, unless it already has `max` open.
    pub fn acquire_connection(
        &self,
        key: ClientKey,
        max: u32,
        now_us: u64,
    ) -> Checked<Result<Held, AtLimit>> {
        let Some((bucket, way, evicted)) = self.entry(key, now_us) else {
            return Checked { outcome: Err(AtLimit), evicted: false };
        };
        bucket.seen[way].store(now_us, Relaxed);
        let conns = &bucket.conns[way];
        let taken = conns.fetch_update(AcqRel, Acquire, |n| (n < max).then_some(n + 1)).is_ok();
        let entry = (self.bucket_index(key) * WAYS + way) as u32;
        Checked { outcome: if taken { Ok(Held { entry, key }) } else { Err(AtLimit) }, evicted }
    }

    /// Gives back a connection counted by [`Table::acquire_connection`]. A
    /// way that has changed hands since (its key pushed out) is left alone.
    pub fn release_connection(&self, held: Held) {
        let (bucket, way) = (held.entry as usize / WAYS, held.entry as usize % WAYS);
        let Some(bucket) = self.buckets.get(bucket) else { return };
        if bucket.keys[way].load(Acquire) != held.key.get() {
            return;
        }
        let _ = bucket.conns[way].fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }

    /// Keys that still owe: a TAT after `now_us`, or connections open.
    pub fn live_keys(&self, now_us: u64) -> u64 {
        let mut live = 0;
        for bucket in self.buckets {
            for way in 0..WAYS {
                if bucket.keys[way].load(Relaxed) != 0 && owes(bucket, way, now_us) {
                    live += 1;
                }
            }
        }
        live
    }

    /// Copies every key's state from `from` (a table of the same size, hashed
    /// with the same key), without its connections: those belong to the
    /// workers of the old table, which give them back there.
    pub(crate) fn copy_from(&self, from: &Table<'_>) {
        for (to, from) in self.buckets.iter().zip(from.buckets) {
            for way in 0..WAYS {
                to.keys[way].store(from.keys[way].load(Relaxed), Relaxed);
                to.states[way].store(from.states[way].load(Relaxed), Relaxed);
                to.seen[way].store(from.seen[way].load(Relaxed), Relaxed);
            }
        }
    }

    fn bucket_index(&self, key: ClientKey) -> usize {
        (key.get() >> 32) as usize & (self.buckets.len() - 1)
    }

    /// The way that holds `key`, taking one for it if none does; None after
    /// losing four races for a way. The flag says another key that still
    /// owed was pushed out.
    fn entry(&self, key: ClientKey, now_us: u64) -> Option<(&'a Bucket, usize, bool)> {
        let bucket = &self.buckets[self.bucket_index(key)];
        let key = key.get();
        for _ in 0..4 {
            if let Some(way) = (0..WAYS).find(|&w| bucket.keys[w].load(Acquire) == key) {
                return Some((bucket, way, false));
            }
            let (way, old) = victim(bucket, now_us);
            let evicted = old != 0 && owes(bucket, way, now_us);
            if bucket.keys[way].compare_exchange(old, key, AcqRel, Acquire).is_ok() {
                // The way is ours: what it held belonged to the old key. A
                // new generation fails any update still computed for it.
                let state = &bucket.states[way];
                let mut current = state.load(Acquire);
                while let Err(seen) = state.compare_exchange_weak(
                    current,
                    (current & !TAT_MASK).wrapping_add(GENERATION_ONE),
                    AcqRel,
                    Acquire,
                ) {
                    current = seen;
                }
                bucket.conns[way].store(0, Relaxed);
                bucket.seen[way].store(now_us, Relaxed);
                return Some((bucket, way, evicted));
            }
        }
        None
    }
}

/// Whether the key in a way still owes: its TAT is ahead, or it has
/// connections open.
fn owes(bucket: &Bucket, way: usize, now_us: u64) -> bool {
    bucket.states[way].load(Relaxed) & TAT_MASK > now_us || bucket.conns[way].load(Relaxed) > 0
}

/// The way a new key takes, and the key it holds now: an empty way, else one
/// whose key owes nothing, else the least recently seen (one without
/// connections if there is any).
fn victim(bucket: &Bucket, now_us: u64) -> (usize, u64) {
    let mut best: Option<(bool, u64, usize)> = None;
    for way in 0..WAYS {
        let key = bucket.keys[way].load(Acquire);
        if key == 0 || !owes(bucket, way, now_us) {
            return (way, key);
        }
        let rank = (bucket.conns[way].load(Relaxed) > 0, bucket.seen[way].load(Relaxed), way);
        if best.is_none_or(|b| rank < b) {
            best = Some(rank);
        }
    }
    let way = best.map_or(0, |(_, _, way)| way);
    (way, bucket.keys[way].load(Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(n: usize) -> Vec<Bucket> {
        // SAFETY: Bucket is atomics and padding, for which all zeroes is
        // the empty state.
        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
    }

    const PER_SECOND_5: Rate = Rate { interval_us: 200_000, burst: 2, delay: false };
    const SECOND: u64 = 1_000_000;

    fn key(n: u64) -> ClientKey {
        ClientKey::from_hash(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    #[test]
    fn burst_then_the_rate() {
        let b = buckets(4);
        let t = Table::new(&b);
        let now = 10 * SECOND;
        for _ in 0..3 {
            assert_eq!(t.check_rate(key(1), &PER_SECOND_5, now).outcome, Verdict::Allow);
        }
        let refused = t.check_rate(key(1), &PER_SECOND_5, now).outcome;
        assert_eq!(refused, Verdict::Refuse { retry_after: Duration::from_millis(200) });
        // Another key is not affected.
        assert_eq!(t.check_rate(key(2), &PER_SECOND_5, now).outcome, Verdict::Allow);
        // One interval later, one more.
        assert_eq!(t.check_rate(key(1), &PER_SECOND_5, now + 200_000).outcome, Verdict::Allow);
        assert!(matches!(t.check_rate(key(1), &PER_SECOND_5, now + 200_000).outcome, Verdict::Refuse { .. }));
    }

    #[test]
    fn delay_spaces_the_burst_at_the_rate() {
        let b = buckets(4);
        let t = Table::new(&b);
        let rate = Rate { delay: true, ..PER_SECOND_5 };
        let now = 10 * SECOND;
        let verdicts: Vec<_> = (0..4).map(|_| t.check_rate(key(1), &rate, now).outcome).collect();
        assert_eq!(
            verdicts[..3],
            [
                Verdict::Allow,
                Verdict::Delay(Duration::from_millis(200)),
                Verdict::Delay(Duration::from_millis(400))
            ]
        );
        assert!(matches!(verdicts[3], Verdict::Refuse { .. }));
    }

    #[test]
    fn connections_counted_and_given_back() {
        let b = buckets(4);
        let t = Table::new(&b);
        let first = t.acquire_connection(key(1), 2, SECOND).outcome.unwrap();
        let second = t.acquire_connection(key(1), 2, SECOND).outcome.unwrap();
        assert_eq!(t.acquire_connection(key(1), 2, SECOND).outcome, Err(AtLimit));
        t.release_connection(first);
        assert!(t.acquire_connection(key(1), 2, SECOND).outcome.is_ok());
        t.release_connection(second);
        assert_eq!(t.live_keys(SECOND), 1);
    }

    #[test]
    fn a_flood_of_new_keys_does_not_free_the_busy_one() {
        // One bucket: every key competes for the same eight ways.
        let b = buckets(1);
        let t = Table::new(&b);
        let rate = Rate { interval_us: SECOND, burst: 0, delay: false };
        let mut now = 100 * SECOND;
        assert_eq!(t.check_rate(key(0), &rate, now).outcome, Verdict::Allow);
        let mut evicted = 0;
        for n in 1..1000 {
            now += 10;
            // The busy key keeps trying, and is refused every time...
            if n % 4 == 0 {
                assert!(matches!(t.check_rate(key(0), &rate, now).outcome, Verdict::Refuse { .. }), "at {n}");
            }
            evicted += u64::from(t.check_rate(key(n), &rate, now).evicted);
        }
        // ...because a way seen four fresh keys ago is never the oldest of eight.
        assert!(evicted > 900);
    }

    #[test]
    fn a_way_that_changed_hands_ignores_the_old_release() {
        let b = buckets(1);
        let t = Table::new(&b);
        let held = t.acquire_connection(key(0), 5, 0).outcome.unwrap();
        // Eight newer keys with connections push key 0, the least recently
        // seen, out.
        for n in 1..=8 {
            assert!(t.acquire_connection(key(n), 5, 10 + n).outcome.is_ok());
        }
        t.release_connection(held);
        let conns: u32 = b[0].conns.iter().map(|c| c.load(Relaxed)).sum();
        assert_eq!(conns, 8);
        assert_eq!(t.live_keys(20), 8);
    }
}
