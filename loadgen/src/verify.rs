//! Verification of what sampled receivers heard, after the run: decode their packets, then
//! check who is heard, that their own voice and other rooms are not, clipping, and the
//! mouth-to-ear delay of every tone onset.
//!
//! The server pauses a receiver's frames while its mix is silent (downlink DTX). Decoding puts
//! digital silence on the timeline for each pause (a sequence gap ending in a marked frame, the
//! time before a marked first frame, and the time after a last frame without voice activity),
//! and Opus concealment for every other gap (loss), so the timeline stays true either way. Pauses
//! count as covered in the receive-rate check; a pause while an expected talker's tone sounded
//! is a failure of its own.
//!
//! A receiver that reconnected mid-run (a fleet moved its room, or its node went away) has one
//! stream per connection, each with its own sequence numbers, timestamps and encoder. They are
//! decoded one by one, with silence between them for the outage (the last frame before the break
//! to the rejoin), which is reported as the reconnection's gap and left out of the receive-rate
//! check rather than counted as loss. What is heard is then checked on each connection on its
//! own (each that lasted [`MIN_CONNECTION_SECS`] of the window): every talker heard on it, no
//! own voice, no other room. So a receiver that came back to the wrong room, to a stream
//! without a talker, or to silence fails, however right its first connection was, while the gap
//! itself fails nothing: its length is a measurement, for the report and its reader to judge.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use mixer_protocol::{FRAME_SAMPLES, SAMPLE_RATE};
use serde::{Deserialize, Serialize};

use crate::client::ClientOutcome;
use crate::signal::{
    LEAK_SEPARATION_HZ, LEVEL_BLOCK, MIN_SEPARATION_HZ, Source, TONE_AMPLITUDE, TONE_ON_SECS, db,
    hann, onsets, peak_level,
};

/// One frame period in seconds.
const FRAME_SECS: f64 = 0.02;

/// The longest pause put on the timeline as silence: 10 minutes of frames. Longer pauses are
/// cut to this; the audio simply resumes.
pub const MAX_PAUSE_FILL: usize = 30_000;

/// Longest unmarked gap (loss) concealed: 1 s. Longer ones are loss already reported, and the
/// audio simply resumes.
const MAX_CONCEAL: usize = 50;

/// The mouth-to-ear delay a pause is allowed to hide: a pause is only held against a talker
/// where it outlasts the talker's audio by this much (the server delays the mix by its jitter
/// buffer; more under load).
const PAUSE_DELAY_SLACK: f64 = 0.5;

/// Seconds of a talker's tone a pause may cover before it counts as a failure (a tone's ramps
/// and the start of a spurt are fuzzy edges).
const PAUSE_TOLERANCE: f64 = 0.2;

/// The shortest stretch of a connection, within the window, whose audio is checked on its own:
/// shorter ones (a connection that broke again at once, or a rejoin just before the end) hold
/// too little of each talker's one-second tone period to judge.
pub const MIN_CONNECTION_SECS: f64 = 1.0;

/// After a (re)join, onsets are not timed for this long: audio coming back mid-tone after an
/// outage looks like an onset to the detector but is not one.
const REJOIN_SETTLE_SECS: f64 = 1.0;

/// Frames at the start of each connection after the first that no check reads. A fresh decoder
/// that picks up a stream already under way (a session resumed on the same node, whose encoder
/// went on) overshoots on its first packet: a two-tone mix peaking at 0.4 decodes to 0.93 there.
/// That is the decoder catching up, not the server's audio.
const DECODER_SETTLE_FRAMES: usize = 3;

/// Thresholds and the run's layout, as verification needs them.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// Ignored time after a room's last join, seconds.
    pub warmup: f64,
    /// End of the run, seconds since the epoch.
    pub end: f64,
    /// Heard threshold, dBFS.
    pub heard_db: f64,
    /// Isolation, dB.
    pub isolation_db: f64,
    /// Tones are in use (not a WAV file).
    pub tones: bool,
    /// Rooms in the run.
    pub rooms: usize,
}

/// The verdict on one verified receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiverVerdict {
    /// Room index.
    pub room: usize,
    /// Index within the room.
    pub slot: usize,
    /// Whether it talked or only listened.
    pub role: ReceiverRole,
    /// Whether every check passed.
    pub passed: bool,
    /// Human-readable failures.
    pub problems: Vec<String>,
    /// Level of each expected talker: (slot, Hz, dBFS), once per connection checked.
    pub heard: Vec<(usize, f32, f64)>,
    /// Level of its own tone, dBFS (talkers), the loudest over its connections.
    pub own_db: Option<f64>,
    /// Loudest tone of another room, dBFS.
    pub worst_leak_db: Option<f64>,
    /// Samples beyond full scale in the window (they would clip when converted to 16-bit PCM).
    pub clipped_samples: usize,
    /// Seconds of audio checked.
    pub window_secs: f64,
    /// Connections whose audio was checked, each on its own: 1, or more after reconnections
    /// (only those with [`MIN_CONNECTION_SECS`] in the window).
    pub connections: usize,
    /// Mouth-to-ear delays measured at this receiver: (when the onset left the talker's mouth,
    /// seconds since the epoch; the delay, ms). The time places each delay on the report's
    /// timeline ([`crate::timeline::delay_series`]).
    #[serde(skip)]
    pub delays: Vec<(f64, f64)>,
}

/// What a verified receiver was in its room. Serialized as `talker` or `listener`, the
/// strings reports have always carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverRole {
    /// It talked (and so must not hear itself).
    Talker,
    /// It joined in listen mode.
    Listener,
}

impl ReceiverRole {
    /// Its name in reports and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverRole::Talker => "talker",
            ReceiverRole::Listener => "listener",
        }
    }
}

impl std::fmt::Display for ReceiverRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One talker as verification sees it: slot, tone, source and what it did.
pub type TalkerEntry<'a> = (usize, Option<f32>, Arc<Source>, &'a ClientOutcome);

/// Everything verification needs to know about the talkers.
pub struct Talkers<'a> {
    /// Per room, its talkers.
    pub rooms: Vec<Vec<TalkerEntry<'a>>>,
}

/// What one 20 ms frame of a decoded [`Timeline`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Decoded from a frame the server sent.
    Received,
    /// Digital silence for a frame the server paused (its mix was silent).
    Paused,
    /// Opus concealment for a frame lost (a gap ending in an unmarked frame).
    Concealed,
    /// Digital silence while the client was out of its room, between two connections.
    Outage,
}

/// A receiver's stream as heard: 20 ms frames of PCM, each with its arrival (synthetic, 20 ms
/// apart, for paused and concealed frames) and what it is.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Samples, [`FRAME_SAMPLES`] per frame.
    pub pcm: Vec<f32>,
    /// Arrival of each frame, seconds since the epoch.
    pub arrivals: Vec<f64>,
    /// What each frame is.
    pub kinds: Vec<FrameKind>,
    /// Each pause in silence as (last arrival before it, first arrival after it), or from the
    /// join, or to the end of the run.
    pub pauses: Vec<(f64, f64)>,
    /// Each outage between two connections as (last arrival before the break, or the break;
    /// the rejoin, or the end of the run).
    pub outages: Vec<(f64, f64)>,
    /// The frames of each connection, in order (outages fall between them).
    pub segments: Vec<Range<usize>>,
}

impl Timeline {
    fn push(&mut self, samples: &[f32], arrival: f64, kind: FrameKind) {
        self.pcm
            .extend_from_slice(&samples[..samples.len().min(FRAME_SAMPLES)]);
        self.pcm
            .resize(self.arrivals.len() * FRAME_SAMPLES + FRAME_SAMPLES, 0.0);
        self.arrivals.push(arrival);
        self.kinds.push(kind);
    }

    /// Adds `frames` (at most [`MAX_PAUSE_FILL`]) frames of silence, 20 ms apart, ending 20 ms
    /// before `until` and never before `after`.
    fn pause(&mut self, after: f64, until: f64, frames: usize) {
        for k in (1..=frames.min(MAX_PAUSE_FILL)).rev() {
            let arrival = (until - FRAME_SECS * k as f64).max(after);
            self.push(&[], arrival, FrameKind::Paused);
        }
        self.pauses.push((after, until));
    }

    /// Adds silence for an outage from `after` to `until`: frames 20 ms apart from `after`
    /// (at most [`MAX_PAUSE_FILL`]), so the timeline stays true in time.
    fn outage(&mut self, after: f64, until: f64) {
        let frames = ((until - after) / FRAME_SECS).max(0.0) as usize;
        for k in 1..=frames.min(MAX_PAUSE_FILL) {
            self.push(&[], after + FRAME_SECS * k as f64, FrameKind::Outage);
        }
        self.outages.push((after, until));
    }

    /// Frames in `from..=to` the server sent or paused: concealed frames and outages do not
    /// count.
    pub fn covered(&self, from: f64, to: f64) -> usize {
        self.arrivals
            .iter()
            .zip(&self.kinds)
            .filter(|(a, k)| {
                **a >= from && **a <= to && matches!(**k, FrameKind::Received | FrameKind::Paused)
            })
            .count()
    }
}

/// A PCM client's frames brought to 48 kHz, one at a time, continuing each from the last.
#[derive(Debug, Default)]
struct PcmFrames {
    /// The previous frame's last sample.
    last: f32,
}

impl PcmFrames {
    /// Writes the 960 samples at 48 kHz of one 20 ms frame of 16-bit little-endian samples at
    /// `rate` into `out`; `None` for a payload that is not 20 ms at that rate.
    fn frame(&mut self, payload: &[u8], rate: u32, out: &mut [f32]) -> Option<usize> {
        let samples = (rate / 50) as usize;
        if payload.len() != 2 * samples || samples == 0 || out.len() < FRAME_SAMPLES {
            return None;
        }
        let input: Vec<f32> = payload
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        // Output sample n sits at input position (n + 1)·samples/960 − 1, so the frame's last
        // output is its last input and its first leans on the previous frame's last.
        for (n, slot) in out[..FRAME_SAMPLES].iter_mut().enumerate() {
            let at = (n + 1) as f64 * samples as f64 / FRAME_SAMPLES as f64 - 1.0;
            let below = at.floor();
            let frac = (at - below) as f32;
            let sample = |i: f64| {
                if i < 0.0 {
                    self.last
                } else {
                    input[(i as usize).min(samples - 1)]
                }
            };
            let (a, b) = (sample(below), sample(below + 1.0));
            *slot = a + (b - a) * frac;
        }
        self.last = input[samples - 1];
        Some(FRAME_SAMPLES)
    }
}

/// Decodes a receiver's recording into a [`Timeline`] up to `end` (seconds since the epoch):
/// silence for pauses, concealment for loss, and each connection on its own (see
/// [`Timeline::segments`]) with silence for the outage between them.
pub fn decode(out: &ClientOutcome, end: f64, problems: &mut Vec<String>) -> Timeline {
    let mut timeline = Timeline {
        pcm: Vec::with_capacity(out.recording.len() * FRAME_SAMPLES),
        arrivals: Vec::with_capacity(out.recording.len()),
        ..Timeline::default()
    };
    let mut buf = vec![0.0f32; FRAME_SAMPLES * 6];
    let mut bad = 0usize;
    let segments = out.segments();
    for (k, segment) in segments.iter().enumerate() {
        if k > 0
            && let Some((from, to)) = out.reconnections[k - 1].outage(end)
        {
            timeline.outage(from, to);
        }
        // A decoder per connection: a new node's stream is a new encoder's, and its first
        // packet must not be decoded as a continuation of the old stream.
        let Ok(mut decoder) = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) else {
            problems.push("cannot create an Opus decoder".into());
            return timeline;
        };
        let start = timeline.arrivals.len();
        let mut pcm = PcmFrames::default();
        // Sequence, arrival and voice activity of the last frame in order, on this connection:
        // a new node's sequence numbers and timestamps start afresh, so they are compared only
        // within a connection.
        let mut last: Option<(u16, f64, bool)> = None;
        for packet in &out.recording[segment.packets.clone()] {
            match last {
                None => {
                    // The first frame is marked: the mix was silent from the join until it came.
                    if packet.marker {
                        let joined = segment.joined_at;
                        let frames = ((packet.arrival - joined) / FRAME_SECS).max(0.0) as usize;
                        if frames > 0 {
                            timeline.pause(joined, packet.arrival, frames);
                        }
                    }
                }
                Some((sequence, arrival, _)) => {
                    let ahead = packet.sequence.wrapping_sub(sequence);
                    // As in `SeqTracker`: only a marked frame (which resumes a pause) can be more
                    // than half the sequence space ahead; anything else there is behind.
                    if ahead == 0 || (ahead >= 0x8000 && !packet.marker) {
                        continue;
                    }
                    let gap = usize::from(ahead - 1);
                    if packet.marker {
                        if gap > 0 {
                            timeline.pause(arrival, packet.arrival, gap);
                        }
                    } else {
                        // Conceal short losses so the timeline stays true (PCM: silence).
                        for k in 1..=gap.min(MAX_CONCEAL) {
                            let n = match out.pcm_rate {
                                None => decoder.decode_float(&[], &mut buf, false).unwrap_or(0),
                                Some(_) => {
                                    buf[..FRAME_SAMPLES].fill(0.0);
                                    FRAME_SAMPLES
                                }
                            };
                            let at = (arrival + FRAME_SECS * k as f64).min(packet.arrival);
                            timeline.push(&buf[..n], at, FrameKind::Concealed);
                        }
                    }
                }
            }
            last = Some((packet.sequence, packet.arrival, packet.voice_activity));
            let decoded = match out.pcm_rate {
                None => decoder.decode_float(&packet.payload, &mut buf, false).ok(),
                Some(rate) => pcm.frame(&packet.payload, rate, &mut buf),
            };
            match decoded {
                Some(n) => timeline.push(&buf[..n], packet.arrival, FrameKind::Received),
                None => {
                    bad += 1;
                    timeline.push(&[], packet.arrival, FrameKind::Received);
                }
            }
        }
        // Frames before a pause are encoded silence: a stream whose last frame had no voice
        // activity was paused from then on, not cut off (unless its connection ended). A
        // connection after a rejoin that got no frame at all was paused throughout (the first
        // connection's case is judged before decoding).
        if segment.broke_at.is_none() && out.disconnect.is_none() {
            match last {
                Some((_, arrival, false)) if arrival < end => {
                    let frames = ((end - arrival) / FRAME_SECS) as usize;
                    for k in 1..=frames.min(MAX_PAUSE_FILL) {
                        timeline.push(&[], arrival + FRAME_SECS * k as f64, FrameKind::Paused);
                    }
                    timeline.pauses.push((arrival, end));
                }
                None if k > 0 && segment.joined_at < end => {
                    let frames = ((end - segment.joined_at) / FRAME_SECS) as usize;
                    timeline.pause(segment.joined_at, end, frames);
                }
                _ => {}
            }
        }
        timeline.segments.push(start..timeline.arrivals.len());
    }
    // The run ended while the client was rejoining: out of its room until the end.
    if let Some(r) = out.reconnections.last()
        && r.rejoined_at.is_none()
        && let Some((from, to)) = r.outage(end)
    {
        timeline.outage(from, to);
    }
    if bad > 0 {
        problems.push(format!(
            "{bad} packets from the server could not be decoded"
        ));
    }
    timeline
}

/// When a talker's tone sounded, in mouth time: from each onset for [`TONE_ON_SECS`], cut at the
/// end of the spurt it starts.
fn audible(talker: &ClientOutcome) -> Vec<(f64, f64)> {
    talker
        .onsets
        .iter()
        .filter_map(|&m| {
            let spurt = talker
                .talking
                .iter()
                .find(|(a, b)| *a <= m + 1e-6 && m < *b)?;
            Some((m, (m + TONE_ON_SECS).min(spurt.1)))
        })
        .collect()
}

fn overlap(intervals: &[(f64, f64)], from: f64, to: f64) -> f64 {
    intervals
        .iter()
        .map(|(a, b)| (b.min(to) - a.max(from)).max(0.0))
        .sum()
}

/// Verifies one receiver. `room_ready` is when its room's last member joined.
pub fn verify_receiver(
    receiver: &ClientOutcome,
    room_ready: f64,
    talkers: &Talkers<'_>,
    settings: &VerifySettings,
) -> ReceiverVerdict {
    let role = if receiver.talker {
        ReceiverRole::Talker
    } else {
        ReceiverRole::Listener
    };
    let mut verdict = ReceiverVerdict {
        room: receiver.room,
        slot: receiver.slot,
        role,
        passed: false,
        problems: Vec::new(),
        heard: Vec::new(),
        own_db: None,
        worst_leak_db: None,
        clipped_samples: 0,
        window_secs: 0.0,
        connections: 0,
        delays: Vec::new(),
    };
    let who = format!(
        "room {}, receiver {} ({role})",
        receiver.room, receiver.slot
    );
    let mut problems = Vec::new();
    check(
        receiver,
        room_ready,
        talkers,
        settings,
        &mut verdict,
        &mut problems,
    );
    verdict.problems = problems
        .into_iter()
        .map(|p| format!("{who}: {p}"))
        .collect();
    verdict.passed = verdict.problems.is_empty();
    verdict
}

fn check(
    receiver: &ClientOutcome,
    room_ready: f64,
    talkers: &Talkers<'_>,
    settings: &VerifySettings,
    verdict: &mut ReceiverVerdict,
    problems: &mut Vec<String>,
) {
    if let Some(failure) = &receiver.failure {
        problems.push(format!("never joined: {failure}"));
        return;
    }
    let from = room_ready + settings.warmup;
    let to = settings.end - 0.05;
    let room = &talkers.rooms[receiver.room];
    let expected: Vec<_> = room.iter().filter(|t| t.0 != receiver.slot).collect();
    if receiver.recording.is_empty() && receiver.disconnect.is_none() {
        // The server sends nothing while a mix is silent: right if nobody it should hear talked.
        verdict.window_secs = (to - from).max(0.0);
        for (slot, freq, _, outcome) in &expected {
            let talked = overlap(&outcome.talking, from - 0.1, to - 0.3);
            if talked >= 0.5 {
                let tone = freq.map_or(String::new(), |f| format!(" ({f:.0} Hz)"));
                problems.push(format!(
                    "received no audio at all, though talker {slot}{tone} talked for {talked:.1} s \
                     of the window"
                ));
            }
        }
        return;
    }
    let timeline = decode(receiver, settings.end, problems);
    let arrivals = &timeline.arrivals;
    let first = arrivals.partition_point(|a| *a < from);
    let last = arrivals.partition_point(|a| *a <= to);
    let in_window = timeline.kinds[first.min(last)..last]
        .iter()
        .filter(|k| **k != FrameKind::Outage)
        .count();
    if in_window <= 50 {
        let got = in_window * 20;
        problems.push(format!(
            "only {got} ms of audio received after the warm-up (need more than 1 s; \
             lengthen --duration or check the receive rate)"
        ));
        return;
    }
    // Count only frames the server sent or paused (not concealment) against 50 per second of
    // the time the client was in its room: an outage between connections is the reconnection's
    // gap, reported as such, not loss.
    let connected = (to - from) - overlap(&timeline.outages, from, to);
    let rate = timeline.covered(from, to) as f64 / connected.max(FRAME_SECS);
    if rate < 0.9 * 50.0 {
        problems.push(format!(
            "received {rate:.1} frames/s after the warm-up (expected 50/s, frames paused in \
             silence included): audio is choppy"
        ));
    }
    // A pause is silence: the server must not pause while a talker's tone sounds. Skipped for
    // talkers whose packets the impairment dropped (the server may rightly fall silent over a
    // long burst of loss).
    for (slot, freq, _, outcome) in &expected {
        let Some(freq) = freq else { continue };
        if !settings.tones || outcome.impaired_drops > 0 {
            continue;
        }
        let sounding = audible(outcome);
        let during: f64 = timeline
            .pauses
            .iter()
            .map(|&(p, q)| overlap(&sounding, p.max(from), (q - PAUSE_DELAY_SLACK).min(to)))
            .sum();
        if during > PAUSE_TOLERANCE {
            problems.push(format!(
                "no frames for {during:.1} s (paused as silence) while talker {slot} \
                 ({freq:.0} Hz) was sounding"
            ));
        }
    }
    // Each connection's frames in the window, but for a later connection's first few (see
    // `DECODER_SETTLE_FRAMES`).
    let settled: Vec<Range<usize>> = timeline
        .segments
        .iter()
        .enumerate()
        .map(|(k, segment)| {
            let skip = if k > 0 { DECODER_SETTLE_FRAMES } else { 0 };
            (segment.start + skip).max(first)..segment.end.min(last)
        })
        .collect();
    verdict.window_secs = (last - first) as f64 * FRAME_SECS;
    verdict.clipped_samples = settled
        .iter()
        .filter(|frames| !frames.is_empty())
        .flat_map(|frames| &timeline.pcm[frames.start * FRAME_SAMPLES..frames.end * FRAME_SAMPLES])
        .filter(|x| x.abs() > 1.0)
        .count();
    if verdict.clipped_samples > 0 {
        problems.push(format!(
            "{} samples clipped (|x| > 1.0, beyond full scale)",
            verdict.clipped_samples
        ));
    }
    // What is heard, connection by connection: each stretch of the window on one connection
    // long enough to judge.
    let stretches: Vec<(usize, Range<usize>)> = settled
        .into_iter()
        .enumerate()
        .filter(|(_, frames)| frames.len() as f64 * FRAME_SECS >= MIN_CONNECTION_SECS)
        .collect();
    if stretches.is_empty() {
        problems.push(format!(
            "no connection lasted {MIN_CONNECTION_SECS} s of the window after the warm-up: \
             its audio cannot be checked"
        ));
        return;
    }
    let several = timeline.segments.len() > 1;
    let segments = receiver.segments();
    for (k, frames) in stretches {
        let span = Stretch {
            // The window's own edges where a stretch reaches them, so a receiver that never
            // reconnected is judged exactly over the window.
            from: if frames.start == first {
                from
            } else {
                arrivals[frames.start]
            },
            to: if frames.end == last {
                to
            } else {
                arrivals[frames.end - 1]
            },
            // Onsets right after a rejoin are audio coming back, not tones starting.
            settle_until: (k > 0).then(|| segments[k].joined_at + REJOIN_SETTLE_SECS),
            frames,
        };
        let mut found = Vec::new();
        check_connection(
            receiver, &timeline, &span, talkers, settings, verdict, &mut found,
        );
        verdict.connections += 1;
        problems.extend(found.into_iter().map(|p| {
            if several {
                format!(
                    "on connection {} of {}: {p}",
                    k + 1,
                    timeline.segments.len()
                )
            } else {
                p
            }
        }));
    }
}

/// A stretch of the window on one connection.
struct Stretch {
    /// Its frames in the timeline.
    frames: Range<usize>,
    /// Its start, seconds since the epoch.
    from: f64,
    /// Its end.
    to: f64,
    /// No onset is timed before this (a connection after a rejoin).
    settle_until: Option<f64>,
}

/// Checks what `receiver` heard over one stretch of one connection: every expected talker
/// heard, own voice and other rooms not, and the delay of each onset.
fn check_connection(
    receiver: &ClientOutcome,
    timeline: &Timeline,
    stretch: &Stretch,
    talkers: &Talkers<'_>,
    settings: &VerifySettings,
    verdict: &mut ReceiverVerdict,
    problems: &mut Vec<String>,
) {
    let (from, to) = (stretch.from, stretch.to);
    let room = &talkers.rooms[receiver.room];
    let expected: Vec<_> = room.iter().filter(|t| t.0 != receiver.slot).collect();
    let window =
        &timeline.pcm[stretch.frames.start * FRAME_SAMPLES..stretch.frames.end * FRAME_SAMPLES];
    if !settings.tones {
        if expected.is_empty() {
            return;
        }
        let rms = (window.iter().map(|x| x * x).sum::<f32>() / window.len() as f32).sqrt();
        let level = db(rms * std::f32::consts::SQRT_2);
        if level < settings.heard_db {
            problems.push(format!(
                "no audio heard: level {level:.0} dBFS (need >= {:.0} dBFS)",
                settings.heard_db
            ));
        }
        return;
    }
    let block = hann(LEVEL_BLOCK);
    let mut weakest: Option<f64> = None;
    let mut heard = Vec::new();
    for (slot, freq, source, outcome) in &expected {
        let Some(freq) = *freq else { continue };
        // Judge a talker only if it talked for at least 0.5 s of the stretch (spurts mode, or
        // a talker that was itself out of the room).
        if overlap(&outcome.talking, from - 0.1, to - 0.3) < 0.5 {
            continue;
        }
        let amplitude = peak_level(window, &block, freq);
        let level = db(amplitude);
        verdict.heard.push((*slot, freq, level));
        if level < settings.heard_db {
            problems.push(format!(
                "talker {slot} ({freq:.0} Hz) not heard: {level:.0} dBFS (need >= {:.0} dBFS)",
                settings.heard_db
            ));
        } else {
            weakest = Some(weakest.map_or(level, |w: f64| w.min(level)));
            heard.push((freq, amplitude, source.clone(), *outcome));
        }
    }
    let reference = weakest.unwrap_or(db(TONE_AMPLITUDE));
    let limit = reference - settings.isolation_db;
    let mut present: Vec<f32> = expected.iter().filter_map(|t| t.1).collect();
    if receiver.talker
        && let Some((_, Some(own), _, _)) = room.iter().find(|t| t.0 == receiver.slot)
    {
        let separated = present.iter().all(|f| (f - own).abs() >= MIN_SEPARATION_HZ);
        if separated {
            let level = db(peak_level(window, &block, *own));
            verdict.own_db = Some(verdict.own_db.map_or(level, |w| w.max(level)));
            if level > limit {
                problems.push(format!(
                    "own tone {own:.0} Hz heard at {level:.0} dB (must be {:.0} dB below the \
                     weakest other talker, {reference:.0} dB)",
                    settings.isolation_db
                ));
            }
        }
        present.push(*own);
    }
    // Leak check: the (up to) three other rooms whose tones are farthest from every tone this
    // receiver expects, so a broken or choppy stream's splatter is not mistaken for a leak.
    let distance = |f: f32| {
        present
            .iter()
            .map(|p| (p - f).abs())
            .fold(f32::INFINITY, f32::min)
    };
    let mut candidates: Vec<(f32, usize)> = (0..settings.rooms)
        .filter(|&r| r != receiver.room)
        .filter_map(|r| {
            let nearest = talkers.rooms[r]
                .iter()
                .filter_map(|t| t.1)
                .map(distance)
                .fold(f32::INFINITY, f32::min);
            (nearest.is_finite() && nearest >= LEAK_SEPARATION_HZ).then_some((nearest, r))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, other) in candidates.iter().take(3) {
        for (slot, freq, _, _) in &talkers.rooms[other] {
            let Some(freq) = *freq else { continue };
            let level = db(peak_level(window, &block, freq));
            verdict.worst_leak_db = Some(verdict.worst_leak_db.map_or(level, |w| w.max(level)));
            if level > limit {
                problems.push(format!(
                    "room {other} talker {slot} ({freq:.0} Hz) leaks in at {level:.0} dB (must \
                     be {:.0} dB below the weakest talker of this room, {reference:.0} dB)",
                    settings.isolation_db
                ));
            }
        }
    }
    let arrivals = &timeline.arrivals;
    let offset = (stretch.frames.start * FRAME_SAMPLES) as f64;
    for (freq, amplitude, source, outcome) in heard {
        // A talker's own rejoins bring its tone back mid-period, too.
        let rejoins: Vec<f64> = outcome
            .reconnections
            .iter()
            .filter_map(|r| r.rejoined_at)
            .collect();
        for position in onsets(window, freq, amplitude) {
            let at = offset + position - source.onset_bias;
            if at < 0.0 {
                continue;
            }
            let frame = (at / FRAME_SAMPLES as f64) as usize;
            let Some(arrival) = arrivals.get(frame) else {
                continue;
            };
            let ear = arrival + (at - (frame * FRAME_SAMPLES) as f64) / f64::from(SAMPLE_RATE);
            let settling = stretch.settle_until.is_some_and(|until| ear < until)
                || rejoins
                    .iter()
                    .any(|r| (*r..*r + REJOIN_SETTLE_SECS).contains(&ear));
            if settling {
                continue;
            }
            let index = outcome.onsets.partition_point(|m| *m <= ear);
            if index == 0 {
                continue;
            }
            let mouth = outcome.onsets[index - 1];
            let delay = ear - mouth;
            // Onsets come every second at most; a match further back is ambiguous.
            if delay < 0.9 {
                verdict.delays.push((mouth, delay * 1000.0));
            }
        }
    }
}

/// When each room's last member joined, seconds since the epoch.
pub fn room_ready_times(outcomes: &[ClientOutcome]) -> HashMap<usize, f64> {
    let mut ready = HashMap::new();
    for o in outcomes {
        if let Some(at) = o.joined_at {
            let entry = ready.entry(o.room).or_insert(at);
            *entry = f64::max(*entry, at);
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Recorded;
    use crate::signal::{PERIOD_FRAMES, tone_source};
    use crate::stats::SeqTracker;

    /// Join time of everyone, seconds since the epoch.
    const T0: f64 = 0.5;
    /// Network delay from the talker through the server to the receiver.
    const NET: f64 = 0.04;
    /// End of the run.
    const END: f64 = 9.0;
    /// Frames of the run: frame k leaves the talker's mouth at `mouth(k)`.
    const FRAMES: usize = 420;
    /// Room clock at frame 0: the sequence wraps at frame 236.
    const SEQ0: u16 = 65_300;
    const FREQ: f32 = 700.0;

    fn mouth(k: usize) -> f64 {
        T0 + FRAME_SECS * k as f64
    }

    /// What the (simulated) server does with a room of one talker and one listener.
    struct Stream {
        /// Frame ranges the talker talks.
        spurts: Vec<(usize, usize)>,
        /// Pause the listener's frames while its mix is silent (else send silence).
        dtx: bool,
        /// Frames dropped, and whether the frame after them is marked (a pause, wrongly here).
        drop: Option<(usize, usize, bool)>,
    }

    fn spurt_position(spurts: &[(usize, usize)], k: usize) -> Option<usize> {
        spurts
            .iter()
            .find(|(a, b)| (*a..*b).contains(&k))
            .map(|(a, _)| (k - a) % PERIOD_FRAMES)
    }

    fn talker(spurts: &[(usize, usize)]) -> ClientOutcome {
        ClientOutcome {
            slot: 0,
            talker: true,
            joined_at: Some(T0),
            talking: spurts.iter().map(|&(a, b)| (mouth(a), mouth(b))).collect(),
            onsets: (0..FRAMES)
                .filter(|&k| spurt_position(spurts, k) == Some(0))
                .map(mouth)
                .collect(),
            ..ClientOutcome::default()
        }
    }

    /// The listener's recording: the talker's packets forwarded as the mix, a frame arriving
    /// 20 ms (its length) plus `NET` after its audio left the mouth. With DTX, the 300 ms of
    /// silence closing each tone period is sent for 3 frames and then paused, as the mixer does.
    fn listener(source: &Source, stream: &Stream) -> ClientOutcome {
        let mut recording = Vec::new();
        let mut marked_gap: Option<bool> = Some(true);
        for k in 0..FRAMES {
            let position = spurt_position(&stream.spurts, k);
            let dropped = stream
                .drop
                .filter(|(a, b, _)| (*a..*b).contains(&k))
                .map(|d| d.2);
            let paused = match position {
                Some(p) => stream.dtx && p >= 38,
                None => stream.dtx,
            };
            if let Some(marked) = dropped {
                marked_gap = Some(marked_gap.unwrap_or(true) && marked);
                continue;
            }
            if paused {
                marked_gap = Some(marked_gap.unwrap_or(true));
                continue;
            }
            let p = position.unwrap_or(45); // silence between spurts
            recording.push(Recorded {
                arrival: mouth(k) + FRAME_SECS + NET,
                sequence: SEQ0.wrapping_add(k as u16),
                marker: marked_gap.take().unwrap_or(false),
                voice_activity: source.levels[p].voice_activity(),
                payload: source.packets[p].clone(),
            });
        }
        ClientOutcome {
            slot: 1,
            joined_at: Some(T0),
            recording,
            ..ClientOutcome::default()
        }
    }

    fn settings() -> VerifySettings {
        VerifySettings {
            warmup: 1.0,
            end: END,
            heard_db: -30.0,
            isolation_db: 40.0,
            tones: true,
            rooms: 1,
        }
    }

    fn verify(
        source: &Arc<Source>,
        talker: &ClientOutcome,
        receiver: &ClientOutcome,
    ) -> ReceiverVerdict {
        let talkers = Talkers {
            rooms: vec![vec![(0, Some(FREQ), source.clone(), talker)]],
        };
        verify_receiver(receiver, T0, &talkers, &settings())
    }

    fn sequence_counts(receiver: &ClientOutcome) -> SeqTracker {
        let mut seq = SeqTracker::default();
        for p in &receiver.recording {
            seq.record(p.sequence, p.marker);
        }
        seq
    }

    #[test]
    fn pcm_frames_come_back_to_48_khz_with_their_tone_and_level() {
        use crate::signal::{hann, peak_level, resample_linear, to_pcm16, tone_period};
        // A second of the 1 kHz tone period as a PCM client at each rate sends it, read back
        // frame by frame: the tone is where it was, at its level (within 1 dB).
        for rate in mixer_protocol::PCM_RATES {
            let period = tone_period(1000.0);
            let sent = resample_linear(&period, SAMPLE_RATE, rate);
            let mut frames = PcmFrames::default();
            let mut back = Vec::new();
            let mut buf = vec![0.0f32; FRAME_SAMPLES];
            for chunk in sent.chunks_exact((rate / 50) as usize) {
                let n = frames
                    .frame(&to_pcm16(chunk), rate, &mut buf)
                    .expect("20 ms");
                back.extend_from_slice(&buf[..n]);
            }
            assert_eq!(back.len(), period.len(), "{rate} Hz");
            let block = hann(crate::signal::LEVEL_BLOCK);
            let want = db(peak_level(&period, &block, 1000.0));
            let got = db(peak_level(&back, &block, 1000.0));
            assert!(
                (got - want).abs() < 1.0,
                "{rate} Hz: {got:.1} dB, sent {want:.1} dB"
            );
            assert!(
                db(peak_level(&back, &block, 1460.0)) < want - 40.0,
                "{rate} Hz"
            );
        }
        // Not 20 ms at the rate: refused, not misread.
        let mut buf = vec![0.0f32; FRAME_SAMPLES];
        assert_eq!(
            PcmFrames::default().frame(&[0; 100], 16_000, &mut buf),
            None
        );
    }

    #[test]
    fn a_stream_pausing_in_silence_passes_with_its_timeline_true() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        let spurts = vec![(0, 150), (250, 400)];
        let talker = talker(&spurts);
        let receiver = listener(
            &source,
            &Stream {
                spurts,
                dtx: true,
                drop: None,
            },
        );
        let seq = sequence_counts(&receiver);
        assert_eq!(seq.lost, 0);
        // 12 of every period's 50 frames, the 100 between the spurts; the rest after the last
        // frame (frame 387) is a trailing pause the sequence numbers cannot show.
        assert_eq!(seq.paused, 12 * 5 + 100, "{seq:?}");

        let timeline = decode(&receiver, END, &mut Vec::new());
        // The first frame took 60 ms from the join: about three frames of leading silence.
        let lead = timeline
            .kinds
            .iter()
            .take_while(|k| **k == FrameKind::Paused)
            .count();
        assert!((2..=3).contains(&lead), "{lead}");
        // Frame k of the room clock is at index lead + k of the timeline, received or paused.
        for p in &receiver.recording {
            let k = usize::from(p.sequence.wrapping_sub(SEQ0));
            assert_eq!(timeline.arrivals[lead + k], p.arrival, "frame {k}");
            assert_eq!(timeline.kinds[lead + k], FrameKind::Received, "frame {k}");
        }
        for k in 150..250 {
            let at = lead + k;
            assert_eq!(timeline.kinds[at], FrameKind::Paused, "frame {k}");
            assert!((timeline.arrivals[at] - (mouth(k) + FRAME_SECS + NET)).abs() < 1e-9);
            let samples = &timeline.pcm[at * FRAME_SAMPLES..(at + 1) * FRAME_SAMPLES];
            assert!(
                samples.iter().all(|x| *x == 0.0),
                "frame {k} is digital silence"
            );
        }
        // The trailing pause runs from the last frame (silence, no voice activity) to the end.
        let last = receiver.recording.last().expect("frames");
        assert!(!last.voice_activity);
        assert_eq!(timeline.pauses.last(), Some(&(last.arrival, END)));
        assert!(*timeline.arrivals.last().expect("frames") <= END);
        assert!(timeline.kinds.iter().all(|k| *k != FrameKind::Concealed));
        let (from, to) = (T0 + 1.0, END - 0.05);
        let expected = (to - from) / FRAME_SECS;
        assert!((timeline.covered(from, to) as f64 - expected).abs() <= 1.0);

        let verdict = verify(&source, &talker, &receiver);
        assert!(verdict.passed, "{:?}", verdict.problems);
        // Onsets at 2.5 s, then 5.5, 6.5 and 7.5 s after the pause (the one at 1.5 s is too
        // close to the window's start): all at the same delay, so the pause kept the timeline.
        assert!(verdict.delays.len() >= 4, "{:?}", verdict.delays);
        let (min, max) = verdict
            .delays
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), (_, d)| {
                (a.min(*d), b.max(*d))
            });
        assert!(min > 50.0 && max < 80.0, "{:?}", verdict.delays);
        assert!(max - min < 3.0, "{:?}", verdict.delays);
        // Each delay is placed at the onset it timed, as it left the talker's mouth.
        assert!(
            verdict
                .delays
                .iter()
                .all(|(at, _)| talker.onsets.contains(at)),
            "{:?}",
            verdict.delays
        );
    }

    #[test]
    fn an_unmarked_gap_is_loss_concealed_and_fails_as_choppy() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        let spurts = vec![(0, FRAMES)];
        let talker = talker(&spurts);
        // Without the gap, a stream sent in full (--send-silence) passes.
        let full = listener(
            &source,
            &Stream {
                spurts: spurts.clone(),
                dtx: false,
                drop: None,
            },
        );
        assert_eq!(sequence_counts(&full).paused, 0);
        let verdict = verify(&source, &talker, &full);
        assert!(verdict.passed, "{:?}", verdict.problems);

        let lossy = listener(
            &source,
            &Stream {
                spurts,
                dtx: false,
                drop: Some((150, 250, false)),
            },
        );
        let seq = sequence_counts(&lossy);
        assert_eq!((seq.lost, seq.paused), (100, 0));
        let timeline = decode(&lossy, END, &mut Vec::new());
        let concealed = timeline
            .kinds
            .iter()
            .filter(|k| **k == FrameKind::Concealed)
            .count();
        assert_eq!(concealed, MAX_CONCEAL);
        // No pause but the latency before the first frame.
        let first = lossy.recording[0].arrival;
        assert!(timeline.pauses.iter().all(|(_, q)| *q <= first));
        let verdict = verify(&source, &talker, &lossy);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.contains("audio is choppy")),
            "{:?}",
            verdict.problems
        );
    }

    #[test]
    fn a_pause_while_a_talker_sounds_fails() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        let spurts = vec![(0, FRAMES)];
        let talker = talker(&spurts);
        // A server hiding 2 s of loss behind a marker.
        let receiver = listener(
            &source,
            &Stream {
                spurts,
                dtx: true,
                drop: Some((150, 250, true)),
            },
        );
        let verdict = verify(&source, &talker, &receiver);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.contains("paused as silence") && p.contains("talker 0 (700 Hz)")),
            "{:?}",
            verdict.problems
        );
        // It is not reported as choppy: the paused frames are covered.
        assert!(
            !verdict.problems.iter().any(|p| p.contains("choppy")),
            "{:?}",
            verdict.problems
        );
    }

    #[test]
    fn a_receiver_with_no_frames_passes_only_if_nobody_talked() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        let silent = ClientOutcome {
            slot: 1,
            joined_at: Some(T0),
            ..ClientOutcome::default()
        };
        // The talker only talked before the window (the first second).
        let verdict = verify(&source, &talker(&[(0, 40)]), &silent);
        assert!(verdict.passed, "{:?}", verdict.problems);
        let verdict = verify(&source, &talker(&[(0, FRAMES)]), &silent);
        assert!(!verdict.passed);
        assert!(
            verdict.problems[0].contains("received no audio at all, though talker 0 (700 Hz)"),
            "{:?}",
            verdict.problems
        );
        // Cut off without a trace is not a pause.
        let dropped = ClientOutcome {
            disconnect: Some("connection dropped".into()),
            ..silent
        };
        let verdict = verify(&source, &talker(&[(0, 40)]), &dropped);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.contains("only 0 ms of audio")),
            "{:?}",
            verdict.problems
        );
    }

    #[test]
    fn a_marked_first_frame_after_the_join_is_preceded_by_silence() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        // The talker starts 2 s after everyone joined: the listener's first frame comes then.
        let spurts = vec![(100, FRAMES)];
        let talker = talker(&spurts);
        let receiver = listener(
            &source,
            &Stream {
                spurts,
                dtx: true,
                drop: None,
            },
        );
        assert!(receiver.recording[0].marker);
        let timeline = decode(&receiver, END, &mut Vec::new());
        let lead = timeline
            .kinds
            .iter()
            .take_while(|k| **k == FrameKind::Paused)
            .count();
        // About 103 frames: the talker's 100 plus the 60 ms the first frame took.
        assert!((102..=103).contains(&lead), "{lead}");
        assert_eq!(timeline.pauses[0], (T0, receiver.recording[0].arrival));
        let verdict = verify(&source, &talker, &receiver);
        assert!(verdict.passed, "{:?}", verdict.problems);
    }

    /// The listener's stream of a continuous talker, broken by a reconnection: frames
    /// `outage` are not received; the connection after it is a new stream (its sequence
    /// numbers start elsewhere, its first frame is marked), carrying `after`'s audio.
    fn reconnected(source: &Source, after: &Source, outage: (usize, usize)) -> ClientOutcome {
        let mut receiver = listener(
            source,
            &Stream {
                spurts: vec![(0, FRAMES)],
                dtx: false,
                drop: None,
            },
        );
        let arrival = |k: usize| mouth(k) + FRAME_SECS + NET;
        let (broke, back) = outage;
        receiver
            .recording
            .retain(|p| !(broke..back).contains(&usize::from(p.sequence.wrapping_sub(SEQ0))));
        for p in &mut receiver.recording {
            let k = usize::from(p.sequence.wrapping_sub(SEQ0));
            if k >= back {
                p.sequence = 1000 + (k - back) as u16;
                p.marker = k == back;
                p.payload = after.packets[k % PERIOD_FRAMES].clone();
            }
        }
        receiver.reconnections.push(crate::client::Reconnection {
            cause: crate::client::ReconnectCause::Moved,
            reason: "redirect (moved)".into(),
            broke_at: arrival(broke - 1) + 0.01,
            returns_at: arrival(broke - 1) + 0.01,
            last_frame_at: Some(arrival(broke - 1)),
            rejoined_at: Some(arrival(back) - 0.03),
            first_frame_at: Some(arrival(back)),
            resumed: true,
            url: None,
            attempts: 1,
            gave_up: false,
            first_packet: broke,
        });
        receiver
    }

    #[test]
    fn a_reconnection_starts_a_new_stream_and_its_outage_is_not_loss() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        let talker = talker(&[(0, FRAMES)]);
        // Out of the room for 0.7 s in the middle of the window.
        let receiver = reconnected(&source, &source, (180, 215));
        let r = &receiver.reconnections[0];
        assert!((r.gap_ms().expect("frames on both sides") - 720.0).abs() < 1e-6);
        let segments = receiver.segments();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].packets, 0..180);
        assert_eq!(segments[1].packets, 180..receiver.recording.len());

        let timeline = decode(&receiver, END, &mut Vec::new());
        // Silence for the outage, nothing concealed: the new stream's sequence numbers are not
        // compared with the old one's. The only pauses are each connection's wait for its
        // (marked) first frame.
        assert_eq!(timeline.outages, vec![r.outage(END).expect("rejoined")]);
        assert!(timeline.kinds.iter().all(|k| *k != FrameKind::Concealed));
        let firsts = (
            receiver.recording[0].arrival,
            receiver.recording[180].arrival,
        );
        assert_eq!(
            timeline.pauses,
            vec![(T0, firsts.0), (r.rejoined_at.expect("rejoined"), firsts.1)]
        );
        let outage = timeline
            .kinds
            .iter()
            .filter(|k| **k == FrameKind::Outage)
            .count();
        assert_eq!(outage, 34, "0.69 s of silence, 20 ms a frame");
        assert_eq!(timeline.segments.len(), 2);
        assert!(timeline.arrivals.windows(2).all(|w| w[0] <= w[1]));

        let verdict = verify(&source, &talker, &receiver);
        assert!(verdict.passed, "{:?}", verdict.problems);
        assert_eq!(verdict.connections, 2);
        // Onsets on both connections, none timed while the audio came back (1 s settle).
        assert!(verdict.delays.len() >= 4, "{:?}", verdict.delays);
        assert!(
            verdict.delays.iter().all(|(_, d)| *d > 50.0 && *d < 80.0),
            "{:?}",
            verdict.delays
        );
    }

    #[test]
    fn a_receiver_that_comes_back_to_the_wrong_audio_fails_on_that_connection() {
        let source = Arc::new(tone_source(FREQ).expect("encodes"));
        // After the rejoin the stream is someone else's: another tone, not the talker's.
        let other = tone_source(1500.0).expect("encodes");
        let talker = talker(&[(0, FRAMES)]);
        let receiver = reconnected(&source, &other, (180, 215));
        let verdict = verify(&source, &talker, &receiver);
        assert!(!verdict.passed);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.contains("on connection 2 of 2: talker 0 (700 Hz) not heard")),
            "{:?}",
            verdict.problems
        );
        // The first connection was right, and is not blamed.
        assert!(
            !verdict
                .problems
                .iter()
                .any(|p| p.contains("connection 1 of")),
            "{:?}",
            verdict.problems
        );
    }
}
