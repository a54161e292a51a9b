//! Edge nodes: one room mixed by one node and heard through a tree of others (`--edge`,
//! `--edge-upstream`, node-to-node links). The in-process tests here build a static tree (no
//! Redis): an owner, an edge linked to it, and an edge of that edge. Members on every node must
//! hear the talkers on every node but themselves, and a listener two links away must get the
//! very bytes a listener on the owner gets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{AudioFrame, ClientMessage, Mode, Role, ServerMessage, parse_server_message};
use tokio_tungstenite::tungstenite::Message;

use super::cluster::RedisCut;
use super::{Client, TestServer, join, join_as, metric};
use crate::common::{Talker, tone_db};
use mixer_protocol::FRAME_SAMPLES;

/// The node key the tree's nodes share.
const NODE_KEY: &[u8] = b"edge test node key, 32 bytes or more";

pub(super) fn key_file() -> String {
    let path = std::env::temp_dir().join(format!("mixer-edge-{}.key", std::process::id()));
    std::fs::write(&path, NODE_KEY).expect("write key");
    path.to_str().expect("utf-8 path").to_owned()
}

/// An owner, an edge of it, and an edge of that edge.
async fn tree() -> (TestServer, TestServer, TestServer) {
    let key = key_file();
    let owner = TestServer::start(&["--node-key-file", &key]).await;
    let edge = TestServer::start(&edge_flags(&key, &owner.url())).await;
    let edge2 = TestServer::start(&edge_flags(&key, &edge.url())).await;
    (owner, edge, edge2)
}

/// The flags of an edge relaying every room to `upstream`, with the node key in `key`.
pub(super) fn edge_flags<'a>(key: &'a str, upstream: &'a str) -> [&'a str; 5] {
    [
        "--node-key-file",
        key,
        "--edge",
        "--edge-upstream",
        upstream,
    ]
}

/// The last 1.5 s of what a member heard.
fn assert_heard(who: &str, got: &Timeline, present: &[f32], absent: &[f32]) {
    let pcm = got.pcm_tail(Duration::from_millis(1500));
    for f in present {
        let db = tone_db(&pcm, *f);
        assert!(db > -22.0, "{who}: {f} Hz not heard ({db:.1} dB)");
    }
    for f in absent {
        let db = tone_db(&pcm, *f);
        assert!(
            db < -50.0,
            "{who}: {f} Hz heard ({db:.1} dB), but it must not be"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_heard_through_a_tree_of_edges_keeps_mix_minus_exact_and_the_same_bytes() {
    let (owner, edge, edge2) = tree().await;
    let room = "tree";
    // A talker and a listener on each node.
    let (talk0, _) = join(&owner, room, "talker-0", Mode::Talk).await;
    let (talk1, id1) = join(&edge, room, "talker-1", Mode::Talk).await;
    let (talk2, id2) = join(&edge2, room, "talker-2", Mode::Talk).await;
    let (listen0, _) = join(&owner, room, "listener-0", Mode::Listen).await;
    let (listen1, _) = join(&edge, room, "listener-1", Mode::Listen).await;
    let (listen2, _) = join(&edge2, room, "listener-2", Mode::Listen).await;
    assert_ne!(id1, id2, "one room, one numbering, wherever members are");
    let start = Instant::now();
    let until = start + Duration::from_secs(4);
    let (t0, t1, t2, l0, l1, l2) = tokio::join!(
        timed_member(talk0, Some(400.0), start, until),
        timed_member(talk1, Some(650.0), start, until),
        timed_member(talk2, Some(1000.0), start, until),
        timed_member(listen0, None, start, until),
        timed_member(listen1, None, start, until),
        timed_member(listen2, None, start, until),
    );
    let [t0, t1, t2, l0, l1, l2] = [t0, t1, t2, l0, l1, l2].map(|t| t.expect("member task"));
    let all = [400.0, 650.0, 1000.0];
    assert_heard("talker on the owner", &t0, &[650.0, 1000.0], &[400.0]);
    assert_heard("talker on the edge", &t1, &[400.0, 1000.0], &[650.0]);
    assert_heard("talker on the edge's edge", &t2, &[400.0, 650.0], &[1000.0]);
    for (who, got) in [
        ("listener on the owner", &l0),
        ("listener on the edge", &l1),
        ("listener on the edge's edge", &l2),
    ] {
        assert_heard(who, got, &all, &[]);
    }
    // The listeners two links apart got the same Opus packets under the same sequence numbers.
    let common: Vec<u16> = l0
        .payloads
        .keys()
        .filter(|seq| l2.payloads.contains_key(seq))
        .copied()
        .collect();
    assert!(
        common.len() > 100,
        "only {} frames in common between the owner's and the edge's edge's listener",
        common.len()
    );
    for seq in &common {
        assert_eq!(l0.payloads[seq], l2.payloads[seq], "frame {seq} differs");
    }
    // Every member saw the whole room: each listener's roster names the six.
    let joined = |got: &Timeline| {
        got.messages
            .iter()
            .filter(|(_, m)| matches!(m, ServerMessage::ParticipantJoined { .. }))
            .count()
    };
    assert!(
        joined(&t0) >= 5,
        "the first talker saw {} joins",
        joined(&t0)
    );
    // The owner sent each shared frame once per link, not once per listener behind it.
    let (_, text) = super::http_get(owner.addr, "/metrics").await;
    assert_eq!(
        metric(&text, "mixer_links", ""),
        1.0,
        "one link into the owner"
    );
    edge2.shutdown().await;
    edge.shutdown().await;
    owner.shutdown().await;
}

/// What one member got, with arrival times: decoded frames, and control messages.
pub(super) struct Timeline {
    /// Each frame's arrival (since the test's start) and its decoded samples.
    pub(super) frames: Vec<(Duration, Vec<f32>)>,
    /// Every control message and its arrival.
    pub(super) messages: Vec<(Duration, ServerMessage)>,
    /// When the connection ended, if it did before the end of the run.
    pub(super) ended: Option<Duration>,
    /// Each frame's Opus packet, by sequence number.
    pub(super) payloads: HashMap<u16, Vec<u8>>,
}

impl Timeline {
    /// The audio that arrived between `from` and `to`.
    pub(super) fn pcm(&self, from: Duration, to: Duration) -> Vec<f32> {
        self.frames
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .flat_map(|(_, pcm)| pcm.iter().copied())
            .collect()
    }

    /// The audio of the last `length` of frames.
    pub(super) fn pcm_tail(&self, length: Duration) -> Vec<f32> {
        let frames = (length.as_millis() / 20) as usize;
        let skip = self.frames.len().saturating_sub(frames);
        self.frames[skip..]
            .iter()
            .flat_map(|(_, pcm)| pcm.iter().copied())
            .collect()
    }

    /// When `freq` was first heard again after `after`: the arrival of the first frame of the
    /// first 200 ms (10 frames) after `after` in which it is louder than -22 dB.
    pub(super) fn heard_again(&self, after: Duration, freq: f32) -> Option<Duration> {
        let frames: Vec<&(Duration, Vec<f32>)> =
            self.frames.iter().filter(|(at, _)| *at > after).collect();
        frames.windows(10).find_map(|window| {
            let pcm: Vec<f32> = window.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            (tone_db(&pcm, freq) > -22.0).then_some(window[0].0)
        })
    }
}

/// Runs a member from `start` until `until`: sends `tone` every 20 ms (if any), decodes what
/// it gets, keeps every message; stops early (noting when) if its connection ends.
pub(super) fn timed_member(
    ws: Client,
    tone: Option<f32>,
    start: Instant,
    until: Instant,
) -> tokio::task::JoinHandle<Timeline> {
    scripted_member(ws, tone, Vec::new(), start, until)
}

/// [`timed_member`], also sending each message of `script` at its time since `start`.
pub(super) fn scripted_member(
    mut ws: Client,
    tone: Option<f32>,
    mut script: Vec<(Duration, ClientMessage)>,
    start: Instant,
    until: Instant,
) -> tokio::task::JoinHandle<Timeline> {
    script.sort_by_key(|(at, _)| *at);
    script.reverse();
    tokio::spawn(async move {
        let mut talker = tone.map(|f| Talker::new(f, 0.2));
        let mut decoder =
            opus::Decoder::new(48_000, opus::Channels::Mono).expect("an Opus decoder");
        let mut timeline = Timeline {
            frames: Vec::new(),
            messages: Vec::new(),
            ended: None,
            payloads: HashMap::new(),
        };
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if Instant::now() >= until {
                        break;
                    }
                    while script.last().is_some_and(|(at, _)| start.elapsed() >= *at) {
                        if let Some((_, message)) = script.pop() {
                            let _ = ws.send(Message::text(message.to_json())).await;
                        }
                    }
                    if let Some(t) = talker.as_mut()
                        && ws.send(Message::binary(t.next_frame(true))).await.is_err()
                    {
                        timeline.ended = Some(start.elapsed());
                        break;
                    }
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        let frame = AudioFrame::parse(&bytes).expect("frame parses");
                        let mut pcm = vec![0.0; FRAME_SAMPLES];
                        let n = decoder
                            .decode_float(frame.payload, &mut pcm, false)
                            .expect("valid Opus");
                        pcm.truncate(n);
                        timeline.frames.push((start.elapsed(), pcm));
                        timeline.payloads.insert(frame.header.sequence, frame.payload.to_vec());
                    }
                    Some(Ok(Message::Text(text))) => {
                        let message = parse_server_message(text.as_str()).expect("json");
                        timeline.messages.push((start.elapsed(), message));
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        timeline.ended = Some(start.elapsed());
                        break;
                    }
                },
            }
        }
        let _ = ws.close(None).await;
        timeline
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_an_edge_whose_link_is_cut_resume_as_themselves_when_it_heals() {
    let key = key_file();
    let owner = TestServer::start(&["--node-key-file", &key]).await;
    // The edge reaches the owner through a relay the test can cut.
    let relay = RedisCut::start(owner.addr.port()).await;
    let upstream = format!("ws://127.0.0.1:{}/", relay.port());
    let edge = TestServer::start(&edge_flags(&key, &upstream)).await;
    let room = "cut";
    let (talk_owner, _) = join(&owner, room, "talker-owner", Mode::Talk).await;
    let (listen_owner, _) = join(&owner, room, "listener-owner", Mode::Listen).await;
    let (talk_edge, id_talk_edge) = join(&edge, room, "talker-edge", Mode::Talk).await;
    let (listen_edge, id_listen_edge) = join(&edge, room, "listener-edge", Mode::Listen).await;
    let start = Instant::now();
    let until = start + Duration::from_secs(11);
    let members = [
        timed_member(talk_owner, Some(400.0), start, until),
        timed_member(listen_owner, None, start, until),
        timed_member(talk_edge, Some(650.0), start, until),
        timed_member(listen_edge, None, start, until),
    ];
    let (cut_at, heal_at) = (Duration::from_secs(3), Duration::from_secs(5));
    tokio::time::sleep_until((start + cut_at).into()).await;
    relay.cut();
    tokio::time::sleep_until((start + heal_at).into()).await;
    relay.heal();
    let mut got = Vec::new();
    for member in members {
        got.push(member.await.expect("member task"));
    }
    let [talk_owner, listen_owner, talk_edge, listen_edge] =
        <[Timeline; 4]>::try_from(got).ok().expect("four members");
    for (who, member) in [
        ("talker on the owner", &talk_owner),
        ("listener on the owner", &listen_owner),
        ("talker on the edge", &talk_edge),
        ("listener on the edge", &listen_edge),
    ] {
        assert_eq!(member.ended, None, "{who}'s connection ended");
    }
    // Before the cut, across the link both ways.
    let before = (Duration::from_secs(1), cut_at);
    assert!(tone_db(&listen_edge.pcm(before.0, before.1), 400.0) > -22.0);
    assert!(tone_db(&listen_owner.pcm(before.0, before.1), 650.0) > -22.0);
    assert!(tone_db(&talk_edge.pcm(before.0, before.1), 650.0) < -50.0);
    // After the heal, back within a few seconds, both ways.
    let back_down = listen_edge
        .heard_again(heal_at, 400.0)
        .expect("the edge's listener hears the owner's talker again");
    let back_up = listen_owner
        .heard_again(heal_at, 650.0)
        .expect("the owner's listener hears the edge's talker again");
    eprintln!(
        "link cut for {:?}: heard again {:?} (down) and {:?} (up) after the heal",
        heal_at - cut_at,
        back_down - heal_at,
        back_up - heal_at
    );
    let late = (Duration::from_secs(9), Duration::from_secs(11));
    assert!(tone_db(&talk_edge.pcm(late.0, late.1), 400.0) > -22.0);
    assert!(tone_db(&talk_edge.pcm(late.0, late.1), 650.0) < -50.0);
    // The edge's members came back as themselves: the room never saw them leave.
    let left: Vec<u32> = talk_owner
        .messages
        .iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::ParticipantLeft { participant_id, .. } => Some(*participant_id),
            _ => None,
        })
        .collect();
    assert!(
        !left.contains(&id_talk_edge) && !left.contains(&id_listen_edge),
        "the room saw the edge's members leave: {left:?}"
    );
    assert!(
        talk_edge.messages.iter().any(|(at, m)| *at > cut_at
            && matches!(m, ServerMessage::Joined { participant_id, resumed: true, .. } if *participant_id == id_talk_edge)),
        "the edge's talker was told it resumed"
    );
    edge.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_mute_chat_and_late_joiner_replay_work_for_members_on_an_edge() {
    let key = key_file();
    let walkie = ["--floor-policy", "single", "--node-key-file", &key];
    let owner = TestServer::start(&walkie).await;
    let mut edge_flags = walkie.to_vec();
    let upstream = owner.url();
    edge_flags.extend_from_slice(&["--edge", "--edge-upstream", &upstream]);
    let edge = TestServer::start(&edge_flags).await;
    let room = "walkie";
    // A moderator on the owner; a speaker and a listener on the edge; a late joiner later.
    let (moderator, id_moderator) =
        join_as(&owner, room, "moderator", Mode::Listen, Role::Moderator).await;
    let (speaker, id_speaker) = join_as(&edge, room, "speaker", Mode::Ptt, Role::Speaker).await;
    let (listener, id_listener) = join(&edge, room, "listener", Mode::Listen).await;
    let start = Instant::now();
    let until = start + Duration::from_secs(5);
    let at = Duration::from_millis;
    let moderator = scripted_member(
        moderator,
        None,
        vec![
            (
                at(1200),
                ClientMessage::Chat {
                    text: "hello from the owner".into(),
                },
            ),
            (
                at(3000),
                ClientMessage::Mute {
                    participant_id: Some(id_speaker),
                    muted: true,
                },
            ),
        ],
        start,
        until,
    );
    let speaker = scripted_member(
        speaker,
        Some(650.0),
        vec![(at(500), ClientMessage::FloorRequest { preempt: false })],
        start,
        until,
    );
    let listener = scripted_member(
        listener,
        None,
        vec![(
            at(1000),
            ClientMessage::Chat {
                text: "hello from the edge".into(),
            },
        )],
        start,
        until,
    );
    // Joins at the edge 2 s in, while the speaker holds the floor and talks.
    tokio::time::sleep_until((start + at(2000)).into()).await;
    let mut late = super::connect(&edge).await;
    late.send(super::join_message(room, "late", Mode::Listen))
        .await
        .expect("send join");
    let replay = match super::next_control(&mut late).await {
        ServerMessage::Joined { replay_ms, .. } => replay_ms,
        other => panic!("expected joined, got {other:?}"),
    };
    let joined_late = start.elapsed();
    let late = timed_member(late, None, start, until);
    let (moderator, speaker, listener, late) = (
        moderator.await.expect("task"),
        speaker.await.expect("task"),
        listener.await.expect("task"),
        late.await.expect("task"),
    );
    let has =
        |t: &Timeline, f: &dyn Fn(&ServerMessage) -> bool| t.messages.iter().any(|(_, m)| f(m));
    // The floor: granted to the edge's speaker, and everyone on both nodes told.
    for (who, t) in [
        ("moderator", &moderator),
        ("listener", &listener),
        ("speaker", &speaker),
    ] {
        assert!(
            has(
                t,
                &|m| matches!(m, ServerMessage::FloorGranted { participant_id, .. } if *participant_id == id_speaker)
            ),
            "{who} was not told of the speaker's floor"
        );
        assert!(
            has(
                t,
                &|m| matches!(m, ServerMessage::TalkingStarted { participant_id } if *participant_id == id_speaker)
            ),
            "{who} did not see the speaker talking"
        );
    }
    // Heard on both nodes while it holds the floor.
    assert!(tone_db(&moderator.pcm(at(1000), at(2800)), 650.0) > -22.0);
    assert!(tone_db(&listener.pcm(at(1000), at(2800)), 650.0) > -22.0);
    // Chat both ways across the link.
    assert!(has(
        &moderator,
        &|m| matches!(m, ServerMessage::Chat { from, text, .. } if *from == id_listener && text == "hello from the edge")
    ));
    assert!(has(
        &listener,
        &|m| matches!(m, ServerMessage::Chat { from, text, .. } if *from == id_moderator && text == "hello from the owner")
    ));
    // The moderator mutes the speaker: the edge's listener stops hearing it.
    assert!(has(
        &listener,
        &|m| matches!(m, ServerMessage::ParticipantMuted { participant_id, muted: true, by } if *participant_id == id_speaker && *by == Some(id_moderator))
    ));
    assert!(tone_db(&listener.pcm(at(3400), at(5000)), 650.0) < -50.0);
    // The late joiner at the edge heard the transmission replayed from its start, then caught up.
    assert!(
        replay.is_some_and(|ms| ms >= 1000),
        "joined said replay_ms {replay:?}: the transmission began 1.5 s before"
    );
    let first_second = late.pcm(joined_late, joined_late + at(1000));
    assert!(
        tone_db(&first_second, 650.0) > -22.0,
        "the late joiner did not hear the transmission ({:.1} dB)",
        tone_db(&first_second, 650.0)
    );
    assert!(
        has(&late, &|m| matches!(m, ServerMessage::CaughtUp)),
        "the late joiner never caught up"
    );
    edge.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_edges_refuses_the_join_and_falls_quiet_instead_of_looping() {
    let key = key_file();
    // Two edges, each the other's upstream, and no node that mixes anything: a misconfiguration.
    // The first is started pointing at a port the second then takes.
    let port_b = super::cluster::free_port();
    let url_b = format!("ws://127.0.0.1:{port_b}/");
    let a = TestServer::start(&edge_flags(&key, &url_b)).await;
    let url_a = a.url();
    let b = super::cluster::Node::spawn_plain("ring-b", port_b, &edge_flags(&key, &url_a)).await;
    let mut ws = super::connect(&a).await;
    ws.send(super::join_message("ring", "alice", Mode::Listen))
        .await
        .expect("send join");
    // The sessions go round, each time one link deeper, until a link is refused (409); the
    // join then times out with fleet_unavailable.
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ServerMessage::Error { code, .. }) = parse_server_message(&text) {
                        return code;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("an answer within 15 s");
    assert_eq!(refused, mixer_protocol::ErrorCode::FleetUnavailable);
    drop(ws);
    // And the ring falls quiet: no link left open on either node.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text_a) = super::http_get(a.addr, "/metrics").await;
        let (_, text_b) = super::http_get(b.addr, "/metrics").await;
        let open = metric(&text_a, "mixer_links", "") + metric(&text_b, "mixer_links", "");
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} links still open on the ring\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A link's end once polled a finished writer task again, a panic that left its link
    // counted forever.
    assert!(!b.log().contains("panicked"), "{}", b.log());
    a.shutdown().await;
}

/// The status line a `GET /link/ROOM` upgrade gets, with `token` as its bearer (if any).
async fn link_status(server: &TestServer, room: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET /link/{room} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    super::response_head(server.addr, &request)
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_need_the_node_key_a_token_for_their_room_and_a_bounded_depth() {
    use mixer::server::link::LinkKey;
    let key = key_file();
    let owner = TestServer::start(&["--node-key-file", &key]).await;
    let ours = LinkKey::new(NODE_KEY);
    let theirs = LinkKey::new(b"another fleet's node key, 32 bytes long");
    let token = |key: &LinkKey, room: &str, hops: u8| key.mint("edge-1", room, hops).expect("mint");
    let cases = [
        ("r", None, "401", "no token"),
        ("r", Some(token(&theirs, "r", 1)), "401", "another key"),
        (
            "r",
            Some(token(&ours, "other", 1)),
            "401",
            "another room's token",
        ),
        ("r", Some(token(&ours, "r", 9)), "409", "deeper than 8"),
        (
            "bad room",
            Some(token(&ours, "r", 1)),
            "400",
            "a room name that cannot be",
        ),
        (
            "r",
            Some(token(&ours, "r", 8)),
            "101",
            "the fleet's key, the room, 8 deep",
        ),
    ];
    for (room, token, expected, case) in cases {
        let status = link_status(&owner, room, token.as_deref()).await;
        assert!(status.contains(expected), "{case}: {status}");
    }
    // A node without a node key takes no links at all.
    let open = TestServer::start(&[]).await;
    assert!(
        link_status(&open, "r", Some(&token(&ours, "r", 1)))
            .await
            .contains("403")
    );
    open.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_listens_at_the_edge_of_an_edge_and_hears_the_room_once_per_link() {
    let (owner, edge, edge2) = tree().await;
    let room = "radio";
    let (talk_owner, _) = join(&owner, room, "talker-owner", Mode::Talk).await;
    let (talk_edge, _) = join(&edge, room, "talker-edge", Mode::Talk).await;
    // The talkers go on until the player is done, however long a loaded machine takes to
    // start it.
    let until = Instant::now() + Duration::from_secs(60);
    let talkers = [
        timed_member(talk_owner, Some(400.0), Instant::now(), until),
        timed_member(talk_edge, Some(650.0), Instant::now(), until),
    ];
    // ffmpeg plays the room's listen stream at the edge of the edge, two links from the mix.
    let url = format!("http://{}/listen/{room}", edge2.addr);
    let pcm = super::listen::decode_with_ffmpeg(&url, 5).await;
    assert!(pcm.len() >= 4 * 48_000, "{} samples", pcm.len());
    let heard = &pcm[pcm.len() - 2 * 48_000..];
    for f in [400.0, 650.0] {
        let db = tone_db(heard, f);
        assert!(db > -22.0, "the player did not hear {f} Hz ({db:.1} dB)");
    }
    for talker in talkers {
        talker.abort();
    }
    edge2.shutdown().await;
    edge.shutdown().await;
    owner.shutdown().await;
}
