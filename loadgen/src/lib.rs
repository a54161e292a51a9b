//! # loadgen: a load generator for the mixer that listens to what it gets back
//!
//! Joins `rooms × participants` simulated clients (talkers and listeners) to one or more mixers
//! and measures, per run: join time, receive rate, loss (gaps in the server's sequence numbers;
//! gaps the server marks as pauses in silence are counted apart), RFC 3550 jitter, disconnects
//! and server errors, a fleet's redirects and mid-session reconnections (with their gaps), its
//! own and the mixer's CPU use, and, on a sample of receivers, whether the audio is right: every
//! talker heard, own voice absent (mix-minus), no other room leaking in, no clipping, and the
//! mouth-to-ear delay of tone onsets.
//!
//! - [`config`]: clap [`Args`] → validated [`Scenario`] (+ [`Gates`]).
//! - [`signal`]: the tone grid, the pre-encoded 1 s tone-burst period, WAV input, Goertzel.
//! - [`client`]: one tokio task per simulated client; absolute 20 ms send schedule; impairment.
//! - [`connect`]: `ws://` and `wss://` connections (TLS with rustls, `--ca-file` or system roots).
//! - [`join`]: joining, following a fleet's redirects, and rejoining after a session breaks.
//! - [`stats`]: sequence-gap and jitter kernels, live counters.
//! - [`verify`]: decoding and checking sampled receivers after the run.
//! - [`report`]: [`Report`], gate verdicts, the summary table.
//! - [`timeline`]: the run second by second (clients' counters, mixers' scraped metrics, delays
//!   over time), sampled while it runs; it also draws the progress line.
//! - [`html`]: the report as one self-contained HTML page with SVG charts.
//!
//! [`run`] runs one scenario; [`find_max`] grows the load round by round until a gate breaks.
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod config;
pub mod connect;
pub mod cpu;
pub mod flood;
pub mod html;
pub mod join;
pub mod report;
pub mod rng;
pub mod signal;
pub mod stats;
pub mod timeline;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mixer_protocol::Role;
use tokio::time::Instant;

pub use config::{Args, Gates, Scenario, ScenarioError};
pub use report::{Capacity, Report};

use client::{ClientOutcome, ClientPlan, ReconnectCause, RunContext, run_client};
use config::Signal;
use report::{
    ClientReconnections, CpuUse, EXPECTED_FPS, Percentiles, ReconnectionReport, Reconnections,
    Round, RxRate, StormReport, Verification,
};
use signal::Source;
use stats::{Live, micros_histogram};
use verify::{Talkers, VerifySettings};

/// Runs one scenario and reports what it measured, with the verdict of its gates.
pub async fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    run_round(scenario, 0).await
}

/// Capacity search: runs `scenario`, then again with `step` more rooms each round, until a gate
/// is violated or `max_rounds` have run. `on_round` sees each round as it finishes.
pub async fn find_max(
    scenario: &Scenario,
    mut on_round: impl FnMut(&Round),
) -> anyhow::Result<Capacity> {
    let search = scenario.find_max.unwrap_or(config::FindMax {
        step: scenario.rooms,
        max_rounds: 1,
    });
    let mut capacity = Capacity {
        rounds: Vec::new(),
        max_rooms: None,
        max_clients: None,
    };
    for round in 0..search.max_rounds {
        let mut this = scenario.clone();
        this.rooms = scenario.rooms + round * search.step;
        let report = run_round(&this, round).await?;
        let violations = report.violations(&this.gates);
        let passed = violations.is_empty();
        if passed {
            capacity.max_rooms = Some(this.rooms);
            capacity.max_clients = Some(this.clients());
        }
        let entry = Round {
            rooms: this.rooms,
            clients: this.clients(),
            passed,
            violations,
            report,
        };
        on_round(&entry);
        capacity.rounds.push(entry);
        if !passed {
            break;
        }
        // Let the server settle (closed connections reaped, rooms torn down) between rounds.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(capacity)
}

/// The sources for a scenario: per room, per talker slot, its tone (if any) and packets.
type RoomSources = Vec<Vec<(Option<f32>, Arc<Source>)>>;

fn prepare_sources(scenario: &Scenario) -> anyhow::Result<RoomSources> {
    match &scenario.signal {
        Signal::Wav(path) => {
            let source = Arc::new(signal::wav_source(path)?);
            Ok((0..scenario.rooms)
                .map(|_| vec![(None, source.clone()); scenario.talkers])
                .collect())
        }
        Signal::Tones => {
            let freqs: Vec<Vec<f32>> = (0..scenario.rooms)
                .map(|r| {
                    (0..scenario.talkers)
                        .map(|t| signal::tone_for(r, t, scenario.talkers, scenario.rooms))
                        .collect()
                })
                .collect();
            let flat: Vec<f32> = freqs.iter().flatten().copied().collect();
            let sources = signal::tone_sources(&flat)?;
            let lookup = |f: f32| {
                sources
                    .iter()
                    .find(|(g, _)| *g == f)
                    .map(|(_, s)| s.clone())
                    .expect("every tone was encoded above")
            };
            Ok(freqs
                .iter()
                .map(|room| room.iter().map(|&f| (Some(f), lookup(f))).collect())
                .collect())
        }
    }
}

/// Which (room, slot) receivers are verified: round-robin over rooms, alternating listeners and
/// talkers within a room, so a small sample still covers every room and both roles.
fn verified_set(scenario: &Scenario) -> Vec<(usize, usize)> {
    let (talkers, participants) = (scenario.talkers, scenario.participants);
    let mut order = Vec::with_capacity(participants);
    let (mut t, mut l) = (0, talkers);
    while order.len() < participants {
        // A listener first: it has the most to check (every talker of its room).
        if l < participants {
            order.push(l);
            l += 1;
        }
        if t < talkers {
            order.push(t);
            t += 1;
        }
    }
    let mut out = Vec::new();
    'outer: for &slot in &order {
        for room in 0..scenario.rooms {
            if out.len() >= scenario.verify {
                break 'outer;
            }
            out.push((room, slot));
        }
    }
    out
}

async fn run_round(scenario: &Scenario, round: usize) -> anyhow::Result<Report> {
    let prepared = {
        let scenario = scenario.clone();
        tokio::task::spawn_blocking(move || prepare_sources(&scenario))
            .await
            .context("preparing the talkers' audio")??
    };
    let verified = verified_set(scenario);
    let clients = scenario.clients();
    let live = Arc::new(Live::default());
    let epoch = Instant::now() + Duration::from_millis(100);
    let ramp = Duration::from_secs_f64(clients as f64 / scenario.ramp_per_sec);
    let end = epoch + ramp + scenario.duration;
    // Built once per run: a TLS configuration (and the trust store read for it) is shared by
    // every client.
    let connector = connect::Connector::for_urls(&scenario.urls, scenario.ca_file.as_deref())
        .context("setting up TLS for wss:// URLs")?;
    let ctx = Arc::new(RunContext {
        connector: connector.clone(),
        epoch,
        end,
        live: live.clone(),
        pattern: scenario.pattern,
        talk_on: scenario.talk_on,
        talk_off: scenario.talk_off,
        impairment: scenario.impairment,
        seed: scenario.seed,
        join_timeout: scenario.join_timeout,
        warmup: scenario.warmup,
        storm_at: scenario.storm.map(|storm| epoch + ramp + storm.after_ramp),
    });
    let cpu_start = (
        cpu::cpu_seconds(None),
        scenario.mixer_pid.and_then(|p| cpu::cpu_seconds(Some(p))),
    );
    let wall_start = Instant::now();
    let (stop_sampler, sampler_stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(timeline::run_sampler(
        live.clone(),
        timeline::metrics_targets(&scenario.urls),
        epoch,
        clients,
        std::io::stderr().is_terminal(),
        sampler_stopped,
    ));
    let mint = scenario
        .auth_key_file
        .as_deref()
        .map(auth::TokenMint::from_file)
        .transpose()?;
    // Each client's own token, when the server requires them.
    let token_for = |room: usize, identity: &str, role: Role| -> anyhow::Result<Option<String>> {
        mint.as_ref()
            .map(|mint| {
                let name = scenario.room_name(round, room);
                mint.mint(identity, &[name.as_str()], role)
            })
            .transpose()
    };
    let url_for = |room: usize, identity: &str, role: Role| -> anyhow::Result<String> {
        let url = &scenario.urls[room % scenario.urls.len()];
        Ok(match token_for(room, identity, role)? {
            None => url.clone(),
            Some(token) => auth::with_token(url, &token),
        })
    };
    let urls = Arc::new(scenario.urls.clone());
    let mut tasks = Vec::with_capacity(clients);
    for (room, room_sources) in prepared.iter().enumerate() {
        for slot in 0..scenario.participants {
            let index = room * scenario.participants + slot;
            let plan = ClientPlan {
                index,
                room,
                slot,
                source: room_sources.get(slot).map(|(_, source)| source.clone()),
                url: scenario.urls[room % scenario.urls.len()].clone(),
                urls: urls.clone(),
                // Listeners join as speakers in listen mode, as without tokens.
                access_token: token_for(room, &format!("lg-{room}-{slot}"), Role::Speaker)?,
                room_name: scenario.room_name(round, room),
                start_at: epoch + Duration::from_secs_f64(index as f64 / scenario.ramp_per_sec),
                record: verified.contains(&(room, slot)),
                stormed: scenario.storm.is_some_and(|storm| storm.takes(index)),
            };
            tasks.push(tokio::spawn(run_client(plan, ctx.clone())));
        }
    }
    // Flooders start once the ramp is a third done, so they meet a room already talking.
    let flooders: Vec<_> = (0..scenario.flooders)
        .map(|n| {
            let room = n % scenario.rooms;
            Ok(tokio::spawn(flood::run_flooder(
                connector.clone(),
                url_for(room, &format!("lg-flood-{n}"), Role::Moderator)?,
                scenario.room_name(round, room),
                format!("flood-{n}"),
                scenario.flood_rate,
                epoch + ramp / 3,
                end,
            )))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut outcomes = Vec::with_capacity(clients);
    for task in tasks {
        outcomes.push(task.await.context("a client task panicked")?);
    }
    let mut flood = (!flooders.is_empty()).then(flood::FloodReport::default);
    for task in flooders {
        let outcome = task.await.context("a flooder task panicked")?;
        if let Some(flood) = flood.as_mut() {
            flood.add(outcome);
        }
    }
    if let Some(flood) = flood.as_mut() {
        let seconds = (end - (epoch + ramp / 3)).as_secs_f64();
        flood.per_second = flood.sent as f64 / seconds.max(1e-9);
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu_pct = |start: Option<f64>, pid: Option<u32>| {
        Some(100.0 * (cpu::cpu_seconds(pid)? - start?) / wall)
    };
    let cpu = CpuUse {
        wall_secs: wall,
        loadgen_pct: cpu_pct(cpu_start.0, None),
        mixer_pct: scenario
            .mixer_pid
            .and_then(|pid| cpu_pct(cpu_start.1, Some(pid))),
    };
    let _ = stop_sampler.send(());
    let samples = sampler.await.context("the sampler task panicked")?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let jitter = live
        .jitter_total
        .lock()
        .map(|h| Percentiles::from_micros(&h))
        .unwrap_or_default();
    let end_secs = (end - epoch).as_secs_f64();
    let scenario = scenario.clone();
    tokio::task::spawn_blocking(move || {
        let mut report = analyse(
            &scenario, outcomes, &prepared, &verified, end_secs, jitter, cpu,
        );
        report.flood = flood;
        report.timeline.samples = samples;
        report
    })
    .await
    .context("analysing the run")
}

fn analyse(
    scenario: &Scenario,
    outcomes: Vec<ClientOutcome>,
    prepared: &RoomSources,
    verified: &[(usize, usize)],
    end: f64,
    jitter_ms: Percentiles,
    cpu: CpuUse,
) -> Report {
    let ready = verify::room_ready_times(&outcomes);
    let mut join = micros_histogram();
    let mut join_failures = BTreeMap::new();
    let mut redirects = 0u64;
    let mut disconnects = BTreeMap::new();
    let mut server_errors = BTreeMap::new();
    let (mut received, mut lost, mut paused, mut skips, mut sent, mut impaired) =
        (0, 0, 0, 0, 0, 0);
    let mut rates = Vec::new();
    let mut silent = 0;
    let mut min_second = u32::MAX;
    let (mut reconnections, mut gap, mut rejoin) = (
        Reconnections::default(),
        micros_histogram(),
        micros_histogram(),
    );
    let storm = scenario
        .storm
        .map(|storm| storm_report(&outcomes, storm, end - scenario.duration.as_secs_f64()));
    for o in &outcomes {
        count_reconnections(o, &mut reconnections, &mut gap, &mut rejoin);
        if let Some(ms) = o.join_ms {
            let _ = join.record((ms * 1000.0).max(1.0) as u64);
        }
        if let Some(f) = &o.failure {
            *join_failures.entry(f.clone()).or_insert(0) += 1;
        }
        redirects += u64::from(o.redirects);
        if let Some(d) = &o.disconnect {
            *disconnects.entry(d.clone()).or_insert(0) += 1;
        }
        for (code, _) in &o.server_errors {
            *server_errors.entry(code.clone()).or_insert(0) += 1;
        }
        received += o.seq.received;
        lost += o.seq.lost;
        paused += o.seq.paused;
        skips += o.tick_skips;
        sent += o.sent;
        impaired += o.impaired_drops;
        if o.joined_at.is_some() && o.disconnect.is_none() && o.seq.received == 0 {
            // Its mix was silent the whole run, so the server rightly sent nothing: no rate.
            silent += 1;
            continue;
        }
        // Whole seconds after the room's warm-up and before the end, but for those the client
        // spent (partly) out of its room between two connections: that is the reconnection's
        // gap, reported apart.
        if let (Some(_), Some(ready)) = (o.joined_at, ready.get(&o.room)) {
            let first = (ready + scenario.warmup.as_secs_f64()).ceil() as usize;
            let last = end.floor() as usize;
            let outages: Vec<(f64, f64)> = o
                .reconnections
                .iter()
                .filter_map(|r| r.outage(end))
                .collect();
            let seconds: Vec<u32> = (first..last)
                .filter(|&s| {
                    let (a, b) = (s as f64, (s + 1) as f64);
                    !outages.iter().any(|&(from, to)| from < b && to > a)
                })
                .map(|s| o.per_second.get(s).copied().unwrap_or(0))
                .collect();
            if !seconds.is_empty() {
                min_second = min_second.min(seconds.iter().copied().min().unwrap_or(0));
                rates.push(f64::from(seconds.iter().sum::<u32>()) / seconds.len() as f64);
            }
        }
    }
    let rx_rate = RxRate {
        expected: EXPECTED_FPS,
        mean: if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        },
        min_client: rates.iter().copied().fold(f64::INFINITY, f64::min).min(1e9),
        min_second: if rates.is_empty() { 0 } else { min_second },
        clients: rates.len(),
        silent,
    };
    let rx_rate = RxRate {
        min_client: if rates.is_empty() {
            0.0
        } else {
            rx_rate.min_client
        },
        ..rx_rate
    };
    let by_index: HashMap<(usize, usize), &ClientOutcome> =
        outcomes.iter().map(|o| ((o.room, o.slot), o)).collect();
    let talkers = Talkers {
        rooms: (0..scenario.rooms)
            .map(|r| {
                (0..scenario.talkers)
                    .filter_map(|t| {
                        let (freq, source) = &prepared[r][t];
                        by_index
                            .get(&(r, t))
                            .map(|o| (t, *freq, source.clone(), *o))
                    })
                    .collect()
            })
            .collect(),
    };
    let settings = VerifySettings {
        warmup: scenario.warmup.as_secs_f64(),
        end,
        heard_db: scenario.heard_db,
        isolation_db: scenario.isolation_db,
        tones: scenario.signal == Signal::Tones,
        rooms: scenario.rooms,
    };
    let mut verification = Verification::default();
    let mut delay = micros_histogram();
    for key in verified {
        let Some(o) = by_index.get(key) else { continue };
        let room_ready = ready.get(&o.room).copied().unwrap_or(0.0);
        let verdict = verify::verify_receiver(o, room_ready, &talkers, &settings);
        for (_, ms) in &verdict.delays {
            let _ = delay.record((ms * 1000.0).max(1.0) as u64);
        }
        verification.receivers += 1;
        if verdict.passed {
            verification.passed += 1;
        } else {
            verification.failed += 1;
        }
        verification.clipped_samples += verdict.clipped_samples;
        verification
            .failures
            .extend(verdict.problems.iter().cloned());
        verification.details.push(verdict);
    }
    // The samples are the sampler's; analysis adds what verification placed in time.
    let timeline = timeline::Timeline {
        samples: Vec::new(),
        delay: timeline::delay_series(&verification.details, timeline::DELAY_SERIES_SECS),
        delay_distribution: timeline::delay_distribution(&verification.details),
    };
    let mut report = Report {
        scenario: scenario.clone(),
        clients: outcomes.len(),
        talkers: outcomes.iter().filter(|o| o.talker).count(),
        listeners: outcomes.iter().filter(|o| !o.talker).count(),
        joined: outcomes.iter().filter(|o| o.joined_at.is_some()).count(),
        join_failures,
        redirects,
        reconnections: Reconnections {
            rejoin_ms: Percentiles::from_micros(&rejoin),
            ..reconnections
        },
        reconnect_gap_ms: Percentiles::from_micros(&gap),
        storm,
        join_ms: Percentiles::from_micros(&join),
        rx_rate,
        frames_received: received,
        frames_lost: lost,
        frames_paused: paused,
        loss_pct: if received + lost == 0 {
            0.0
        } else {
            100.0 * lost as f64 / (received + lost) as f64
        },
        tick_skips: skips,
        jitter_ms,
        delay_ms: Percentiles::from_micros(&delay),
        verification,
        disconnects,
        server_errors,
        packets_sent: sent,
        packets_impaired: impaired,
        cpu,
        timeline,
        flood: None,
        gates: Vec::new(),
        passed: true,
    };
    report.gates = report.gate_verdicts(&scenario.gates);
    report.passed = report.gates.iter().all(|g| g.passed);
    report
}

/// Adds one client's reconnections to the run's: counts by cause, and the gap and rejoin time of
/// each (in the histograms, µs).
fn count_reconnections(
    o: &ClientOutcome,
    into: &mut Reconnections,
    gap: &mut hdrhistogram::Histogram<u64>,
    rejoin: &mut hdrhistogram::Histogram<u64>,
) {
    if o.reconnections.is_empty() {
        return;
    }
    into.clients += 1;
    into.frames_unsent += o.unsent;
    let mut reports = Vec::with_capacity(o.reconnections.len());
    for r in &o.reconnections {
        into.total += 1;
        *match r.cause {
            ReconnectCause::Moved => &mut into.moved,
            ReconnectCause::LeaseLost => &mut into.lease_lost,
            ReconnectCause::OtherNode => &mut into.other_node,
            ReconnectCause::Dropped => &mut into.dropped,
            ReconnectCause::Storm => &mut into.storm,
        } += 1;
        into.resumed += u64::from(r.resumed);
        into.gave_up += u64::from(r.gave_up);
        if let Some(ms) = r.gap_ms() {
            let _ = gap.record((ms * 1000.0).max(1.0) as u64);
        }
        if let Some(ms) = r.rejoin_ms() {
            let _ = rejoin.record((ms * 1000.0).max(1.0) as u64);
        }
        reports.push(ReconnectionReport {
            cause: r.cause,
            reason: r.reason.clone(),
            at_secs: r.broke_at,
            rejoin_ms: r.rejoin_ms(),
            gap_ms: r.gap_ms(),
            resumed: r.resumed,
            url: r.url.clone(),
            attempts: r.attempts,
            gave_up: r.gave_up,
        });
    }
    into.per_client.push(ClientReconnections {
        room: o.room,
        slot: o.slot,
        frames_unsent: o.unsent,
        reconnections: reports,
    });
}

/// What the reconnect storm did: who it cut, who came back, and how long until each heard audio
/// again. `ramp_end` is when the ramp ended (seconds since the epoch); the storm came
/// `storm.after_ramp` later.
fn storm_report(outcomes: &[ClientOutcome], storm: config::Storm, ramp_end: f64) -> StormReport {
    let at = ramp_end + storm.after_ramp.as_secs_f64();
    let mut recovery = micros_histogram();
    let mut report = StormReport {
        at_secs: at,
        ..StormReport::default()
    };
    let cuts = outcomes.iter().flat_map(|o| {
        o.reconnections
            .iter()
            .filter(|r| r.cause == ReconnectCause::Storm)
    });
    for r in cuts {
        report.clients += 1;
        report.rejoined += u64::from(r.rejoined_at.is_some());
        report.resumed += u64::from(r.resumed);
        match r.first_frame_at {
            Some(heard) => {
                report.heard_again += 1;
                let ms = (heard - r.broke_at) * 1000.0;
                let _ = recovery.record((ms * 1000.0).max(1.0) as u64);
                report.all_heard_again_ms = Some(report.all_heard_again_ms.unwrap_or(0.0).max(ms));
            }
            None => report.never_heard_again += 1,
        }
    }
    report.recovery_ms = Percentiles::from_micros(&recovery);
    report
}
