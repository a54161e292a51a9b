//! The run's report: what was measured, the gate verdicts, a text table and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{Gates, Scenario};
use crate::histogram::SparseHistogram;
use crate::verify::ReceiverVerdict;

/// Expected receive rate: one frame per 20 ms.
pub const EXPECTED_FPS: f64 = 50.0;

/// Percentiles of a distribution, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Receive rate per client over the measured seconds, in frames per second. Frames paused in
/// silence (downlink DTX) count as covered: a stream that pauses is not choppy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RxRate {
    /// What the server should send: 50 frames/s.
    pub expected: f64,
    /// Mean over clients.
    pub mean: f64,
    /// The worst client's average.
    pub min_client: f64,
    /// The worst single second of any client.
    pub min_second: u32,
    /// Clients measured.
    pub clients: usize,
    /// Clients that received no frame at all and stayed connected: their mix was silent the
    /// whole run, so the server paused them throughout. Not measured above.
    pub silent: usize,
}

/// The µs histograms behind a report's percentiles, kept so that the reports of several load
/// generators can be merged into exact percentiles (see [`crate::merge`]). Each holds the same
/// samples as the percentiles named in its doc line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// `join_ms`: connect plus join time.
    pub join_us: SparseHistogram,
    /// `jitter_ms`: interarrival jitter, once a second per client.
    pub jitter_us: SparseHistogram,
    /// `delay_ms`: mouth-to-ear delay at verified receivers.
    pub delay_us: SparseHistogram,
    /// `reconnect_gap_ms`: each reconnection's audio gap.
    pub reconnect_gap_us: SparseHistogram,
    /// `reconnections.rejoin_ms`: from a break to being joined again.
    pub rejoin_us: SparseHistogram,
    /// `storm.recovery_ms`: from a storm's cut to the first audio frame again (empty without a
    /// storm).
    pub storm_recovery_us: SparseHistogram,
}

/// Frames lost over frames the server sent (received + lost), percent; 0 when nothing was sent.
pub fn loss_pct(received: u64, lost: u64) -> f64 {
    let sent = received.saturating_add(lost);
    if sent == 0 {
        0.0
    } else {
        100.0 * lost as f64 / sent as f64
    }
}

/// Verification results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Receivers verified.
    pub receivers: usize,
    /// Receivers that passed.
    pub passed: usize,
    /// Receivers that failed.
    pub failed: usize,
    /// Every failure, one line each.
    pub failures: Vec<String>,
    /// Samples clipped over all verified receivers.
    pub clipped_samples: usize,
    /// Per-receiver details.
    pub details: Vec<ReceiverVerdict>,
}

/// Sessions that broke mid-run and were rejoined (a fleet moving rooms, nodes going away), over
/// all clients. See [`crate::join`] for how clients rejoin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconnections {
    /// Breaks in all: the sum of the causes below.
    pub total: u64,
    /// A `redirect` with reason `moved` (a draining node handed the room on): resumed at the
    /// new node with the redirect's token.
    pub moved: u64,
    /// A `redirect` with reason `lease_lost`: joined afresh at its URL, following redirects.
    pub lease_lost: u64,
    /// A `redirect` with reason `other_node` mid-session: joined afresh at its URL.
    pub other_node: u64,
    /// No redirect: the connection dropped (or the node closed it going away). Rejoined at the
    /// next `--url`. Also counted as errors.
    pub dropped: u64,
    /// Cut by the reconnect storm (`--storm-at`) and rejoined at the same node. Not errors:
    /// loadgen did it.
    pub storm: u64,
    /// Planned leaves (churn, or stages ramping down and up again), each followed by a fresh
    /// join after the time away. Not errors.
    #[serde(default)]
    pub churn: u64,
    /// Breaks after which the server resumed the client as the same participant.
    pub resumed: u64,
    /// Breaks after which the client gave up (also in `disconnects`).
    pub gave_up: u64,
    /// Clients that reconnected at least once.
    pub clients: usize,
    /// Talker frames due while their talker was rejoining, not sent.
    pub frames_unsent: u64,
    /// From the break to being joined again.
    pub rejoin_ms: Percentiles,
    /// Each client that reconnected, with each of its reconnections.
    pub per_client: Vec<ClientReconnections>,
}

/// One client's reconnections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReconnections {
    /// Room index.
    pub room: usize,
    /// Index within the room.
    pub slot: usize,
    /// Talker frames due while it was rejoining, not sent.
    pub frames_unsent: u64,
    /// In order.
    pub reconnections: Vec<ReconnectionReport>,
}

/// One reconnection of one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconnectionReport {
    /// Why the session broke.
    pub cause: crate::client::ReconnectCause,
    /// What broke it, in words.
    pub reason: String,
    /// When, seconds since the start of the run.
    pub at_secs: f64,
    /// From the break to being joined again, ms; `None` if it never was.
    pub rejoin_ms: Option<f64>,
    /// From the last audio frame before the break to the first after, ms.
    pub gap_ms: Option<f64>,
    /// Resumed as the same participant.
    pub resumed: bool,
    /// The node it rejoined at.
    pub url: Option<String>,
    /// Connections tried.
    pub attempts: u32,
    /// It gave up.
    pub gave_up: bool,
}

/// CPU use over the run, in percent of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// Wall time measured, seconds.
    pub wall_secs: f64,
    /// This load generator.
    pub loadgen_pct: Option<f64>,
    /// The mixer (with `--mixer-pid`).
    pub mixer_pct: Option<f64>,
}

/// One gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// The flag.
    pub gate: String,
    /// Its limit.
    pub limit: String,
    /// The measured value.
    pub value: String,
    /// Whether it held.
    pub passed: bool,
    /// Why it failed, in a sentence.
    pub message: Option<String>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The scenario run.
    pub scenario: Scenario,
    /// Simulated clients.
    pub clients: usize,
    /// Of which talkers.
    pub talkers: usize,
    /// Of which listeners.
    pub listeners: usize,
    /// Clients that joined.
    pub joined: usize,
    /// Why joins failed: reason → count.
    pub join_failures: BTreeMap<String, u64>,
    /// `redirect`s the clients followed (a fleet): when joining, to the node that mixes their
    /// room; mid-session (a room moved or its lease lost, also counted in `reconnections`); and
    /// while rejoining.
    pub redirects: u64,
    /// Sessions that broke mid-run and were rejoined: how many, why, how long it took.
    pub reconnections: Reconnections,
    /// The audio gap of each reconnection: from the last frame received before the break to
    /// the first after (for breaks with a frame on both sides). A gap is reported here, not
    /// counted as loss or against the receive rate.
    pub reconnect_gap_ms: Percentiles,
    /// What the reconnect storm did, when the run had one (`--storm-at`).
    pub storm: Option<StormReport>,
    /// Connect plus join time.
    pub join_ms: Percentiles,
    /// Receive rate.
    pub rx_rate: RxRate,
    /// Audio frames received.
    pub frames_received: u64,
    /// Frames missing from the server's sequence numbers, the gap ending in an unmarked frame
    /// (dropped from a slow client's queue).
    pub frames_lost: u64,
    /// Frames not sent because the receiver's mix was silent: gaps ending in a marked frame
    /// (downlink DTX). Neither received nor lost.
    pub frames_paused: u64,
    /// `frames_lost` over frames the server sent (received + lost), percent.
    pub loss_pct: f64,
    /// Frames whose timestamp jumped further than their sequence number explains (the server
    /// skipped mix ticks).
    pub tick_skips: u64,
    /// RFC 3550 interarrival jitter, sampled once a second per client.
    pub jitter_ms: Percentiles,
    /// Mouth-to-ear delay of tone onsets at verified receivers.
    pub delay_ms: Percentiles,
    /// The histograms the percentiles above were computed from, so that reports can be merged
    /// ([`crate::merge`]).
    pub histograms: Histograms,
    /// Verification of sampled receivers.
    pub verification: Verification,
    /// Connections that ended early: reason → count.
    pub disconnects: BTreeMap<String, u64>,
    /// Server `error` messages: code → count.
    pub server_errors: BTreeMap<String, u64>,
    /// Packets talkers sent (before impairment).
    pub packets_sent: u64,
    /// Packets the client-side impairment dropped.
    pub packets_impaired: u64,
    /// CPU use.
    pub cpu: CpuUse,
    /// The run over time: per-second samples of the clients and the mixers, and the
    /// mouth-to-ear delay over time and its distribution, for charts (`--html`).
    pub timeline: crate::timeline::Timeline,
    /// What the control-flooding clients did (`--flooders`), if any ran.
    pub flood: Option<crate::flood::FloodReport>,
    /// What push-to-talk talkers' floor requests came to, for a push-to-talk group.
    #[serde(default)]
    pub ptt: Option<PttReport>,
    /// What the moderators did, for a group with moderators.
    #[serde(default)]
    pub moderation: Option<ModerationReport>,
    /// Per node (the URL each client was last joined at): how its clients fared.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
    /// Each group's own report, for a scenario file with several groups (empty otherwise: the
    /// report is the one group's).
    #[serde(default)]
    pub groups: Vec<Report>,
    /// Gate verdicts.
    pub gates: Vec<GateVerdict>,
    /// Whether every gate held.
    pub passed: bool,
}

/// Push-to-talk: the talkers' floor requests (one per talk spurt) and their answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PttReport {
    /// `floor_request`s sent.
    pub requests: u64,
    /// Granted.
    pub granted: u64,
    /// Denied: someone else held the floor (single-floor rooms).
    pub denied: u64,
    /// Taken away by the server before the talker let go.
    pub revoked: u64,
    /// From a request to its grant.
    pub grant_ms: Percentiles,
    /// The same, as a histogram of µs, for merging.
    #[serde(default)]
    pub grant_us: crate::histogram::SparseHistogram,
}

/// Moderators muting talkers in turn, and the talkers' side of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModerationReport {
    /// `mute`s the moderators sent.
    pub mutes: u64,
    /// Unmutes they sent.
    pub unmutes: u64,
    /// `participant_muted` the moderators saw for their own mutes and unmutes.
    pub confirmed: u64,
    /// Times a talker was told it was muted.
    pub talkers_muted: u64,
    /// Seconds talkers spent muted, over all talkers (not judged by verification: nobody
    /// should hear them then).
    pub muted_secs: f64,
}

/// One node's share of the run: the clients last joined at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Its URL.
    pub url: String,
    /// Clients last joined at it.
    pub clients: usize,
    /// Audio frames they received.
    pub frames_received: u64,
    /// Frames missing from its sequence numbers (dropped from a slow client's queue).
    pub frames_lost: u64,
    /// `frames_lost` over frames sent, percent.
    pub loss_pct: f64,
    /// Their reconnections (any cause).
    pub reconnections: u64,
    /// Server `error` messages they got.
    pub server_errors: u64,
    /// Of them, clients whose connection ended early.
    pub disconnects: u64,
}

impl NodeReport {
    /// Adds one client last joined at this node.
    pub fn add(&mut self, o: &crate::client::ClientOutcome) {
        if let Some(url) = &o.node {
            self.url.clone_from(url);
        }
        self.clients += 1;
        self.frames_received += o.seq.received;
        self.frames_lost += o.seq.lost;
        let sent = self.frames_received + self.frames_lost;
        self.loss_pct = if sent == 0 {
            0.0
        } else {
            100.0 * self.frames_lost as f64 / sent as f64
        };
        self.reconnections += o.reconnections.len() as u64;
        self.server_errors += o.server_errors.len() as u64;
        self.disconnects += u64::from(o.disconnect.is_some());
    }
}

/// The reconnect storm: the clients it cut, and how long until each heard audio again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    /// When it came, seconds since the start of the run.
    pub at_secs: f64,
    /// Clients whose connection it cut.
    pub clients: u64,
    /// Of those, joined again within the run.
    pub rejoined: u64,
    /// Of those, resumed by the server as the same participant (with their tokens).
    pub resumed: u64,
    /// Of those, that received an audio frame on the new connection.
    pub heard_again: u64,
    /// Cut clients that received no audio frame again before the end of the run.
    pub never_heard_again: u64,
    /// From the cut to the first audio frame on the new connection, per client.
    pub recovery_ms: Percentiles,
    /// When the last of them heard audio again, ms after its cut (`None` if none did).
    pub all_heard_again_ms: Option<f64>,
}

impl Report {
    /// Failed joins, disconnects, dropped connections (rejoined or not) and server error
    /// messages. A redirect mid-session is the fleet at work, not an error; a connection that
    /// dropped is a fault a user would have heard, even if the client got back.
    pub fn errors(&self) -> u64 {
        // Saturating: a report read from a file (`loadgen merge`) may hold any numbers.
        self.join_failures
            .values()
            .chain(self.disconnects.values())
            .chain(self.server_errors.values())
            .chain([&self.reconnections.dropped])
            .fold(0u64, |total, n| total.saturating_add(*n))
    }

    /// The verdict on each gate that is set.
    pub fn gate_verdicts(&self, gates: &Gates) -> Vec<GateVerdict> {
        let mut out = Vec::new();
        let mut max = |gate: &str, limit: Option<f64>, value: Option<f64>, what: &str| {
            let Some(limit) = limit else { return };
            let (passed, value_text, message) = match value {
                Some(v) if v <= limit => (true, format!("{v:.2}"), None),
                Some(v) => (
                    false,
                    format!("{v:.2}"),
                    Some(format!("{what} {v:.2} exceeds {gate} {limit}")),
                ),
                None => (
                    false,
                    "n/a".into(),
                    Some(format!("{what} was not measured ({gate} {limit})")),
                ),
            };
            out.push(GateVerdict {
                gate: gate.into(),
                limit: format!("{limit}"),
                value: value_text,
                passed,
                message,
            });
        };
        let measured = |p: &Percentiles| (p.count > 0).then_some(p.p99);
        max(
            "--max-loss",
            gates.max_loss_pct,
            Some(self.loss_pct),
            "loss %",
        );
        max(
            "--max-p99-delay",
            gates.max_p99_delay_ms,
            measured(&self.delay_ms),
            "p99 mouth-to-ear delay ms",
        );
        max(
            "--max-p99-jitter",
            gates.max_p99_jitter_ms,
            measured(&self.jitter_ms),
            "p99 jitter ms",
        );
        max(
            "--max-p99-join",
            gates.max_p99_join_ms,
            measured(&self.join_ms),
            "p99 join time ms",
        );
        max(
            "--max-errors",
            gates.max_errors.map(|e| e as f64),
            Some(self.errors() as f64),
            "errors",
        );
        // Every cut client must have heard audio again, within the limit.
        max(
            "--max-storm-recovery",
            gates.max_storm_recovery_ms,
            self.storm
                .as_ref()
                .filter(|s| s.clients > 0 && s.never_heard_again == 0)
                .and_then(|s| s.all_heard_again_ms),
            "slowest storm recovery ms",
        );
        if let Some(limit) = gates.min_rx_rate_pct {
            let value = (self.rx_rate.clients > 0)
                .then(|| 100.0 * self.rx_rate.min_client / self.rx_rate.expected);
            let passed = value.is_some_and(|v| v >= limit) && self.joined == self.clients;
            out.push(GateVerdict {
                gate: "--min-rx-rate".into(),
                limit: format!("{limit}"),
                value: value.map_or("n/a".into(), |v| format!("{v:.2}")),
                passed,
                message: (!passed).then(|| match value {
                    Some(v) if self.joined == self.clients => format!(
                        "worst client received {v:.2}% of 50 frames/s, below --min-rx-rate {limit}"
                    ),
                    Some(_) => format!(
                        "{} of {} clients never joined (--min-rx-rate {limit})",
                        self.clients.saturating_sub(self.joined),
                        self.clients
                    ),
                    None if self.rx_rate.silent > 0 => format!(
                        "no receive rate measured: all {} clients' mixes were silent the whole \
                         run (--min-rx-rate {limit})",
                        self.rx_rate.silent
                    ),
                    None => format!("no receive rate measured (--min-rx-rate {limit})"),
                }),
            });
        }
        if gates.require_verified {
            let v = &self.verification;
            let passed = v.receivers > 0 && v.failed == 0;
            out.push(GateVerdict {
                gate: "--require-verified".into(),
                limit: "all".into(),
                value: format!("{}/{}", v.passed, v.receivers),
                passed,
                message: (!passed).then(|| {
                    if v.receivers == 0 {
                        "no receiver was verified (--verify 0?)".to_owned()
                    } else {
                        format!(
                            "{} of {} verified receivers failed; first: {}",
                            v.failed,
                            v.receivers,
                            v.failures.first().map_or("", String::as_str)
                        )
                    }
                }),
            });
        }
        out
    }

    /// One sentence per violated gate; empty when all hold.
    pub fn violations(&self, gates: &Gates) -> Vec<String> {
        self.gate_verdicts(gates)
            .into_iter()
            .filter_map(|g| g.message)
            .collect()
    }

    /// The summary table, for a terminal or a log.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let p = |p: &Percentiles| {
            if p.count == 0 {
                "n/a".to_owned()
            } else {
                format!(
                    "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms  (n={})",
                    p.p50, p.p90, p.p99, p.max, p.count
                )
            }
        };
        let sc = &self.scenario;
        let _ = writeln!(
            s,
            "clients        {} ({} talkers, {} listeners) in {} rooms; {} joined",
            self.clients, self.talkers, self.listeners, sc.rooms, self.joined
        );
        for g in &self.groups {
            let _ = writeln!(
                s,
                "  group {:<8} {} clients in {} rooms, {} joined: rx {:.2}/s, loss {:.3}%, delay p99 {:.1} ms, verified {}/{}",
                g.scenario.group,
                g.clients,
                g.scenario.rooms,
                g.joined,
                g.rx_rate.mean,
                g.loss_pct,
                g.delay_ms.p99,
                g.verification.passed,
                g.verification.receivers
            );
        }
        if self.nodes.len() > 1 {
            for n in &self.nodes {
                let _ = writeln!(
                    s,
                    "  node {} {} clients: loss {:.3}%, {} reconnections, {} server errors, {} disconnects",
                    n.url, n.clients, n.loss_pct, n.reconnections, n.server_errors, n.disconnects
                );
            }
        }
        let _ = writeln!(s, "join time      {}", p(&self.join_ms));
        let r = &self.rx_rate;
        let silent = if r.silent > 0 {
            format!("; {} clients paused throughout (silent mix)", r.silent)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "rx rate        mean {:.2} /s per client (expected {:.0}, paused frames covered); worst client {:.2} /s; worst second {}{silent}",
            r.mean, r.expected, r.min_client, r.min_second
        );
        let _ = writeln!(
            s,
            "frames         {} received, {} lost, {} paused (silence)",
            self.frames_received, self.frames_lost, self.frames_paused
        );
        let _ = writeln!(
            s,
            "loss           {:.3}% ({} of {} frames sent); server tick skips {}",
            self.loss_pct,
            self.frames_lost,
            self.frames_received.saturating_add(self.frames_lost),
            self.tick_skips
        );
        let _ = writeln!(s, "jitter         {}", p(&self.jitter_ms));
        let _ = writeln!(s, "mouth-to-ear   {}", p(&self.delay_ms));
        let v = &self.verification;
        let _ = writeln!(
            s,
            "verified       {} receivers: {} passed, {} failed; clipped samples {}",
            v.receivers, v.passed, v.failed, v.clipped_samples
        );
        for failure in v.failures.iter().take(10) {
            let _ = writeln!(s, "  FAIL {failure}");
        }
        if v.failures.len() > 10 {
            let _ = writeln!(s, "  ... and {} more (see --json)", v.failures.len() - 10);
        }
        let counts = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "join failures  {}", counts(&self.join_failures));
        let rc = &self.reconnections;
        if self.redirects > 0 {
            let mid = rc.moved + rc.lease_lost + rc.other_node;
            if mid > 0 {
                let _ = writeln!(
                    s,
                    "redirects      {} followed ({mid} of them mid-session)",
                    self.redirects
                );
            } else {
                let _ = writeln!(s, "redirects      {} followed", self.redirects);
            }
        }
        if rc.total > 0 {
            let other = if rc.other_node > 0 {
                format!(", other_node {}", rc.other_node)
            } else {
                String::new()
            };
            let other = if rc.storm > 0 {
                format!("{other}, storm {}", rc.storm)
            } else {
                other
            };
            let other = if rc.churn > 0 {
                format!("{other}, churn {}", rc.churn)
            } else {
                other
            };
            let _ = writeln!(
                s,
                "reconnections  {} by {} clients (moved {}, lease_lost {}, dropped {}{other}); {} resumed, {} gave up; {} talker frames unsent",
                rc.total,
                rc.clients,
                rc.moved,
                rc.lease_lost,
                rc.dropped,
                rc.resumed,
                rc.gave_up,
                rc.frames_unsent
            );
            if rc.total > rc.churn {
                let _ = writeln!(s, "  rejoin       {}", p(&rc.rejoin_ms));
                let _ = writeln!(s, "  audio gap    {}", p(&self.reconnect_gap_ms));
            }
        }
        if let Some(storm) = &self.storm {
            let _ = writeln!(
                s,
                "storm          {} clients cut at {:.1} s: {} rejoined ({} resumed), {} heard audio again, {} never did",
                storm.clients,
                storm.at_secs,
                storm.rejoined,
                storm.resumed,
                storm.heard_again,
                storm.never_heard_again
            );
            let _ = writeln!(s, "  heard again  {}", p(&storm.recovery_ms));
        }
        if let Some(ptt) = &self.ptt {
            let _ = writeln!(
                s,
                "floor          {} requests: {} granted, {} denied (busy), {} taken away",
                ptt.requests, ptt.granted, ptt.denied, ptt.revoked
            );
            let _ = writeln!(s, "  granted in   {}", p(&ptt.grant_ms));
        }
        if let Some(m) = &self.moderation {
            let _ = writeln!(
                s,
                "moderation     {} mutes and {} unmutes sent, {} carried out; talkers muted {} times, {:.1} s in all",
                m.mutes, m.unmutes, m.confirmed, m.talkers_muted, m.muted_secs
            );
        }
        let _ = writeln!(s, "disconnects    {}", counts(&self.disconnects));
        let _ = writeln!(s, "server errors  {}", counts(&self.server_errors));
        if sc.impairment.is_active() {
            let _ = writeln!(
                s,
                "impairment     {} of {} sent packets dropped client-side; jitter 0..{} ms, reorder {:.1}%",
                self.packets_impaired,
                self.packets_sent,
                sc.impairment.jitter.as_millis(),
                sc.impairment.reorder * 100.0
            );
        }
        if let Some(flood) = &self.flood {
            let _ = writeln!(
                s,
                "flooders       {} sent {} control messages ({:.0}/s); replies: {}; cut off (and reconnected): {}",
                flood.clients,
                flood.sent,
                flood.per_second,
                counts(&flood.replies),
                counts(&flood.disconnects)
            );
        }
        let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}%"));
        let _ = writeln!(
            s,
            "cpu            loadgen {} of one core; mixer {} (over {:.1} s)",
            pct(self.cpu.loadgen_pct),
            pct(self.cpu.mixer_pct),
            self.cpu.wall_secs
        );
        if self.gates.is_empty() {
            let _ = writeln!(s, "gates          none set");
        }
        for g in &self.gates {
            let _ = writeln!(
                s,
                "gate           {:<20} limit {:<8} value {:<10} {}",
                g.gate,
                g.limit,
                g.value,
                if g.passed { "ok" } else { "VIOLATED" }
            );
        }
        let _ = writeln!(
            s,
            "result         {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// One round of a capacity search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// Rooms in this round.
    pub rooms: usize,
    /// Clients in this round.
    pub clients: usize,
    /// Whether every gate held.
    pub passed: bool,
    /// Violated gates.
    pub violations: Vec<String>,
    /// The full report of the round.
    pub report: Report,
}

/// The result of `--find-max`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    /// Rounds run, in order.
    pub rounds: Vec<Round>,
    /// Largest number of rooms that held, if any round passed.
    pub max_rooms: Option<usize>,
    /// Clients in that round.
    pub max_clients: Option<usize>,
}

impl Capacity {
    /// The table of rounds.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "round  rooms  clients  loss%   jitter p99  delay p99  verified  loadgen cpu  mixer cpu  result"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let rep = &r.report;
            let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}%"));
            let _ = writeln!(
                s,
                "{:<5}  {:<5}  {:<7}  {:<6.3}  {:<10}  {:<9}  {:<8}  {:<11}  {:<9}  {}",
                i + 1,
                r.rooms,
                r.clients,
                rep.loss_pct,
                format!("{:.1} ms", rep.jitter_ms.p99),
                format!("{:.0} ms", rep.delay_ms.p99),
                format!("{}/{}", rep.verification.passed, rep.verification.receivers),
                pct(rep.cpu.loadgen_pct),
                pct(rep.cpu.mixer_pct),
                if r.passed { "pass" } else { "FAIL" }
            );
            for v in &r.violations {
                let _ = writeln!(s, "       {v}");
            }
        }
        match (self.max_rooms, self.max_clients) {
            (Some(rooms), Some(clients)) => {
                let _ = writeln!(
                    s,
                    "largest load that held: {rooms} rooms, {clients} clients"
                );
            }
            _ => {
                let _ = writeln!(s, "largest load that held: none (the first round failed)");
            }
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Args;
    use crate::verify::ReceiverRole;

    fn percentiles(p99: f64) -> Percentiles {
        Percentiles {
            count: 10,
            p50: p99 / 2.0,
            p90: p99,
            p99,
            max: p99,
        }
    }

    /// A report of a healthy small run, to be spoiled one field at a time (also by
    /// [`crate::html`]'s tests).
    pub(crate) fn healthy() -> Report {
        let scenario = Args::parse_from(["loadgen"])
            .to_scenario()
            .expect("default scenario");
        Report {
            scenario,
            clients: 4,
            talkers: 2,
            listeners: 2,
            joined: 4,
            join_failures: BTreeMap::new(),
            redirects: 0,
            reconnections: Reconnections::default(),
            reconnect_gap_ms: Percentiles::default(),
            storm: None,
            join_ms: percentiles(5.0),
            rx_rate: RxRate {
                expected: 50.0,
                mean: 50.0,
                min_client: 50.0,
                min_second: 50,
                clients: 4,
                silent: 0,
            },
            frames_received: 2000,
            frames_lost: 0,
            frames_paused: 0,
            loss_pct: 0.0,
            tick_skips: 0,
            jitter_ms: percentiles(1.0),
            delay_ms: percentiles(60.0),
            histograms: Histograms::default(),
            verification: Verification {
                receivers: 4,
                passed: 4,
                ..Verification::default()
            },
            disconnects: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            packets_sent: 1000,
            packets_impaired: 0,
            flood: None,
            ptt: None,
            moderation: None,
            nodes: Vec::new(),
            groups: Vec::new(),
            cpu: CpuUse::default(),
            timeline: crate::timeline::Timeline::default(),
            gates: Vec::new(),
            passed: true,
        }
    }

    fn all_gates() -> Gates {
        Gates {
            max_loss_pct: Some(0.5),
            max_p99_delay_ms: Some(100.0),
            max_p99_jitter_ms: Some(10.0),
            max_p99_join_ms: Some(500.0),
            min_rx_rate_pct: Some(95.0),
            max_errors: Some(0),
            require_verified: true,
            max_storm_recovery_ms: None,
        }
    }

    #[test]
    fn the_storm_gate_needs_every_cut_client_heard_again_within_its_limit() {
        let gates = Gates {
            max_storm_recovery_ms: Some(1000.0),
            ..Gates::default()
        };
        let verdict = |storm: StormReport| {
            let report = Report {
                storm: Some(storm),
                ..healthy()
            };
            report.gate_verdicts(&gates)
        };
        let back = StormReport {
            clients: 4,
            rejoined: 4,
            resumed: 4,
            heard_again: 4,
            all_heard_again_ms: Some(420.0),
            ..StormReport::default()
        };
        assert!(verdict(back.clone()).iter().all(|g| g.passed));
        let slow = StormReport {
            all_heard_again_ms: Some(1500.0),
            ..back.clone()
        };
        assert!(!verdict(slow)[0].passed);
        // One who never heard audio again fails it, however fast the others were.
        let lost = StormReport {
            heard_again: 3,
            never_heard_again: 1,
            ..back
        };
        let gate = &verdict(lost)[0];
        assert!(!gate.passed && gate.value == "n/a", "{gate:?}");
    }

    /// The report's JSON keeps every key it had before reports could be merged (capacity.sh and
    /// other tools read them) and reads back into the same report.
    #[test]
    fn the_json_keeps_its_keys_and_reads_back_as_written() {
        let mut report = healthy();
        report.verification.details.push(ReceiverVerdict {
            room: 1,
            slot: 3,
            role: ReceiverRole::Listener,
            passed: true,
            problems: Vec::new(),
            heard: vec![(0, 700.0, -14.5)],
            own_db: None,
            worst_leak_db: Some(-80.0),
            clipped_samples: 0,
            window_secs: 3.5,
            connections: 1,
            delays: Vec::new(),
        });
        report.storm = Some(StormReport::default());
        let json = serde_json::to_value(&report).expect("serializes");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut expected = vec![
            "scenario",
            "clients",
            "talkers",
            "listeners",
            "joined",
            "join_failures",
            "redirects",
            "reconnections",
            "reconnect_gap_ms",
            "storm",
            "join_ms",
            "rx_rate",
            "frames_received",
            "frames_lost",
            "frames_paused",
            "loss_pct",
            "tick_skips",
            "jitter_ms",
            "delay_ms",
            "verification",
            "disconnects",
            "server_errors",
            "packets_sent",
            "packets_impaired",
            "cpu",
            "flood",
            "gates",
            "passed",
            // Added for merging.
            "histograms",
            // Added for scenario files: push-to-talk, moderation, nodes, groups.
            "ptt",
            "moderation",
            "nodes",
            "groups",
            // Added for the HTML report.
            "timeline",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["verification"]["details"][0]["role"], "listener");
        assert_eq!(json["histograms"]["delay_us"], serde_json::json!([]));
        let back: Report = serde_json::from_value(json.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(&back).expect("serializes"), json);
    }

    #[test]
    fn a_healthy_run_passes_every_gate_and_unset_gates_are_not_judged() {
        let report = healthy();
        assert_eq!(report.violations(&all_gates()), Vec::<String>::new());
        assert_eq!(report.gate_verdicts(&all_gates()).len(), 7);
        assert!(report.gate_verdicts(&Gates::default()).is_empty());
    }

    #[test]
    fn each_gate_fails_on_its_own_measurement_and_says_so() {
        type Spoil = Box<dyn Fn(&mut Report)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("--max-loss", Box::new(|r| r.loss_pct = 1.0)),
            (
                "--max-p99-delay",
                Box::new(|r| r.delay_ms = percentiles(150.0)),
            ),
            (
                "--max-p99-delay",
                Box::new(|r| r.delay_ms = Percentiles::default()),
            ),
            (
                "--max-p99-jitter",
                Box::new(|r| r.jitter_ms = percentiles(25.0)),
            ),
            (
                "--max-p99-join",
                Box::new(|r| r.join_ms = percentiles(900.0)),
            ),
            ("--min-rx-rate", Box::new(|r| r.rx_rate.min_client = 30.0)),
            ("--min-rx-rate", Box::new(|r| r.joined = 3)),
            (
                "--min-rx-rate",
                Box::new(|r| {
                    // Every client's mix was silent: paused throughout, no rate measured.
                    r.rx_rate.clients = 0;
                    r.rx_rate.silent = 4;
                }),
            ),
            (
                "--max-errors",
                Box::new(|r| {
                    r.server_errors.insert("rate_limited".into(), 1);
                }),
            ),
            (
                "--require-verified",
                Box::new(|r| {
                    r.verification.passed = 3;
                    r.verification.failed = 1;
                }),
            ),
            (
                "--require-verified",
                Box::new(|r| r.verification = Verification::default()),
            ),
        ];
        for (gate, spoil) in cases {
            let mut report = healthy();
            spoil(&mut report);
            let verdicts = report.gate_verdicts(&all_gates());
            let failed: Vec<&GateVerdict> = verdicts.iter().filter(|v| !v.passed).collect();
            assert_eq!(failed.len(), 1, "{gate}: {verdicts:?}");
            assert_eq!(failed[0].gate, gate);
            assert!(
                failed[0].message.as_deref().is_some_and(|m| !m.is_empty()),
                "{gate}"
            );
        }
    }
}
