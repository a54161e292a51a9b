//! Prometheus metrics: the shell's view of traffic, audio quality and timing.
//!
//! The engine keeps plain counters; the mixer threads copy their growth into these metrics once a
//! second per room, and time each tick's phases. Everything lives in an explicit registry owned by
//! the server (no global state), served as text on `GET /metrics`.
//!
//! Labels are bounded on purpose: `mode` (talk, ptt, listen), `reason` (a fixed set of leave,
//! refusal and redirect reasons), `code` (the protocol's error codes), `event` (floor changes),
//! `phase` (tick phases), and the fleet's `outcome`, `cause` and `op` (fixed sets below). Every
//! known label value is created at start-up, so a series exists (at zero) before its first event:
//! dashboards show zeros rather than gaps, and `increase()` sees the first event. There are no
//! per-room or per-participant labels: rooms are created by clients, so their number is unbounded,
//! and a label per room would let any client grow the server's memory and every scrape.
//!
//! A node of a fleet builds its metrics with [`Metrics::with_node`], which adds one constant label,
//! `node="<id>"`, to every series: one value per process, so no series are added.

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use mixer_protocol::{ErrorCode, FloorEndReason, LeaveReason, Mode};

use crate::engine::RoomTotals;

/// The `phase` labels of `mixer_tick_phase_seconds_total`, in tick order.
pub const TICK_PHASES: [&str; 3] = ["decode", "mix", "encode"];

/// The `event` label of `mixer_floor_events_total` for a grant; the others are the reasons a
/// floor ends ([`FloorEndReason`]).
pub const FLOOR_GRANTED: &str = "granted";

/// The `reason` labels of `mixer_audio_frames_rejected_total`: the error codes an audio frame
/// can be refused with, `muted` (dropped without an error) and `mixer_backlog` (too many of the
/// participant's frames were waiting for its mixer thread).
pub const AUDIO_REJECT_REASONS: [&str; 11] = [
    "mixer_backlog",
    "muted",
    "not_joined",
    "bad_audio_header",
    "unsupported_version",
    "unsupported_format",
    "invalid_opus",
    "frame_too_large",
    "rate_limited",
    "listen_only",
    "no_floor",
];

/// The error codes a `join` can be refused with (the `reason` of
/// `mixer_join_failures_total`).
pub const JOIN_FAILURES: [ErrorCode; 23] = [
    ErrorCode::InvalidRoom,
    ErrorCode::InvalidName,
    ErrorCode::InvalidToken,
    ErrorCode::UnsupportedFormat,
    ErrorCode::AlreadyJoined,
    ErrorCode::RoomFull,
    ErrorCode::ServerFull,
    ErrorCode::ServerBusy,
    ErrorCode::ModeNotAllowed,
    ErrorCode::ResumeFailed,
    ErrorCode::RateLimited,
    ErrorCode::ShuttingDown,
    ErrorCode::Internal,
    ErrorCode::BadMessage,
    ErrorCode::ControlRateLimited,
    ErrorCode::TokenRequired,
    ErrorCode::TokenExpired,
    ErrorCode::TokenWrongRoom,
    ErrorCode::TokenInsufficient,
    ErrorCode::NameTaken,
    ErrorCode::Banned,
    ErrorCode::Draining,
    ErrorCode::Replaced,
];

/// The error codes an access token can be refused with (the `code` of
/// `mixer_auth_failures_total`).
pub const AUTH_FAILURES: [ErrorCode; 5] = [
    ErrorCode::TokenRequired,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::TokenWrongRoom,
    ErrorCode::TokenInsufficient,
];

/// The `outcome` labels of `mixer_fleet_claims_total`: the answers to a room claim in Redis.
/// `claimed`: the room is this node's (a new lease, or its own lease renewed); `owned`: another
/// node holds it (the client is redirected); `held`: claims are held back while leases granted
/// before Redis lost its data may still run; `error`: Redis failed or gave an odd reply.
pub const FLEET_CLAIM_OUTCOMES: [&str; 4] = ["claimed", "owned", "held", "error"];

/// The `reason` labels of `mixer_redirects_total`: `other_node` (the room lives on another node
/// when the client asks for it), `moved` (a draining node handed the room to another node) and
/// `lease_lost` (this node lost the room's lease, so its participants go to the new owner).
pub const REDIRECT_REASONS: [&str; 3] = ["other_node", "moved", "lease_lost"];

/// The `cause` labels of `mixer_fleet_lease_losses_total`: `taken` (Redis said another node holds
/// the lease, or that it is gone) and `expired` (the local deadline passed without a renewal, e.g.
/// Redis unreachable). They point at different faults: `expired` at this node's link to Redis,
/// `taken` at a lease that lapsed in Redis all the same (a Redis restart, a renewal too late).
pub const LEASE_LOSS_CAUSES: [&str; 2] = ["taken", "expired"];

/// The `op` labels of `mixer_fleet_redis_commands_total`: every kind of Redis operation a node
/// sends (each a command or a script call), so Redis load can be traced to its cause.
pub const FLEET_REDIS_OPS: [&str; 8] = [
    "heartbeat",
    "claim",
    "renew",
    "release",
    "owner",
    "nodes",
    "rooms",
    "handoff",
];

/// Every metric the server exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Open node-to-node links from edges (see `server::link`).
    pub links: IntGauge,
    /// Connections accepted (TCP), all routes.
    pub connections_total: IntCounter,
    /// Connections refused at the connection limit, the server's or one address's.
    pub connections_refused_total: IntCounter,
    /// Rooms that exist.
    pub rooms: IntGauge,
    /// Participants by mode.
    pub participants: IntGaugeVec,
    /// Successful joins by mode.
    pub joins_total: IntCounterVec,
    /// Refused joins by reason (the error code sent).
    pub join_failures_total: IntCounterVec,
    /// Requests refused for their access token, by error code.
    pub auth_failures_total: IntCounterVec,
    /// Admin API requests, by outcome (HTTP status).
    pub admin_requests_total: IntCounterVec,
    /// Fleet registrations renewed in Redis, by outcome (`ok`, `error`).
    pub fleet_heartbeats_total: IntCounterVec,
    /// Room leases this node holds.
    pub fleet_rooms_owned: IntGauge,
    /// Room claims sent to Redis, by outcome ([`FLEET_CLAIM_OUTCOMES`]).
    pub fleet_claims_total: IntCounterVec,
    /// Redirect messages sent to clients, by reason ([`REDIRECT_REASONS`]).
    pub redirects_total: IntCounterVec,
    /// Room leases this node lost, by cause ([`LEASE_LOSS_CAUSES`]).
    pub fleet_lease_losses_total: IntCounterVec,
    /// Rooms this node claimed after their previous lease lapsed instead of being released.
    pub fleet_failovers_total: IntCounter,
    /// Drains this node started (SIGTERM or the admin API).
    pub fleet_drains_total: IntCounter,
    /// Rooms this node handed to another node while draining.
    pub fleet_rooms_moved_total: IntCounter,
    /// Live nodes in the fleet, as this node last read the registry.
    pub fleet_nodes: IntGauge,
    /// Redis operations this node sent, by operation ([`FLEET_REDIS_OPS`]).
    pub fleet_redis_commands_total: IntCounterVec,
    /// Participants who left, by reason.
    pub leaves_total: IntCounterVec,
    /// Error messages sent to clients, by code.
    pub errors_sent_total: IntCounterVec,
    /// Audio frames accepted from clients and forwarded to a mixer.
    pub audio_frames_in_total: IntCounter,
    /// Bytes of those frames (header included).
    pub audio_bytes_in_total: IntCounter,
    /// Audio frames refused before mixing, by reason.
    pub audio_frames_rejected_total: IntCounterVec,
    /// Audio frames queued to clients.
    pub audio_frames_out_total: IntCounter,
    /// Bytes of those frames.
    pub audio_bytes_out_total: IntCounter,
    /// Packets that arrived too late to play.
    pub packets_late_total: IntCounter,
    /// Duplicate packets dropped.
    pub packets_duplicate_total: IntCounter,
    /// Packets that arrived out of order, in time to play.
    pub packets_reordered_total: IntCounter,
    /// Frames never received (their sequence number was skipped at playout).
    pub packets_lost_total: IntCounter,
    /// Frames concealed with Opus PLC (lost, or the buffer ran dry mid-spurt).
    pub frames_concealed_total: IntCounter,
    /// Lost frames recovered from the next packet's in-band FEC.
    pub frames_fec_recovered_total: IntCounter,
    /// Pairs of frames merged into one to shed jitter-buffer delay.
    pub frames_merged_total: IntCounter,
    /// Packets that failed to decode.
    pub decode_errors_total: IntCounter,
    /// Mixes that failed to encode.
    pub encode_errors_total: IntCounter,
    /// Jitter-buffer target playout delay of active talkers, sampled once a second each.
    pub jitter_buffer_delay_seconds: Histogram,
    /// Talk spurts that ended with the buffer running dry (end of speech or a stall).
    pub jitter_buffer_underruns_total: IntCounter,
    /// Ticks run.
    pub ticks_total: IntCounter,
    /// Wall time of one room tick (decode + mix + encode).
    pub tick_duration_seconds: Histogram,
    /// How late a tick started after its deadline.
    pub tick_lateness_seconds: Histogram,
    /// Ticks that started a whole frame period (20 ms) or more after their deadline.
    pub tick_deadline_misses_total: IntCounter,
    /// Ticks skipped because a mixer thread fell too far behind.
    pub ticks_skipped_total: IntCounter,
    /// Time spent in each tick phase (`phase` = decode, mix, encode).
    pub tick_phase_seconds_total: prometheus::CounterVec,
    /// Audio frames dropped from full client send queues.
    pub send_queue_drops_total: IntCounter,
    /// Clients disconnected for not reading.
    pub slow_consumer_disconnects_total: IntCounter,
    /// Output frames in which the limiter reduced the gain.
    pub limiter_frames_total: IntCounter,
    /// Output frames not sent because the mix was settled silence (downlink DTX).
    pub audio_frames_paused_total: IntCounter,
    /// Chat messages delivered to rooms.
    pub chat_messages_total: IntCounter,
    /// Control messages not applied, by reason: `budget` (over the connection's control
    /// budget), `flood` (the last one of a connection closed for ignoring its budget) or `busy`
    /// (the room's mixer thread had too many requests queued).
    pub control_refused_total: IntCounterVec,
    /// Push-to-talk floor changes, by event (`granted`, or the reason it ended).
    pub floor_events_total: IntCounterVec,
    /// Participants taken back with a resume token after a dropped connection.
    pub resumes_total: IntCounter,
    /// Participants who joined during a push-to-talk transmission and heard it replayed.
    pub replays_total: IntCounter,
    /// Deepest gain reduction in each limited frame, dB.
    pub limiter_gain_reduction_db: Histogram,
    /// Mixer threads running.
    pub mixer_threads: IntGauge,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("metric name and help are valid constants")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid constant metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid constant metric")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid constant metric")
}

impl Metrics {
    /// Creates every metric and registers it, with the process collector (CPU, memory, fds).
    pub fn new() -> Metrics {
        Metrics::with_registry(Registry::new())
    }

    /// The same metrics for a node of a fleet: every series the registry exports, the process
    /// collector's included, carries the constant label `node="<node>"`.
    ///
    /// `instance` is whatever address Prometheus scrapes, which may be a proxy or change with the
    /// host; `node` is the id the fleet knows the node by (in Redis, redirects and logs), so a
    /// dashboard's rooms per node match the registry. The registry adds the label when it gathers
    /// (prometheus 0.14's `Registry::new_custom`), so no metric's definition changes.
    pub fn with_node(node: &str) -> Metrics {
        let labels = HashMap::from([("node".to_owned(), node.to_owned())]);
        // `new_custom` fails only for an empty prefix, and this passes none.
        let registry =
            Registry::new_custom(None, Some(labels)).expect("a registry without a prefix");
        Metrics::with_registry(registry)
    }

    /// Creates every metric and registers it in `registry`: the one list both constructors share.
    fn with_registry(registry: Registry) -> Metrics {
        let tick_buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.015, 0.02, 0.03,
            0.05, 0.1,
        ];
        let metrics = Metrics {
            registry,
            connections: gauge("mixer_connections", "Open WebSocket connections."),
            links: gauge(
                "mixer_links",
                "Open node-to-node links from edge nodes (each carries an edge's members of one room).",
            ),
            connections_total: counter("mixer_connections_total", "TCP connections accepted."),
            connections_refused_total: counter(
                "mixer_connections_refused_total",
                "Connections refused at the server's or an address's connection limit.",
            ),
            rooms: gauge("mixer_rooms", "Rooms that exist."),
            participants: IntGaugeVec::new(
                Opts::new("mixer_participants", "Participants in rooms, by mode."),
                &["mode"],
            )
            .expect("valid constant metric"),
            joins_total: counter_vec("mixer_joins_total", "Successful joins, by mode.", &["mode"]),
            join_failures_total: counter_vec(
                "mixer_join_failures_total",
                "Refused joins, by reason (the error code sent).",
                &["reason"],
            ),
            auth_failures_total: counter_vec(
                "mixer_auth_failures_total",
                "Requests (join, create_room, room_info, list_rooms) refused for their access token, by error code.",
                &["code"],
            ),
            admin_requests_total: counter_vec(
                "mixer_admin_requests_total",
                "Admin API requests, by HTTP status.",
                &["status"],
            ),
            fleet_heartbeats_total: counter_vec(
                "mixer_fleet_heartbeats_total",
                "Fleet registrations renewed in Redis (--redis-url), by outcome: ok or error.",
                &["outcome"],
            ),
            fleet_rooms_owned: gauge("mixer_fleet_rooms_owned", "Room leases this node holds."),
            fleet_claims_total: counter_vec(
                "mixer_fleet_claims_total",
                "Room claims sent to Redis, by outcome: claimed (this node's), owned (another node's), held (claims held back after Redis lost its data) or error.",
                &["outcome"],
            ),
            redirects_total: counter_vec(
                "mixer_redirects_total",
                "Clients sent to another node (redirect messages sent), by reason.",
                &["reason"],
            ),
            fleet_lease_losses_total: counter_vec(
                "mixer_fleet_lease_losses_total",
                "Room leases this node lost, by cause: taken (Redis said another node holds it or it is gone) or expired (the local deadline passed without a renewal).",
                &["cause"],
            ),
            fleet_failovers_total: counter(
                "mixer_fleet_failovers_total",
                "Rooms this node claimed whose previous lease lapsed instead of being released (their node died or was cut off).",
            ),
            fleet_drains_total: counter(
                "mixer_fleet_drains_total",
                "Drains this node started (SIGTERM or the admin API).",
            ),
            fleet_rooms_moved_total: counter(
                "mixer_fleet_rooms_moved_total",
                "Rooms this node handed to another node while draining.",
            ),
            fleet_nodes: gauge(
                "mixer_fleet_nodes",
                "Live nodes in the fleet, as this node last read the registry.",
            ),
            fleet_redis_commands_total: counter_vec(
                "mixer_fleet_redis_commands_total",
                "Redis operations this node sent, by operation.",
                &["op"],
            ),
            leaves_total: counter_vec(
                "mixer_leaves_total",
                "Participants who left, by reason.",
                &["reason"],
            ),
            errors_sent_total: counter_vec(
                "mixer_errors_sent_total",
                "Error messages sent to clients, by code.",
                &["code"],
            ),
            audio_frames_in_total: counter(
                "mixer_audio_frames_in_total",
                "Audio frames accepted from clients.",
            ),
            audio_bytes_in_total: counter(
                "mixer_audio_bytes_in_total",
                "Bytes of audio frames accepted from clients.",
            ),
            audio_frames_rejected_total: counter_vec(
                "mixer_audio_frames_rejected_total",
                "Audio frames refused before mixing, by reason.",
                &["reason"],
            ),
            audio_frames_out_total: counter(
                "mixer_audio_frames_out_total",
                "Audio frames queued to clients.",
            ),
            audio_bytes_out_total: counter(
                "mixer_audio_bytes_out_total",
                "Bytes of audio frames queued to clients.",
            ),
            packets_late_total: counter(
                "mixer_packets_late_total",
                "Packets that arrived too late to play.",
            ),
            packets_duplicate_total: counter(
                "mixer_packets_duplicate_total",
                "Duplicate packets dropped.",
            ),
            packets_reordered_total: counter(
                "mixer_packets_reordered_total",
                "Packets that arrived out of order but in time to play.",
            ),
            packets_lost_total: counter(
                "mixer_packets_lost_total",
                "Frames never received (skipped at playout).",
            ),
            frames_concealed_total: counter(
                "mixer_frames_concealed_total",
                "Frames concealed with Opus PLC.",
            ),
            frames_fec_recovered_total: counter(
                "mixer_frames_fec_recovered_total",
                "Lost frames recovered from in-band FEC.",
            ),
            frames_merged_total: counter(
                "mixer_frames_merged_total",
                "Frame pairs merged into one to shed jitter-buffer delay.",
            ),
            decode_errors_total: counter(
                "mixer_decode_errors_total",
                "Packets that failed to decode.",
            ),
            encode_errors_total: counter(
                "mixer_encode_errors_total",
                "Mixes that failed to encode.",
            ),
            jitter_buffer_delay_seconds: histogram(
                "mixer_jitter_buffer_delay_seconds",
                "Jitter-buffer target playout delay of active talkers, sampled once a second each.",
                vec![
                    0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.3, 0.5, 1.0,
                ],
            ),
            jitter_buffer_underruns_total: counter(
                "mixer_jitter_buffer_underruns_total",
                "Talk spurts that ended with the jitter buffer running dry.",
            ),
            ticks_total: counter("mixer_ticks_total", "Room mix ticks run."),
            tick_duration_seconds: histogram(
                "mixer_tick_duration_seconds",
                "Wall time of one room tick (decode, mix, encode).",
                tick_buckets.clone(),
            ),
            tick_lateness_seconds: histogram(
                "mixer_tick_lateness_seconds",
                "How late a room tick started after its deadline.",
                tick_buckets,
            ),
            tick_deadline_misses_total: counter(
                "mixer_tick_deadline_misses_total",
                "Room ticks that started 20 ms or more after their deadline.",
            ),
            ticks_skipped_total: counter(
                "mixer_ticks_skipped_total",
                "Room ticks skipped because a mixer thread fell too far behind.",
            ),
            tick_phase_seconds_total: prometheus::CounterVec::new(
                Opts::new(
                    "mixer_tick_phase_seconds_total",
                    "Time spent in each tick phase.",
                ),
                &["phase"],
            )
            .expect("valid constant metric"),
            send_queue_drops_total: counter(
                "mixer_send_queue_drops_total",
                "Audio frames dropped from full client send queues.",
            ),
            slow_consumer_disconnects_total: counter(
                "mixer_slow_consumer_disconnects_total",
                "Clients disconnected for not reading their audio.",
            ),
            limiter_frames_total: counter(
                "mixer_limiter_frames_total",
                "Output frames in which the limiter reduced the gain.",
            ),
            chat_messages_total: counter(
                "mixer_chat_messages_total",
                "Chat messages delivered to rooms.",
            ),
            control_refused_total: counter_vec(
                "mixer_control_refused_total",
                "Control messages not applied: over the connection's budget, or mixer thread busy.",
                &["reason"],
            ),
            floor_events_total: counter_vec(
                "mixer_floor_events_total",
                "Push-to-talk floor changes: granted, or why the floor ended.",
                &["event"],
            ),
            resumes_total: counter(
                "mixer_resumes_total",
                "Participants taken back with a resume token after a dropped connection.",
            ),
            replays_total: counter(
                "mixer_replays_total",
                "Participants who joined during a push-to-talk transmission and heard it replayed from its start.",
            ),
            audio_frames_paused_total: counter(
                "mixer_audio_frames_paused_total",
                "Output frames not sent because the participant's mix was settled silence.",
            ),
            limiter_gain_reduction_db: histogram(
                "mixer_limiter_gain_reduction_db",
                "Deepest limiter gain reduction in each limited frame, in dB.",
                vec![1.0, 2.0, 3.0, 6.0, 10.0, 15.0, 20.0],
            ),
            mixer_threads: gauge("mixer_threads", "Mixer threads running."),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(metrics.connections.clone()),
            Box::new(metrics.links.clone()),
            Box::new(metrics.connections_total.clone()),
            Box::new(metrics.connections_refused_total.clone()),
            Box::new(metrics.rooms.clone()),
            Box::new(metrics.participants.clone()),
            Box::new(metrics.joins_total.clone()),
            Box::new(metrics.join_failures_total.clone()),
            Box::new(metrics.auth_failures_total.clone()),
            Box::new(metrics.admin_requests_total.clone()),
            Box::new(metrics.fleet_heartbeats_total.clone()),
            Box::new(metrics.fleet_rooms_owned.clone()),
            Box::new(metrics.fleet_claims_total.clone()),
            Box::new(metrics.redirects_total.clone()),
            Box::new(metrics.fleet_lease_losses_total.clone()),
            Box::new(metrics.fleet_failovers_total.clone()),
            Box::new(metrics.fleet_drains_total.clone()),
            Box::new(metrics.fleet_rooms_moved_total.clone()),
            Box::new(metrics.fleet_nodes.clone()),
            Box::new(metrics.fleet_redis_commands_total.clone()),
            Box::new(metrics.leaves_total.clone()),
            Box::new(metrics.errors_sent_total.clone()),
            Box::new(metrics.audio_frames_in_total.clone()),
            Box::new(metrics.audio_bytes_in_total.clone()),
            Box::new(metrics.audio_frames_rejected_total.clone()),
            Box::new(metrics.audio_frames_out_total.clone()),
            Box::new(metrics.audio_bytes_out_total.clone()),
            Box::new(metrics.packets_late_total.clone()),
            Box::new(metrics.packets_duplicate_total.clone()),
            Box::new(metrics.packets_reordered_total.clone()),
            Box::new(metrics.packets_lost_total.clone()),
            Box::new(metrics.frames_concealed_total.clone()),
            Box::new(metrics.frames_fec_recovered_total.clone()),
            Box::new(metrics.frames_merged_total.clone()),
            Box::new(metrics.decode_errors_total.clone()),
            Box::new(metrics.encode_errors_total.clone()),
            Box::new(metrics.jitter_buffer_delay_seconds.clone()),
            Box::new(metrics.jitter_buffer_underruns_total.clone()),
            Box::new(metrics.ticks_total.clone()),
            Box::new(metrics.tick_duration_seconds.clone()),
            Box::new(metrics.tick_lateness_seconds.clone()),
            Box::new(metrics.tick_deadline_misses_total.clone()),
            Box::new(metrics.ticks_skipped_total.clone()),
            Box::new(metrics.tick_phase_seconds_total.clone()),
            Box::new(metrics.send_queue_drops_total.clone()),
            Box::new(metrics.slow_consumer_disconnects_total.clone()),
            Box::new(metrics.limiter_frames_total.clone()),
            Box::new(metrics.audio_frames_paused_total.clone()),
            Box::new(metrics.chat_messages_total.clone()),
            Box::new(metrics.control_refused_total.clone()),
            Box::new(metrics.floor_events_total.clone()),
            Box::new(metrics.resumes_total.clone()),
            Box::new(metrics.replays_total.clone()),
            Box::new(metrics.limiter_gain_reduction_db.clone()),
            Box::new(metrics.mixer_threads.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Label values that exist from the start, so dashboards show zeros rather than gaps.
        for mode in [Mode::Talk, Mode::Ptt, Mode::Listen] {
            metrics
                .participants
                .with_label_values(&[mode.as_str()])
                .set(0);
            metrics.joins_total.with_label_values(&[mode.as_str()]);
        }
        for phase in TICK_PHASES {
            metrics.tick_phase_seconds_total.with_label_values(&[phase]);
        }
        for reason in ["budget", "flood", "busy"] {
            metrics.control_refused_total.with_label_values(&[reason]);
        }
        metrics
            .floor_events_total
            .with_label_values(&[FLOOR_GRANTED]);
        for reason in FloorEndReason::ALL {
            metrics
                .floor_events_total
                .with_label_values(&[reason.as_str()]);
        }
        for reason in AUDIO_REJECT_REASONS {
            metrics
                .audio_frames_rejected_total
                .with_label_values(&[reason]);
        }
        for code in AUTH_FAILURES {
            metrics
                .auth_failures_total
                .with_label_values(&[code.as_str()]);
        }
        for outcome in ["ok", "error"] {
            metrics.fleet_heartbeats_total.with_label_values(&[outcome]);
        }
        for outcome in FLEET_CLAIM_OUTCOMES {
            metrics.fleet_claims_total.with_label_values(&[outcome]);
        }
        for reason in REDIRECT_REASONS {
            metrics.redirects_total.with_label_values(&[reason]);
        }
        for cause in LEASE_LOSS_CAUSES {
            metrics.fleet_lease_losses_total.with_label_values(&[cause]);
        }
        for op in FLEET_REDIS_OPS {
            metrics.fleet_redis_commands_total.with_label_values(&[op]);
        }
        for status in ["200", "400", "401", "403", "404", "405"] {
            metrics.admin_requests_total.with_label_values(&[status]);
        }
        for code in JOIN_FAILURES {
            metrics
                .join_failures_total
                .with_label_values(&[code.as_str()]);
        }
        for &code in ErrorCode::ALL {
            metrics
                .errors_sent_total
                .with_label_values(&[code.as_str()]);
        }
        for reason in LeaveReason::ALL {
            metrics.leaves_total.with_label_values(&[reason.as_str()]);
        }
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // Registration only fails on a duplicate name, which a fresh registry cannot have.
            let _ = metrics.registry.register(Box::new(process));
        }
        metrics
    }

    /// Counts an error message sent to a client.
    pub fn count_error(&self, code: ErrorCode) {
        self.errors_sent_total
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Counts an audio frame refused before mixing; `reason` is one of
    /// [`AUDIO_REJECT_REASONS`].
    pub fn reject_audio(&self, reason: &'static str) {
        debug_assert!(AUDIO_REJECT_REASONS.contains(&reason), "{reason}");
        self.audio_frames_rejected_total
            .with_label_values(&[reason])
            .inc();
    }

    /// The registry, for tests that inspect metric families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Adds the growth of a room's engine counters between two snapshots.
    pub fn add_room_delta(&self, before: &RoomTotals, after: &RoomTotals) {
        let (b, a) = (&before.jitter, &after.jitter);
        let grow =
            |counter: &IntCounter, old: u64, new: u64| counter.inc_by(new.saturating_sub(old));
        grow(&self.packets_late_total, b.late, a.late);
        grow(&self.packets_duplicate_total, b.duplicates, a.duplicates);
        grow(&self.packets_reordered_total, b.reordered, a.reordered);
        grow(
            &self.packets_lost_total,
            b.lost + b.fec_recovered,
            a.lost + a.fec_recovered,
        );
        grow(
            &self.frames_concealed_total,
            b.lost + b.expanded,
            a.lost + a.expanded,
        );
        grow(
            &self.frames_fec_recovered_total,
            b.fec_recovered,
            a.fec_recovered,
        );
        grow(&self.frames_merged_total, b.merged, a.merged);
        grow(
            &self.jitter_buffer_underruns_total,
            b.underruns,
            a.underruns,
        );
        let (b, a) = (&before.participants, &after.participants);
        grow(&self.decode_errors_total, b.decode_errors, a.decode_errors);
        grow(&self.encode_errors_total, b.encode_errors, a.encode_errors);
        grow(
            &self.limiter_frames_total,
            b.frames_limited,
            a.frames_limited,
        );
        grow(
            &self.audio_frames_paused_total,
            b.frames_paused,
            a.frames_paused,
        );
        let histogram = &self.limiter_gain_reduction_db;
        for (db, (old, new)) in b
            .limiter_reduction_db
            .iter()
            .zip(&a.limiter_reduction_db)
            .enumerate()
        {
            for _ in 0..new.saturating_sub(*old) {
                histogram.observe(db as f64);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_the_mixer_prefix() {
        let metrics = Metrics::new();
        metrics.ticks_total.inc();
        let text = metrics.render();
        assert!(text.contains("mixer_ticks_total 1"));
        assert!(text.contains("mixer_participants{mode=\"talk\"} 0"));
        for family in metrics.registry().gather() {
            let name = family.name();
            assert!(
                name.starts_with("mixer_") || name.starts_with("process_"),
                "{name}"
            );
        }
    }

    #[test]
    fn every_labelled_counter_is_exported_before_its_first_event() {
        let text = Metrics::new().render();
        for series in [
            "mixer_audio_frames_rejected_total{reason=\"no_floor\"} 0",
            "mixer_audio_frames_rejected_total{reason=\"mixer_backlog\"} 0",
            "mixer_errors_sent_total{code=\"control_rate_limited\"} 0",
            "mixer_errors_sent_total{code=\"server_busy\"} 0",
            "mixer_floor_events_total{event=\"preempted\"} 0",
            "mixer_join_failures_total{reason=\"room_full\"} 0",
            "mixer_leaves_total{reason=\"slow_consumer\"} 0",
            "mixer_participants{mode=\"ptt\"} 0",
            "mixer_joins_total{mode=\"ptt\"} 0",
            "mixer_tick_phase_seconds_total{phase=\"encode\"} 0",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }

    #[test]
    fn fleet_series_are_exported_before_their_first_event() {
        let text = Metrics::new().render();
        for series in [
            "mixer_fleet_rooms_owned 0",
            "mixer_fleet_nodes 0",
            "mixer_fleet_failovers_total 0",
            "mixer_fleet_drains_total 0",
            "mixer_fleet_rooms_moved_total 0",
            "mixer_fleet_claims_total{outcome=\"held\"} 0",
            "mixer_redirects_total{reason=\"lease_lost\"} 0",
            "mixer_fleet_lease_losses_total{cause=\"expired\"} 0",
            "mixer_fleet_redis_commands_total{op=\"handoff\"} 0",
            "mixer_fleet_heartbeats_total{outcome=\"error\"} 0",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }

    #[test]
    fn a_node_labels_every_series_and_a_lone_server_none() {
        let metrics = Metrics::with_node("node-a");
        metrics.ticks_total.inc();
        let text = metrics.render();
        assert!(
            text.contains("mixer_ticks_total{node=\"node-a\"} 1"),
            "{text}"
        );
        assert!(text.contains("mixer_participants{mode=\"talk\",node=\"node-a\"} 0"));
        for family in metrics.registry().gather() {
            for metric in family.get_metric() {
                assert!(
                    metric
                        .get_label()
                        .iter()
                        .any(|pair| pair.name() == "node" && pair.value() == "node-a"),
                    "{} without the node label",
                    family.name()
                );
            }
        }
        // The process collector's series too (Linux only).
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_start_time_seconds{node=\"node-a\"}"));
        }
        assert!(!Metrics::new().render().contains("node="));
    }

    #[test]
    fn room_deltas_only_add_growth() {
        let metrics = Metrics::new();
        let mut before = RoomTotals::default();
        before.jitter.late = 5;
        let mut after = before.clone();
        after.jitter.late = 8;
        after.participants.limiter_reduction_db[3] = 2;
        metrics.add_room_delta(&before, &after);
        assert_eq!(metrics.packets_late_total.get(), 3);
        assert_eq!(metrics.limiter_gain_reduction_db.get_sample_count(), 2);
    }
}
