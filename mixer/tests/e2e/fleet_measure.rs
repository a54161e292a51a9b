//! Measurements of the fleet for the README and the closing notes, not verdicts: ignored by
//! default (each takes one to two minutes), run with
//! `cargo test --release -p mixer --test tests fleet_measure -- --ignored --nocapture`.
//! They print what they measure; their only assertions are that the fleet worked at all.

use std::time::{Duration, Instant};

use mixer_protocol::Mode;

use super::cluster::{Cluster, PAIR_TONES, TalkingPair, join_fleet};

/// The middle and the largest of `values`.
fn p50_max(mut values: Vec<Duration>) -> (Duration, Duration) {
    values.sort();
    (values[values.len() / 2], values[values.len() - 1])
}

/// User plus system CPU time of process `pid`.
pub(super) fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// The sum of a metric's series in a node's `/metrics`.
async fn metric(cluster: &Cluster, node: usize, name: &str, labels: &str) -> f64 {
    let (_, body) = super::http_get(cluster.nodes[node].addr, "/metrics").await;
    super::metric(&body, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute); run with --ignored --nocapture"]
async fn placement_of_300_rooms_and_the_registry_s_cost_per_node() {
    // Every client here comes from 127.0.0.1: no per-address limits.
    let cluster = Cluster::start(3, &["--max-connections-per-address", "0"]).await;
    let urls = cluster.urls();
    let mut members = Vec::new();
    let mut per_node = [0usize; 3];
    let started = Instant::now();
    for index in 0..300 {
        let joined = join_fleet(
            &urls,
            index % 3,
            &format!("room-{index:03}"),
            "listener",
            Mode::Listen,
            Duration::from_secs(10),
        )
        .await;
        per_node[cluster.index_of(&joined.url)] += 1;
        members.push(joined);
    }
    let redirected = members.iter().filter(|m| m.redirects > 0).count();
    eprintln!(
        "300 rooms (one listener each, joins sent to the nodes in turn) placed as {per_node:?} in {:?}; {redirected} joins redirected",
        started.elapsed()
    );
    // The same at 20 new rooms a second, the pace at which every node's announced load (once a
    // second) keeps up.
    let mut paced = [0usize; 3];
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    for index in 0..300 {
        ticker.tick().await;
        let joined = join_fleet(
            &urls,
            index % 3,
            &format!("paced-{index:03}"),
            "listener",
            Mode::Listen,
            Duration::from_secs(10),
        )
        .await;
        paced[cluster.index_of(&joined.url)] += 1;
        members.push(joined);
    }
    eprintln!("300 more rooms at 20 a second placed as {paced:?}");
    // The registry's steady cost with 100 rooms a node: Redis operations per second per node,
    // and the CPU of each node and of Redis over 20 s.
    let window = Duration::from_secs(20);
    let mut before = Vec::new();
    for node in 0..3 {
        before.push(metric(&cluster, node, "mixer_fleet_redis_commands_total", "").await);
    }
    let pids: Vec<u32> = cluster
        .nodes
        .iter()
        .map(|n| n.child.as_ref().expect("running").id())
        .collect();
    let cpu_before: Vec<Duration> = pids.iter().map(|&pid| cpu_of(pid)).collect();
    let redis_before = cpu_of(cluster.redis.pid());
    tokio::time::sleep(window).await;
    for node in 0..3 {
        let ops =
            metric(&cluster, node, "mixer_fleet_redis_commands_total", "").await - before[node];
        let cpu = cpu_of(pids[node]) - cpu_before[node];
        eprintln!(
            "node-{node}: {} rooms, {:.1} Redis operations/s, CPU {:.2} % of a core (mixing included)",
            per_node[node],
            ops / window.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / window.as_secs_f64()
        );
    }
    let redis_cpu = cpu_of(cluster.redis.pid()) - redis_before;
    eprintln!(
        "redis-server: CPU {:.2} % of a core for the three nodes",
        100.0 * redis_cpu.as_secs_f64() / window.as_secs_f64()
    );
    assert!(per_node.iter().all(|&n| n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about two minutes); run with --ignored --nocapture"]
async fn heal_time_after_kill_9_over_ten_kills() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut heals = Vec::new();
    for round in 0..10 {
        let urls = cluster.urls();
        let room = format!("heal-{round}");
        let owner = cluster.owner_of_new_room(&room, round).await;
        let run = Duration::from_secs(9);
        let pair = TalkingPair::start(&urls, &room, (owner, owner + 1), run);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Instant::now();
        cluster.nodes[owner].kill();
        let (a, b) = pair.finish().await;
        for roamed in [&a, &b] {
            let (_, back) = roamed.rejoins[0];
            heals.push(back - killed);
        }
        eprintln!(
            "kill {round}: back after {:?} and {:?}",
            a.rejoins[0].1 - killed,
            b.rejoins[0].1 - killed
        );
        // The node comes back (a new process under the same id) for the next round.
        let id = cluster.nodes[owner].id.clone();
        cluster.nodes[owner] = Cluster::spawn(&cluster.redis, &id, &[]).await;
        cluster.until_registered(3).await;
    }
    let (p50, max) = p50_max(heals.clone());
    eprintln!(
        "heal time over {} clients of 10 kills: p50 {p50:?}, max {max:?}",
        heals.len()
    );
    assert!(max < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute); run with --ignored --nocapture"]
async fn a_30_second_redis_outage() {
    let mut cluster = Cluster::start(3, &[]).await;
    let urls = cluster.urls();
    let run = Duration::from_secs(45);
    let pair = TalkingPair::start(&urls, "outage", (0, 1), run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = Instant::now();
    cluster.redis.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let restarted = Instant::now();
    cluster.redis.restart();
    let (a, b) = pair.finish().await;
    for (who, roamed) in [("a", &a), ("b", &b)] {
        let (dropped, _) = roamed.rejoins[0];
        let (_, back) = *roamed.rejoins.last().expect("rejoined");
        eprintln!(
            "{who}: room mixed {:?} into the outage, then stopped; {} rejoin attempts ended {:?} after Redis returned (on {:?})",
            dropped - stopped,
            roamed.rejoins.len(),
            back.saturating_duration_since(restarted),
            roamed.nodes.last()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute); run with --ignored --nocapture"]
async fn the_gap_participants_hear_when_a_drain_moves_their_room() {
    let mut gaps = Vec::new();
    let mut silences = Vec::new();
    for round in 0..5 {
        let cluster = Cluster::start(3, &["--drain-timeout-ms", "500"]).await;
        let urls = cluster.urls();
        let owner = cluster.owner_of_new_room("move", 0).await;
        let run = Duration::from_secs(7);
        let pair = TalkingPair::start(&urls, "move", (owner, owner), run);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.nodes[owner].terminate();
        let (a, b) = pair.finish().await;
        for (roamed, other) in [(&a, PAIR_TONES.1), (&b, PAIR_TONES.0)] {
            let (dropped, back) = roamed.rejoins[0];
            gaps.push(roamed.longest_gap_since(dropped - Duration::from_millis(100)));
            let frames = roamed.longest_silence(
                dropped - Duration::from_millis(500),
                back + Duration::from_secs(2),
                other,
            );
            silences.push(Duration::from_millis(20 * frames as u64));
        }
        eprintln!("drain {round}: ids {:?} {:?}", a.ids, b.ids);
    }
    let (gap50, gapmax) = p50_max(gaps);
    let (sil50, silmax) = p50_max(silences);
    eprintln!(
        "drain move over 10 clients: longest gap between frames p50 {gap50:?} max {gapmax:?}; the other talker's voice missing p50 {sil50:?} max {silmax:?}"
    );
}
