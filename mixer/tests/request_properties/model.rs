//! The reference model: rooms, participants and suspended participants as the server should
//! have them, the messages each client should receive, and the model's own invariants.

use std::collections::{BTreeMap, BTreeSet};

use mixer::engine::EngineConfig;
use mixer_protocol::{
    AudioFormat, ErrorCode, FloorEndReason, FloorInfo, FloorPolicy, LeaveReason, Mode,
    ParticipantInfo, Role, RoomSettings, RoomSummary, ServerMessage,
};

use super::{LONG, MAX_PARTICIPANTS};

/// The model of one participant the mixer thread knows (live, or suspended).
#[derive(Debug, Clone)]
pub(super) struct Participant {
    pub(super) client: usize,
    pub(super) name: String,
    pub(super) room: String,
    pub(super) role: Role,
    pub(super) mode: Mode,
    pub(super) muted: bool,
    pub(super) muted_by: Option<u32>,
    /// Its connection is up (not suspended).
    pub(super) live: bool,
}

/// A participant kept for resuming.
#[derive(Debug, Clone)]
pub(super) struct Ghost {
    pub(super) id: u32,
    pub(super) room: String,
}

/// The model of one room in the directory, and of its slot on the mixer thread.
#[derive(Debug, Clone)]
pub(super) struct Room {
    pub(super) policy: FloorPolicy,
    pub(super) max_participants: u32,
    pub(super) max_talk_ms: u64,
    /// Memberships (live or suspended).
    pub(super) seats: u32,
    /// Who the mixer thread has in the room.
    pub(super) roster: BTreeSet<u32>,
    pub(super) holder: Option<u32>,
    /// Chat messages so far (the slot's counter; a new slot starts again).
    pub(super) chats: u64,
}

impl Room {
    pub(super) fn new(policy: FloorPolicy, max_participants: u32, max_talk_ms: u64) -> Room {
        Room {
            policy,
            max_participants,
            max_talk_ms,
            seats: 0,
            roster: BTreeSet::new(),
            holder: None,
            chats: 0,
        }
    }

    /// A room made by a join, on a server whose rooms have the floor `policy`.
    pub(super) fn defaults(policy: FloorPolicy) -> Room {
        Room::new(policy, MAX_PARTICIPANTS, LONG.as_millis() as u64)
    }

    pub(super) fn summary(&self, name: &str) -> RoomSummary {
        RoomSummary {
            settings: RoomSettings {
                room: name.to_owned(),
                floor_policy: Some(self.policy),
                max_participants: Some(self.max_participants),
                max_talkers: Some(EngineConfig::default().max_talkers as u32),
                normalise: Some(EngineConfig::default().normalise),
                max_talk_ms: Some(self.max_talk_ms),
                frame_ms: Some(20),
            },
            participants: self.seats,
        }
    }
}

/// The reference model.
#[derive(Debug, Default)]
pub(super) struct Model {
    /// The floor policy of rooms made by a join.
    pub(super) policy: FloorPolicy,
    pub(super) rooms: BTreeMap<String, Room>,
    pub(super) participants: BTreeMap<u32, Participant>,
    pub(super) ghosts: BTreeMap<String, Ghost>,
    /// Messages each client's connection should receive in this step.
    pub(super) expected: Vec<Vec<ServerMessage>>,
}

impl Model {
    pub(super) fn deliver(&mut self, to: u32, message: &ServerMessage) {
        if let Some(p) = self.participants.get(&to).filter(|p| p.live) {
            self.expected[p.client].push(message.clone());
        }
    }

    pub(super) fn broadcast(&mut self, room: &str, except: Option<u32>, message: &ServerMessage) {
        let roster: Vec<u32> = self.rooms[room].roster.iter().copied().collect();
        for id in roster.into_iter().filter(|id| Some(*id) != except) {
            self.deliver(id, message);
        }
    }

    pub(super) fn error(&mut self, to: u32, code: ErrorCode) {
        self.deliver(to, &ServerMessage::error(code, ""));
    }

    pub(super) fn info(&self, id: u32) -> ParticipantInfo {
        let p = &self.participants[&id];
        ParticipantInfo {
            id,
            name: p.name.clone(),
            mode: p.mode,
            role: p.role,
            muted: p.muted,
        }
    }

    pub(super) fn joined(&self, id: u32, resumed: bool) -> ServerMessage {
        let room_name = &self.participants[&id].room;
        let room = &self.rooms[room_name];
        ServerMessage::Joined {
            participant_id: id,
            room: room_name.clone(),
            participants: room
                .roster
                .iter()
                .filter(|other| **other != id)
                .map(|other| self.info(*other))
                .collect(),
            format: AudioFormat::opus_48k_mono_20ms(),
            floor: FloorInfo {
                policy: room.policy,
                holder: room.holder,
            },
            resume_token: None,
            resumed,
            replay_ms: None,
        }
    }

    /// The mixer thread takes `id` out of its room (a leave or a removal).
    pub(super) fn leave_roster(&mut self, id: u32, reason: LeaveReason) {
        let Some(p) = self.participants.remove(&id) else {
            return;
        };
        let room = self
            .rooms
            .get_mut(&p.room)
            .expect("a participant's room exists");
        room.roster.remove(&id);
        if room.holder == Some(id) {
            room.holder = None;
            let ended = ServerMessage::FloorReleased {
                participant_id: id,
                reason: FloorEndReason::Left,
                by: None,
            };
            self.broadcast(&p.room, None, &ended);
        }
        self.broadcast(
            &p.room,
            None,
            &ServerMessage::ParticipantLeft {
                participant_id: id,
                reason,
            },
        );
        let room = self.rooms.get_mut(&p.room).expect("still there");
        if room.roster.is_empty() {
            // The mixer thread frees the slot; a later join starts a new one.
            room.chats = 0;
        }
    }

    /// A membership gives its seat back; the room goes when its last seat does.
    pub(super) fn release_seat(&mut self, room: &str) {
        let entry = self.rooms.get_mut(room).expect("a seat's room exists");
        entry.seats -= 1;
        if entry.seats == 0 {
            assert!(entry.roster.is_empty(), "{room}: members without seats");
            self.rooms.remove(room);
        }
    }

    /// Invariants of the model itself, which every step's comparison carries over to the server.
    pub(super) fn check_invariants(&self) {
        for (name, room) in &self.rooms {
            assert!(
                room.roster.len() as u32 <= room.seats,
                "{name}: roster beyond seats"
            );
            assert!(
                room.seats <= room.max_participants,
                "{name}: over its limit"
            );
            if let Some(holder) = room.holder {
                assert!(room.roster.contains(&holder));
                assert_eq!(self.participants[&holder].mode, Mode::Ptt);
                assert_eq!(room.policy, FloorPolicy::Single);
            }
        }
        for p in self.participants.values() {
            if p.role == Role::Listener {
                assert_eq!(p.mode, Mode::Listen, "a listener became a talker");
            }
        }
    }
}

/// Whether `role` may use `mode` under `policy` (the server's rule, restated).
pub(super) fn mode_allowed(role: Role, mode: Mode, policy: FloorPolicy) -> bool {
    !matches!(
        (role, mode, policy),
        (Role::Listener, Mode::Talk | Mode::Ptt, _)
            | (Role::Speaker, Mode::Talk, FloorPolicy::Single)
    )
}
