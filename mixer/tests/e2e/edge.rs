//! Edge nodes: one room mixed by one node and heard through a tree of others (`--edge`,
//! `--edge-upstream`, node-to-node links). The in-process tests here build a static tree (no
//! Redis): an owner, an edge linked to it, and an edge of that edge. Members on every node must
//! hear the talkers on every node but themselves, and a listener two links away must get the
//! very bytes a listener on the owner gets.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{AudioFrame, Mode, ServerMessage, parse_server_message};
use tokio_tungstenite::tungstenite::Message;

use super::{Client, TestServer, join, metric};
use crate::common::{Listener, Talker, tone_db};

/// The node key the tree's nodes share.
const NODE_KEY: &[u8] = b"edge test node key, 32 bytes or more";

fn key_file() -> String {
    let path = std::env::temp_dir().join(format!("mixer-edge-{}.key", std::process::id()));
    std::fs::write(&path, NODE_KEY).expect("write key");
    path.to_str().expect("utf-8 path").to_owned()
}

/// An owner, an edge of it, and an edge of that edge.
async fn tree() -> (TestServer, TestServer, TestServer) {
    let key = key_file();
    let owner = TestServer::start(&["--node-key-file", &key]).await;
    let edge = TestServer::start(&[
        "--node-key-file",
        &key,
        "--edge",
        "--edge-upstream",
        &owner.url(),
    ])
    .await;
    let edge2 = TestServer::start(&[
        "--node-key-file",
        &key,
        "--edge",
        "--edge-upstream",
        &edge.url(),
    ])
    .await;
    (owner, edge, edge2)
}

/// What one member got: its decoded audio, the raw frames by sequence number, and its
/// control messages.
#[derive(Default)]
struct Got {
    listener: Listener,
    frames: HashMap<u16, Vec<u8>>,
    messages: Vec<ServerMessage>,
}

/// Runs a member for `duration`: sends `tone` (if any) every 20 ms, keeps what it receives.
async fn member(mut ws: Client, tone: Option<f32>, duration: Duration) -> Got {
    let mut talker = tone.map(|f| Talker::new(f, 0.2));
    let mut got = Got::default();
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if start.elapsed() >= duration {
                    break;
                }
                if let Some(t) = talker.as_mut() {
                    ws.send(Message::binary(t.next_frame(true))).await.expect("send audio");
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = AudioFrame::parse(&bytes).expect("frame parses");
                    got.frames.insert(frame.header.sequence, frame.payload.to_vec());
                    got.listener.receive(frame.header, frame.payload);
                }
                Some(Ok(Message::Text(text))) => {
                    got.messages.push(parse_server_message(text.as_str()).expect("json"));
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended early: {other:?}"),
            },
        }
    }
    let _ = ws.close(None).await;
    got
}

/// The last 1.5 s of what a member heard.
fn tail(got: &Got) -> &[f32] {
    let pcm = &got.listener.pcm;
    &pcm[pcm.len().saturating_sub(72_000)..]
}

fn assert_heard(who: &str, got: &Got, present: &[f32], absent: &[f32]) {
    let pcm = tail(got);
    for f in present {
        let db = tone_db(pcm, *f);
        assert!(db > -22.0, "{who}: {f} Hz not heard ({db:.1} dB)");
    }
    for f in absent {
        let db = tone_db(pcm, *f);
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
    let run = Duration::from_secs(4);
    let (t0, t1, t2, l0, l1, l2) = tokio::join!(
        member(talk0, Some(400.0), run),
        member(talk1, Some(650.0), run),
        member(talk2, Some(1000.0), run),
        member(listen0, None, run),
        member(listen1, None, run),
        member(listen2, None, run),
    );
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
        .frames
        .keys()
        .filter(|seq| l2.frames.contains_key(seq))
        .copied()
        .collect();
    assert!(
        common.len() > 100,
        "only {} frames in common between the owner's and the edge's edge's listener",
        common.len()
    );
    for seq in &common {
        assert_eq!(l0.frames[seq], l2.frames[seq], "frame {seq} differs");
    }
    // Every member saw the whole room: each listener's roster names the six.
    let joined = |got: &Got| {
        got.messages
            .iter()
            .filter(|m| matches!(m, ServerMessage::ParticipantJoined { .. }))
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
