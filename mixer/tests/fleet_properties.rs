//! Property test of room leases: random claims, renewals (some lost on the way), releases, Redis
//! data loss and time, with message delays and nodes whose clocks run up to 0.9 % fast or slow,
//! never leave two nodes mixing one room at the same moment, and every new claim of a room has a
//! higher epoch than the one before.
//!
//! The nodes are the real [`Leases`]; Redis is a reference model of the claim, renew and release
//! scripts (`mixer/src/fleet/store.rs`) small enough to check by eye; the scripts themselves run
//! against a real Redis in `fleet.rs`.
//!
//! It has teeth: without the hold after data loss it fails at once, and with clocks 15 % off
//! (beyond what the safety margin covers) it finds the double-mixing window in 2,000 cases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mixer::fleet::{Epoch, Leases};
use proptest::prelude::*;

const LEASE_MS: u64 = 400;
const NODES: usize = 3;
const ROOMS: usize = 2;

/// Redis as the scripts use it; times are real time in µs.
#[derive(Debug, Default)]
struct ModelRedis {
    /// Room → (owner, epoch, lease end).
    rooms: BTreeMap<usize, (usize, Epoch, u64)>,
    generation: Option<u64>,
    counter: u64,
    hold_until: u64,
}

enum ModelClaim {
    /// A new lease (`true`), or the claimant's own live lease renewed.
    Claimed(Epoch, bool),
    Other,
}

impl ModelRedis {
    /// The scripts' `fresh`: a data set without a generation gets one, and holds claims.
    fn fresh(&mut self, now: u64) {
        if self.generation.is_none() {
            self.generation = Some(now / 1000);
            self.hold_until = now + LEASE_MS * 1000;
        }
    }

    fn live(&self, room: usize, now: u64) -> Option<(usize, Epoch)> {
        self.rooms
            .get(&room)
            .filter(|(_, _, end)| now < *end)
            .map(|(node, epoch, _)| (*node, *epoch))
    }

    fn claim(&mut self, node: usize, room: usize, now: u64) -> ModelClaim {
        self.fresh(now);
        if now < self.hold_until {
            return ModelClaim::Other;
        }
        match self.live(room, now) {
            Some((owner, epoch)) if owner == node => {
                self.rooms
                    .insert(room, (node, epoch, now + LEASE_MS * 1000));
                ModelClaim::Claimed(epoch, false)
            }
            Some(_) => ModelClaim::Other,
            None => {
                self.counter += 1;
                let epoch = Epoch {
                    generation: self.generation.unwrap_or_default(),
                    n: self.counter,
                };
                self.rooms
                    .insert(room, (node, epoch, now + LEASE_MS * 1000));
                ModelClaim::Claimed(epoch, true)
            }
        }
    }

    fn renew(&mut self, node: usize, asked: &[(String, Epoch)], now: u64) -> Vec<String> {
        let mut lost = Vec::new();
        for (name, epoch) in asked {
            let room = name.parse::<usize>().expect("room number");
            if self.live(room, now) == Some((node, *epoch)) {
                self.rooms
                    .insert(room, (node, *epoch, now + LEASE_MS * 1000));
            } else {
                lost.push(name.clone());
            }
        }
        lost
    }

    fn release(&mut self, node: usize, room: usize, epoch: Epoch, now: u64) {
        if self.live(room, now) == Some((node, epoch)) {
            self.rooms.remove(&room);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A node claims a room; the request takes `.2` ms to reach Redis, the answer `.3`.
    Claim(usize, usize, u16, u16),
    /// A node renews all it holds, with the same delays; `lost_on_the_way` drops the request.
    Renew(usize, u16, u16, bool),
    /// A node releases a room it holds.
    Release(usize, usize),
    /// A node registers (which, on a fresh data set, starts the hold too).
    Heartbeat,
    /// Redis restarts without its data, taking `.0` ms.
    DataLoss(u16),
    /// Time passes, in ms.
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NODES, 0..ROOMS, 0u16..60, 0u16..60).prop_map(|(n, r, a, b)| Op::Claim(n, r, a, b)),
        3 => (0..NODES, 0u16..60, 0u16..60, any::<bool>()).prop_map(|(n, a, b, l)| Op::Renew(n, a, b, l)),
        1 => (0..NODES, 0..ROOMS).prop_map(|(n, r)| Op::Release(n, r)),
        1 => Just(Op::Heartbeat),
        1 => (1u16..300).prop_map(Op::DataLoss),
        4 => (0u16..120).prop_map(Op::Advance),
    ]
}

/// A node's monotonic clock: real time scaled by its rate (parts per 10,000 off real time).
struct Clock {
    base: Instant,
    rate: i64,
}

impl Clock {
    fn at(&self, real_us: u64) -> Instant {
        let skewed = real_us as i128 * (10_000 + i128::from(self.rate)) / 10_000;
        self.base + Duration::from_micros(u64::try_from(skewed).expect("positive"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_room_is_ever_mixed_by_two_nodes_and_epochs_only_grow(
        rates in proptest::collection::vec(-90i64..=90, NODES),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let base = Instant::now();
        let clocks: Vec<Clock> = rates.iter().map(|&rate| Clock { base, rate }).collect();
        let mut nodes: Vec<Leases> =
            (0..NODES).map(|_| Leases::new(Duration::from_millis(LEASE_MS))).collect();
        let mut redis = ModelRedis::default();
        let mut now: u64 = 0;
        let mut last_epoch: BTreeMap<usize, Epoch> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Claim(node, room, there, back) => {
                    let sent = clocks[node].at(now);
                    now += u64::from(there) * 1000;
                    let answer = redis.claim(node, room, now);
                    now += u64::from(back) * 1000;
                    if let ModelClaim::Claimed(epoch, new) = answer {
                        if new {
                            let previous = last_epoch.insert(room, epoch);
                            prop_assert!(
                                previous.is_none_or(|p| epoch > p),
                                "room {room}: {epoch} after {previous:?}"
                            );
                        }
                        nodes[node].claimed(&room.to_string(), epoch, sent);
                    }
                }
                Op::Renew(node, there, back, lost_on_the_way) => {
                    let asked = nodes[node].to_renew();
                    let sent = clocks[node].at(now);
                    now += u64::from(there) * 1000;
                    if !lost_on_the_way {
                        let lost = redis.renew(node, &asked, now);
                        now += u64::from(back) * 1000;
                        nodes[node].renewed(&asked, &lost, sent);
                    }
                }
                Op::Release(node, room) => {
                    if let Some(epoch) = nodes[node].released(&room.to_string()) {
                        redis.release(node, room, epoch, now);
                    }
                }
                Op::Heartbeat => redis.fresh(now),
                Op::DataLoss(ms) => {
                    redis = ModelRedis::default();
                    now += u64::from(ms) * 1000;
                }
                Op::Advance(ms) => now += u64::from(ms) * 1000,
            }
            // Holding only ever starts at an event (a claim's or renewal's answer) and only ends
            // with time, so checking after every event checks every moment.
            for room in 0..ROOMS {
                let mixing: Vec<usize> = (0..NODES)
                    .filter(|&n| nodes[n].holds(&room.to_string(), clocks[n].at(now)).is_some())
                    .collect();
                prop_assert!(mixing.len() <= 1, "room {room} mixed by {mixing:?} at {now} us");
            }
        }
    }
}
