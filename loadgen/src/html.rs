//! The report as one self-contained HTML page (`--html`): a verdict header, the headline
//! numbers, the gates, charts of the run over time ([`crate::timeline`]) and each verified
//! receiver's result.
//!
//! Everything is inline (CSS, SVG charts drawn by [`chart`]); there is no script, font or
//! image to fetch, so the file opens offline and can be attached to a ticket as it is. Every
//! text that comes from the run (room names in problems, error messages, URLs) is escaped.

pub mod chart;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chart::{Bar, LineChart, Series};

use crate::report::{Percentiles, Report};
use crate::timeline::Sample;

/// Line colours. A chart's measured series start with blue and orange, the pair most readers
/// tell apart (colour-blind ones included); green, purple and red follow.
const BLUE: &str = "#2563eb";
const ORANGE: &str = "#ea580c";
const GREEN: &str = "#16a34a";
const PURPLE: &str = "#9333ea";
const RED: &str = "#dc2626";
/// References (targets, limits) are grey or red and dashed.
const GREY: &str = "#6b7280";

/// The page's style: light, compact tables, charts two to a row where they fit.
const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1f2937;
  background: #f9fafb; margin: 0; }
main { max-width: 1360px; margin: 0 auto; padding: 0 24px 48px; }
header { padding: 20px 24px; border-bottom: 4px solid; margin-bottom: 8px; }
header.pass { background: #ecfdf5; border-color: #16a34a; }
header.fail { background: #fef2f2; border-color: #dc2626; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .verdict { font-weight: 700; padding: 2px 10px; border-radius: 4px; color: #fff; }
header.pass .verdict { background: #16a34a; }
header.fail .verdict { background: #dc2626; }
header p { margin: 4px 0 0; color: #4b5563; }
h2 { font-size: 17px; margin: 28px 0 10px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #e5e7eb; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e5e7eb;
  vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
table.kv th { width: 150px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td.result { color: #15803d; font-weight: 600; }
tr.bad { background: #fef2f2; }
tr.bad td.result { color: #b91c1c; font-weight: 700; }
.muted { color: #6b7280; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #e5e7eb; padding: 8px; }
svg.chart { width: 100%; height: auto; display: block; font-family: inherit; }
svg .title { font-size: 14px; font-weight: 600; fill: #1f2937; }
svg .unit, svg .tick, svg .legend { font-size: 11px; fill: #4b5563; }
svg .empty { font-size: 13px; fill: #9ca3af; }
svg .grid { stroke: #e5e7eb; stroke-width: 1; }
svg .axis { stroke: #9ca3af; stroke-width: 1; }
svg .series { fill: none; stroke-width: 1.8; stroke-linejoin: round; }
ul.problems { margin: 0; padding-left: 18px; }
footer { margin-top: 32px; color: #9ca3af; font-size: 12px; }
";

/// Renders `report` as a complete HTML document.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let sc = &report.scenario;
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>loadgen {verdict}: {} clients in {} rooms</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n",
        report.clients, sc.rooms
    );
    let _ = write!(
        page,
        "<header class=\"{class}\"><h1>loadgen report <span class=\"verdict\">{verdict}</span></h1>\
         <p>{} clients ({} talkers, {} listeners) in {} rooms{} against {}, over {} s; {}.</p>\
         </header>\n<main>\n",
        report.clients,
        report.talkers,
        report.listeners,
        sc.rooms,
        match report.groups.len() {
            0 => String::new(),
            n => format!(" in {n} groups"),
        },
        escape(&sc.urls.join(", ")),
        num(run_length(report), 1),
        gate_summary(report),
        class = if report.passed { "pass" } else { "fail" },
    );
    summary(&mut page, report);
    groups_and_nodes(&mut page, report);
    gates(&mut page, report);
    errors(&mut page, report);
    charts(&mut page, report);
    verification(&mut page, report);
    let _ = write!(
        page,
        "<footer>Written by loadgen {}. Charts: one sample a second from the clients' \
         counters and each mixer's /metrics; delays from verified receivers.</footer>\n\
         </main>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    page
}

/// How long the run lasted, seconds: its longest group's stages.
fn run_length(report: &Report) -> f64 {
    std::iter::once(&report.scenario)
        .chain(report.groups.iter().map(|g| &g.scenario))
        .map(|s| s.length().as_secs_f64())
        .fold(0.0, f64::max)
}

/// One row per group (a scenario file's) and per node (when clients were on several).
fn groups_and_nodes(page: &mut String, r: &Report) {
    if !r.groups.is_empty() {
        page.push_str(
            "<h2>Groups</h2>\n<table>\n<tr><th>Group</th><th>Clients</th><th>Rooms</th>\
             <th>Joined</th><th>Rx /s</th><th>Loss</th><th>Delay p50 / p99</th>\
             <th>Verified</th><th>Churn</th><th>Floor</th><th>Moderation</th></tr>\n",
        );
        for g in &r.groups {
            let floor = g.ptt.as_ref().map_or(String::new(), |f| {
                format!(
                    "{} asked, {} granted, {} denied; grant p99 {} ms",
                    f.requests,
                    f.granted,
                    f.denied,
                    num(f.grant_ms.p99, 1)
                )
            });
            let moderation = g.moderation.as_ref().map_or(String::new(), |m| {
                format!(
                    "{} mutes, {} carried out; {} s muted",
                    m.mutes,
                    m.confirmed,
                    num(m.muted_secs, 1)
                )
            });
            let _ = writeln!(
                page,
                "<tr class=\"{}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}%</td>\
                 <td class=\"num\">{} / {} ms</td><td class=\"num\">{}/{}</td>\
                 <td class=\"num\">{}</td><td>{floor}</td><td>{moderation}</td></tr>",
                if g.verification.failed == 0 {
                    "ok"
                } else {
                    "bad"
                },
                escape(&g.scenario.group),
                g.clients,
                g.scenario.rooms,
                g.joined,
                num(g.rx_rate.mean, 2),
                num(g.loss_pct, 3),
                num(g.delay_ms.p50, 1),
                num(g.delay_ms.p99, 1),
                g.verification.passed,
                g.verification.receivers,
                g.reconnections.churn,
            );
        }
        page.push_str("</table>\n");
    }
    if r.nodes.len() > 1 {
        page.push_str(
            "<h2>Nodes</h2>\n<table>\n<tr><th>Node</th><th>Clients</th><th>Loss</th>\
             <th>Reconnections</th><th>Server errors</th><th>Disconnects</th></tr>\n",
        );
        for n in &r.nodes {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}%</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&n.url),
                n.clients,
                num(n.loss_pct, 3),
                n.reconnections,
                n.server_errors,
                n.disconnects
            );
        }
        page.push_str("</table>\n");
    }
}

/// Escapes `text` for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals`, or "n/a" when it is not a number (so no `NaN` reaches the page).
fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{:.*}", decimals, v + 0.0)
    } else {
        "n/a".to_owned()
    }
}

/// An optional value with `decimals` and a unit, or "—".
fn opt(v: Option<f64>, decimals: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{}{unit}", num(v, decimals)),
        _ => "—".to_owned(),
    }
}

/// Percentiles as the text report writes them, or "n/a" without samples.
fn percentiles(p: &Percentiles) -> String {
    if p.count == 0 {
        "n/a".to_owned()
    } else {
        format!(
            "p50 {} · p90 {} · p99 {} · max {} ms <span class=\"muted\">(n={})</span>",
            num(p.p50, 1),
            num(p.p90, 1),
            num(p.p99, 1),
            num(p.max, 1),
            p.count
        )
    }
}

/// "all N gates held", "N of M gates violated", or "no gates set".
fn gate_summary(report: &Report) -> String {
    let failed = report.gates.iter().filter(|g| !g.passed).count();
    match (report.gates.len(), failed) {
        (0, _) => "no gates set".to_owned(),
        (n, 0) => format!("all {n} gates held"),
        (n, f) => format!("{f} of {n} gates violated"),
    }
}

/// A two-column table of headline numbers.
fn summary(page: &mut String, r: &Report) {
    let sc = &r.scenario;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "Clients",
            format!(
                "{} ({} talkers, {} listeners) in {} rooms; {} joined",
                r.clients, r.talkers, r.listeners, sc.rooms, r.joined
            ),
        ),
        ("Join time", percentiles(&r.join_ms)),
    ];
    let rx = &r.rx_rate;
    let silent = if rx.silent > 0 {
        format!("; {} clients paused throughout (silent mix)", rx.silent)
    } else {
        String::new()
    };
    rows.push((
        "Receive rate",
        format!(
            "mean {} /s per client (expected {}); worst client {} /s; worst second {}{silent}",
            num(rx.mean, 2),
            num(rx.expected, 0),
            num(rx.min_client, 2),
            rx.min_second
        ),
    ));
    rows.push((
        "Frames",
        format!(
            "{} received, {} lost, {} paused (silence)",
            r.frames_received, r.frames_lost, r.frames_paused
        ),
    ));
    rows.push((
        "Loss",
        format!(
            "{}% ({} of {} frames sent); server tick skips {}",
            num(r.loss_pct, 3),
            r.frames_lost,
            r.frames_received + r.frames_lost,
            r.tick_skips
        ),
    ));
    rows.push(("Jitter", percentiles(&r.jitter_ms)));
    rows.push(("Mouth-to-ear", percentiles(&r.delay_ms)));
    let v = &r.verification;
    rows.push((
        "Verified",
        format!(
            "{} receivers: {} passed, {} failed; clipped samples {}",
            v.receivers, v.passed, v.failed, v.clipped_samples
        ),
    ));
    rows.push((
        "Errors",
        format!(
            "{} (join failures {}, disconnects {}, server errors {}, dropped connections {})",
            r.errors(),
            r.join_failures.values().sum::<u64>(),
            r.disconnects.values().sum::<u64>(),
            r.server_errors.values().sum::<u64>(),
            r.reconnections.dropped
        ),
    ));
    let rc = &r.reconnections;
    if rc.total > 0 {
        rows.push((
            "Reconnections",
            format!(
                "{} by {} clients (moved {}, lease_lost {}, other_node {}, dropped {}, storm {}, \
                 churn {}); {} resumed, {} gave up; rejoin {}",
                rc.total,
                rc.clients,
                rc.moved,
                rc.lease_lost,
                rc.other_node,
                rc.dropped,
                rc.storm,
                rc.churn,
                rc.resumed,
                rc.gave_up,
                percentiles(&rc.rejoin_ms)
            ),
        ));
    }
    if let Some(storm) = &r.storm {
        rows.push((
            "Storm",
            format!(
                "{} clients cut at {} s: {} rejoined ({} resumed), {} heard audio again, {} \
                 never did",
                storm.clients,
                num(storm.at_secs, 1),
                storm.rejoined,
                storm.resumed,
                storm.heard_again,
                storm.never_heard_again
            ),
        ));
        rows.push((
            "Storm recovery",
            format!(
                "{}; all heard again after {}",
                percentiles(&storm.recovery_ms),
                opt(storm.all_heard_again_ms, 1, " ms")
            ),
        ));
    }
    if let Some(f) = &r.ptt {
        rows.push((
            "Push-to-talk",
            format!(
                "{} floor requests: {} granted, {} denied (busy), {} taken away; granted in {}",
                f.requests,
                f.granted,
                f.denied,
                f.revoked,
                percentiles(&f.grant_ms)
            ),
        ));
    }
    if let Some(m) = &r.moderation {
        rows.push((
            "Moderation",
            format!(
                "{} mutes and {} unmutes sent, {} carried out; talkers muted {} times, {} s in all",
                m.mutes,
                m.unmutes,
                m.confirmed,
                m.talkers_muted,
                num(m.muted_secs, 1)
            ),
        ));
    }
    if let Some(flood) = &r.flood {
        rows.push((
            "Flooders",
            format!(
                "{} sent {} control messages ({}/s)",
                flood.clients,
                flood.sent,
                num(flood.per_second, 0)
            ),
        ));
    }
    rows.push((
        "CPU",
        format!(
            "loadgen {} of one core; mixer {} (over {} s)",
            r.cpu
                .loadgen_pct
                .map_or("n/a".to_owned(), |v| format!("{}%", num(v, 0))),
            r.cpu
                .mixer_pct
                .map_or("n/a".to_owned(), |v| format!("{}%", num(v, 0))),
            num(r.cpu.wall_secs, 1)
        ),
    ));
    page.push_str("<h2>Summary</h2>\n<table class=\"kv\">\n");
    for (name, value) in rows {
        // Values are built from numbers and fixed words above; only their markup is ours.
        let _ = writeln!(page, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    page.push_str("</table>\n");
}

/// The gates, each with its limit, value and verdict; violated ones red with their reason.
fn gates(page: &mut String, r: &Report) {
    page.push_str("<h2>Gates</h2>\n");
    if r.gates.is_empty() {
        page.push_str(
            "<p class=\"muted\">No gates were set: the run passes whatever it measured.</p>\n",
        );
        return;
    }
    page.push_str(
        "<table>\n<tr><th>Gate</th><th>Limit</th><th>Value</th><th>Result</th><th>Why</th></tr>\n",
    );
    for g in &r.gates {
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td><code>{}</code></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"result\">{}</td><td>{}</td></tr>",
            if g.passed { "ok" } else { "bad" },
            escape(&g.gate),
            escape(&g.limit),
            escape(&g.value),
            if g.passed { "ok" } else { "VIOLATED" },
            escape(g.message.as_deref().unwrap_or(""))
        );
    }
    page.push_str("</table>\n");
}

/// Join failures, disconnects and server errors by reason, when there were any.
fn errors(page: &mut String, r: &Report) {
    let groups: [(&str, &BTreeMap<String, u64>); 3] = [
        ("join failure", &r.join_failures),
        ("disconnect", &r.disconnects),
        ("server error", &r.server_errors),
    ];
    if groups.iter().all(|(_, m)| m.is_empty()) {
        return;
    }
    page.push_str(
        "<h2>Errors</h2>\n<table>\n<tr><th>Kind</th><th>Reason</th><th>Count</th></tr>\n",
    );
    for (kind, map) in groups {
        for (reason, count) in map {
            let _ = writeln!(
                page,
                "<tr><td>{kind}</td><td>{}</td><td class=\"num\">{count}</td></tr>",
                escape(reason)
            );
        }
    }
    page.push_str("</table>\n");
}

/// A series of the samples: `value` of each, at its time.
fn over_samples<'a>(
    name: &'a str,
    color: &'a str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
) -> Series<'a> {
    Series {
        name,
        color,
        dashed: false,
        points: samples.iter().map(|s| (s.at_secs, value(s))).collect(),
    }
}

/// A dashed horizontal line at `level` over the samples' times (a target or a gate's limit).
fn reference<'a>(name: &'a str, color: &'a str, samples: &[Sample], level: f64) -> Series<'a> {
    Series {
        dashed: true,
        ..over_samples(name, color, samples, |_| Some(level))
    }
}

/// Charts of the run over time, per mixer, and the delay distribution.
fn charts(page: &mut String, r: &Report) {
    let samples = &r.timeline.samples;
    let gates = &r.scenario.gates;
    let mut figures = Vec::new();

    // What the stages call for, each group's share of it where this report ran only some of
    // its rooms (`--shard`).
    let parts: Vec<&Report> = if r.groups.is_empty() {
        vec![r]
    } else {
        r.groups.iter().collect()
    };
    let planned = |at: f64| {
        parts
            .iter()
            .map(|g| {
                let share = g.clients as f64 / g.scenario.clients().max(1) as f64;
                g.scenario.target_at(at) * share
            })
            .sum::<f64>()
    };
    let mut clients = vec![
        over_samples("connected", BLUE, samples, |s| Some(s.connected as f64)),
        Series {
            dashed: true,
            ..over_samples("planned (stages)", GREY, samples, |s| {
                Some(planned(s.at_secs))
            })
        },
    ];
    if samples
        .iter()
        .any(|s| s.servers.iter().any(|m| m.participants.is_some()))
    {
        // The mixers' own count, summed: it should track loadgen's.
        clients.push(over_samples(
            "participants (mixers' count)",
            ORANGE,
            samples,
            |s| {
                let counts: Vec<f64> = s.servers.iter().filter_map(|m| m.participants).collect();
                (!counts.is_empty()).then(|| counts.iter().sum())
            },
        ));
    }
    figures.push(chart::line_chart(&LineChart {
        title: "Clients connected",
        y_unit: "clients",
        series: clients,
    }));
    figures.push(chart::line_chart(&LineChart {
        title: "Audio frames per second, all clients",
        y_unit: "frames/s",
        series: vec![
            over_samples("received", BLUE, samples, |s| Some(s.frames_per_sec)),
            over_samples("paused (silence)", GREEN, samples, |s| {
                Some(s.paused_per_sec)
            }),
            over_samples("lost", RED, samples, |s| Some(s.lost_per_sec)),
        ],
    }));
    let mut loss = vec![over_samples("loss", RED, samples, |s| Some(s.loss_pct))];
    if let Some(limit) = gates.max_loss_pct {
        loss.push(reference("--max-loss (whole run)", GREY, samples, limit));
    }
    figures.push(chart::line_chart(&LineChart {
        title: "Loss per second",
        y_unit: "% of frames sent",
        series: loss,
    }));
    let mut jitter = vec![over_samples("p99", PURPLE, samples, |s| {
        Some(s.jitter_p99_ms)
    })];
    if let Some(limit) = gates.max_p99_jitter_ms {
        jitter.push(reference("--max-p99-jitter", GREY, samples, limit));
    }
    figures.push(chart::line_chart(&LineChart {
        title: "Interarrival jitter, server to client (RFC 3550)",
        y_unit: "ms",
        series: jitter,
    }));
    let delay = &r.timeline.delay;
    let mut delays = vec![
        Series {
            name: "p50",
            color: BLUE,
            dashed: false,
            points: delay.iter().map(|d| (d.at_secs, Some(d.p50_ms))).collect(),
        },
        Series {
            name: "p99",
            color: ORANGE,
            dashed: false,
            points: delay.iter().map(|d| (d.at_secs, Some(d.p99_ms))).collect(),
        },
    ];
    if let Some(limit) = gates.max_p99_delay_ms {
        delays.push(Series {
            name: "--max-p99-delay",
            color: GREY,
            dashed: true,
            points: delay.iter().map(|d| (d.at_secs, Some(limit))).collect(),
        });
    }
    figures.push(chart::line_chart(&LineChart {
        title: "Mouth-to-ear delay (verified receivers, by onset time)",
        y_unit: "ms",
        series: delays,
    }));
    let bars: Vec<Bar> = r
        .timeline
        .delay_distribution
        .iter()
        .map(|b| Bar {
            from: b.from_ms,
            to: b.to_ms,
            value: b.count as f64,
        })
        .collect();
    figures.push(chart::bar_chart(
        "Mouth-to-ear delay distribution",
        "ms",
        "onsets",
        BLUE,
        &bars,
    ));

    page.push_str("<h2>Over time</h2>\n<div class=\"charts\">\n");
    for svg in figures {
        let _ = writeln!(page, "<figure>{svg}</figure>");
    }
    page.push_str("</div>\n");
    servers(page, samples);
}

/// Per scraped mixer: its tick times and its CPU.
fn servers(page: &mut String, samples: &[Sample]) {
    // Targets in the order first seen (the sampler keeps one order; this does not rely on it).
    let mut targets: Vec<&str> = Vec::new();
    for s in samples {
        for m in &s.servers {
            if !targets.contains(&m.target.as_str()) {
                targets.push(&m.target);
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    page.push_str("<h2>Mixers</h2>\n");
    for target in targets {
        let of = |s: &Sample| s.servers.iter().find(|m| m.target == target).cloned();
        let up = samples
            .iter()
            .filter(|s| of(s).is_some_and(|m| m.up))
            .count();
        let _ = writeln!(
            page,
            "<p><code>{}</code>: scraped in {up} of {} samples.</p>",
            escape(target),
            samples.len()
        );
        let ticks = chart::line_chart(&LineChart {
            title: "Room tick time (decode, mix, encode)",
            y_unit: "ms",
            series: vec![
                over_samples("mean", GREEN, samples, |s| of(s)?.tick_mean_ms),
                over_samples("p50", BLUE, samples, |s| of(s)?.tick_p50_ms),
                over_samples("p99", ORANGE, samples, |s| of(s)?.tick_p99_ms),
            ],
        });
        let cpu = chart::line_chart(&LineChart {
            title: "Mixer CPU",
            y_unit: "% of one core",
            series: vec![over_samples("cpu", PURPLE, samples, |s| of(s)?.cpu_pct)],
        });
        let _ = writeln!(
            page,
            "<div class=\"charts\">\n<figure>{ticks}</figure>\n<figure>{cpu}</figure>\n</div>"
        );
    }
}

/// What a receiver heard, a line per talker; after reconnections, grouped by connection.
fn heard_by_connection(d: &crate::verify::ReceiverVerdict) -> String {
    // The levels come once per connection checked, each talker once in each: a slot seen
    // again starts the next connection.
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    let mut slots = Vec::new();
    for (slot, hz, db) in &d.heard {
        if slots.contains(slot) {
            groups.push(Vec::new());
            slots.clear();
        }
        slots.push(*slot);
        groups.last_mut().expect("never empty").push(format!(
            "talker {slot} ({} Hz) {}",
            num(f64::from(*hz), 0),
            opt(Some(*db), 1, " dB")
        ));
    }
    if groups.len() == 1 {
        return groups.concat().join("<br>");
    }
    groups
        .iter()
        .enumerate()
        .map(|(i, lines)| format!("<i>connection {}</i><br>{}", i + 1, lines.join("<br>")))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// One row per verified receiver: what it heard and what was wrong.
fn verification(page: &mut String, r: &Report) {
    let details = &r.verification.details;
    page.push_str("<h2>Verified receivers</h2>\n");
    if details.is_empty() {
        page.push_str("<p class=\"muted\">No receiver was verified.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<tr><th>Room</th><th>Slot</th><th>Role</th><th>Result</th><th>Heard</th>\
         <th>Own voice</th><th>Worst leak</th><th>Problems</th></tr>\n",
    );
    for d in details {
        let heard = heard_by_connection(d);
        let problems = if d.problems.is_empty() {
            String::new()
        } else {
            let items: String = d
                .problems
                .iter()
                .map(|p| format!("<li>{}</li>", escape(p)))
                .collect();
            format!("<ul class=\"problems\">{items}</ul>")
        };
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"result\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{problems}</td></tr>",
            if d.passed { "ok" } else { "bad" },
            d.room,
            d.slot,
            escape(d.role.as_str()),
            if d.passed { "passed" } else { "FAILED" },
            heard,
            opt(d.own_db, 1, " dB"),
            opt(d.worst_leak_db, 1, " dB"),
        );
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::GateVerdict;
    use crate::report::tests::healthy;
    use crate::timeline::{DelayBucket, DelayPoint, ServerSample};
    use crate::verify::ReceiverVerdict;

    fn receiver(passed: bool, problems: Vec<String>) -> ReceiverVerdict {
        ReceiverVerdict {
            room: 1,
            slot: 2,
            role: crate::verify::ReceiverRole::Listener,
            passed,
            problems,
            heard: vec![(0, 700.0, -12.5), (1, 823.0, f64::NAN)],
            own_db: None,
            worst_leak_db: Some(-80.0),
            clipped_samples: 0,
            window_secs: 5.0,
            connections: 1,
            delays: Vec::new(),
        }
    }

    /// A run of `seconds` samples with one mixer, whose first sample has no tick times yet.
    fn with_samples(seconds: usize) -> Report {
        let mut report = healthy();
        report.timeline.samples = (1..=seconds)
            .map(|i| Sample {
                at_secs: i as f64,
                connected: (i as u64).min(4),
                frames_per_sec: 200.0 - i as f64,
                lost_per_sec: 1.0,
                paused_per_sec: 3.0,
                loss_pct: 0.5,
                jitter_p99_ms: 1.0 + i as f64 / 10.0,
                errors: 0,
                reconnections: 0,
                servers: vec![ServerSample {
                    target: "http://127.0.0.1:8080/metrics".into(),
                    up: true,
                    tick_mean_ms: (i > 1).then_some(0.2),
                    tick_p50_ms: (i > 1).then_some(0.18),
                    tick_p99_ms: (i > 1).then_some(0.9),
                    cpu_pct: (i > 1).then_some(35.0),
                    participants: Some(4.0),
                }],
            })
            .collect();
        report.timeline.delay = vec![
            DelayPoint {
                at_secs: 2.5,
                count: 4,
                p50_ms: 60.0,
                p99_ms: 80.0,
                histogram: Default::default(),
            },
            DelayPoint {
                at_secs: 3.5,
                count: 4,
                p50_ms: 62.0,
                p99_ms: 95.0,
                histogram: Default::default(),
            },
        ];
        report.timeline.delay_distribution = vec![
            DelayBucket {
                from_ms: 60.0,
                to_ms: 70.0,
                count: 5,
            },
            DelayBucket {
                from_ms: 90.0,
                to_ms: 100.0,
                count: 3,
            },
        ];
        report
    }

    /// Looks like a whole document, and has no trace of a non-finite number.
    fn assert_well_formed(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>\n<html"), "{html}");
        assert!(html.trim_end().ends_with("</html>"));
        for tag in [
            "html", "head", "body", "main", "table", "svg", "figure", "tr",
        ] {
            let opened = html.matches(&format!("<{tag}>")).count()
                + html.matches(&format!("<{tag} ")).count();
            assert!(opened > 0, "no <{tag}>");
            assert_eq!(
                opened,
                html.matches(&format!("</{tag}>")).count(),
                "<{tag}> unbalanced"
            );
        }
        assert!(!html.contains("NaN"), "NaN in the page");
        assert!(!html.contains("inf"), "inf in the page");
        // Nothing to fetch: no script, no link, no source, no CSS url().
        for outside in ["<script", "href=", " src=", "url(", "@import"] {
            assert!(!html.contains(outside), "{outside} in the page");
        }
    }

    #[test]
    fn a_report_without_samples_is_a_whole_page_with_empty_charts() {
        let mut report = healthy();
        report.loss_pct = f64::NAN;
        report.cpu.loadgen_pct = Some(f64::INFINITY);
        let html = render(&report);
        assert_well_formed(&html);
        assert!(html.contains("<span class=\"verdict\">PASS</span>"));
        assert!(html.contains("no data"));
        assert!(html.contains("No gates were set"));
        assert!(
            !html.contains("<h2>Mixers</h2>"),
            "no mixer scraped, no section"
        );
    }

    #[test]
    fn samples_draw_polylines_inside_the_plot_box() {
        let html = render(&with_samples(10));
        assert_well_formed(&html);
        let polylines: Vec<&str> = html
            .match_indices("<polyline class=\"series\" points=\"")
            .map(|(i, m)| {
                let rest = &html[i + m.len()..];
                &rest[..rest.find('"').expect("closed")]
            })
            .collect();
        // Clients (connected, planned, participants), frames (3), loss, jitter, delay (p50,
        // p99), and per mixer tick times (3) and CPU.
        assert_eq!(polylines.len(), 3 + 3 + 1 + 1 + 2 + 3 + 1, "{polylines:?}");
        for points in polylines {
            for pair in points.split(' ') {
                let (x, y) = pair.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!((chart::PLOT_LEFT..=chart::PLOT_RIGHT).contains(&x), "x {x}");
                assert!((chart::PLOT_TOP..=chart::PLOT_BOTTOM).contains(&y), "y {y}");
            }
        }
        assert!(html.contains("<h2>Mixers</h2>"));
        assert!(html.contains("scraped in 10 of 10 samples"));
        assert_eq!(html.matches("<rect").count(), 2, "two delay buckets");
    }

    #[test]
    fn text_from_the_run_is_escaped() {
        let mut report = with_samples(3);
        report.passed = false;
        report.scenario.urls = vec!["ws://h:1/?a=1&b=<2>".into()];
        report
            .server_errors
            .insert("<script>alert(1)</script>".into(), 2);
        report.gates.push(GateVerdict {
            gate: "--max-loss".into(),
            limit: "0.5".into(),
            value: "1.00".into(),
            passed: false,
            message: Some("loss % 1.00 exceeds --max-loss 0.5 & \"more\"".into()),
        });
        report.verification.details.push(receiver(
            false,
            vec!["room <b>loadgen-0-1</b> talker 0 'not' heard".into()],
        ));
        for sample in &mut report.timeline.samples {
            sample.servers[0].target = "http://<evil>/metrics".into();
            sample.jitter_p99_ms = f64::NAN;
        }
        let html = render(&report);
        assert_well_formed(&html);
        assert!(html.contains("<span class=\"verdict\">FAIL</span>"));
        assert!(html.contains("<header class=\"fail\">"));
        assert!(!html.contains("<script>") && !html.contains("<b>") && !html.contains("<evil>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("room &lt;b&gt;loadgen-0-1&lt;/b&gt; talker 0 &#39;not&#39; heard"));
        assert!(html.contains("exceeds --max-loss 0.5 &amp; &quot;more&quot;"));
        assert!(html.contains("ws://h:1/?a=1&amp;b=&lt;2&gt;"));
        assert!(html.contains("http://&lt;evil&gt;/metrics"));
        assert!(html.contains("<tr class=\"bad\"><td><code>--max-loss</code>"));
        assert!(html.contains("talker 0 (700 Hz) -12.5 dB<br>talker 1 (823 Hz) —"));
    }

    #[test]
    fn levels_heard_after_a_reconnection_are_grouped_by_connection() {
        let mut d = receiver(true, Vec::new());
        assert_eq!(
            heard_by_connection(&d),
            "talker 0 (700 Hz) -12.5 dB<br>talker 1 (823 Hz) —"
        );
        d.heard = vec![(0, 700.0, -12.0), (1, 823.0, -13.0), (0, 700.0, -14.0)];
        d.connections = 2;
        assert_eq!(
            heard_by_connection(&d),
            "<i>connection 1</i><br>talker 0 (700 Hz) -12.0 dB<br>talker 1 (823 Hz) -13.0 dB\
             <br><i>connection 2</i><br>talker 0 (700 Hz) -14.0 dB"
        );
    }

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(
            escape(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;"
        );
        assert_eq!(escape("plain"), "plain");
    }
}
