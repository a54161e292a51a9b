//! What the protocol's "What the server sends" promises about pauses, checked on the engine:
//! how many frames of silence precede a pause, what a newcomer to a silent room receives, and
//! which talkers the `max_talkers` cap leaves out.

use mixer::engine::Transmit;
use mixer_protocol::AudioHeader;

use super::*;

/// Runs one tick at `tick` and returns the header of each participant's frame, if any.
fn tick(room: &mut Room, t0: Instant, tick: u32) -> HashMap<ParticipantId, AudioHeader> {
    room.handle_timeout(t0 + TICK * tick);
    let mut out = HashMap::new();
    while let Some(Transmit { to, header, .. }) = room.poll_transmit() {
        out.insert(to, header);
    }
    while room.poll_event().is_some() {}
    out
}

#[test]
fn a_mix_that_falls_silent_sends_three_frames_of_silence_then_pauses() {
    let t0 = Instant::now();
    let mut room = Room::new(EngineConfig::default(), t0).expect("room");
    let (talker, listener) = (ParticipantId(1), ParticipantId(2));
    room.add_participant(talker, Mode::Talk).expect("join");
    room.add_participant(listener, Mode::Listen).expect("join");
    let mut source = common::Talker::new(650.0, AMP);
    let mut heard = Vec::new();
    for n in 0..150u32 {
        // One second of tone, then nothing: the talker stopped sending.
        if n < 50 {
            let bytes = source.next_frame(true);
            let frame = AudioFrame::parse(&bytes).expect("frame");
            room.handle_audio(talker, frame, t0 + TICK * n)
                .expect("accepted");
        }
        heard.push(tick(&mut room, t0, n).remove(&listener));
    }
    let last_sound = heard
        .iter()
        .rposition(|h| h.is_some_and(|h| h.level != AudioLevel::SILENT))
        .expect("the tone was heard");
    let silent_frames = heard[last_sound + 1..]
        .iter()
        .take_while(|h| h.is_some())
        .count();
    assert_eq!(silent_frames, 3, "frames of silence before the pause");
    assert!(
        heard[last_sound + 1 + silent_frames..]
            .iter()
            .all(Option::is_none),
        "paused for good"
    );
    assert!(
        heard[last_sound + 1..=last_sound + 3]
            .iter()
            .flatten()
            .all(|h| h.level == AudioLevel::SILENT && !h.level.voice_activity()),
        "silence frames carry the measured silence level (0x7E)"
    );
}

#[test]
fn a_newcomer_to_a_silent_room_gets_no_frame_until_someone_is_heard() {
    let t0 = Instant::now();
    let mut room = Room::new(EngineConfig::default(), t0).expect("room");
    let (first, talker, newcomer) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
    room.add_participant(first, Mode::Listen).expect("join");
    room.add_participant(talker, Mode::Talk).expect("join");
    for n in 0..50 {
        tick(&mut room, t0, n);
    }
    room.add_participant(newcomer, Mode::Listen).expect("join");
    let mut source = common::Talker::new(650.0, AMP);
    let mut first_frame = None;
    for n in 50..150u32 {
        // The talker starts at tick 100.
        if n >= 100 {
            let bytes = source.next_frame(true);
            let frame = AudioFrame::parse(&bytes).expect("frame");
            room.handle_audio(talker, frame, t0 + TICK * n)
                .expect("accepted");
        }
        let frames = tick(&mut room, t0, n);
        if let Some(header) = frames.get(&newcomer) {
            first_frame.get_or_insert((n, *header));
        }
    }
    let (at, header) = first_frame.expect("frames once the talker is heard");
    assert!(at >= 100, "a frame at tick {at}, before anyone was heard");
    assert!(header.flags.marker(), "the first frame has the marker set");
}

#[test]
fn the_talker_cap_keeps_who_is_mixed_among_equals_and_lets_a_louder_voice_in() {
    let config = EngineConfig {
        max_talkers: 2,
        ..EngineConfig::default()
    };
    let mut sim = Sim::with_config(config);
    // Talkers 1 and 2 start at once; 3 and 4, at the same level, a second later; 5, twice as
    // loud (+6 dB, more than the 3 dB a mixed talker is credited), two seconds later.
    let ids: Vec<ParticipantId> = (0..5)
        .map(|i| {
            sim.add_talker(
                i + 1,
                [400.0, 650.0, 1000.0, 1500.0, 2200.0][i as usize],
                NetemConfig::default(),
                Pattern::Continuous,
            )
        })
        .collect();
    sim.talker(ids[2]).next_send = secs(1.0);
    sim.talker(ids[3]).next_send = secs(1.0);
    sim.talker(ids[4]).next_send = secs(2.0);
    sim.talker(ids[4]).talker.tone.amp = 2.0 * AMP;
    let listener = sim.add_listener(100);
    sim.run_until(secs(3.5));
    let heard = sim.heard(listener);
    assert_hears(
        heard.window(secs(1.3), secs(1.9)),
        &[400.0, 650.0],
        &[1000.0, 1500.0],
        "equal newcomers do not displace the mixed",
    );
    let late = heard.window(secs(2.6), secs(3.4));
    assert_hears(
        late,
        &[2200.0],
        &[1000.0, 1500.0],
        "the louder voice is mixed",
    );
    let kept = [400.0f32, 650.0]
        .iter()
        .filter(|f| tone_db(late, **f) > -30.0)
        .count();
    assert_eq!(kept, 1, "it took one of the two places");
}
