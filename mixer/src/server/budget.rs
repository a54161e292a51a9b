//! Where a control message is budgeted: one token bucket per connection for every text message.
//!
//! Audio has its own real-time rate limit; control messages used to have none, except for chat
//! and `create_room`. A client could send `set_mode`, `mute` or `list_rooms` at line rate, and
//! each one reached the room's mixer thread (and was often fanned out to the whole room). Now
//! every text message draws on one budget whose cost per type reflects the work it causes (a
//! `join` builds codecs on a mixer thread and tells the room; a `list_rooms` walks the room
//! directory and sends a roster). What the budget cannot pay for is dropped and answered with
//! `control_rate_limited`, at most once a second, so a flood is never amplified; a client that
//! goes on sending regardless (more than [`CONTROL_FLOOD_DROPS_PER_SECOND`] drops within a
//! second) is closed. A joined client's `leave` is applied even when the budget cannot pay for
//! it: giving a seat back is never refused (see the connection).
//!
//! The numbers are part of the protocol (see "Control budget" in `protocol/README.md`), and live
//! there: [`mixer_protocol::ClientMessage::budget_cost`], [`CONTROL_BUDGET_BURST`] and
//! [`CONTROL_BUDGET_REFILL_PER_SECOND`]; a protocol test checks the spec's table against them.

use std::time::{Duration, Instant};

use mixer_protocol::{
    CONTROL_BUDGET_BURST, CONTROL_BUDGET_REFILL_PER_SECOND, CONTROL_FLOOD_DROPS_PER_SECOND,
};

/// A token bucket: `capacity` tokens at most, refilled continuously at `per_second`.
///
/// It takes `now` as an argument (it never reads the clock), so tests drive it on a virtual
/// clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, per_second: f64) -> TokenBucket {
        TokenBucket {
            tokens: capacity,
            capacity,
            per_second,
            last: None,
        }
    }

    /// Takes `cost` tokens if there are that many; returns whether it did.
    pub fn take(&mut self, cost: u32, now: Instant) -> bool {
        self.refill(now);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.capacity);
        }
        self.last = Some(now);
    }

    /// Whether it holds at least `tokens` at `now` (refilled up to `now`), taking none.
    pub fn holds(&mut self, tokens: u32, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(tokens)
    }

    /// Whether it is full at `now` (refilled up to `now`): as good as a new one.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// Takes one token; see [`TokenBucket::take`].
    pub fn allow(&mut self, now: Instant) -> bool {
        self.take(1, now)
    }
}

/// What the budget says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Paid for: apply it.
    Paid,
    /// Not paid for: drop it and (at most once a second) say `control_rate_limited`.
    Dropped,
    /// Dropped, and the connection has had more than [`CONTROL_FLOOD_DROPS_PER_SECOND`] dropped
    /// within a second: it ignores the budget, so close it.
    Flooding,
}

/// A connection's control budget.
#[derive(Debug, Clone)]
pub struct ControlBudget {
    bucket: TokenBucket,
    /// Start of the current one-second window of drops.
    window: Option<Instant>,
    /// Messages dropped in that window.
    dropped: u32,
}

impl Default for ControlBudget {
    fn default() -> Self {
        ControlBudget {
            bucket: TokenBucket::new(
                f64::from(CONTROL_BUDGET_BURST),
                f64::from(CONTROL_BUDGET_REFILL_PER_SECOND),
            ),
            window: None,
            dropped: 0,
        }
    }
}

impl ControlBudget {
    /// Pays for a message of `cost` tokens received at `now`.
    pub fn pay(&mut self, cost: u32, now: Instant) -> Verdict {
        if self.bucket.take(cost, now) {
            Verdict::Paid
        } else {
            self.drop_one(now)
        }
    }

    /// Counts a dropped message; a flood when there are too many within a second.
    fn drop_one(&mut self, now: Instant) -> Verdict {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.dropped = 0;
            }
        }
        self.dropped += 1;
        if self.dropped > CONTROL_FLOOD_DROPS_PER_SECOND {
            Verdict::Flooding
        } else {
            Verdict::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use mixer_protocol::ClientMessage;

    use super::*;

    #[test]
    fn a_token_bucket_allows_real_time_and_a_burst_but_not_a_flood() {
        let t0 = Instant::now();
        let mut rate = TokenBucket::new(50.0, 55.0);
        // Real time for 10 s: every frame passes.
        assert!((0..500u32).all(|k| rate.allow(t0 + Duration::from_millis(20) * k)));
        // A 1 s stall, then the backlog arrives at once: the bucket refilled and absorbs it.
        let later = t0 + Duration::from_secs(11);
        assert!((0..50).all(|_| rate.allow(later)));
        // A flood at 10x real time: about one frame in ten passes.
        let mut passed = 0;
        for k in 0..1000u32 {
            if rate.allow(later + Duration::from_millis(2) * k) {
                passed += 1;
            }
        }
        assert!((100..=130).contains(&passed), "{passed} of 1000 passed");
    }

    #[test]
    fn a_flood_of_any_control_type_is_held_to_the_refill_rate() {
        let messages = [
            ClientMessage::Ping { id: None },
            ClientMessage::SetMode {
                mode: mixer_protocol::Mode::Talk,
            },
            ClientMessage::ListRooms,
            ClientMessage::MuteRoom { muted: true },
        ];
        for message in messages {
            let t0 = Instant::now();
            let mut budget = ControlBudget::default();
            let cost = message.budget_cost();
            // Ten seconds of a message every millisecond: 10,000 attempts.
            let passed = (0..10_000u32)
                .filter(|k| {
                    budget.pay(cost, t0 + Duration::from_millis(u64::from(*k))) == Verdict::Paid
                })
                .count() as f64;
            let expected = f64::from(CONTROL_BUDGET_BURST + 10 * CONTROL_BUDGET_REFILL_PER_SECOND)
                / f64::from(cost);
            assert!(
                (passed - expected).abs() <= 2.0,
                "{message:?} (cost {cost}): {passed} passed, expected about {expected}"
            );
        }
    }

    #[test]
    fn a_normal_session_never_hits_the_budget() {
        // Join, set the mode, a push-to-talk press and release every second for a minute with
        // a chat message and a ping every five seconds, then leave.
        let t0 = Instant::now();
        let mut budget = ControlBudget::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pay = |cost: u32, ms: u64| budget.pay(cost, at(ms)) == Verdict::Paid;
        // A lobby: list the rooms, create one, look at it, join it, pick a mode.
        assert!(pay(5, 0) && pay(10, 1) && pay(2, 2) && pay(5, 3) && pay(5, 4));
        for second in 0..60u64 {
            assert!(pay(1, 1000 * second + 10));
            assert!(pay(1, 1000 * second + 600));
            if second % 5 == 0 {
                assert!(pay(1, 1000 * second + 700));
                assert!(pay(1, 1000 * second + 800));
            }
        }
        assert!(pay(5, 60_000));
    }

    #[test]
    fn a_connection_that_ignores_the_budget_is_called_a_flood() {
        let t0 = Instant::now();
        let mut budget = ControlBudget::default();
        let at = |us: u64| t0 + Duration::from_micros(us);
        // Spend the burst, then 500 drops in one second are tolerated...
        for k in 0..u64::from(CONTROL_BUDGET_BURST) {
            assert_eq!(budget.pay(1, at(k)), Verdict::Paid);
        }
        let drops: Vec<Verdict> = (0..u64::from(CONTROL_FLOOD_DROPS_PER_SECOND))
            .map(|k| budget.pay(1, at(100 + k)))
            .collect();
        assert!(drops.iter().all(|v| *v == Verdict::Dropped));
        // ...the next one in the same second is a flood.
        assert_eq!(budget.pay(1, at(1_000)), Verdict::Flooding);
        // A client that slows down starts a new window: a few drops are just drops.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(budget.pay(1, later), Verdict::Paid);
        for _ in 0..CONTROL_BUDGET_BURST {
            budget.pay(1, later);
        }
        assert_eq!(budget.pay(1, later), Verdict::Dropped);
    }
}
