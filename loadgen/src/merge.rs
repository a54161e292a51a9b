//! One [`Report`] from the reports of several load generators that ran the same scenario at the
//! same time, each its own share of the rooms (`--shard i/n`), as `loadgen merge` prints it.
//!
//! Counts are summed and percentiles are recomputed from the merged histograms
//! ([`Report::histograms`]): a percentile of the whole cannot be had from the shards'
//! percentiles (neither their mean nor their max is the p99 of all samples). The gates are then
//! judged again on the merged numbers, since a run can hold a gate on every shard and violate it
//! as a whole (`--max-errors`), or the other way round (a shard's loss diluted by the others').

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::config::Scenario;
use crate::flood::FloodReport;
use crate::histogram::SparseHistogram;
use crate::report::{
    self, CpuUse, Histograms, ModerationReport, NodeReport, Percentiles, PttReport, Reconnections,
    Report, RxRate, StormReport, Verification,
};
use crate::stats::micros_histogram;
use crate::timeline::{DelayBucket, DelayPoint, Sample, Timeline};

/// Scenario fields that legitimately differ between the shards of one run, left out when the
/// reports' scenarios are compared: each machine drives its own mixer URLs and may watch its own
/// mixer process. Everything else (rooms, gates, talk pattern, seed, ...) must be the same.
pub const PER_SHARD_FIELDS: &[&str] = &["urls", "mixer_pid", "shard"];

/// Why reports cannot be merged. `index` is the report's position in the slice given to
/// [`merge`] (shown counting from 1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    /// No report was given.
    #[error("no reports to merge")]
    NoReports,
    /// A report ran a different scenario from the first.
    #[error(
        "report {} ran a different scenario from report 1: `{field}` is {other} there but {first} in report 1",
        .index + 1
    )]
    ScenarioMismatch {
        /// The report that differs.
        index: usize,
        /// The first field that differs, dotted for nested ones (`gates.max_loss_pct`).
        field: String,
        /// Its value in the first report, as JSON.
        first: String,
        /// Its value in this report, as JSON.
        other: String,
    },
    /// A histogram that does not hold the samples its percentiles count: written by a loadgen
    /// that kept no histograms, or edited.
    #[error(
        "report {}: histograms.{histogram} holds {samples} samples but its percentiles count {count}",
        .index + 1
    )]
    HistogramCount {
        /// The report.
        index: usize,
        /// The histogram's key in `histograms`.
        histogram: &'static str,
        /// Samples the histogram holds.
        samples: u64,
        /// Samples its percentiles say they were computed from.
        count: u64,
    },
    /// A histogram value outside the range loadgen records (1 µs to 100 s).
    #[error(
        "report {}: histograms.{histogram} holds the value {value} µs, outside 1 µs to 100 s",
        .index + 1
    )]
    HistogramRange {
        /// The report.
        index: usize,
        /// The histogram's key in `histograms`.
        histogram: &'static str,
        /// The value.
        value: u64,
    },
}

impl MergeError {
    /// The position of the report at fault, if one is.
    pub fn report(&self) -> Option<usize> {
        match self {
            MergeError::NoReports => None,
            MergeError::ScenarioMismatch { index, .. }
            | MergeError::HistogramCount { index, .. }
            | MergeError::HistogramRange { index, .. } => Some(*index),
        }
    }
}

/// Merges the reports of one run's shards into the report of the whole run.
///
/// - The scenario is the first report's; the others must match it but for
///   [`PER_SHARD_FIELDS`].
/// - Counts (clients, frames, packets, verification, reconnections, storm, flood) are summed;
///   reason → count maps are summed by key; lists (verification details and failures,
///   reconnections per client) are concatenated in report order.
/// - Percentiles come from the merged histograms; `loss_pct` from the summed frames.
/// - Receive rate: the mean weighted by each shard's measured clients; the worst client and
///   worst second the minimum over shards that measured any.
/// - Storm: `at_secs` the earliest (each shard counts from its own start), `all_heard_again_ms`
///   the slowest.
/// - CPU: `wall_secs` the longest; `loadgen_pct` the sum (every shard's generator is part of
///   the load), or `None` if a shard could not measure its own (a partial sum would read as
///   the whole); `mixer_pct` the one shard's that measured it (usually only one machine can see
///   the mixer's PID), or the largest if several did: shards watching the same mixer measured
///   the same process over nearly the same window, so a sum would count it twice.
/// - Gate verdicts and `passed` are judged again on the merged numbers.
/// - A scenario file's groups are merged group by group (each shard's report holds every
///   group's, in the file's order), and the whole from those.
pub fn merge(reports: &[Report]) -> Result<Report, MergeError> {
    let (first, rest) = reports.split_first().ok_or(MergeError::NoReports)?;
    for (offset, other) in rest.iter().enumerate() {
        let difference = scenario_difference(&first.scenario, &other.scenario).or_else(|| {
            (other.groups.len() != first.groups.len()).then(|| {
                (
                    "groups".to_owned(),
                    first.groups.len().to_string(),
                    other.groups.len().to_string(),
                )
            })
        });
        if let Some((field, a, b)) = difference {
            return Err(MergeError::ScenarioMismatch {
                index: offset + 1,
                field,
                first: a,
                other: b,
            });
        }
    }
    if first.groups.is_empty() {
        return combine(reports, first.scenario.clone());
    }
    let mut groups = Vec::with_capacity(first.groups.len());
    for (g, group) in first.groups.iter().enumerate() {
        let shards: Vec<Report> = reports.iter().map(|r| r.groups[g].clone()).collect();
        for (offset, other) in shards.iter().enumerate().skip(1) {
            if let Some((field, a, b)) = scenario_difference(&group.scenario, &other.scenario) {
                return Err(MergeError::ScenarioMismatch {
                    index: offset,
                    field: format!("groups[{g}].{field}"),
                    first: a,
                    other: b,
                });
            }
        }
        groups.push(combine(&shards, group.scenario.clone())?);
    }
    let mut whole = merge_groups(&groups)?;
    // The clients' and mixers' samples are the whole run's (the groups share one clock and
    // one set of counters), kept at the top only.
    whole.timeline.samples = merged_timeline(reports).samples;
    whole.groups = groups;
    Ok(whole)
}

/// The report of a whole scenario file from its groups' reports, which ran different
/// scenarios at once: everything added up as for shards, under a scenario that is the first
/// group's with every group's rooms (their gates are the run's, the same in each).
pub fn merge_groups(groups: &[Report]) -> Result<Report, MergeError> {
    let first = groups.first().ok_or(MergeError::NoReports)?;
    let scenario = Scenario {
        group: "all".to_owned(),
        rooms: groups.iter().map(|g| g.scenario.rooms).sum(),
        ..first.scenario.clone()
    };
    let mut whole = combine(groups, scenario)?;
    // One process ran every group: each group's report carries the same CPU figures, which a
    // sum would count once per group.
    whole.cpu = first.cpu;
    Ok(whole)
}

/// Adds `reports` up under `scenario`, judging its gates.
fn combine(reports: &[Report], scenario: Scenario) -> Result<Report, MergeError> {
    let [join, jitter, delay, gap, rejoin, recovery] = merged_histograms(reports)?;

    let mut join_failures = BTreeMap::new();
    let mut disconnects = BTreeMap::new();
    let mut server_errors = BTreeMap::new();
    let mut verification = Verification::default();
    let mut reconnections = Reconnections::default();
    for r in reports {
        add_counts(&mut join_failures, &r.join_failures);
        add_counts(&mut disconnects, &r.disconnects);
        add_counts(&mut server_errors, &r.server_errors);
        add_verification(&mut verification, &r.verification);
        add_reconnections(&mut reconnections, &r.reconnections);
    }
    reconnections.rejoin_ms = Percentiles::from_micros(&rejoin);
    let frames_received = sum(reports, |r| r.frames_received);
    let frames_lost = sum(reports, |r| r.frames_lost);
    let mut merged = Report {
        scenario,
        clients: count(reports, |r| r.clients),
        talkers: count(reports, |r| r.talkers),
        listeners: count(reports, |r| r.listeners),
        joined: count(reports, |r| r.joined),
        join_failures,
        redirects: sum(reports, |r| r.redirects),
        reconnections,
        reconnect_gap_ms: Percentiles::from_micros(&gap),
        storm: merged_storm(reports, &recovery),
        join_ms: Percentiles::from_micros(&join),
        rx_rate: merged_rx_rate(reports),
        frames_received,
        frames_lost,
        frames_paused: sum(reports, |r| r.frames_paused),
        loss_pct: report::loss_pct(frames_received, frames_lost),
        tick_skips: sum(reports, |r| r.tick_skips),
        jitter_ms: Percentiles::from_micros(&jitter),
        delay_ms: Percentiles::from_micros(&delay),
        histograms: Histograms {
            join_us: (&join).into(),
            jitter_us: (&jitter).into(),
            delay_us: (&delay).into(),
            reconnect_gap_us: (&gap).into(),
            rejoin_us: (&rejoin).into(),
            storm_recovery_us: (&recovery).into(),
        },
        verification,
        disconnects,
        server_errors,
        packets_sent: sum(reports, |r| r.packets_sent),
        packets_impaired: sum(reports, |r| r.packets_impaired),
        cpu: CpuUse {
            wall_secs: reports.iter().map(|r| r.cpu.wall_secs).fold(0.0, f64::max),
            loadgen_pct: reports.iter().map(|r| r.cpu.loadgen_pct).sum(),
            mixer_pct: reports
                .iter()
                .filter_map(|r| r.cpu.mixer_pct)
                .reduce(f64::max),
        },
        flood: merged_flood(reports),
        timeline: merged_timeline(reports),
        ptt: merged_ptt(reports),
        moderation: merged_moderation(reports),
        nodes: merged_nodes(reports),
        groups: Vec::new(),
        gates: Vec::new(),
        passed: true,
    };
    merged.gates = merged.gate_verdicts(&merged.scenario.gates);
    merged.passed = merged.gates.iter().all(|g| g.passed);
    Ok(merged)
}

/// The first field (in key order, dotted into nested objects) in which two scenarios differ,
/// leaving out [`PER_SHARD_FIELDS`], with its value in each as JSON.
///
/// Compared as JSON so that every field a scenario gains is compared without this code
/// changing, and so that the error can name it.
fn scenario_difference(first: &Scenario, other: &Scenario) -> Option<(String, String, String)> {
    let as_json = |scenario: &Scenario| {
        let mut value = serde_json::to_value(scenario)
            .expect("a Scenario serializes to JSON: plain fields, string keys");
        if let Value::Object(fields) = &mut value {
            for field in PER_SHARD_FIELDS {
                fields.remove(*field);
            }
        }
        value
    };
    first_difference("", &as_json(first), &as_json(other))
}

fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    if let (Value::Object(a), Value::Object(b)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        return keys.into_iter().find_map(|key| {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => first_difference(&path, x, y),
                (x, y) => Some((path, shown(x), shown(y))),
            }
        });
    }
    (a != b).then(|| (path.to_owned(), a.to_string(), b.to_string()))
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_owned(), Value::to_string)
}

/// Names of a report's histograms (their keys in `histograms`), each with the sample count of
/// the percentiles computed from it, in the order [`merged_histograms`] returns them.
fn histograms_of(r: &Report) -> [(&'static str, &SparseHistogram, u64); 6] {
    let h = &r.histograms;
    [
        ("join_us", &h.join_us, r.join_ms.count),
        ("jitter_us", &h.jitter_us, r.jitter_ms.count),
        ("delay_us", &h.delay_us, r.delay_ms.count),
        (
            "reconnect_gap_us",
            &h.reconnect_gap_us,
            r.reconnect_gap_ms.count,
        ),
        ("rejoin_us", &h.rejoin_us, r.reconnections.rejoin_ms.count),
        (
            "storm_recovery_us",
            &h.storm_recovery_us,
            r.storm.as_ref().map_or(0, |s| s.recovery_ms.count),
        ),
    ]
}

/// Every report's histograms added up: join, jitter, delay, reconnect gap, rejoin, storm
/// recovery. A histogram whose sample count disagrees with its percentiles is refused rather
/// than merged into numbers that would silently leave part of a shard out.
fn merged_histograms(reports: &[Report]) -> Result<[Histogram<u64>; 6], MergeError> {
    let mut merged: [Histogram<u64>; 6] = std::array::from_fn(|_| micros_histogram());
    for (index, r) in reports.iter().enumerate() {
        for (into, (histogram, sparse, count)) in merged.iter_mut().zip(histograms_of(r)) {
            if sparse.len() != count {
                return Err(MergeError::HistogramCount {
                    index,
                    histogram,
                    samples: sparse.len(),
                    count,
                });
            }
            sparse
                .add_to(into)
                .map_err(|e| MergeError::HistogramRange {
                    index,
                    histogram,
                    value: e.value,
                })?;
        }
    }
    Ok(merged)
}

/// A sum over the reports that saturates: the numbers come from files, and a corrupt one must
/// not overflow.
fn sum(reports: &[Report], field: impl Fn(&Report) -> u64) -> u64 {
    reports
        .iter()
        .fold(0u64, |total, r| total.saturating_add(field(r)))
}

/// [`sum`] for counts held as `usize`.
fn count(reports: &[Report], field: impl Fn(&Report) -> usize) -> usize {
    reports
        .iter()
        .fold(0usize, |total, r| total.saturating_add(field(r)))
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, n) in from {
        let total = into.entry(key.clone()).or_default();
        *total = total.saturating_add(*n);
    }
}

fn add_verification(into: &mut Verification, from: &Verification) {
    into.receivers = into.receivers.saturating_add(from.receivers);
    into.passed = into.passed.saturating_add(from.passed);
    into.failed = into.failed.saturating_add(from.failed);
    into.clipped_samples = into.clipped_samples.saturating_add(from.clipped_samples);
    into.failures.extend(from.failures.iter().cloned());
    into.details.extend(from.details.iter().cloned());
}

/// Adds every count and the per-client list; `rejoin_ms` is left to the caller, who has the
/// merged histogram.
fn add_reconnections(into: &mut Reconnections, from: &Reconnections) {
    for (total, n) in [
        (&mut into.total, from.total),
        (&mut into.moved, from.moved),
        (&mut into.lease_lost, from.lease_lost),
        (&mut into.other_node, from.other_node),
        (&mut into.dropped, from.dropped),
        (&mut into.storm, from.storm),
        (&mut into.churn, from.churn),
        (&mut into.resumed, from.resumed),
        (&mut into.gave_up, from.gave_up),
        (&mut into.frames_unsent, from.frames_unsent),
    ] {
        *total = total.saturating_add(n);
    }
    into.clients = into.clients.saturating_add(from.clients);
    into.per_client.extend(from.per_client.iter().cloned());
}

/// The receive rate over every shard's measured clients. A shard that measured none (all its
/// clients silent) reports 0 for its worst client and second by convention, which is no
/// measurement and must not become the merged minimum.
fn merged_rx_rate(reports: &[Report]) -> RxRate {
    let measured: Vec<&RxRate> = reports
        .iter()
        .map(|r| &r.rx_rate)
        .filter(|rate| rate.clients > 0)
        .collect();
    let clients = measured
        .iter()
        .fold(0usize, |total, rate| total.saturating_add(rate.clients));
    let weighted: f64 = measured
        .iter()
        .map(|rate| rate.mean * rate.clients as f64)
        .sum();
    RxRate {
        expected: reports
            .first()
            .map_or(report::EXPECTED_FPS, |r| r.rx_rate.expected),
        mean: if clients == 0 {
            0.0
        } else {
            weighted / clients as f64
        },
        min_client: measured
            .iter()
            .map(|rate| rate.min_client)
            .reduce(f64::min)
            .unwrap_or(0.0),
        min_second: measured
            .iter()
            .map(|rate| rate.min_second)
            .min()
            .unwrap_or(0),
        clients,
        silent: count(reports, |r| r.rx_rate.silent),
    }
}

/// The storm over every shard that had one (all of them, as their scenarios match).
fn merged_storm(reports: &[Report], recovery: &Histogram<u64>) -> Option<StormReport> {
    let storms: Vec<&StormReport> = reports.iter().filter_map(|r| r.storm.as_ref()).collect();
    if storms.is_empty() {
        return None;
    }
    let total = |field: fn(&StormReport) -> u64| {
        storms
            .iter()
            .fold(0u64, |sum, s| sum.saturating_add(field(s)))
    };
    Some(StormReport {
        at_secs: storms
            .iter()
            .map(|s| s.at_secs)
            .fold(f64::INFINITY, f64::min),
        clients: total(|s| s.clients),
        rejoined: total(|s| s.rejoined),
        resumed: total(|s| s.resumed),
        heard_again: total(|s| s.heard_again),
        never_heard_again: total(|s| s.never_heard_again),
        recovery_ms: Percentiles::from_micros(recovery),
        all_heard_again_ms: storms
            .iter()
            .filter_map(|s| s.all_heard_again_ms)
            .reduce(f64::max),
    })
}

/// The reports' timelines as one: the samples of the same second added up (the shards started
/// together, each counting from its own start), the delay buckets merged from their
/// histograms, the delay distribution summed. A second's jitter p99 is the worst report's
/// (those are percentiles of a second's samples, which are not kept), and each mixer is
/// charted once, from the first report that scraped it.
fn merged_timeline(reports: &[Report]) -> Timeline {
    let mut samples: Vec<Sample> = Vec::new();
    for timeline in reports.iter().map(|r| &r.timeline) {
        for (k, sample) in timeline.samples.iter().enumerate() {
            if samples.len() <= k {
                samples.push(Sample {
                    at_secs: sample.at_secs,
                    ..Sample::default()
                });
            }
            let into = &mut samples[k];
            into.connected = into.connected.saturating_add(sample.connected);
            into.frames_per_sec += sample.frames_per_sec;
            into.lost_per_sec += sample.lost_per_sec;
            into.paused_per_sec += sample.paused_per_sec;
            let sent = into.frames_per_sec + into.lost_per_sec;
            into.loss_pct = if sent > 0.0 {
                100.0 * into.lost_per_sec / sent
            } else {
                0.0
            };
            into.jitter_p99_ms = into.jitter_p99_ms.max(sample.jitter_p99_ms);
            into.errors = into.errors.saturating_add(sample.errors);
            into.reconnections = into.reconnections.saturating_add(sample.reconnections);
            for server in &sample.servers {
                if !into.servers.iter().any(|s| s.target == server.target) {
                    into.servers.push(server.clone());
                }
            }
        }
    }
    let mut delay: BTreeMap<u64, (f64, Histogram<u64>)> = BTreeMap::new();
    let mut distribution: BTreeMap<u64, DelayBucket> = BTreeMap::new();
    for timeline in reports.iter().map(|r| &r.timeline) {
        for point in &timeline.delay {
            let (_, histogram) = delay
                .entry(point.at_secs.to_bits())
                .or_insert_with(|| (point.at_secs, micros_histogram()));
            // Out-of-range values were never recorded by loadgen; a chart leaves them out.
            let _ = point.histogram.add_to(histogram);
        }
        for bucket in &timeline.delay_distribution {
            let into = distribution
                .entry(bucket.from_ms.to_bits())
                .or_insert(DelayBucket {
                    count: 0,
                    ..*bucket
                });
            into.count = into.count.saturating_add(bucket.count);
        }
    }
    let mut delay: Vec<DelayPoint> = delay
        .into_values()
        .map(|(at, histogram)| DelayPoint::from_histogram(at, &histogram))
        .collect();
    delay.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    let mut delay_distribution: Vec<DelayBucket> = distribution.into_values().collect();
    delay_distribution.sort_by(|a, b| a.from_ms.total_cmp(&b.from_ms));
    Timeline {
        samples,
        delay,
        delay_distribution,
    }
}

/// Every report's floor requests together, the grant times from the merged histograms.
fn merged_ptt(reports: &[Report]) -> Option<PttReport> {
    let ptts: Vec<&PttReport> = reports.iter().filter_map(|r| r.ptt.as_ref()).collect();
    if ptts.is_empty() {
        return None;
    }
    let mut merged = PttReport::default();
    let mut grant = micros_histogram();
    for ptt in ptts {
        merged.requests = merged.requests.saturating_add(ptt.requests);
        merged.granted = merged.granted.saturating_add(ptt.granted);
        merged.denied = merged.denied.saturating_add(ptt.denied);
        merged.revoked = merged.revoked.saturating_add(ptt.revoked);
        // A value out of range was never recorded by loadgen; such a file is left out here
        // rather than refused, as grant times gate nothing.
        let _ = ptt.grant_us.add_to(&mut grant);
    }
    merged.grant_ms = Percentiles::from_micros(&grant);
    merged.grant_us = (&grant).into();
    Some(merged)
}

/// Every report's moderators together.
fn merged_moderation(reports: &[Report]) -> Option<ModerationReport> {
    let all: Vec<&ModerationReport> = reports
        .iter()
        .filter_map(|r| r.moderation.as_ref())
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut merged = ModerationReport::default();
    for m in all {
        merged.mutes = merged.mutes.saturating_add(m.mutes);
        merged.unmutes = merged.unmutes.saturating_add(m.unmutes);
        merged.confirmed = merged.confirmed.saturating_add(m.confirmed);
        merged.talkers_muted = merged.talkers_muted.saturating_add(m.talkers_muted);
        merged.muted_secs += m.muted_secs;
    }
    Some(merged)
}

/// Per node over every report: a node that several shards' clients used is one node.
fn merged_nodes(reports: &[Report]) -> Vec<NodeReport> {
    let mut nodes: BTreeMap<String, NodeReport> = BTreeMap::new();
    for node in reports.iter().flat_map(|r| &r.nodes) {
        let into = nodes.entry(node.url.clone()).or_insert_with(|| NodeReport {
            url: node.url.clone(),
            ..NodeReport::default()
        });
        into.clients = into.clients.saturating_add(node.clients);
        into.frames_received = into.frames_received.saturating_add(node.frames_received);
        into.frames_lost = into.frames_lost.saturating_add(node.frames_lost);
        into.reconnections = into.reconnections.saturating_add(node.reconnections);
        into.server_errors = into.server_errors.saturating_add(node.server_errors);
        into.disconnects = into.disconnects.saturating_add(node.disconnects);
        into.loss_pct = report::loss_pct(into.frames_received, into.frames_lost);
    }
    nodes.into_values().collect()
}

/// Every shard's flooders together; their rates add up, since the shards flood at once.
fn merged_flood(reports: &[Report]) -> Option<FloodReport> {
    let floods: Vec<&FloodReport> = reports.iter().filter_map(|r| r.flood.as_ref()).collect();
    if floods.is_empty() {
        return None;
    }
    let mut merged = FloodReport::default();
    for flood in floods {
        merged.clients = merged.clients.saturating_add(flood.clients);
        merged.sent = merged.sent.saturating_add(flood.sent);
        merged.per_second += flood.per_second;
        add_counts(&mut merged.replies, &flood.replies);
        add_counts(&mut merged.disconnects, &flood.disconnects);
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Args;
    use crate::report::{ClientReconnections, GateVerdict};

    /// The scenario every shard ran, with its gates.
    fn scenario(gates: &[&str]) -> Scenario {
        let mut args = vec!["loadgen", "--rooms", "4"];
        args.extend_from_slice(gates);
        Args::parse_from(args).to_scenario().expect("valid flags")
    }

    fn histogram(micros: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = micros_histogram();
        for v in micros {
            h.record(v).expect("in range");
        }
        h
    }

    /// A shard's report: `delays_ms` as its mouth-to-ear samples, `joins_ms` as its join
    /// times, frames received and lost, everything else a clean run of `clients` clients.
    fn shard(
        scenario: &Scenario,
        clients: usize,
        joins_ms: impl IntoIterator<Item = u64>,
        delays_ms: impl IntoIterator<Item = u64>,
        (received, lost): (u64, u64),
    ) -> Report {
        let join = histogram(joins_ms.into_iter().map(|ms| ms * 1000));
        let delay = histogram(delays_ms.into_iter().map(|ms| ms * 1000));
        let mut report = Report {
            scenario: scenario.clone(),
            clients,
            talkers: clients / 2,
            listeners: clients - clients / 2,
            joined: clients,
            join_failures: BTreeMap::new(),
            redirects: 0,
            reconnections: Reconnections::default(),
            reconnect_gap_ms: Percentiles::default(),
            storm: None,
            join_ms: Percentiles::from_micros(&join),
            rx_rate: RxRate {
                expected: 50.0,
                mean: 50.0,
                min_client: 50.0,
                min_second: 50,
                clients,
                silent: 0,
            },
            frames_received: received,
            frames_lost: lost,
            frames_paused: 0,
            loss_pct: report::loss_pct(received, lost),
            tick_skips: 0,
            jitter_ms: Percentiles::default(),
            delay_ms: Percentiles::from_micros(&delay),
            histograms: Histograms {
                join_us: (&join).into(),
                delay_us: (&delay).into(),
                ..Histograms::default()
            },
            verification: Verification {
                receivers: 2,
                passed: 2,
                ..Verification::default()
            },
            disconnects: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            packets_sent: 1000,
            packets_impaired: 0,
            cpu: CpuUse {
                wall_secs: 10.0,
                loadgen_pct: Some(20.0),
                mixer_pct: None,
            },
            timeline: Timeline::default(),
            flood: None,
            ptt: None,
            moderation: None,
            nodes: Vec::new(),
            groups: Vec::new(),
            gates: Vec::new(),
            passed: true,
        };
        report.gates = report.gate_verdicts(&scenario.gates);
        report.passed = report.gates.iter().all(|g| g.passed);
        report
    }

    /// A report as `loadgen merge` reads it: written to JSON and parsed back.
    fn through_json(report: &Report) -> Report {
        let json = serde_json::to_string(report).expect("serializes");
        serde_json::from_str(&json).expect("parses")
    }

    fn gate<'a>(report: &'a Report, name: &str) -> &'a GateVerdict {
        report
            .gates
            .iter()
            .find(|g| g.gate == name)
            .unwrap_or_else(|| panic!("no {name} verdict in {:?}", report.gates))
    }

    #[test]
    fn a_scenario_file_merges_group_by_group_and_keeps_the_whole_runs_timeline() {
        let sc = scenario(&["--max-loss", "1"]);
        let (talk, panel) = (
            Scenario {
                group: "talk".into(),
                ..sc.clone()
            },
            Scenario {
                group: "panel".into(),
                ..sc.clone()
            },
        );
        let machine = |delay: u64| {
            let groups = vec![
                shard(&talk, 4, [1], [delay], (1000, 0)),
                shard(&panel, 2, [1], [delay + 5], (500, 0)),
            ];
            let mut whole = merge_groups(&groups).expect("groups add up");
            whole.groups = groups;
            whole.timeline.samples = vec![Sample {
                at_secs: 1.0,
                connected: 6,
                frames_per_sec: 300.0,
                ..Sample::default()
            }];
            whole
        };
        let merged = merge(&[machine(60), machine(80)]).expect("merges");
        assert_eq!(merged.clients, 12);
        assert_eq!(merged.groups.len(), 2);
        assert_eq!(
            (
                merged.groups[0].scenario.group.as_str(),
                merged.groups[0].clients
            ),
            ("talk", 8)
        );
        assert_eq!(merged.groups[1].delay_ms.count, 2);
        // Each machine's one process ran both its groups: its CPU counts once, the machines'
        // add up.
        assert_eq!(machine(60).cpu.loadgen_pct, Some(20.0));
        assert_eq!(merged.cpu.loadgen_pct, Some(40.0));
        // The samples of the whole run survive the merge of its groups, added up.
        let samples = &merged.timeline.samples;
        assert_eq!(samples.len(), 1);
        assert_eq!(
            (samples[0].connected, samples[0].frames_per_sec),
            (12, 600.0)
        );
        // A report with other groups is not the same run.
        let mut other = machine(60);
        other.groups.pop();
        let err = merge(&[machine(60), other]).expect_err("different groups");
        assert!(err.to_string().contains("groups"), "{err}");
    }

    #[test]
    fn merged_percentiles_are_those_of_one_histogram_of_all_samples() {
        let sc = scenario(&[]);
        // Disjoint delay ranges: 10..60 ms on one machine, 200..250 ms on the other.
        let low = shard(&sc, 4, [1, 2, 3], 10..60, (1000, 0));
        let high = shard(&sc, 4, [40, 50], 200..250, (1000, 0));
        let merged = merge(&[through_json(&low), through_json(&high)]).expect("mergeable");

        let all = histogram((10..60).chain(200..250).map(|ms| ms * 1000));
        assert_eq!(merged.delay_ms, Percentiles::from_micros(&all));
        assert!(
            low.delay_ms.p50 < merged.delay_ms.p50 && merged.delay_ms.p50 < high.delay_ms.p50,
            "merged p50 {} between {} and {}",
            merged.delay_ms.p50,
            low.delay_ms.p50,
            high.delay_ms.p50
        );
        // Neither the mean nor the max of the shards' p50s is the p50 of the whole.
        assert!(
            (merged.delay_ms.p50 - 59.0).abs() < 0.5,
            "{:?}",
            merged.delay_ms
        );
        let joins = histogram([1, 2, 3, 40, 50].map(|ms| ms * 1000));
        assert_eq!(merged.join_ms, Percentiles::from_micros(&joins));
        assert_eq!(merged.histograms.delay_us, SparseHistogram::from(&all));
        // The merged report merges again, the same way (three machines, in two steps).
        let again = merge(&[through_json(&merged)]).expect("a merged report is a report");
        assert_eq!(again.delay_ms, merged.delay_ms);
    }

    #[test]
    fn counts_maps_and_lists_add_up() {
        let sc = scenario(&[]);
        let mut a = shard(&sc, 4, [1], [60], (1000, 10));
        let mut b = shard(&sc, 6, [2], [70], (3000, 0));
        a.join_failures.insert("room_full".into(), 1);
        b.join_failures.insert("room_full".into(), 2);
        b.join_failures.insert("server_busy".into(), 1);
        a.disconnects.insert("close 1008".into(), 1);
        b.server_errors.insert("rate_limited".into(), 4);
        a.verification.failed = 1;
        a.verification.failures = vec!["room 0: talker 1 not heard".into()];
        a.rx_rate = RxRate {
            mean: 48.0,
            min_client: 45.0,
            min_second: 40,
            ..a.rx_rate
        };
        b.rx_rate.silent = 2;
        let per_client = |room| ClientReconnections {
            room,
            slot: 0,
            frames_unsent: 3,
            reconnections: Vec::new(),
        };
        a.reconnections = Reconnections {
            total: 1,
            dropped: 1,
            clients: 1,
            frames_unsent: 3,
            per_client: vec![per_client(0)],
            ..Reconnections::default()
        };
        b.reconnections = Reconnections {
            total: 2,
            moved: 2,
            resumed: 2,
            clients: 1,
            frames_unsent: 3,
            per_client: vec![per_client(1)],
            ..Reconnections::default()
        };
        b.cpu = CpuUse {
            wall_secs: 11.0,
            loadgen_pct: Some(30.0),
            mixer_pct: Some(80.0),
        };
        b.flood = Some(FloodReport {
            clients: 2,
            sent: 100,
            per_second: 10.0,
            ..FloodReport::default()
        });

        let m = merge(&[a, b]).expect("mergeable");
        assert_eq!((m.clients, m.joined, m.talkers + m.listeners), (10, 10, 10));
        assert_eq!((m.frames_received, m.frames_lost), (4000, 10));
        assert!((m.loss_pct - 100.0 * 10.0 / 4010.0).abs() < 1e-12);
        assert_eq!(m.packets_sent, 2000);
        assert_eq!(
            m.join_failures,
            BTreeMap::from([("room_full".into(), 3), ("server_busy".into(), 1)])
        );
        assert_eq!(m.errors(), 3 + 1 + 1 + 4 + 1); // failures, disconnect, errors, dropped
        assert_eq!((m.verification.receivers, m.verification.failed), (4, 1));
        assert_eq!(m.verification.failures.len(), 1);
        // 4 clients at 48/s and 6 at 50/s; the worst client and second are a's.
        assert!((m.rx_rate.mean - (4.0 * 48.0 + 6.0 * 50.0) / 10.0).abs() < 1e-12);
        assert_eq!((m.rx_rate.min_client, m.rx_rate.min_second), (45.0, 40));
        assert_eq!((m.rx_rate.clients, m.rx_rate.silent), (10, 2));
        let rc = &m.reconnections;
        assert_eq!((rc.total, rc.dropped, rc.moved, rc.resumed), (3, 1, 2, 2));
        assert_eq!((rc.clients, rc.frames_unsent), (2, 6));
        let rooms: Vec<usize> = rc.per_client.iter().map(|c| c.room).collect();
        assert_eq!(rooms, [0, 1]);
        assert_eq!(m.cpu.wall_secs, 11.0);
        assert_eq!(m.cpu.loadgen_pct, Some(50.0));
        assert_eq!(m.cpu.mixer_pct, Some(80.0));
        assert_eq!(m.flood.as_ref().map(|f| f.sent), Some(100));
        assert!(m.storm.is_none());
    }

    #[test]
    fn a_shard_that_measured_no_receive_rate_does_not_drag_the_minimum_to_zero() {
        let sc = scenario(&[]);
        let a = shard(&sc, 4, [1], [60], (1000, 0));
        let mut b = shard(&sc, 4, [1], [60], (0, 0));
        b.rx_rate = RxRate {
            mean: 0.0,
            min_client: 0.0,
            min_second: 0,
            clients: 0,
            silent: 4,
            ..b.rx_rate
        };
        let m = merge(&[a, b]).expect("mergeable");
        assert_eq!((m.rx_rate.mean, m.rx_rate.min_client), (50.0, 50.0));
        assert_eq!((m.rx_rate.clients, m.rx_rate.silent), (4, 4));
    }

    #[test]
    fn gates_are_judged_again_on_the_merged_numbers() {
        // Each shard has 3 errors, within --max-errors 5; the run as a whole has 6.
        let sc = scenario(&["--max-errors", "5"]);
        let mut a = shard(&sc, 4, [1], [60], (1000, 0));
        a.server_errors.insert("rate_limited".into(), 3);
        a.gates = a.gate_verdicts(&sc.gates);
        let b = a.clone();
        assert!(a.gates.iter().all(|g| g.passed));
        let m = merge(&[a, b]).expect("mergeable");
        assert!(!m.passed);
        assert_eq!(gate(&m, "--max-errors").value, "6.00");

        // One shard loses 1.5 % of its frames, over --max-loss 1; merged with a clean shard ten
        // times its size, the run loses 0.14 % and holds. (Merged loss is a weighted mean of the
        // shards', so it can never exceed the worst shard's.)
        let sc = scenario(&["--max-loss", "1", "--max-p99-delay", "100"]);
        let lossy = shard(&sc, 4, [1], [60], (985, 15));
        let clean = shard(&sc, 40, [1], [60], (10_000, 0));
        assert!(!lossy.passed && clean.passed);
        let m = merge(&[lossy, clean]).expect("mergeable");
        assert!(m.passed, "{:?}", m.gates);
        assert_eq!(gate(&m, "--max-loss").value, "0.14");

        // The same for p99 delay: one shard's few slow onsets are under 1 % of the whole.
        let slow = shard(&sc, 4, [1], [150], (1000, 0));
        let fast = shard(&sc, 40, [1], (0..200).map(|k| 40 + k % 20), (1000, 0));
        assert!(!slow.passed && fast.passed);
        let m = merge(&[slow, fast]).expect("mergeable");
        assert!(gate(&m, "--max-p99-delay").passed, "{:?}", m.gates);
        assert!(m.delay_ms.max >= 150.0);
    }

    #[test]
    fn reports_of_different_scenarios_are_refused_naming_the_field() {
        let a = shard(&scenario(&[]), 4, [1], [60], (1000, 0));
        let rooms = shard(
            &Args::parse_from(["loadgen", "--rooms", "5"])
                .to_scenario()
                .expect("valid"),
            4,
            [1],
            [60],
            (1000, 0),
        );
        let err = merge(&[a.clone(), a.clone(), rooms]).expect_err("different rooms");
        assert_eq!(
            err,
            MergeError::ScenarioMismatch {
                index: 2,
                field: "rooms".into(),
                first: "4".into(),
                other: "5".into(),
            }
        );
        assert!(err.to_string().starts_with("report 3 ran"), "{err}");

        let gated = shard(&scenario(&["--max-loss", "1"]), 4, [1], [60], (1000, 0));
        let err = merge(&[a.clone(), gated]).expect_err("different gates");
        assert!(
            matches!(&err, MergeError::ScenarioMismatch { field, .. } if field == "gates.max_loss_pct"),
            "{err}"
        );

        // Each machine's own mixer URLs and mixer PID are expected to differ.
        let mut elsewhere = a.clone();
        elsewhere.scenario.urls = vec!["ws://10.0.0.2:8080/".into()];
        elsewhere.scenario.mixer_pid = Some(4242);
        let merged = merge(&[a.clone(), elsewhere]).expect("same scenario but per-shard fields");
        assert_eq!(merged.scenario, a.scenario);

        assert_eq!(merge(&[]).expect_err("nothing"), MergeError::NoReports);
    }

    #[test]
    fn histograms_that_disagree_with_their_percentiles_are_refused() {
        let sc = scenario(&[]);
        let good = shard(&sc, 4, [1], [60, 70], (1000, 0));
        // A report without its samples (as an older loadgen's would be, once defaulted).
        let mut hollow = good.clone();
        hollow.histograms.delay_us = SparseHistogram::default();
        let err = merge(&[good.clone(), hollow]).expect_err("no samples");
        assert_eq!(
            err,
            MergeError::HistogramCount {
                index: 1,
                histogram: "delay_us",
                samples: 0,
                count: 2,
            }
        );
        assert_eq!(err.report(), Some(1));
        let mut wild = good.clone();
        wild.histograms.join_us = SparseHistogram(vec![(u64::MAX, 1)]);
        let err = merge(&[wild, good]).expect_err("out of range");
        assert!(
            matches!(
                err,
                MergeError::HistogramRange {
                    index: 0,
                    histogram: "join_us",
                    ..
                }
            ),
            "{err}"
        );
    }
}
