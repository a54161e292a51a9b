//! Property test of push-to-talk floor control: random sequences of requests (plain and
//! preempting), releases, departures, voice and time never leave two holders, never leave the
//! floor with someone who is gone or whose turn has run out, and the announced changes always
//! tell the room exactly who holds the floor.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::Talker;
use mixer::engine::floor::{Floor, FloorChange, FloorConfig, FloorPolicy, FloorReply};
use mixer::engine::{EngineConfig, EngineError, Event, ParticipantId, Room};
use mixer_protocol::{AudioFrame, Mode};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Join(u8),
    Leave(u8),
    Request(u8, bool),
    Release(u8),
    Voice(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..5).prop_map(Op::Join),
        (0u8..5).prop_map(Op::Leave),
        (0u8..5, any::<bool>()).prop_map(|(id, preempt)| Op::Request(id, preempt)),
        (0u8..5).prop_map(Op::Release),
        (0u8..5).prop_map(Op::Voice),
        (0u16..3000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn one_holder_who_is_present_and_within_its_turn(ops in proptest::collection::vec(op(), 1..80)) {
        let config = FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let mut now = t0;
        let mut floor = Floor::new(config);
        let mut present: BTreeSet<u8> = BTreeSet::new();
        // The holder as the room knows it from the announced changes alone.
        let mut announced: Option<ParticipantId> = None;
        let mut turn_start = t0;
        let mut last_voice = t0;
        let mut changes = Vec::new();
        for op in ops {
            changes.clear();
            match op {
                Op::Join(id) => {
                    present.insert(id);
                }
                Op::Leave(id) => {
                    // The shell calls `left` for everyone who leaves.
                    if present.remove(&id) {
                        changes.extend(floor.left(ParticipantId(u32::from(id))));
                    }
                }
                Op::Request(id, preempt) => {
                    if present.contains(&id) {
                        let before = floor.holder();
                        let who = ParticipantId(u32::from(id));
                        match floor.request(who, preempt, now, &mut changes) {
                            FloorReply::Granted { deadline } => {
                                prop_assert!(before.is_none() || before == Some(who) || preempt);
                                prop_assert!(deadline.is_some());
                                if before != Some(who) {
                                    turn_start = now;
                                    last_voice = now;
                                }
                            }
                            FloorReply::Denied { holder } => {
                                prop_assert!(!preempt);
                                prop_assert_eq!(Some(holder), before);
                                prop_assert_ne!(holder, who);
                            }
                        }
                    }
                }
                Op::Release(id) => {
                    changes.extend(floor.release(ParticipantId(u32::from(id))));
                }
                Op::Voice(id) => {
                    let who = ParticipantId(u32::from(id));
                    if floor.holder() == Some(who) {
                        last_voice = now;
                    }
                    floor.voice(who, now);
                }
                Op::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    // The shell polls at every tick; a big step is many ticks at once.
                    changes.extend(floor.poll(now));
                }
            }
            for change in &changes {
                match *change {
                    FloorChange::Granted { to, .. } => {
                        prop_assert_eq!(announced, None, "granted while {:?} still held it", announced);
                        announced = Some(to);
                    }
                    FloorChange::Ended { from, .. } => {
                        prop_assert_eq!(announced, Some(from));
                        announced = None;
                    }
                }
            }
            prop_assert_eq!(announced, floor.holder());
            if let Some(holder) = floor.holder() {
                prop_assert!(present.contains(&(holder.0 as u8)), "the floor is held by {holder}, who left");
                prop_assert!(now < turn_start + config.max_talk);
                prop_assert!(now < last_voice + config.silence_timeout);
            }
        }
    }
}

/// A single-floor room's settings with this longest turn and 1 s of silence before the floor
/// is revoked.
fn single_floor(max_talk: Duration) -> EngineConfig {
    EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            max_talk,
            silence_timeout: Duration::from_secs(1),
        },
        ..EngineConfig::default()
    }
}

/// The talker's next frame (tone, or silence), numbered `sequence` (which then moves on).
fn numbered_frame(talker: &mut Talker, tone: bool, sequence: &mut u16) -> Vec<u8> {
    let bytes = talker.next_frame(tone);
    let mut frame = AudioFrame::parse(&bytes).expect("frame");
    frame.header.sequence = *sequence;
    frame.header.timestamp = u32::from(*sequence) * 960;
    *sequence = sequence.wrapping_add(1);
    let mut out = Vec::with_capacity(bytes.len());
    frame.write_to(&mut out);
    out
}

#[derive(Debug, Clone)]
enum RoomOp {
    Join(u8, Mode),
    Leave(u8),
    Request(u8, bool),
    Release(u8),
    SetMode(u8, Mode),
    Talk(u8),
    /// A participant talks for this many frames, one per tick.
    Transmit(u8, u8),
    Advance(u16),
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Ptt), Just(Mode::Talk), Just(Mode::Listen)]
}

fn room_op() -> impl Strategy<Value = RoomOp> {
    prop_oneof![
        // Ids 4 and 5 only ever join and leave: late joiners, for the replay.
        3 => (0u8..6, mode()).prop_map(|(id, m)| RoomOp::Join(id, m)),
        1 => (0u8..6).prop_map(RoomOp::Leave),
        1 => (0u8..4, any::<bool>()).prop_map(|(id, p)| RoomOp::Request(id, p)),
        1 => (0u8..4).prop_map(RoomOp::Release),
        1 => (0u8..4, mode()).prop_map(|(id, m)| RoomOp::SetMode(id, m)),
        1 => (0u8..4).prop_map(RoomOp::Talk),
        2 => (0u8..4, 1u8..60).prop_map(|(id, n)| RoomOp::Transmit(id, n)),
        1 => (0u16..1500).prop_map(RoomOp::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The same invariants through the whole room: joins, leaves, mode changes, push-to-talk
    /// audio and ticks. The floor is only ever held by a present participant in ptt mode, and
    /// the room's floor events always tell who holds it.
    #[test]
    fn a_room_never_leaves_the_floor_with_someone_gone_or_not_in_ptt(
        ops in proptest::collection::vec(room_op(), 1..60),
    ) {
        let config = single_floor(Duration::from_secs(3));
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = Room::new(config, t0).expect("room");
        let mut modes: BTreeMap<u8, Mode> = BTreeMap::new();
        let mut announced: Option<ParticipantId> = None;
        let mut talker = Talker::new(440.0, 0.2);
        let mut sequence = 0u16;
        // Late joiners hearing a transmission replayed, who must each catch up once.
        let mut replaying: BTreeSet<ParticipantId> = BTreeSet::new();
        for op in ops {
            match op {
                RoomOp::Join(id, m) => {
                    let who = ParticipantId(u32::from(id));
                    if room.add_participant(who, m).is_ok() {
                        modes.insert(id, m);
                        if room.replay_backlog(who).is_some() {
                            prop_assert!(room.floor_holder().is_some(), "a replay with nothing on the air");
                            replaying.insert(who);
                        }
                    }
                }
                RoomOp::Leave(id) => {
                    room.remove_participant(ParticipantId(u32::from(id)));
                    modes.remove(&id);
                    replaying.remove(&ParticipantId(u32::from(id)));
                }
                RoomOp::Request(id, preempt) => {
                    let result = room.request_floor(ParticipantId(u32::from(id)), preempt, now);
                    match modes.get(&id) {
                        Some(Mode::Ptt) => prop_assert!(result.is_ok()),
                        Some(_) => prop_assert!(matches!(result, Err(EngineError::NotPushToTalk(_)))),
                        None => prop_assert!(matches!(result, Err(EngineError::UnknownParticipant(_)))),
                    }
                }
                RoomOp::Release(id) => {
                    let _ = room.release_floor(ParticipantId(u32::from(id)));
                }
                RoomOp::SetMode(id, m) => {
                    if room.set_mode(ParticipantId(u32::from(id)), m).is_ok() {
                        modes.insert(id, m);
                    }
                }
                RoomOp::Talk(id) => {
                    let bytes = numbered_frame(&mut talker, true, &mut sequence);
                    let frame = AudioFrame::parse(&bytes).expect("frame");
                    let who = ParticipantId(u32::from(id));
                    let accepted = room.handle_audio(who, frame, now).is_ok();
                    let may_talk = match modes.get(&id) {
                        Some(Mode::Talk) => true,
                        Some(Mode::Ptt) => room.floor_holder() == Some(who),
                        _ => false,
                    };
                    prop_assert_eq!(accepted, may_talk);
                }
                RoomOp::Transmit(id, frames) => {
                    let who = ParticipantId(u32::from(id));
                    for _ in 0..frames {
                        let bytes = numbered_frame(&mut talker, true, &mut sequence);
                        let frame = AudioFrame::parse(&bytes).expect("frame");
                        let _ = room.handle_audio(who, frame, now);
                        now += Duration::from_millis(20);
                        room.handle_timeout(now);
                        while room.poll_transmit().is_some() {}
                        while let Some(event) = room.poll_event() {
                            if let Event::CaughtUp { participant } = event {
                                prop_assert!(replaying.remove(&participant), "{} caught up twice or never replayed", participant);
                            }
                            if let Event::Floor(change) = event {
                                match change {
                                    FloorChange::Granted { to, .. } => announced = Some(to),
                                    FloorChange::Ended { .. } => announced = None,
                                }
                            }
                        }
                    }
                }
                RoomOp::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    while room.poll_timeout() <= now {
                        room.handle_timeout(now);
                        while room.poll_transmit().is_some() {}
                    }
                }
            }
            while let Some(event) = room.poll_event() {
                if let Event::CaughtUp { participant } = event {
                    prop_assert!(replaying.remove(&participant), "{} caught up twice or never replayed", participant);
                }
                if let Event::Floor(change) = event {
                    match change {
                        FloorChange::Granted { to, .. } => {
                            prop_assert_eq!(announced, None);
                            announced = Some(to);
                        }
                        FloorChange::Ended { from, .. } => {
                            prop_assert_eq!(announced, Some(from));
                            announced = None;
                        }
                    }
                }
            }
            prop_assert_eq!(announced, room.floor_holder());
            if let Some(holder) = room.floor_holder() {
                prop_assert_eq!(modes.get(&(holder.0 as u8)), Some(&Mode::Ptt), "held by {} who is gone or not in ptt", holder);
            }
        }
        // Once the channel is quiet, every late joiner has caught up, exactly once.
        if let Some(holder) = room.floor_holder() {
            room.release_floor(holder).expect("holder");
        }
        for _ in 0..500 {
            now += Duration::from_millis(20);
            room.handle_timeout(now);
            while room.poll_transmit().is_some() {}
            while let Some(event) = room.poll_event() {
                if let Event::CaughtUp { participant } = event {
                    prop_assert!(replaying.remove(&participant), "{} caught up twice", participant);
                }
            }
        }
        prop_assert!(replaying.is_empty(), "never caught up: {:?}", replaying);
        for id in modes.keys() {
            prop_assert_eq!(room.replay_backlog(ParticipantId(u32::from(*id))), None);
        }
    }
}

#[derive(Debug, Clone)]
enum ReplayOp {
    /// Talker 1 or 2 asks for the floor (2 preempts).
    Request(u8),
    /// The holder (if any) releases it.
    Release,
    /// Talker 1 or 2 sends this many frames of tone (or of nothing), one per tick.
    Transmit(u8, u8, bool),
    /// A listener with this id (10..16) joins, or leaves.
    Join(u8),
    Leave(u8),
}

fn replay_op() -> impl Strategy<Value = ReplayOp> {
    prop_oneof![
        1 => (1u8..3).prop_map(ReplayOp::Request),
        1 => Just(ReplayOp::Release),
        3 => (1u8..3, 1u8..80, any::<bool>()).prop_map(|(id, n, tone)| ReplayOp::Transmit(id, n, tone)),
        2 => (10u8..16).prop_map(ReplayOp::Join),
        1 => (10u8..16).prop_map(ReplayOp::Leave),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Late-joiner replay through any sequence of transmissions, joins and leaves: whoever joins
    /// while the floor is held (and has been for a few frames) hears a replay, every replay
    /// catches up exactly once, nobody else gets a replay, and every stream stays continuous.
    #[test]
    fn every_late_joiner_is_replayed_once_and_catches_up(
        ops in proptest::collection::vec(replay_op(), 1..40),
    ) {
        let config = single_floor(Duration::from_secs(4));
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = Room::new(config, t0).expect("room");
        for id in [1, 2] {
            room.add_participant(ParticipantId(id), Mode::Ptt).expect("join");
        }
        let mut talkers = [Talker::new(440.0, 0.2), Talker::new(700.0, 0.2)];
        let mut sequences = [0u16; 2];
        let mut present: BTreeSet<ParticipantId> = BTreeSet::new();
        let mut replaying: BTreeSet<ParticipantId> = BTreeSet::new();
        let mut last_sequence: BTreeMap<ParticipantId, u16> = BTreeMap::new();
        let tick = |room: &mut Room,
                    now: Instant,
                    replaying: &mut BTreeSet<ParticipantId>,
                    last_sequence: &mut BTreeMap<ParticipantId, u16>|
         -> Result<(), TestCaseError> {
            room.handle_timeout(now);
            while let Some(tx) = room.poll_transmit() {
                if let Some(last) = last_sequence.insert(tx.to, tx.header.sequence) {
                    // Consecutive, or a pause in silence that ends with a marker.
                    prop_assert!(
                        tx.header.sequence == last.wrapping_add(1) || tx.header.flags.marker(),
                        "{}'s stream jumped from {} to {}", tx.to, last, tx.header.sequence
                    );
                }
            }
            while let Some(event) = room.poll_event() {
                if let Event::CaughtUp { participant } = event {
                    prop_assert!(replaying.remove(&participant), "{} caught up twice or never replayed", participant);
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                ReplayOp::Request(id) => {
                    let _ = room.request_floor(ParticipantId(u32::from(id)), id == 2, now);
                }
                ReplayOp::Release => {
                    if let Some(holder) = room.floor_holder() {
                        room.release_floor(holder).expect("holder");
                    }
                }
                ReplayOp::Transmit(id, frames, tone) => {
                    let index = usize::from(id - 1);
                    for _ in 0..frames {
                        let bytes = numbered_frame(&mut talkers[index], tone, &mut sequences[index]);
                        let frame = AudioFrame::parse(&bytes).expect("frame");
                        let _ = room.handle_audio(ParticipantId(u32::from(id)), frame, now);
                        now += Duration::from_millis(20);
                        tick(&mut room, now, &mut replaying, &mut last_sequence)?;
                    }
                }
                ReplayOp::Join(id) => {
                    let who = ParticipantId(u32::from(id));
                    if present.insert(who) {
                        let held = room.floor_holder().is_some();
                        room.add_participant(who, Mode::Listen).expect("join");
                        if let Some(behind) = room.replay_backlog(who) {
                            prop_assert!(held, "a replay with nothing on the air");
                            prop_assert!(behind >= Duration::from_millis(60));
                            replaying.insert(who);
                        }
                    }
                }
                ReplayOp::Leave(id) => {
                    let who = ParticipantId(u32::from(id));
                    if present.remove(&who) {
                        room.remove_participant(who).expect("present");
                        replaying.remove(&who);
                        last_sequence.remove(&who);
                    }
                }
            }
        }
        // Once the channel is quiet, every late joiner has caught up.
        if let Some(holder) = room.floor_holder() {
            room.release_floor(holder).expect("holder");
        }
        for _ in 0..400 {
            now += Duration::from_millis(20);
            tick(&mut room, now, &mut replaying, &mut last_sequence)?;
        }
        prop_assert!(replaying.is_empty(), "never caught up: {:?}", replaying);
        for who in &present {
            prop_assert_eq!(room.replay_backlog(*who), None);
        }
    }
}
