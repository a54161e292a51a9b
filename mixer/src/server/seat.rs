//! A connection's seat in a room, wherever the room is mixed: on this node ([`Membership`]) or
//! on another, through this node's link to it as an edge ([`EdgeSeat`]). A client's connection
//! and a link's sessions hold one and use it the same way.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mixer_protocol::{AUDIO_HEADER_LEN, AudioHeader, LeaveReason};

use super::address_limit::ConnectionPlaces;
use super::edge::EdgeSeat;
use super::membership::{Forwarded, Membership};
use super::mixer_thread::SendError;
use super::requests::RoomRequest;
use crate::engine::ParticipantId;

/// Where a participant's audio and requests go.
#[derive(Debug)]
pub enum Seat {
    /// The room is mixed on this node.
    Local(Membership),
    /// The room is mixed elsewhere; this node is an edge for it.
    Edge(EdgeSeat),
}

impl Seat {
    /// The participant's id in its room.
    pub fn id(&self) -> ParticipantId {
        match self {
            Seat::Local(m) => m.id(),
            Seat::Edge(e) => e.id(),
        }
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        match self {
            Seat::Local(m) => m.room(),
            Seat::Edge(e) => e.room(),
        }
    }

    /// Forwards one checked audio frame (`frame` is the whole message, header included).
    pub fn send_audio(&self, header: AudioHeader, frame: Bytes, arrival: Instant) -> Forwarded {
        match self {
            Seat::Local(m) => m.send_audio(header, frame.slice(AUDIO_HEADER_LEN..), arrival),
            Seat::Edge(e) => e.send_audio(&frame),
        }
    }

    /// Sends a room request (see [`Membership::request`]).
    pub fn request(&self, request: RoomRequest, at: Instant) -> Result<(), SendError> {
        match self {
            Seat::Local(m) => m.request(request, at),
            Seat::Edge(e) => e.request(&request),
        }
    }

    /// Leaves the room.
    pub fn leave(self, reason: LeaveReason) {
        match self {
            Seat::Local(m) => m.leave(reason),
            Seat::Edge(e) => e.leave(reason),
        }
    }

    /// Keeps the seat for `window` so the client can resume (see [`Membership::suspend`]). On
    /// an edge the room's node keeps it, and the places go back at once: the client may resume
    /// at any node.
    pub fn suspend(self, window: Duration, places: Option<ConnectionPlaces>) {
        match self {
            Seat::Local(m) => m.suspend(window, places),
            Seat::Edge(e) => e.suspend(),
        }
    }
}
