//! A fleet of real mixer processes (the `mixer` binary) sharing a private Redis: placement
//! spreads rooms, a join at the wrong node is redirected and hears its room, the room list is
//! the fleet's, a drained node moves its live room, a killed node's rooms come back on the
//! others, and a Redis outage stops rooms only at their lease. The harness is in
//! [`super::cluster`].

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mixer_protocol::{ClientMessage, ErrorCode, Mode, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

use super::cluster::{
    Cluster, Node, Outcome, PAIR_TONES, RedisCut, TalkingPair, join_fleet, roam, try_join,
};
use crate::common::tone_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_the_fleet_and_a_join_anywhere_reaches_its_room() {
    let cluster = Cluster::start(3, &[]).await;
    let urls = cluster.urls();
    // Thirty new rooms, every join sent to node 0: placement spreads them.
    let mut per_node = [0usize; 3];
    let mut members = Vec::new();
    for index in 0..30 {
        let joined = join_fleet(
            &urls,
            0,
            &format!("room-{index}"),
            "first",
            Mode::Listen,
            Duration::from_secs(10),
        )
        .await;
        per_node[cluster.index_of(&joined.url)] += 1;
        members.push(joined);
    }
    assert!(
        per_node.iter().all(|&n| n >= 4),
        "30 rooms placed as {per_node:?}"
    );
    // A join at a node that does not mix the room is redirected to the one that does.
    let owner = cluster.index_of(&members[0].url);
    let elsewhere = (owner + 1) % 3;
    let talker = join_fleet(
        &urls,
        elsewhere,
        "room-0",
        "talker",
        Mode::Talk,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        talker.url, members[0].url,
        "the talker reached the room's node"
    );
    assert_eq!(talker.redirects, 1, "by one redirect");
    // ... and the room's first member hears it.
    let owner_url = members[0].url.clone();
    let heard = {
        let listen = roam(
            urls.clone(),
            owner,
            "room-0".into(),
            "listener".into(),
            None,
            Duration::from_secs(2),
        );
        let talk = roam(
            urls.clone(),
            elsewhere,
            "room-0".into(),
            "talker-2".into(),
            Some(650.0),
            Duration::from_secs(2),
        );
        let (listened, talked) = tokio::join!(listen, talk);
        assert_eq!(talked.nodes, vec![owner_url.clone()]);
        listened
    };
    assert!(
        tone_db(&heard.pcm[heard.pcm.len() / 2..], 650.0) > -22.0,
        "the redirected talker is heard in its room"
    );
    // Past a whole lease, every member is still in its room: the owners renewed their leases
    // (a node that failed to would have sent its members away with `lease_lost`).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (index, member) in members.iter_mut().enumerate() {
        while let Ok(message) =
            tokio::time::timeout(Duration::from_millis(5), member.ws.next()).await
        {
            match message {
                Some(Ok(Message::Text(text))) => assert!(
                    !text.contains("redirect"),
                    "room-{index}'s member was sent away: {text}"
                ),
                Some(Ok(_)) => {}
                other => panic!("room-{index}'s member lost its connection: {other:?}"),
            }
        }
    }
    // list_rooms at any node lists the whole fleet's rooms (owners publish every second).
    let mut ws = match try_join(&urls[2], "room-0", "probe", Mode::Listen, None).await {
        Outcome::Redirected { .. } | Outcome::Joined { .. } => {
            tokio_tungstenite::connect_async(urls[2].as_str())
                .await
                .expect("connect")
                .0
        }
        _ => panic!("node 2 unreachable"),
    };
    let rooms = super::ask(&mut ws, ClientMessage::ListRooms).await;
    let ServerMessage::Rooms { rooms, truncated } = rooms else {
        panic!("expected rooms, got {rooms:?}");
    };
    assert!(!truncated);
    let names: Vec<&str> = rooms.iter().map(|r| r.settings.room.as_str()).collect();
    assert_eq!(names.len(), 30, "{names:?}");
    let room0 = rooms
        .iter()
        .find(|r| r.settings.room == "room-0")
        .expect("room-0 listed");
    assert!(room0.participants >= 2, "{room0:?}");
    // Every room is owned by exactly the node its members are on.
    let observer = cluster.observer().await;
    for (index, member) in members.iter().enumerate() {
        let owner = observer
            .owner(&format!("room-{index}"))
            .await
            .expect("owner")
            .expect("an owner");
        assert_eq!(owner.url, member.url);
    }
    drop(talker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_clients_are_back_in_their_room_hearing_each_other_within_ten_seconds() {
    let mut cluster = Cluster::start(3, &[]).await;
    let urls = cluster.urls();
    // Find a room placed on node 1, so that the clients' first URL (node 0) is not the owner.
    let observer = cluster.observer().await;
    let owner = cluster.owner_of_new_room("standup", 0).await;
    let run = Duration::from_secs(16);
    let pair = TalkingPair::start(&urls, "standup", (0, 2), run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    cluster.nodes[owner].kill();
    let (a, b) = pair.finish().await;
    for (who, roamed, other) in [("a", &a, PAIR_TONES.1), ("b", &b, PAIR_TONES.0)] {
        let (dropped, back) = roamed
            .rejoins
            .first()
            .copied()
            .unwrap_or_else(|| panic!("{who} never rejoined; nodes {:?}", roamed.nodes));
        assert!(
            dropped >= killed_at,
            "{who} dropped {:?} before the kill; nodes {:?}; logs:\n{}",
            killed_at - dropped,
            roamed.nodes,
            cluster
                .nodes
                .iter()
                .map(Node::log)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        let heal = back - killed_at;
        eprintln!(
            "{who}: back in its room {heal:?} after the kill, on {:?}",
            roamed.nodes
        );
        assert!(heal < Duration::from_secs(10), "{who} took {heal:?}");
        assert_ne!(roamed.nodes.last(), Some(&urls[owner]));
        // Hearing the other again, on the new node.
        let after = roamed.pcm_since(back + Duration::from_secs(1));
        assert!(
            after.len() > 48_000,
            "{who} heard {} samples after rejoining",
            after.len()
        );
        assert!(
            tone_db(after, other) > -22.0,
            "{who} does not hear the other after the failover"
        );
    }
    assert_eq!(a.nodes.last(), b.nodes.last(), "both on the same new node");
    // The room is owned once, by the node they are on.
    let room_owner = observer
        .owner("standup")
        .await
        .expect("owner")
        .expect("owned");
    assert_eq!(Some(&room_owner.url), a.nodes.last());
    assert!(cluster.nodes.iter().filter(|n| n.child.is_some()).count() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_moves_its_live_room_and_everyone_resumes_as_the_same_participant() {
    let mut cluster = Cluster::start(3, &["--drain-timeout-ms", "1000"]).await;
    let urls = cluster.urls();
    let owner = cluster.owner_of_new_room("choir", 0).await;
    let run = Duration::from_secs(10);
    let pair = TalkingPair::start(&urls, "choir", (owner, owner), run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled = Instant::now();
    cluster.nodes[owner].terminate();
    let (a, b) = pair.finish().await;
    assert!(
        cluster.nodes[owner].wait_exit(Duration::from_secs(10)),
        "the drained node stops by itself once its room has moved"
    );
    for (who, roamed, other) in [("a", &a, PAIR_TONES.1), ("b", &b, PAIR_TONES.0)] {
        assert_eq!(roamed.moved, 1, "{who} was moved once: {:?}", roamed.nodes);
        assert_eq!(roamed.ids.len(), 2, "{who}: {:?}", roamed.ids);
        let (before, after) = (roamed.ids[0], roamed.ids[1]);
        assert_eq!(
            after,
            (before.0, true),
            "{who} resumed as the same participant"
        );
        assert_ne!(roamed.nodes[1], urls[owner]);
        let (dropped, back) = roamed.rejoins[0];
        let gap = roamed.longest_gap_since(dropped - Duration::from_millis(100));
        let silent = roamed.longest_silence(
            dropped - Duration::from_millis(500),
            back + Duration::from_secs(2),
            other,
        );
        eprintln!(
            "{who}: moved {:?} after SIGTERM; back in {:?}; longest gap between frames {gap:?}; \
             the other's voice missing for {silent} frames",
            dropped - signalled,
            back - dropped
        );
        assert!(
            gap < Duration::from_millis(1500),
            "{who} heard a gap of {gap:?}"
        );
        // A short gap: the reconnection, and the new node's jitter buffer filling.
        assert!(
            silent <= 25,
            "{who} missed the other's voice for {silent} frames"
        );
        let after = roamed.pcm_since(back + Duration::from_secs(1));
        assert!(
            tone_db(after, other) > -22.0,
            "{who} hears the other after the move"
        );
    }
    assert_eq!(a.nodes[1], b.nodes[1], "the room moved to one node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_rooms_go_on_until_their_lease_new_rooms_are_refused_and_all_recovers() {
    let mut cluster = Cluster::start(2, &[]).await;
    let urls = cluster.urls();
    let run = Duration::from_secs(16);
    let pair = TalkingPair::start(&urls, "radio", (0, 1), run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = Instant::now();
    cluster.redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new room cannot be placed without the registry.
    for url in &urls {
        match try_join(url, "new-room", "c", Mode::Listen, None).await {
            Outcome::Refused(code) => assert_eq!(code, ErrorCode::FleetUnavailable),
            _ => panic!("a new room was placed without Redis"),
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = Instant::now();
    cluster.redis.restart();
    let (a, b) = pair.finish().await;
    for (who, roamed, other) in [("a", &a, PAIR_TONES.1), ("b", &b, PAIR_TONES.0)] {
        let (dropped, back) = *roamed
            .rejoins
            .first()
            .unwrap_or_else(|| panic!("{who}'s room never stopped"));
        // The room went on while the lease could still be running in Redis, and stopped
        // before it could have ended there (at most one lease after the last renewal).
        let mixed = dropped - stopped;
        eprintln!(
            "{who}: room stopped {mixed:?} after Redis did; back {:?} after Redis restarted",
            back.saturating_duration_since(restarted)
        );
        // Nominally 1.95 to 2.95 s: the lease less the margin, after the last renewal (sent
        // every second); wider bounds for a loaded machine.
        assert!(
            mixed > Duration::from_millis(1000) && mixed < Duration::from_millis(3400),
            "{who}'s room stopped {mixed:?} after Redis"
        );
        assert!(back > restarted, "{who} was back before Redis was");
        assert!(
            back - restarted < Duration::from_secs(6),
            "{who} took {:?} after Redis came back",
            back - restarted
        );
        let after = roamed.pcm_since(back + Duration::from_secs(1));
        assert!(
            tone_db(after, other) > -22.0,
            "{who} hears the other after the recovery"
        );
    }
    assert_eq!(a.nodes.last(), b.nodes.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_stops_mixing_its_room_before_another_node_takes_it() {
    let mut cluster = Cluster::start(1, &[]).await;
    // Node 1 reaches Redis through a relay the test cuts; its clients still reach it.
    let relay = RedisCut::start(cluster.redis.port()).await;
    cluster
        .nodes
        .push(Cluster::spawn_at(&relay.url(), "node-1", &[]).await);
    cluster.until_registered(2).await;
    let urls = cluster.urls();
    // A room placed on node 1.
    let mut room = None;
    for index in 0..40 {
        let name = format!("ops-{index}");
        if cluster.owner_of_new_room(&name, 1).await == 1 {
            room = Some(name);
            break;
        }
    }
    let room = room.expect("placement put one of 40 rooms on node 1");
    let run = Duration::from_secs(14);
    let pair = TalkingPair::start(&[urls[1].clone(), urls[0].clone()], &room, (0, 0), run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut_at = Instant::now();
    relay.cut();
    let (a, b) = pair.finish().await;
    relay.heal();
    // When node 1 last sent audio of the room, and when node 0 first did, at either client.
    let mut last_from_cut_node = cut_at;
    let mut first_from_other = None::<Instant>;
    for (who, roamed, other) in [("a", &a, PAIR_TONES.1), ("b", &b, PAIR_TONES.0)] {
        assert_eq!(
            roamed.nodes.first(),
            Some(&urls[1]),
            "{who} started on node 1"
        );
        assert_eq!(roamed.nodes.last(), Some(&urls[0]), "{who} ended on node 0");
        let (dropped, back) = *roamed.rejoins.first().expect("the room stopped on node 1");
        let last = roamed
            .arrivals
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at <= dropped)
            .max()
            .expect("audio before");
        let first = roamed
            .arrivals
            .iter()
            .map(|(at, _)| *at)
            .find(|at| *at >= back)
            .expect("audio after");
        last_from_cut_node = last_from_cut_node.max(last);
        first_from_other = Some(first_from_other.map_or(first, |f| f.min(first)));
        eprintln!(
            "{who}: node 1 mixed {:?} past the cut; node 0 started {:?} after the cut",
            last - cut_at,
            first - cut_at
        );
        let after = roamed.pcm_since(back + Duration::from_secs(1));
        assert!(
            tone_db(after, other) > -22.0,
            "{who} hears the other on node 0"
        );
    }
    let first_from_other = first_from_other.expect("node 0 mixed the room");
    assert!(
        last_from_cut_node < first_from_other,
        "the room was mixed by both nodes at once: node 1 until {:?}, node 0 from {:?} after the cut",
        last_from_cut_node - cut_at,
        first_from_other - cut_at
    );
    // And on the servers' own clocks (one machine, one wall clock; the log lines' timestamps
    // sort as text): node 1 logged stopping the room, after its last tick, before node 0 logged
    // claiming it, before its first.
    let logged = |node: usize, what: &str| -> String {
        cluster.nodes[node]
            .log()
            .lines()
            .find(|line| line.contains(what) && line.contains(room.as_str()))
            .unwrap_or_else(|| panic!("node-{node} never logged {what:?}"))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let stopped = logged(1, "its lease is no longer held");
    let taken = logged(0, "took over a room");
    assert!(
        stopped < taken,
        "node 1 stopped at {stopped}, node 0 took over at {taken}"
    );
    // Node 1 stopped at its own deadline, without hearing from Redis; node 0 took over.
    let (_, metrics) = super::http_get(cluster.nodes[1].addr, "/metrics").await;
    assert!(
        super::metric(
            &metrics,
            "mixer_fleet_lease_losses_total",
            "cause=\"expired\""
        ) >= 1.0
    );
    let (_, metrics) = super::http_get(cluster.nodes[0].addr, "/metrics").await;
    assert!(super::metric(&metrics, "mixer_fleet_failovers_total", "node=\"node-0\"") >= 1.0);
    let owner = cluster
        .observer()
        .await
        .owner(&room)
        .await
        .expect("owner")
        .expect("owned");
    assert_eq!(owner.url, urls[0]);
}
