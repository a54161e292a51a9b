//! A connection's side of a room membership: how its audio and requests reach the room's mixer
//! thread, and how it leaves, or is kept for a while after its connection drops so that the
//! client can resume.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mixer_protocol::link::LinkIdentity;
use mixer_protocol::{AudioFormat, AudioHeader, LeaveReason, Mode, Role};
use tracing::debug;

use super::address_limit::ConnectionPlaces;
use super::directory::Placement;
use super::mixer_thread::{Command, InboundAudio, MAX_IN_FLIGHT, MixerLink, SendError};
use super::outbox::Outbox;
use super::pool::Shared;
use super::requests::RoomRequest;
use crate::engine::ParticipantId;

/// Who a participant is: a room holds one seat per identity, and bans name identities.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Verified by an access token: its `sub`.
    Token(Arc<str>),
    /// On a server without tokens: the display name's key ([`mixer_protocol::name_key`]), so a
    /// room never holds two names that look alike.
    Name(Arc<str>),
}

impl Identity {
    /// The identity as an edge tells the room's node of it (see [`LinkIdentity`]).
    pub fn to_link(&self) -> LinkIdentity {
        match self {
            Identity::Token(sub) => LinkIdentity::Token(sub.to_string()),
            Identity::Name(key) => LinkIdentity::Name(key.to_string()),
        }
    }

    /// The identity an edge vouches for in an attach.
    pub fn from_link(identity: &LinkIdentity) -> Identity {
        match identity {
            LinkIdentity::Token(sub) => Identity::Token(Arc::from(sub.as_str())),
            LinkIdentity::Name(key) => Identity::Name(Arc::from(key.as_str())),
        }
    }

    /// The identity as shown to operators: the token's `sub`, or `name:` and the name's key.
    pub fn describe(&self) -> String {
        match self {
            Identity::Token(sub) => sub.to_string(),
            Identity::Name(key) => format!("name:{key}"),
        }
    }
}

/// A participant about to join, as the mixer thread needs it.
#[derive(Debug)]
pub struct Joiner {
    /// Who it is.
    pub identity: Identity,
    /// The client's address.
    pub address: std::net::IpAddr,
    /// Display name.
    pub name: String,
    /// Talk, push-to-talk or listen; `None`: the room's default for the role.
    pub mode: Option<Mode>,
    /// What it may do.
    pub role: Role,
    /// The audio format it sends and receives (validated).
    pub format: AudioFormat,
    /// Where the mixer sends this participant's frames and messages.
    pub outbox: Arc<Outbox>,
}

/// What happened to a forwarded audio frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Queued for the mixer thread.
    Queued,
    /// Dropped: too many of this participant's packets are already waiting.
    Backlogged,
    /// Dropped: the mixer thread has stopped.
    Stopped,
}

/// A new resume token: 128 bits from the operating system's CSPRNG, as 32 hex digits.
pub fn new_resume_token() -> Result<Arc<str>, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    let mut token = String::with_capacity(32);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(token, "{byte:02x}");
    }
    Ok(Arc::from(token))
}

/// A membership kept while its participant's connection is away (see [`Membership::suspend`]):
/// its seat is still taken. Dropping it gives nothing back; it is revived to leave or resume.
#[derive(Debug)]
pub(super) struct Suspended {
    token: Option<Arc<str>>,
    pub(super) format: AudioFormat,
    suspension: u64,
    pub(super) room: Arc<str>,
    pub(super) placement: Placement,
    pub(super) id: ParticipantId,
    in_flight: Arc<AtomicUsize>,
    /// The dropped connection's places under the connection limits, held while suspended.
    places: Option<ConnectionPlaces>,
}

impl Suspended {
    /// The membership again, in `pool`; the places it held for its old connection go back (a
    /// resuming connection holds its own).
    pub(super) fn revive(self, pool: Arc<Shared>) -> Membership {
        Membership {
            pool,
            token: self.token,
            format: self.format,
            suspension: self.suspension,
            room: self.room,
            placement: self.placement,
            id: self.id,
            in_flight: self.in_flight,
            left: false,
        }
    }
}

/// The participant's side of a room membership; leaving (or dropping it) removes the participant.
#[derive(Debug)]
pub struct Membership {
    pub(super) pool: Arc<Shared>,
    /// Secret for taking this participant back after a dropped connection.
    pub(super) token: Option<Arc<str>>,
    /// The audio format it joined with (a resume must use the same).
    pub(super) format: AudioFormat,
    /// Which suspension this is (an expiry timer only ends its own).
    pub(super) suspension: u64,
    pub(super) room: Arc<str>,
    pub(super) placement: Placement,
    pub(super) id: ParticipantId,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) left: bool,
}

impl Membership {
    /// This participant's id.
    pub fn id(&self) -> ParticipantId {
        self.id
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    fn link(&self) -> &MixerLink {
        &self.pool.threads[self.placement.thread]
    }

    /// Forwards one checked audio frame: its header, and its payload sharing the received
    /// message's memory.
    pub fn send_audio(&self, header: AudioHeader, payload: Bytes, arrival: Instant) -> Forwarded {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Forwarded::Backlogged;
        }
        let packet = InboundAudio {
            room: self.placement.key,
            participant: self.id,
            header,
            payload,
            arrival,
        };
        if !self.link().send_audio(packet) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Forwarded::Stopped;
        }
        Forwarded::Queued
    }

    /// Sends a control request (mode, mute, floor, moderation, chat) to the room; the answer
    /// and the room's reaction arrive as messages on the participant's outbox. Fails if the
    /// room's mixer thread has too many requests queued, or has stopped.
    pub fn request(&self, request: RoomRequest, at: Instant) -> Result<(), SendError> {
        self.link().send_control(Command::Request {
            room: self.placement.key,
            participant: self.id,
            request,
            at,
        })
    }

    /// Keeps the participant in its room, silent, for `window` after its connection dropped, so
    /// that a `join` with its resume token can take it back; then it leaves (`disconnected`).
    /// Without a token it leaves at once. Meanwhile it holds `places`, the dropped connection's
    /// places under the connection limits.
    pub fn suspend(mut self, window: Duration, places: Option<ConnectionPlaces>) {
        static SUSPENSIONS: AtomicU64 = AtomicU64::new(1);
        let Some(token) = self.token.clone() else {
            return self.leave(LeaveReason::Disconnected);
        };
        let suspension = SUSPENSIONS.fetch_add(1, Ordering::Relaxed);
        self.suspension = suspension;
        let pool = self.pool.clone();
        let mut registry = pool.lock_registry();
        if registry.shut_down {
            drop(registry);
            return self.leave(LeaveReason::Disconnected);
        }
        let mut parked = self.park();
        parked.places = places;
        let previous = registry.suspended.insert(token.clone(), parked);
        drop(registry);
        debug_assert!(previous.is_none(), "resume tokens are unique");
        // The timer holds the pool weakly: a pool shut down meanwhile has let everyone go.
        let expiry = Arc::downgrade(&pool);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let Some(pool) = expiry.upgrade() else {
                return;
            };
            let expired = {
                let mut registry = pool.lock_registry();
                // Resumed and suspended again since: that later suspension has its own timer.
                if registry
                    .suspended
                    .get(&token)
                    .is_some_and(|m| m.suspension == suspension)
                {
                    registry.suspended.remove(&token)
                } else {
                    None
                }
            };
            if let Some(parked) = expired {
                debug!(participant = %parked.id, "resume window over");
                parked.revive(pool).leave(LeaveReason::Disconnected);
            }
        });
    }

    /// Everything about this membership but the pool, for keeping it while suspended: the
    /// registry then holds no reference back to the pool that holds the registry. The seat
    /// stays taken; [`Suspended::revive`] makes it a membership again.
    fn park(mut self) -> Suspended {
        self.left = true; // Nothing to give back when `self` is dropped: the seat moves on.
        Suspended {
            token: self.token.clone(),
            format: self.format.clone(),
            suspension: self.suspension,
            room: self.room.clone(),
            placement: self.placement,
            id: self.id,
            in_flight: self.in_flight.clone(),
            places: None,
        }
    }

    /// Leaves the room, telling the others why.
    pub fn leave(mut self, reason: LeaveReason) {
        self.leave_inner(reason);
    }

    fn leave_inner(&mut self, reason: LeaveReason) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let pool = self.pool.clone();
        let mut registry = pool.lock_registry();
        registry.forget(self.id);
        registry.release_seat(&self.room);
        pool.metrics.rooms.set(registry.directory.len() as i64);
        // Sent under the registry lock so it is ordered before any later join of this room, or
        // of another room given the same slot.
        self.link().send(Command::Leave {
            room: self.placement.key,
            participant: self.id,
            reason,
        });
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // A connection task that ends without leaving (an error, a panic) still frees its seat.
        self.leave_inner(LeaveReason::Disconnected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_are_128_random_bits_in_hex_and_never_repeat() {
        let tokens: std::collections::HashSet<Arc<str>> = (0..1000)
            .map(|_| new_resume_token().expect("the OS has randomness"))
            .collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert_eq!(token.len(), 32);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // Every bit position varies across tokens (a counter or a constant would not).
        let first = u128::from_str_radix(tokens.iter().next().expect("a token"), 16).expect("hex");
        let varying = tokens
            .iter()
            .map(|t| u128::from_str_radix(t, 16).expect("hex") ^ first)
            .fold(0u128, |acc, x| acc | x);
        assert_eq!(varying, u128::MAX);
    }
}
