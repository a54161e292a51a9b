//! The run second by second: what the clients saw ([`Live`]'s counters), what each mixer said
//! about itself (its `/metrics`, scraped), and the mouth-to-ear delays verification measured,
//! placed in time. The HTML report ([`crate::html`]) charts it; the JSON report carries it.
//!
//! [`run_sampler`] takes one [`Sample`] a second while the run goes on, and draws the progress
//! line from the same numbers. Mixer metrics come from the difference between two consecutive
//! scrapes (counters and histograms only mean something as growth), see [`prometheus`].

pub mod prometheus;
pub mod scrape;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::stats::Live;
use crate::verify::ReceiverVerdict;
use prometheus::{CpuRate, MixerMetrics};
use scrape::ScrapeError;

/// The width of the buckets [`delay_distribution`] counts delays in, ms.
pub const DELAY_BUCKET_MS: f64 = 10.0;

/// The time buckets of the report's [`delay_series`], seconds: one point a second, as the
/// samples, and each talker's tone has one onset a second.
pub const DELAY_SERIES_SECS: f64 = 1.0;

/// What the run looked like over time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// One a second from the start of the run (see [`run_sampler`]).
    pub samples: Vec<Sample>,
    /// Mouth-to-ear delay percentiles per time bucket (see [`delay_series`]).
    pub delay: Vec<DelayPoint>,
    /// How many delays fell in each 10 ms bucket (see [`delay_distribution`]).
    pub delay_distribution: Vec<DelayBucket>,
}

/// One second of the run, as the clients and the mixers saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, seconds since the run's epoch (the first client's start).
    pub at_secs: f64,
    /// Clients joined at that moment.
    pub connected: u64,
    /// Audio frames received by all clients per second since the previous sample.
    pub frames_per_sec: f64,
    /// Frames lost (unmarked sequence gaps) per second.
    pub lost_per_sec: f64,
    /// Frames paused in silence (marked sequence gaps) per second.
    pub paused_per_sec: f64,
    /// Lost over received plus lost in that second, percent.
    pub loss_pct: f64,
    /// p99 of the jitter estimates clients reported in that second, ms (0 with none).
    pub jitter_p99_ms: f64,
    /// Errors so far (failed joins, disconnects, dropped connections, server errors).
    pub errors: u64,
    /// Sessions broken and rejoined so far.
    pub reconnections: u64,
    /// Each scraped mixer, in the order of the targets.
    pub servers: Vec<ServerSample>,
}

/// One mixer in one [`Sample`], from its `/metrics` now and a second earlier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    /// The metrics URL scraped.
    pub target: String,
    /// Whether this scrape succeeded.
    pub up: bool,
    /// Mean room tick time since the previous scrape, ms.
    pub tick_mean_ms: Option<f64>,
    /// Median room tick time since the previous scrape, ms (interpolated in its bucket).
    pub tick_p50_ms: Option<f64>,
    /// p99 room tick time since the previous scrape, ms (interpolated in its bucket).
    pub tick_p99_ms: Option<f64>,
    /// The mixer process's CPU use, percent of one core, over the last 10 s (its counter
    /// counts whole seconds, see [`prometheus::CpuRate`]); `None` in the first 5 s.
    pub cpu_pct: Option<f64>,
    /// Participants in its rooms, all modes.
    pub participants: Option<f64>,
}

/// Mouth-to-ear delays of the onsets of one time bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DelayPoint {
    /// The middle of the bucket, seconds since the epoch (onset times at the talker's mouth).
    pub at_secs: f64,
    /// Delays measured in the bucket.
    pub count: u64,
    /// Their median, ms.
    pub p50_ms: f64,
    /// Their 99th percentile, ms.
    pub p99_ms: f64,
    /// The delays themselves, µs, so that the reports of several generators merge into the
    /// percentiles of all their delays.
    #[serde(default)]
    pub histogram: crate::histogram::SparseHistogram,
}

impl DelayPoint {
    /// The point of bucket `at_secs` whose delays (µs) are `histogram`.
    pub fn from_histogram(at_secs: f64, histogram: &hdrhistogram::Histogram<u64>) -> DelayPoint {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        DelayPoint {
            at_secs,
            count: histogram.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            histogram: histogram.into(),
        }
    }
}

/// How many mouth-to-ear delays fell in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DelayBucket {
    /// Lower bound, ms.
    pub from_ms: f64,
    /// Upper bound, ms (exclusive).
    pub to_ms: f64,
    /// Delays in the bucket.
    pub count: u64,
}

/// The metrics URL of the mixer behind a WebSocket URL: the mixer serves `/metrics` on its
/// public port unless started with `--metrics-listen`, so `ws://h:p/...` gives
/// `http://h:p/metrics`. `None` for `wss://` (scraping is plain HTTP only) and anything else.
pub fn metrics_url_for(ws_url: &str) -> Option<String> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    // User info would end up in the scrape's Host header; loadgen's URLs never carry any.
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(format!("http://{authority}/metrics"))
}

/// The metrics URLs of a run's mixers: one per distinct `ws://` URL's host and port.
pub fn metrics_targets(ws_urls: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ws_urls
        .iter()
        .filter_map(|url| metrics_url_for(url))
        .filter(|target| seen.insert(target.clone()))
        .collect()
}

/// Takes a [`Sample`] every second from `epoch + 1 s` until `stop` fires (or its sender is
/// dropped), and returns them. Each reads `live`'s counters (the jitter histogram is taken and
/// reset, as it has no other reader) and scrapes every target at once; a target that fails is
/// `up: false`, with one warning on stderr the first time. With `progress`, the progress line
/// is redrawn on stderr after each sample.
pub async fn run_sampler(
    live: Arc<Live>,
    targets: Vec<String>,
    epoch: Instant,
    clients: usize,
    progress: bool,
    mut stop: oneshot::Receiver<()>,
) -> Vec<Sample> {
    // The clock is read here only; the sampler is told the time, so tests can drive it.
    let start = Instant::now();
    let mut sampler = Sampler::new(live, targets, epoch, clients, progress, start);
    // A first scrape before the run, so the first sample already has growth to report.
    sampler.scrape_all(start).await;
    let mut ticker =
        tokio::time::interval_at(epoch + Duration::from_secs(1), Duration::from_secs(1));
    // A late sample is taken late rather than twice: rates are divided by the real interval.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Stopping mid-sample (mid-scrape) drops that sample: the run is over.
        let step = async {
            ticker.tick().await;
            sampler.sample(Instant::now()).await;
        };
        tokio::select! {
            _ = &mut stop => break,
            () = step => {}
        }
    }
    sampler.samples
}

/// [`Live`]'s cumulative frame counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    frames: u64,
    lost: u64,
    paused: u64,
}

/// One scrape target: its last successful scrape, and its CPU counter's recent history.
struct Server {
    target: String,
    last: Option<MixerMetrics>,
    cpu: CpuRate,
    warned: bool,
}

/// The sampler's state between samples.
struct Sampler {
    live: Arc<Live>,
    servers: Vec<Server>,
    epoch: Instant,
    clients: usize,
    progress: bool,
    last: (Instant, Totals),
    /// Errors and reconnections already counted when the sampler started (`live` outlives a
    /// `--find-max` round, for `--metrics-listen`): each run's samples count its own.
    base: (u64, u64),
    samples: Vec<Sample>,
}

impl Sampler {
    /// A sampler whose counters start from what `live` holds at `start`.
    fn new(
        live: Arc<Live>,
        targets: Vec<String>,
        epoch: Instant,
        clients: usize,
        progress: bool,
        start: Instant,
    ) -> Sampler {
        Sampler {
            servers: targets
                .into_iter()
                .map(|target| Server {
                    target,
                    last: None,
                    cpu: CpuRate::default(),
                    warned: false,
                })
                .collect(),
            epoch,
            clients,
            progress,
            last: (
                start,
                Totals {
                    frames: live.frames.load(Ordering::Relaxed),
                    lost: live.lost.load(Ordering::Relaxed),
                    paused: live.paused.load(Ordering::Relaxed),
                },
            ),
            base: (
                live.errors.load(Ordering::Relaxed),
                live.reconnections.load(Ordering::Relaxed),
            ),
            samples: Vec::new(),
            live,
        }
    }

    /// Takes the sample of time `now` (and draws the progress line).
    async fn sample(&mut self, now: Instant) {
        let live = &self.live;
        let totals = Totals {
            frames: live.frames.load(Ordering::Relaxed),
            lost: live.lost.load(Ordering::Relaxed),
            paused: live.paused.load(Ordering::Relaxed),
        };
        let connected = live.connected.load(Ordering::Relaxed);
        let errors = live
            .errors
            .load(Ordering::Relaxed)
            .saturating_sub(self.base.0);
        let reconnections = live
            .reconnections
            .load(Ordering::Relaxed)
            .saturating_sub(self.base.1);
        let jitter_p99_ms = live
            .jitter
            .lock()
            .map(|mut h| {
                let v = h.value_at_quantile(0.99) as f64 / 1000.0;
                h.reset();
                v
            })
            .unwrap_or(0.0);
        let (then, before) = std::mem::replace(&mut self.last, (now, totals));
        let elapsed = now.duration_since(then).as_secs_f64().max(1e-3);
        // Counters only grow; saturating keeps a surprise from wrapping to 2^64.
        let (df, dl, dp) = (
            totals.frames.saturating_sub(before.frames),
            totals.lost.saturating_sub(before.lost),
            totals.paused.saturating_sub(before.paused),
        );
        let servers = self.scrape_all(now).await;
        let sample = Sample {
            at_secs: signed_secs(now, self.epoch),
            connected,
            frames_per_sec: df as f64 / elapsed,
            lost_per_sec: dl as f64 / elapsed,
            paused_per_sec: dp as f64 / elapsed,
            loss_pct: loss_pct(df, dl),
            jitter_p99_ms,
            errors,
            reconnections,
            servers,
        };
        if self.progress {
            eprint!(
                "\r\x1b[2K{}",
                progress_line(&sample, (df, dp), self.clients)
            );
        }
        self.samples.push(sample);
    }

    /// Scrapes every target at once, starting at `now`; returns their samples in target order.
    async fn scrape_all(&mut self, now: Instant) -> Vec<ServerSample> {
        let scrapes = futures_util::future::join_all(
            self.servers
                .iter()
                .map(|server| scrape_metrics(&server.target)),
        )
        .await;
        let mut out = Vec::with_capacity(scrapes.len());
        for (server, scraped) in self.servers.iter_mut().zip(scrapes) {
            match scraped {
                Ok(metrics) => {
                    let mut sample = metrics.compare(server.last.as_ref(), &server.target);
                    // Timed from when the scrapes started, together: the CPU rate is over the
                    // sampling interval, whatever each response's own latency.
                    sample.cpu_pct = metrics
                        .cpu_seconds
                        .and_then(|cpu| server.cpu.push(signed_secs(now, self.epoch), cpu));
                    out.push(sample);
                    server.last = Some(metrics);
                }
                Err(error) => {
                    if !server.warned {
                        server.warned = true;
                        warn_unscraped(&server.target, &error, self.progress);
                    }
                    out.push(ServerSample {
                        target: server.target.clone(),
                        up: false,
                        ..ServerSample::default()
                    });
                }
            }
        }
        out
    }
}

/// The one warning for a target that could not be scraped (the first time it fails).
fn warn_unscraped(target: &str, error: &ScrapeError, progress: bool) {
    // Clear the progress line first, so the warning is not drawn over it.
    let clear = if progress { "\r\x1b[2K" } else { "" };
    let hint = match error {
        ScrapeError::Status(404) => {
            " (a mixer started with --metrics-listen serves /metrics on that address only)"
        }
        _ => "",
    };
    eprintln!(
        "{clear}loadgen: cannot scrape {target}: {error}{hint}; its charts have gaps where it \
         was not scraped"
    );
}

/// Fetches and parses one mixer's metrics.
async fn scrape_metrics(target: &str) -> Result<MixerMetrics, ScrapeError> {
    Ok(MixerMetrics::parse(&scrape::fetch(target).await?)?)
}

/// Seconds from `epoch` to `at`, negative before it.
fn signed_secs(at: Instant, epoch: Instant) -> f64 {
    match at.checked_duration_since(epoch) {
        Some(after) => after.as_secs_f64(),
        None => -epoch.duration_since(at).as_secs_f64(),
    }
}

/// Lost over received plus lost, percent; 0 when nothing was sent.
fn loss_pct(received: u64, lost: u64) -> f64 {
    if received + lost == 0 {
        0.0
    } else {
        100.0 * lost as f64 / (received + lost) as f64
    }
}

/// The progress line for a sample: `frames` and `paused` are the counts since the previous
/// one (about a second's worth). The first mixer's CPU is added when it is known.
pub fn progress_line(sample: &Sample, (frames, paused): (u64, u64), clients: usize) -> String {
    let connected = sample.connected;
    let per_client = if connected == 0 {
        0.0
    } else {
        frames as f64 / connected as f64
    };
    let reconnects = match sample.reconnections {
        0 => String::new(),
        n => format!("  reconnections {n}"),
    };
    let cpu = match sample.servers.first().and_then(|s| s.cpu_pct) {
        Some(pct) => format!("  mixer cpu {pct:.0}%"),
        None => String::new(),
    };
    format!(
        "[{:>5.0}s] connected {connected}/{clients}  rx {frames} f/s ({per_client:.1}/client)  paused {paused} f/s  loss {:.2}%  jitter p99 {:.1} ms  errors {}{reconnects}{cpu}",
        sample.at_secs.max(0.0),
        sample.loss_pct,
        sample.jitter_p99_ms,
        sample.errors
    )
}

/// Mouth-to-ear delay percentiles over time: every verified receiver's delays, grouped by the
/// time of their onset into buckets `bucket_secs` wide (empty buckets left out). Empty if
/// `bucket_secs` is not a positive number.
pub fn delay_series(details: &[ReceiverVerdict], bucket_secs: f64) -> Vec<DelayPoint> {
    if !(bucket_secs > 0.0 && bucket_secs.is_finite()) {
        return Vec::new();
    }
    let mut buckets: std::collections::BTreeMap<i64, hdrhistogram::Histogram<u64>> =
        Default::default();
    for &(at, ms) in details.iter().flat_map(|d| &d.delays) {
        if at.is_finite() && ms.is_finite() {
            let _ = buckets
                .entry((at / bucket_secs).floor() as i64)
                .or_insert_with(crate::stats::micros_histogram)
                .record((ms * 1000.0).max(1.0) as u64);
        }
    }
    buckets
        .into_iter()
        .map(|(index, delays)| {
            DelayPoint::from_histogram((index as f64 + 0.5) * bucket_secs, &delays)
        })
        .collect()
}

/// Every verified receiver's delays counted in [`DELAY_BUCKET_MS`] buckets, in order; only
/// buckets with delays in them.
pub fn delay_distribution(details: &[ReceiverVerdict]) -> Vec<DelayBucket> {
    let mut counts: std::collections::BTreeMap<i64, u64> = Default::default();
    for &(_, ms) in details.iter().flat_map(|d| &d.delays) {
        if ms.is_finite() {
            *counts
                .entry((ms / DELAY_BUCKET_MS).floor() as i64)
                .or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(index, count)| DelayBucket {
            from_ms: index as f64 * DELAY_BUCKET_MS,
            to_ms: (index + 1) as f64 * DELAY_BUCKET_MS,
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(delays: Vec<(f64, f64)>) -> ReceiverVerdict {
        ReceiverVerdict {
            room: 0,
            slot: 0,
            role: crate::verify::ReceiverRole::Listener,
            passed: true,
            problems: Vec::new(),
            heard: Vec::new(),
            own_db: None,
            worst_leak_db: None,
            clipped_samples: 0,
            window_secs: 0.0,
            connections: 1,
            delays,
        }
    }

    #[test]
    fn a_websocket_url_gives_the_metrics_url_on_its_port() {
        assert_eq!(
            metrics_url_for("ws://127.0.0.1:8080/").as_deref(),
            Some("http://127.0.0.1:8080/metrics")
        );
        assert_eq!(
            metrics_url_for("ws://[::1]:9000/?access_token=x").as_deref(),
            Some("http://[::1]:9000/metrics")
        );
        assert_eq!(
            metrics_url_for("ws://mixer.local").as_deref(),
            Some("http://mixer.local/metrics")
        );
        assert_eq!(metrics_url_for("wss://mixer.example:443/"), None);
        assert_eq!(metrics_url_for("ws:///"), None);
        assert_eq!(metrics_url_for("http://h/"), None);
        // Several rooms' URLs on one mixer are scraped once; TLS ones not at all.
        let urls = ["ws://a:1/", "ws://a:1/x", "wss://b:2/", "ws://c:3/"].map(String::from);
        assert_eq!(
            metrics_targets(&urls),
            ["http://a:1/metrics", "http://c:3/metrics"]
        );
    }

    #[test]
    fn delays_are_grouped_by_the_time_of_their_onset() {
        let details = [
            verdict(vec![(0.2, 50.0), (0.9, 70.0), (1.1, 200.0), (3.5, 60.0)]),
            verdict(vec![(0.5, 60.0), (f64::NAN, 1.0)]),
        ];
        let series = delay_series(&details, 1.0);
        assert_eq!(series.len(), 3, "{series:?}");
        // Percentiles from a µs histogram (loadgen's, two significant digits): within 1 %.
        let near = |a: f64, b: f64| (a - b).abs() <= b * 1e-2;
        let first = &series[0];
        assert_eq!(
            (first.at_secs, first.count, first.histogram.len()),
            (0.5, 3, 3)
        );
        assert!(
            near(first.p50_ms, 60.0) && near(first.p99_ms, 70.0),
            "{first:?}"
        );
        assert_eq!((series[1].at_secs, series[1].count), (1.5, 1));
        assert_eq!(series[2].at_secs, 3.5);
        assert!(near(series[2].p99_ms, 60.0));
        assert!(delay_series(&details, 0.0).is_empty());
        assert!(delay_series(&[], 1.0).is_empty());

        let distribution = delay_distribution(&details);
        let as_tuples: Vec<(f64, f64, u64)> = distribution
            .iter()
            .map(|b| (b.from_ms, b.to_ms, b.count))
            .collect();
        assert_eq!(
            as_tuples,
            [
                (0.0, 10.0, 1),
                (50.0, 60.0, 1),
                (60.0, 70.0, 2),
                (70.0, 80.0, 1),
                (200.0, 210.0, 1)
            ]
        );
    }

    #[test]
    fn the_progress_line_reads_as_before_with_the_mixers_cpu_added() {
        let mut sample = Sample {
            at_secs: 3.02,
            connected: 4,
            frames_per_sec: 200.0,
            loss_pct: 0.5,
            jitter_p99_ms: 1.25,
            errors: 1,
            ..Sample::default()
        };
        assert_eq!(
            progress_line(&sample, (200, 10), 8),
            "[    3s] connected 4/8  rx 200 f/s (50.0/client)  paused 10 f/s  loss 0.50%  \
             jitter p99 1.2 ms  errors 1"
        );
        sample.reconnections = 2;
        sample.servers.push(ServerSample {
            cpu_pct: Some(41.6),
            up: true,
            ..ServerSample::default()
        });
        assert!(
            progress_line(&sample, (200, 10), 8)
                .ends_with("errors 1  reconnections 2  mixer cpu 42%")
        );
    }

    /// Driven by hand through a run's seconds: the counters become rates, the jitter histogram
    /// is taken, and a target that cannot be scraped is down in every sample.
    #[tokio::test]
    async fn the_sampler_turns_the_counters_into_rates_per_second() {
        let live = Arc::new(Live::default());
        live.connected.store(3, Ordering::Relaxed);
        let epoch = Instant::now();
        let targets = vec!["https://not-scraped/metrics".to_owned()];
        let mut sampler = Sampler::new(live.clone(), targets, epoch, 3, false, epoch);
        for second in 1..=3u64 {
            live.frames.fetch_add(150, Ordering::Relaxed);
            live.lost.fetch_add(50 * (second - 1), Ordering::Relaxed);
            live.flush(
                crate::stats::FrameCounts::default(),
                Some(2.0 * second as f64),
            );
            sampler.sample(epoch + Duration::from_secs(second)).await;
        }
        let samples = &sampler.samples;
        assert_eq!(samples.len(), 3, "{samples:?}");
        for (i, s) in samples.iter().enumerate() {
            assert!((s.at_secs - (i + 1) as f64).abs() < 1e-9, "{s:?}");
            assert_eq!(s.connected, 3);
            assert!((s.frames_per_sec - 150.0).abs() < 1e-9, "{s:?}");
            // Only this second's jitter estimate: the histogram was reset after each sample.
            assert!(
                (s.jitter_p99_ms - 2.0 * (i + 1) as f64).abs() < 0.05,
                "{s:?}"
            );
            assert_eq!(s.servers.len(), 1);
            assert!(!s.servers[0].up);
        }
        assert!((samples[1].lost_per_sec - 50.0).abs() < 1e-9);
        assert!((samples[2].loss_pct - 100.0 * 100.0 / 250.0).abs() < 1e-9);
        assert!(sampler.servers[0].warned);
    }

    #[tokio::test]
    async fn the_sampler_returns_when_its_stop_sender_is_dropped() {
        let (stop, stopped) = oneshot::channel::<()>();
        drop(stop);
        let samples = run_sampler(
            Arc::new(Live::default()),
            Vec::new(),
            Instant::now() + Duration::from_secs(3600),
            1,
            false,
            stopped,
        )
        .await;
        assert!(samples.is_empty());
    }
}
