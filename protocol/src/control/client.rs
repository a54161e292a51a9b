//! Messages from a client to the server, and their parser.

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantNames};

use super::error::ControlError;
use super::format::AudioFormat;
use super::parse::{null_as_default, parse_tagged};
use super::validate::MAX_CONTROL_MESSAGE;
use super::vocab::{FloorPolicy, Mode, Role};

/// A message from a client to the server.
///
/// The `"type"` names come from the variant names twice, by serde (`rename_all`) for the wire and
/// by strum (`serialize_all`) for [`ClientMessage::TYPES`] and [`ClientMessage::type_name`]; a
/// test checks that they agree for every variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, VariantNames)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ClientMessage {
    /// Join a room; answered with `joined` or an `error`.
    Join(JoinRequest),
    /// Leave the current room; the connection stays open and may join again.
    Leave,
    /// Application-level ping, answered with a `pong` echoing `id`.
    Ping {
        /// Opaque value echoed in the `pong`, for matching replies to requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Change this participant's mode without rejoining; the room gets `mode_changed`.
    SetMode {
        /// The new mode.
        mode: Mode,
    },
    /// Mute or unmute a participant: oneself, or (moderators only) someone else. The room gets
    /// `participant_muted`.
    Mute {
        /// Whom to mute; omitted = oneself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant_id: Option<u32>,
        /// Mute (`true`) or unmute (`false`).
        muted: bool,
    },
    /// Moderators only: mute or unmute everyone in the room but the moderators. The room gets
    /// one `room_muted` listing whose state changed.
    MuteRoom {
        /// Mute (`true`) or unmute (`false`).
        muted: bool,
    },
    /// Push-to-talk: ask for the floor; answered with `floor_granted` (to the room) or
    /// `floor_denied` (to the asker).
    FloorRequest {
        /// Moderators only: take the floor even if someone else holds it.
        #[serde(
            default,
            deserialize_with = "null_as_default",
            skip_serializing_if = "std::ops::Not::not"
        )]
        preempt: bool,
    },
    /// Push-to-talk: give the floor back.
    FloorRelease,
    /// Moderators only: remove a participant from the room (its connection is closed).
    Remove {
        /// Whom to remove.
        participant_id: u32,
    },
    /// Moderators only: set a participant's input gain, in whole dB (-20..=20).
    SetGain {
        /// Whose input.
        participant_id: u32,
        /// Gain in dB; 0 = unchanged level.
        gain_db: i32,
    },
    /// Send a text message to everyone in the room (the sender included), as `chat`.
    Chat {
        /// 1 to [`MAX_CHAT_CHARS`](super::MAX_CHAT_CHARS) characters; no control characters but
        /// newline and tab.
        text: String,
    },
    /// Create a room with explicit settings, before anyone joins it; answered with `room_info`.
    CreateRoom(RoomSettings),
    /// Ask for one room's settings and occupancy (need not be joined); answered with
    /// `room_info`.
    RoomInfo {
        /// The room.
        room: String,
    },
    /// Ask for the list of rooms (need not be joined); answered with `rooms`.
    ListRooms,
    /// Moderators: start or stop recording the room's mix to a file on the server (a server
    /// started with `--record-dir`); the whole room is told with `recording`.
    Record {
        /// Start (`true`) or stop (`false`). Starting a recorded room changes nothing and is
        /// answered, to the asker, with the running `recording`; stopping a room that is not
        /// recorded gets `recording_unavailable`.
        recording: bool,
    },
}

impl ClientMessage {
    /// Every value of the `"type"` field a client message can have, in declaration order.
    pub const TYPES: &'static [&'static str] = <Self as VariantNames>::VARIANTS;

    /// The value of this message's `"type"` field.
    pub fn type_name(&self) -> &'static str {
        self.into()
    }

    /// Serializes the message as a compact JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages have only string keys and no floats")
    }
}

/// The body of a `join` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Room to join, created on first join: 1 to 64 bytes of `A-Z a-z 0-9 _ . -`.
    pub room: String,
    /// Display name shown to the others: 1 to 64 characters after NFC normalisation, no control
    /// or invisible formatting characters, not blank, not starting with `[`, each word in one
    /// script, and unlike every other name in the room. On a server with access tokens the name
    /// comes from the token and this field is ignored (it may be omitted).
    #[serde(default)]
    pub name: String,
    /// Access token (a JWT signed with the server's key; at most 4096 bytes). Required by a
    /// server with a key unless the connection's URL carried one (`?access_token=`); it then
    /// also serves the connection's later `create_room`, `room_info` and `list_rooms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Whether the client sends audio (`talk` or `ptt`) or only receives it (`listen`).
    /// Omitted: the room's default for the role (see [`JoinRequest::mode_or_default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Resume token from an earlier `joined`: take back that participant (same id, mode, role,
    /// mute and floor) after a dropped connection, within the server's resume window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// What the participant may do: `listener`, `speaker` or `moderator`. Omitted: the access
    /// token's role, or `speaker` on a server without tokens. A role above the token's is
    /// refused (`token_insufficient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Format of the audio the client sends, and of the audio the server sends back:
    /// opus/48000/1/20, or pcm16/R/1/20 with R one of [`PCM_RATES`](super::PCM_RATES).
    pub format: AudioFormat,
}

impl JoinRequest {
    /// The mode asked for, or the default for the role in a room with `policy`: `listen` for
    /// listeners, `ptt` for speakers in a single-floor room, `talk` otherwise.
    pub fn mode_or_default(&self, policy: FloorPolicy) -> Mode {
        Self::default_mode(self.mode, self.role.unwrap_or_default(), policy)
    }

    /// `mode`, or the default for `role` in a room with `policy` (see
    /// [`JoinRequest::mode_or_default`]).
    pub fn default_mode(mode: Option<Mode>, role: Role, policy: FloorPolicy) -> Mode {
        mode.unwrap_or(match (role, policy) {
            (Role::Listener, _) => Mode::Listen,
            (Role::Speaker, FloorPolicy::Single) => Mode::Ptt,
            _ => Mode::Talk,
        })
    }
}

/// A room's settings, in `create_room` (omitted fields take the server's defaults) and
/// `room_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoomSettings {
    /// The room's name (as in `join`).
    pub room: String,
    /// Push-to-talk floor policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_policy: Option<FloorPolicy>,
    /// Participants at most (1 up to the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    /// Talkers mixed at once at most (1 up to the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_talkers: Option<u32>,
    /// Bring every talker's level towards a common one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalise: Option<bool>,
    /// Single floor: longest turn, in ms (1,000 to 3,600,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_talk_ms: Option<u64>,
    /// The duration of every frame in the room, in ms: 20 (the default), 10 or 5. Every client
    /// of the room sends and receives frames of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_ms: Option<u32>,
}

/// Parses a client's text frame: size, JSON, a known `"type"`, then the message's fields.
///
/// Does not call [`JoinRequest::validate`]; the server does that when it handles the `join`, so
/// that a well-formed but unacceptable join gets its specific error code.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ControlError> {
    if text.len() > MAX_CONTROL_MESSAGE {
        return Err(ControlError::TooLarge { len: text.len() });
    }
    parse_tagged(text, ClientMessage::TYPES)
}
