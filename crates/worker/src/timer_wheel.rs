//! A hashed timer wheel for deadlines. A deadline belongs to a client
//! connection (index 0 of its [`ExchangeId`]: the connection itself, and the
//! one exchange an HTTP/1.1 connection holds at a time) or to one of its
//! exchanges (an HTTP/2 stream), and has at most one entry in the wheel, so
//! the wheel holds exactly as many entries as there are live deadlines,
//! however often they are re-armed:
//!
//! - a deadline moved later (every request re-arms) only writes its tick;
//!   the entry, found due early, is filed again for the new tick;
//! - a deadline moved earlier moves its entry;
//! - a closed connection's entry is removed at once.
//!
//! Entries live in a slab and each wheel slot is a doubly linked list
//! through it, so filing, moving and removing are O(1) without allocating
//! once warm.

use crate::token::ExchangeId;
use std::time::{Duration, Instant};

/// Granularity of every timeout.
pub const TICK: Duration = Duration::from_millis(100);
const SLOTS: usize = 1024;
const NIL: u32 = u32::MAX;

/// One connection's deadline: the tick it passes at, and its entry in the
/// wheel (filed at or before that tick), if any.
#[derive(Debug, Default)]
pub struct Deadline {
    tick: u64,
    entry: Option<u32>,
}

impl Deadline {
    /// The tick the deadline passes at.
    pub fn tick(&self) -> u64 {
        self.tick
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: ExchangeId,
    tick: u64,
    prev: u32,
    next: u32,
}

pub struct TimerWheel {
    start: Instant,
    /// Head entry of each slot's list.
    heads: Vec<u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    live: usize,
    /// The next tick whose slot has not been processed yet.
    next: u64,
}

impl TimerWheel {
    pub fn new(now: Instant) -> Self {
        TimerWheel {
            start: now,
            heads: vec![NIL; SLOTS],
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            next: 0,
        }
    }

    pub fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as u64
    }

    /// The tick `d` from now, rounded up so a timeout never fires early.
    pub fn deadline(&self, now: Instant, d: Duration) -> u64 {
        self.tick_of(now) + (d.as_millis().div_ceil(TICK.as_millis()) as u64).max(1)
    }

    /// Entries in the wheel: the number of armed deadlines.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Sets `d`, the deadline of `id`, to pass at `tick`.
    pub fn arm(&mut self, d: &mut Deadline, id: ExchangeId, tick: u64) {
        d.tick = tick;
        match d.entry {
            // Filed no later: it will be filed again for the new tick when due.
            Some(e) if self.entries[e as usize].tick <= tick => {}
            Some(e) => {
                self.unlink(e);
                self.link(e, tick);
            }
            None => d.entry = Some(self.insert(id, tick)),
        }
    }

    /// Removes `d`'s entry: its owner is gone.
    pub fn disarm(&mut self, d: &mut Deadline) {
        if let Some(e) = d.entry.take() {
            self.unlink(e);
            self.release(e);
        }
    }

    /// Moves the wheel to `now` and hands over the owner of every entry that
    /// came due; those entries are gone, and [`TimerWheel::came_due`] decides,
    /// for each, whether its deadline really passed.
    pub fn advance(&mut self, now: Instant, due: &mut Vec<ExchangeId>) {
        let now_tick = self.tick_of(now);
        // After a long stall one full lap visits every slot.
        let first = self.next.max(now_tick.saturating_sub(SLOTS as u64 - 1));
        for tick in first..=now_tick {
            let mut e = self.heads[(tick % SLOTS as u64) as usize];
            while e != NIL {
                let entry = self.entries[e as usize];
                if entry.tick <= now_tick {
                    self.unlink(e);
                    self.release(e);
                    due.push(entry.id);
                }
                e = entry.next;
            }
        }
        self.next = now_tick + 1;
    }

    /// For an owner [`TimerWheel::advance`] handed over: true when `d` has
    /// passed; otherwise it moved later since it was filed, and is filed
    /// again for its tick.
    pub fn came_due(&mut self, d: &mut Deadline, id: ExchangeId, now: Instant) -> bool {
        d.entry = None;
        if d.tick <= self.tick_of(now) {
            return true;
        }
        d.entry = Some(self.insert(id, d.tick));
        false
    }

    /// Milliseconds until the next tick boundary: how long epoll may sleep.
    pub fn until_next_tick(&self, now: Instant) -> i32 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        let tick = TICK.as_millis();
        (tick - elapsed % tick) as i32
    }

    fn insert(&mut self, id: ExchangeId, tick: u64) -> u32 {
        let blank = Entry { id, tick, prev: NIL, next: NIL };
        let e = match self.free.pop() {
            Some(e) => {
                self.entries[e as usize] = blank;
                e
            }
            None => {
                self.entries.push(blank);
                (self.entries.len() - 1) as u32
            }
        };
        self.live += 1;
        self.link(e, tick);
        e
    }

    fn release(&mut self, e: u32) {
        self.free.push(e);
        self.live -= 1;
    }

    /// Files entry `e` under `tick` (never a tick already processed).
    fn link(&mut self, e: u32, tick: u64) {
        let tick = tick.max(self.next);
        let slot = (tick % SLOTS as u64) as usize;
        let head = self.heads[slot];
        self.entries[e as usize] = Entry { tick, prev: NIL, next: head, ..self.entries[e as usize] };
        if head != NIL {
            self.entries[head as usize].prev = e;
        }
        self.heads[slot] = e;
    }

    fn unlink(&mut self, e: u32) {
        let Entry { tick, prev, next, .. } = self.entries[e as usize];
        if prev == NIL {
            self.heads[(tick % SLOTS as u64) as usize] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u64) -> ExchangeId {
        ExchangeId { conn: crate::token::ConnId::new(n as u32, 0), index: 0 }
    }

    #[test]
    fn fires_on_time_and_not_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let (mut a, mut b) = (Deadline::default(), Deadline::default());
        w.arm(&mut a, c(7), w.deadline(t0, Duration::from_millis(250)));
        w.arm(&mut b, c(9), w.deadline(t0, Duration::from_secs(200))); // beyond one lap
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(200), &mut due);
        assert!(due.is_empty());
        let t = t0 + Duration::from_millis(300);
        w.advance(t, &mut due);
        assert_eq!(due, vec![c(7)]);
        assert!(w.came_due(&mut a, c(7), t));
        due.clear();
        w.advance(t0 + Duration::from_secs(150), &mut due);
        assert!(due.is_empty(), "an entry for a later lap must wait");
        let t = t0 + Duration::from_secs(201);
        w.advance(t, &mut due);
        assert_eq!(due, vec![c(9)]);
        assert!(w.came_due(&mut b, c(9), t));
        assert!(w.is_empty());
    }

    #[test]
    fn a_deadline_moved_later_fires_at_its_new_tick_and_earlier_moves_its_entry() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut d = Deadline::default();
        w.arm(&mut d, c(1), w.deadline(t0, Duration::from_secs(1)));
        w.arm(&mut d, c(1), w.deadline(t0, Duration::from_secs(5)));
        let mut due = Vec::new();
        let t = t0 + Duration::from_millis(1100);
        w.advance(t, &mut due);
        assert_eq!(due, vec![c(1)]);
        assert!(!w.came_due(&mut d, c(1), t), "moved later: filed again");
        assert_eq!(w.len(), 1);
        w.arm(&mut d, c(1), w.deadline(t, Duration::from_millis(100)));
        due.clear();
        w.advance(t0 + Duration::from_millis(1300), &mut due);
        assert_eq!(due, vec![c(1)], "moved earlier: fires early");
        assert!(w.came_due(&mut d, c(1), t0 + Duration::from_millis(1300)));
        w.arm(&mut d, c(1), w.deadline(t, Duration::from_secs(1)));
        w.disarm(&mut d);
        assert!(w.is_empty());
        due.clear();
        w.advance(t0 + Duration::from_secs(10), &mut due);
        assert!(due.is_empty(), "a disarmed deadline never fires");
    }

    /// Keep-alive churn: every connection goes idle (long timeout), gets a
    /// request (short header timeout, earlier), is answered (send timeout),
    /// and goes idle again, over and over, while connections come and go.
    /// The wheel never holds more entries than there are connections.
    #[test]
    fn the_wheel_stays_bounded_by_live_deadlines_under_keep_alive_churn() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut conns: Vec<Option<Deadline>> = (0..100).map(|_| Some(Deadline::default())).collect();
        let mut due = Vec::new();
        let timeouts = [Duration::from_secs(60), Duration::from_secs(10), Duration::from_secs(30)];
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step * 7);
            let i = (step * 37 % 100) as usize;
            match &mut conns[i] {
                Some(d) if step % 97 == 0 => {
                    w.disarm(d);
                    conns[i] = None;
                }
                Some(d) => w.arm(d, c(i as u64), w.deadline(now, timeouts[(step % 3) as usize])),
                None => conns[i] = Some(Deadline::default()),
            }
            due.clear();
            w.advance(now, &mut due);
            for &id in &due {
                let i = id.conn.index() as usize;
                if let Some(d) = conns[i].as_mut() {
                    if w.came_due(d, id, now) {
                        conns[i] = None;
                    }
                }
            }
            let armed = conns.iter().flatten().filter(|d| d.entry.is_some()).count();
            assert_eq!(w.len(), armed, "step {step}");
            assert!(w.len() <= 100);
        }
        assert!(w.entries.len() <= 100, "storage never grew past the live deadlines");
    }
}
