//! Silence is cheap and inaudible: talk spurts, silent uplinks, paused streams, talking events.

use super::*;

#[test]
fn talk_spurts_play_silence_between_and_do_not_grow_the_delay() {
    let mut sim = Sim::new();
    let net = NetemConfig {
        jitter: Duration::from_millis(15),
        ..NetemConfig::default()
    };
    // 1 s of speech, 1 s of nothing sent, 30 times.
    let a = sim.add_talker(1, 650.0, net, Pattern::Spurts { on: 50, off: 50 });
    let b = sim.add_listener(2);
    sim.run_until(secs(60.0));
    let delays = sim.delays(a, b);
    assert!(
        delays.len() >= 28,
        "expected ~30 onsets, got {}",
        delays.len()
    );
    let first = delays[1];
    let last = *delays.last().expect("onsets");
    assert!(
        last <= first + Duration::from_millis(25),
        "delay grew from {first:?} to {last:?}"
    );
    assert!(last < Duration::from_millis(120), "delay {last:?}");
    // Between spurts the listener hears silence, not a frozen or looping frame.
    let gap = sim.heard(b).window(secs(51.3), secs(51.9));
    assert!(
        tone_db(gap, 650.0) < -50.0,
        "tone during a pause: {} dB",
        tone_db(gap, 650.0)
    );
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(
        stats.jitter.underruns >= 25,
        "each pause ends a spurt: {stats:?}"
    );
}

#[test]
fn silent_uplinks_are_not_decoded_and_a_silent_room_is_not_encoded() {
    let mut sim = Sim::new();
    // A sends encoded silence (no voice activity, -127 dBov) every frame; B talks in bursts with
    // silent frames in between; C only listens.
    let a = sim.add_talker(
        1,
        300.0,
        NetemConfig::default(),
        Pattern::Bursts { on: 0, off: 1 },
    );
    let b = sim.add_talker(
        2,
        1000.0,
        NetemConfig::default(),
        Pattern::Bursts { on: 25, off: 25 },
    );
    let c = sim.add_listener(3);
    sim.run_until(secs(10.0));
    let ticks = sim.room.stats().ticks;
    let quiet = sim.room.participant_stats(a).expect("a");
    assert!(
        quiet.frames_decoded <= 10,
        "a silent talker was decoded: {quiet:?}"
    );
    assert!(
        quiet.frames_skipped as f64 > ticks as f64 * 0.9,
        "{quiet:?}"
    );
    let bursty = sim.room.participant_stats(b).expect("b");
    // B's silent halves are skipped after a short hangover; its tone still comes through whole.
    assert!(
        bursty.frames_skipped as f64 > ticks as f64 * 0.3,
        "{bursty:?}"
    );
    let heard = sim.heard(c).window(secs(1.0), secs(9.9));
    assert_hears(heard, &[1000.0], &[300.0], "listener");
    assert!(
        max_step(heard) < tone_step_bound(&[(1000.0, AMP)]) * 1.5 + 0.02,
        "click: {}",
        max_step(heard)
    );
    assert!(
        sim.delays(b, c)
            .iter()
            .skip(1)
            .all(|d| *d < Duration::from_millis(60))
    );

    // Now B leaves: the room is silent, so after the encoders settle nothing is encoded and
    // nothing is sent: every participant's frames are paused.
    sim.remove(b);
    sim.run_until(secs(11.0));
    let (ticks, encodes, frames) = (
        sim.room.stats().ticks,
        sim.room.stats().encodes,
        sim.heard(c).frames,
    );
    let paused = sim.room.participant_stats(c).expect("c").frames_paused;
    sim.run_until(secs(13.0));
    assert_eq!(
        sim.room.stats().encodes,
        encodes,
        "a silent room kept encoding"
    );
    assert_eq!(sim.heard(c).frames, frames, "a silent room kept sending");
    assert_eq!(
        sim.room.participant_stats(c).expect("c").frames_paused - paused,
        sim.room.stats().ticks - ticks
    );
    // The frames sent before the pause let the listener's decoder fade all the way to silence.
    let pcm = &sim.heard(c).pcm;
    let tail = &pcm[pcm.len() - FRAME_SAMPLES..];
    assert!(
        tail.iter().all(|s| s.abs() < 1e-4),
        "the stream paused before it was silent"
    );
}

#[test]
fn a_silent_mix_pauses_the_stream_and_resumes_inaudibly_with_a_marker() {
    let (dtx, a, b) = pause_run(false);
    let (continuous, _, _) = pause_run(true);
    let ticks = dtx.room.stats().ticks as usize;
    let paused = dtx.heard(b);
    let steady = continuous.heard(b);
    // Without pausing, a frame every tick; with it, each 2 s pause is (almost all) not sent.
    assert_eq!(steady.pauses, 0);
    assert_eq!(steady.frames, ticks);
    assert!(paused.pauses >= 3, "{} pauses", paused.pauses);
    assert!(
        paused.paused_frames > 3 * 80 && paused.frames < ticks / 2,
        "{} frames sent, {} paused",
        paused.frames,
        paused.paused_frames
    );
    assert_eq!(paused.sequence_gaps, 0, "a pause looked like loss");
    assert_eq!(
        dtx.room.participant_stats(b).expect("b").frames_paused as usize + paused.frames,
        ticks,
        "every tick is a frame sent or a frame paused"
    );
    // The talker is alone, so its own mix-minus is silent throughout: it is sent at most a
    // couple of silence frames per spurt (16 before priming counted towards settling).
    assert!(dtx.heard(a).frames <= 8, "{}", dtx.heard(a).frames);
    // What the listener hears is the same with or without the pauses: the talker in every
    // spurt, silence in between, and no click where the stream resumes.
    let n = paused.pcm.len().min(steady.pcm.len());
    assert!(n > ticks * FRAME_SAMPLES * 9 / 10, "{n}");
    let difference = paused.pcm[..n]
        .iter()
        .zip(&steady.pcm[..n])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        difference < 0.01,
        "pausing changed the audio by {difference}"
    );
    for spurt in 0..3 {
        let start = 3.0 * spurt as f64;
        assert_hears(
            paused.window(secs(start + 0.2), secs(start + 0.9)),
            &[650.0],
            &[],
            "listener in a spurt",
        );
        let gap = paused.window(secs(start + 1.4), secs(start + 2.8));
        assert!(tone_db(gap, 650.0) < -50.0, "tone in a pause");
    }
    assert!(max_step(&paused.pcm) < tone_step_bound(&[(650.0, AMP)]) * 1.5 + 0.02);
}

#[test]
fn talking_events_follow_speech_with_hysteresis_not_packets() {
    let mut sim = Sim::new();
    // 1 s spurts, 1 s pauses (nothing sent), and within each spurt the Talker's own 20 ms
    // frames; the tone has no gaps, so one start and one stop per spurt are expected.
    let a = sim.add_talker(
        1,
        650.0,
        NetemConfig::default(),
        Pattern::Spurts { on: 50, off: 50 },
    );
    let listener = sim.add_listener(2);
    sim.run_until(secs(10.0));
    let events = talking_events(&sim, a);
    assert_eq!(events.len(), 10, "{events:?}");
    for (k, pair) in events.chunks(2).enumerate() {
        let spurt = secs(2.0 * k as f64);
        let (started, stopped) = (pair[0], pair[1]);
        assert!(started.1 && !stopped.1, "{events:?}");
        // Start: after the jitter-buffer delay and two loud frames; stop: 300 ms after the end.
        assert!(
            started.0 > spurt && started.0 < spurt + secs(0.15),
            "{started:?}"
        );
        let end = spurt + secs(1.0);
        assert!(
            stopped.0 > end + secs(0.25) && stopped.0 < end + secs(0.45),
            "{stopped:?}"
        );
    }
    assert!(talking_events(&sim, listener).is_empty());
}

/// Spurts of the onset test: 400 ms of tone, then 600 ms in which nothing is sent.
const ONSET_SPURT: Pattern = Pattern::Spurts { on: 20, off: 30 };
const ONSET_PERIOD: Duration = Duration::from_millis(1000);
const ONSET_SPURTS: u32 = 5;
/// A 1 kHz tone: one period is 48 samples, so the RMS of any 1 ms block measures its amplitude
/// exactly, wherever the block starts.
const ONSET_FREQ: f32 = 1000.0;
const MS: usize = 48;

/// One talk spurt as the listener heard it.
struct HeardSpurt {
    /// From the send of the spurt's first packet to its onset in the listener's audio.
    delay: Duration,
    /// Median amplitude over the middle of the spurt, in dBFS.
    steady_db: f32,
    /// Amplitude of each 1 ms from the onset, in dB relative to `steady_db`.
    envelope_db: Vec<f32>,
}

impl HeardSpurt {
    /// Level of the millisecond centred `ms` after the onset, relative to the steady level.
    fn at(&self, ms: f32) -> f32 {
        self.envelope_db[(ms - 0.5).max(0.0).round() as usize]
    }
}

/// Amplitude of a 1 kHz tone in the 1 ms block of `pcm` starting at `start`, in dBFS.
fn block_db(pcm: &[f32], start: usize) -> f32 {
    let block = &pcm[start.min(pcm.len())..(start + MS).min(pcm.len())];
    let amplitude = std::f32::consts::SQRT_2 * mixer::engine::mix::rms(block);
    20.0 * amplitude.max(1e-9).log10()
}

/// What a talker does with its encoder while it sends nothing. (One that leaves it untouched
/// resumes from the end of the last spurt, which no decoder that went through the pause can
/// follow; the spec is to ask for one of these two, issue 12 item 5.)
#[derive(Debug, Clone, Copy)]
enum AcrossPause {
    /// Keeps encoding (silence) and does not send: a DTX client.
    Encodes,
    /// Resets it before the next spurt: a push-to-talk client that stops its encoder.
    Resets,
}

/// Runs a talker whose packets are sent `phase` after each mix tick (so they arrive `net`'s
/// latency later), talking in spurts with nothing sent in between and the marker on each
/// spurt's first packet, as the spec says; returns every spurt as a listener heard it.
fn heard_spurts(phase: Duration, across: AcrossPause, net: NetemConfig) -> Vec<HeardSpurt> {
    let mut sim = Sim::new();
    let a = sim.add_talker(1, ONSET_FREQ, net, ONSET_SPURT);
    sim.talker(a).next_send = phase;
    let b = sim.add_listener(2);
    for k in 1..ONSET_SPURTS {
        sim.run_until(phase + ONSET_PERIOD * k - Duration::from_nanos(1));
        let talker = &mut sim.talker(a).talker;
        match across {
            // `Talker::pause` has kept the encoder running on the silence.
            AcrossPause::Encodes => {}
            AcrossPause::Resets => talker.encoder.reset_state().expect("reset"),
        }
        talker.first = true;
    }
    sim.run_until(phase + ONSET_PERIOD * ONSET_SPURTS);
    let start = sim.listeners[&b]
        .first_frame_at
        .expect("the listener heard something");
    let pcm = &sim.heard(b).pcm;
    let threshold = AMP * 0.03;
    (0..ONSET_SPURTS)
        .map(|k| {
            let sent = phase + ONSET_PERIOD * k;
            let from = ((sent.saturating_sub(start)).as_secs_f64() * 48_000.0) as usize;
            let onset = pcm[from..]
                .iter()
                .position(|s| s.abs() > threshold)
                .map(|i| from + i)
                .unwrap_or_else(|| panic!("phase {phase:?}: spurt {k} never heard"));
            let delay = start + Duration::from_secs_f64(onset as f64 / 48_000.0) - sent;
            let mut body: Vec<f32> = (150..350)
                .map(|ms| block_db(pcm, onset + ms * MS))
                .collect();
            body.sort_by(f32::total_cmp);
            let steady_db = body[body.len() / 2];
            let envelope_db = (0..400)
                .map(|ms| block_db(pcm, onset + ms * MS) - steady_db)
                .collect();
            HeardSpurt {
                delay,
                steady_db,
                envelope_db,
            }
        })
        .collect()
}

/// A talk spurt after a pause in sending is heard at full level from its first milliseconds and
/// does not break up, whatever the phase of its packets' arrival relative to the mix tick, on a
/// clean link and with a few milliseconds of jitter. (Before: every spurt after the first faded
/// in from about -20 dB over 100 ms, and with jitter a spurt whose first packet arrived just
/// before a tick dropped out about 20 ms in.)
#[test]
fn every_talk_spurt_starts_at_full_level_at_every_arrival_phase() {
    // The talker's tone itself ramps up over 5 ms; from 7 ms on it is at full level, to the
    // end of its last packet (400 ms, less a margin for the onset's detection).
    const FULL_FROM_MS: usize = 7;
    const FULL_TO_MS: usize = 390;
    const PHASES: u32 = 40;
    let mut failures = Vec::new();
    for across in [AcrossPause::Encodes, AcrossPause::Resets] {
        for jitter_us in [0, 3_000] {
            for step in 0..PHASES {
                let phase = TICK * step / PHASES;
                let net = NetemConfig {
                    jitter: Duration::from_micros(jitter_us),
                    ..NetemConfig::default()
                };
                for (k, spurt) in heard_spurts(phase, across, net).iter().enumerate().skip(1) {
                    let (worst_ms, worst_db) = spurt.envelope_db[FULL_FROM_MS..FULL_TO_MS]
                        .iter()
                        .enumerate()
                        .map(|(i, db)| (i + FULL_FROM_MS, *db))
                        .fold((0, f32::MAX), |w, x| if x.1 < w.1 { x } else { w });
                    // A 0.2 tone is -14 dBFS.
                    if (spurt.steady_db + 14.0).abs() > 2.0 || worst_db < -1.0 {
                        failures.push(format!(
                            "{across:?}, jitter {jitter_us} us, phase {:.1} ms, spurt {k}: \
                             delay {:.1} ms, steady {:.1} dBFS; dB at +2.5/5/10/20/50/100 ms: \
                             {:.1} {:.1} {:.1} {:.1} {:.1} {:.1}; {worst_db:.1} dB at {worst_ms} ms",
                            phase.as_secs_f64() * 1e3,
                            spurt.delay.as_secs_f64() * 1e3,
                            spurt.steady_db,
                            spurt.at(2.5),
                            spurt.at(5.0),
                            spurt.at(10.0),
                            spurt.at(20.0),
                            spurt.at(50.0),
                            spurt.at(100.0),
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} spurts faded in or broke up:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
