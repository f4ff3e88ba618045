//! A hashed timer wheel for connection deadlines. Re-arming a connection (which
//! happens on every request) only writes its deadline field; the wheel is touched
//! when a deadline moves earlier than the entry already in it, and stale entries
//! are recognised and dropped when their slot comes round.

use std::time::{Duration, Instant};

/// Granularity of every timeout.
pub const TICK: Duration = Duration::from_millis(100);
const SLOTS: usize = 1024;

pub struct TimerWheel {
    start: Instant,
    slots: Vec<Vec<(u64, u64)>>,
    /// The next tick whose slot has not been processed yet.
    next: u64,
}

impl TimerWheel {
    pub fn new(now: Instant) -> Self {
        TimerWheel { start: now, slots: (0..SLOTS).map(|_| Vec::new()).collect(), next: 0 }
    }

    pub fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as u64
    }

    /// The tick `d` from now, rounded up so a timeout never fires early.
    pub fn deadline(&self, now: Instant, d: Duration) -> u64 {
        self.tick_of(now) + (d.as_millis().div_ceil(TICK.as_millis()) as u64).max(1)
    }

    /// Files `token` under `tick`.
    pub fn schedule(&mut self, token: u64, tick: u64) {
        let tick = tick.max(self.next);
        self.slots[(tick % SLOTS as u64) as usize].push((token, tick));
    }

    /// Moves the wheel to `now`, handing every (token, tick) entry that came due to
    /// `expired`. An entry filed for a later lap stays where it is.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<(u64, u64)>) {
        let now_tick = self.tick_of(now);
        // After a long stall one full lap visits every slot.
        let first = self.next.max(now_tick.saturating_sub(SLOTS as u64 - 1));
        for tick in first..=now_tick {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].1 <= now_tick {
                    expired.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.next = now_tick + 1;
    }

    /// Milliseconds until the next tick boundary: how long epoll may sleep.
    pub fn until_next_tick(&self, now: Instant) -> i32 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        let tick = TICK.as_millis();
        (tick - elapsed % tick) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_time_and_not_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let d = w.deadline(t0, Duration::from_millis(250));
        w.schedule(7, d);
        let far = w.deadline(t0, Duration::from_secs(200)); // beyond one lap
        w.schedule(9, far);
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_millis(200), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out, vec![(7, d)]);
        out.clear();
        w.advance(t0 + Duration::from_secs(150), &mut out);
        assert!(out.is_empty(), "an entry for a later lap must wait");
        w.advance(t0 + Duration::from_secs(201), &mut out);
        assert_eq!(out, vec![(9, far)]);
    }
}
