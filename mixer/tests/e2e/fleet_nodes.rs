//! Servers started with `--redis-url` register in the fleet's Redis, announce their real load
//! and state, and leave it when they stop.

use std::time::Duration;

use futures_util::SinkExt;
use mixer::auth::{Claims, Signer, unix_now};
use mixer::fleet::{Fleet, FleetConfig, NodeId, NodeInfo, NodeState};
use mixer_protocol::{AudioFormat, ClientMessage, JoinRequest, Mode, Role, ServerMessage};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::TestServer;
use crate::common::private_redis::PrivateRedis;

/// The HMAC secret the nodes verify admin tokens with.
const SECRET: &[u8] = b"fleet test secret, 32 bytes or more";

async fn node(redis: &PrivateRedis, id: &str) -> TestServer {
    let url = redis.url();
    let public = format!("ws://{id}.example.net:8080/");
    let key = std::env::temp_dir().join(format!("mixer-fleet-{}-{id}.key", std::process::id()));
    std::fs::write(&key, SECRET).expect("write key");
    TestServer::start(&[
        "--redis-url",
        url.as_str(),
        "--public-url",
        public.as_str(),
        "--node-id",
        id,
        "--auth-key-file",
        key.to_str().expect("utf-8 path"),
    ])
    .await
}

/// A join token for `room`.
fn token(identity: &str, room: &str) -> String {
    Signer::hmac(SECRET)
        .sign(&Claims {
            sub: identity.into(),
            name: None,
            role: Role::Speaker,
            rooms: vec![room.into()],
            can_create_rooms: false,
            can_list_rooms: false,
            admin: identity == "ops",
            exp: unix_now() + 600,
            nbf: None,
            iat: None,
        })
        .expect("sign")
}

/// Joins `room` on `server` as `identity` in `mode`.
async fn join(server: &TestServer, room: &str, identity: &str, mode: Mode) -> super::Client {
    let mut ws = super::connect(server).await;
    let join = ClientMessage::Join(JoinRequest {
        room: room.into(),
        name: String::new(),
        token: Some(token(identity, room)),
        mode: Some(mode),
        resume: None,
        role: None,
        format: AudioFormat::opus_48k_mono_20ms(),
    });
    ws.send(Message::text(join.to_json())).await.expect("send");
    assert!(matches!(
        super::next_control(&mut ws).await,
        ServerMessage::Joined { .. }
    ));
    ws
}

/// Asks `server`'s admin API to drain, with an operator's token.
async fn drain(server: &TestServer) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "POST /admin/drain HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
        token("ops", "none")
    );
    let (status, body) = super::http_exchange(&mut stream, &request).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
}

/// A handle on the fleet's Redis that only reads it.
async fn observe(redis: &PrivateRedis) -> Fleet {
    Fleet::connect(
        FleetConfig::new(redis.url()),
        NodeId::new("observer").expect("id"),
        "ws://observer/",
    )
    .await
    .expect("connect")
}

/// Polls the registry until `done` holds for the listed nodes, for at most 5 s.
async fn until(observer: &Fleet, done: impl Fn(&[NodeInfo]) -> bool) -> Vec<NodeInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let nodes = observer.nodes().await.expect("list nodes");
        if done(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registry never got there: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_announce_their_load_and_leave_when_they_stop() {
    let redis = PrivateRedis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let observer = observe(&redis).await;
    let nodes = until(&observer, |nodes| nodes.len() == 2).await;
    assert_eq!(nodes[0].id.as_str(), "node-a");
    assert_eq!(nodes[0].url, "ws://node-a.example.net:8080/");
    assert_eq!(nodes[1].url, "ws://node-b.example.net:8080/");
    for node in &nodes {
        assert_eq!(node.state, NodeState::Active);
        assert_eq!(node.load.rooms, 0);
        assert!(node.load.capacity > 0, "{node:?}");
    }
    // A talker and a listener on node A show in its load within a heartbeat or two.
    let _talker = join(&a, "busy", "talker", Mode::Talk).await;
    let _listener = join(&a, "busy", "listener", Mode::Listen).await;
    let nodes = until(&observer, |nodes| {
        nodes
            .iter()
            .any(|n| n.id.as_str() == "node-a" && n.load.participants == 2)
    })
    .await;
    let loaded = &nodes[0].load;
    assert_eq!(
        (loaded.rooms, loaded.participants, loaded.talkers),
        (1, 2, 1)
    );
    assert!(loaded.cost() > nodes[1].load.cost());
    assert!((0.0..=1.0).contains(&loaded.tick_headroom));
    // The admin API's drain shows in the registry, so placement passes the node by.
    drain(&b).await;
    until(&observer, |nodes| {
        nodes
            .iter()
            .any(|n| n.id.as_str() == "node-b" && n.state == NodeState::Draining)
    })
    .await;
    // A node that stops leaves at once, not a lease later.
    b.shutdown().await;
    let nodes = observer.nodes().await.expect("list nodes");
    assert_eq!(
        nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["node-a"]
    );
    // Redis restarts empty (persistence off): the node keeps serving meanwhile and registers
    // again by itself.
    let mut redis = redis;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    let observer = observe(&redis).await;
    until(&observer, |nodes| {
        nodes
            .iter()
            .any(|n| n.id.as_str() == "node-a" && n.load.participants == 2)
    })
    .await;
    let (_, body) = super::http_get(a.addr, "/metrics").await;
    assert!(
        super::metric(&body, "mixer_fleet_heartbeats_total", "outcome=\"error\"") >= 1.0,
        "the failed heartbeats were counted"
    );
    a.shutdown().await;
}
