//! JSON control messages carried in WebSocket text frames, tagged by a snake_case `"type"` field.
//!
//! Unknown fields are ignored in every message so that either side can add optional fields without
//! breaking older peers. Parsing never panics: [`parse_client_message`] and
//! [`parse_server_message`] return a [`ControlError`] whose [`ControlError::code`] is the
//! [`ErrorCode`] to report.
//!
//! One job per file: [`ClientMessage`] and its parser in `client`, [`ServerMessage`] and its
//! parser in `server`, what each message costs the sender in `budget`, the shared enumerations
//! in `vocab`, [`AudioFormat`] in `format`, errors and close codes in `error`, limits and the
//! acceptance rules a server applies in `validate`, and the parsing steps both directions share
//! in `parse`.

mod budget;
mod claims;
mod client;
mod error;
mod format;
mod parse;
mod server;
mod validate;
mod vocab;

pub use budget::{
    CONTROL_BUDGET_BURST, CONTROL_BUDGET_REFILL_PER_SECOND, CONTROL_FLOOD_DROPS_PER_SECOND,
    INVALID_MESSAGE_COST,
};
pub use claims::AccessClaims;
pub use client::{ClientMessage, JoinRequest, RoomSettings, parse_client_message};
pub use error::{ControlError, ErrorCode, close_code};
pub use format::{AudioFormat, MAX_PCM_AUDIO_FRAME, PCM_RATES};
pub use server::{
    FloorInfo, MAX_LISTED_ROOMS, ParticipantInfo, RedirectReason, RoomSummary, ServerMessage,
    parse_server_message,
};
pub use validate::{
    MAX_CHAT_CHARS, MAX_CONTROL_MESSAGE, MAX_NAME_CHARS, MAX_RESUME_TOKEN_LEN, MAX_ROOM_LEN,
    MAX_TOKEN_LEN, name_key, normalise_name, validate_chat,
};
pub use vocab::{FloorEndReason, FloorPolicy, LeaveReason, Mode, RecordingEnd, Role};
