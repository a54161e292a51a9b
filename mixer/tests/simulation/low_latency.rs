//! Rooms of 10 and 5 ms frames: the same mix, less delay.

use super::*;

/// Median of `values` (which must not be empty).
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Three talkers in talk spurts and a listener in a room of `frame`-long frames, on a clean
/// network (0.2 ms each way, no jitter): returns the simulation and its members.
fn clean_room(frame: FrameSize) -> (Sim, Vec<ParticipantId>, ParticipantId) {
    let mut sim = Sim::with_config(EngineConfig::default().with_frame(frame));
    let spurt = u64::from(frame.frames_in(Duration::from_millis(400)));
    let net = NetemConfig {
        latency: Duration::from_micros(200),
        ..NetemConfig::default()
    };
    let talkers = (0..3)
        .map(|i| {
            sim.add_talker(
                i + 1,
                FREQS[i as usize],
                net.clone(),
                Pattern::Spurts {
                    on: spurt,
                    off: spurt,
                },
            )
        })
        .collect();
    let listener = sim.add_listener(9);
    sim.run_until(secs(8.0));
    (sim, talkers, listener)
}

#[test]
fn shorter_frames_keep_mix_minus_exact_and_cut_the_delay() {
    let mut medians = Vec::new();
    for frame in FrameSize::ALL {
        let (sim, talkers, listener) = clean_room(frame);
        let freqs = &FREQS[..3];
        // Mix-minus as in any room: each talker hears the other two, never itself, and the
        // listener hears all three. (The window skips the first second's start-up.)
        for (i, talker) in talkers.iter().enumerate() {
            let heard = sim.heard(*talker).window(secs(1.0), secs(7.5));
            let others: Vec<f32> = freqs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, f)| *f)
                .collect();
            assert_hears_in_spurts(
                heard,
                &others,
                &[freqs[i]],
                &format!("talker {i} at {frame}"),
            );
        }
        let heard = sim.heard(listener).window(secs(1.0), secs(7.5));
        assert_hears_in_spurts(heard, freqs, &[], &format!("the listener at {frame}"));
        assert_eq!(sim.heard(listener).sequence_gaps, 0, "{frame}");
        // Mouth to ear: from the send of a spurt's first frame to its onset in what the
        // listener decodes.
        let delays: Vec<Duration> = talkers
            .iter()
            .flat_map(|t| sim.delays(*t, listener))
            .collect();
        assert!(delays.len() >= 20, "{frame}: {} onsets heard", delays.len());
        let p50 = median(delays);
        println!("{frame} frames: mouth-to-ear p50 {p50:?} (virtual time, clean network)");
        medians.push(p50);
    }
    // In virtual time, so exact for this seed: every halving of the frame takes delay off,
    // and 5 ms frames meet the 12 ms target on a clean network.
    assert!(
        medians[1] < medians[0] && medians[2] < medians[1],
        "{medians:?}"
    );
    assert!(medians[2] <= Duration::from_millis(12), "{medians:?}");
}

/// Asserts that `present` are heard (each at a healthy level somewhere in `pcm`, which holds
/// talk spurts) and `absent` never is.
fn assert_hears_in_spurts(pcm: &[f32], present: &[f32], absent: &[f32], who: &str) {
    for f in present {
        let db = tone_db(pcm, *f);
        // Spurts fill about half of the window: -14 dBFS tones read about 3 dB lower.
        assert!(db > -26.0, "{who} should hear {f} Hz, got {db:.1} dB");
    }
    for f in absent {
        let db = tone_db(pcm, *f);
        assert!(db < -60.0, "{who} should not hear {f} Hz, got {db:.1} dB");
    }
}

/// A talker in talk spurts behind 10 ms of latency, 0–30 ms of jitter and `loss` random loss,
/// heard by a listener, for `seconds`, in a room of `frame`-long frames: the mouth-to-ear delays
/// (ms, sorted) and the frames the talker's jitter buffer concealed (lost, late or expanded).
fn impaired(frame: FrameSize, loss: f64, seconds: f64) -> (Vec<f64>, u64, u64) {
    let mut sim = Sim::with_config(EngineConfig::default().with_frame(frame));
    let spurt = u64::from(frame.frames_in(Duration::from_millis(700)));
    let pause = u64::from(frame.frames_in(Duration::from_millis(300)));
    let net = NetemConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(30),
        loss,
        ..NetemConfig::default()
    };
    let talker = sim.add_talker(
        1,
        400.0,
        net,
        Pattern::Spurts {
            on: spurt,
            off: pause,
        },
    );
    let listener = sim.add_listener(2);
    sim.run_until(secs(seconds));
    let mut delays: Vec<f64> = sim
        .delays(talker, listener)
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    let stats = sim.room.participant_stats(talker).expect("stats").jitter;
    let concealed = stats.lost + stats.late + stats.expanded;
    (delays, concealed, stats.played)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn jitter_and_loss_at_20_and_10_ms_frames() {
    for frame in [FrameSize::Ms20, FrameSize::Ms10] {
        let (delays, concealed, played) = impaired(frame, 0.02, 120.0);
        println!(
            "{frame} frames, 0-30 ms jitter, 2 % loss: mouth-to-ear p50 {:.1} ms, p99 {:.1} ms; \
             {concealed} frames concealed of {} ({:.2} %)",
            quantile(&delays, 0.5),
            quantile(&delays, 0.99),
            concealed + played,
            100.0 * concealed as f64 / (concealed + played) as f64
        );
        assert!(delays.len() > 100, "{frame}: {} onsets", delays.len());
    }
}
