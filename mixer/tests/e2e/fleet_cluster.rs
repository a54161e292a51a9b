//! A fleet of real mixer processes (the `mixer` binary, three nodes) sharing a private Redis:
//! placement spreads rooms, a join at the wrong node is redirected and hears its room, the
//! room list is the fleet's, a killed node's rooms come back on the others, and a Redis outage
//! stops rooms only at their lease.
//!
//! Nodes are processes, not tasks, because a node must be killed with SIGKILL (no chance to
//! deregister or release). Each listens on its own loopback port and tells clients that
//! address as its public URL. Clients here are "roaming" clients: they follow redirects and,
//! when their connection drops, join again at the next URL of their list, as a client behind
//! a load balancer would.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mixer::fleet::{Fleet, FleetConfig, NodeId};
use mixer_protocol::{
    AudioFormat, ClientMessage, ErrorCode, JoinRequest, Mode, RedirectReason, ServerMessage,
    parse_server_message,
};
use tokio_tungstenite::tungstenite::Message;

use super::Client;
use crate::common::private_redis::PrivateRedis;
use crate::common::{Listener, Talker, tone_db};

/// One mixer process of the fleet.
struct Node {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// SIGKILL: the node dies without deregistering or releasing anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, by PID.
    fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits (at most `timeout`) for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A private Redis and the nodes using it.
struct Cluster {
    redis: PrivateRedis,
    nodes: Vec<Node>,
}

/// A free loopback port (free a moment ago: a node that cannot bind it fails to start, and is
/// started again on another).
fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Redis and `n` nodes, each registered in the fleet.
    async fn start(n: usize, extra: &[&str]) -> Cluster {
        let redis = PrivateRedis::start();
        let mut nodes = Vec::new();
        for index in 0..n {
            nodes.push(Cluster::spawn(&redis, &format!("node-{index}"), extra).await);
        }
        let cluster = Cluster { redis, nodes };
        cluster.until_registered(n).await;
        cluster
    }

    async fn spawn(redis: &PrivateRedis, id: &str, extra: &[&str]) -> Node {
        for _ in 0..5 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let log = std::env::temp_dir().join(format!(
                "mixer-fleet-{}-{id}-{}.log",
                std::process::id(),
                addr.port()
            ));
            let stderr = std::fs::File::create(&log).expect("log file");
            let url = format!("ws://{addr}/");
            let child = Command::new(env!("CARGO_BIN_EXE_mixer"))
                .args(["serve", "--mixer-threads", "1", "--log", "info"])
                .args(["--listen", &addr.to_string()])
                .args(["--redis-url", &redis.url()])
                .args(["--public-url", &url])
                .args(["--node-id", id])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn the mixer binary");
            let mut node = Node {
                id: id.to_owned(),
                addr,
                child: Some(child),
                log,
            };
            if node.until_healthy().await {
                return node;
            }
            eprintln!("node {id} did not start:\n{}", node.log());
            node.kill();
        }
        panic!("node {id} did not start in five tries");
    }

    /// Waits until `n` nodes are registered in Redis (at most 10 s).
    async fn until_registered(&self, n: usize) {
        let observer = self.observer().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let live = observer.nodes().await.map(|n| n.len()).unwrap_or(0);
            if live == n {
                return;
            }
            assert!(Instant::now() < deadline, "{live} of {n} nodes registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A handle on the fleet's Redis for reading it.
    async fn observer(&self) -> Fleet {
        Fleet::connect(
            FleetConfig::new(self.redis.url()),
            NodeId::new("observer").expect("id"),
            "ws://observer/",
        )
        .await
        .expect("connect to the test's Redis")
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The node whose public URL is `url`.
    fn index_of(&self, url: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.url() == url)
            .unwrap_or_else(|| panic!("no node at {url}"))
    }
}

impl Node {
    /// Polls `/healthz` until it answers 200 (at most 10 s), or the process exits.
    async fn until_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let (status, _) = super::http_exchange(
                    &mut stream,
                    "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n",
                )
                .await;
                if status.contains("200") {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// What a join at one URL came to.
enum Outcome {
    Joined {
        ws: Box<Client>,
        id: u32,
        resumed: bool,
    },
    Redirected {
        url: String,
        reason: RedirectReason,
    },
    Refused(ErrorCode),
    Unreachable,
}

fn join_request(room: &str, name: &str, mode: Mode, resume: Option<String>) -> Message {
    Message::text(
        ClientMessage::Join(JoinRequest {
            room: room.into(),
            name: name.into(),
            token: None,
            mode: Some(mode),
            resume,
            role: None,
            format: AudioFormat::opus_48k_mono_20ms(),
        })
        .to_json(),
    )
}

/// Connects to `url` and sends a join; returns what came of it.
async fn try_join(
    url: &str,
    room: &str,
    name: &str,
    mode: Mode,
    resume: Option<String>,
) -> Outcome {
    let connected = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    let Ok(Ok((mut ws, _))) = connected else {
        return Outcome::Unreachable;
    };
    if ws
        .send(join_request(room, name, mode, resume))
        .await
        .is_err()
    {
        return Outcome::Unreachable;
    }
    loop {
        let next = tokio::time::timeout(Duration::from_secs(8), ws.next()).await;
        let Ok(Some(Ok(message))) = next else {
            return Outcome::Unreachable;
        };
        let Message::Text(text) = message else {
            continue;
        };
        match parse_server_message(text.as_str()).expect("server JSON") {
            ServerMessage::Joined {
                participant_id,
                resumed,
                ..
            } => {
                return Outcome::Joined {
                    ws: Box::new(ws),
                    id: participant_id,
                    resumed,
                };
            }
            ServerMessage::Redirect { url, reason, .. } => {
                return Outcome::Redirected { url, reason };
            }
            ServerMessage::Error { code, .. } => return Outcome::Refused(code),
            _ => {}
        }
    }
}

/// A joined client: its socket, the node it is on, its id, whether it resumed, and the
/// redirects it followed.
struct Joined {
    ws: Box<Client>,
    url: String,
    id: u32,
    resumed: bool,
    redirects: usize,
}

/// Joins `room` starting at `urls[first]`: follows redirects (at most 3 in a row), and on an
/// unreachable node or a `fleet_unavailable` moves to the next URL, for at most `patience`.
async fn join_fleet(
    urls: &[String],
    first: usize,
    room: &str,
    name: &str,
    mode: Mode,
    patience: Duration,
) -> Joined {
    let deadline = Instant::now() + patience;
    let mut next = first % urls.len();
    let mut url = urls[next].clone();
    let mut redirects = 0;
    let mut in_a_row = 0;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "{name} could not join {room} within {patience:?}: {seen:?}"
        );
        match try_join(&url, room, name, mode, None).await {
            Outcome::Joined { ws, id, resumed } => {
                return Joined {
                    ws,
                    url,
                    id,
                    resumed,
                    redirects,
                };
            }
            Outcome::Redirected { url: to, reason } if in_a_row < 3 => {
                seen.push(format!("{url} -> {to} ({reason:?})"));
                redirects += 1;
                in_a_row += 1;
                url = to;
                continue;
            }
            outcome => {
                seen.push(match outcome {
                    Outcome::Refused(code) => format!("{url}: {code:?}"),
                    Outcome::Unreachable => format!("{url}: unreachable"),
                    _ => format!("{url}: too many redirects"),
                });
                in_a_row = 0;
                next = (next + 1) % urls.len();
                url = urls[next].clone();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a roaming client saw over its run.
#[derive(Default)]
struct Roamed {
    /// Decoded audio of every connection, in order.
    pcm: Vec<f32>,
    /// When each audio frame arrived, and where its audio starts in `pcm`.
    arrivals: Vec<(Instant, usize)>,
    /// When each connection ended and when the client was in its room again.
    rejoins: Vec<(Instant, Instant)>,
    /// The node of each connection, in order.
    nodes: Vec<String>,
    /// The participant id of each connection, and whether it resumed.
    ids: Vec<(u32, bool)>,
    /// Redirects followed, by reason (joins included).
    redirects: usize,
    moved: usize,
}

impl Roamed {
    /// The decoded audio received after `from`.
    fn pcm_since(&self, from: Instant) -> &[f32] {
        let start = self
            .arrivals
            .iter()
            .find(|(at, _)| *at >= from)
            .map_or(self.pcm.len(), |(_, offset)| *offset);
        &self.pcm[start..]
    }

    /// The longest gap between two frames received after `from`.
    fn longest_gap_since(&self, from: Instant) -> Duration {
        self.arrivals
            .windows(2)
            .filter(|w| w[0].0 >= from)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default()
    }
}

/// A client that stays in `room` for `duration`, sending `tone` (if any) every 20 ms, decoding
/// what it hears, and joining again (at the next URL of its list) whenever its connection ends.
async fn roam(
    urls: Vec<String>,
    first: usize,
    room: String,
    name: String,
    tone: Option<f32>,
    duration: Duration,
) -> Roamed {
    let end = Instant::now() + duration;
    let mode = if tone.is_some() {
        Mode::Talk
    } else {
        Mode::Listen
    };
    let mut talker = tone.map(|f| Talker::new(f, 0.2));
    let mut roamed = Roamed::default();
    let mut start = first;
    let mut joined = join_fleet(&urls, start, &room, &name, mode, Duration::from_secs(15)).await;
    loop {
        roamed.nodes.push(joined.url.clone());
        roamed.ids.push((joined.id, joined.resumed));
        roamed.redirects += joined.redirects;
        // A decoder per connection: a new node's stream starts its own sequence.
        let mut listener = Listener::default();
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        let mut sent_away = None;
        let dropped = loop {
            if Instant::now() >= end {
                let _ = (*joined.ws).close(None).await;
                return roamed;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(talker) = talker.as_mut()
                        && joined.ws.send(Message::binary(talker.next_frame(true))).await.is_err()
                    {
                        break Instant::now();
                    }
                }
                message = joined.ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        roamed.arrivals.push((Instant::now(), roamed.pcm.len()));
                        let before = listener.pcm.len();
                        listener.receive_wire(&bytes);
                        roamed.pcm.extend_from_slice(&listener.pcm[before..]);
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ServerMessage::Redirect { url, reason, resume_token, .. }) =
                            parse_server_message(text.as_str())
                        {
                            sent_away = Some((url, reason, resume_token));
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Instant::now(),
                    Some(Ok(_)) => {}
                },
            }
        };
        // Sent elsewhere with our room (a drain): resume there as the same participant.
        let mut resumed = None;
        if let Some((url, reason, Some(token))) = sent_away {
            roamed.redirects += 1;
            roamed.moved += usize::from(reason == RedirectReason::Moved);
            if let Outcome::Joined { ws, id, resumed: r } =
                try_join(&url, &room, &name, mode, Some(token)).await
            {
                resumed = Some(Joined {
                    ws,
                    url,
                    id,
                    resumed: r,
                    redirects: 0,
                });
            }
        }
        // Otherwise the node went away (or sent us back to join again): try the nodes in
        // turn, starting after it.
        joined = match resumed {
            Some(joined) => joined,
            None => {
                start =
                    (urls.iter().position(|u| *u == joined.url).unwrap_or(start) + 1) % urls.len();
                join_fleet(&urls, start, &room, &name, mode, Duration::from_secs(15)).await
            }
        };
        roamed.rejoins.push((dropped, Instant::now()));
    }
}

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
    // list_rooms at any node lists the whole fleet's rooms (owners publish within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
    let probe = join_fleet(
        &urls,
        0,
        "standup",
        "probe",
        Mode::Listen,
        Duration::from_secs(5),
    )
    .await;
    let owner = cluster.index_of(&probe.url);
    drop(probe);
    let run = Duration::from_secs(16);
    let a = tokio::spawn(roam(
        urls.clone(),
        0,
        "standup".into(),
        "a".into(),
        Some(400.0),
        run,
    ));
    let b = tokio::spawn(roam(
        urls.clone(),
        2,
        "standup".into(),
        "b".into(),
        Some(1000.0),
        run,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    cluster.nodes[owner].kill();
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    for (who, roamed, other) in [("a", &a, 1000.0), ("b", &b, 400.0)] {
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
    let _ = &cluster.nodes[owner].id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_moves_its_live_room_and_everyone_resumes_as_the_same_participant() {
    let mut cluster = Cluster::start(3, &["--drain-timeout-ms", "1000"]).await;
    let urls = cluster.urls();
    let probe = join_fleet(
        &urls,
        0,
        "choir",
        "probe",
        Mode::Listen,
        Duration::from_secs(5),
    )
    .await;
    let owner = cluster.index_of(&probe.url);
    drop(probe);
    let run = Duration::from_secs(10);
    let a = tokio::spawn(roam(
        urls.clone(),
        owner,
        "choir".into(),
        "a".into(),
        Some(400.0),
        run,
    ));
    let b = tokio::spawn(roam(
        urls.clone(),
        owner,
        "choir".into(),
        "b".into(),
        Some(1000.0),
        run,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled = Instant::now();
    cluster.nodes[owner].terminate();
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert!(
        cluster.nodes[owner].wait_exit(Duration::from_secs(10)),
        "the drained node stops by itself once its room has moved"
    );
    for (who, roamed, other) in [("a", &a, 1000.0), ("b", &b, 400.0)] {
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
        eprintln!(
            "{who}: moved {:?} after SIGTERM; back in {:?}; longest gap in its audio {gap:?}",
            dropped - signalled,
            back - dropped
        );
        assert!(
            gap < Duration::from_millis(1500),
            "{who} heard a gap of {gap:?}"
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
    let a = tokio::spawn(roam(
        urls.clone(),
        0,
        "radio".into(),
        "a".into(),
        Some(400.0),
        run,
    ));
    let b = tokio::spawn(roam(
        urls.clone(),
        1,
        "radio".into(),
        "b".into(),
        Some(1000.0),
        run,
    ));
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
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    for (who, roamed, other) in [("a", &a, 1000.0), ("b", &b, 400.0)] {
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
        assert!(
            mixed > Duration::from_millis(1800) && mixed < Duration::from_millis(3100),
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
