//! Why the engine refuses a call.

use super::ParticipantId;
use super::codec::CodecError;
use super::config::MAX_GAIN_DB;
use super::pcm::PcmError;

/// Why the engine refused a call.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The id is already in this room.
    #[error("participant {0} is already in the room")]
    AlreadyJoined(ParticipantId),
    /// The id is not in this room.
    #[error("participant {0} is not in the room")]
    UnknownParticipant(ParticipantId),
    /// The room is at its participant limit.
    #[error("room is full ({0} participants)")]
    RoomFull(usize),
    /// Audio from a participant in listen mode, which is never mixed.
    #[error("participant {0} joined in listen mode; its audio is not mixed")]
    ListenOnly(ParticipantId),
    /// Audio from a participant who is muted; it is dropped (and counted).
    #[error("participant {0} is muted")]
    Muted(ParticipantId),
    /// Audio from a push-to-talk participant who does not hold the floor in a single-floor room.
    #[error("participant {0} does not hold the floor")]
    NoFloor(ParticipantId),
    /// A floor request from a participant not in push-to-talk mode.
    #[error("participant {0} is not in push-to-talk mode")]
    NotPushToTalk(ParticipantId),
    /// A gain outside +-[`MAX_GAIN_DB`] (or not a number).
    #[error("gain {0} dB is outside -{MAX_GAIN_DB}..={MAX_GAIN_DB} dB")]
    InvalidGain(f32),
    /// Building a codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Building a PCM converter failed.
    #[error(transparent)]
    Pcm(#[from] PcmError),
}
