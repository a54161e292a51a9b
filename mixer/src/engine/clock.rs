//! The mix clock: absolute tick deadlines and the catch-up policy.
//!
//! Tick `k` is due at `start + k * period`. Deadlines are computed from the start, never by adding
//! a period to the time a tick actually ran, so scheduling delays never accumulate into drift.
//!
//! Catch-up policy: when the caller is late by fewer than `max_catch_up` periods, the missed
//! ticks still run, one per call, back to back (each produces a frame, so listeners get a short
//! burst and no gap). When it is later than that (the thread was starved or the machine
//! suspended), the missed ticks are skipped: the clock jumps to the current slot and reports how
//! many ticks it skipped. Running them all would only deliver stale audio late.

use std::time::{Duration, Instant};

/// Absolute-deadline tick schedule for one room.
#[derive(Debug, Clone)]
pub struct TickClock {
    start: Instant,
    period: Duration,
    next_index: u64,
    max_catch_up: u64,
}

/// What advancing the clock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickAdvance {
    /// Index of the tick that should run now.
    pub index: u64,
    /// Ticks skipped before it because the caller was too late to run them.
    pub skipped: u64,
}

impl TickClock {
    /// A clock whose first tick is due at `start`.
    pub fn new(start: Instant, period: Duration, max_catch_up: u32) -> TickClock {
        TickClock {
            start,
            period,
            next_index: 0,
            max_catch_up: u64::from(max_catch_up.max(1)),
        }
    }

    /// When the next tick is due.
    pub fn deadline(&self) -> Instant {
        self.start + self.period_times(self.next_index)
    }

    /// The tick period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Claims the next tick if it is due at `now`, applying the catch-up policy.
    pub fn advance(&mut self, now: Instant) -> Option<TickAdvance> {
        if now < self.deadline() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.start);
        let current_slot = (elapsed.as_nanos() / self.period.as_nanos().max(1)) as u64;
        let behind = current_slot - self.next_index;
        let skipped = if behind >= self.max_catch_up {
            let skipped = behind;
            self.next_index = current_slot;
            skipped
        } else {
            0
        };
        let index = self.next_index;
        self.next_index += 1;
        Some(TickAdvance { index, skipped })
    }

    fn period_times(&self, n: u64) -> Duration {
        // u32 ticks of 20 ms is 2.7 years; saturate rather than wrap beyond that.
        self.period
            .checked_mul(u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(20);

    #[test]
    fn deadlines_are_absolute_and_do_not_drift() {
        let t0 = Instant::now();
        let mut clock = TickClock::new(t0, P, 3);
        // Run each tick 7 ms late: the next deadline must still be on the 20 ms grid.
        for k in 0..1000u32 {
            let now = t0 + P * k + Duration::from_millis(7);
            let adv = clock.advance(now).expect("due");
            assert_eq!(
                adv,
                TickAdvance {
                    index: u64::from(k),
                    skipped: 0
                }
            );
            assert_eq!(clock.deadline(), t0 + P * (k + 1));
        }
    }

    #[test]
    fn not_due_before_deadline() {
        let t0 = Instant::now();
        let mut clock = TickClock::new(t0, P, 3);
        assert!(clock.advance(t0).is_some());
        assert!(clock.advance(t0 + Duration::from_millis(19)).is_none());
        assert!(clock.advance(t0 + P).is_some());
    }

    #[test]
    fn small_lateness_catches_up_tick_by_tick() {
        let t0 = Instant::now();
        let mut clock = TickClock::new(t0, P, 3);
        let now = t0 + P * 2 + Duration::from_millis(1);
        let ran: Vec<_> = std::iter::from_fn(|| clock.advance(now)).collect();
        assert_eq!(ran.len(), 3);
        assert!(ran.iter().all(|a| a.skipped == 0));
        assert_eq!(clock.deadline(), t0 + P * 3);
    }

    #[test]
    fn large_lateness_skips_to_the_current_slot() {
        let t0 = Instant::now();
        let mut clock = TickClock::new(t0, P, 3);
        clock.advance(t0);
        let now = t0 + P * 50 + Duration::from_millis(5);
        let adv = clock.advance(now).expect("due");
        assert_eq!(
            adv,
            TickAdvance {
                index: 50,
                skipped: 49
            }
        );
        assert!(clock.advance(now).is_none());
        assert_eq!(clock.deadline(), t0 + P * 51);
    }
}
