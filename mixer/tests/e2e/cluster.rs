//! The harness of the fleet tests: real mixer processes (the `mixer` binary) sharing a private
//! Redis, and clients that find their room anywhere in the fleet.
//!
//! Nodes are processes, not tasks, because a node must be killed with SIGKILL (no chance to
//! deregister or release). Each listens on its own loopback port and tells clients that
//! address as its public URL. Clients here are "roaming" clients: they follow redirects and,
//! when their connection drops, join again at the next URL of their list, as a client behind
//! a load balancer would.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mixer::fleet::{Fleet, FleetConfig, NodeId};
use mixer_protocol::{
    ClientMessage, ErrorCode, Mode, RedirectReason, Role, ServerMessage, parse_server_message,
};
use tokio_tungstenite::tungstenite::Message;

use super::Client;
use crate::common::private_redis::PrivateRedis;
use crate::common::{Listener, Talker};

/// One mixer process of the fleet.
pub(super) struct Node {
    pub(super) id: String,
    pub(super) addr: SocketAddr,
    pub(super) child: Option<Child>,
    pub(super) log: PathBuf,
}

impl Node {
    pub(super) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// SIGKILL: the node dies without deregistering or releasing anything.
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, by PID.
    pub(super) fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits (at most `timeout`) for the process to exit by itself.
    pub(super) fn wait_exit(&mut self, timeout: Duration) -> bool {
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

    pub(super) fn log(&self) -> String {
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
pub(super) struct Cluster {
    pub(super) redis: PrivateRedis,
    pub(super) nodes: Vec<Node>,
}

/// A free loopback port (free a moment ago: a node that cannot bind it fails to start, and is
/// started again on another).
pub(super) fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Redis and `n` nodes, each registered in the fleet.
    pub(super) async fn start(n: usize, extra: &[&str]) -> Cluster {
        let redis = PrivateRedis::start();
        let mut nodes = Vec::new();
        for index in 0..n {
            nodes.push(Cluster::spawn(&redis, &format!("node-{index}"), extra).await);
        }
        let cluster = Cluster { redis, nodes };
        cluster.until_registered(n).await;
        cluster
    }

    pub(super) async fn spawn(redis: &PrivateRedis, id: &str, extra: &[&str]) -> Node {
        Cluster::spawn_at(&redis.url(), id, extra).await
    }

    /// A node that reaches Redis at `redis_url` (a [`RedisCut`] in front of it, say).
    pub(super) async fn spawn_at(redis_url: &str, id: &str, extra: &[&str]) -> Node {
        for _ in 0..5 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let url = format!("ws://{addr}/");
            let mut args = vec![
                "--redis-url",
                redis_url,
                "--public-url",
                &url,
                "--node-id",
                id,
            ];
            args.extend_from_slice(extra);
            let mut node = Node::launch(id, addr, &args);
            if node.until_healthy().await {
                return node;
            }
            eprintln!("node {id} did not start:\n{}", node.log());
            node.kill();
        }
        panic!("node {id} did not start in five tries");
    }

    /// Waits until `n` nodes are registered in Redis (at most 10 s).
    pub(super) async fn until_registered(&self, n: usize) {
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
    pub(super) async fn observer(&self) -> Fleet {
        Fleet::connect(
            FleetConfig::new(self.redis.url()),
            NodeId::new("observer").expect("id"),
            "ws://observer/",
        )
        .await
        .expect("connect to the test's Redis")
    }

    pub(super) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The node whose public URL is `url`.
    pub(super) fn index_of(&self, url: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.url() == url)
            .unwrap_or_else(|| panic!("no node at {url}"))
    }
}

impl Node {
    /// A mixer process outside any fleet on loopback `port`, with `extra` flags (a static tree
    /// of edges, say).
    pub(super) async fn spawn_plain(id: &str, port: u16, extra: &[&str]) -> Node {
        let mut node = Node::launch(id, SocketAddr::from((Ipv4Addr::LOCALHOST, port)), extra);
        assert!(
            node.until_healthy().await,
            "{id} did not start:\n{}",
            node.log()
        );
        node
    }

    /// Starts the `mixer` binary serving on `addr` with `args`, its log in a file of its own.
    fn launch(id: &str, addr: SocketAddr, args: &[&str]) -> Node {
        let log = std::env::temp_dir().join(format!(
            "mixer-node-{}-{id}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mixer"))
            .args(["serve", "--mixer-threads", "1", "--log", "info"])
            .args(["--listen", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the mixer binary");
        Node {
            id: id.to_owned(),
            addr,
            child: Some(child),
            log,
        }
    }

    /// Polls `/healthz` until it answers 200 (at most 10 s), or the process exits.
    pub(super) async fn until_healthy(&mut self) -> bool {
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
pub(super) enum Outcome {
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

pub(super) fn join_request(room: &str, name: &str, mode: Mode, resume: Option<String>) -> Message {
    let mut join = super::join_request_as(room, name, mode, Role::Speaker);
    join.resume = resume;
    Message::text(ClientMessage::Join(join).to_json())
}

/// Connects to `url` and sends a join; returns what came of it.
pub(super) async fn try_join(
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
pub(super) struct Joined {
    pub(super) ws: Box<Client>,
    pub(super) url: String,
    pub(super) id: u32,
    pub(super) resumed: bool,
    pub(super) redirects: usize,
}

/// Joins `room` starting at `urls[first]`: follows redirects (at most 3 in a row), and on an
/// unreachable node or a `fleet_unavailable` moves to the next URL, for at most `patience`.
pub(super) async fn join_fleet(
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

/// How long a roaming client keeps trying to get back into its room (a Redis outage of 30 s
/// included).
const REJOIN_PATIENCE: Duration = Duration::from_secs(45);

/// What a roaming client saw over its run.
#[derive(Default)]
pub(super) struct Roamed {
    /// Decoded audio of every connection, in order.
    pub(super) pcm: Vec<f32>,
    /// When each audio frame arrived, and where its audio starts in `pcm`.
    pub(super) arrivals: Vec<(Instant, usize)>,
    /// When each connection ended and when the client was in its room again.
    pub(super) rejoins: Vec<(Instant, Instant)>,
    /// The node of each connection, in order.
    pub(super) nodes: Vec<String>,
    /// The participant id of each connection, and whether it resumed.
    pub(super) ids: Vec<(u32, bool)>,
    /// Redirects followed, by reason (joins included).
    pub(super) redirects: usize,
    pub(super) moved: usize,
}

impl Roamed {
    /// The decoded audio received after `from`.
    pub(super) fn pcm_since(&self, from: Instant) -> &[f32] {
        let start = self
            .arrivals
            .iter()
            .find(|(at, _)| *at >= from)
            .map_or(self.pcm.len(), |(_, offset)| *offset);
        &self.pcm[start..]
    }

    /// The longest run of received frames after `from` (until `to`) in which `freq` is not
    /// heard, in frames: the gap in another talker's voice around a move, which counts the
    /// frames the new node sends before its jitter buffer has that talker again.
    pub(super) fn longest_silence(&self, from: Instant, to: Instant, freq: f32) -> usize {
        let mut longest = 0;
        let mut run = 0;
        for (index, (at, offset)) in self.arrivals.iter().enumerate() {
            if *at < from || *at > to {
                continue;
            }
            let end = self
                .arrivals
                .get(index + 1)
                .map_or(self.pcm.len(), |(_, o)| *o);
            let frame = &self.pcm[*offset..end.min(*offset + 960)];
            if crate::common::tone_db(frame, freq) < -30.0 {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        longest
    }

    /// The longest gap between two frames received after `from`.
    pub(super) fn longest_gap_since(&self, from: Instant) -> Duration {
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
pub(super) async fn roam(
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
    let mut joined = join_fleet(&urls, start, &room, &name, mode, REJOIN_PATIENCE).await;
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
                join_fleet(&urls, start, &room, &name, mode, REJOIN_PATIENCE).await
            }
        };
        roamed.rejoins.push((dropped, Instant::now()));
    }
}

/// A TCP relay between one node and Redis that the test can cut: while cut, it forwards nothing
/// either way but keeps every connection open (a black hole, like a partition, not a refused
/// connection), and accepts new connections into the same black hole. Healing closes the
/// connections that were cut, so the node connects afresh.
pub(super) struct RedisCut {
    port: u16,
    cut: Arc<AtomicBool>,
    heals: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisCut {
    /// A relay on a free loopback port to Redis on `redis_port`.
    pub(super) async fn start(redis_port: u16) -> RedisCut {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let heals = Arc::new(AtomicU64::new(0));
        let (cut_flag, heal_count) = (cut.clone(), heals.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) =
                    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, redis_port)).await
                else {
                    continue;
                };
                let (cut, heals) = (cut_flag.clone(), heal_count.clone());
                tokio::spawn(relay(client, server, cut, heals));
            }
        });
        RedisCut {
            port,
            cut,
            heals,
            task,
        }
    }

    /// The relay's port (it relays any TCP, not only Redis).
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port/` of the relay.
    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops forwarding.
    pub(super) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again; the connections that were cut are closed.
    pub(super) fn heal(&self) {
        self.heals.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for RedisCut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes, dropping what arrives while cut, and ending a
/// connection that was cut once the cut heals.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    cut: Arc<AtomicBool>,
    heals: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let heals_at_start = heals.load(Ordering::SeqCst);
    let was_cut = Arc::new(AtomicBool::new(cut.load(Ordering::SeqCst)));
    let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf| {
        let (cut, heals, was_cut) = (cut.clone(), heals.clone(), was_cut.clone());
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let read =
                    tokio::time::timeout(Duration::from_millis(100), from.read(&mut buffer)).await;
                if was_cut.load(Ordering::SeqCst) && heals.load(Ordering::SeqCst) != heals_at_start
                {
                    return;
                }
                let n = match read {
                    Err(_) => continue,
                    Ok(Ok(0) | Err(_)) => return,
                    Ok(Ok(n)) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    was_cut.store(true, Ordering::SeqCst);
                    continue;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = pump(client_read, server_write) => {}
        () = pump(server_read, client_write) => {}
    }
}

impl Cluster {
    /// The node that a new room `room` is placed on, found by joining it (at `first`) and
    /// leaving: the lease stays with that node while the room is in use.
    pub(super) async fn owner_of_new_room(&self, room: &str, first: usize) -> usize {
        let urls = self.urls();
        let probe = join_fleet(
            &urls,
            first,
            room,
            "probe",
            Mode::Listen,
            Duration::from_secs(5),
        )
        .await;
        self.index_of(&probe.url)
    }
}

/// Two roaming talkers in one room: `a` sends 400 Hz and starts at `urls[starts.0]`, `b` sends
/// 1000 Hz and starts at `urls[starts.1]`; each should hear the other's tone.
pub(super) struct TalkingPair {
    a: tokio::task::JoinHandle<Roamed>,
    b: tokio::task::JoinHandle<Roamed>,
}

/// The tones of a [`TalkingPair`].
pub(super) const PAIR_TONES: (f32, f32) = (400.0, 1000.0);

impl TalkingPair {
    /// Starts both for `run`.
    pub(super) fn start(
        urls: &[String],
        room: &str,
        starts: (usize, usize),
        run: Duration,
    ) -> TalkingPair {
        let talker = |start: usize, name: &str, tone: f32| {
            tokio::spawn(roam(
                urls.to_vec(),
                start,
                room.to_owned(),
                name.to_owned(),
                Some(tone),
                run,
            ))
        };
        TalkingPair {
            a: talker(starts.0, "a", PAIR_TONES.0),
            b: talker(starts.1, "b", PAIR_TONES.1),
        }
    }

    /// Waits for both runs to end: `(a, b)`.
    pub(super) async fn finish(self) -> (Roamed, Roamed) {
        (
            self.a.await.expect("a's task"),
            self.b.await.expect("b's task"),
        )
    }
}
