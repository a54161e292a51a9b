//! The control budget: what each text message costs a connection (the "Control budget" section
//! of the spec). The server enforces it; a client can use it to pace itself. One table, here, so
//! the server, the spec (checked by a test) and clients cannot disagree.

use super::client::ClientMessage;

/// Tokens a connection's budget holds, and starts with.
pub const CONTROL_BUDGET_BURST: u32 = 60;

/// Tokens the budget regains per second.
pub const CONTROL_BUDGET_REFILL_PER_SECOND: u32 = 20;

/// Messages dropped by a connection's budget within one second beyond which the server stops
/// reading it and closes it (1008): the client is ignoring `control_rate_limited`.
pub const CONTROL_FLOOD_DROPS_PER_SECOND: u32 = 500;

/// What a text frame that is not a valid message costs (invalid JSON, an unknown `"type"`, a
/// known type with bad fields): answering it with an error is work too.
pub const INVALID_MESSAGE_COST: u32 = 1;

impl ClientMessage {
    /// What this message costs the sender's control budget, in tokens: about the work it causes.
    /// A `join` or `set_mode` may build an Opus encoder on a mixer thread and is announced to
    /// the whole room (as are `leave` and `mute_room`); `list_rooms` walks the server's room
    /// directory, and `create_room` grows it.
    pub fn budget_cost(&self) -> u32 {
        match self {
            ClientMessage::Ping { .. }
            | ClientMessage::Chat { .. }
            | ClientMessage::Mute { .. }
            | ClientMessage::FloorRequest { .. }
            | ClientMessage::FloorRelease
            | ClientMessage::SetGain { .. }
            | ClientMessage::Remove { .. } => 1,
            ClientMessage::RoomInfo { .. } => 2,
            ClientMessage::Join(_)
            | ClientMessage::Leave
            | ClientMessage::SetMode { .. }
            | ClientMessage::MuteRoom { .. }
            | ClientMessage::ListRooms
            | ClientMessage::Record { .. } => 5,
            ClientMessage::CreateRoom(_) => 10,
        }
    }
}
