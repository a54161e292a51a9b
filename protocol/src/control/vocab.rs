//! The enumerations control messages share: modes, roles, floor policies and the reasons given
//! for a leave or the end of a turn.

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

/// Whether a participant sends audio (open mic or push-to-talk) or only listens.
#[derive(
    Default, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
        self.into()
    }
}

/// What a participant may do in a room.
#[derive(
    Default, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
        self.into()
    }

    /// How much the role may do: listener < speaker < moderator. An access token grants a role
    /// as a ceiling; a join may ask for that role or a lower one.
    pub fn rank(self) -> u8 {
        match self {
            Role::Listener => 0,
            Role::Speaker => 1,
            Role::Moderator => 2,
        }
    }

    /// Whether this role includes everything `other` may do.
    pub fn covers(self, other: Role) -> bool {
        self.rank() >= other.rank()
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
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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

/// Why a recording ended.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RecordingEnd {
    /// A moderator sent `record` with `recording: false`, or the operator stopped it.
    Stopped,
    /// Everyone else left the room.
    RoomEmpty,
    /// The server is shutting down (the file was closed cleanly first).
    ServerShutdown,
    /// The room moved to another node of the fleet, or closed.
    RoomGone,
    /// Writing the file failed (a full disk, say); what was written is kept.
    WriteFailed,
}

/// Why a participant left a room.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    /// A moderator (or the server's operator, through the admin API) removed it.
    Removed,
    /// The same identity joined again, on another connection, and took its place.
    Replaced,
    /// The server's operator closed the room.
    RoomClosed,
    /// The room left this node: moved to another node while this one drained, or stopped here
    /// because this node lost the room's lease. It was sent a `redirect`.
    Moved,
}

impl FloorEndReason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [FloorEndReason] = <Self as VariantArray>::VARIANTS;

    /// The reason's name on the wire.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl LeaveReason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [LeaveReason] = <Self as VariantArray>::VARIANTS;

    /// The reason's name on the wire.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
