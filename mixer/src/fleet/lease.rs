//! A node's local view of the room leases it holds: each lease's fencing epoch and the local
//! deadline at which the node must stop mixing the room unless a renewal succeeded since.
//!
//! Sans-IO, like the engine: it never reads the clock or talks to Redis; the caller passes the
//! time and reports what Redis answered.
//!
//! # Drive contract
//!
//! 1. **Claim.** Read the clock, *then* send the claim ([`super::Fleet::claim`]); on
//!    `Claimed { epoch }` call [`Leases::claimed`] with the time read before sending.
//! 2. **Renew**, every [`super::RENEW_INTERVAL`]: take [`Leases::to_renew`], read the clock, send
//!    it ([`super::Fleet::renew`]); on an answer call [`Leases::renewed`] with the rooms Redis
//!    reported lost and the time read before sending, and stop mixing the rooms it returns. On
//!    an error do nothing: the deadlines stay where they were, which is the point.
//! 3. **Before mixing**, at every tick (or when [`Leases::poll_timeout`] passes): call
//!    [`Leases::expire`] and stop mixing every room it returns; [`Leases::holds`] answers for
//!    one room.
//! 4. **Release**: call [`Leases::released`] (the room stops being mixed here), then release it
//!    in Redis ([`super::Fleet::release`]).
//!
//! Reading the clock before sending matters: Redis starts a lease's countdown when it runs the
//! command, never earlier than the send, so a deadline measured from the send is never later
//! than the lease's end in Redis (up to the margin's allowance for clock rates; see the
//! [module docs](super)).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::safety_margin;

/// A room lease's fencing epoch: it grows with every new claim of the room, and with every loss
/// of Redis's data (the generation), so a later owner always holds a larger epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    /// The generation of Redis's data set: Redis's clock, in ms, when the fleet first claimed a
    /// room in it. Compared first.
    pub generation: u64,
    /// The fleet-wide claim counter within the generation.
    pub n: u64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.generation, self.n)
    }
}

/// One held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    epoch: Epoch,
    deadline: Instant,
}

/// The room leases a node holds, with their local deadlines.
#[derive(Debug, Clone)]
pub struct Leases {
    lease: Duration,
    margin: Duration,
    held: BTreeMap<String, Held>,
}

impl Leases {
    /// An empty table for leases of `lease` (the fleet's room lease), with the
    /// [`safety_margin`] for it.
    pub fn new(lease: Duration) -> Leases {
        Leases {
            lease,
            margin: safety_margin(lease),
            held: BTreeMap::new(),
        }
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The safety margin: a deadline is the claim or renewal's send time plus
    /// `lease - margin`.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Records a successful claim of `room` sent at `sent`. A claim of a room already held (the
    /// claim script renews a node's own lease) replaces the entry.
    pub fn claimed(&mut self, room: &str, epoch: Epoch, sent: Instant) {
        let deadline = self.deadline_from(sent);
        self.held.insert(room.to_owned(), Held { epoch, deadline });
    }

    /// What to renew now: every held room with its epoch.
    pub fn to_renew(&self) -> Vec<(String, Epoch)> {
        self.held
            .iter()
            .map(|(room, held)| (room.clone(), held.epoch))
            .collect()
    }

    /// Records the answer to a renewal of `asked`, sent at `sent`: the rooms in `lost` were not
    /// renewed (another node owns them, or Redis lost them), the others were. Returns the rooms
    /// lost, which must stop being mixed now.
    ///
    /// An entry whose epoch changed since the renewal was sent (released and claimed again in
    /// between) is left alone: the answer was about the old lease.
    pub fn renewed(
        &mut self,
        asked: &[(String, Epoch)],
        lost: &[String],
        sent: Instant,
    ) -> Vec<String> {
        let deadline = self.deadline_from(sent);
        let mut stopped = Vec::new();
        for (room, epoch) in asked {
            let Some(held) = self.held.get_mut(room) else {
                continue;
            };
            if held.epoch != *epoch {
                continue;
            }
            if lost.contains(room) {
                self.held.remove(room);
                stopped.push(room.clone());
            } else {
                // max: an answer to an older renewal arriving late must not pull it back.
                held.deadline = held.deadline.max(deadline);
            }
        }
        stopped
    }

    /// Forgets `room` (released, or given up); returns its epoch if it was held.
    pub fn released(&mut self, room: &str) -> Option<Epoch> {
        self.held.remove(room).map(|held| held.epoch)
    }

    /// Removes and returns every lease whose local deadline is at or before `now`: those rooms
    /// must stop being mixed.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Epoch)> {
        let expired: Vec<(String, Epoch)> = self
            .held
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(room, held)| (room.clone(), held.epoch))
            .collect();
        for (room, _) in &expired {
            self.held.remove(room);
        }
        expired
    }

    /// The epoch of `room` if this node may still mix it at `now`.
    pub fn holds(&self, room: &str, now: Instant) -> Option<Epoch> {
        self.held
            .get(room)
            .filter(|held| now < held.deadline)
            .map(|held| held.epoch)
    }

    /// The local deadline of `room`, if held.
    pub fn deadline(&self, room: &str) -> Option<Instant> {
        self.held.get(room).map(|held| held.deadline)
    }

    /// The earliest deadline: when [`Leases::expire`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.values().map(|held| held.deadline).min()
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn deadline_from(&self, sent: Instant) -> Instant {
        // new() makes margin < lease for any lease of 22 ms or more; a shorter one gives a
        // deadline at the send itself: never mixed, which is safe.
        sent + self.lease.saturating_sub(self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(3000);

    fn epoch(n: u64) -> Epoch {
        Epoch { generation: 1, n }
    }

    #[test]
    fn a_deadline_is_the_send_time_plus_the_lease_less_the_margin() {
        let t0 = Instant::now();
        let mut leases = Leases::new(LEASE);
        assert_eq!(leases.margin(), Duration::from_millis(51));
        leases.claimed("r", epoch(1), t0);
        let deadline = t0 + Duration::from_millis(2949);
        assert_eq!(leases.deadline("r"), Some(deadline));
        assert_eq!(leases.poll_timeout(), Some(deadline));
        assert_eq!(
            leases.holds("r", deadline - Duration::from_millis(1)),
            Some(epoch(1))
        );
        assert_eq!(leases.holds("r", deadline), None);
        assert!(
            leases
                .expire(deadline - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(leases.expire(deadline), vec![("r".to_owned(), epoch(1))]);
        assert!(leases.is_empty());
    }

    #[test]
    fn renewals_extend_lost_rooms_stop_and_stale_answers_are_ignored() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut leases = Leases::new(LEASE);
        leases.claimed("a", epoch(1), t0);
        leases.claimed("b", epoch(2), t0);
        let asked = leases.to_renew();
        assert_eq!(asked.len(), 2);
        let stopped = leases.renewed(&asked, &["b".to_owned()], t0 + second);
        assert_eq!(stopped, vec!["b".to_owned()]);
        assert_eq!(
            leases.deadline("a"),
            Some(t0 + second + LEASE - leases.margin())
        );
        assert_eq!(leases.deadline("b"), None);
        // An older renewal's answer arriving late does not pull the deadline back.
        leases.renewed(&asked, &[], t0);
        assert_eq!(
            leases.deadline("a"),
            Some(t0 + second + LEASE - leases.margin())
        );
        // Released and claimed again (a new epoch) while a renewal of the old one was in
        // flight: the answer about the old lease changes nothing.
        leases.released("a");
        leases.claimed("a", epoch(7), t0 + 2 * second);
        let stopped = leases.renewed(&asked, &["a".to_owned()], t0 + 2 * second);
        assert!(stopped.is_empty());
        assert_eq!(leases.holds("a", t0 + 3 * second), Some(epoch(7)));
    }

    #[test]
    fn epochs_order_by_generation_first() {
        let old = Epoch {
            generation: 5,
            n: 900,
        };
        let after_data_loss = Epoch {
            generation: 6,
            n: 1,
        };
        assert!(after_data_loss > old);
        assert_eq!(old.to_string(), "5.900");
    }
}
