//! Verification of what sampled receivers heard, after the run: decode their packets, then
//! check who is heard, that their own voice and other rooms are not, clipping, and the
//! mouth-to-ear delay of every tone onset.

use std::collections::HashMap;
use std::sync::Arc;

use mixer_protocol::{FRAME_SAMPLES, SAMPLE_RATE};
use serde::Serialize;

use crate::client::ClientOutcome;
use crate::signal::{
    LEAK_SEPARATION_HZ, LEVEL_BLOCK, MIN_SEPARATION_HZ, Source, TONE_AMPLITUDE, db, hann, onsets,
    peak_level,
};

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
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverVerdict {
    /// Room index.
    pub room: usize,
    /// Index within the room.
    pub slot: usize,
    /// `talker` or `listener`.
    pub role: &'static str,
    /// Whether every check passed.
    pub passed: bool,
    /// Human-readable failures.
    pub problems: Vec<String>,
    /// Level of each expected talker: (slot, Hz, dBFS).
    pub heard: Vec<(usize, f32, f64)>,
    /// Level of its own tone, dBFS (talkers).
    pub own_db: Option<f64>,
    /// Loudest tone of another room, dBFS.
    pub worst_leak_db: Option<f64>,
    /// Samples at or above 0.99 full scale in the window.
    pub clipped_samples: usize,
    /// Seconds of audio checked.
    pub window_secs: f64,
    /// Mouth-to-ear delays measured at this receiver, ms.
    #[serde(skip)]
    pub delays_ms: Vec<f64>,
}

/// One talker as verification sees it: slot, tone, source and what it did.
pub type TalkerEntry<'a> = (usize, Option<f32>, Arc<Source>, &'a ClientOutcome);

/// Everything verification needs to know about the talkers.
pub struct Talkers<'a> {
    /// Per room, its talkers.
    pub rooms: Vec<Vec<TalkerEntry<'a>>>,
}

/// Decodes `recording` into PCM with concealment for missing frames, and each frame's arrival.
fn decode(out: &ClientOutcome, problems: &mut Vec<String>) -> (Vec<f32>, Vec<f64>) {
    let mut pcm = Vec::with_capacity(out.recording.len() * FRAME_SAMPLES);
    let mut arrivals = Vec::with_capacity(out.recording.len());
    let Ok(mut decoder) = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) else {
        problems.push("cannot create an Opus decoder".into());
        return (pcm, arrivals);
    };
    let mut buf = vec![0.0f32; FRAME_SAMPLES * 6];
    let mut last: Option<(u16, f64)> = None;
    let mut bad = 0usize;
    for packet in &out.recording {
        if let Some((sequence, arrival)) = last {
            let gap = packet.sequence.wrapping_sub(sequence).wrapping_sub(1);
            // Conceal short gaps so the timeline stays true; longer ones are loss already
            // reported, and the audio simply resumes.
            for k in 0..gap.min(50) {
                let n = decoder.decode_float(&[], &mut buf, false).unwrap_or(0);
                pcm.extend_from_slice(&buf[..n.min(FRAME_SAMPLES)]);
                pcm.resize(arrivals.len() * FRAME_SAMPLES + FRAME_SAMPLES, 0.0);
                arrivals.push(arrival + 0.02 * f64::from(k + 1));
            }
        }
        last = Some((packet.sequence, packet.arrival));
        match decoder.decode_float(&packet.payload, &mut buf, false) {
            Ok(n) => pcm.extend_from_slice(&buf[..n.min(FRAME_SAMPLES)]),
            Err(_) => bad += 1,
        }
        pcm.resize(arrivals.len() * FRAME_SAMPLES + FRAME_SAMPLES, 0.0);
        arrivals.push(packet.arrival);
    }
    if bad > 0 {
        problems.push(format!(
            "{bad} packets from the server could not be decoded"
        ));
    }
    (pcm, arrivals)
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
        "talker"
    } else {
        "listener"
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
        delays_ms: Vec::new(),
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
    let (pcm, arrivals) = decode(receiver, problems);
    let from = room_ready + settings.warmup;
    let to = settings.end - 0.05;
    let first = arrivals.partition_point(|a| *a < from);
    let last = arrivals.partition_point(|a| *a <= to);
    if last <= first + 50 {
        let got = last.saturating_sub(first) * 20;
        problems.push(format!(
            "only {got} ms of audio received after the warm-up (need more than 1 s; \
             lengthen --duration or check the receive rate)"
        ));
        return;
    }
    // Count only frames that really arrived (not concealment) against 50 per second.
    let real = receiver
        .recording
        .iter()
        .filter(|p| p.arrival >= from && p.arrival <= to)
        .count();
    let rate = real as f64 / (to - from);
    if rate < 0.9 * 50.0 {
        problems.push(format!(
            "received {rate:.1} frames/s after the warm-up (expected 50/s): audio is choppy"
        ));
    }
    let window = &pcm[first * FRAME_SAMPLES..last * FRAME_SAMPLES];
    verdict.window_secs = window.len() as f64 / f64::from(SAMPLE_RATE);
    verdict.clipped_samples = window.iter().filter(|x| x.abs() >= 0.99).count();
    if verdict.clipped_samples > 0 {
        problems.push(format!(
            "{} samples clipped (|x| >= 0.99)",
            verdict.clipped_samples
        ));
    }
    let room = &talkers.rooms[receiver.room];
    let expected: Vec<_> = room.iter().filter(|t| t.0 != receiver.slot).collect();
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
        // Judge a talker only if it talked for at least 0.5 s of the window (spurts mode).
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
            verdict.own_db = Some(level);
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
    let offset = (first * FRAME_SAMPLES) as f64;
    for (freq, amplitude, source, outcome) in heard {
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
            let index = outcome.onsets.partition_point(|m| *m <= ear);
            if index == 0 {
                continue;
            }
            let delay = ear - outcome.onsets[index - 1];
            // Onsets come every second at most; a match further back is ambiguous.
            if delay < 0.9 {
                verdict.delays_ms.push(delay * 1000.0);
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
