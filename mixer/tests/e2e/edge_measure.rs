//! Measurements of edge nodes for the README and the closing notes, not verdicts: ignored by
//! default, run with a release build and enough file descriptors (1,000 clients):
//! `ulimit -n 20000; cargo test --release -p mixer --test tests edge_measure -- --ignored
//! --nocapture`. Nodes are `mixer` processes in a static tree (no Redis), so each one's CPU
//! time and bytes written can be read from `/proc`. They print what they measure; their only
//! assertions are that the listeners got their audio at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{AudioFrame, Mode, ServerMessage, parse_server_message};
use tokio_tungstenite::tungstenite::Message;

use super::cluster::{Node, free_port};
use super::edge::{edge_flags, key_file};
use super::fleet_measure::cpu_of;
use super::join_message;
use crate::common::Talker;

/// A mixer process with `extra` flags, no fleet; every client comes from 127.0.0.1 here.
async fn spawn(id: &str, extra: &[&str]) -> Node {
    let mut flags = vec![
        "--max-connections-per-address",
        "0",
        "--max-participants",
        "2000",
    ];
    flags.extend_from_slice(extra);
    Node::spawn_plain(id, free_port(), &flags).await
}

/// The audio a node has sent, in bytes (frames to clients and to links, headers included).
async fn audio_bytes_out(node: &Node) -> u64 {
    let (_, body) = super::http_get(node.addr, "/metrics").await;
    super::metric(&body, "mixer_audio_bytes_out_total", "") as u64
}

fn pid(node: &Node) -> u32 {
    node.child.as_ref().expect("running").id()
}

/// Joins `room` at `url` and counts the frames it gets until `until`.
async fn counting_listener(url: String, room: &str, name: String, frames: Arc<AtomicU64>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return;
    };
    if ws
        .send(join_message(room, &name, Mode::Listen))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Binary(_) = message {
            frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Talks `freq` into `room` at `url` until `until`.
async fn talker(url: String, room: &'static str, name: &'static str, freq: f32, until: Instant) {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    ws.send(join_message(room, name, Mode::Talk))
        .await
        .expect("join");
    let mut talker = Talker::new(freq, 0.2);
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until {
        tokio::select! {
            _ = ticker.tick() => {
                if ws.send(Message::binary(talker.next_frame(true))).await.is_err() {
                    return;
                }
            }
            message = ws.next() => {
                if !matches!(message, Some(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Three talkers on the first node, `listeners` spread evenly over `at`; returns each node's
/// CPU (share of one core) and bytes written per second over a 15 s window, and the frames a
/// listener got per second.
async fn run_town_hall(nodes: &[&Node], at: &[&Node], listeners: usize) -> Vec<(f64, f64)> {
    let room = "hall";
    let until = Instant::now() + Duration::from_secs(60);
    let owner_url = nodes[0].url();
    for (i, freq) in [400.0, 650.0, 1000.0].into_iter().enumerate() {
        let name = ["talker-0", "talker-1", "talker-2"][i];
        tokio::spawn(talker(owner_url.clone(), room, name, freq, until));
    }
    let frames = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..listeners {
        let url = at[i % at.len()].url();
        tasks.push(tokio::spawn(counting_listener(
            url,
            room,
            format!("listener-{i}"),
            frames.clone(),
        )));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(15);
    let mut before = Vec::new();
    for node in nodes {
        before.push((cpu_of(pid(node)), audio_bytes_out(node).await));
    }
    let frames_before = frames.load(Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let mut after = Vec::new();
    for node in nodes {
        after.push((cpu_of(pid(node)), audio_bytes_out(node).await));
    }
    let got = frames.load(Ordering::Relaxed) - frames_before;
    let per_listener = got as f64 / listeners as f64 / window.as_secs_f64();
    eprintln!("  frames per listener per second: {per_listener:.1}");
    if per_listener < 40.0 {
        for node in nodes {
            let log = node.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {} ---\n{}", node.id, tail.join("\n"));
        }
        panic!("the listeners did not get their audio");
    }
    for task in tasks {
        task.abort();
    }
    before
        .iter()
        .zip(&after)
        .map(|((c0, w0), (c1, w1))| {
            (
                (*c1 - *c0).as_secs_f64() / window.as_secs_f64(),
                (w1 - w0) as f64 / window.as_secs_f64(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about two minutes); run with --ignored --nocapture"]
async fn owner_cost_with_1000_listeners_on_it_or_on_two_edges() {
    let key = key_file();
    let listeners = 1000;
    {
        let owner = spawn("owner", &["--node-key-file", &key]).await;
        let upstream = owner.url();
        let edge_a = spawn("edge-a", &edge_flags(&key, &upstream)).await;
        let edge_b = spawn("edge-b", &edge_flags(&key, &upstream)).await;
        let used = run_town_hall(&[&owner, &edge_a, &edge_b], &[&edge_a, &edge_b], listeners).await;
        eprintln!(
            "{listeners} listeners on two edges: owner {:.1} % of a core, {:.0} kB/s of audio sent; edges {:.1} % and {:.1} %",
            used[0].0 * 100.0,
            used[0].1 / 1000.0,
            used[1].0 * 100.0,
            used[2].0 * 100.0
        );
    }
    {
        let owner = spawn("owner", &["--node-key-file", &key]).await;
        let used = run_town_hall(&[&owner], &[&owner], 1).await;
        eprintln!(
            "the talkers and one listener on the owner: owner {:.1} % of a core, {:.0} kB/s of audio sent",
            used[0].0 * 100.0,
            used[0].1 / 1000.0
        );
    }
    {
        let owner = spawn("owner", &["--node-key-file", &key]).await;
        let used = run_town_hall(&[&owner], &[&owner], listeners).await;
        eprintln!(
            "{listeners} listeners on the owner: owner {:.1} % of a core, {:.0} kB/s of audio sent",
            used[0].0 * 100.0,
            used[0].1 / 1000.0
        );
    }
}

/// Arrival time of every frame by sequence number, for a listener at `url`, until `until`.
async fn arrivals(url: String, name: String, until: Instant) -> HashMap<u16, Instant> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    ws.send(join_message("hops", &name, Mode::Listen))
        .await
        .expect("join");
    let mut got = HashMap::new();
    while Instant::now() < until {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(100), ws.next()).await
        else {
            continue;
        };
        match message {
            Message::Binary(bytes) => {
                let now = Instant::now();
                let frame = AudioFrame::parse(&bytes).expect("frame");
                got.insert(frame.header.sequence, now);
            }
            Message::Text(text) => {
                let _: ServerMessage = parse_server_message(text.as_str()).expect("json");
            }
            _ => {}
        }
    }
    got
}

fn percentiles(mut values: Vec<Duration>) -> (Duration, Duration, Duration) {
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), values[values.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 40 s); run with --ignored --nocapture"]
async fn delay_each_hop_adds() {
    let key = key_file();
    let owner = spawn("owner", &["--node-key-file", &key]).await;
    let up = owner.url();
    let edge = spawn("edge", &edge_flags(&key, &up)).await;
    let up = edge.url();
    let edge2 = spawn("edge2", &edge_flags(&key, &up)).await;
    let until = Instant::now() + Duration::from_secs(32);
    tokio::spawn(talker(owner.url(), "hops", "talker", 650.0, until));
    let (at_owner, at_edge, at_edge2) = tokio::join!(
        arrivals(owner.url(), "l0".into(), until),
        arrivals(edge.url(), "l1".into(), until),
        arrivals(edge2.url(), "l2".into(), until),
    );
    let hop = |near: &HashMap<u16, Instant>, far: &HashMap<u16, Instant>| -> Vec<Duration> {
        near.iter()
            .filter_map(|(seq, t)| far.get(seq).map(|f| f.saturating_duration_since(*t)))
            .collect()
    };
    for (name, near, far) in [
        ("owner -> edge", &at_owner, &at_edge),
        ("edge -> edge of edge", &at_edge, &at_edge2),
    ] {
        let deltas = hop(near, far);
        assert!(
            deltas.len() > 1000,
            "{name}: {} frames in common",
            deltas.len()
        );
        let (p50, p99, max) = percentiles(deltas);
        eprintln!("{name}: added delay p50 {p50:?}, p99 {p99:?}, max {max:?}");
    }
}
