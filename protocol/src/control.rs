//! JSON control messages carried in WebSocket text frames, tagged by a snake_case `"type"` field.
//!
//! Unknown fields are ignored in every message so that either side can add optional fields without
//! breaking older peers. Parsing never panics: [`parse_client_message`] and
//! [`parse_server_message`] return a [`ControlError`] whose [`ControlError::code`] is the
//! [`ErrorCode`] to report.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::audio::{FRAME_MS, SAMPLE_RATE};

/// Largest text frame the server accepts, in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 4096;
/// Largest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// Largest participant name, in characters (Unicode scalar values).
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `token`, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest excerpt of a peer's bad value quoted in an error message, in bytes.
///
/// Error messages name the bad value, but are sent back to the peer and logged, so a huge value
/// is cut short.
const MAX_QUOTED: usize = 64;

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
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
    /// Moderators only: mute or unmute everyone in the room but the moderators.
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
        /// 1 to [`MAX_CHAT_CHARS`] characters; no control characters but newline and tab.
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
}

/// Largest `resume` token accepted, in bytes (the server issues 32 hex digits).
pub const MAX_RESUME_TOKEN_LEN: usize = 64;

/// Largest chat message, in characters (Unicode scalar values).
pub const MAX_CHAT_CHARS: usize = 1000;

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

impl ClientMessage {
    /// Every value of the `"type"` field a client message can have.
    pub const TYPES: [&'static str; 14] = [
        "join",
        "leave",
        "ping",
        "set_mode",
        "mute",
        "mute_room",
        "floor_request",
        "floor_release",
        "remove",
        "set_gain",
        "chat",
        "create_room",
        "room_info",
        "list_rooms",
    ];

    /// The value of this message's `"type"` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join(_) => "join",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::SetMode { .. } => "set_mode",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::MuteRoom { .. } => "mute_room",
            ClientMessage::FloorRequest { .. } => "floor_request",
            ClientMessage::FloorRelease => "floor_release",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::SetGain { .. } => "set_gain",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::CreateRoom(_) => "create_room",
            ClientMessage::RoomInfo { .. } => "room_info",
            ClientMessage::ListRooms => "list_rooms",
        }
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
    /// Display name shown to the others: 1 to 64 characters, no control characters, not blank.
    pub name: String,
    /// Reserved for authentication: accepted (at most 4096 bytes) and currently ignored.
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
    /// What the participant may do (`speaker`, the default, `listener` or `moderator`). Not yet
    /// authenticated: any client may claim any role.
    #[serde(default, deserialize_with = "null_as_default")]
    pub role: Role,
    /// Format of the audio the client sends; only opus/48000/1/20 is supported.
    pub format: AudioFormat,
}

impl JoinRequest {
    /// Checks a room name as `join` does (for messages that name a room).
    pub fn validate_room_name(room: &str) -> Result<(), ControlError> {
        validate_room(room)
    }

    /// The mode asked for, or the default for the role in a room with `policy`: `listen` for
    /// listeners, `ptt` for speakers in a single-floor room, `talk` otherwise.
    pub fn mode_or_default(&self, policy: FloorPolicy) -> Mode {
        Self::default_mode(self.mode, self.role, policy)
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

    /// Checks the room, name, token and format, in that order, reporting the first problem.
    pub fn validate(&self) -> Result<(), ControlError> {
        validate_room(&self.room)?;
        validate_name(&self.name)?;
        if let Some(token) = &self.token
            && token.len() > MAX_TOKEN_LEN
        {
            return Err(ControlError::InvalidToken {
                detail: format!(
                    "token is {} bytes, the maximum is {MAX_TOKEN_LEN}",
                    token.len()
                ),
            });
        }
        if let Some(resume) = &self.resume
            && (resume.is_empty()
                || resume.len() > MAX_RESUME_TOKEN_LEN
                || !resume.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ControlError::InvalidToken {
                detail: format!(
                    "resume token must be 1 to {MAX_RESUME_TOKEN_LEN} hex digits, as sent in joined"
                ),
            });
        }
        self.format.validate()
    }
}

/// Checks a chat text: 1 to [`MAX_CHAT_CHARS`] characters, not blank, no control characters
/// other than newline and tab.
pub fn validate_chat(text: &str) -> Result<(), ControlError> {
    let invalid = |detail: String| Err(ControlError::InvalidChat { detail });
    if text.is_empty() {
        return invalid("the text is empty".to_owned());
    }
    if text.trim().is_empty() {
        return invalid("the text is only whitespace".to_owned());
    }
    let chars = text.chars().count();
    if chars > MAX_CHAT_CHARS {
        return invalid(format!(
            "the text is {chars} characters, the maximum is {MAX_CHAT_CHARS}"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return invalid(format!("the text contains the control character {bad:?}"));
    }
    Ok(())
}

impl RoomSettings {
    /// Checks the room name and that every given setting is in range; `max_participants` and
    /// `max_talkers` may not exceed the server's limits given here.
    pub fn validate(
        &self,
        server_participants: u32,
        server_talkers: u32,
    ) -> Result<(), ControlError> {
        validate_room(&self.room)?;
        let out_of_range = |name: &str, value: u64, low: u64, high: u64| {
            if value < low || value > high {
                Err(ControlError::InvalidSettings {
                    detail: format!("{name} {value} is outside {low}..={high}"),
                })
            } else {
                Ok(())
            }
        };
        if let Some(n) = self.max_participants {
            out_of_range("max_participants", n.into(), 1, server_participants.into())?;
        }
        if let Some(n) = self.max_talkers {
            out_of_range("max_talkers", n.into(), 1, server_talkers.into())?;
        }
        if let Some(ms) = self.max_talk_ms {
            out_of_range("max_talk_ms", ms, 1_000, 3_600_000)?;
        }
        Ok(())
    }
}

fn validate_room(room: &str) -> Result<(), ControlError> {
    let invalid = |detail: String| Err(ControlError::InvalidRoom { detail });
    if room.is_empty() {
        return invalid("room name is empty".to_owned());
    }
    if room.len() > MAX_ROOM_LEN {
        return invalid(format!(
            "room name {} is {} bytes, the maximum is {MAX_ROOM_LEN}",
            quote(room),
            room.len()
        ));
    }
    if let Some(bad) = room
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return invalid(format!(
            "room name {} contains {bad:?}; only A-Z a-z 0-9 _ . - are allowed",
            quote(room)
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), ControlError> {
    let invalid = |detail: String| Err(ControlError::InvalidName { detail });
    if name.is_empty() {
        return invalid("name is empty".to_owned());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return invalid(format!(
            "name {} is {chars} characters, the maximum is {MAX_NAME_CHARS}",
            quote(name)
        ));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return invalid(format!(
            "name {} contains control character {bad:?}",
            quote(name)
        ));
    }
    if name.chars().all(char::is_whitespace) {
        return invalid(format!("name {} is only whitespace", quote(name)));
    }
    Ok(())
}

/// Whether a participant sends audio (open mic or push-to-talk) or only listens.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Open microphone: sends and receives audio; receives the mix of everyone but itself.
    #[default]
    Talk,
    /// Push-to-talk: sends audio only while its button is held. In a room with the `single`
    /// floor policy its audio is mixed only while it holds the floor.
    Ptt,
    /// Only receives audio: the full mix of the room. Its audio frames are dropped.
    Listen,
}

impl Mode {
    /// Whether participants in this mode send audio.
    pub fn sends_audio(self) -> bool {
        self != Mode::Listen
    }

    /// The mode's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Talk => "talk",
            Mode::Ptt => "ptt",
            Mode::Listen => "listen",
        }
    }
}

/// What a participant may do in a room.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May talk (in `talk` or `ptt` mode, as the room allows) and listen.
    #[default]
    Speaker,
    /// May only listen: `talk` and `ptt` modes are refused.
    Listener,
    /// May also mute, remove and set the gain of others, mute the room and preempt the floor.
    Moderator,
}

impl Role {
    /// The role's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Speaker => "speaker",
            Role::Listener => "listener",
            Role::Moderator => "moderator",
        }
    }
}

/// How a room arbitrates push-to-talk.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorPolicy {
    /// Anyone in `ptt` mode is mixed while it sends (holding its button).
    #[default]
    Open,
    /// One speaker at a time, by `floor_request`; `talk` mode is for moderators only.
    Single,
}

/// Why the floor holder lost the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorEndReason {
    /// It sent `floor_release`.
    Released,
    /// It reached the room's maximum talk time.
    MaxTalkTime,
    /// It sent no voice for the room's silence timeout.
    Silence,
    /// It left, or changed to a mode other than `ptt`.
    Left,
    /// A moderator took the floor (`by`).
    Preempted,
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

/// An audio stream format, as requested in `join` and announced in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioFormat {
    /// Codec name; only `"opus"` is supported.
    pub codec: String,
    /// Sample rate in Hz; only 48000 is supported.
    pub sample_rate: u32,
    /// Channel count; only 1 (mono) is supported.
    pub channels: u8,
    /// Duration of the audio in each packet in ms; only 20 is supported.
    pub frame_ms: u32,
}

impl AudioFormat {
    /// The one supported format: Opus, 48 kHz, mono, 20 ms packets.
    pub fn opus_48k_mono_20ms() -> AudioFormat {
        AudioFormat {
            codec: "opus".to_owned(),
            sample_rate: SAMPLE_RATE,
            channels: 1,
            frame_ms: FRAME_MS,
        }
    }

    /// 16-bit little-endian PCM, mono, 20 ms frames at `sample_rate`, for clients that cannot
    /// run Opus.
    pub fn pcm16(sample_rate: u32) -> AudioFormat {
        AudioFormat {
            codec: "pcm16".to_owned(),
            sample_rate,
            channels: 1,
            frame_ms: FRAME_MS,
        }
    }

    /// The PCM sample rate, if this is a `pcm16` format.
    pub fn pcm_rate(&self) -> Option<u32> {
        (self.codec == "pcm16").then_some(self.sample_rate)
    }

    /// Checks that this is a supported format: `opus/48000/1/20`, or `pcm16/R/1/20` with R one
    /// of [`PCM_RATES`]. The error names what was asked for.
    pub fn validate(&self) -> Result<(), ControlError> {
        if *self == AudioFormat::opus_48k_mono_20ms()
            || (PCM_RATES.contains(&self.sample_rate)
                && *self == AudioFormat::pcm16(self.sample_rate))
        {
            return Ok(());
        }
        Err(ControlError::UnsupportedFormat {
            detail: format!(
                "format {} is not supported; use {} or pcm16/R/1/20 with R one of {:?}",
                self,
                AudioFormat::opus_48k_mono_20ms(),
                PCM_RATES
            ),
        })
    }
}

/// Sample rates a `pcm16` client may use.
pub const PCM_RATES: [u32; 5] = [8_000, 16_000, 22_050, 44_100, 48_000];

/// Largest `pcm16` audio frame: the 9-byte header and 20 ms of 48 kHz 16-bit samples.
pub const MAX_PCM_AUDIO_FRAME: usize = 9 + 2 * 960;

impl fmt::Display for AudioFormat {
    /// `codec/sample_rate/channels/frame_ms`, e.g. `opus/48000/1/20`; a long codec is cut short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            quote_bare(&self.codec),
            self.sample_rate,
            self.channels,
            self.frame_ms
        )
    }
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The `join` succeeded; audio flows from now on.
    Joined {
        /// This connection's participant id, unique within the room while it is joined.
        participant_id: u32,
        /// The room joined.
        room: String,
        /// The others already in the room (not including this participant).
        participants: Vec<ParticipantInfo>,
        /// Format of the audio the server sends (opus/48000/1/20).
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
    /// A participant (possibly the receiver) was muted or unmuted.
    ParticipantMuted {
        /// Who.
        participant_id: u32,
        /// Muted now or not.
        muted: bool,
        /// The moderator who did it; omitted when the participant did it itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<u32>,
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
}

/// Most rooms one `rooms` answer lists.
pub const MAX_LISTED_ROOMS: usize = 500;

impl ServerMessage {
    /// Every value of the `"type"` field a server message can have.
    pub const TYPES: [&'static str; 17] = [
        "joined",
        "participant_joined",
        "participant_left",
        "error",
        "pong",
        "mode_changed",
        "participant_muted",
        "floor_granted",
        "floor_denied",
        "floor_released",
        "talking_started",
        "talking_stopped",
        "caught_up",
        "gain_changed",
        "chat",
        "room_info",
        "rooms",
    ];

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// The value of this message's `"type"` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::ParticipantJoined { .. } => "participant_joined",
            ServerMessage::ParticipantLeft { .. } => "participant_left",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::ModeChanged { .. } => "mode_changed",
            ServerMessage::ParticipantMuted { .. } => "participant_muted",
            ServerMessage::FloorGranted { .. } => "floor_granted",
            ServerMessage::FloorDenied { .. } => "floor_denied",
            ServerMessage::FloorReleased { .. } => "floor_released",
            ServerMessage::TalkingStarted { .. } => "talking_started",
            ServerMessage::TalkingStopped { .. } => "talking_stopped",
            ServerMessage::CaughtUp => "caught_up",
            ServerMessage::GainChanged { .. } => "gain_changed",
            ServerMessage::Chat { .. } => "chat",
            ServerMessage::RoomInfo(_) => "room_info",
            ServerMessage::Rooms { .. } => "rooms",
        }
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

/// Why a participant left a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`, or closed its WebSocket cleanly.
    Left,
    /// Its connection dropped without a clean close.
    Disconnected,
    /// It sent nothing, not even a Pong, for the keepalive timeout.
    TimedOut,
    /// It read too slowly and was disconnected.
    SlowConsumer,
    /// The server is shutting down.
    ServerShutdown,
    /// A moderator removed it.
    Removed,
}

/// Machine-readable error codes sent in `error` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A text frame is not valid JSON, or a known message has missing or invalid fields.
    BadMessage,
    /// A JSON object whose `"type"` is missing or not a known message.
    UnknownType,
    /// A text frame over 4096 bytes, or any frame over the server's WebSocket limit. Closes (1009).
    MessageTooLarge,
    /// The `join` asked for an audio format other than opus/48000/1/20.
    UnsupportedFormat,
    /// The `join` room name is empty, too long or has a disallowed character.
    InvalidRoom,
    /// The `join` name is empty, too long, blank or has a control character.
    InvalidName,
    /// The `join` token is rejected (currently only when over 4096 bytes).
    InvalidToken,
    /// Audio, `leave` or a room request (`set_mode`, `mute`, ...) before a successful `join`.
    NotJoined,
    /// A second `join` on a connection that is already in a room.
    AlreadyJoined,
    /// The room has reached its participant limit.
    RoomFull,
    /// The server has reached its participant or room limit.
    ServerFull,
    /// A binary frame shorter than the 9-byte audio header.
    BadAudioHeader,
    /// A binary frame whose version byte is not 1.
    UnsupportedVersion,
    /// A binary frame whose Opus packet is empty or cannot be decoded.
    InvalidOpus,
    /// A binary frame whose Opus packet is over 1275 bytes.
    FrameTooLarge,
    /// Audio from a participant that joined in `listen` mode; it is dropped.
    ListenOnly,
    /// Audio arriving faster than real time; the excess is dropped.
    RateLimited,
    /// The client reads too slowly; it is being disconnected. Closes (1008).
    SlowConsumer,
    /// Nothing received for the keepalive timeout. Closes (1008), if the peer is still there.
    PingTimeout,
    /// The server is shutting down. Closes (1001).
    ShuttingDown,
    /// An unexpected server-side failure.
    Internal,
    /// The request needs a role the participant does not have (e.g. moderator).
    Forbidden,
    /// The mode asked for is not allowed here: `talk`/`ptt` for a listener, or `talk` for a
    /// non-moderator in a single-floor (push-to-talk) room.
    ModeNotAllowed,
    /// A floor request or release from a participant not in `ptt` mode.
    NotPtt,
    /// Push-to-talk audio sent without holding the floor in a single-floor room; dropped.
    NoFloor,
    /// A request names a participant who is not in the room.
    UnknownParticipant,
    /// A gain outside -20..=20 dB.
    InvalidGain,
    /// A moderator removed this participant; the connection closes (1008).
    Removed,
    /// A `chat` text that is empty, too long or has control characters.
    InvalidChat,
    /// `create_room` settings out of range.
    InvalidSettings,
    /// `create_room` for a room that already exists.
    RoomExists,
    /// `room_info` for a room that does not exist.
    UnknownRoom,
    /// `chat` faster than a burst of 5 messages then 1 per second; the message is dropped.
    ChatRateLimited,
    /// A `join` with a `resume` token that is unknown, expired or for another room; join again
    /// without it.
    ResumeFailed,
}

impl ErrorCode {
    /// Every error code, in declaration order.
    pub const ALL: [ErrorCode; 34] = [
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::MessageTooLarge,
        ErrorCode::UnsupportedFormat,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidName,
        ErrorCode::InvalidToken,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::RoomFull,
        ErrorCode::ServerFull,
        ErrorCode::BadAudioHeader,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidOpus,
        ErrorCode::FrameTooLarge,
        ErrorCode::ListenOnly,
        ErrorCode::RateLimited,
        ErrorCode::SlowConsumer,
        ErrorCode::PingTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
        ErrorCode::ModeNotAllowed,
        ErrorCode::NotPtt,
        ErrorCode::NoFloor,
        ErrorCode::UnknownParticipant,
        ErrorCode::InvalidGain,
        ErrorCode::Removed,
        ErrorCode::InvalidChat,
        ErrorCode::InvalidSettings,
        ErrorCode::RoomExists,
        ErrorCode::UnknownRoom,
        ErrorCode::ChatRateLimited,
        ErrorCode::ResumeFailed,
    ];

    /// The snake_case wire name, as in the JSON `"code"` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedFormat => "unsupported_format",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::BadAudioHeader => "bad_audio_header",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidOpus => "invalid_opus",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::ListenOnly => "listen_only",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::PingTimeout => "ping_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ModeNotAllowed => "mode_not_allowed",
            ErrorCode::NotPtt => "not_ptt",
            ErrorCode::NoFloor => "no_floor",
            ErrorCode::UnknownParticipant => "unknown_participant",
            ErrorCode::InvalidGain => "invalid_gain",
            ErrorCode::Removed => "removed",
            ErrorCode::InvalidChat => "invalid_chat",
            ErrorCode::InvalidSettings => "invalid_settings",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::ChatRateLimited => "chat_rate_limited",
            ErrorCode::ResumeFailed => "resume_failed",
        }
    }

    /// The WebSocket close code the server closes with after sending this error, or `None` if
    /// the connection stays open.
    pub fn close_code(self) -> Option<u16> {
        match self {
            ErrorCode::MessageTooLarge => Some(close_code::MESSAGE_TOO_BIG),
            ErrorCode::SlowConsumer | ErrorCode::PingTimeout | ErrorCode::Removed => {
                Some(close_code::POLICY_VIOLATION)
            }
            ErrorCode::ShuttingDown => Some(close_code::GOING_AWAY),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes (RFC 6455 section 7.4.1) the server uses.
pub mod close_code {
    /// Normal closure: the reply to a client's own close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (`shutting_down`).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke a rule (`slow_consumer`, `ping_timeout`), or a moderator removed it
    /// (`removed`).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over the size limit: `message_too_large`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// Why a text frame is not an acceptable control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The text frame is longer than [`MAX_CONTROL_MESSAGE`].
    #[error("control message of {len} bytes exceeds the maximum of {MAX_CONTROL_MESSAGE}")]
    TooLarge {
        /// Length of the text frame in bytes.
        len: usize,
    },
    /// The text is not a JSON object: invalid JSON, or JSON of another kind such as an array.
    #[error("control message is not a JSON object: {detail}")]
    NotJson {
        /// What is wrong, with the position for a syntax error.
        detail: String,
    },
    /// A JSON object whose `"type"` is missing or not a known message type.
    #[error("{}", unknown_type_message(.found))]
    UnknownType {
        /// The `"type"` found (a non-string shown as JSON, cut short), or `None` if absent.
        found: Option<String>,
    },
    /// A known message type with missing or invalid fields.
    #[error("invalid {message_type} message: {detail}")]
    Invalid {
        /// The message's `"type"`.
        message_type: &'static str,
        /// The deserializer's description of the problem.
        detail: String,
    },
    /// A `join` asked for an unsupported audio format.
    #[error("unsupported audio format: {detail}")]
    UnsupportedFormat {
        /// The format asked for and the one supported.
        detail: String,
    },
    /// A `join` room name is not acceptable.
    #[error("invalid room: {detail}")]
    InvalidRoom {
        /// The room name asked for and what is wrong with it.
        detail: String,
    },
    /// A `join` participant name is not acceptable.
    #[error("invalid name: {detail}")]
    InvalidName {
        /// The name asked for and what is wrong with it.
        detail: String,
    },
    /// A `join` token is not acceptable.
    #[error("invalid token: {detail}")]
    InvalidToken {
        /// What is wrong with the token (never the token itself).
        detail: String,
    },
    /// A `chat` text is not acceptable.
    #[error("invalid chat message: {detail}")]
    InvalidChat {
        /// What is wrong with it.
        detail: String,
    },
    /// `create_room` settings out of range.
    #[error("invalid room settings: {detail}")]
    InvalidSettings {
        /// Which setting and its range.
        detail: String,
    },
}

impl ControlError {
    /// The error code the server reports for this error in an `error` message.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            ControlError::NotJson { .. } | ControlError::Invalid { .. } => ErrorCode::BadMessage,
            ControlError::UnknownType { .. } => ErrorCode::UnknownType,
            ControlError::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
            ControlError::InvalidRoom { .. } => ErrorCode::InvalidRoom,
            ControlError::InvalidName { .. } => ErrorCode::InvalidName,
            ControlError::InvalidToken { .. } => ErrorCode::InvalidToken,
            ControlError::InvalidChat { .. } => ErrorCode::InvalidChat,
            ControlError::InvalidSettings { .. } => ErrorCode::InvalidSettings,
        }
    }
}

fn unknown_type_message(found: &Option<String>) -> String {
    match found {
        None => "control message has no \"type\" field".to_owned(),
        Some(t) => format!("unknown control message type {t:?}"),
    }
}

/// Parses a client's text frame: size, JSON, a known `"type"`, then the message's fields.
///
/// Does not call [`JoinRequest::validate`]; the server does that when it handles the `join`, so
/// that a well-formed but unacceptable join gets its specific error code.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ControlError> {
    if text.len() > MAX_CONTROL_MESSAGE {
        return Err(ControlError::TooLarge { len: text.len() });
    }
    parse_tagged(text, &ClientMessage::TYPES)
}

/// Parses a server's text frame, for clients and tests.
///
/// Unlike [`parse_client_message`] there is no size limit: a `joined` listing a large room can
/// exceed [`MAX_CONTROL_MESSAGE`].
pub fn parse_server_message(text: &str) -> Result<ServerMessage, ControlError> {
    parse_tagged(text, &ServerMessage::TYPES)
}

/// JSON object → known `"type"` → typed message, so each failure gets its own error code.
fn parse_tagged<T: serde::de::DeserializeOwned>(
    text: &str,
    types: &[&'static str],
) -> Result<T, ControlError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ControlError::NotJson {
            detail: e.to_string(),
        })?;
    let Some(object) = value.as_object() else {
        return Err(ControlError::NotJson {
            detail: format!("found {}", json_kind(&value)),
        });
    };
    let message_type = match object.get("type") {
        None => return Err(ControlError::UnknownType { found: None }),
        Some(serde_json::Value::String(s)) => match types.iter().find(|t| **t == s.as_str()) {
            Some(known) => *known,
            None => {
                return Err(ControlError::UnknownType {
                    found: Some(truncate(s).to_owned()),
                });
            }
        },
        Some(other) => {
            return Err(ControlError::UnknownType {
                found: Some(truncate(&other.to_string()).to_owned()),
            });
        }
    };
    serde_json::from_value(value).map_err(|e| ControlError::Invalid {
        message_type,
        detail: e.to_string(),
    })
}

/// A field with a default reads `null` as that default, as an `Option` field reads it as `None`:
/// "optional fields may be omitted or `null`" holds for every optional field.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// At most [`MAX_QUOTED`] bytes of `s`, cut at a character boundary.
fn truncate(s: &str) -> &str {
    if s.len() <= MAX_QUOTED {
        return s;
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` quoted with escapes, cut short with `...` if long, for naming a bad value in a message.
fn quote(s: &str) -> String {
    format!("\"{}\"", quote_bare(s))
}

/// `s` with escapes but without quotes, cut short with `...` if long.
fn quote_bare(s: &str) -> String {
    let cut = truncate(s);
    let escaped: String = cut.chars().flat_map(char::escape_debug).collect();
    if cut.len() < s.len() {
        format!("{escaped}...")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    const FORMAT_JSON: &str = r#"{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}"#;

    fn join(room: &str, name: &str) -> JoinRequest {
        JoinRequest {
            room: room.to_owned(),
            name: name.to_owned(),
            token: None,
            mode: None,
            resume: None,
            role: Role::Speaker,
            format: AudioFormat::opus_48k_mono_20ms(),
        }
    }

    fn participant(id: u32, name: &str, mode: Mode, role: Role) -> ParticipantInfo {
        ParticipantInfo {
            id,
            name: name.to_owned(),
            mode,
            role,
            muted: false,
        }
    }

    fn joined(participants: Vec<ParticipantInfo>, floor: FloorInfo) -> ServerMessage {
        ServerMessage::Joined {
            participant_id: 2,
            room: "lobby".to_owned(),
            participants,
            format: AudioFormat::opus_48k_mono_20ms(),
            floor,
            resume_token: None,
            resumed: false,
            replay_ms: None,
        }
    }

    /// `create_room` settings naming only the room.
    fn settings(room: &str) -> RoomSettings {
        RoomSettings {
            room: room.to_owned(),
            ..RoomSettings::default()
        }
    }

    /// A room as the server describes it: every setting present.
    fn summary(room: &str, participants: u32) -> RoomSummary {
        RoomSummary {
            settings: RoomSettings {
                room: room.to_owned(),
                floor_policy: Some(FloorPolicy::Single),
                max_participants: Some(256),
                max_talkers: Some(4),
                normalise: Some(false),
                max_talk_ms: Some(60_000),
            },
            participants,
        }
    }

    /// Asserts that `json` parses to `msg` and that `msg` serializes to exactly `json`.
    fn golden_client(json: &str, msg: ClientMessage) {
        assert_eq!(parse_client_message(json), Ok(msg.clone()), "parse {json}");
        assert_eq!(msg.to_json(), json);
    }

    fn golden_server(json: &str, msg: ServerMessage) {
        assert_eq!(parse_server_message(json), Ok(msg.clone()), "parse {json}");
        assert_eq!(msg.to_json(), json);
    }

    /// The error a client message is rejected with, checking that its code is `bad_message`
    /// and that it names the message type.
    fn bad_client(json: &str) -> ControlError {
        let err = parse_client_message(json).expect_err(json);
        assert_eq!(err.code(), ErrorCode::BadMessage, "{json}: {err}");
        let type_name = serde_json::from_str::<serde_json::Value>(json).expect(json)["type"]
            .as_str()
            .map(str::to_owned);
        if let Some(type_name) = type_name {
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid {type_name} message: ")),
                "{json}: {err}"
            );
        }
        err
    }

    /// One message of every client type, in [`ClientMessage::TYPES`] order.
    fn client_samples() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Join(join("a", "b")),
            ClientMessage::Leave,
            ClientMessage::Ping { id: None },
            ClientMessage::SetMode { mode: Mode::Ptt },
            ClientMessage::Mute {
                participant_id: None,
                muted: true,
            },
            ClientMessage::MuteRoom { muted: true },
            ClientMessage::FloorRequest { preempt: false },
            ClientMessage::FloorRelease,
            ClientMessage::Remove { participant_id: 1 },
            ClientMessage::SetGain {
                participant_id: 1,
                gain_db: -6,
            },
            ClientMessage::Chat {
                text: "hi".to_owned(),
            },
            ClientMessage::CreateRoom(settings("ch1")),
            ClientMessage::RoomInfo {
                room: "ch1".to_owned(),
            },
            ClientMessage::ListRooms,
        ]
    }

    /// One message of every server type, in [`ServerMessage::TYPES`] order.
    fn server_samples() -> Vec<ServerMessage> {
        vec![
            joined(vec![], FloorInfo::default()),
            ServerMessage::ParticipantJoined {
                participant: participant(0, "b", Mode::Talk, Role::Speaker),
            },
            ServerMessage::ParticipantLeft {
                participant_id: 0,
                reason: LeaveReason::Left,
            },
            ServerMessage::error(ErrorCode::Internal, "x"),
            ServerMessage::Pong { id: None },
            ServerMessage::ModeChanged {
                participant_id: 0,
                mode: Mode::Ptt,
            },
            ServerMessage::ParticipantMuted {
                participant_id: 0,
                muted: true,
                by: None,
            },
            ServerMessage::FloorGranted {
                participant_id: 0,
                max_talk_ms: Some(60_000),
            },
            ServerMessage::FloorDenied { holder: 1 },
            ServerMessage::FloorReleased {
                participant_id: 0,
                reason: FloorEndReason::Released,
                by: None,
            },
            ServerMessage::TalkingStarted { participant_id: 0 },
            ServerMessage::TalkingStopped { participant_id: 0 },
            ServerMessage::CaughtUp,
            ServerMessage::GainChanged {
                participant_id: 0,
                gain_db: 3,
                by: 1,
            },
            ServerMessage::Chat {
                id: 1,
                from: 0,
                name: "b".to_owned(),
                text: "hi".to_owned(),
                ts_ms: 0,
            },
            ServerMessage::RoomInfo(summary("ch1", 0)),
            ServerMessage::Rooms {
                rooms: vec![summary("ch1", 0)],
                truncated: false,
            },
        ]
    }

    #[test]
    fn golden_resume() {
        golden_client(
            &format!(
                r#"{{"type":"join","room":"lobby","name":"Ada","resume":"00ff","role":"speaker","format":{FORMAT_JSON}}}"#
            ),
            ClientMessage::Join(JoinRequest {
                resume: Some("00ff".to_owned()),
                ..join("lobby", "Ada")
            }),
        );
        let ServerMessage::Joined { floor, .. } = joined(vec![], FloorInfo::default()) else {
            unreachable!()
        };
        golden_server(
            &format!(
                r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"open"}},"resume_token":"ab12","resumed":true}}"#
            ),
            ServerMessage::Joined {
                participant_id: 2,
                room: "lobby".to_owned(),
                participants: vec![],
                format: AudioFormat::opus_48k_mono_20ms(),
                floor,
                resume_token: Some("ab12".to_owned()),
                resumed: true,
                replay_ms: None,
            },
        );
        for bad in ["", "xyz", &"a".repeat(MAX_RESUME_TOKEN_LEN + 1)] {
            let request = JoinRequest {
                resume: Some(bad.to_owned()),
                ..join("lobby", "Ada")
            };
            assert_eq!(
                request.validate().map_err(|e| e.code()),
                Err(ErrorCode::InvalidToken),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn golden_join() {
        golden_client(
            &format!(
                r#"{{"type":"join","room":"lobby","name":"Ada","mode":"talk","role":"speaker","format":{FORMAT_JSON}}}"#
            ),
            ClientMessage::Join(JoinRequest {
                mode: Some(Mode::Talk),
                ..join("lobby", "Ada")
            }),
        );
        golden_client(
            &format!(
                r#"{{"type":"join","room":"lobby","name":"Ada","role":"speaker","format":{FORMAT_JSON}}}"#
            ),
            ClientMessage::Join(join("lobby", "Ada")),
        );
        golden_client(
            &format!(
                r#"{{"type":"join","room":"r-1","name":"Bob","token":"t0k","mode":"listen","role":"listener","format":{FORMAT_JSON}}}"#
            ),
            ClientMessage::Join(JoinRequest {
                token: Some("t0k".to_owned()),
                mode: Some(Mode::Listen),
                role: Role::Listener,
                ..join("r-1", "Bob")
            }),
        );
        golden_client(
            &format!(
                r#"{{"type":"join","room":"ops","name":"Cy","mode":"ptt","role":"moderator","format":{FORMAT_JSON}}}"#
            ),
            ClientMessage::Join(JoinRequest {
                mode: Some(Mode::Ptt),
                role: Role::Moderator,
                ..join("ops", "Cy")
            }),
        );
    }

    /// Every JSON example in the spec (README.md) is a valid message that serializes back to
    /// the same text, except that an example may leave out fields that have a default and are
    /// always serialized (`mode`, `role`, `floor`).
    ///
    /// `chat` and `room_info` name both a client and a server message, and a client parses a
    /// server message's fields it does not know as unknown fields; so an example belongs to the
    /// direction whose message shows exactly its fields, and exactly one direction must fit.
    #[test]
    fn spec_examples_parse() {
        let spec = include_str!("../README.md");
        let mut examples: Vec<&str> = spec
            .split("```json\n")
            .skip(1)
            .map(|block| block.split("```").next().unwrap_or_default().trim())
            .collect();
        // The example sessions' table rows hold one JSON message each, in backquotes.
        examples.extend(
            spec.lines()
                .filter(|line| line.starts_with("| ") && line.contains("`{\"type\""))
                .filter_map(|line| line.split('`').nth(1)),
        );
        assert!(
            examples.len() >= 60,
            "found only {} examples",
            examples.len()
        );
        let mut types = BTreeSet::new();
        for json in examples {
            let client = parse_client_message(json).ok().map(|msg| {
                assert_eq!(
                    parse_client_message(&msg.to_json()),
                    Ok(msg.clone()),
                    "{json}"
                );
                (("client", msg.type_name()), msg.to_json())
            });
            let server = parse_server_message(json).ok().map(|msg| {
                assert_eq!(
                    parse_server_message(&msg.to_json()),
                    Ok(msg.clone()),
                    "{json}"
                );
                (("server", msg.type_name()), msg.to_json())
            });
            let fits: Vec<_> = [client, server]
                .into_iter()
                .flatten()
                .filter(|(_, serialized)| shows_same_message(json, serialized))
                .collect();
            assert_eq!(fits.len(), 1, "{json} is serialized as {fits:?}");
            types.insert(fits[0].0);
        }
        // Every message type of each direction has an example.
        let all: BTreeSet<_> = ClientMessage::TYPES
            .into_iter()
            .map(|t| ("client", t))
            .chain(ServerMessage::TYPES.into_iter().map(|t| ("server", t)))
            .collect();
        assert_eq!(types, all);
    }

    /// Whether `example` is the text `serialized`, or the same message with only defaulted
    /// fields left out.
    fn shows_same_message(example: &str, serialized: &str) -> bool {
        if example == serialized {
            return true;
        }
        let example: serde_json::Value = serde_json::from_str(example).expect(example);
        let full: serde_json::Value = serde_json::from_str(serialized).expect(serialized);
        // Same fields, so the text must be the same too (field order, spacing).
        omitted_defaults(&example, &full).is_some_and(|omitted| omitted > 0)
    }

    /// How many defaulted fields `example` leaves out of `full`, or `None` if it differs from
    /// `full` in any other way.
    fn omitted_defaults(example: &serde_json::Value, full: &serde_json::Value) -> Option<usize> {
        use serde_json::Value;
        match (example, full) {
            (Value::Object(example), Value::Object(full)) => {
                if !example.keys().all(|k| full.contains_key(k)) {
                    return None;
                }
                let mut omitted = 0;
                for (key, value) in full {
                    match example.get(key) {
                        Some(shown) => omitted += omitted_defaults(shown, value)?,
                        None if ["mode", "role", "floor"].contains(&key.as_str()) => omitted += 1,
                        None => return None,
                    }
                }
                Some(omitted)
            }
            (Value::Array(example), Value::Array(full)) if example.len() == full.len() => example
                .iter()
                .zip(full)
                .map(|(shown, value)| omitted_defaults(shown, value))
                .sum(),
            _ => (example == full).then_some(0),
        }
    }

    #[test]
    fn join_defaults_and_unknown_fields() {
        let json = r#"{"type":"join","room":"lobby","name":"Ada","future":[1,2],
            "format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20,"x":true}}"#;
        let Ok(ClientMessage::Join(req)) = parse_client_message(json) else {
            panic!("expected a join");
        };
        assert_eq!(req.mode, None);
        assert_eq!(req.mode_or_default(FloorPolicy::Open), Mode::Talk);
        assert_eq!(req.mode_or_default(FloorPolicy::Single), Mode::Ptt);
        assert_eq!(req.role, Role::Speaker);
        let listener = JoinRequest {
            role: Role::Listener,
            ..req.clone()
        };
        assert_eq!(listener.mode_or_default(FloorPolicy::Open), Mode::Listen);
        let moderator = JoinRequest {
            role: Role::Moderator,
            ..req.clone()
        };
        assert_eq!(moderator.mode_or_default(FloorPolicy::Single), Mode::Talk);
        let explicit = JoinRequest {
            mode: Some(Mode::Listen),
            ..req.clone()
        };
        assert_eq!(explicit.mode_or_default(FloorPolicy::Single), Mode::Listen);
        assert_eq!(req, join("lobby", "Ada"));
        let json = format!(
            r#"{{"type":"join","room":"a","name":"b","token":null,"format":{FORMAT_JSON}}}"#
        );
        assert_eq!(
            parse_client_message(&json),
            Ok(ClientMessage::Join(join("a", "b")))
        );
    }

    /// "Optional fields may be omitted or `null`": `null` reads as the default everywhere.
    #[test]
    fn null_optional_fields_mean_default() {
        let json = format!(
            r#"{{"type":"join","room":"a","name":"b","token":null,"mode":null,"role":null,"format":{FORMAT_JSON}}}"#
        );
        assert_eq!(
            parse_client_message(&json),
            Ok(ClientMessage::Join(join("a", "b")))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"floor_request","preempt":null}"#),
            Ok(ClientMessage::FloorRequest { preempt: false })
        );
        let json = format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk","role":null,"muted":null}}],"format":{FORMAT_JSON},"floor":null}}"#
        );
        assert_eq!(
            parse_server_message(&json),
            Ok(joined(
                vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
                FloorInfo::default()
            ))
        );
        for json in [
            r#"{"type":"participant_muted","participant_id":2,"muted":true,"by":null}"#,
            r#"{"type":"floor_granted","participant_id":2,"max_talk_ms":null}"#,
            r#"{"type":"floor_released","participant_id":2,"reason":"released","by":null}"#,
        ] {
            let msg = parse_server_message(json).expect(json);
            assert_eq!(
                msg.to_json(),
                json.replace(r#","by":null"#, "")
                    .replace(r#","max_talk_ms":null"#, "")
            );
        }
    }

    #[test]
    fn golden_leave_and_ping() {
        golden_client(r#"{"type":"leave"}"#, ClientMessage::Leave);
        golden_client(r#"{"type":"ping"}"#, ClientMessage::Ping { id: None });
        golden_client(
            r#"{"type":"ping","id":18446744073709551615}"#,
            ClientMessage::Ping { id: Some(u64::MAX) },
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping","id":null}"#),
            Ok(ClientMessage::Ping { id: None })
        );
    }

    #[test]
    fn golden_set_mode() {
        for mode in [Mode::Talk, Mode::Ptt, Mode::Listen] {
            golden_client(
                &format!(r#"{{"type":"set_mode","mode":"{}"}}"#, mode.as_str()),
                ClientMessage::SetMode { mode },
            );
        }
    }

    #[test]
    fn golden_mute_and_mute_room() {
        golden_client(
            r#"{"type":"mute","muted":true}"#,
            ClientMessage::Mute {
                participant_id: None,
                muted: true,
            },
        );
        golden_client(
            r#"{"type":"mute","participant_id":3,"muted":false}"#,
            ClientMessage::Mute {
                participant_id: Some(3),
                muted: false,
            },
        );
        assert_eq!(
            parse_client_message(r#"{"type":"mute","participant_id":null,"muted":true}"#),
            Ok(ClientMessage::Mute {
                participant_id: None,
                muted: true
            })
        );
        golden_client(
            r#"{"type":"mute_room","muted":true}"#,
            ClientMessage::MuteRoom { muted: true },
        );
        golden_client(
            r#"{"type":"mute_room","muted":false}"#,
            ClientMessage::MuteRoom { muted: false },
        );
    }

    #[test]
    fn golden_floor_request_and_release() {
        golden_client(
            r#"{"type":"floor_request"}"#,
            ClientMessage::FloorRequest { preempt: false },
        );
        golden_client(
            r#"{"type":"floor_request","preempt":true}"#,
            ClientMessage::FloorRequest { preempt: true },
        );
        // An explicit `false` is accepted, and left out when serialized.
        assert_eq!(
            parse_client_message(r#"{"type":"floor_request","preempt":false}"#),
            Ok(ClientMessage::FloorRequest { preempt: false })
        );
        golden_client(r#"{"type":"floor_release"}"#, ClientMessage::FloorRelease);
    }

    #[test]
    fn golden_remove_and_set_gain() {
        golden_client(
            r#"{"type":"remove","participant_id":3}"#,
            ClientMessage::Remove { participant_id: 3 },
        );
        golden_client(
            r#"{"type":"set_gain","participant_id":3,"gain_db":-6}"#,
            ClientMessage::SetGain {
                participant_id: 3,
                gain_db: -6,
            },
        );
        golden_client(
            r#"{"type":"set_gain","participant_id":4294967295,"gain_db":20}"#,
            ClientMessage::SetGain {
                participant_id: u32::MAX,
                gain_db: 20,
            },
        );
        // The range (-20..=20) is the server's to check, with `invalid_gain`: any i32 parses.
        assert_eq!(
            parse_client_message(r#"{"type":"set_gain","participant_id":3,"gain_db":-100}"#),
            Ok(ClientMessage::SetGain {
                participant_id: 3,
                gain_db: -100
            })
        );
    }

    #[test]
    fn golden_joined() {
        golden_server(
            &format!(
                r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk","role":"speaker"}}],"format":{FORMAT_JSON},"floor":{{"policy":"open"}}}}"#
            ),
            joined(
                vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
                FloorInfo::default(),
            ),
        );
        golden_server(
            &format!(
                r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"ptt","role":"moderator"}},{{"id":3,"name":"Cy","mode":"ptt","role":"speaker","muted":true}}],"format":{FORMAT_JSON},"floor":{{"policy":"single","holder":1}}}}"#
            ),
            joined(
                vec![
                    participant(1, "Ada", Mode::Ptt, Role::Moderator),
                    ParticipantInfo {
                        muted: true,
                        ..participant(3, "Cy", Mode::Ptt, Role::Speaker)
                    },
                ],
                FloorInfo {
                    policy: FloorPolicy::Single,
                    holder: Some(1),
                },
            ),
        );
        golden_server(
            &format!(
                r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"single"}}}}"#
            ),
            joined(
                vec![],
                FloorInfo {
                    policy: FloorPolicy::Single,
                    holder: None,
                },
            ),
        );
    }

    /// A `joined` from a server that predates floors, and participants without `role` or `muted`.
    #[test]
    fn joined_defaults() {
        let json = format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk"}}],"format":{FORMAT_JSON}}}"#
        );
        let msg = parse_server_message(&json).expect("old joined");
        assert_eq!(
            msg,
            joined(
                vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
                FloorInfo {
                    policy: FloorPolicy::Open,
                    holder: None
                },
            )
        );
        let ServerMessage::Joined {
            participants,
            floor,
            ..
        } = msg
        else {
            unreachable!();
        };
        assert_eq!(participants[0].role, Role::Speaker);
        assert!(!participants[0].muted);
        assert_eq!(floor.policy, FloorPolicy::Open);
        assert_eq!(floor.holder, None);
        let with_null_holder = format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"single","holder":null,"x":1}}}}"#
        );
        assert_eq!(
            parse_server_message(&with_null_holder),
            Ok(joined(
                vec![],
                FloorInfo {
                    policy: FloorPolicy::Single,
                    holder: None
                }
            ))
        );
    }

    #[test]
    fn golden_participant_events() {
        golden_server(
            r#"{"type":"participant_joined","participant":{"id":3,"name":"Cy","mode":"listen","role":"listener"}}"#,
            ServerMessage::ParticipantJoined {
                participant: participant(3, "Cy", Mode::Listen, Role::Listener),
            },
        );
        golden_server(
            r#"{"type":"participant_joined","participant":{"id":4,"name":"Di","mode":"ptt","role":"moderator","muted":true}}"#,
            ServerMessage::ParticipantJoined {
                participant: ParticipantInfo {
                    muted: true,
                    ..participant(4, "Di", Mode::Ptt, Role::Moderator)
                },
            },
        );
        let reasons = [
            (LeaveReason::Left, "left"),
            (LeaveReason::Disconnected, "disconnected"),
            (LeaveReason::TimedOut, "timed_out"),
            (LeaveReason::SlowConsumer, "slow_consumer"),
            (LeaveReason::ServerShutdown, "server_shutdown"),
            (LeaveReason::Removed, "removed"),
        ];
        for (reason, name) in reasons {
            golden_server(
                &format!(r#"{{"type":"participant_left","participant_id":3,"reason":"{name}"}}"#),
                ServerMessage::ParticipantLeft {
                    participant_id: 3,
                    reason,
                },
            );
        }
    }

    #[test]
    fn golden_error_and_pong() {
        golden_server(
            r#"{"type":"error","code":"room_full","message":"room \"lobby\" is full"}"#,
            ServerMessage::error(ErrorCode::RoomFull, "room \"lobby\" is full"),
        );
        golden_server(
            r#"{"type":"error","code":"removed","message":"removed from the room by moderator 1"}"#,
            ServerMessage::error(ErrorCode::Removed, "removed from the room by moderator 1"),
        );
        golden_server(r#"{"type":"pong"}"#, ServerMessage::Pong { id: None });
        golden_server(
            r#"{"type":"pong","id":7}"#,
            ServerMessage::Pong { id: Some(7) },
        );
    }

    #[test]
    fn golden_mode_changed_and_participant_muted() {
        for mode in [Mode::Talk, Mode::Ptt, Mode::Listen] {
            golden_server(
                &format!(
                    r#"{{"type":"mode_changed","participant_id":2,"mode":"{}"}}"#,
                    mode.as_str()
                ),
                ServerMessage::ModeChanged {
                    participant_id: 2,
                    mode,
                },
            );
        }
        golden_server(
            r#"{"type":"participant_muted","participant_id":2,"muted":true}"#,
            ServerMessage::ParticipantMuted {
                participant_id: 2,
                muted: true,
                by: None,
            },
        );
        golden_server(
            r#"{"type":"participant_muted","participant_id":2,"muted":false,"by":1}"#,
            ServerMessage::ParticipantMuted {
                participant_id: 2,
                muted: false,
                by: Some(1),
            },
        );
    }

    #[test]
    fn golden_floor_events() {
        golden_server(
            r#"{"type":"floor_granted","participant_id":2,"max_talk_ms":60000}"#,
            ServerMessage::FloorGranted {
                participant_id: 2,
                max_talk_ms: Some(60_000),
            },
        );
        golden_server(
            r#"{"type":"floor_granted","participant_id":2}"#,
            ServerMessage::FloorGranted {
                participant_id: 2,
                max_talk_ms: None,
            },
        );
        golden_server(
            r#"{"type":"floor_denied","holder":1}"#,
            ServerMessage::FloorDenied { holder: 1 },
        );
        let reasons = [
            (FloorEndReason::Released, "released"),
            (FloorEndReason::MaxTalkTime, "max_talk_time"),
            (FloorEndReason::Silence, "silence"),
            (FloorEndReason::Left, "left"),
        ];
        for (reason, name) in reasons {
            golden_server(
                &format!(r#"{{"type":"floor_released","participant_id":2,"reason":"{name}"}}"#),
                ServerMessage::FloorReleased {
                    participant_id: 2,
                    reason,
                    by: None,
                },
            );
        }
        golden_server(
            r#"{"type":"floor_released","participant_id":2,"reason":"preempted","by":1}"#,
            ServerMessage::FloorReleased {
                participant_id: 2,
                reason: FloorEndReason::Preempted,
                by: Some(1),
            },
        );
    }

    #[test]
    fn golden_talking_and_gain_events() {
        golden_server(
            r#"{"type":"talking_started","participant_id":2}"#,
            ServerMessage::TalkingStarted { participant_id: 2 },
        );
        golden_server(
            r#"{"type":"talking_stopped","participant_id":2}"#,
            ServerMessage::TalkingStopped { participant_id: 2 },
        );
        golden_server(r#"{"type":"caught_up"}"#, ServerMessage::CaughtUp);
        golden_server(
            r#"{"type":"gain_changed","participant_id":2,"gain_db":-6,"by":1}"#,
            ServerMessage::GainChanged {
                participant_id: 2,
                gain_db: -6,
                by: 1,
            },
        );
    }

    #[test]
    fn golden_chat() {
        golden_client(
            r#"{"type":"chat","text":"hello"}"#,
            ClientMessage::Chat {
                text: "hello".to_owned(),
            },
        );
        // Newline and tab travel as JSON escapes; other characters as they are.
        golden_client(
            r#"{"type":"chat","text":"line 1\nline\t2 👋 \"quoted\""}"#,
            ClientMessage::Chat {
                text: "line 1\nline\t2 👋 \"quoted\"".to_owned(),
            },
        );
        golden_server(
            r#"{"type":"chat","id":1,"from":2,"name":"Ada","text":"hello","ts_ms":1700000000000}"#,
            ServerMessage::Chat {
                id: 1,
                from: 2,
                name: "Ada".to_owned(),
                text: "hello".to_owned(),
                ts_ms: 1_700_000_000_000,
            },
        );
        golden_server(
            r#"{"type":"chat","id":18446744073709551615,"from":4294967295,"name":"Bob 🎧","text":"a\nb","ts_ms":0}"#,
            ServerMessage::Chat {
                id: u64::MAX,
                from: u32::MAX,
                name: "Bob 🎧".to_owned(),
                text: "a\nb".to_owned(),
                ts_ms: 0,
            },
        );
        // A client's `chat` never parses as the server's: it lacks `id`, `from`, ...
        assert_eq!(
            parse_server_message(r#"{"type":"chat","text":"hello"}"#).map_err(|e| e.code()),
            Err(ErrorCode::BadMessage)
        );
    }

    #[test]
    fn golden_create_room() {
        golden_client(
            r#"{"type":"create_room","room":"ch1"}"#,
            ClientMessage::CreateRoom(settings("ch1")),
        );
        golden_client(
            r#"{"type":"create_room","room":"ch1","floor_policy":"single","max_talkers":4}"#,
            ClientMessage::CreateRoom(RoomSettings {
                floor_policy: Some(FloorPolicy::Single),
                max_talkers: Some(4),
                ..settings("ch1")
            }),
        );
        golden_client(
            r#"{"type":"create_room","room":"ops","floor_policy":"open","max_participants":10,"max_talkers":2,"normalise":true,"max_talk_ms":30000}"#,
            ClientMessage::CreateRoom(RoomSettings {
                room: "ops".to_owned(),
                floor_policy: Some(FloorPolicy::Open),
                max_participants: Some(10),
                max_talkers: Some(2),
                normalise: Some(true),
                max_talk_ms: Some(30_000),
            }),
        );
        // `null` and unknown fields, as everywhere.
        assert_eq!(
            parse_client_message(
                r#"{"type":"create_room","room":"ch1","floor_policy":null,"max_participants":null,"max_talkers":null,"normalise":null,"max_talk_ms":null,"colour":"red"}"#
            ),
            Ok(ClientMessage::CreateRoom(settings("ch1")))
        );
    }

    #[test]
    fn golden_room_info_and_list_rooms() {
        golden_client(
            r#"{"type":"room_info","room":"ch1"}"#,
            ClientMessage::RoomInfo {
                room: "ch1".to_owned(),
            },
        );
        golden_client(r#"{"type":"list_rooms"}"#, ClientMessage::ListRooms);
        // The summary's settings are flattened into the message, next to `participants`.
        golden_server(
            r#"{"type":"room_info","room":"ch1","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"participants":3}"#,
            ServerMessage::RoomInfo(summary("ch1", 3)),
        );
        golden_server(
            r#"{"type":"rooms","rooms":[]}"#,
            ServerMessage::Rooms {
                rooms: vec![],
                truncated: false,
            },
        );
        golden_server(
            r#"{"type":"rooms","rooms":[{"room":"a","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"participants":0},{"room":"b","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"participants":2}]}"#,
            ServerMessage::Rooms {
                rooms: vec![summary("a", 0), summary("b", 2)],
                truncated: false,
            },
        );
        golden_server(
            r#"{"type":"rooms","rooms":[{"room":"a","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"participants":0}],"truncated":true}"#,
            ServerMessage::Rooms {
                rooms: vec![summary("a", 0)],
                truncated: true,
            },
        );
        for json in [
            r#"{"type":"rooms","rooms":[],"truncated":false}"#,
            r#"{"type":"rooms","rooms":[],"truncated":null}"#,
        ] {
            assert_eq!(
                parse_server_message(json),
                Ok(ServerMessage::Rooms {
                    rooms: vec![],
                    truncated: false
                }),
                "{json}"
            );
        }
        // A summary from a server that leaves settings out, with fields this crate does not
        // know: it still parses.
        assert_eq!(
            parse_server_message(
                r#"{"type":"room_info","room":"ch1","participants":1,"topic":"x","max_talkers":null}"#
            ),
            Ok(ServerMessage::RoomInfo(RoomSummary {
                settings: settings("ch1"),
                participants: 1
            }))
        );
        // A client's `room_info` never parses as the server's: it lacks `participants`.
        assert_eq!(
            parse_server_message(r#"{"type":"room_info","room":"ch1"}"#).map_err(|e| e.code()),
            Err(ErrorCode::BadMessage)
        );
    }

    #[test]
    fn enum_names() {
        for (mode, name) in [
            (Mode::Talk, "talk"),
            (Mode::Ptt, "ptt"),
            (Mode::Listen, "listen"),
        ] {
            assert_eq!(mode.as_str(), name);
            assert_eq!(
                serde_json::to_string(&mode).ok(),
                Some(format!("\"{name}\""))
            );
        }
        for (role, name) in [
            (Role::Speaker, "speaker"),
            (Role::Listener, "listener"),
            (Role::Moderator, "moderator"),
        ] {
            assert_eq!(role.as_str(), name);
            assert_eq!(
                serde_json::to_string(&role).ok(),
                Some(format!("\"{name}\""))
            );
        }
        assert_eq!(Mode::default(), Mode::Talk);
        assert_eq!(Role::default(), Role::Speaker);
        assert_eq!(FloorPolicy::default(), FloorPolicy::Open);
        assert!(Mode::Talk.sends_audio() && Mode::Ptt.sends_audio());
        assert!(!Mode::Listen.sends_audio());
    }

    /// The declaration index of every error code; a new code fails to compile here until it is
    /// added, and the test below then fails until it is in [`ErrorCode::ALL`].
    fn declaration_index(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadMessage => 0,
            ErrorCode::UnknownType => 1,
            ErrorCode::MessageTooLarge => 2,
            ErrorCode::UnsupportedFormat => 3,
            ErrorCode::InvalidRoom => 4,
            ErrorCode::InvalidName => 5,
            ErrorCode::InvalidToken => 6,
            ErrorCode::NotJoined => 7,
            ErrorCode::AlreadyJoined => 8,
            ErrorCode::RoomFull => 9,
            ErrorCode::ServerFull => 10,
            ErrorCode::BadAudioHeader => 11,
            ErrorCode::UnsupportedVersion => 12,
            ErrorCode::InvalidOpus => 13,
            ErrorCode::FrameTooLarge => 14,
            ErrorCode::ListenOnly => 15,
            ErrorCode::RateLimited => 16,
            ErrorCode::SlowConsumer => 17,
            ErrorCode::PingTimeout => 18,
            ErrorCode::ShuttingDown => 19,
            ErrorCode::Internal => 20,
            ErrorCode::Forbidden => 21,
            ErrorCode::ModeNotAllowed => 22,
            ErrorCode::NotPtt => 23,
            ErrorCode::NoFloor => 24,
            ErrorCode::UnknownParticipant => 25,
            ErrorCode::InvalidGain => 26,
            ErrorCode::Removed => 27,
            ErrorCode::InvalidChat => 28,
            ErrorCode::InvalidSettings => 29,
            ErrorCode::RoomExists => 30,
            ErrorCode::UnknownRoom => 31,
            ErrorCode::ChatRateLimited => 32,
            ErrorCode::ResumeFailed => 33,
        }
    }

    #[test]
    fn error_code_all_is_complete_and_in_order() {
        let indices: Vec<usize> = ErrorCode::ALL.into_iter().map(declaration_index).collect();
        assert_eq!(indices, (0..=33).collect::<Vec<_>>());
    }

    #[test]
    fn error_code_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize code");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
            let back: ErrorCode = serde_json::from_str(&json).expect("parse code");
            assert_eq!(back, code);
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        let new = [
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::ModeNotAllowed, "mode_not_allowed"),
            (ErrorCode::NotPtt, "not_ptt"),
            (ErrorCode::NoFloor, "no_floor"),
            (ErrorCode::UnknownParticipant, "unknown_participant"),
            (ErrorCode::InvalidGain, "invalid_gain"),
            (ErrorCode::Removed, "removed"),
            (ErrorCode::InvalidChat, "invalid_chat"),
            (ErrorCode::InvalidSettings, "invalid_settings"),
            (ErrorCode::RoomExists, "room_exists"),
            (ErrorCode::UnknownRoom, "unknown_room"),
            (ErrorCode::ChatRateLimited, "chat_rate_limited"),
            (ErrorCode::ResumeFailed, "resume_failed"),
        ];
        for (code, name) in new {
            assert_eq!(code.as_str(), name);
        }
    }

    /// Every error code appears in the spec's error table.
    #[test]
    fn spec_documents_every_error_code() {
        let spec = include_str!("../README.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` |", code.as_str());
            assert!(spec.contains(&row), "README.md has no row for {code}");
        }
    }

    #[test]
    fn close_codes() {
        let closing: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter_map(|c| c.close_code().map(|cc| (c, cc)))
            .collect();
        assert_eq!(
            closing,
            [
                (ErrorCode::MessageTooLarge, 1009),
                (ErrorCode::SlowConsumer, 1008),
                (ErrorCode::PingTimeout, 1008),
                (ErrorCode::ShuttingDown, 1001),
                (ErrorCode::Removed, 1008),
            ]
        );
        assert_eq!(
            ErrorCode::Removed.close_code(),
            Some(close_code::POLICY_VIOLATION)
        );
    }

    #[test]
    fn type_names_match_serialization() {
        let clients = client_samples();
        assert_eq!(clients.len(), ClientMessage::TYPES.len());
        for (msg, name) in clients.iter().zip(ClientMessage::TYPES) {
            assert_eq!(msg.type_name(), name);
            assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
            assert_eq!(parse_client_message(&msg.to_json()), Ok(msg.clone()));
        }
        let servers = server_samples();
        assert_eq!(servers.len(), ServerMessage::TYPES.len());
        for (msg, name) in servers.iter().zip(ServerMessage::TYPES) {
            assert_eq!(msg.type_name(), name);
            assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
            assert_eq!(parse_server_message(&msg.to_json()), Ok(msg.clone()));
        }
        let distinct: BTreeSet<_> = ClientMessage::TYPES.into_iter().collect();
        assert_eq!(distinct.len(), ClientMessage::TYPES.len());
        let distinct: BTreeSet<_> = ServerMessage::TYPES.into_iter().collect();
        assert_eq!(distinct.len(), ServerMessage::TYPES.len());
    }

    #[test]
    fn too_large() {
        let pad = " ".repeat(MAX_CONTROL_MESSAGE - r#"{"type":"leave"}"#.len());
        let at_limit = format!(r#"{{"type":"leave"}}{pad}"#);
        assert_eq!(at_limit.len(), MAX_CONTROL_MESSAGE);
        assert_eq!(parse_client_message(&at_limit), Ok(ClientMessage::Leave));
        let over = format!("{at_limit} ");
        let err = parse_client_message(&over).expect_err("over the limit");
        assert_eq!(err, ControlError::TooLarge { len: 4097 });
        assert_eq!(err.code(), ErrorCode::MessageTooLarge);
        assert_eq!(
            err.to_string(),
            "control message of 4097 bytes exceeds the maximum of 4096"
        );
    }

    #[test]
    fn not_json() {
        for text in ["", "{", "join", "{\"type\":\"leave\"} x", "\u{0}"] {
            let err = parse_client_message(text).expect_err(text);
            assert!(matches!(err, ControlError::NotJson { .. }), "{text}: {err}");
            assert_eq!(err.code(), ErrorCode::BadMessage);
        }
        let err = parse_client_message(r#"[{"type":"leave"}]"#).expect_err("array");
        assert_eq!(
            err.to_string(),
            "control message is not a JSON object: found an array"
        );
    }

    #[test]
    fn unknown_type() {
        let cases = [
            (r#"{}"#, None, "control message has no \"type\" field"),
            (
                r#"{"type":"shout"}"#,
                Some("shout"),
                "unknown control message type \"shout\"",
            ),
            (
                r#"{"type":"joined"}"#,
                Some("joined"),
                "unknown control message type \"joined\"",
            ),
            (
                r#"{"type":"floor_granted","participant_id":1}"#,
                Some("floor_granted"),
                "unknown control message type \"floor_granted\"",
            ),
            (
                r#"{"type":5}"#,
                Some("5"),
                "unknown control message type \"5\"",
            ),
            (
                r#"{"type":"Join"}"#,
                Some("Join"),
                "unknown control message type \"Join\"",
            ),
            (
                r#"{"type":"setMode","mode":"ptt"}"#,
                Some("setMode"),
                "unknown control message type \"setMode\"",
            ),
        ];
        for (text, found, message) in cases {
            let err = parse_client_message(text).expect_err(text);
            assert_eq!(
                err,
                ControlError::UnknownType {
                    found: found.map(str::to_owned)
                }
            );
            assert_eq!(err.code(), ErrorCode::UnknownType);
            assert_eq!(err.to_string(), message);
        }
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        let Err(ControlError::UnknownType { found: Some(found) }) = parse_client_message(&long)
        else {
            panic!("expected unknown type");
        };
        assert_eq!(found, "é".repeat(32));
        for text in [r#"{"type":"ping"}"#, r#"{"type":"floor_request"}"#] {
            assert!(matches!(
                parse_server_message(text),
                Err(ControlError::UnknownType { .. })
            ));
        }
    }

    #[test]
    fn invalid_fields() {
        let err = bad_client(r#"{"type":"join","room":"a","name":"b"}"#);
        assert_eq!(
            err.to_string(),
            "invalid join message: missing field `format`"
        );
        let err = bad_client(r#"{"type":"ping","id":-1}"#);
        assert!(matches!(
            err,
            ControlError::Invalid {
                message_type: "ping",
                ..
            }
        ));
        let err = bad_client(&format!(
            r#"{{"type":"join","room":"a","name":"b","mode":"shout","format":{FORMAT_JSON}}}"#
        ));
        assert!(err.to_string().contains("shout"), "{err}");
        let err = bad_client(&format!(
            r#"{{"type":"join","room":"a","name":"b","role":"admin","format":{FORMAT_JSON}}}"#
        ));
        assert!(err.to_string().contains("admin"), "{err}");
        let err = parse_server_message(r#"{"type":"error","code":"nope","message":""}"#)
            .expect_err("unknown code");
        assert!(matches!(
            err,
            ControlError::Invalid {
                message_type: "error",
                ..
            }
        ));
    }

    #[test]
    fn invalid_new_client_messages() {
        let cases = [
            (r#"{"type":"set_mode"}"#, "missing field `mode`"),
            (r#"{"type":"set_mode","mode":"shout"}"#, "shout"),
            (r#"{"type":"set_mode","mode":"PTT"}"#, "PTT"),
            (r#"{"type":"set_mode","mode":1}"#, "invalid type"),
            (r#"{"type":"mute"}"#, "missing field `muted`"),
            (
                r#"{"type":"mute","participant_id":2}"#,
                "missing field `muted`",
            ),
            (r#"{"type":"mute","muted":"yes"}"#, "invalid type"),
            (r#"{"type":"mute","muted":1}"#, "invalid type"),
            (r#"{"type":"mute","participant_id":-1,"muted":true}"#, "-1"),
            (
                r#"{"type":"mute","participant_id":4294967296,"muted":true}"#,
                "4294967296",
            ),
            (r#"{"type":"mute_room"}"#, "missing field `muted`"),
            (r#"{"type":"mute_room","muted":null}"#, "invalid type"),
            (r#"{"type":"floor_request","preempt":1}"#, "invalid type"),
            (
                r#"{"type":"floor_request","preempt":"true"}"#,
                "invalid type",
            ),
            (r#"{"type":"remove"}"#, "missing field `participant_id`"),
            (r#"{"type":"remove","participant_id":"3"}"#, "invalid type"),
            (
                r#"{"type":"set_gain","participant_id":1}"#,
                "missing field `gain_db`",
            ),
            (
                r#"{"type":"set_gain","gain_db":3}"#,
                "missing field `participant_id`",
            ),
            (
                r#"{"type":"set_gain","participant_id":1,"gain_db":2.5}"#,
                "2.5",
            ),
            (
                r#"{"type":"set_gain","participant_id":1,"gain_db":3000000000}"#,
                "3000000000",
            ),
            (
                r#"{"type":"set_gain","participant_id":1,"gain_db":null}"#,
                "invalid type",
            ),
        ];
        for (json, detail) in cases {
            let err = bad_client(json);
            assert!(matches!(err, ControlError::Invalid { .. }), "{json}: {err}");
            assert!(err.to_string().contains(detail), "{json}: {err}");
        }
        assert_eq!(
            bad_client(r#"{"type":"set_gain","participant_id":1}"#).to_string(),
            "invalid set_gain message: missing field `gain_db`"
        );
    }

    #[test]
    fn invalid_new_server_messages() {
        let cases = [
            (r#"{"type":"floor_denied"}"#, "floor_denied"),
            (
                r#"{"type":"floor_released","participant_id":1}"#,
                "floor_released",
            ),
            (
                r#"{"type":"floor_released","participant_id":1,"reason":"bored"}"#,
                "floor_released",
            ),
            (
                r#"{"type":"gain_changed","participant_id":1,"gain_db":3}"#,
                "gain_changed",
            ),
            (
                r#"{"type":"participant_muted","participant_id":1}"#,
                "participant_muted",
            ),
            (
                r#"{"type":"mode_changed","participant_id":1,"mode":"shout"}"#,
                "mode_changed",
            ),
            (r#"{"type":"talking_started"}"#, "talking_started"),
            (
                r#"{"type":"participant_left","participant_id":1,"reason":"kicked"}"#,
                "participant_left",
            ),
        ];
        for (json, message_type) in cases {
            let err = parse_server_message(json).expect_err(json);
            assert_eq!(err.code(), ErrorCode::BadMessage, "{json}");
            assert!(
                matches!(err, ControlError::Invalid { message_type: t, .. } if t == message_type),
                "{json}: {err}"
            );
        }
        let err = parse_server_message(&format!(
            r#"{{"type":"joined","participant_id":2,"room":"a","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"queue"}}}}"#
        ))
        .expect_err("unknown policy");
        assert!(err.to_string().contains("queue"), "{err}");
    }

    #[test]
    fn validate_accepts() {
        let ok = [
            join("a", "b"),
            join(&"x".repeat(64), &"é".repeat(64)),
            join("Room_1.test-2", "Ada Lovelace 👩‍💻"),
            JoinRequest {
                token: Some("t".repeat(MAX_TOKEN_LEN)),
                ..join("a", " b ")
            },
            JoinRequest {
                mode: Some(Mode::Ptt),
                role: Role::Moderator,
                ..join("a", "b")
            },
        ];
        for req in ok {
            assert_eq!(req.validate(), Ok(()), "{req:?}");
        }
    }

    #[test]
    fn validate_room() {
        let cases = [
            ("", "invalid room: room name is empty"),
            (
                "has space",
                "invalid room: room name \"has space\" contains ' '; only A-Z a-z 0-9 _ . - are \
                 allowed",
            ),
            (
                "café",
                "invalid room: room name \"café\" contains 'é'; only A-Z a-z 0-9 _ . - are \
                 allowed",
            ),
        ];
        for (room, message) in cases {
            let err = join(room, "n").validate().expect_err(room);
            assert_eq!(err.code(), ErrorCode::InvalidRoom);
            assert_eq!(err.to_string(), message);
        }
        let err = join(&"r".repeat(65), "n").validate().expect_err("long");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid room: room name \"{}...\" is 65 bytes, the maximum is 64",
                "r".repeat(64)
            )
        );
    }

    #[test]
    fn validate_name() {
        let cases = [
            ("", "invalid name: name is empty"),
            (
                " \t ",
                "invalid name: name \" \\t \" contains control character '\\t'",
            ),
            ("   ", "invalid name: name \"   \" is only whitespace"),
            (
                "\u{3000}",
                "invalid name: name \"\\u{3000}\" is only whitespace",
            ),
            (
                "a\nb",
                "invalid name: name \"a\\nb\" contains control character '\\n'",
            ),
        ];
        for (name, message) in cases {
            let err = join("r", name).validate().expect_err(name);
            assert_eq!(err.code(), ErrorCode::InvalidName);
            assert_eq!(err.to_string(), message);
        }
        let err = join("r", &"é".repeat(65)).validate().expect_err("long");
        assert!(
            err.to_string()
                .ends_with("...\" is 65 characters, the maximum is 64"),
            "{err}"
        );
    }

    #[test]
    fn validate_token() {
        let req = JoinRequest {
            token: Some("t".repeat(MAX_TOKEN_LEN + 1)),
            ..join("r", "n")
        };
        let err = req.validate().expect_err("long token");
        assert_eq!(err.code(), ErrorCode::InvalidToken);
        assert_eq!(
            err.to_string(),
            "invalid token: token is 4097 bytes, the maximum is 4096"
        );
    }

    #[test]
    fn validate_format() {
        assert_eq!(AudioFormat::opus_48k_mono_20ms().validate(), Ok(()));
        let req = JoinRequest {
            format: AudioFormat {
                codec: "pcm".to_owned(),
                sample_rate: 44_100,
                channels: 2,
                frame_ms: 10,
            },
            ..join("r", "n")
        };
        let err = req.validate().expect_err("pcm");
        assert_eq!(err.code(), ErrorCode::UnsupportedFormat);
        assert_eq!(
            err.to_string(),
            "unsupported audio format: format pcm/44100/2/10 is not supported; use opus/48000/1/20 \
             or pcm16/R/1/20 with R one of [8000, 16000, 22050, 44100, 48000]"
        );
        for rate in PCM_RATES {
            assert_eq!(AudioFormat::pcm16(rate).validate(), Ok(()));
            assert_eq!(AudioFormat::pcm16(rate).pcm_rate(), Some(rate));
        }
        assert_eq!(AudioFormat::opus_48k_mono_20ms().pcm_rate(), None);
        for bad in [
            AudioFormat::pcm16(11_025),
            AudioFormat {
                channels: 2,
                ..AudioFormat::pcm16(16_000)
            },
            AudioFormat {
                frame_ms: 10,
                ..AudioFormat::pcm16(16_000)
            },
        ] {
            assert_eq!(
                bad.validate().map_err(|e| e.code()),
                Err(ErrorCode::UnsupportedFormat),
                "{bad}"
            );
        }
        let upper = AudioFormat {
            codec: "OPUS".to_owned(),
            ..AudioFormat::opus_48k_mono_20ms()
        };
        assert!(upper.validate().is_err());
    }

    #[test]
    fn validate_reports_room_before_format() {
        let req = JoinRequest {
            format: AudioFormat {
                channels: 2,
                ..AudioFormat::opus_48k_mono_20ms()
            },
            ..join("", "")
        };
        assert_eq!(
            req.validate().map_err(|e| e.code()),
            Err(ErrorCode::InvalidRoom)
        );
    }

    #[test]
    fn validate_chat_accepts() {
        let ok = [
            "hi".to_owned(),
            "line 1\nline 2".to_owned(),
            "\tindented".to_owned(),
            "👋🏽 café ünïcödé 中文".to_owned(),
            " padded ".to_owned(),
            "x".repeat(MAX_CHAT_CHARS),
            "😀".repeat(MAX_CHAT_CHARS),
        ];
        for text in ok {
            assert_eq!(validate_chat(&text), Ok(()), "{text:?}");
        }
    }

    #[test]
    fn validate_chat_rejects() {
        let cases = [
            (String::new(), "invalid chat message: the text is empty"),
            (
                " \n\t ".to_owned(),
                "invalid chat message: the text is only whitespace",
            ),
            (
                "\u{3000}".to_owned(),
                "invalid chat message: the text is only whitespace",
            ),
            (
                "x".repeat(MAX_CHAT_CHARS + 1),
                "invalid chat message: the text is 1001 characters, the maximum is 1000",
            ),
            (
                "é".repeat(MAX_CHAT_CHARS + 1),
                "invalid chat message: the text is 1001 characters, the maximum is 1000",
            ),
            (
                "\u{0007}".to_owned(),
                "invalid chat message: the text contains the control character '\\u{7}'",
            ),
            (
                "a\rb".to_owned(),
                "invalid chat message: the text contains the control character '\\r'",
            ),
            (
                "a\u{0}b".to_owned(),
                "invalid chat message: the text contains the control character '\\0'",
            ),
            (
                "a\u{85}b".to_owned(),
                "invalid chat message: the text contains the control character '\\u{85}'",
            ),
        ];
        for (text, message) in cases {
            let err = validate_chat(&text).expect_err(&text);
            assert_eq!(err.code(), ErrorCode::InvalidChat, "{text:?}");
            assert!(matches!(err, ControlError::InvalidChat { .. }));
            assert_eq!(err.to_string(), message, "{text:?}");
        }
    }

    /// A chat text the server accepts always fits in a control message when serialized without
    /// `\uXXXX` escapes: at most 4 bytes a character, and the escapes JSON needs (`\"`, `\\`,
    /// `\n`, `\t`) are 2 bytes for a 1-byte character.
    #[test]
    fn largest_valid_chat_fits_a_control_message() {
        for text in [
            "😀".repeat(MAX_CHAT_CHARS),
            "\"".repeat(MAX_CHAT_CHARS),
            "\n".repeat(MAX_CHAT_CHARS - 1) + "x",
        ] {
            assert_eq!(validate_chat(&text), Ok(()));
            let msg = ClientMessage::Chat { text };
            let json = msg.to_json();
            assert!(json.len() <= MAX_CONTROL_MESSAGE, "{} bytes", json.len());
            assert_eq!(parse_client_message(&json), Ok(msg));
        }
        // Too long but within the frame limit: parsed, then refused by `validate_chat` (the
        // connection stays open)...
        let json = ClientMessage::Chat {
            text: "x".repeat(MAX_CHAT_CHARS + 1),
        }
        .to_json();
        let Ok(ClientMessage::Chat { text }) = parse_client_message(&json) else {
            panic!("expected a chat");
        };
        assert_eq!(
            validate_chat(&text).map_err(|e| e.code()),
            Err(ErrorCode::InvalidChat)
        );
        // ... but over the frame limit: `message_too_large`, which closes the connection.
        let json = ClientMessage::Chat {
            text: "😀".repeat(MAX_CHAT_CHARS + 100),
        }
        .to_json();
        assert_eq!(
            parse_client_message(&json).map_err(|e| e.code()),
            Err(ErrorCode::MessageTooLarge)
        );
    }

    #[test]
    fn validate_room_settings_accepts() {
        let ok = [
            settings("ch1"),
            RoomSettings {
                floor_policy: Some(FloorPolicy::Single),
                max_participants: Some(1),
                max_talkers: Some(1),
                normalise: Some(true),
                max_talk_ms: Some(1_000),
                ..settings("a")
            },
            RoomSettings {
                floor_policy: Some(FloorPolicy::Open),
                max_participants: Some(256),
                max_talkers: Some(16),
                normalise: Some(false),
                max_talk_ms: Some(3_600_000),
                ..settings(&"x".repeat(MAX_ROOM_LEN))
            },
            // `max_talkers` may exceed `max_participants`; the room just never reaches it.
            RoomSettings {
                max_participants: Some(2),
                max_talkers: Some(16),
                ..settings("a")
            },
        ];
        for room in ok {
            assert_eq!(room.validate(256, 16), Ok(()), "{room:?}");
        }
    }

    #[test]
    fn validate_room_settings_rejects() {
        let cases = [
            (
                RoomSettings {
                    max_participants: Some(0),
                    ..settings("a")
                },
                "invalid room settings: max_participants 0 is outside 1..=256",
            ),
            (
                RoomSettings {
                    max_participants: Some(257),
                    ..settings("a")
                },
                "invalid room settings: max_participants 257 is outside 1..=256",
            ),
            (
                RoomSettings {
                    max_participants: Some(u32::MAX),
                    ..settings("a")
                },
                "invalid room settings: max_participants 4294967295 is outside 1..=256",
            ),
            (
                RoomSettings {
                    max_talkers: Some(0),
                    ..settings("a")
                },
                "invalid room settings: max_talkers 0 is outside 1..=16",
            ),
            (
                RoomSettings {
                    max_talkers: Some(17),
                    ..settings("a")
                },
                "invalid room settings: max_talkers 17 is outside 1..=16",
            ),
            (
                RoomSettings {
                    max_talk_ms: Some(999),
                    ..settings("a")
                },
                "invalid room settings: max_talk_ms 999 is outside 1000..=3600000",
            ),
            (
                RoomSettings {
                    max_talk_ms: Some(3_600_001),
                    ..settings("a")
                },
                "invalid room settings: max_talk_ms 3600001 is outside 1000..=3600000",
            ),
            (
                RoomSettings {
                    max_talk_ms: Some(0),
                    ..settings("a")
                },
                "invalid room settings: max_talk_ms 0 is outside 1000..=3600000",
            ),
        ];
        for (room, message) in cases {
            let err = room.validate(256, 16).expect_err(message);
            assert_eq!(err.code(), ErrorCode::InvalidSettings, "{room:?}");
            assert_eq!(err.to_string(), message);
        }
        // The room name is checked first, as in `join`.
        for name in ["", "has space", "café", &"r".repeat(MAX_ROOM_LEN + 1)] {
            let room = RoomSettings {
                max_talkers: Some(0),
                ..settings(name)
            };
            let err = room.validate(256, 16).expect_err(name);
            assert_eq!(err.code(), ErrorCode::InvalidRoom, "{name:?}");
            assert_eq!(
                Err(err),
                JoinRequest::validate_room_name(name),
                "same check as join"
            );
        }
        assert_eq!(JoinRequest::validate_room_name("Room_1.test-2"), Ok(()));
    }

    #[test]
    fn invalid_room_and_chat_messages() {
        let cases = [
            (r#"{"type":"chat"}"#, "missing field `text`"),
            (r#"{"type":"chat","text":null}"#, "invalid type"),
            (r#"{"type":"chat","text":5}"#, "invalid type"),
            (r#"{"type":"chat","text":["a"]}"#, "invalid type"),
            (r#"{"type":"room_info"}"#, "missing field `room`"),
            (r#"{"type":"room_info","room":null}"#, "invalid type"),
            (r#"{"type":"create_room"}"#, "missing field `room`"),
            (
                r#"{"type":"create_room","floor_policy":"single"}"#,
                "missing field `room`",
            ),
            (r#"{"type":"create_room","room":7}"#, "invalid type"),
            (
                r#"{"type":"create_room","room":"a","floor_policy":"queue"}"#,
                "queue",
            ),
            (
                r#"{"type":"create_room","room":"a","max_participants":-1}"#,
                "-1",
            ),
            (
                r#"{"type":"create_room","room":"a","max_talkers":4294967296}"#,
                "4294967296",
            ),
            (
                r#"{"type":"create_room","room":"a","max_talk_ms":1.5}"#,
                "1.5",
            ),
            (
                r#"{"type":"create_room","room":"a","normalise":"yes"}"#,
                "invalid type",
            ),
        ];
        for (json, detail) in cases {
            let err = bad_client(json);
            assert!(matches!(err, ControlError::Invalid { .. }), "{json}: {err}");
            assert!(err.to_string().contains(detail), "{json}: {err}");
        }
        assert_eq!(
            bad_client(r#"{"type":"chat"}"#).to_string(),
            "invalid chat message: missing field `text`"
        );
        assert_eq!(
            bad_client(r#"{"type":"room_info"}"#).to_string(),
            "invalid room_info message: missing field `room`"
        );
        // `list_rooms` has no fields: any extra is ignored.
        assert_eq!(
            parse_client_message(r#"{"type":"list_rooms","room":"a"}"#),
            Ok(ClientMessage::ListRooms)
        );
        // Server messages are not client messages.
        assert_eq!(
            parse_client_message(r#"{"type":"rooms","rooms":[]}"#).map_err(|e| e.code()),
            Err(ErrorCode::UnknownType)
        );
        for text in [
            r#"{"type":"list_rooms"}"#,
            r#"{"type":"create_room","room":"a"}"#,
        ] {
            assert_eq!(
                parse_server_message(text).map_err(|e| e.code()),
                Err(ErrorCode::UnknownType)
            );
        }
    }

    #[test]
    fn invalid_room_and_chat_server_messages() {
        let cases = [
            (r#"{"type":"chat","text":"x"}"#, "chat"),
            (
                r#"{"type":"chat","id":1,"from":2,"name":"a","text":"x"}"#,
                "chat",
            ),
            (
                r#"{"type":"chat","id":-1,"from":2,"name":"a","text":"x","ts_ms":0}"#,
                "chat",
            ),
            (r#"{"type":"room_info","room":"a"}"#, "room_info"),
            (r#"{"type":"room_info","participants":1}"#, "room_info"),
            (
                r#"{"type":"room_info","room":"a","participants":1,"floor_policy":"queue"}"#,
                "room_info",
            ),
            (r#"{"type":"rooms"}"#, "rooms"),
            (r#"{"type":"rooms","rooms":[{"room":"a"}]}"#, "rooms"),
            (r#"{"type":"rooms","rooms":[],"truncated":1}"#, "rooms"),
        ];
        for (json, message_type) in cases {
            let err = parse_server_message(json).expect_err(json);
            assert_eq!(err.code(), ErrorCode::BadMessage, "{json}");
            assert!(
                matches!(err, ControlError::Invalid { message_type: t, .. } if t == message_type),
                "{json}: {err}"
            );
        }
    }

    fn arb_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Talk), Just(Mode::Ptt), Just(Mode::Listen)]
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Speaker),
            Just(Role::Listener),
            Just(Role::Moderator)
        ]
    }

    fn arb_floor() -> impl Strategy<Value = FloorInfo> {
        (arb_floor_policy(), any::<Option<u32>>())
            .prop_map(|(policy, holder)| FloorInfo { policy, holder })
    }

    fn arb_floor_end() -> impl Strategy<Value = FloorEndReason> {
        prop_oneof![
            Just(FloorEndReason::Released),
            Just(FloorEndReason::MaxTalkTime),
            Just(FloorEndReason::Silence),
            Just(FloorEndReason::Left),
            Just(FloorEndReason::Preempted),
        ]
    }

    fn arb_format() -> impl Strategy<Value = AudioFormat> {
        (any::<String>(), any::<u32>(), any::<u8>(), any::<u32>()).prop_map(
            |(codec, sample_rate, channels, frame_ms)| AudioFormat {
                codec,
                sample_rate,
                channels,
                frame_ms,
            },
        )
    }

    fn arb_participant() -> impl Strategy<Value = ParticipantInfo> {
        (
            any::<u32>(),
            any::<String>(),
            arb_mode(),
            arb_role(),
            any::<bool>(),
        )
            .prop_map(|(id, name, mode, role, muted)| ParticipantInfo {
                id,
                name,
                mode,
                role,
                muted,
            })
    }

    fn arb_floor_policy() -> impl Strategy<Value = FloorPolicy> {
        prop_oneof![Just(FloorPolicy::Open), Just(FloorPolicy::Single)]
    }

    /// Settings with each field present or not, and the room name and numbers anything.
    fn arb_room_settings() -> impl Strategy<Value = RoomSettings> {
        (
            any::<String>(),
            proptest::option::of(arb_floor_policy()),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<bool>>(),
            any::<Option<u64>>(),
        )
            .prop_map(
                |(room, floor_policy, max_participants, max_talkers, normalise, max_talk_ms)| {
                    RoomSettings {
                        room,
                        floor_policy,
                        max_participants,
                        max_talkers,
                        normalise,
                        max_talk_ms,
                    }
                },
            )
    }

    fn arb_room_summary() -> impl Strategy<Value = RoomSummary> {
        (arb_room_settings(), any::<u32>()).prop_map(|(settings, participants)| RoomSummary {
            settings,
            participants,
        })
    }

    fn arb_client() -> impl Strategy<Value = ClientMessage> {
        let join = (
            any::<String>(),
            any::<String>(),
            any::<Option<String>>(),
            proptest::option::of(arb_mode()),
            any::<Option<String>>(),
            arb_role(),
            arb_format(),
        )
            .prop_map(|(room, name, token, mode, resume, role, format)| {
                ClientMessage::Join(JoinRequest {
                    room,
                    name,
                    token,
                    mode,
                    resume,
                    role,
                    format,
                })
            });
        prop_oneof![
            join,
            Just(ClientMessage::Leave),
            any::<Option<u64>>().prop_map(|id| ClientMessage::Ping { id }),
            arb_mode().prop_map(|mode| ClientMessage::SetMode { mode }),
            (any::<Option<u32>>(), any::<bool>()).prop_map(|(participant_id, muted)| {
                ClientMessage::Mute {
                    participant_id,
                    muted,
                }
            }),
            any::<bool>().prop_map(|muted| ClientMessage::MuteRoom { muted }),
            any::<bool>().prop_map(|preempt| ClientMessage::FloorRequest { preempt }),
            Just(ClientMessage::FloorRelease),
            any::<u32>().prop_map(|participant_id| ClientMessage::Remove { participant_id }),
            (any::<u32>(), any::<i32>()).prop_map(|(participant_id, gain_db)| {
                ClientMessage::SetGain {
                    participant_id,
                    gain_db,
                }
            }),
            any::<String>().prop_map(|text| ClientMessage::Chat { text }),
            arb_room_settings().prop_map(ClientMessage::CreateRoom),
            any::<String>().prop_map(|room| ClientMessage::RoomInfo { room }),
            Just(ClientMessage::ListRooms),
        ]
    }

    fn arb_reason() -> impl Strategy<Value = LeaveReason> {
        prop_oneof![
            Just(LeaveReason::Left),
            Just(LeaveReason::Disconnected),
            Just(LeaveReason::TimedOut),
            Just(LeaveReason::SlowConsumer),
            Just(LeaveReason::ServerShutdown),
            Just(LeaveReason::Removed),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerMessage> {
        prop_oneof![
            (
                any::<u32>(),
                any::<String>(),
                proptest::collection::vec(arb_participant(), 0..5),
                arb_format(),
                arb_floor(),
                any::<Option<String>>(),
                any::<bool>(),
                any::<Option<u64>>(),
            )
                .prop_map(
                    |(
                        participant_id,
                        room,
                        participants,
                        format,
                        floor,
                        resume_token,
                        resumed,
                        replay_ms,
                    )| {
                        ServerMessage::Joined {
                            participant_id,
                            room,
                            participants,
                            format,
                            floor,
                            resume_token,
                            resumed,
                            replay_ms,
                        }
                    },
                ),
            arb_participant()
                .prop_map(|participant| ServerMessage::ParticipantJoined { participant }),
            (any::<u32>(), arb_reason()).prop_map(|(participant_id, reason)| {
                ServerMessage::ParticipantLeft {
                    participant_id,
                    reason,
                }
            }),
            (
                proptest::sample::select(ErrorCode::ALL.to_vec()),
                any::<String>()
            )
                .prop_map(|(code, message)| ServerMessage::error(code, message)),
            any::<Option<u64>>().prop_map(|id| ServerMessage::Pong { id }),
            (any::<u32>(), arb_mode()).prop_map(|(participant_id, mode)| {
                ServerMessage::ModeChanged {
                    participant_id,
                    mode,
                }
            }),
            (any::<u32>(), any::<bool>(), any::<Option<u32>>()).prop_map(
                |(participant_id, muted, by)| ServerMessage::ParticipantMuted {
                    participant_id,
                    muted,
                    by,
                }
            ),
            (any::<u32>(), any::<Option<u64>>()).prop_map(|(participant_id, max_talk_ms)| {
                ServerMessage::FloorGranted {
                    participant_id,
                    max_talk_ms,
                }
            }),
            any::<u32>().prop_map(|holder| ServerMessage::FloorDenied { holder }),
            (any::<u32>(), arb_floor_end(), any::<Option<u32>>()).prop_map(
                |(participant_id, reason, by)| ServerMessage::FloorReleased {
                    participant_id,
                    reason,
                    by,
                }
            ),
            any::<u32>()
                .prop_map(|participant_id| ServerMessage::TalkingStarted { participant_id }),
            any::<u32>()
                .prop_map(|participant_id| ServerMessage::TalkingStopped { participant_id }),
            Just(ServerMessage::CaughtUp),
            (any::<u32>(), any::<i32>(), any::<u32>()).prop_map(|(participant_id, gain_db, by)| {
                ServerMessage::GainChanged {
                    participant_id,
                    gain_db,
                    by,
                }
            }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<String>(),
                any::<String>(),
                any::<u64>()
            )
                .prop_map(|(id, from, name, text, ts_ms)| ServerMessage::Chat {
                    id,
                    from,
                    name,
                    text,
                    ts_ms,
                }),
            arb_room_summary().prop_map(ServerMessage::RoomInfo),
            (
                proptest::collection::vec(arb_room_summary(), 0..4),
                any::<bool>()
            )
                .prop_map(|(rooms, truncated)| ServerMessage::Rooms { rooms, truncated }),
        ]
    }

    /// Runs the checks the server makes on a parsed message, which must not panic either.
    fn validate_client(msg: &ClientMessage) {
        let result = match msg {
            ClientMessage::Join(req) => req.validate(),
            ClientMessage::Chat { text } => validate_chat(text),
            ClientMessage::CreateRoom(settings) => settings.validate(256, 16),
            ClientMessage::RoomInfo { room } => JoinRequest::validate_room_name(room),
            _ => Ok(()),
        };
        if let Err(err) = result {
            let _ = (err.code(), err.to_string());
        }
    }

    /// The `"type"`s `strategy` produces in 2000 deterministic draws.
    fn drawn_types<T: fmt::Debug>(
        strategy: impl Strategy<Value = T>,
        type_name: impl Fn(&T) -> &'static str,
    ) -> BTreeSet<&'static str> {
        let mut runner = TestRunner::deterministic();
        (0..2000)
            .map(|_| {
                let value = strategy.new_tree(&mut runner).expect("draw").current();
                type_name(&value)
            })
            .collect()
    }

    /// The round-trip properties below see every message type.
    #[test]
    fn strategies_cover_every_type() {
        assert_eq!(
            drawn_types(arb_client(), ClientMessage::type_name),
            ClientMessage::TYPES.into_iter().collect()
        );
        assert_eq!(
            drawn_types(arb_server(), ServerMessage::type_name),
            ServerMessage::TYPES.into_iter().collect()
        );
    }

    proptest! {
        #[test]
        fn client_json_round_trip(msg in arb_client()) {
            let json = msg.to_json();
            prop_assert!(ClientMessage::TYPES.contains(&msg.type_name()));
            // A message over the size limit is rejected; all others parse back unchanged.
            if json.len() <= MAX_CONTROL_MESSAGE {
                prop_assert_eq!(parse_client_message(&json), Ok(msg));
            } else {
                prop_assert_eq!(
                    parse_client_message(&json),
                    Err(ControlError::TooLarge { len: json.len() })
                );
            }
        }

        #[test]
        fn server_json_round_trip(msg in arb_server()) {
            prop_assert!(ServerMessage::TYPES.contains(&msg.type_name()));
            prop_assert_eq!(parse_server_message(&msg.to_json()), Ok(msg));
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            if let Err(err) = parse_client_message(&text) {
                let _ = (err.code(), err.to_string());
            }
            if let Err(err) = parse_server_message(&text) {
                let _ = (err.code(), err.to_string());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_client_message(&text);
            let _ = parse_server_message(&text);
        }

        #[test]
        fn json_like_text_never_panics(
            text in concat!(
                r#"\{("(type|id|room|name|format|mode|role|token|code|participant_id|muted|"#,
                r#"preempt|gain_db|holder|by|reason|floor|policy|max_talk_ms|text|from|ts_ms|"#,
                r#"floor_policy|max_participants|max_talkers|normalise|participants|rooms|"#,
                r#"truncated)":"#,
                r#"("[a-z_]{0,13}"|-?[0-9]{1,22}|null|true|false|\[\]|\{\}),?){0,6}\}"#,
            ),
        ) {
            match parse_client_message(&text) {
                Ok(msg) => validate_client(&msg),
                Err(err) => { let _ = (err.code(), err.to_string()); }
            }
            let _ = parse_server_message(&text);
        }

        #[test]
        fn mutated_valid_message_never_panics(
            which in any::<prop::sample::Index>(),
            index in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let samples = client_samples();
            let mut bytes = which.get(&samples).to_json().into_bytes();
            let i = index.index(bytes.len());
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            match parse_client_message(&text) {
                Ok(msg) => validate_client(&msg),
                Err(err) => { let _ = (err.code(), err.to_string()); }
            }
        }

        /// `validate_chat` accepts exactly the texts the spec describes.
        #[test]
        fn validate_chat_agrees_with_spec(
            text in prop_oneof![
                any::<String>(),
                "[ a\n\t\r\u{7}\u{85}\u{3000}é😀]{0,8}",
                "[a😀]{995,1005}",
            ],
        ) {
            let spec_ok = !text.trim().is_empty()
                && text.chars().count() <= MAX_CHAT_CHARS
                && text.chars().all(|c| !c.is_control() || c == '\n' || c == '\t');
            match validate_chat(&text) {
                Ok(()) => prop_assert!(spec_ok, "{:?}", text),
                Err(err) => {
                    prop_assert!(!spec_ok, "{:?}: {}", text, err);
                    prop_assert_eq!(err.code(), ErrorCode::InvalidChat);
                    // The message never quotes the text, which could be long.
                    prop_assert!(err.to_string().len() < 128, "{}", err);
                }
            }
        }

        /// `RoomSettings::validate` accepts exactly the ranges the spec gives.
        #[test]
        fn validate_room_settings_agrees_with_spec(
            room in arb_room_settings(),
            server_participants in 1..300u32,
            server_talkers in 1..20u32,
            small in (
                proptest::option::of(0..300u32),
                proptest::option::of(0..20u32),
                proptest::option::of(0..4_000_000u64),
            ),
        ) {
            // Half the draws have a valid name and numbers near the bounds.
            let (participants, talkers, talk_ms) = small;
            let room = if room.room.len() % 2 == 0 {
                RoomSettings {
                    room: "ch1".to_owned(),
                    max_participants: participants,
                    max_talkers: talkers,
                    max_talk_ms: talk_ms,
                    ..room
                }
            } else {
                room
            };
            let name_ok = JoinRequest::validate_room_name(&room.room).is_ok();
            let in_range = |value: Option<u64>, high: u64, low: u64| {
                value.is_none_or(|v| (low..=high).contains(&v))
            };
            let settings_ok = in_range(
                room.max_participants.map(u64::from),
                server_participants.into(),
                1,
            ) && in_range(room.max_talkers.map(u64::from), server_talkers.into(), 1)
                && in_range(room.max_talk_ms, 3_600_000, 1_000);
            let expected = match (name_ok, settings_ok) {
                (false, _) => Err(ErrorCode::InvalidRoom),
                (true, false) => Err(ErrorCode::InvalidSettings),
                (true, true) => Ok(()),
            };
            prop_assert_eq!(
                room.validate(server_participants, server_talkers).map_err(|e| e.code()),
                expected
            );
        }

        #[test]
        fn validate_never_panics(room in any::<String>(), name in any::<String>()) {
            match join(&room, &name).validate() {
                Ok(()) => {
                    prop_assert!(!room.is_empty() && room.len() <= MAX_ROOM_LEN);
                    prop_assert!(!name.trim().is_empty());
                }
                Err(err) => prop_assert!(err.to_string().len() < 512, "{}", err),
            }
        }
    }
}
