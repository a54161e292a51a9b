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
