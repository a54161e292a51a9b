//! Property test of the engine's room against a model simple enough to be obviously right:
//! arbitrary joins, leaves, packets (valid, garbage, from strangers) and clock jumps never panic,
//! membership matches the model, and every tick hands each participant present exactly one frame
//! (with `send_silence`) or at most one (downlink DTX: a missing frame is counted as paused, and
//! the next frame after a pause carries the marker bit).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
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
    fn room_matches_model(
        ops in proptest::collection::vec(op(), 1..60),
        send_silence in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let config = EngineConfig { send_silence, ..EngineConfig::default() };
        let mut room = Room::new(config, t0).expect("room");
        let mut now = t0;
        let mut model: BTreeMap<u8, Mode> = BTreeMap::new();
        // Ticks each participant has been present for, and who must see a marker next.
        let mut ticks_present: BTreeMap<u8, u64> = BTreeMap::new();
        let mut run_starts: BTreeSet<u8> = BTreeSet::new();
        let mut talker = common::Talker::new(440.0, 0.2);
        let valid = talker.next_frame(true);
        for op in ops {
            match op {
                Op::Join(id, talk) => {
                    let mode = if talk { Mode::Talk } else { Mode::Listen };
                    let joined = room.add_participant(ParticipantId(u32::from(id)), mode).is_ok();
                    prop_assert_eq!(joined, !model.contains_key(&id));
                    if joined {
                        ticks_present.insert(id, 0);
                        run_starts.insert(id);
                    }
                    model.entry(id).or_insert(mode);
                }
                Op::Leave(id) => {
                    let left = room.remove_participant(ParticipantId(u32::from(id))).is_some();
                    prop_assert_eq!(left, model.remove(&id).is_some());
                    ticks_present.remove(&id);
                    run_starts.remove(&id);
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
                            let id = tx.to.0 as u8;
                            prop_assert_eq!(tx.header.flags.marker(), run_starts.remove(&id));
                            seen.push(id);
                        }
                        seen.sort_unstable();
                        let expected: Vec<u8> = model.keys().copied().collect();
                        if send_silence {
                            prop_assert_eq!(&seen, &expected);
                        } else {
                            prop_assert!(seen.windows(2).all(|w| w[0] < w[1]));
                            prop_assert!(seen.iter().all(|id| model.contains_key(id)));
                        }
                        for (id, ticks) in &mut ticks_present {
                            *ticks += 1;
                            if seen.binary_search(id).is_err() {
                                run_starts.insert(*id);
                            }
                            // Every tick is accounted for: a frame sent or a frame paused.
                            let stats = room
                                .participant_stats(ParticipantId(u32::from(*id)))
                                .expect("present");
                            prop_assert_eq!(stats.frames_out + stats.frames_paused, *ticks);
                        }
                        while room.poll_event().is_some() {}
                    }
                }
            }
            prop_assert_eq!(room.len(), model.len());
        }
    }
}
