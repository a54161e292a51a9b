//! What can go wrong: the error codes sent in `error` messages, the WebSocket close codes some of
//! them close with, and why a text frame is not an acceptable control message.

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

use super::validate::MAX_CONTROL_MESSAGE;

/// Machine-readable error codes sent in `error` messages.
///
/// The wire name comes from the variant name twice, by serde (`rename_all`) for JSON and by strum
/// (`serialize_all`) for [`ErrorCode::as_str`] and `Display`; a test checks that they agree for
/// every code, and that the spec's error table has a row for each.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// A text frame is not valid JSON, or a known message has missing or invalid fields.
    BadMessage,
    /// A JSON object whose `"type"` is missing or not a known message.
    UnknownType,
    /// A text frame over 4096 bytes, or any frame over the server's WebSocket limit. Closes (1009).
    MessageTooLarge,
    /// The `join` asked for an audio format other than opus/48000/1/20 or pcm16/R/1/20 (R one of
    /// [`PCM_RATES`](super::PCM_RATES)); or a `pcm16` client sent a frame that is not 20 ms of
    /// samples, which is dropped.
    UnsupportedFormat,
    /// The room name of a `join`, `create_room` or `room_info` is empty, too long or has a
    /// disallowed character.
    InvalidRoom,
    /// The `join` name is empty, too long, blank, or has a control or invisible formatting
    /// character.
    InvalidName,
    /// The access token is malformed, over 4096 bytes, signed with another key or algorithm,
    /// or has invalid claims; or the `resume` token is not 1 to 64 hex digits.
    InvalidToken,
    /// Audio, `leave`, `chat` or a room request (`set_mode`, `mute`, ...) before a successful
    /// `join`.
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
    /// Audio arriving faster than real time, whose excess is dropped; or `create_room` beyond its
    /// own limit (a burst of 5, then 1 per 10 s), which creates nothing.
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
    /// Control messages sent faster than the connection's control budget (a token bucket; each
    /// message type has its cost); the message was dropped, not applied. The connection stays
    /// open.
    ControlRateLimited,
    /// The room's mixer thread has too many control requests queued; the request was not
    /// applied: retry later. The connection stays open.
    ServerBusy,
    /// The connection did not join a room within the server's timeout after connecting (or
    /// after leaving). Closes (1008).
    JoinTimeout,
    /// The server requires an access token for this request (`join`, `create_room`,
    /// `room_info`, `list_rooms`) and none was given, in the message or the connection's URL.
    TokenRequired,
    /// The access token has expired (or is not valid yet).
    TokenExpired,
    /// The access token does not grant the room asked for.
    TokenWrongRoom,
    /// The access token does not grant what was asked: a role above its own, creating rooms,
    /// or listing them.
    TokenInsufficient,
    /// Another participant in the room has this name, or one that looks the same (compared
    /// case-insensitively by Unicode's confusable skeleton).
    NameTaken,
    /// This identity (or, on a server without tokens, this name or address) was removed from
    /// the room with a ban, which lasts as long as the room.
    Banned,
    /// The same identity joined the room on another connection, which takes its place.
    /// Closes (1008).
    Replaced,
    /// The server is draining (its operator is taking it out of service): it takes no new
    /// rooms. Rooms it already mixes go on. Try another server.
    Draining,
    /// A node of a fleet cannot find or place the room now: the fleet's registry (Redis) is
    /// unreachable or just restarted, or no node can take a new room. Rooms already mixed go
    /// on. Try again in a few seconds.
    FleetUnavailable,
    /// A `record` the server cannot carry out: it was started without `--record-dir`, or the
    /// recording's file could not be created, or another node of the fleet mixes the room.
    RecordingUnavailable,
}

impl ErrorCode {
    /// Every error code, in declaration order.
    pub const ALL: &'static [ErrorCode] = <Self as VariantArray>::VARIANTS;

    /// The snake_case wire name, as in the JSON `"code"` field.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The WebSocket close code the server closes with after sending this error, or `None` if
    /// the connection stays open.
    pub fn close_code(self) -> Option<u16> {
        match self {
            ErrorCode::MessageTooLarge => Some(close_code::MESSAGE_TOO_BIG),
            ErrorCode::SlowConsumer
            | ErrorCode::PingTimeout
            | ErrorCode::Removed
            | ErrorCode::JoinTimeout
            | ErrorCode::Replaced => Some(close_code::POLICY_VIOLATION),
            ErrorCode::ShuttingDown => Some(close_code::GOING_AWAY),
            _ => None,
        }
    }
}

/// WebSocket close codes (RFC 6455 section 7.4.1) the server uses.
pub mod close_code {
    /// Normal closure: the reply to a client's own close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (`shutting_down`).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks the WebSocket protocol itself.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke a rule (`slow_consumer`, `ping_timeout`), or a moderator removed it
    /// (`removed`).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over the size limit: `message_too_large`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed to do what it had accepted (a `join` that failed on its mixer thread).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// After a `redirect`: the room is mixed elsewhere; reconnect to the URL it gave. (An
    /// application code, from the 4000-4999 range; 4307 echoes HTTP's 307 Temporary Redirect.)
    pub const REDIRECT: u16 = 4307;
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
        /// The format asked for and the ones supported.
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

/// Longest excerpt of a peer's bad value quoted in an error message, in bytes.
///
/// Error messages name the bad value, but are sent back to the peer and logged, so a huge value
/// is cut short.
const MAX_QUOTED: usize = 64;

/// At most [`MAX_QUOTED`] bytes of `s`, cut at a character boundary.
pub(super) fn truncate(s: &str) -> &str {
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
pub(super) fn quote(s: &str) -> String {
    format!("\"{}\"", quote_bare(s))
}

/// `s` with escapes but without quotes, cut short with `...` if long.
pub(super) fn quote_bare(s: &str) -> String {
    let cut = truncate(s);
    let escaped: String = cut.chars().flat_map(char::escape_debug).collect();
    if cut.len() < s.len() {
        format!("{escaped}...")
    } else {
        escaped
    }
}
