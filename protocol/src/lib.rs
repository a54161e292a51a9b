#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod audio;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;

pub use audio::{
    AUDIO_HEADER_LEN, AudioError, AudioFrame, AudioHeader, AudioLevel, FRAME_MS, FRAME_SAMPLES,
    Flags, FrameSize, MAX_AUDIO_FRAME, MAX_OPUS_PACKET, PROTOCOL_VERSION, SAMPLE_RATE,
};
pub use control::{
    AccessClaims, AudioFormat, CONTROL_BUDGET_BURST, CONTROL_BUDGET_REFILL_PER_SECOND,
    CONTROL_FLOOD_DROPS_PER_SECOND, ClientMessage, ControlError, ErrorCode, FloorEndReason,
    FloorInfo, FloorPolicy, INVALID_MESSAGE_COST, JoinRequest, LeaveReason, MAX_CHAT_CHARS,
    MAX_CONTROL_MESSAGE, MAX_LISTED_ROOMS, MAX_NAME_CHARS, MAX_PCM_AUDIO_FRAME, MAX_ROOM_LEN,
    MAX_TOKEN_LEN, Mode, PCM_RATES, ParticipantInfo, RecordingEnd, RedirectReason, Role,
    RoomSettings, RoomSummary, ServerMessage, close_code, name_key, normalise_name,
    parse_client_message, parse_server_message, validate_chat,
};
