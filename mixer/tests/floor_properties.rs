//! Property test of push-to-talk floor control: random sequences of requests (plain and
//! preempting), releases, departures, voice and time never leave two holders, never leave the
//! floor with someone who is gone or whose turn has run out, and the announced changes always
//! tell the room exactly who holds the floor.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mixer::engine::ParticipantId;
use mixer::engine::floor::{Floor, FloorChange, FloorConfig, FloorPolicy, FloorReply};
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
