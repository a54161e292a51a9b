//! Just enough of the Prometheus text exposition format to read the mixer's `/metrics`: sample
//! lines (`name{label="value",...} value [timestamp]`), comments and blank lines skipped, and the
//! three series the timeline charts (tick time, CPU, participants).
//!
//! Scrapes are compared in pairs: counters and histograms only mean something as the growth
//! between two scrapes, so [`MixerMetrics::compare`] turns two of them into one
//! [`ServerSample`]. CPU is the exception: its counter counts whole seconds, so [`CpuRate`]
//! takes it over a sliding window instead.

use std::collections::VecDeque;

use crate::timeline::ServerSample;

/// The mixer's histogram of one room tick's wall time (decode, mix, encode), in seconds.
pub const TICK_HISTOGRAM: &str = "mixer_tick_duration_seconds";
/// The process collector's CPU time (user + system), in seconds.
pub const CPU_COUNTER: &str = "process_cpu_seconds_total";
/// The mixer's participants gauge, one series per mode.
pub const PARTICIPANTS_GAUGE: &str = "mixer_participants";

/// The window [`CpuRate`] measures over, seconds.
pub const CPU_WINDOW_SECS: f64 = 10.0;
/// The shortest window [`CpuRate`] gives a rate for, seconds: a whole-second counter is then
/// off by at most 20 points.
pub const CPU_MIN_SPAN_SECS: f64 = 5.0;

/// The longest excerpt of a bad line an error quotes: the text comes from the peer.
const QUOTE_CHARS: usize = 80;

/// A line of an exposition that is not a valid sample line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The line does not start with a valid metric name.
    #[error("line {line}: no valid metric name in {text:?}")]
    Name {
        /// 1-based line number.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// The `{...}` label set is malformed (unclosed, no `=`, an unquoted value, a bad escape).
    #[error("line {line}: malformed labels in {text:?}")]
    Labels {
        /// 1-based line number.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// The line has a name but no value.
    #[error("line {line}: no value in {text:?}")]
    MissingValue {
        /// 1-based line number.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// The value is not a number (nor `+Inf`, `-Inf`, `NaN`).
    #[error("line {line}: value {value:?} is not a number")]
    Value {
        /// 1-based line number.
        line: usize,
        /// The value as written.
        value: String,
    },
    /// A histogram bucket whose `le` label is missing or not a number.
    #[error("line {line}: bucket bound le={le:?} is not a number")]
    Bucket {
        /// 1-based line number.
        line: usize,
        /// The `le` label's value (empty if missing).
        le: String,
    },
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample<'a> {
    /// 1-based line number, for errors found later.
    pub line: usize,
    /// The metric name, suffix included (`..._bucket`, `..._sum`, `..._count`).
    pub name: &'a str,
    /// Label names and their values, unescaped, in the order written.
    pub labels: Vec<(&'a str, String)>,
    /// The value.
    pub value: f64,
}

impl PromSample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line of `text`. Comments (`# HELP`, `# TYPE`, ...) and blank lines are
/// skipped; the first malformed line fails the whole exposition, as it fails a Prometheus
/// scrape, rather than being read half right.
pub fn parse(text: &str) -> Result<Vec<PromSample<'_>>, ParseError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(index + 1, line)?);
    }
    Ok(samples)
}

/// Parses one sample line (trimmed, not a comment).
fn parse_line(number: usize, line: &str) -> Result<PromSample<'_>, ParseError> {
    let quote = || line.chars().take(QUOTE_CHARS).collect::<String>();
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ParseError::Name {
            line: number,
            text: quote(),
        });
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace).ok_or_else(|| ParseError::Labels {
            line: number,
            text: quote(),
        })?;
        labels = parsed;
        rest = after;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(if rest.is_empty() {
            ParseError::MissingValue {
                line: number,
                text: quote(),
            }
        } else {
            ParseError::Name {
                line: number,
                text: quote(),
            }
        });
    }
    // An optional timestamp may follow the value; it is not needed here.
    let value_text =
        rest.split_ascii_whitespace()
            .next()
            .ok_or_else(|| ParseError::MissingValue {
                line: number,
                text: quote(),
            })?;
    let value = parse_value(value_text).ok_or_else(|| ParseError::Value {
        line: number,
        value: value_text.chars().take(QUOTE_CHARS).collect(),
    })?;
    Ok(PromSample {
        line: number,
        name,
        labels,
        value,
    })
}

/// Parses the label pairs after `{` up to the closing `}`; returns them and the text after `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let name_end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let name = &text[..name_end];
        if name.is_empty() {
            return None;
        }
        text = text[name_end..].trim_start().strip_prefix('=')?;
        text = text.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        text = text[close + 1..].trim_start();
        // A trailing comma before `}` is allowed by the format.
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return None;
        }
    }
}

/// A sample value: a float, or `+Inf`, `-Inf`, `NaN` as Prometheus writes them.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// A histogram as scraped: cumulative bucket counts by upper bound, sum and count, summed over
/// every label but `le` (a fleet node's `node` label, say).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, cumulative count), by upper bound, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl Histogram {
    /// The observations made since `earlier`, or `None` if the two do not describe the same
    /// growing histogram (other buckets, or counts that went down: the server restarted).
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        if self.buckets.len() != earlier.buckets.len() || self.count < earlier.count {
            return None;
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (&(le, now), &(le_before, before)) in self.buckets.iter().zip(&earlier.buckets) {
            if le != le_before || now < before {
                return None;
            }
            buckets.push((le, now - before));
        }
        Some(Histogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        })
    }

    /// The `q` quantile (0 < q ≤ 1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does: a quantile in the `+Inf` bucket is the highest finite bound,
    /// and the first bucket starts at 0. `None` without observations or a `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let &(last_le, total) = self.buckets.last()?;
        if last_le != f64::INFINITY || total <= 0.0 || !(q > 0.0 && q <= 1.0) {
            return None;
        }
        let rank = q * total;
        let b = self.buckets.iter().position(|&(_, count)| count >= rank)?;
        if b == self.buckets.len() - 1 {
            return self.buckets.len().checked_sub(2).map(|i| self.buckets[i].0);
        }
        let (upper, count) = self.buckets[b];
        let (lower, below) = match b.checked_sub(1) {
            Some(i) => self.buckets[i],
            None if upper <= 0.0 => return Some(upper),
            None => (0.0, 0.0),
        };
        let in_bucket = count - below;
        if in_bucket <= 0.0 {
            return Some(lower);
        }
        Some(lower + (upper - lower) * (rank - below) / in_bucket)
    }

    /// The mean observation, `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// What one scrape of a mixer says about the series the timeline charts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MixerMetrics {
    /// [`TICK_HISTOGRAM`], if exported.
    pub tick: Option<Histogram>,
    /// [`CPU_COUNTER`], seconds, if exported (the process collector is Linux only).
    pub cpu_seconds: Option<f64>,
    /// [`PARTICIPANTS_GAUGE`] summed over its modes, if exported.
    pub participants: Option<f64>,
}

impl MixerMetrics {
    /// Parses an exposition and picks out the series the timeline needs. Series of other
    /// names are ignored; several series of one name (other labels) are summed.
    pub fn parse(text: &str) -> Result<MixerMetrics, ParseError> {
        let samples = parse(text)?;
        let mut metrics = MixerMetrics::default();
        let add = |slot: &mut Option<f64>, value: f64| *slot = Some(slot.unwrap_or(0.0) + value);
        let bucket = format!("{TICK_HISTOGRAM}_bucket");
        let sum = format!("{TICK_HISTOGRAM}_sum");
        let count = format!("{TICK_HISTOGRAM}_count");
        for sample in &samples {
            let name = sample.name;
            if name == CPU_COUNTER {
                add(&mut metrics.cpu_seconds, sample.value);
            } else if name == PARTICIPANTS_GAUGE {
                add(&mut metrics.participants, sample.value);
            } else if name == bucket {
                let le = sample.label("le").unwrap_or_default();
                let bound =
                    parse_value(le)
                        .filter(|b| !b.is_nan())
                        .ok_or_else(|| ParseError::Bucket {
                            line: sample.line,
                            le: le.chars().take(QUOTE_CHARS).collect(),
                        })?;
                let tick = metrics.tick.get_or_insert_with(Histogram::default);
                match tick.buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, total)) => *total += sample.value,
                    None => tick.buckets.push((bound, sample.value)),
                }
            } else if name == sum {
                metrics.tick.get_or_insert_with(Histogram::default).sum += sample.value;
            } else if name == count {
                metrics.tick.get_or_insert_with(Histogram::default).count += sample.value;
            }
        }
        if let Some(tick) = metrics.tick.as_mut() {
            tick.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Ok(metrics)
    }

    /// The sample of one server from two consecutive scrapes: tick times from the growth
    /// between them, participants as of `self` (the later one). Without `earlier` (the first
    /// scrape) only the participants are known. The CPU is left to [`CpuRate`].
    pub fn compare(&self, earlier: Option<&MixerMetrics>, target: &str) -> ServerSample {
        let finite = |v: f64| v.is_finite().then_some(v);
        let ticks = earlier
            .and_then(|e| Some((self.tick.as_ref()?, e.tick.as_ref()?)))
            .and_then(|(now, before)| now.since(before));
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0).and_then(finite);
        ServerSample {
            target: target.to_owned(),
            up: true,
            tick_mean_ms: ms(ticks.as_ref().and_then(Histogram::mean)),
            tick_p50_ms: ms(ticks.as_ref().and_then(|t| t.quantile(0.5))),
            tick_p99_ms: ms(ticks.as_ref().and_then(|t| t.quantile(0.99))),
            cpu_pct: None,
            participants: self.participants.and_then(finite),
        }
    }
}

/// A process's CPU use from its CPU-seconds counter, over a sliding window of scrapes.
///
/// The mixer's `process_cpu_seconds_total` comes from the prometheus crate's process
/// collector, which counts whole seconds (`(utime + stime) / CLK_TCK` in integers): from one
/// second to the next it reads 0 or 100 %. Over a window of [`CPU_WINDOW_SECS`] the counter's
/// truncation is at most one second, 10 points; no rate is given before the window spans
/// [`CPU_MIN_SPAN_SECS`]. A finer counter is only smoothed.
#[derive(Debug, Clone, Default)]
pub struct CpuRate {
    /// (seconds since the epoch, counter), oldest first.
    history: VecDeque<(f64, f64)>,
}

impl CpuRate {
    /// Adds a scrape's counter at `at_secs`; returns the CPU use over the window, percent of
    /// one core. A counter that went down (the process restarted) starts the window afresh.
    pub fn push(&mut self, at_secs: f64, cpu_seconds: f64) -> Option<f64> {
        if !(at_secs.is_finite() && cpu_seconds.is_finite()) {
            return None;
        }
        if self
            .history
            .back()
            .is_some_and(|&(at, cpu)| cpu_seconds < cpu || at_secs <= at)
        {
            self.history.clear();
        }
        self.history.push_back((at_secs, cpu_seconds));
        // The front is the newest scrape at least a window old (or the oldest there is).
        while self
            .history
            .get(1)
            .is_some_and(|&(at, _)| at_secs - at >= CPU_WINDOW_SECS)
        {
            self.history.pop_front();
        }
        let &(since, from) = self.history.front()?;
        let span = at_secs - since;
        (span >= CPU_MIN_SPAN_SECS).then(|| 100.0 * (cpu_seconds - from) / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the mixer serves, cut down: help and type comments, a labelled gauge, a histogram
    /// with a fleet node's constant label, the process collector's counter.
    const EXPOSITION: &str = r#"# HELP mixer_participants Participants in rooms, by mode.
# TYPE mixer_participants gauge
mixer_participants{mode="listen",node="node-a"} 7
mixer_participants{mode="ptt",node="node-a"} 0
mixer_participants{mode="talk",node="node-a"} 3
# HELP mixer_tick_duration_seconds Wall time of one room tick (decode, mix, encode).
# TYPE mixer_tick_duration_seconds histogram
mixer_tick_duration_seconds_bucket{node="node-a",le="0.00005"} 0
mixer_tick_duration_seconds_bucket{node="node-a",le="0.0001"} 10
mixer_tick_duration_seconds_bucket{node="node-a",le="0.00025"} 50
mixer_tick_duration_seconds_bucket{node="node-a",le="0.0005"} 90
mixer_tick_duration_seconds_bucket{node="node-a",le="+Inf"} 100
mixer_tick_duration_seconds_sum{node="node-a"} 0.025
mixer_tick_duration_seconds_count{node="node-a"} 100
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total{node="node-a"} 12.5
"#;

    #[test]
    fn sample_lines_parse_with_labels_escapes_and_special_values() {
        let samples = parse(
            "# comment\n\n  a_b:c 1.5\nx{k=\"v \\\"q\\\" \\\\ \\n\",j = \"2\",} -3 1700000000000\n\
             y +Inf\nz NaN\nw{} 1e-3\n",
        )
        .expect("parses");
        assert_eq!(samples.len(), 5);
        assert_eq!((samples[0].name, samples[0].value), ("a_b:c", 1.5));
        assert_eq!(samples[1].label("k"), Some("v \"q\" \\ \n"));
        assert_eq!(samples[1].label("j"), Some("2"));
        assert_eq!((samples[1].value, samples[1].line), (-3.0, 4));
        assert_eq!(samples[2].value, f64::INFINITY);
        assert!(samples[3].value.is_nan());
        assert_eq!(samples[4].value, 0.001);
    }

    #[test]
    fn malformed_lines_are_named_by_line_number() {
        /// Whether an error is the one expected.
        type Expected = fn(&ParseError) -> bool;
        let cases: [(&str, Expected); 6] = [
            ("ok 1\n9bad 1", |e| {
                matches!(e, ParseError::Name { line: 2, .. })
            }),
            ("x{a=\"1\" 2", |e| matches!(e, ParseError::Labels { .. })),
            ("x{a=1} 2", |e| matches!(e, ParseError::Labels { .. })),
            ("x{a=\"\\t\"} 2", |e| matches!(e, ParseError::Labels { .. })),
            ("x", |e| matches!(e, ParseError::MissingValue { .. })),
            (
                "x{a=\"1\"} one",
                |e| matches!(e, ParseError::Value { value, .. } if value == "one"),
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert!(expected(&err), "{text:?}: {err}");
        }
        let err = MixerMetrics::parse("mixer_tick_duration_seconds_bucket{le=\"x\"} 1")
            .expect_err("bad le");
        assert!(err.to_string().contains("le=\"x\""), "{err}");
    }

    #[test]
    fn mixer_series_are_picked_out_and_summed_over_other_labels() {
        let metrics = MixerMetrics::parse(EXPOSITION).expect("parses");
        assert_eq!(metrics.participants, Some(10.0));
        assert_eq!(metrics.cpu_seconds, Some(12.5));
        let tick = metrics.tick.expect("histogram");
        assert_eq!(tick.count, 100.0);
        assert_eq!(tick.buckets.len(), 5);
        assert_eq!(tick.buckets[4], (f64::INFINITY, 100.0));
        // Two nodes' series of the same bucket add up.
        let two = format!("{EXPOSITION}{}", EXPOSITION.replace("node-a", "node-b"));
        let both = MixerMetrics::parse(&two).expect("parses");
        assert_eq!(both.participants, Some(20.0));
        assert_eq!(both.tick.expect("histogram").buckets[1], (0.0001, 20.0));
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_like_histogram_quantile() {
        let h = Histogram {
            buckets: vec![
                (1.0, 10.0),
                (2.0, 50.0),
                (4.0, 90.0),
                (f64::INFINITY, 100.0),
            ],
            sum: 200.0,
            count: 100.0,
        };
        // Rank 50 is the top of the (1, 2] bucket; rank 70 half way through (2, 4].
        assert_eq!(h.quantile(0.5), Some(2.0));
        assert_eq!(h.quantile(0.7), Some(3.0));
        // Rank 5 in the first bucket, which starts at 0.
        assert_eq!(h.quantile(0.05), Some(0.5));
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(h.quantile(0.99), Some(4.0));
        assert_eq!(h.mean(), Some(2.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
        let empty = Histogram {
            buckets: vec![(1.0, 0.0), (f64::INFINITY, 0.0)],
            ..Histogram::default()
        };
        assert_eq!((empty.quantile(0.5), empty.mean()), (None, None));
    }

    #[test]
    fn two_scrapes_give_tick_times_from_their_difference() {
        let before = MixerMetrics::parse(EXPOSITION).expect("parses");
        // A second later: 100 more ticks, all in (0.25, 0.5] ms.
        let later = EXPOSITION
            .replace("le=\"0.0005\"} 90", "le=\"0.0005\"} 190")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200")
            .replace("_count{node=\"node-a\"} 100", "_count{node=\"node-a\"} 200")
            .replace("_sum{node=\"node-a\"} 0.025", "_sum{node=\"node-a\"} 0.065");
        let after = MixerMetrics::parse(&later).expect("parses");
        let sample = after.compare(Some(&before), "http://h:1/metrics");
        assert!(sample.up);
        assert_eq!(sample.target, "http://h:1/metrics");
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(sample.tick_p50_ms, 0.375), "{sample:?}");
        assert!(close(sample.tick_p99_ms, 0.4975), "{sample:?}");
        assert!(close(sample.tick_mean_ms, 0.4), "{sample:?}");
        assert_eq!(sample.participants, Some(10.0));
        // The first scrape alone knows only the participants; a restart (counts going down)
        // gives no tick times rather than negative ones.
        let first = before.compare(None, "t");
        assert_eq!((first.tick_p50_ms, first.participants), (None, Some(10.0)));
        let restarted = before.compare(Some(&after), "t");
        assert_eq!(restarted.tick_p99_ms, None);
    }

    #[test]
    fn cpu_from_a_whole_second_counter_is_taken_over_the_window() {
        // 35 % of a core, as the process collector shows it: whole seconds, truncated.
        let counter = |t: f64| (0.35 * t + 0.2).floor();
        let mut rate = CpuRate::default();
        for step in 0..=30 {
            // Scrapes about a second apart, as the sampler takes them.
            let t = f64::from(step) * 1.001;
            let pct = rate.push(t, counter(t));
            match t {
                t if t < CPU_MIN_SPAN_SECS => assert_eq!(pct, None, "at {t}"),
                t if t < CPU_WINDOW_SECS => {
                    let pct = pct.expect("a rate");
                    assert!((pct - 35.0).abs() <= 20.0, "{pct} at {t}");
                }
                t => {
                    let pct = pct.expect("a rate");
                    assert!((pct - 35.0).abs() <= 10.0, "{pct} at {t}");
                }
            }
        }
        // A restart (the counter went down) starts over.
        assert_eq!(rate.push(31.0, 0.0), None);
        assert_eq!(rate.push(f64::NAN, 1.0), None);
        let mut fine = CpuRate::default();
        let last = (0..=12).fold(None, |_, s| fine.push(f64::from(s), 0.5 * f64::from(s)));
        assert!(
            last.is_some_and(|pct| (pct - 50.0).abs() < 1e-9),
            "{last:?}"
        );
    }

    /// One source of truth: the names and format read here are the ones the mixer renders.
    #[test]
    fn the_mixers_own_rendering_parses() {
        let metrics = mixer::server::metrics::Metrics::with_node("node-a");
        let before = MixerMetrics::parse(&metrics.render()).expect("parses");
        for seconds in [0.0002, 0.0002, 0.0003, 0.004] {
            metrics.tick_duration_seconds.observe(seconds);
        }
        metrics.participants.with_label_values(&["talk"]).set(2);
        metrics.participants.with_label_values(&["listen"]).set(5);
        let after = MixerMetrics::parse(&metrics.render()).expect("parses");
        assert_eq!(after.participants, Some(7.0));
        let tick = after.tick.as_ref().expect("the tick histogram");
        assert_eq!(tick.count, 4.0);
        assert_eq!(tick.buckets.last(), Some(&(f64::INFINITY, 4.0)));
        let sample = after.compare(Some(&before), "t");
        // Two of four ticks in (0.1, 0.25] ms: the median is that bucket's top; the slowest in
        // (2.5, 5] ms.
        let p50 = sample.tick_p50_ms.expect("ticks");
        assert!(p50 > 0.1 && p50 <= 0.25, "{sample:?}");
        let p99 = sample.tick_p99_ms.expect("ticks");
        assert!(p99 > 2.5 && p99 <= 5.0, "{sample:?}");
        if cfg!(target_os = "linux") {
            assert!(after.cpu_seconds.is_some());
        }
    }
}
