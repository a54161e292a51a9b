//! The fleet's coordination layer (`mixer::fleet`) against a real Redis: each test starts a
//! private `redis-server` (see `common::private_redis`) and runs two or three nodes' handles on
//! it over real sockets. Leases are 600 ms, renewed every 100 ms: a test starved of CPU by the
//! rest of the suite for up to half a second still renews in time, and every test takes a few
//! seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mixer::fleet::{
    Claim, Epoch, Fleet, FleetConfig, FleetError, Leases, Load, NodeId, NodeState, place,
};

use crate::common::private_redis::PrivateRedis;

const LEASE: Duration = Duration::from_millis(600);
/// How often the tests' nodes renew.
const RENEW: Duration = Duration::from_millis(100);
/// No loop in these tests runs longer than this.
const GIVE_UP: Duration = Duration::from_secs(10);

async fn node(redis: &PrivateRedis, id: &str) -> Fleet {
    let mut config = FleetConfig::new(redis.url());
    config.lease = LEASE;
    config.timeout = Duration::from_millis(200);
    Fleet::connect(
        config,
        NodeId::new(id).expect("node id"),
        format!("ws://{id}.test:8080/"),
    )
    .await
    .expect("connecting to the private Redis")
}

fn load(rooms: u32) -> Load {
    Load {
        rooms,
        capacity: 1000,
        tick_headroom: 1.0,
        ..Load::default()
    }
}

/// Claims `room`, waiting out the hold of a fresh data set; returns the answer (never `Held`)
/// and the time read before the claim that got it.
async fn claim(fleet: &Fleet, room: &str) -> (Claim, Instant) {
    let start = Instant::now();
    loop {
        let sent = Instant::now();
        match fleet.claim(room).await.expect("claim") {
            Claim::Held { retry_after } => {
                assert!(retry_after <= LEASE, "held for {retry_after:?}");
                assert!(start.elapsed() < GIVE_UP, "still held");
                tokio::time::sleep(retry_after.min(Duration::from_millis(50))).await;
            }
            answer => return (answer, sent),
        }
    }
}

fn claimed(answer: &Claim) -> Epoch {
    match answer {
        Claim::Claimed { epoch, .. } => *epoch,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

async fn ids(fleet: &Fleet) -> Vec<String> {
    fleet
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id.to_string())
        .collect()
}

/// Holds `leases` as a node does: renews every [`RENEW`] and checks the local deadlines every
/// 5 ms, also while a renewal is in flight (as the server's mixer threads check them whatever the
/// renewal task is doing), until every lease is lost or expired, or `until`. Returns when each
/// room stopped being mixed (its local deadline, or when a renewal reported it lost), and when
/// the last renewal that succeeded was sent.
async fn hold(
    fleet: &Fleet,
    leases: &mut Leases,
    until: Instant,
) -> (BTreeMap<String, Instant>, Option<Instant>) {
    fn expire(leases: &mut Leases, stopped: &mut BTreeMap<String, Instant>) {
        let deadlines: Vec<(String, Option<Instant>)> = leases
            .to_renew()
            .into_iter()
            .map(|(room, _)| {
                let deadline = leases.deadline(&room);
                (room, deadline)
            })
            .collect();
        let expired = leases.expire(Instant::now());
        for (room, deadline) in deadlines {
            if expired.iter().any(|(r, _)| *r == room) {
                stopped.insert(room, deadline.expect("held"));
            }
        }
    }
    let mut stopped = BTreeMap::new();
    let mut last_renewal = None;
    while !leases.is_empty() && Instant::now() < until {
        expire(leases, &mut stopped);
        let asked = leases.to_renew();
        let sent = Instant::now();
        let next = sent + RENEW;
        let renewal = fleet.renew(&asked);
        tokio::pin!(renewal);
        let answer = loop {
            tokio::select! {
                answer = &mut renewal => break answer,
                () = tokio::time::sleep(Duration::from_millis(5)) => expire(leases, &mut stopped),
            }
        };
        if let Ok(lost) = answer {
            last_renewal = Some(sent);
            for room in leases.renewed(&asked, &lost, sent) {
                stopped.insert(room, Instant::now());
            }
        }
        while Instant::now() < next && !leases.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
            expire(leases, &mut stopped);
        }
    }
    (stopped, last_renewal)
}

/// Nodes `a`, `b` and `c` on `redis`.
async fn three_nodes(redis: &PrivateRedis) -> [Fleet; 3] {
    [
        node(redis, "a").await,
        node(redis, "b").await,
        node(redis, "c").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_list_each_other_and_vanish_after_their_lease() {
    let redis = PrivateRedis::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let c = node(&redis, "c").await;
    for fleet in [&a, &b] {
        fleet
            .heartbeat(NodeState::Active, load(0))
            .await
            .expect("register");
    }
    let c_last = Instant::now();
    c.heartbeat(NodeState::Active, load(0))
        .await
        .expect("register");
    b.heartbeat(NodeState::Draining, load(4))
        .await
        .expect("renew");
    for fleet in [&a, &b, &c] {
        assert_eq!(ids(fleet).await, ["a", "b", "c"]);
    }
    let nodes = c.nodes().await.expect("nodes");
    assert_eq!(nodes[1].url, "ws://b.test:8080/");
    assert_eq!(nodes[1].state, NodeState::Draining);
    assert_eq!(nodes[1].load.rooms, 4);
    assert_eq!(nodes[1].version, env!("CARGO_PKG_VERSION"));

    // c stops renewing; a and b go on: c is gone once its lease has passed, not before.
    let mut gone_after = None;
    // Three leases, or up to ten on a machine so loaded that Redis's expiry runs late: the
    // point is that c goes, and not before its lease.
    while c_last.elapsed() < 3 * LEASE || (gone_after.is_none() && c_last.elapsed() < 10 * LEASE) {
        a.heartbeat(NodeState::Active, load(0)).await.expect("a");
        b.heartbeat(NodeState::Active, load(0)).await.expect("b");
        let listed = ids(&a).await;
        if listed == ["a", "b"] {
            // Read after the answer: Redis expired c no later than this.
            gone_after.get_or_insert(c_last.elapsed());
        } else {
            assert_eq!(listed, ["a", "b", "c"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = gone_after.expect("c never vanished");
    assert!(
        gone_after >= LEASE,
        "c vanished {gone_after:?} after its last renewal (lease {LEASE:?})"
    );
    // Deregistering takes effect at once.
    b.deregister().await.expect("deregister");
    assert_eq!(ids(&a).await, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_exclusive_and_every_new_claim_has_a_higher_epoch() {
    let redis = PrivateRedis::start();
    let fleets = three_nodes(&redis).await;
    // A fresh data set holds every claim for one lease (see the module docs).
    let first = fleets[0].claim("warm-up").await.expect("claim");
    assert!(
        matches!(first, Claim::Held { retry_after } if retry_after <= LEASE),
        "{first:?}"
    );
    claim(&fleets[0], "warm-up").await;

    let mut last_epoch: Option<Epoch> = None;
    for i in 0..20 {
        let room = format!("room-{i}");
        // Three nodes claim the same room at once, on their own connections.
        let (x, y, z) = tokio::join!(
            fleets[0].claim(&room),
            fleets[1].claim(&room),
            fleets[2].claim(&room)
        );
        let answers = [x.expect("a"), y.expect("b"), z.expect("c")];
        let winners: Vec<usize> = (0..3)
            .filter(|&k| matches!(answers[k], Claim::Claimed { .. }))
            .collect();
        assert_eq!(winners.len(), 1, "{room}: {answers:?}");
        let winner = winners[0];
        let epoch = claimed(&answers[winner]);
        for (k, answer) in answers.iter().enumerate() {
            if k != winner {
                let Claim::OwnedBy(owner) = answer else {
                    panic!("{room}: node {k} got {answer:?}");
                };
                assert_eq!(owner.node, *fleets[winner].node());
                assert_eq!(owner.url, fleets[winner].url());
                assert_eq!(owner.epoch, epoch);
            }
        }
        let owner = fleets[(winner + 1) % 3]
            .owner(&room)
            .await
            .expect("owner")
            .expect("owned");
        assert_eq!(
            (owner.node, owner.epoch),
            (fleets[winner].node().clone(), epoch)
        );
        assert!(
            last_epoch.is_none_or(|last| epoch > last),
            "{epoch} after {last_epoch:?}"
        );

        // Released (only with its own epoch), and claimed again by another node: a higher epoch.
        let stale = Epoch {
            n: epoch.n - 1,
            ..epoch
        };
        assert!(!fleets[winner].release(&room, stale).await.expect("release"));
        let other = (winner + 1) % 3;
        assert!(!fleets[other].release(&room, epoch).await.expect("release"));
        assert!(fleets[winner].release(&room, epoch).await.expect("release"));
        assert_eq!(fleets[winner].owner(&room).await.expect("owner"), None);
        let (again, _) = claim(&fleets[other], &room).await;
        let again = claimed(&again);
        assert!(again > epoch, "{again} after {epoch}");
        last_epoch = Some(again);
    }
    // The cluster-wide room list: every room, each with its owner.
    let rooms = fleets[2].rooms().await.expect("rooms");
    assert_eq!(rooms.len(), 21, "{rooms:?}");
    assert_eq!(rooms[0].room, "room-0");
    assert!(rooms.iter().all(|r| r.owner.url.ends_with(".test:8080/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_renewing_stops_mixing_before_another_node_takes_the_room() {
    let redis = PrivateRedis::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let (answer, sent) = claim(&a, "r").await;
    let epoch_a = claimed(&answer);
    let mut leases = Leases::new(LEASE);
    leases.claimed("r", epoch_a, sent);

    // While a renews, b cannot take the room, for three leases.
    let renewing_until = Instant::now() + 3 * LEASE;
    let mut renewals = 0;
    while Instant::now() < renewing_until {
        let now = Instant::now();
        let asked = leases.to_renew();
        let lost = a.renew(&asked).await.expect("renew");
        assert!(leases.renewed(&asked, &lost, now).is_empty());
        renewals += 1;
        assert!(matches!(
            b.claim("r").await.expect("claim"),
            Claim::OwnedBy(_)
        ));
        tokio::time::sleep(RENEW).await;
    }
    assert!(renewals >= 10);

    // a stops renewing (cut off, or stuck). Its local deadline comes before b's claim succeeds.
    let deadline_a = leases.deadline("r").expect("held");
    // b may start mixing once it has the answer: that is the time to compare.
    let (answer, claimed_at) = loop {
        let answer = b.claim("r").await.expect("claim");
        let answered = Instant::now();
        match answer {
            Claim::OwnedBy(owner) => assert_eq!(owner.node.as_str(), "a"),
            answer => break (answer, answered),
        }
        assert!(answered < deadline_a + GIVE_UP);
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let epoch_b = claimed(&answer);
    assert!(
        deadline_a < claimed_at,
        "a would mix until {:?} after b's claim",
        deadline_a - claimed_at
    );
    eprintln!(
        "a stopped mixing {:?} before b's claim succeeded (margin {:?})",
        claimed_at - deadline_a,
        leases.margin()
    );
    assert!(epoch_b > epoch_a, "{epoch_b} after {epoch_a}");
    assert_eq!(leases.expire(Instant::now()).len(), 1);

    // a's late renewal and release under its old epoch fail; b keeps the room.
    assert_eq!(
        a.renew(&[("r".to_owned(), epoch_a)]).await.expect("renew"),
        ["r"]
    );
    assert!(!a.release("r", epoch_a).await.expect("release"));
    let owner = a.owner("r").await.expect("owner").expect("owned");
    assert_eq!((owner.node.as_str(), owner.epoch), ("b", epoch_b));
    // A claim by the owner itself renews its lease under the same epoch.
    assert_eq!(claimed(&b.claim("r").await.expect("claim")), epoch_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_a_node_stops_mixing_within_its_lease_and_the_fleet_recovers() {
    let mut redis = PrivateRedis::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    a.heartbeat(NodeState::Active, load(3)).await.expect("a");
    b.heartbeat(NodeState::Active, load(0)).await.expect("b");
    let mut leases = Leases::new(LEASE);
    let mut old = BTreeMap::new();
    for room in ["r1", "r2", "r3"] {
        let (answer, sent) = claim(&a, room).await;
        old.insert(room, claimed(&answer));
        leases.claimed(room, claimed(&answer), sent);
    }
    // Renew for a while, then Redis stops: renewals fail, and a stops mixing every room at its
    // local deadline, which is before any lease it held could have lapsed in Redis.
    let (_, last_renewal) = hold(&a, &mut leases, Instant::now() + LEASE).await;
    let last_renewal = last_renewal.expect("renewed before the stop");
    redis.stop();
    let stopped_redis = Instant::now();
    let failure = a
        .renew(&leases.to_renew())
        .await
        .expect_err("Redis is down");
    assert!(
        matches!(
            failure,
            FleetError::Redis { .. } | FleetError::Timeout { .. }
        ),
        "{failure}"
    );
    // Bounded by the operation timeout (200 ms here), never a hang.
    assert!(
        stopped_redis.elapsed() < Duration::from_secs(1),
        "a failure took {:?}",
        stopped_redis.elapsed()
    );
    let (stopped, _) = hold(&a, &mut leases, Instant::now() + 2 * LEASE).await;
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    for (room, at) in &stopped {
        // Redis could let a lease lapse no earlier than the last renewal that reached it (sent
        // at `last_renewal`; later ones failed) plus the lease.
        assert!(
            *at < last_renewal + LEASE,
            "{room} mixed until {:?} after its lease could have lapsed",
            *at - (last_renewal + LEASE)
        );
    }
    assert!(claim_fails(&b).await, "claims fail while Redis is down");

    // Redis comes back, empty (persistence is off). The nodes register again by renewing, and
    // re-claim their rooms through the same calls; nothing is claimed before a lease has passed
    // since the data loss was first seen, and the new epochs are higher.
    tokio::time::sleep(LEASE).await;
    redis.restart();
    let restarted = Instant::now();
    let mut back = false;
    while restarted.elapsed() < GIVE_UP {
        let a_ok = a.heartbeat(NodeState::Active, load(0)).await.is_ok();
        let b_ok = b.heartbeat(NodeState::Active, load(0)).await.is_ok();
        if a_ok && b_ok {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the nodes did not reconnect to Redis");
    let reconnected = restarted.elapsed();
    assert_eq!(ids(&b).await, ["a", "b"]);
    let lost = a
        .renew(
            &old.iter()
                .map(|(r, e)| ((*r).to_owned(), *e))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("renew");
    assert_eq!(lost.len(), 3, "the leases went with Redis's data");
    for (room, epoch) in &old {
        let (answer, _) = claim(&a, room).await;
        let answered = Instant::now();
        let again = claimed(&answer);
        assert!(again > *epoch, "{room}: {again} after {epoch}");
        assert!(
            answered >= restarted + LEASE,
            "{room} claimed {:?} after the restart",
            answered - restarted
        );
    }
    eprintln!(
        "stopped mixing {:?} after the last renewal; reconnected {reconnected:?} after the restart",
        stopped.values().max().map(|t| *t - last_renewal)
    );
}

/// Whether a claim fails outright (Redis unreachable).
async fn claim_fails(fleet: &Fleet) -> bool {
    fleet.claim("anything").await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_redis_restart_cannot_hand_a_room_to_a_second_node_while_its_holder_mixes() {
    let mut redis = PrivateRedis::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let (answer, sent) = claim(&a, "r").await;
    let epoch_a = claimed(&answer);
    let mut leases = Leases::new(LEASE);
    leases.claimed("r", epoch_a, sent);
    hold(&a, &mut leases, Instant::now() + LEASE / 2).await;

    // Redis restarts empty well within the lease: a's lease is gone from Redis while a still
    // holds it locally. b claims the room as fast as it can; a goes on renewing.
    redis.restart();
    let (stopped, b_claim) = tokio::join!(
        async {
            let (stopped, _) = hold(&a, &mut leases, Instant::now() + GIVE_UP).await;
            stopped
        },
        async {
            let start = Instant::now();
            loop {
                if let Ok(Claim::Claimed { epoch, .. }) = b.claim("r").await {
                    // b may start mixing once it has the answer.
                    return (Instant::now(), epoch);
                }
                assert!(start.elapsed() < GIVE_UP);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    );
    let a_stopped = stopped.get("r").copied().expect("a stopped mixing r");
    let (b_claimed, epoch_b) = b_claim;
    assert!(
        a_stopped < b_claimed,
        "a mixed until {:?} after b claimed the room",
        a_stopped - b_claimed
    );
    assert!(epoch_b > epoch_a, "{epoch_b} after {epoch_a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_300_rooms_evenly_over_3_equal_nodes() {
    let redis = PrivateRedis::start();
    let fleets = three_nodes(&redis).await;
    let mut leases: Vec<Leases> = (0..3).map(|_| Leases::new(LEASE)).collect();
    // A fresh data set holds claims for one lease; the registrations are renewed after it.
    claim(&fleets[0], "warm-up").await;
    fleets[0]
        .release(
            "warm-up",
            claimed(&fleets[0].claim("warm-up").await.expect("claim")),
        )
        .await
        .expect("release");

    let started = Instant::now();
    for i in 0..300 {
        // Every 25 rooms, renew what the nodes hold and their registrations, as they would
        // every second: the loop outlasts a lease.
        if i % 25 == 0 {
            for (fleet, leases) in fleets.iter().zip(&mut leases) {
                let now = Instant::now();
                let asked = leases.to_renew();
                let lost = fleet.renew(&asked).await.expect("renew");
                assert!(leases.renewed(&asked, &lost, now).is_empty());
                let rooms = u32::try_from(leases.len()).expect("small");
                fleet
                    .heartbeat(NodeState::Active, load(rooms))
                    .await
                    .expect("heartbeat");
            }
        }
        // Any node may place a room (the one a client reached): each in turn here.
        let placer = &fleets[i % 3];
        let room = format!("room-{i}");
        let nodes = placer.nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 3);
        let target = place(&nodes, &room).expect("a node with room to spare");
        let k = fleets
            .iter()
            .position(|f| *f.node() == target.id)
            .expect("a known node");
        // The chosen node claims the room (after a redirect, in the server) and announces its
        // new load at once.
        let sent = Instant::now();
        let epoch = claimed(&fleets[k].claim(&room).await.expect("claim"));
        leases[k].claimed(&room, epoch, sent);
        let rooms = u32::try_from(leases[k].len()).expect("small");
        fleets[k]
            .heartbeat(NodeState::Active, load(rooms))
            .await
            .expect("announce");
    }
    let took = started.elapsed();
    let rooms = fleets[1].rooms().await.expect("rooms");
    assert_eq!(rooms.len(), 300);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for room in &rooms {
        *per_node.entry(room.owner.node.to_string()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.values().all(|&n| (90..=110).contains(&n)),
        "{per_node:?}"
    );
    eprintln!("placed 300 rooms in {took:?}: {per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_moves_the_lease_atomically_and_its_record_is_taken_once() {
    let redis = PrivateRedis::start();
    let [a, b, c] = three_nodes(&redis).await;
    let (answer, _) = claim(&a, "moving").await;
    let old = claimed(&answer);
    // Only the holder, under its epoch, can hand a room over.
    let stale = Epoch {
        n: old.n + 1000,
        ..old
    };
    assert!(
        !a.hand_off("moving", stale, b.node(), b.url(), "{}")
            .await
            .expect("hand off")
    );
    assert!(
        !c.hand_off("moving", old, b.node(), b.url(), "{}")
            .await
            .expect("hand off")
    );
    assert!(
        a.hand_off("moving", old, b.node(), b.url(), "{\"members\":[]}")
            .await
            .expect("hand off")
    );
    // The lease is b's now, under a higher epoch: a's renewal reports it lost, c is sent to b,
    // and b's own claim takes it up under the same epoch.
    assert_eq!(
        a.renew(&[("moving".to_owned(), old)]).await.expect("renew"),
        vec!["moving".to_owned()]
    );
    let owner = c.owner("moving").await.expect("owner").expect("owned");
    assert_eq!(owner.node, *b.node());
    assert!(owner.epoch > old);
    assert!(
        matches!(c.claim("moving").await.expect("claim"), Claim::OwnedBy(o) if o.node == *b.node())
    );
    let (answer, _) = claim(&b, "moving").await;
    assert_eq!(claimed(&answer), owner.epoch);
    assert!(
        !matches!(
            answer,
            Claim::Claimed {
                took_over: true,
                ..
            }
        ),
        "a handoff is not a failover"
    );
    // The record is b's to take, once.
    assert_eq!(
        b.take_handoff("moving").await.expect("take").as_deref(),
        Some("{\"members\":[]}")
    );
    assert_eq!(b.take_handoff("moving").await.expect("take"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_after_a_lapsed_lease_is_a_failover_and_after_a_release_or_reservation_it_is_not() {
    let redis = PrivateRedis::start();
    let [a, b, _] = three_nodes(&redis).await;
    // Released: not a failover.
    let (answer, _) = claim(&a, "released").await;
    assert!(
        a.release("released", claimed(&answer))
            .await
            .expect("release")
    );
    let (answer, _) = claim(&b, "released").await;
    assert!(matches!(
        answer,
        Claim::Claimed {
            took_over: false,
            ..
        }
    ));
    // Lapsed: a failover.
    let (answer, _) = claim(&a, "lapsed").await;
    claimed(&answer);
    // A reservation for a that a never takes up lapses too, but was never a's room.
    let reserved = b
        .claim_for("reserved", a.node(), a.url())
        .await
        .expect("reserve");
    assert!(matches!(reserved, Claim::Claimed { .. }));
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let (answer, _) = claim(&b, "lapsed").await;
    assert!(matches!(
        answer,
        Claim::Claimed {
            took_over: true,
            ..
        }
    ));
    let (answer, _) = claim(&b, "reserved").await;
    assert!(matches!(
        answer,
        Claim::Claimed {
            took_over: false,
            ..
        }
    ));
}
