//! Servers started with `--redis-url` register in the fleet's Redis, announce their real load
//! and state, and leave it when they stop (the first piece of issue 14's fleet).

use std::time::Duration;

use mixer::fleet::{Fleet, FleetConfig, NodeId, NodeInfo, NodeState};
use mixer_protocol::Mode;

use super::{TestServer, join};
use crate::common::private_redis::PrivateRedis;

async fn node(redis: &PrivateRedis, id: &str) -> TestServer {
    let url = redis.url();
    let public = format!("ws://{id}.example.net:8080/");
    TestServer::start(&[
        "--redis-url",
        url.as_str(),
        "--public-url",
        public.as_str(),
        "--node-id",
        id,
    ])
    .await
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
    let (_talker, _) = join(&a, "busy", "talker", Mode::Talk).await;
    let (_listener, _) = join(&a, "busy", "listener", Mode::Listen).await;
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
