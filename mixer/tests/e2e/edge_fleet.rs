//! Edge nodes in a fleet: real mixer processes sharing a private Redis, every node an edge
//! (`--edge`), plus one edge of an edge (`--edge-upstream`). A room is mixed by the node the
//! fleet placed it on and heard on every node; a killed edge's members are released by the
//! room's node; a killed room's node is replaced, and the edges' members hear each other again.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use mixer_protocol::{Mode, ServerMessage};

use super::cluster::{Cluster, join_request};
use super::edge::{Timeline, edge_flags, key_file, timed_member};
use super::{Client, next_control};
use crate::common::tone_db;

/// Joins `room` at the node at `url` (no redirect expected: every node is an edge).
async fn join_at(url: &str, room: &str, name: &str, mode: Mode) -> (Client, u32) {
    let (ws, id, _, _) = join_with(url, room, name, mode, None).await;
    (ws, id)
}

/// Joins (or resumes, with `resume`) at `url`: the connection, the participant id, whether it
/// resumed, and its resume token.
async fn join_with(
    url: &str,
    room: &str,
    name: &str,
    mode: Mode,
    resume: Option<String>,
) -> (Client, u32, bool, Option<String>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws.send(join_request(room, name, mode, resume))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined {
            participant_id,
            resumed,
            resume_token,
            ..
        } => (ws, participant_id, resumed, resume_token),
        other => panic!("{name} at {url}: expected joined, got {other:?}"),
    }
}

fn assert_tones(who: &str, pcm: &[f32], present: &[f32], absent: &[f32]) {
    for f in present {
        let db = tone_db(pcm, *f);
        assert!(db > -22.0, "{who}: {f} Hz not heard ({db:.1} dB)");
    }
    for f in absent {
        let db = tone_db(pcm, *f);
        assert!(db < -50.0, "{who}: {f} Hz heard ({db:.1} dB)");
    }
}

fn left_at(timeline: &Timeline, id: u32) -> Option<Duration> {
    timeline.messages.iter().find_map(|(at, m)| match m {
        ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == id => Some(*at),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_edges_carries_one_room_and_recovers_from_a_killed_edge_and_owner() {
    let key = key_file();
    let mut cluster = Cluster::start(3, &["--node-key-file", &key, "--edge"]).await;
    let urls = cluster.urls();
    let room = "edge-fleet";
    // The first join places the room; every later join at any node is seated through it.
    let (first, _) = join_at(&urls[0], room, "first", Mode::Listen).await;
    let owner_url = cluster
        .observer()
        .await
        .owner(room)
        .await
        .expect("Redis answers")
        .expect("the room is placed")
        .url;
    let o = cluster.index_of(&owner_url);
    let (b, c) = ((o + 1) % 3, (o + 2) % 3);
    // An edge of the edge b.
    let upstream = urls[b].clone();
    let d_node = Cluster::spawn(&cluster.redis, "node-3", &edge_flags(&key, &upstream)).await;
    let d_url = d_node.url();
    cluster.nodes.push(d_node);
    let (talk_o, _) = join_at(&urls[o], room, "talker-o", Mode::Talk).await;
    let (talk_b, _) = join_at(&urls[b], room, "talker-b", Mode::Talk).await;
    let (talk_d, _) = join_at(&d_url, room, "talker-d", Mode::Talk).await;
    let (listen_o, _) = join_at(&urls[o], room, "listener-o", Mode::Listen).await;
    let (listen_b, _) = join_at(&urls[b], room, "listener-b", Mode::Listen).await;
    let (listen_c, id_listen_c) = join_at(&urls[c], room, "listener-c", Mode::Listen).await;
    // A second member of c, whose client comes back at another node when c dies.
    let (roamer, id_roamer, _, roamer_token) =
        join_with(&urls[c], room, "roamer", Mode::Listen, None).await;
    let (listen_d, _) = join_at(&d_url, room, "listener-d", Mode::Listen).await;
    drop(first);
    let (f_o, f_b, f_d) = (400.0, 650.0, 1000.0);
    let start = Instant::now();
    let until = start + Duration::from_secs(22);
    let tasks = [
        timed_member(talk_o, Some(f_o), start, until),
        timed_member(talk_b, Some(f_b), start, until),
        timed_member(talk_d, Some(f_d), start, until),
        timed_member(listen_o, None, start, until),
        timed_member(listen_b, None, start, until),
        timed_member(listen_c, None, start, until),
        timed_member(listen_d, None, start, until),
    ];
    let (kill_edge_at, kill_owner_at) = (Duration::from_secs(4), Duration::from_secs(10));
    tokio::time::sleep_until((start + kill_edge_at).into()).await;
    cluster.nodes[c].kill();
    drop(roamer);
    // Its client reconnects at b with its resume token, within the owner's 5 s for a lost link.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (roamer, id_back, resumed, _) =
        join_with(&urls[b], room, "roamer", Mode::Listen, roamer_token).await;
    assert!(resumed, "the killed edge's client resumed at another edge");
    assert_eq!(id_back, id_roamer, "as the same participant");
    let roamer = timed_member(roamer, None, start, until);
    tokio::time::sleep_until((start + kill_owner_at).into()).await;
    cluster.nodes[o].kill();
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("member task"));
    }
    let [
        talk_o,
        talk_b,
        talk_d,
        listen_o,
        listen_b,
        listen_c,
        listen_d,
    ] = <[Timeline; 7]>::try_from(got).ok().expect("seven members");
    let roamer = roamer.await.expect("member task");
    assert_eq!(
        left_at(&talk_o, id_roamer),
        None,
        "the roamer was never released"
    );
    let report = |cluster: &Cluster| {
        cluster
            .nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let everyone = [f_o, f_b, f_d];
    assert_tones(
        "the killed edge's client, back at b",
        &roamer.pcm(kill_edge_at + Duration::from_secs(2), kill_owner_at),
        &everyone,
        &[],
    );
    let before = (Duration::from_secs(1), kill_edge_at);
    let pcm = |t: &Timeline| t.pcm(before.0, before.1);
    assert_tones("talker on the owner", &pcm(&talk_o), &[f_b, f_d], &[f_o]);
    assert_tones("talker on edge b", &pcm(&talk_b), &[f_o, f_d], &[f_b]);
    assert_tones(
        "talker on d, an edge of b",
        &pcm(&talk_d),
        &[f_o, f_b],
        &[f_d],
    );
    for (who, t) in [
        ("listener on the owner", &listen_o),
        ("listener on b", &listen_b),
        ("listener on c", &listen_c),
        ("listener on d", &listen_d),
    ] {
        assert_tones(who, &pcm(t), &everyone, &[]);
    }
    // The killed edge's member is released by the room's node within its 5 s window (plus the
    // time to see the link drop).
    let released = left_at(&talk_o, id_listen_c).unwrap_or_else(|| {
        panic!(
            "the owner never released the killed edge's member\n{}",
            report(&cluster)
        )
    });
    eprintln!(
        "killed edge's member released {:?} after the kill",
        released - kill_edge_at
    );
    // Not before the kill: the 5 s window (the member is printed, not timed, above).
    assert!(released > kill_edge_at + Duration::from_secs(4));
    // The owner killed: the edges' members hear each other again once the room is mixed anew.
    let b_hears_d = talk_b.heard_again(kill_owner_at, f_d);
    let d_hears_b = talk_d.heard_again(kill_owner_at, f_b);
    eprintln!(
        "owner killed: talker on b hears d again after {:?}, d hears b after {:?}",
        b_hears_d.map(|t| t - kill_owner_at),
        d_hears_b.map(|t| t - kill_owner_at)
    );
    if b_hears_d.is_none() || d_hears_b.is_none() {
        panic!(
            "the edges' members did not hear each other again\n{}",
            report(&cluster)
        );
    }
    let late = (Duration::from_secs(19), Duration::from_secs(22));
    let pcm = |t: &Timeline| t.pcm(late.0, late.1);
    assert_tones("talker on b, later", &pcm(&talk_b), &[f_d], &[f_b, f_o]);
    assert_tones("talker on d, later", &pcm(&talk_d), &[f_b], &[f_d, f_o]);
    assert_tones("listener on b, later", &pcm(&listen_b), &[f_b, f_d], &[]);
    assert_tones("listener on d, later", &pcm(&listen_d), &[f_b, f_d], &[]);
    assert_eq!(listen_b.ended, None, "b's listener stayed connected");
    assert_eq!(listen_d.ended, None, "d's listener stayed connected");
}
