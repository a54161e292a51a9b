//! loadgen, run as a library, against a fleet of three real mixer processes sharing a private
//! Redis (the harness is in [`super::cluster`]): its rooms spread over the nodes, joins at the
//! wrong node are redirected, every verified receiver hears the right audio; and when one node is
//! drained (SIGTERM) mid-run, its rooms move with their participants, who resume at the new
//! nodes as themselves, keep verifying, and show up in the report as `moved` reconnections with
//! their audio gaps.

use std::time::{Duration, Instant};

use super::cluster::Cluster;

/// Rooms of the run, and clients per room (two talkers and a listener).
const ROOMS: usize = 6;
const PARTICIPANTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_over_a_fleet_spreads_its_rooms_and_rides_through_a_drain() {
    // All of loadgen's clients come from 127.0.0.1, so the per-address limit is off, as for
    // any load test from one machine; a drained node hands its rooms on after 1 s.
    let mut cluster = Cluster::start(
        3,
        &[
            "--drain-timeout-ms",
            "1000",
            "--max-connections-per-address",
            "0",
        ],
    )
    .await;
    let urls = cluster.urls().join(",");
    let (rooms, participants) = (ROOMS.to_string(), PARTICIPANTS.to_string());
    let args = [
        "loadgen",
        "--url",
        &urls,
        "--rooms",
        &rooms,
        "--participants",
        &participants,
        "--talkers",
        "2",
        "--duration",
        "9",
        "--verify",
        "18",
        "--require-verified",
        "--room-prefix",
        "fleet",
    ];
    let scenario = <loadgen::Args as clap::Parser>::try_parse_from(args)
        .expect("flags parse")
        .to_scenario()
        .expect("valid scenario");
    let started = Instant::now();
    let run = tokio::spawn(async move { loadgen::run(&scenario).await });

    // Wait for every room to be placed (the run first encodes its tones), and see where.
    let observer = cluster.observer().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let owners = loop {
        let owners = observer.rooms().await.expect("the room list");
        if owners.len() == ROOMS || Instant::now() > deadline || run.is_finished() {
            break owners;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut per_node = [0usize; 3];
    for room in &owners {
        per_node[cluster.index_of(&room.owner.url)] += 1;
    }
    eprintln!("{ROOMS} rooms placed as {per_node:?} over the three nodes");
    assert_eq!(owners.len(), ROOMS, "{owners:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "the rooms were not spread: {per_node:?}"
    );

    // Drain the busiest node mid-run: 2 s after the rooms are ready, so that with the drain's
    // 1 s every receiver has more than 1 s on its first connection after the warm-up (1.5 s),
    // to be verified on its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained = (0..3).max_by_key(|&i| per_node[i]).expect("three nodes");
    let moved_rooms = per_node[drained];
    let drained_url = cluster.nodes[drained].url();
    let signalled = started.elapsed();
    cluster.nodes[drained].terminate();
    let report = run.await.expect("the loadgen task").expect("the run");
    let table = report.render();
    eprintln!("drained node {drained} ({moved_rooms} rooms) {signalled:?} into the run\n{table}");
    assert!(
        cluster.nodes[drained].wait_exit(Duration::from_secs(10)),
        "the drained node stops by itself once its rooms have moved"
    );
    let drained_log = cluster.nodes[drained].log();
    let owners = observer.rooms().await.expect("the room list");
    assert!(
        owners.iter().all(|r| r.owner.url != drained_url),
        "a room is still on the drained node: {owners:?}"
    );

    // Everyone joined (some through redirects) and every receiver heard the right audio, on
    // both sides of the move.
    let clients = ROOMS * PARTICIPANTS;
    assert_eq!(report.joined, clients, "{table}");
    assert!(report.redirects > 0, "no join was redirected\n{table}");
    assert_eq!(report.verification.receivers, clients, "{table}");
    assert_eq!(report.verification.passed, clients, "{table}");
    assert!(report.passed, "{table}");

    // The drained node's clients were moved, resumed as themselves, and their gaps measured.
    // None of them got `shutting_down` instead of its redirect: a node stopping after its drain
    // closes its connections only once the mixer thread has redirected every client of its
    // last room.
    let rc = &report.reconnections;
    let moving = (moved_rooms * PARTICIPANTS) as u64;
    assert_eq!((rc.total, rc.clients), (moving, moving as usize), "{table}");
    assert_eq!(
        (rc.moved, rc.dropped),
        (moving, 0),
        "every client of the drained node moved, none dropped; the drained node's log:\n{drained_log}\n{table}"
    );
    assert_eq!(report.server_errors.get("shutting_down"), None, "{table}");
    assert!(rc.moved > 0, "{table}");
    assert_eq!((rc.resumed, rc.gave_up), (rc.moved, 0), "{table}");
    for client in &rc.per_client {
        for r in &client.reconnections {
            eprintln!(
                "room {} client {}: {} at {:.2} s, back at {} in {:.1} ms, audio gap {:.1} ms",
                client.room,
                client.slot,
                r.cause.as_str(),
                r.at_secs,
                r.url.as_deref().unwrap_or("?"),
                r.rejoin_ms.unwrap_or(f64::NAN),
                r.gap_ms.unwrap_or(f64::NAN),
            );
            assert_ne!(r.url.as_deref(), Some(drained_url.as_str()));
        }
    }
    let gap = &report.reconnect_gap_ms;
    eprintln!(
        "reconnect gap over {} reconnections: p50 {:.1} ms, max {:.1} ms",
        gap.count, gap.p50, gap.max
    );
    assert_eq!(gap.count, moving, "{table}");
    assert!(gap.max < 1500.0, "{table}");
}
