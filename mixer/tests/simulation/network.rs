//! What the network does to a talker: jitter, reordering, duplicates, loss, late packets, wrap-around, clock drift and stalls.

use super::*;

use mixer::engine::jitter::JitterConfig;

#[test]
fn jitter_reordering_and_duplicates_are_absorbed() {
    let mut sim = Sim::new();
    let net = NetemConfig {
        jitter: Duration::from_millis(60),
        duplicate: 0.05,
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 400.0, net, Pattern::Continuous);
    let b = sim.add_talker(2, 1000.0, NetemConfig::default(), Pattern::Continuous);
    sim.run_until(secs(20.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(stats.jitter.duplicates > 10, "{stats:?}");
    // 60 ms of uniform jitter reorders constantly; after the buffer adapts nothing more is lost.
    assert!(stats.jitter.lost + stats.jitter.late < 20, "{stats:?}");
    let pcm = sim.heard(b).window(secs(5.0), secs(19.0));
    assert_hears(pcm, &[400.0], &[1000.0], "b");
    let (target, _) = sim.room.jitter_state(a).expect("talker");
    assert!(
        target >= Duration::from_millis(60),
        "target {target:?} should cover the jitter"
    );
    // Smooth after adaptation: no gaps or clicks in the last 14 s.
    assert!(
        max_step(pcm) < tone_step_bound(&[(400.0, AMP)]) * 1.5 + 0.02,
        "click: {}",
        max_step(pcm)
    );
}

#[test]
fn loss_bursts_are_concealed_and_fec_recovers_single_losses() {
    // FEC recovers a missing frame from the packet after it, so that packet must be buffered
    // when the missing frame is due: a floor of two frames keeps one in reserve on this clean
    // link. (At the default floor of one frame a lone loss finds the buffer empty; the expand
    // that waits for it conceals it, and the next packet plays without waiting for its FEC.)
    let mut sim = Sim::with_config(EngineConfig {
        jitter: JitterConfig {
            min_delay_frames: 2,
            ..JitterConfig::default()
        },
        ..EngineConfig::default()
    });
    let net = NetemConfig {
        loss: 0.05,
        burst: 0.3,
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 650.0, net, Pattern::Continuous);
    let b = sim.add_listener(2);
    sim.run_until(secs(30.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    let sent_lost = sim.talkers[&a].net.lost;
    assert!(
        sent_lost > 50,
        "the network should have lost packets: {sent_lost}"
    );
    // A steady tone gives libopus little reason to spend bits on LBRR, so only a few packets
    // carry FEC (the codec test checks the detection itself); the ones that did were used.
    assert!(stats.jitter.fec_recovered > 0, "{stats:?}");
    assert!(
        stats.jitter.lost + stats.jitter.fec_recovered + stats.jitter.expanded >= sent_lost / 2,
        "{stats:?}"
    );
    // The tone stays present throughout, at a level close to the clean one.
    let pcm = sim.heard(b).window(secs(1.0), secs(29.0));
    assert!(tone_db(pcm, 650.0) > -18.0, "{} dB", tone_db(pcm, 650.0));
    assert_eq!(
        sim.heard(b).sequence_gaps,
        0,
        "the server's own stream has no gaps"
    );
}

#[test]
fn late_packets_are_dropped_and_counted() {
    let mut sim = Sim::new();
    // Every packet 10 ms late except a few that take 300 ms: far beyond the 200 ms ceiling.
    let net = NetemConfig {
        stall: Some((secs(5.0), secs(5.4))),
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 400.0, net, Pattern::Continuous);
    let b = sim.add_listener(2);
    sim.run_until(secs(12.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(
        stats.jitter.late > 0 || stats.jitter.merged > 0,
        "{stats:?}"
    );
    // Delay does not stay inflated by the stall: after it, the tone is back with low delay.
    let pcm = sim.heard(b).window(secs(8.0), secs(11.9));
    assert_hears(pcm, &[400.0], &[], "listener after the stall");
    let (target, buffered) = sim.room.jitter_state(a).expect("state");
    assert!(
        buffered <= 12,
        "buffer holds {buffered} frames, target {target:?}"
    );
}

#[test]
fn sequence_and_timestamp_wrap_around_plays_seamlessly() {
    let mut sim = Sim::new();
    let a = sim.add_talker(1, 1000.0, NetemConfig::default(), Pattern::Continuous);
    sim.talker(a).talker.sequence = 65_500;
    sim.talker(a).talker.timestamp = u32::MAX - 960 * 30;
    let b = sim.add_listener(2);
    sim.run_until(secs(4.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert_eq!(stats.jitter.lost, 0, "{stats:?}");
    assert_eq!(stats.jitter.late, 0, "{stats:?}");
    assert_eq!(stats.jitter.resets, 0, "{stats:?}");
    let pcm = sim.heard(b).window(secs(0.5), secs(3.9));
    assert_hears(pcm, &[1000.0], &[], "listener across the wrap");
    assert!(
        max_step(pcm) < tone_step_bound(&[(1000.0, AMP)]) * 1.5 + 0.02,
        "click at wrap: {}",
        max_step(pcm)
    );
}

#[test]
fn a_fast_sender_clock_does_not_grow_the_delay() {
    let stats = drift_run(1.001);
    // 180 s at +0.1 % is 9 extra frames; they must have been shed.
    assert!(stats.jitter.merged >= 5, "{stats:?}");
}

#[test]
fn a_slow_sender_clock_is_absorbed_without_growing_gaps() {
    let stats = drift_run(0.999);
    assert!(stats.jitter.expanded >= 5, "{stats:?}");
}

#[test]
fn a_jitter_spike_raises_the_delay_which_then_shrinks_back() {
    let mut sim = Sim::new();
    // A 300 ms stall at t = 10 s (a TCP retransmission), otherwise a clean link.
    let net = NetemConfig {
        stall: Some((secs(10.0), secs(10.3))),
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 1000.0, net, Pattern::Bursts { on: 25, off: 25 });
    let b = sim.add_listener(2);
    sim.run_until(secs(9.0));
    let (before, _) = sim.room.jitter_state(a).expect("state");
    sim.run_until(secs(10.6));
    let (during, _) = sim.room.jitter_state(a).expect("state");
    sim.run_until(secs(30.0));
    let (after, buffered) = sim.room.jitter_state(a).expect("state");
    assert!(
        during > before,
        "target should rise: {before:?} -> {during:?}"
    );
    assert!(
        after <= before + Duration::from_millis(20),
        "target should shrink back: {after:?}"
    );
    assert!(buffered <= 4, "{buffered} frames still buffered");
    let delays = sim.delays(a, b);
    let late = delays.iter().rev().take(5).max().expect("onsets");
    assert!(
        *late < Duration::from_millis(100),
        "delay after recovery {late:?}"
    );
}

/// Mouth-to-ear delays (sorted) and the talker's counters after `seconds` of a talker behind
/// 0-30 ms of uniform per-packet jitter (packets overtake each other) and 2 % random loss,
/// sending loadgen's pattern (700 ms of tone, then 300 ms of silent frames still sent).
fn jittery_lossy_run(seconds: f64) -> (Vec<Duration>, mixer::engine::ParticipantStats) {
    let mut sim = Sim::new();
    let net = NetemConfig {
        jitter: Duration::from_millis(30),
        loss: 0.02,
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 650.0, net, Pattern::Bursts { on: 35, off: 15 });
    let b = sim.add_listener(2);
    sim.run_until(secs(seconds));
    let mut delays = sim.delays(a, b);
    delays.sort();
    (delays, sim.room.participant_stats(a).expect("stats"))
}

#[test]
fn jitter_of_30ms_and_2_percent_loss_keep_the_delay_low_without_more_concealment() {
    // Issue 17: with 0-30 ms of jitter and 2 % loss the buffer used to settle a frame or two
    // above what the jitter needs: this run (seed of talker 1, 300 s) heard every onset 86.6 ms
    // after it was sent, with 280 frames concealed (87 by PLC, 191 from FEC, 2 expanded).
    let (delays, stats) = jittery_lossy_run(300.0);
    let percentile = |p: usize| delays[(delays.len() * p).div_ceil(100).max(1) - 1];
    let j = &stats.jitter;
    let concealed = j.lost + j.fec_recovered + j.expanded;
    let summary = format!(
        "{} onsets, p50 {:?}, p99 {:?}, concealed {concealed}, {j:?}",
        delays.len(),
        percentile(50),
        percentile(99)
    );
    eprintln!("{summary}");
    assert!(delays.len() >= 290, "{summary}");
    assert!(percentile(99) < Duration::from_millis(70), "{summary}");
    assert!(concealed <= 280, "{summary}");
}
