//! Messages from the server to a client, their payload objects, and their parser.

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantNames};

use super::client::RoomSettings;
use super::error::{ControlError, ErrorCode};
use super::format::AudioFormat;
use super::parse::{null_as_default, parse_tagged};
use super::vocab::{FloorEndReason, FloorPolicy, LeaveReason, Mode, RecordingEnd, Role};

/// A message from the server to a client.
///
/// As for [`ClientMessage`](super::ClientMessage), serde and strum each derive the `"type"` names
/// from the variant names, and a test checks that they agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, VariantNames)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ServerMessage {
    /// The `join` succeeded; audio flows from now on.
    Joined {
        /// This connection's participant id, unique within the room while it is joined.
        participant_id: u32,
        /// The room joined.
        room: String,
        /// The others already in the room (not including this participant).
        participants: Vec<ParticipantInfo>,
        /// Format of the audio the server sends: the client's own format from its `join`.
        format: AudioFormat,
        /// The room's push-to-talk floor.
        #[serde(default, deserialize_with = "null_as_default")]
        floor: FloorInfo,
        /// Secret to send as `resume` in a `join` after a dropped connection, to come back as
        /// the same participant. Omitted when the server keeps no one for resuming.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// This join resumed an earlier participant (the others saw no leave).
        #[serde(
            default,
            skip_serializing_if = "std::ops::Not::not",
            deserialize_with = "null_as_default"
        )]
        resumed: bool,
        /// Set when the join came during a push-to-talk transmission: the audio that follows
        /// replays that transmission from its start, played faster and without its pauses,
        /// and this is how far behind live it starts, in milliseconds. `caught_up` says when
        /// it is live again. Omitted when the audio is live from the start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replay_ms: Option<u64>,
    },
    /// Someone else joined the room.
    ParticipantJoined {
        /// Who joined.
        participant: ParticipantInfo,
    },
    /// Someone else left the room.
    ParticipantLeft {
        /// Id of the participant who left.
        participant_id: u32,
        /// Why they left.
        reason: LeaveReason,
    },
    /// Something the client did was rejected, or the connection is about to close.
    Error {
        /// Machine-readable error code.
        code: ErrorCode,
        /// Human-readable explanation; not stable, do not parse.
        message: String,
    },
    /// Reply to a `ping`.
    Pong {
        /// The `id` of the `ping`, omitted if it had none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A participant (possibly the receiver) changed mode.
    ModeChanged {
        /// Who.
        participant_id: u32,
        /// The new mode.
        mode: Mode,
    },
    /// A participant (possibly the receiver) was muted or unmuted, by itself or by a
    /// moderator's `mute`.
    ParticipantMuted {
        /// Who.
        participant_id: u32,
        /// Muted now or not.
        muted: bool,
        /// The moderator who did it (0: the server's operator, through the admin API);
        /// omitted when the participant did it itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<u32>,
    },
    /// A moderator's `mute_room`: the one message the room gets for it, in place of a
    /// `participant_muted` per member.
    RoomMuted {
        /// Whether the members listed are muted now or unmuted.
        muted: bool,
        /// The moderator who sent `mute_room`.
        by: u32,
        /// The members whose mute state changed, in ascending order; possibly empty.
        participant_ids: Vec<u32>,
    },
    /// A participant was granted the floor (sent to the whole room).
    FloorGranted {
        /// The new holder.
        participant_id: u32,
        /// Longest it may keep the floor in this turn, in ms (single policy; omitted in open
        /// rooms, where a grant is only an acknowledgement).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_talk_ms: Option<u64>,
    },
    /// The floor request was denied (sent to the asker only).
    FloorDenied {
        /// Who holds the floor.
        holder: u32,
    },
    /// The holder lost the floor (sent to the whole room).
    FloorReleased {
        /// The former holder.
        participant_id: u32,
        /// Why.
        reason: FloorEndReason,
        /// The moderator who preempted it, for `preempted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<u32>,
    },
    /// A participant started talking (from its decoded level, with hysteresis).
    TalkingStarted {
        /// Who.
        participant_id: u32,
    },
    /// A participant stopped talking.
    TalkingStopped {
        /// Who.
        participant_id: u32,
    },
    /// Sent to a participant whose `joined` had `replay_ms`: the replay has reached live, and
    /// from here on it hears the room as it happens.
    CaughtUp,
    /// A moderator set a participant's input gain.
    GainChanged {
        /// Whose input.
        participant_id: u32,
        /// The gain in dB.
        gain_db: i32,
        /// The moderator.
        by: u32,
    },
    /// A chat message, delivered to everyone in the room (the sender included) in the order the
    /// server received them.
    Chat {
        /// Room-wide message number: 1, 2, 3, ... in delivery order.
        id: u64,
        /// The sender's participant id.
        from: u32,
        /// The sender's name.
        name: String,
        /// The text.
        text: String,
        /// When the server received it: milliseconds since the Unix epoch.
        ts_ms: u64,
    },
    /// Answer to `room_info` and `create_room`.
    RoomInfo(RoomSummary),
    /// Answer to `list_rooms`: rooms sorted by name, at most [`MAX_LISTED_ROOMS`].
    Rooms {
        /// The rooms.
        rooms: Vec<RoomSummary>,
        /// More rooms exist than were listed.
        #[serde(
            default,
            deserialize_with = "null_as_default",
            skip_serializing_if = "std::ops::Not::not"
        )]
        truncated: bool,
    },
    /// The room is mixed by another node of the fleet: connect to `url` and send the `join`
    /// there (with `resume` set to `resume_token` when one is given). The server closes the
    /// connection after it, with [`close_code::REDIRECT`](super::close_code::REDIRECT).
    Redirect {
        /// The room concerned.
        room: String,
        /// Where to connect instead (a `ws://` or `wss://` URL).
        url: String,
        /// Why.
        reason: RedirectReason,
        /// For a participant moved with its room: the token that resumes it at `url` as the
        /// same participant (same id, mode, role, floor).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    /// The room's mix started or stopped being recorded to a file on the server (sent to the
    /// whole room, so everyone knows; the recorder is also in the roster, named `recorder`).
    Recording {
        /// Whether the room is being recorded now.
        recording: bool,
        /// The recording's file name (under the server's `--record-dir`).
        file: String,
        /// The moderator who started or stopped it; `None`: the server's operator, or the
        /// server itself (see `reason`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<u32>,
        /// Why it stopped (`recording` false only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<RecordingEnd>,
    },
}

/// Why a client is sent elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RedirectReason {
    /// Another node mixes the room (answer to `join`, `create_room` or `room_info`).
    OtherNode,
    /// This node is draining and has moved the room (with the participants in it).
    Moved,
    /// This node may no longer mix the room (its lease lapsed while the fleet's registry was
    /// unreachable, or another node took it over): join again at `url`, which finds where the
    /// room is now, or places it anew.
    LeaseLost,
}

impl RedirectReason {
    /// The reason's name on the wire.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Most rooms one `rooms` answer lists.
pub const MAX_LISTED_ROOMS: usize = 500;

impl ServerMessage {
    /// Every value of the `"type"` field a server message can have, in declaration order.
    pub const TYPES: &'static [&'static str] = <Self as VariantNames>::VARIANTS;

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// The value of this message's `"type"` field.
    pub fn type_name(&self) -> &'static str {
        self.into()
    }

    /// Serializes the message as a compact JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages have only string keys and no floats")
    }
}

/// A participant as described to the others in the room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id, unique within the room while joined.
    pub id: u32,
    /// Display name from its `join`.
    pub name: String,
    /// Whether it talks, uses push-to-talk or only listens.
    pub mode: Mode,
    /// What it may do.
    #[serde(default, deserialize_with = "null_as_default")]
    pub role: Role,
    /// Whether it is muted.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub muted: bool,
}

/// The floor state of a room, as announced in `joined`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FloorInfo {
    /// The room's policy.
    pub policy: FloorPolicy,
    /// Who holds the floor (single policy), if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<u32>,
}

/// One room in a `rooms` list or a `room_info` answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoomSummary {
    /// The room's settings, all fields present.
    #[serde(flatten)]
    pub settings: RoomSettings,
    /// Participants in it now.
    pub participants: u32,
}

/// Parses a server's text frame, for clients and tests.
///
/// Unlike [`parse_client_message`](super::parse_client_message) there is no size limit: a
/// `joined` listing a large room can exceed [`MAX_CONTROL_MESSAGE`](super::MAX_CONTROL_MESSAGE).
pub fn parse_server_message(text: &str) -> Result<ServerMessage, ControlError> {
    parse_tagged(text, ServerMessage::TYPES)
}
