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
//! - [`histogram`]: the sparse µs histograms a report carries next to its percentiles.
//! - [`merge`]: one report from the reports of several load generators (`loadgen merge`).
//! - [`exporter`]: loadgen's own Prometheus endpoint (`--metrics-listen`).
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
pub mod exporter;
pub mod flood;
pub mod histogram;
pub mod html;
pub mod join;
pub mod merge;
pub mod report;
pub mod rng;
pub mod scenario_file;
pub mod schedule;
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
pub use merge::{MergeError, merge};
pub use report::{Capacity, Report};

use client::{ClientOutcome, ClientPlan, ReconnectCause, RunContext, run_client};
use config::Signal;
use report::{
    ClientReconnections, CpuUse, EXPECTED_FPS, Histograms, ModerationReport, NodeReport,
    Percentiles, PttReport, ReconnectionReport, Reconnections, Round, RxRate, StormReport,
    Verification,
};
use signal::Source;
use stats::{Live, micros_histogram};
use verify::{Talkers, VerifySettings};

/// Runs one scenario and reports what it measured, with the verdict of its gates.
pub async fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    run_groups(std::slice::from_ref(scenario), 0, Arc::default()).await
}

/// Capacity search: runs `scenario`, then again with `step` more rooms each round, until a gate
/// is violated or `max_rounds` have run. `on_round` sees each round as it finishes.
pub async fn find_max(
    scenario: &Scenario,
    on_round: impl FnMut(&Round),
) -> anyhow::Result<Capacity> {
    find_max_with(scenario, &Arc::default(), on_round).await
}

/// [`find_max`], counting into `live` (which `--metrics-listen` serves) over every round.
pub async fn find_max_with(
    scenario: &Scenario,
    live: &Arc<Live>,
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
        let this = scenario.with_rooms(scenario.rooms + round * search.step);
        let report = run_groups(std::slice::from_ref(&this), round, live.clone()).await?;
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
            let sources = signal::tone_sources_for(&flat, scenario.pcm_rate)?;
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

/// Runs a scenario file's groups at once, on one clock, and reports on them together (with
/// each group's own report inside when there are several).
pub async fn run_scenario(groups: &[Scenario]) -> anyhow::Result<Report> {
    run_groups(groups, 0, Arc::default()).await
}

/// [`run_scenario`], counting into `live` (which `--metrics-listen` serves).
pub async fn run_scenario_with(groups: &[Scenario], live: Arc<Live>) -> anyhow::Result<Report> {
    run_groups(groups, 0, live).await
}

/// One group's clients under way.
struct Launched {
    tasks: Vec<tokio::task::JoinHandle<ClientOutcome>>,
    flooders: Vec<tokio::task::JoinHandle<flood::FloodOutcome>>,
    /// When its flooders start.
    flood_from: Instant,
    /// When its last stage ends.
    end: Instant,
}

async fn run_groups(groups: &[Scenario], round: usize, live: Arc<Live>) -> anyhow::Result<Report> {
    let first = groups
        .first()
        .context("a scenario needs at least one group")?;
    let mut prepared = Vec::with_capacity(groups.len());
    for group in groups {
        let group = group.clone();
        prepared.push(
            tokio::task::spawn_blocking(move || prepare_sources(&group))
                .await
                .context("preparing the talkers' audio")??,
        );
    }
    // Built once per run: a TLS configuration (and the trust store read for it) is shared by
    // every client.
    let connector = connect::Connector::for_urls(&first.urls, first.ca_file.as_deref())
        .context("setting up TLS for wss:// URLs")?;
    let mint = first
        .auth_key_file
        .as_deref()
        .map(auth::TokenMint::from_file)
        .transpose()?;
    for group in groups {
        if group.ptt == Some(mixer_protocol::FloorPolicy::Single) {
            create_single_floor_rooms(group, round, &connector, mint.as_ref()).await?;
        }
    }
    let clients: usize = groups
        .iter()
        .map(|g| (0..g.rooms).filter(|&r| g.runs_room(r)).count() * g.participants)
        .sum();
    let epoch = Instant::now() + Duration::from_millis(100);
    let cpu_start = (
        cpu::cpu_seconds(None),
        first.mixer_pid.and_then(|p| cpu::cpu_seconds(Some(p))),
    );
    let wall_start = Instant::now();
    // Every group's URLs: a scenario file's groups all run against the run's.
    let (stop_sampler, sampler_stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(timeline::run_sampler(
        live.clone(),
        timeline::metrics_targets(&first.urls),
        epoch,
        clients,
        std::io::stderr().is_terminal(),
        sampler_stopped,
    ));
    let mut launched = Vec::with_capacity(groups.len());
    for (group, sources) in groups.iter().zip(&prepared) {
        launched.push(launch_group(
            group,
            round,
            sources,
            epoch,
            &live,
            &connector,
            mint.as_ref(),
        )?);
    }
    let mut reports = Vec::with_capacity(groups.len());
    let mut finished = Vec::with_capacity(groups.len());
    for launch in launched {
        let mut outcomes = Vec::with_capacity(launch.tasks.len());
        for task in launch.tasks {
            outcomes.push(task.await.context("a client task panicked")?);
        }
        let mut flood = (!launch.flooders.is_empty()).then(flood::FloodReport::default);
        for task in launch.flooders {
            let outcome = task.await.context("a flooder task panicked")?;
            if let Some(flood) = flood.as_mut() {
                flood.add(outcome);
            }
        }
        if let Some(flood) = flood.as_mut() {
            let seconds = (launch.end - launch.flood_from).as_secs_f64();
            flood.per_second = flood.sent as f64 / seconds.max(1e-9);
        }
        finished.push((outcomes, flood, (launch.end - epoch).as_secs_f64()));
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu_pct = |start: Option<f64>, pid: Option<u32>| {
        Some(100.0 * (cpu::cpu_seconds(pid)? - start?) / wall)
    };
    let cpu = CpuUse {
        wall_secs: wall,
        loadgen_pct: cpu_pct(cpu_start.0, None),
        mixer_pct: first
            .mixer_pid
            .and_then(|pid| cpu_pct(cpu_start.1, Some(pid))),
    };
    let _ = stop_sampler.send(());
    let samples = sampler.await.context("the sampler task panicked")?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    for ((group, sources), (outcomes, flood, end_secs)) in groups.iter().zip(prepared).zip(finished)
    {
        let group = group.clone();
        let report = tokio::task::spawn_blocking(move || {
            let verified = verified_set(&group);
            let mut report = analyse(&group, outcomes, &sources, &verified, end_secs, cpu);
            report.flood = flood;
            report
        })
        .await
        .context("analysing the run")?;
        reports.push(report);
    }
    let mut report = combine(reports)?;
    report.timeline.samples = samples;
    Ok(report)
}

/// The run's report from its groups' (the one group's own, for a single group).
fn combine(mut reports: Vec<Report>) -> anyhow::Result<Report> {
    if reports.len() == 1 {
        return Ok(reports.remove(0));
    }
    let mut whole = merge::merge_groups(&reports)?;
    whole.groups = reports;
    Ok(whole)
}

/// Starts one group's clients (and flooders) on the run's clock.
fn launch_group(
    scenario: &Scenario,
    round: usize,
    prepared: &RoomSources,
    epoch: Instant,
    live: &Arc<Live>,
    connector: &connect::Connector,
    mint: Option<&auth::TokenMint>,
) -> anyhow::Result<Launched> {
    let verified = verified_set(scenario);
    let end = epoch + scenario.length();
    let ramp = scenario.stages.first().map_or(Duration::ZERO, |s| s.over);
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
        storm_at: scenario.storm.map(|storm| epoch + storm.at),
    });
    // Each client's own token, when the server requires them.
    let token_for = |room: usize, identity: &str, role: Role| -> anyhow::Result<Option<String>> {
        mint.map(|mint| {
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
    let role_of = |slot: usize| match scenario.moderators {
        Some(m) if slot >= scenario.participants - m.per_room => Role::Moderator,
        _ => Role::Speaker,
    };
    let presences = schedule::presences(
        &scenario.stages,
        scenario.clients(),
        scenario.churn,
        scenario.seed,
    );
    let at = |offset: Duration| epoch + offset;
    let urls = Arc::new(scenario.urls.clone());
    let mut tasks = Vec::with_capacity(scenario.clients());
    for (room, room_sources) in prepared.iter().enumerate() {
        if !scenario.runs_room(room) {
            continue;
        }
        for slot in 0..scenario.participants {
            let index = room * scenario.participants + slot;
            let Some(presence) = presences[index].clone() else {
                continue;
            };
            let source = room_sources.get(slot).map(|(_, source)| source.clone());
            let plan = ClientPlan {
                index,
                room,
                slot,
                ptt: scenario.ptt.is_some() && source.is_some(),
                pcm_rate: scenario.pcm_rate,
                moderate: scenario
                    .moderators
                    .filter(|m| slot >= scenario.participants - m.per_room)
                    .map(|m| client::Moderate {
                        every: m.every,
                        hold: m.hold,
                        talkers: scenario.talkers,
                    }),
                moderated: scenario.moderators.is_some(),
                source,
                url: scenario.urls[room % scenario.urls.len()].clone(),
                urls: urls.clone(),
                // Listeners join as speakers in listen mode, as without tokens.
                access_token: token_for(room, &format!("lg-{room}-{slot}"), role_of(slot))?,
                room_name: scenario.room_name(round, room),
                start_at: at(presence.join),
                away: presence
                    .away
                    .iter()
                    .map(|&(from, to)| (at(from), at(to)))
                    .collect(),
                leave_at: presence.leave.map(at),
                record: verified.contains(&(room, slot)),
                stormed: scenario.storm.is_some_and(|storm| storm.takes(index)),
            };
            tasks.push(tokio::spawn(run_client(plan, ctx.clone())));
        }
    }
    // Flooders start once the ramp is a third done, so they meet a room already talking.
    let flood_from = epoch + ramp / 3;
    let flooders = (0..scenario.flooders)
        .filter(|n| scenario.runs_room(n % scenario.rooms))
        .map(|n| {
            let room = n % scenario.rooms;
            Ok(tokio::spawn(flood::run_flooder(
                connector.clone(),
                url_for(room, &format!("lg-flood-{n}"), Role::Moderator)?,
                scenario.room_name(round, room),
                format!("flood-{n}"),
                scenario.flood_rate,
                flood_from,
                end,
            )))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Launched {
        tasks,
        flooders,
        flood_from,
        end,
    })
}

/// Creates a push-to-talk group's rooms with the single-floor policy before anyone joins (a
/// room created by a join takes the open policy). The server limits `create_room` per address
/// (a few at once, then one per 10 s), so a run from one machine can create only a few such
/// rooms; the error then says so.
async fn create_single_floor_rooms(
    scenario: &Scenario,
    round: usize,
    connector: &connect::Connector,
    mint: Option<&auth::TokenMint>,
) -> anyhow::Result<()> {
    for room in (0..scenario.rooms).filter(|&r| scenario.runs_room(r)) {
        let name = scenario.room_name(round, room);
        let url = &scenario.urls[room % scenario.urls.len()];
        let url = match mint {
            Some(mint) => auth::with_token(
                url,
                &mint.mint(
                    &format!("lg-create-{room}"),
                    &[name.as_str()],
                    Role::Moderator,
                )?,
            ),
            None => url.clone(),
        };
        let settings = mixer_protocol::RoomSettings {
            room: name.clone(),
            floor_policy: Some(mixer_protocol::FloorPolicy::Single),
            max_participants: None,
            max_talkers: None,
            normalise: None,
            max_talk_ms: None,
            frame_ms: None,
        };
        tokio::time::timeout(
            scenario.join_timeout,
            join::create_room(connector, &url, settings),
        )
        .await
        .map_err(|_| anyhow::anyhow!("creating room {name}: no answer in time"))?
        .with_context(|| format!("creating single-floor room {name}"))?;
    }
    Ok(())
}

fn analyse(
    scenario: &Scenario,
    outcomes: Vec<ClientOutcome>,
    prepared: &RoomSources,
    verified: &[(usize, usize)],
    end: f64,
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
    let (storm, storm_recovery) = match scenario.storm {
        Some(storm) => {
            let (report, recovery) = storm_report(&outcomes, storm);
            (Some(report), recovery)
        }
        None => (None, micros_histogram()),
    };
    let mut jitter = micros_histogram();
    let mut nodes: BTreeMap<String, NodeReport> = BTreeMap::new();
    for o in &outcomes {
        for &us in &o.jitter_us {
            let _ = jitter.record(us);
        }
        if let Some(url) = &o.node {
            nodes.entry(url.clone()).or_default().add(o);
        }
        count_reconnections(o, &mut reconnections, &mut gap, &mut rejoin, &mut join);
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
            let last = o.left_at.unwrap_or(end).min(end).floor() as usize;
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
    let run_settings = VerifySettings {
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
        // A receiver that left before the end is checked up to its leave.
        let settings = VerifySettings {
            end: o.left_at.unwrap_or(end).min(end),
            ..run_settings.clone()
        };
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
        loss_pct: report::loss_pct(received, lost),
        tick_skips: skips,
        jitter_ms: Percentiles::from_micros(&jitter),
        delay_ms: Percentiles::from_micros(&delay),
        histograms: Histograms {
            join_us: (&join).into(),
            jitter_us: (&jitter).into(),
            delay_us: (&delay).into(),
            reconnect_gap_us: (&gap).into(),
            rejoin_us: (&rejoin).into(),
            storm_recovery_us: (&storm_recovery).into(),
        },
        verification,
        disconnects,
        server_errors,
        packets_sent: sent,
        packets_impaired: impaired,
        cpu,
        timeline,
        flood: None,
        ptt: ptt_report(&outcomes, scenario),
        moderation: scenario.moderators.map(|_| moderation_report(&outcomes)),
        nodes: nodes.into_values().collect(),
        groups: Vec::new(),
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
    join: &mut hdrhistogram::Histogram<u64>,
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
            ReconnectCause::Churn => &mut into.churn,
        } += 1;
        into.resumed += u64::from(r.resumed);
        into.gave_up += u64::from(r.gave_up);
        // A planned leave's gap is the time away, and its rejoin a join like any other
        // (counted with the joins): neither says how the server recovers from a break.
        if r.cause == ReconnectCause::Churn {
            if let Some(ms) = r.rejoin_ms() {
                let _ = join.record((ms * 1000.0).max(1.0) as u64);
            }
        } else {
            if let Some(ms) = r.gap_ms() {
                let _ = gap.record((ms * 1000.0).max(1.0) as u64);
            }
            if let Some(ms) = r.rejoin_ms() {
                let _ = rejoin.record((ms * 1000.0).max(1.0) as u64);
            }
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

/// What a group's moderators did, and how its talkers fared under them.
fn moderation_report(outcomes: &[ClientOutcome]) -> ModerationReport {
    let mut report = ModerationReport::default();
    for o in outcomes {
        let m = &o.moderation;
        report.mutes += m.mutes;
        report.unmutes += m.unmutes;
        report.confirmed += m.confirmed;
        report.talkers_muted += m.muted;
        report.muted_secs += m.muted_spans.iter().map(|(a, b)| b - a).sum::<f64>();
    }
    report
}

/// What a push-to-talk group's floor requests came to (`None` for a group that talks freely).
fn ptt_report(outcomes: &[ClientOutcome], scenario: &Scenario) -> Option<PttReport> {
    scenario.ptt?;
    let mut grant = micros_histogram();
    let mut report = PttReport::default();
    for o in outcomes {
        report.requests += o.floor.requests;
        report.granted += o.floor.granted;
        report.denied += o.floor.denied;
        report.revoked += o.floor.revoked;
        for ms in &o.floor.grant_ms {
            let _ = grant.record((ms * 1000.0).max(1.0) as u64);
        }
    }
    report.grant_ms = Percentiles::from_micros(&grant);
    report.grant_us = (&grant).into();
    Some(report)
}

/// What the reconnect storm did: who it cut, who came back, and how long until each heard audio
/// again. Also returns the recovery times' histogram (µs), which the report keeps for merging.
fn storm_report(
    outcomes: &[ClientOutcome],
    storm: config::Storm,
) -> (StormReport, hdrhistogram::Histogram<u64>) {
    let at = storm.at.as_secs_f64();
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
    (report, recovery)
}
