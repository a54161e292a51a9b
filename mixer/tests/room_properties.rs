//! Property test of the engine's room against a model simple enough to be obviously right:
//! arbitrary joins, leaves, packets (valid, garbage, from strangers) and clock jumps never panic,
//! every tick hands exactly one frame to each participant present, and membership matches the
//! model.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mixer::engine::{EngineConfig, ParticipantId, Room};
use mixer_protocol::{AudioFrame, AudioHeader, AudioLevel, Flags, Mode};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Join(u8, bool),
    Leave(u8),
    Packet {
        who: u8,
        sequence: u16,
        garbage: bool,
    },
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<bool>()).prop_map(|(id, talk)| Op::Join(id, talk)),
        (0u8..6).prop_map(Op::Leave),
        (0u8..7, any::<u16>(), any::<bool>()).prop_map(|(who, sequence, garbage)| Op::Packet {
            who,
            sequence,
            garbage
        }),
        (0u16..200).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn room_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let t0 = Instant::now();
        let mut room = Room::new(EngineConfig::default(), t0).expect("room");
        let mut now = t0;
        let mut model: BTreeMap<u8, Mode> = BTreeMap::new();
        let mut talker = common::Talker::new(440.0, 0.2);
        let valid = talker.next_frame(true);
        for op in ops {
            match op {
                Op::Join(id, talk) => {
                    let mode = if talk { Mode::Talk } else { Mode::Listen };
                    let joined = room.add_participant(ParticipantId(u32::from(id)), mode).is_ok();
                    prop_assert_eq!(joined, !model.contains_key(&id));
                    model.entry(id).or_insert(mode);
                }
                Op::Leave(id) => {
                    let left = room.remove_participant(ParticipantId(u32::from(id))).is_some();
                    prop_assert_eq!(left, model.remove(&id).is_some());
                }
                Op::Packet { who, sequence, garbage } => {
                    let bytes: Vec<u8> = if garbage { vec![0xff, 0x03, 0x99, 0x42] } else { valid[9..].to_vec() };
                    let frame = AudioFrame {
                        header: AudioHeader {
                            flags: Flags::default(),
                            sequence,
                            timestamp: u32::from(sequence) * 960,
                            level: AudioLevel::new(true, 20),
                        },
                        payload: &bytes,
                    };
                    let accepted = room.handle_audio(ParticipantId(u32::from(who)), frame, now).is_ok();
                    prop_assert_eq!(accepted, model.get(&who) == Some(&Mode::Talk));
                }
                Op::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    while room.poll_timeout() <= now {
                        room.handle_timeout(now);
                        let mut seen = Vec::new();
                        while let Some(tx) = room.poll_transmit() {
                            prop_assert!(!tx.payload.is_empty());
                            seen.push(tx.to.0 as u8);
                        }
                        seen.sort_unstable();
                        let expected: Vec<u8> = model.keys().copied().collect();
                        prop_assert_eq!(seen, expected);
                        while room.poll_event().is_some() {}
                    }
                }
            }
            prop_assert_eq!(room.len(), model.len());
        }
    }
}
