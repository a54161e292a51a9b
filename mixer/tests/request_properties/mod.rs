//! Stateful property test of the server's request handling: random sequences of control
//! operations from several clients — joins with any role and mode, leaves, mutes, moderation,
//! the floor, mode changes, chat, room creation and queries, dropped connections and resumes
//! with right and wrong tokens — driven through the real [`MixerPool`] and mixer thread, and
//! checked after every step against a reference model simple enough to trust at a glance.
//!
//! After each step every client's outbox must hold exactly the messages the model predicts (in
//! order; error texts and resume tokens aside), every refusal the pool returns must be the one
//! predicted, and every room's occupancy must be the model's live plus suspended members. At the
//! end everyone leaves and no seat may be left behind.
//!
//! The harness plays the part of `connection.rs` for what reaches the pool (a dropped connection
//! suspends its membership; one the server closed leaves). The connection's own checks before
//! the pool (not joined, already joined, budgets) are covered by the end-to-end tests.
//!
//! One mixer thread, so its commands are handled in the order they were sent: a barrier request
//! from a probe participant in a room of its own, answered only to the probe, tells when every
//! earlier command has been handled. A dead mixer thread shows as a barrier that never returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mixer::engine::floor::FloorConfig;
use mixer::engine::{EngineConfig, ParticipantId};
use mixer::server::membership::{Identity, Joiner, Membership};
use mixer::server::metrics::Metrics;
use mixer::server::outbox::{Outbox, Outgoing};
use mixer::server::pool::{MixerPool, PoolConfig};
use mixer::server::requests::RoomRequest;
use mixer_protocol::{
    AudioFormat, ErrorCode, FloorEndReason, FloorPolicy, LeaveReason, Mode, Role, RoomSettings,
    RoomSummary, ServerMessage, parse_server_message,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use self::model::{Ghost, Model, Participant, Room, mode_allowed};

mod model;

/// Rooms the clients use: more than `MAX_ROOMS` allows at once besides the probe's.
const ROOMS: [&str; 3] = ["r0", "r1", "r2"];
const CLIENTS: usize = 4;
/// Rooms the server allows: the probe's and two of [`ROOMS`].
const MAX_ROOMS: usize = 3;
/// Seats per room: fewer than the clients, so rooms fill up.
const MAX_PARTICIPANTS: u32 = 3;
const PROBE_ROOM: &str = "probe";
/// A participant id nobody has.
const NOBODY: u32 = 999_999;
/// Long enough that no floor is revoked for talk time or silence during a case: the test has no
/// audio and no clock of its own.
const LONG: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
enum Target {
    /// The asker itself (`participant_id` omitted).
    Own,
    /// Another client's current participant (live or suspended), or nobody if it has none.
    Client(usize),
    /// An id nobody has.
    Nobody,
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        client: usize,
        room: usize,
        role: Role,
        mode: Option<Mode>,
    },
    Leave(usize),
    Mute {
        client: usize,
        target: Target,
        muted: bool,
    },
    MuteRoom {
        client: usize,
        muted: bool,
    },
    SetGain {
        client: usize,
        target: Target,
        gain_db: i32,
    },
    Remove {
        client: usize,
        target: Target,
    },
    FloorRequest {
        client: usize,
        preempt: bool,
    },
    FloorRelease(usize),
    SetMode {
        client: usize,
        mode: Mode,
    },
    Chat(usize),
    CreateRoom {
        room: usize,
        policy: Option<FloorPolicy>,
        max_participants: Option<u32>,
    },
    RoomInfo(usize),
    ListRooms,
    /// The client's connection drops: its participant is kept for resuming.
    Drop(usize),
    /// A new connection of the client resumes with its last token (or a made-up one), in that
    /// participant's room (or another).
    Resume {
        client: usize,
        right_token: bool,
        right_room: bool,
    },
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Speaker),
        Just(Role::Listener),
        Just(Role::Moderator)
    ]
}

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Talk), Just(Mode::Ptt), Just(Mode::Listen)]
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => Just(Target::Own),
        4 => (0..CLIENTS).prop_map(Target::Client),
        1 => Just(Target::Nobody),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        4 => (client.clone(), 0..ROOMS.len(), arb_role(), proptest::option::of(arb_mode()))
            .prop_map(|(client, room, role, mode)| Op::Join { client, room, role, mode }),
        1 => client.clone().prop_map(Op::Leave),
        2 => (client.clone(), arb_target(), any::<bool>())
            .prop_map(|(client, target, muted)| Op::Mute { client, target, muted }),
        1 => (client.clone(), any::<bool>()).prop_map(|(client, muted)| Op::MuteRoom { client, muted }),
        1 => (client.clone(), arb_target(), -25..=25i32)
            .prop_map(|(client, target, gain_db)| Op::SetGain { client, target, gain_db }),
        1 => (client.clone(), arb_target()).prop_map(|(client, target)| Op::Remove { client, target }),
        2 => (client.clone(), any::<bool>())
            .prop_map(|(client, preempt)| Op::FloorRequest { client, preempt }),
        1 => client.clone().prop_map(Op::FloorRelease),
        2 => (client.clone(), arb_mode()).prop_map(|(client, mode)| Op::SetMode { client, mode }),
        1 => client.clone().prop_map(Op::Chat),
        1 => (
            0..ROOMS.len(),
            proptest::option::of(prop_oneof![Just(FloorPolicy::Open), Just(FloorPolicy::Single)]),
            proptest::option::of(0..=MAX_PARTICIPANTS + 1),
        )
            .prop_map(|(room, policy, max_participants)| Op::CreateRoom {
                room,
                policy,
                max_participants,
            }),
        1 => (0..ROOMS.len()).prop_map(Op::RoomInfo),
        1 => Just(Op::ListRooms),
        1 => client.clone().prop_map(Op::Drop),
        2 => (client, any::<bool>(), prop::bool::weighted(0.8)).prop_map(
            |(client, right_token, right_room)| Op::Resume { client, right_token, right_room }
        ),
    ]
}

proptest! {
    // Fixed seed and a bounded number of cases: the same few seconds on every run.
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(13),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_request_gets_the_answer_the_model_predicts(
        policy in prop_oneof![Just(FloorPolicy::Open), Just(FloorPolicy::Single)],
        ops in proptest::collection::vec(arb_op(), 1..80),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        // Suspending a membership starts its resume-window timer on the runtime.
        let _context = runtime.enter();
        let mut case = Case::start(policy);
        for (step, op) in ops.into_iter().enumerate() {
            let op = case.aim(op);
            case.apply(&op, step as u64);
            case.settle();
            case.check(&op);
        }
        case.finish();
    }
}

/// The one place a [`Joiner`] is built, so a change to what a join carries changes this only.
///
/// Every join is a new identity: one seat per identity (a rejoin replacing its ghost) is
/// covered by the real-socket tests in `e2e::access`, and this model leaves it out.
fn joiner(name: &str, role: Role, mode: Option<Mode>, outbox: Arc<Outbox>) -> Joiner {
    static JOINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = JOINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Joiner {
        identity: Identity::Token(format!("{name}#{n}").into()),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        name: name.to_owned(),
        mode,
        role,
        format: AudioFormat::opus_48k_mono_20ms(),
        outbox,
    }
}

fn new_outbox() -> Arc<Outbox> {
    // Audio frames from the rooms' ticks are drained with everything else; a slow-consumer
    // verdict must never end a client here.
    Arc::new(Outbox::new(8, u32::MAX))
}

/// The pool under test; rooms not made by `create_room` have the floor `policy`.
fn pool_config(policy: FloorPolicy) -> PoolConfig {
    PoolConfig {
        threads: 1,
        max_rooms: MAX_ROOMS,
        engine: EngineConfig {
            max_participants: MAX_PARTICIPANTS as usize,
            floor: FloorConfig {
                policy,
                max_talk: LONG,
                silence_timeout: LONG,
            },
            ..EngineConfig::default()
        },
        resumable: true,
    }
}

/// A client as the harness drives it: at most one connection, with its membership.
#[derive(Default)]
struct Client {
    outbox: Option<Arc<Outbox>>,
    membership: Option<Membership>,
    /// The resume token of its current (live) participant, from its `joined`.
    token: Option<String>,
    /// The token of the last participant it left behind when its connection dropped.
    ghost: Option<String>,
}

struct Case {
    pool: MixerPool,
    probe: Membership,
    probe_outbox: Arc<Outbox>,
    clients: Vec<Client>,
    model: Model,
}

impl Case {
    fn start(policy: FloorPolicy) -> Case {
        let pool = MixerPool::start(pool_config(policy), Arc::new(Metrics::new())).expect("pool");
        let probe_outbox = new_outbox();
        let probe = pool
            .join(
                PROBE_ROOM,
                joiner("probe", Role::Listener, None, probe_outbox.clone()),
                None,
            )
            .expect("the probe joins");
        let mut model = Model {
            policy,
            expected: vec![Vec::new(); CLIENTS],
            ..Model::default()
        };
        let mut probe_room = Room::defaults(policy);
        probe_room.seats = 1;
        model.rooms.insert(PROBE_ROOM.to_owned(), probe_room);
        let mut case = Case {
            pool,
            probe,
            probe_outbox,
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            model,
        };
        case.settle();
        case
    }

    /// The id a target names (`None`: the asker itself).
    fn target_id(&self, target: Target) -> Option<u32> {
        match target {
            Target::Own => None,
            Target::Nobody => Some(NOBODY),
            Target::Client(other) => {
                // Its live participant if it has one, else one it left behind.
                let mine = |live: bool| {
                    self.model
                        .participants
                        .iter()
                        .find(|(_, p)| p.client == other && p.live == live)
                        .map(|(id, _)| *id)
                };
                Some(mine(true).or_else(|| mine(false)).unwrap_or(NOBODY))
            }
        }
    }

    /// Points `op` at a client it applies to: a request at the `client`-th of those in a room,
    /// a join or resume at the `client`-th of those not in one. Most random ops then do
    /// something instead of being skipped, and shrinking still works on plain indices.
    fn aim(&self, mut op: Op) -> Op {
        let (client, joined) = match &mut op {
            Op::Join { client, .. } | Op::Resume { client, .. } => (client, false),
            Op::Leave(client)
            | Op::FloorRelease(client)
            | Op::Chat(client)
            | Op::Drop(client)
            | Op::Mute { client, .. }
            | Op::MuteRoom { client, .. }
            | Op::SetGain { client, .. }
            | Op::Remove { client, .. }
            | Op::FloorRequest { client, .. }
            | Op::SetMode { client, .. } => (client, true),
            Op::CreateRoom { .. } | Op::RoomInfo(_) | Op::ListRooms => return op,
        };
        let fitting: Vec<usize> = (0..CLIENTS)
            .filter(|c| self.clients[*c].membership.is_some() == joined)
            .collect();
        if !fitting.is_empty() {
            *client = fitting[*client % fitting.len()];
        }
        op
    }

    /// `client`'s live participant, if it has one.
    fn asker(&self, client: usize) -> Option<(u32, Participant)> {
        let membership = self.clients[client].membership.as_ref()?;
        let id = membership.id().0;
        Some((id, self.model.participants[&id].clone()))
    }

    fn request(&self, client: usize, request: RoomRequest) {
        let membership = self.clients[client].membership.as_ref().expect("joined");
        membership
            .request(request, Instant::now())
            .expect("the mixer thread takes the request");
    }

    fn apply(&mut self, op: &Op, step: u64) {
        match *op {
            Op::Join {
                client,
                room,
                role,
                mode,
            } => self.join(client, ROOMS[room], role, mode),
            Op::Leave(client) => {
                let Some((id, p)) = self.asker(client) else {
                    return;
                };
                let membership = self.clients[client].membership.take().expect("joined");
                membership.leave(LeaveReason::Left);
                self.clients[client].outbox = None;
                self.model.leave_roster(id, LeaveReason::Left);
                self.model.release_seat(&p.room);
            }
            Op::Mute {
                client,
                target,
                muted,
            } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                let target_id = self.target_id(target);
                self.request(
                    client,
                    RoomRequest::Mute {
                        target: target_id.map(ParticipantId),
                        muted,
                    },
                );
                let target = target_id.unwrap_or(from);
                let moderator = asker.role == Role::Moderator;
                if target != from && !moderator {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                if !self.model.rooms[&asker.room].roster.contains(&target) {
                    return self.model.error(from, ErrorCode::UnknownParticipant);
                }
                let subject = &self.model.participants[&target];
                if !muted && target == from && !moderator && subject.muted_by.is_some() {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                let by = (target != from).then_some(from);
                if self.mark_muted(target, muted, by) {
                    let message = ServerMessage::ParticipantMuted {
                        participant_id: target,
                        muted,
                        by,
                    };
                    self.model.broadcast(&asker.room, None, &message);
                }
            }
            Op::MuteRoom { client, muted } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                self.request(client, RoomRequest::MuteRoom { muted });
                if asker.role != Role::Moderator {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                let targets: Vec<u32> = self.model.rooms[&asker.room]
                    .roster
                    .iter()
                    .copied()
                    .filter(|id| self.model.participants[id].role != Role::Moderator)
                    .collect();
                let changed: Vec<u32> = targets
                    .into_iter()
                    .filter(|&id| self.mark_muted(id, muted, Some(from)))
                    .collect();
                let empty = changed.is_empty();
                let message = ServerMessage::RoomMuted {
                    muted,
                    by: from,
                    participant_ids: changed,
                };
                if empty {
                    self.model.deliver(from, &message);
                } else {
                    self.model.broadcast(&asker.room, None, &message);
                }
            }
            Op::SetGain {
                client,
                target,
                gain_db,
            } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                let target = self.target_id(target).unwrap_or(from);
                self.request(
                    client,
                    RoomRequest::SetGain {
                        target: ParticipantId(target),
                        gain_db,
                    },
                );
                if asker.role != Role::Moderator {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                if gain_db.abs() > 20 {
                    return self.model.error(from, ErrorCode::InvalidGain);
                }
                if !self.model.rooms[&asker.room].roster.contains(&target) {
                    return self.model.error(from, ErrorCode::UnknownParticipant);
                }
                let message = ServerMessage::GainChanged {
                    participant_id: target,
                    gain_db,
                    by: from,
                };
                self.model.broadcast(&asker.room, None, &message);
            }
            Op::Remove { client, target } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                let target = self.target_id(target).unwrap_or(from);
                self.request(
                    client,
                    RoomRequest::Remove {
                        target: ParticipantId(target),
                    },
                );
                if asker.role != Role::Moderator {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                if !self.model.rooms[&asker.room].roster.contains(&target) {
                    return self.model.error(from, ErrorCode::UnknownParticipant);
                }
                self.model.error(target, ErrorCode::Removed);
                let removed = self.model.participants[&target].clone();
                self.model.leave_roster(target, LeaveReason::Removed);
                if removed.live {
                    // Its connection sees its outbox closed and leaves (see `settle`).
                    self.model.release_seat(&removed.room);
                } else {
                    // Waiting to resume: the pool hears of the removal from the mixer thread
                    // and lets the ghost go (its seat with it) at its next lock, which comes
                    // before any later request is answered.
                    self.model.ghosts.retain(|_, g| g.id != target);
                    self.model.release_seat(&removed.room);
                }
            }
            Op::FloorRequest { client, preempt } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                self.request(client, RoomRequest::FloorRequest { preempt });
                if preempt && asker.role != Role::Moderator {
                    return self.model.error(from, ErrorCode::Forbidden);
                }
                if asker.mode != Mode::Ptt {
                    return self.model.error(from, ErrorCode::NotPtt);
                }
                let room = &self.model.rooms[&asker.room];
                let max_talk_ms = Some(room.max_talk_ms);
                if room.policy == FloorPolicy::Open {
                    let granted = ServerMessage::FloorGranted {
                        participant_id: from,
                        max_talk_ms: None,
                    };
                    return self.model.deliver(from, &granted);
                }
                let granted = ServerMessage::FloorGranted {
                    participant_id: from,
                    max_talk_ms,
                };
                match room.holder {
                    Some(holder) if holder == from => self.model.deliver(from, &granted),
                    Some(holder) if !preempt => {
                        self.model
                            .deliver(from, &ServerMessage::FloorDenied { holder });
                    }
                    holder => {
                        if let Some(holder) = holder {
                            let ended = ServerMessage::FloorReleased {
                                participant_id: holder,
                                reason: FloorEndReason::Preempted,
                                by: Some(from),
                            };
                            self.model.broadcast(&asker.room, None, &ended);
                        }
                        self.model.rooms.get_mut(&asker.room).expect("room").holder = Some(from);
                        self.model.broadcast(&asker.room, None, &granted);
                    }
                }
            }
            Op::FloorRelease(client) => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                self.request(client, RoomRequest::FloorRelease);
                if asker.mode != Mode::Ptt {
                    return self.model.error(from, ErrorCode::NotPtt);
                }
                let room = self.model.rooms.get_mut(&asker.room).expect("room");
                if room.holder == Some(from) {
                    room.holder = None;
                    let ended = ServerMessage::FloorReleased {
                        participant_id: from,
                        reason: FloorEndReason::Released,
                        by: None,
                    };
                    self.model.broadcast(&asker.room, None, &ended);
                }
            }
            Op::SetMode { client, mode } => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                self.request(client, RoomRequest::SetMode(mode));
                let policy = self.model.rooms[&asker.room].policy;
                if !mode_allowed(asker.role, mode, policy) {
                    return self.model.error(from, ErrorCode::ModeNotAllowed);
                }
                let changed = ServerMessage::ModeChanged {
                    participant_id: from,
                    mode,
                };
                if asker.mode == mode {
                    return self.model.deliver(from, &changed);
                }
                self.model.participants.get_mut(&from).expect("asker").mode = mode;
                self.model.broadcast(&asker.room, None, &changed);
                let room = self.model.rooms.get_mut(&asker.room).expect("room");
                if mode != Mode::Ptt && room.holder == Some(from) {
                    room.holder = None;
                    let ended = ServerMessage::FloorReleased {
                        participant_id: from,
                        reason: FloorEndReason::Left,
                        by: None,
                    };
                    self.model.broadcast(&asker.room, None, &ended);
                }
            }
            Op::Chat(client) => {
                let Some((from, asker)) = self.asker(client) else {
                    return;
                };
                let text = format!("hello from {client} at step {step}");
                self.request(
                    client,
                    RoomRequest::Chat {
                        text: text.clone(),
                        ts_ms: step,
                    },
                );
                let room = self.model.rooms.get_mut(&asker.room).expect("room");
                room.chats += 1;
                let message = ServerMessage::Chat {
                    id: room.chats,
                    from,
                    name: asker.name.clone(),
                    text,
                    ts_ms: step,
                };
                self.model.broadcast(&asker.room, None, &message);
            }
            Op::CreateRoom {
                room,
                policy,
                max_participants,
            } => {
                let name = ROOMS[room];
                let settings = RoomSettings {
                    room: name.to_owned(),
                    floor_policy: policy,
                    max_participants,
                    ..RoomSettings::default()
                };
                let result = self.pool.create_room(&settings);
                let expected = if max_participants.is_some_and(|n| n == 0 || n > MAX_PARTICIPANTS) {
                    Err(ErrorCode::InvalidSettings)
                } else if self.model.rooms.contains_key(name) {
                    Err(ErrorCode::RoomExists)
                } else if self.model.rooms.len() >= MAX_ROOMS {
                    Err(ErrorCode::ServerFull)
                } else {
                    let defaults = Room::defaults(self.model.policy);
                    let created = Room::new(
                        policy.unwrap_or(defaults.policy),
                        max_participants.unwrap_or(defaults.max_participants),
                        defaults.max_talk_ms,
                    );
                    let summary = created.summary(name);
                    self.model.rooms.insert(name.to_owned(), created);
                    Ok(summary)
                };
                assert_eq!(result.map_err(|e| e.code()), expected, "create_room {name}");
            }
            Op::RoomInfo(room) => {
                let name = ROOMS[room];
                let expected = self.model.rooms.get(name).map(|r| r.summary(name));
                assert_eq!(self.pool.room_info(name), expected, "room_info {name}");
            }
            Op::ListRooms => {
                let expected: Vec<RoomSummary> = self
                    .model
                    .rooms
                    .iter()
                    .map(|(name, room)| room.summary(name))
                    .collect();
                assert_eq!(self.pool.list_rooms(), (expected, false), "list_rooms");
            }
            Op::Drop(client) => {
                let Some((id, p)) = self.asker(client) else {
                    return;
                };
                let token = self.clients[client].token.take().expect("a resume token");
                let membership = self.clients[client].membership.take().expect("joined");
                membership.suspend(LONG, None);
                self.clients[client].outbox = None;
                self.clients[client].ghost = Some(token.clone());
                self.model.participants.get_mut(&id).expect("live").live = false;
                let ghost = Ghost { id, room: p.room };
                self.model.ghosts.insert(token, ghost);
            }
            Op::Resume {
                client,
                right_token,
                right_room,
            } => {
                if self.clients[client].membership.is_some() {
                    return;
                }
                let known = self.clients[client].ghost.clone();
                let token = match (&known, right_token) {
                    (Some(token), true) => token.clone(),
                    _ => "0123456789abcdef0123456789abcdef".to_owned(),
                };
                let ghost_room = known
                    .as_ref()
                    .and_then(|t| self.model.ghosts.get(t))
                    .map_or(ROOMS[0], |g| g.room.as_str())
                    .to_owned();
                let room = if right_room {
                    ghost_room
                } else {
                    ROOMS
                        .iter()
                        .find(|r| **r != ghost_room)
                        .expect("another room")
                        .to_string()
                };
                self.resume(client, &token, &room);
            }
        }
    }

    fn join(&mut self, client: usize, room: &str, role: Role, mode: Option<Mode>) {
        if self.clients[client].membership.is_some() {
            return;
        }
        let name = format!("client {client}");
        let outbox = new_outbox();
        let result = self
            .pool
            .join(room, joiner(&name, role, mode, outbox.clone()), None);
        let entry = self.model.rooms.get(room).cloned();
        let config = entry
            .clone()
            .unwrap_or_else(|| Room::defaults(self.model.policy));
        let mode = mode.unwrap_or(match (role, config.policy) {
            (Role::Listener, _) => Mode::Listen,
            (Role::Speaker, FloorPolicy::Single) => Mode::Ptt,
            _ => Mode::Talk,
        });
        let refusal = if !mode_allowed(role, mode, config.policy) {
            Some(ErrorCode::ModeNotAllowed)
        } else if entry.is_some_and(|e| e.seats >= e.max_participants) {
            Some(ErrorCode::RoomFull)
        } else if !self.model.rooms.contains_key(room) && self.model.rooms.len() >= MAX_ROOMS {
            Some(ErrorCode::ServerFull)
        } else {
            None
        };
        let membership = match (result, refusal) {
            (Err(refused), Some(code)) => return assert_eq!(refused.code(), code, "join {room}"),
            (Ok(membership), None) => membership,
            (result, refusal) => panic!(
                "join {room}: got {:?}, model says {refusal:?}",
                result.err()
            ),
        };
        let id = membership.id().0;
        let entry = self.model.rooms.entry(room.to_owned()).or_insert(config);
        entry.seats += 1;
        entry.roster.insert(id);
        self.model.participants.insert(
            id,
            Participant {
                client,
                name,
                room: room.to_owned(),
                role,
                mode,
                muted: false,
                muted_by: None,
                live: true,
            },
        );
        let joined = self.model.joined(id, false);
        self.model.deliver(id, &joined);
        let info = self.model.info(id);
        self.model.broadcast(
            room,
            Some(id),
            &ServerMessage::ParticipantJoined { participant: info },
        );
        self.clients[client].outbox = Some(outbox);
        self.clients[client].membership = Some(membership);
    }

    fn resume(&mut self, client: usize, token: &str, room: &str) {
        let outbox = new_outbox();
        let format = AudioFormat::opus_48k_mono_20ms();
        let result = self.pool.resume(token, room, &format, None, outbox.clone());
        let ghost = self
            .model
            .ghosts
            .get(token)
            .filter(|g| g.room == room)
            .cloned();
        let (membership, ghost) = match (result, ghost) {
            (None, None) => return,
            (Some(membership), Some(ghost)) => (membership, ghost),
            (result, ghost) => panic!(
                "resume in {room}: got {:?}, model has {ghost:?}",
                result.map(|m| m.id())
            ),
        };
        assert_eq!(membership.id().0, ghost.id, "resumed as someone else");
        self.model.ghosts.remove(token);
        if self.clients[client].ghost.as_deref() == Some(token) {
            self.clients[client].ghost = None;
        }
        self.clients[client].outbox = Some(outbox);
        self.clients[client].membership = Some(membership);
        self.clients[client].token = Some(token.to_owned());
        let p = self.model.participants.get_mut(&ghost.id).expect("a ghost");
        p.live = true;
        p.client = client;
        let joined = self.model.joined(ghost.id, true);
        self.model.deliver(ghost.id, &joined);
    }

    /// Mutes or unmutes `id` in the model; returns whether its state changed.
    fn mark_muted(&mut self, id: u32, muted: bool, by: Option<u32>) -> bool {
        let p = self.model.participants.get_mut(&id).expect("in the room");
        if p.muted == muted {
            return false;
        }
        p.muted = muted;
        p.muted_by = if muted { by } else { None };
        true
    }

    /// Waits until the mixer thread has handled every command sent so far, then lets every
    /// connection the server closed leave, as `connection.rs` does.
    fn settle(&mut self) {
        self.barrier();
        for client in &mut self.clients {
            let closed = client.outbox.as_ref().is_some_and(|o| o.closed().is_some());
            if closed && let Some(membership) = client.membership.take() {
                membership.leave(LeaveReason::Disconnected);
            }
        }
    }

    fn barrier(&self) {
        self.probe
            .request(RoomRequest::SetMode(Mode::Listen), Instant::now())
            .expect("the mixer thread takes the barrier");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut items = Vec::new();
        loop {
            self.probe_outbox.drain(&mut items);
            let answered = items.drain(..).any(|item| match item {
                Outgoing::Control(text) => {
                    // The probe hears its own `joined` once, then only the barrier's answers.
                    let message = parse_server_message(text.as_str()).expect("server JSON");
                    match message {
                        ServerMessage::ModeChanged { .. } => true,
                        ServerMessage::Joined { .. } => false,
                        other => panic!("the probe heard {other:?}"),
                    }
                }
                Outgoing::Audio(_) | Outgoing::Raw(_) => false,
            });
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the mixer thread did not answer within 10 s (dead or stuck)"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Compares what every client received with the model, and the rooms' occupancy.
    fn check(&mut self, op: &Op) {
        for (index, client) in self.clients.iter_mut().enumerate() {
            let expected = std::mem::take(&mut self.model.expected[index]);
            let mut received = Vec::new();
            if let Some(outbox) = &client.outbox {
                let mut items = Vec::new();
                outbox.drain(&mut items);
                for item in items {
                    let Outgoing::Control(text) = item else {
                        continue;
                    };
                    let message = parse_server_message(text.as_str()).expect("server JSON");
                    received.push(normalise(message, &mut client.token));
                }
            }
            if client.membership.is_none() {
                client.outbox = None;
                client.token = None;
            }
            assert_eq!(received, expected, "client {index} after {op:?}");
        }
        for name in ROOMS.iter().copied().chain([PROBE_ROOM]) {
            let expected = self.model.rooms.get(name).map(|r| r.summary(name));
            assert_eq!(self.pool.room_info(name), expected, "{name} after {op:?}");
        }
        self.model.check_invariants();
    }

    /// Everyone leaves: live participants, then every suspended one (resumed first, as only a
    /// resume or the end of its window lets one go); no seat may be left behind.
    fn finish(mut self) {
        for client in 0..CLIENTS {
            if let Some(membership) = self.clients[client].membership.take() {
                membership.leave(LeaveReason::Left);
            }
        }
        let tokens: Vec<(String, String)> = self
            .model
            .ghosts
            .iter()
            .map(|(token, ghost)| (token.clone(), ghost.room.clone()))
            .collect();
        for (token, room) in tokens {
            let format = AudioFormat::opus_48k_mono_20ms();
            let membership = self
                .pool
                .resume(&token, &room, &format, None, new_outbox())
                .expect("every suspended participant can be resumed");
            membership.leave(LeaveReason::Left);
        }
        self.barrier();
        self.probe.leave(LeaveReason::Left);
        // What is left: rooms made by create_room that nobody joined, and nothing else.
        let (rooms, truncated) = self.pool.list_rooms();
        assert!(!truncated);
        for room in &rooms {
            assert_eq!(
                room.participants, 0,
                "{} kept seats after everyone left",
                room.settings.room
            );
            assert!(
                self.model
                    .rooms
                    .get(&room.settings.room)
                    .is_some_and(|r| r.seats == 0),
                "{} was not an unjoined created room",
                room.settings.room
            );
        }
        self.pool.shutdown();
    }
}

/// A received message in the model's terms: error texts dropped (the model predicts codes), the
/// resume token taken out of `joined` (kept in `token`) and the replay backlog, which depends
/// on the wall clock, cleared.
fn normalise(message: ServerMessage, token: &mut Option<String>) -> ServerMessage {
    match message {
        ServerMessage::Error { code, .. } => ServerMessage::error(code, ""),
        ServerMessage::Joined {
            participant_id,
            room,
            participants,
            format,
            floor,
            resume_token,
            resumed,
            replay_ms: _,
        } => {
            let issued = resume_token.expect("a resumable server issues a resume token");
            assert!(issued.len() == 32 && issued.bytes().all(|b| b.is_ascii_hexdigit()));
            *token = Some(issued);
            ServerMessage::Joined {
                participant_id,
                room,
                participants,
                format,
                floor,
                resume_token: None,
                resumed,
                replay_ms: None,
            }
        }
        other => other,
    }
}
