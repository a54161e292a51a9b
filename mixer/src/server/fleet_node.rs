//! This server's membership of a fleet (`--redis-url`): every second it renews its room leases
//! (releasing rooms that emptied, publishing each room's summary), registers with its state and
//! load so the fleet's placement sees it, and, while draining, hands its rooms to other nodes
//! once the drain timeout has passed; it deregisters when it stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::fleet_rooms::FleetRooms;
use super::metrics::Metrics;
use super::pool::MixerPool;
use crate::fleet::{Fleet, Load, NodeState};

/// The load one mixer thread takes, in [`Load::cost`] units: the all-talk capacity measured in
/// the README (about 160 talkers held on one core; a talker costs 3 units, its room's share
/// about 0). A node announces its thread count times this.
pub const COST_PER_THREAD: u32 = 480;

/// How long after a room is claimed here the node announces its new load (the room's first
/// client has joined by then, so the announced counts include it), instead of at the next
/// renewal round. Claims within the delay share one announcement.
const ANNOUNCE_DELAY: Duration = Duration::from_millis(100);

/// Runs until `stop` turns true: connects (retrying each renewal interval while Redis is
/// unreachable), then announces this node every renewal interval; deregisters at the end.
pub async fn run(
    rooms: Arc<FleetRooms>,
    pool: MixerPool,
    metrics: Arc<Metrics>,
    threads: usize,
    drained: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = rooms.settings().clone();
    let interval = settings.store.lease / 3;
    let capacity = u32::try_from(threads)
        .unwrap_or(u32::MAX)
        .saturating_mul(COST_PER_THREAD);
    let mut cpu = CpuMeter::new();
    let mut ticks = TickMeter::new(&metrics);
    let mut fleet: Option<Fleet> = None;
    let (mut failing, mut registered) = (false, false);
    let mut drain_started: Option<Instant> = None;
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_cpu, mut last_headroom) = (0.0, 1.0);
    loop {
        // A full round every renewal interval; in between, a room claimed here is announced
        // within ANNOUNCE_DELAY, so that other nodes placing a burst of new rooms see it.
        let full = tokio::select! {
            _ = timer.tick() => true,
            () = rooms.load_changed(), if fleet.is_some() => {
                tokio::time::sleep(ANNOUNCE_DELAY).await;
                false
            }
            _ = stop.changed() => break,
        };
        if fleet.is_none() {
            match Fleet::connect(
                settings.store.clone(),
                settings.node.clone(),
                settings.public_url.clone(),
            )
            .await
            {
                Ok(connected) => {
                    rooms.connected(connected.clone());
                    fleet = Some(connected);
                }
                Err(error) => {
                    note_failure(&metrics, &mut failing, "connect", &error);
                    continue;
                }
            }
        }
        let Some(connected) = &fleet else { continue };
        if full {
            // The leases first: they are what keeps rooms mixing.
            rooms.renew(connected, |room| pool.room_info(room)).await;
            (last_cpu, last_headroom) = (cpu.cores(), ticks.headroom(&metrics, threads));
        }
        if full && pool.is_draining() {
            let started = *drain_started.get_or_insert_with(|| {
                metrics.fleet_drains_total.inc();
                info!(rooms = rooms.held_count(), timeout = ?settings.drain_timeout, "draining: no new rooms; rooms move to other nodes when they have not emptied by the drain timeout");
                Instant::now()
            });
            if started.elapsed() >= settings.drain_timeout {
                rooms.move_rooms(connected).await;
            }
            if rooms.held_count() == 0 {
                // Whoever waits for the drain to end (a SIGTERM) may stop the node now.
                drained.notify_one();
            }
        } else if !pool.is_draining() {
            drain_started = None;
        }
        let state = if pool.is_draining() {
            NodeState::Draining
        } else {
            NodeState::Active
        };
        let load = Load {
            capacity,
            cpu: last_cpu,
            tick_headroom: last_headroom,
            ..pool_load(&metrics)
        };
        metrics
            .fleet_redis_commands_total
            .with_label_values(&["heartbeat"])
            .inc();
        match connected.heartbeat(state, load).await {
            Ok(()) => {
                metrics
                    .fleet_heartbeats_total
                    .with_label_values(&["ok"])
                    .inc();
                if !std::mem::replace(&mut registered, true) {
                    info!(node = %settings.node, url = %settings.public_url, "registered in the fleet");
                } else if failing {
                    info!(node = %settings.node, "registered in the fleet again");
                }
                failing = false;
            }
            Err(error) => note_failure(&metrics, &mut failing, "heartbeat", &error),
        }
        if full {
            rooms.refresh_nodes(connected).await;
        }
    }
    if let Some(fleet) = fleet {
        // Gone at once rather than after the lease, so no new room is placed here meanwhile.
        match fleet.deregister().await {
            Ok(()) => info!(node = %settings.node, "left the fleet"),
            Err(error) => {
                warn!(node = %settings.node, %error, "could not deregister; the registration lapses by itself")
            }
        }
    }
}

/// Counts a failed connect or heartbeat, logging only the first of a run of failures.
fn note_failure(
    metrics: &Metrics,
    failing: &mut bool,
    what: &str,
    error: &crate::fleet::FleetError,
) {
    metrics
        .fleet_heartbeats_total
        .with_label_values(&["error"])
        .inc();
    if !std::mem::replace(failing, true) {
        warn!(%error, what, "fleet registry unreachable; retrying every renewal interval");
    }
}

/// Rooms, participants and talkers (participants in `talk` or `ptt` mode, the most that can
/// be mixed as talkers) from the server's gauges.
fn pool_load(metrics: &Metrics) -> Load {
    let by_mode = |mode: &str| metrics.participants.with_label_values(&[mode]).get().max(0);
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    let talkers = by_mode("talk") + by_mode("ptt");
    Load {
        rooms: count(metrics.rooms.get()),
        participants: count(talkers + by_mode("listen")),
        talkers: count(talkers),
        ..Load::default()
    }
}

/// The mixer threads' unused share of their ticks since the last reading, from the tick-time
/// histogram: 1 − (seconds spent ticking) ÷ (threads × seconds elapsed). An average over the
/// threads; one overloaded thread among idle ones shows as partial headroom.
struct TickMeter {
    busy: f64,
    at: Instant,
}

impl TickMeter {
    fn new(metrics: &Metrics) -> TickMeter {
        TickMeter {
            busy: metrics.tick_duration_seconds.get_sample_sum(),
            at: Instant::now(),
        }
    }

    fn headroom(&mut self, metrics: &Metrics, threads: usize) -> f32 {
        let busy = metrics.tick_duration_seconds.get_sample_sum();
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64() * threads.max(1) as f64;
        let used = (busy - self.busy).max(0.0);
        self.busy = busy;
        self.at = now;
        if elapsed <= 0.0 {
            return 1.0;
        }
        (1.0 - used / elapsed).clamp(0.0, 1.0) as f32
    }
}

/// The process's CPU use in cores since the last reading (Linux: `/proc/self/stat`; elsewhere
/// always 0, which placement does not use).
struct CpuMeter {
    last: Option<(Duration, Instant)>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        CpuMeter {
            last: process_cpu().map(|cpu| (cpu, Instant::now())),
        }
    }

    fn cores(&mut self) -> f32 {
        let Some(cpu) = process_cpu() else { return 0.0 };
        let now = Instant::now();
        let cores = match self.last {
            Some((before, at)) if now > at => {
                cpu.saturating_sub(before).as_secs_f64() / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((cpu, now));
        cores as f32
    }
}

/// User plus system CPU time of this process.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; the fields after it start past its ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    Some(Duration::from_millis(ticks * 10))
}
