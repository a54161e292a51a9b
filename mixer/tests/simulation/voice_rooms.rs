//! Voice-room features on decoded audio: mute, push-to-talk, gain and normalisation, modes, late-joiner replay.

use super::*;

#[test]
fn a_muted_talker_fades_out_is_not_heard_and_comes_back_when_unmuted() {
    let mut sim = Sim::new();
    let talkers = sim.add_tone_talkers(2);
    let (a, b) = (talkers[0], talkers[1]);
    let listener = sim.add_listener(10);
    sim.run_until(secs(2.0));
    assert!(sim.room.set_muted(a, true).expect("present"));
    assert!(
        !sim.room.set_muted(a, true).expect("present"),
        "already muted"
    );
    sim.run_until(secs(2.03));
    assert_eq!(
        talking_events(&sim, a).last().map(|e| e.1),
        Some(false),
        "muting stops the talking indicator at once"
    );
    sim.run_until(secs(4.0));
    sim.room.set_muted(a, false).expect("present");
    sim.run_until(secs(6.0));
    let heard = sim.heard(listener);
    assert_hears(
        heard.window(secs(0.5), secs(1.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "before",
    );
    assert_hears(
        heard.window(secs(2.2), secs(3.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "muted",
    );
    assert_hears(
        heard.window(secs(4.3), secs(5.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "unmuted",
    );
    // Muting mid-tone fades it out rather than cutting it.
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(1.5), secs(6.0))) < bound,
        "click"
    );
    assert!(
        sim.talkers[&a].rejected > 80,
        "{}",
        sim.talkers[&a].rejected
    );
    let stats = sim.room.participant_stats(a).expect("a");
    assert_eq!(stats.frames_muted, sim.talkers[&a].rejected);
    let _ = b;
}

#[test]
fn single_floor_push_to_talk_mixes_only_the_holder_until_its_turn_ends() {
    let mut sim = Sim::with_config(EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(3),
            silence_timeout: Duration::from_secs(1),
        },
        ..EngineConfig::default()
    });
    // Two push-to-talk users who both keep transmitting (a stuck button, or impatience).
    let a = sim.add_sender(
        1,
        FREQS[0],
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let b = sim.add_sender(
        2,
        FREQS[1],
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let listener = sim.add_listener(10);
    sim.run_until(secs(0.5));
    let now = sim.t0 + sim.now;
    assert!(matches!(
        sim.room.request_floor(a, false, now),
        Ok(FloorReply::Granted { .. })
    ));
    assert_eq!(
        sim.room.request_floor(b, false, now).expect("b"),
        FloorReply::Denied { holder: a }
    );
    sim.run_until(secs(2.5));
    assert!(sim.room.release_floor(a).expect("a"));
    let now = sim.t0 + sim.now;
    assert!(matches!(
        sim.room.request_floor(b, false, now),
        Ok(FloorReply::Granted { .. })
    ));
    // B keeps talking past its 3 s turn: the floor is revoked at 5.5 s and B goes unheard.
    sim.run_until(secs(8.0));
    let heard = sim.heard(listener);
    assert_hears(
        heard.window(secs(0.8), secs(2.4)),
        &[FREQS[0]],
        &[FREQS[1]],
        "A's turn",
    );
    assert_hears(
        heard.window(secs(2.8), secs(5.4)),
        &[FREQS[1]],
        &[FREQS[0]],
        "B's turn",
    );
    let after = heard.window(secs(5.8), secs(7.9));
    assert!(
        tone_db(after, FREQS[1]) < -60.0 && tone_db(after, FREQS[0]) < -60.0,
        "after the turn"
    );
    let floor: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Floor(change) => Some((*at, *change)),
            _ => None,
        })
        .collect();
    assert!(matches!(floor[0].1, FloorChange::Granted { to, .. } if to == a));
    assert!(
        matches!(floor[1].1, FloorChange::Ended { from, reason: FloorEnd::Released } if from == a)
    );
    assert!(matches!(floor[2].1, FloorChange::Granted { to, .. } if to == b));
    assert!(
        matches!(floor[3].1, FloorChange::Ended { from, reason: FloorEnd::MaxTalkTime } if from == b)
    );
    assert!(
        floor[3].0 >= secs(5.5) && floor[3].0 < secs(5.6),
        "{:?}",
        floor[3].0
    );
    assert_eq!(floor.len(), 4);
    // Packets without the floor were refused and counted, and no turn change clicks.
    assert!(
        sim.room
            .participant_stats(b)
            .expect("b")
            .frames_without_floor
            > 100
    );
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(0.5), secs(8.0))) < bound,
        "click"
    );
    // A talker leaving while holding the floor frees it.
    let now = sim.t0 + sim.now;
    sim.room.request_floor(a, false, now).expect("a");
    sim.remove(a);
    assert_eq!(sim.room.floor_holder(), None);
}

#[test]
fn input_gain_and_normalisation_balance_loud_and_quiet_speakers() {
    let levels = |normalise: bool, gain_db: f32| {
        let mut sim = Sim::with_config(EngineConfig {
            normalise,
            ..EngineConfig::default()
        });
        let talkers = sim.add_tone_talkers(2);
        sim.talker(talkers[0]).talker.tone.amp = 0.3;
        sim.talker(talkers[1]).talker.tone.amp = 0.03;
        sim.room.set_gain(talkers[1], gain_db).expect("gain");
        let listener = sim.add_listener(10);
        sim.run_until(secs(8.0));
        let tail = sim.heard(listener).window(secs(6.0), secs(7.9));
        (tone_db(tail, FREQS[0]), tone_db(tail, FREQS[1]))
    };
    let (loud, quiet) = levels(false, 0.0);
    assert!((loud - quiet - 20.0).abs() < 2.0, "{loud} vs {quiet}");
    let (loud, quiet) = levels(false, 14.0);
    assert!(
        (loud - quiet - 6.0).abs() < 2.0,
        "+14 dB: {loud} vs {quiet}"
    );
    let (loud, quiet) = levels(true, 0.0);
    assert!((loud - quiet).abs() < 3.0, "normalised: {loud} vs {quiet}");
    let mut sim = Sim::new();
    let a = sim.add_talker(1, 400.0, NetemConfig::default(), Pattern::Continuous);
    assert!(matches!(
        sim.room.set_gain(a, 21.0),
        Err(EngineError::InvalidGain(_))
    ));
    assert!(matches!(
        sim.room.set_gain(a, f32::NAN),
        Err(EngineError::InvalidGain(_))
    ));
}

#[test]
fn a_talker_can_switch_to_listening_and_a_listener_to_talking() {
    let mut sim = Sim::new();
    let talkers = sim.add_tone_talkers(2);
    let (a, c) = (talkers[0], talkers[1]);
    let b = sim.add_listener(10);
    sim.run_until(secs(2.0));
    // A only listens from now on: its audio is refused and nobody hears it any more.
    sim.room.set_mode(a, Mode::Listen).expect("a");
    sim.run_until(secs(4.0));
    // B takes a microphone: it gets a stream of its own and goes on hearing C.
    sim.room.set_mode(b, Mode::Talk).expect("b");
    sim.run_until(secs(6.0));
    let heard = sim.heard(b);
    assert_hears(
        heard.window(secs(0.5), secs(1.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "before",
    );
    assert_hears(
        heard.window(secs(2.3), secs(3.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "a listening",
    );
    assert_hears(
        heard.window(secs(4.3), secs(5.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "b talking",
    );
    assert_hears(
        sim.heard(a).window(secs(2.3), secs(5.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "a",
    );
    assert!(
        sim.talkers[&a].rejected > 80,
        "{}",
        sim.talkers[&a].rejected
    );
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(0.5), secs(6.0))) < bound,
        "click"
    );
    assert_eq!(sim.heard(b).sequence_gaps, 0);
    let _ = c;
}

#[test]
fn a_late_joiner_hears_the_transmission_from_its_start_then_catches_up_to_live() {
    let mut sim = Sim::with_config(EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(5),
        },
        ..EngineConfig::default()
    });
    let (tone_a, tone_b) = (FREQS[0], FREQS[1]);
    let a = sim.add_sender(
        1,
        tone_a,
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let b = sim.add_sender(
        2,
        tone_b,
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let early = sim.add_listener(10);
    sim.run_until(secs(0.5));
    // A talks for 2 s, then B answers for 3.4 s.
    let now = sim.t0 + sim.now;
    sim.room.request_floor(a, false, now).expect("a");
    sim.run_until(secs(1.5));
    // Someone tunes in 1 s into A's message.
    let late = sim.add_listener(11);
    let behind = sim.room.replay_backlog(late).expect("a replay");
    assert!(
        behind >= secs(0.95) && behind <= secs(1.05),
        "1 s behind, got {behind:?}"
    );
    sim.run_until(secs(2.5));
    assert!(sim.room.release_floor(a).expect("a"));
    sim.run_until(secs(2.6));
    let now = sim.t0 + sim.now;
    sim.room.request_floor(b, false, now).expect("b");
    sim.run_until(secs(6.0));
    assert!(sim.room.release_floor(b).expect("b"));
    sim.run_until(secs(7.0));
    // Someone joining when nothing is on the air hears the room live.
    let later = sim.add_listener(12);
    assert_eq!(sim.room.replay_backlog(later), None);

    let heard = &sim.heard(late).pcm;
    let with_a = blocks_with(heard, tone_a);
    let with_b = blocks_with(heard, tone_b);
    // The late joiner's audio starts with the start of A's message...
    assert!(
        with_a[..5].iter().all(|a| *a),
        "A's first words come first: {:?}",
        &with_a[..10]
    );
    // ...and it hears all of it: 2 s of tone, played 1.5x as fast. Live, it would have heard
    // only the last second.
    let a_blocks = with_a.iter().filter(|a| **a).count();
    assert!(
        (60..=75).contains(&a_blocks),
        "{a_blocks} blocks of A's 100 at 1.5x"
    );
    // Then B's answer, replayed from its start as well; the two never overlap, and B's live
    // voice is not heard while the joiner is still behind.
    let first_b = with_b.iter().position(|b| *b).expect("B heard");
    let last_a = with_a.iter().rposition(|a| *a).expect("A heard");
    assert!(
        last_a <= first_b + 1,
        "A ends ({last_a}) before B ({first_b})"
    );
    assert!(
        first_b <= last_a + 3,
        "B's answer follows A's message at once ({last_a} then {first_b})"
    );
    // It catches up: one CaughtUp event, for it, while B still talks.
    let caught_up: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::CaughtUp { .. }))
        .collect();
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    let (at, event) = caught_up[0];
    assert_eq!(*event, Event::CaughtUp { participant: late });
    assert!(*at > secs(2.8) && *at < secs(4.5), "caught up at {at:?}");
    // From then on it hears what the early listener hears, at the same time.
    let early_pcm = &sim.heard(early).pcm;
    let first_block = |who: ParticipantId| {
        (sim.listeners[&who]
            .first_frame_at
            .expect("heard something")
            .as_secs_f64()
            / 0.02)
            .round() as usize
    };
    let offset = first_block(late) - first_block(early);
    assert!(
        (75..=76).contains(&offset),
        "the late joiner's first frame: {offset}"
    );
    let from = ((at.as_secs_f64() + 0.2) / 0.02) as usize;
    let to = (heard.len() / FRAME_SAMPLES + offset).min(early_pcm.len() / FRAME_SAMPLES);
    assert!(to > 305, "both heard the end of B's message");
    for block in from..to {
        let late_block = &heard[(block - offset) * FRAME_SAMPLES..][..FRAME_SAMPLES];
        let early_block = &early_pcm[block * FRAME_SAMPLES..][..FRAME_SAMPLES];
        let (l, e) = (tone_db(late_block, tone_b), tone_db(early_block, tone_b));
        assert!(
            (l - e).abs() < 1.5 || (l < -60.0 && e < -60.0),
            "live after catching up: block {block}: {l:.1} vs {e:.1} dB"
        );
    }
    // No clicks anywhere: not where a pair of frames was merged, not between the messages,
    // not on catching up.
    let bound = tone_step_bound(&[(tone_a, AMP), (tone_b, AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard) < bound,
        "click: {} vs {bound}",
        max_step(heard)
    );
    assert_eq!(sim.heard(late).sequence_gaps, 0);
    // Nothing else changed: the early listener heard both messages live.
    assert_hears(
        sim.heard(early).window(secs(0.8), secs(2.4)),
        &[tone_a],
        &[tone_b],
        "early listener, A",
    );
}

#[test]
fn a_talker_back_from_listening_is_heard_live_at_its_old_delay() {
    // (seconds in listen mode, whether the client keeps sending meanwhile (refused) or stops).
    // The talker sends 0.5 s tone spurts every second; it switches to listen mid-spurt, and
    // keeping clients come back in a pause, so any tone heard right after the switch back is
    // audio left over from before it.
    for (listen, keeps_sending) in [(0.4, true), (2.4, true), (2.4, false)] {
        let case = format!("{listen} s in listen mode, keeps sending: {keeps_sending}");
        let mut sim = Sim::new();
        let net = NetemConfig {
            jitter: Duration::from_millis(20),
            ..NetemConfig::default()
        };
        let a = sim.add_talker(1, 650.0, net, Pattern::Spurts { on: 25, off: 25 });
        let listener = sim.add_listener(9);
        let switch = 4.3;
        sim.run_until(secs(switch));
        let before = sim.delays(a, listener);
        let delay = before[before.len() / 2];
        sim.room.set_mode(a, Mode::Listen).expect("a");
        sim.talker(a).active = keeps_sending;
        let back = switch + listen;
        sim.run_until(secs(back));
        if !keeps_sending {
            // The client stopped sending: it resumes with the next sequence number and a
            // timestamp that moved on with the time it was silent.
            let now = sim.now;
            let t = sim.talker(a);
            t.active = true;
            t.next_send = now;
            t.talker.pause((listen / 0.02) as u32);
        }
        sim.room.set_mode(a, Mode::Talk).expect("a");
        sim.run_until(secs(back + 5.0));

        // The resumed talker's first tone is heard at its old delay: the next spurt it sends,
        // or (a client that stopped) the tone it resumes with at once.
        let first_sent = if keeps_sending {
            *sim.talkers[&a]
                .onsets_sent
                .iter()
                .find(|s| **s > secs(back))
                .expect("spurts after the switch back")
        } else {
            secs(back)
        };
        let start = sim.listeners[&listener].first_frame_at.expect("frames");
        let first_heard = onsets(&sim.heard(listener).pcm, 650.0, AMP * 0.3)
            .into_iter()
            .map(|s| start + Duration::from_secs_f64(s as f64 / 48_000.0))
            .find(|at| *at > secs(back))
            .expect("heard again");
        // (Heard before it was sent is stale audio.)
        let resumed = first_heard.checked_sub(first_sent);
        assert!(
            resumed.is_some_and(|d| d.abs_diff(delay) < Duration::from_millis(40)),
            "{case}: tone sent at {first_sent:?} first heard at {first_heard:?}; delay before the \
             switch {delay:?}"
        );
        // And so are the spurts after it. (An onset heard a spurt's length or more after the
        // last one sent is the tone coming back after a short dip within a spurt, which this
        // talker's pattern and network show now and then without any switch.)
        let after: Vec<Duration> = sim.delays(a, listener)[before.len()..]
            .iter()
            .copied()
            .filter(|d| *d < Duration::from_millis(500))
            .collect();
        assert!(after.len() >= 4, "{case}: {after:?}");
        for d in &after {
            assert!(
                d.abs_diff(delay) < Duration::from_millis(40),
                "{case}: delay {d:?} after the switch back, {delay:?} before ({after:?})"
            );
        }
        let heard = sim.heard(listener);
        let silent = |from: f64, to: f64, what: &str| {
            let db = tone_db(heard.window(secs(from), secs(to)), 650.0);
            assert!(db < -40.0, "{case}: {what}: {db:.1} dB");
        };
        let delay = delay.as_secs_f64();
        silent(switch + delay + 0.06, back, "heard while listening");
        // Audio sent after the switch back cannot be heard before its delay.
        silent(
            back,
            back + delay - 0.03,
            "stale audio after the switch back",
        );
        let bound = tone_step_bound(&[(650.0, AMP)]);
        let step = max_step(heard.window(secs(1.0), secs(back + 5.0)));
        assert!(
            step < bound * 1.5 + 0.02,
            "{case}: click: {step} vs {bound}"
        );
    }
}
