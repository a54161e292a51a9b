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
}

impl ClientMessage {
    /// Every value of the `"type"` field a client message can have.
    pub const TYPES: [&'static str; 3] = ["join", "leave", "ping"];

    /// The value of this message's `"type"` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join(_) => "join",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
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
    /// Whether the client sends audio (`talk`, the default) or only receives it (`listen`).
    #[serde(default)]
    pub mode: Mode,
    /// Format of the audio the client sends; only opus/48000/1/20 is supported.
    pub format: AudioFormat,
}

impl JoinRequest {
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
        self.format.validate()
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

    /// Checks that this is the supported format; the error names what was asked for.
    pub fn validate(&self) -> Result<(), ControlError> {
        if *self == AudioFormat::opus_48k_mono_20ms() {
            return Ok(());
        }
        Err(ControlError::UnsupportedFormat {
            detail: format!(
                "format {} is not supported; the only supported format is {}",
                self,
                AudioFormat::opus_48k_mono_20ms()
            ),
        })
    }
}

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
}

impl ServerMessage {
    /// Every value of the `"type"` field a server message can have.
    pub const TYPES: [&'static str; 5] = [
        "joined",
        "participant_joined",
        "participant_left",
        "error",
        "pong",
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
    /// Whether it talks or only listens.
    pub mode: Mode,
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
    /// Audio or `leave` before a successful `join`.
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
}

impl ErrorCode {
    /// Every error code, in declaration order.
    pub const ALL: [ErrorCode; 21] = [
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
        }
    }

    /// The WebSocket close code the server closes with after sending this error, or `None` if
    /// the connection stays open.
    pub fn close_code(self) -> Option<u16> {
        match self {
            ErrorCode::MessageTooLarge => Some(close_code::MESSAGE_TOO_BIG),
            ErrorCode::SlowConsumer | ErrorCode::PingTimeout => Some(close_code::POLICY_VIOLATION),
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
    /// The peer broke a rule: `slow_consumer`, `ping_timeout`.
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
    use proptest::prelude::*;

    use super::*;

    fn join(room: &str, name: &str) -> JoinRequest {
        JoinRequest {
            room: room.to_owned(),
            name: name.to_owned(),
            token: None,
            mode: Mode::Talk,
            format: AudioFormat::opus_48k_mono_20ms(),
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

    #[test]
    fn golden_join() {
        golden_client(
            r#"{"type":"join","room":"lobby","name":"Ada","mode":"talk","format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
            ClientMessage::Join(join("lobby", "Ada")),
        );
        golden_client(
            r#"{"type":"join","room":"r-1","name":"Bob","token":"t0k","mode":"listen","format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
            ClientMessage::Join(JoinRequest {
                token: Some("t0k".to_owned()),
                mode: Mode::Listen,
                ..join("r-1", "Bob")
            }),
        );
    }

    /// Every JSON example in the spec (README.md) is a valid message that serializes back to
    /// the same text, except where the example omits an optional field.
    #[test]
    fn spec_examples_parse() {
        let spec = include_str!("../README.md");
        let mut examples: Vec<&str> = spec
            .split("```json\n")
            .skip(1)
            .map(|block| block.split("```").next().unwrap_or_default().trim())
            .collect();
        // The example session's table rows hold one JSON message each, in backquotes.
        examples.extend(
            spec.lines()
                .filter(|line| line.starts_with("| ") && line.contains("`{\"type\""))
                .filter_map(|line| line.split('`').nth(1)),
        );
        assert!(
            examples.len() >= 15,
            "found only {} examples",
            examples.len()
        );
        for json in examples {
            if let Ok(msg) = parse_client_message(json) {
                let reparsed = parse_client_message(&msg.to_json());
                assert_eq!(reparsed, Ok(msg.clone()), "{json}");
                if json.contains("\"mode\"") || !json.contains("join") {
                    assert_eq!(msg.to_json(), json);
                }
            } else {
                let msg = parse_server_message(json).expect(json);
                assert_eq!(msg.to_json(), json);
            }
        }
    }

    #[test]
    fn join_defaults_and_unknown_fields() {
        let json = r#"{"type":"join","room":"lobby","name":"Ada","future":[1,2],
            "format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20,"x":true}}"#;
        assert_eq!(
            parse_client_message(json),
            Ok(ClientMessage::Join(join("lobby", "Ada")))
        );
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
    fn golden_joined() {
        golden_server(
            r#"{"type":"joined","participant_id":2,"room":"lobby","participants":[{"id":1,"name":"Ada","mode":"talk"}],"format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
            ServerMessage::Joined {
                participant_id: 2,
                room: "lobby".to_owned(),
                participants: vec![ParticipantInfo {
                    id: 1,
                    name: "Ada".to_owned(),
                    mode: Mode::Talk,
                }],
                format: AudioFormat::opus_48k_mono_20ms(),
            },
        );
    }

    #[test]
    fn golden_participant_events() {
        golden_server(
            r#"{"type":"participant_joined","participant":{"id":3,"name":"Cy","mode":"listen"}}"#,
            ServerMessage::ParticipantJoined {
                participant: ParticipantInfo {
                    id: 3,
                    name: "Cy".to_owned(),
                    mode: Mode::Listen,
                },
            },
        );
        let reasons = [
            (LeaveReason::Left, "left"),
            (LeaveReason::Disconnected, "disconnected"),
            (LeaveReason::TimedOut, "timed_out"),
            (LeaveReason::SlowConsumer, "slow_consumer"),
            (LeaveReason::ServerShutdown, "server_shutdown"),
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
        golden_server(r#"{"type":"pong"}"#, ServerMessage::Pong { id: None });
        golden_server(
            r#"{"type":"pong","id":7}"#,
            ServerMessage::Pong { id: Some(7) },
        );
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
            ]
        );
    }

    #[test]
    fn type_names_match_serialization() {
        let clients = [
            ClientMessage::Join(join("a", "b")),
            ClientMessage::Leave,
            ClientMessage::Ping { id: None },
        ];
        for (msg, name) in clients.iter().zip(ClientMessage::TYPES) {
            assert_eq!(msg.type_name(), name);
            assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
        }
        let servers = [
            ServerMessage::Joined {
                participant_id: 0,
                room: "a".to_owned(),
                participants: vec![],
                format: AudioFormat::opus_48k_mono_20ms(),
            },
            ServerMessage::ParticipantJoined {
                participant: ParticipantInfo {
                    id: 0,
                    name: "b".to_owned(),
                    mode: Mode::Talk,
                },
            },
            ServerMessage::ParticipantLeft {
                participant_id: 0,
                reason: LeaveReason::Left,
            },
            ServerMessage::error(ErrorCode::Internal, "x"),
            ServerMessage::Pong { id: None },
        ];
        for (msg, name) in servers.iter().zip(ServerMessage::TYPES) {
            assert_eq!(msg.type_name(), name);
            assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
        }
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
                r#"{"type":5}"#,
                Some("5"),
                "unknown control message type \"5\"",
            ),
            (
                r#"{"type":"Join"}"#,
                Some("Join"),
                "unknown control message type \"Join\"",
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
        assert_eq!(
            parse_server_message(r#"{"type":"ping"}"#),
            Err(ControlError::UnknownType {
                found: Some("ping".to_owned())
            })
        );
    }

    #[test]
    fn invalid_fields() {
        let err = parse_client_message(r#"{"type":"join","room":"a","name":"b"}"#)
            .expect_err("no format");
        assert_eq!(err.code(), ErrorCode::BadMessage);
        assert_eq!(
            err.to_string(),
            "invalid join message: missing field `format`"
        );
        let err = parse_client_message(r#"{"type":"ping","id":-1}"#).expect_err("negative id");
        assert!(matches!(
            err,
            ControlError::Invalid {
                message_type: "ping",
                ..
            }
        ));
        let err = parse_client_message(
            r#"{"type":"join","room":"a","name":"b","mode":"shout",
                "format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
        )
        .expect_err("bad mode");
        assert!(err.to_string().contains("shout"), "{err}");
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
    fn validate_accepts() {
        let ok = [
            join("a", "b"),
            join(&"x".repeat(64), &"é".repeat(64)),
            join("Room_1.test-2", "Ada Lovelace 👩‍💻"),
            JoinRequest {
                token: Some("t".repeat(MAX_TOKEN_LEN)),
                ..join("a", " b ")
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
            "unsupported audio format: format pcm/44100/2/10 is not supported; the only supported \
             format is opus/48000/1/20"
        );
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

    fn arb_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Talk), Just(Mode::Ptt), Just(Mode::Listen)]
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
        (any::<u32>(), any::<String>(), arb_mode()).prop_map(|(id, name, mode)| ParticipantInfo {
            id,
            name,
            mode,
        })
    }

    fn arb_client() -> impl Strategy<Value = ClientMessage> {
        let join = (
            any::<String>(),
            any::<String>(),
            any::<Option<String>>(),
            arb_mode(),
            arb_format(),
        )
            .prop_map(|(room, name, token, mode, format)| {
                ClientMessage::Join(JoinRequest {
                    room,
                    name,
                    token,
                    mode,
                    format,
                })
            });
        prop_oneof![
            join,
            Just(ClientMessage::Leave),
            any::<Option<u64>>().prop_map(|id| ClientMessage::Ping { id }),
        ]
    }

    fn arb_reason() -> impl Strategy<Value = LeaveReason> {
        prop_oneof![
            Just(LeaveReason::Left),
            Just(LeaveReason::Disconnected),
            Just(LeaveReason::TimedOut),
            Just(LeaveReason::SlowConsumer),
            Just(LeaveReason::ServerShutdown),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerMessage> {
        prop_oneof![
            (
                any::<u32>(),
                any::<String>(),
                proptest::collection::vec(arb_participant(), 0..5),
                arb_format()
            )
                .prop_map(|(participant_id, room, participants, format)| {
                    ServerMessage::Joined {
                        participant_id,
                        room,
                        participants,
                        format,
                    }
                }),
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
        ]
    }

    proptest! {
        #[test]
        fn client_json_round_trip(msg in arb_client()) {
            let json = msg.to_json();
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
                r#"\{("(type|id|room|name|format|mode|token|code)":"#,
                r#"("[a-z_]{0,8}"|-?[0-9]{1,22}|null|true|\[\]|\{\}),?){0,6}\}"#,
            ),
        ) {
            match parse_client_message(&text) {
                Ok(ClientMessage::Join(req)) => { let _ = req.validate(); }
                Ok(_) => {}
                Err(err) => { let _ = (err.code(), err.to_string()); }
            }
            let _ = parse_server_message(&text);
        }

        #[test]
        fn mutated_valid_message_never_panics(
            index in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = ClientMessage::Join(join("lobby", "Ada")).to_json().into_bytes();
            let i = index.index(bytes.len());
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(ClientMessage::Join(req)) = parse_client_message(&text) {
                let _ = req.validate();
            }
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
