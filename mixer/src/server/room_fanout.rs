//! Where a room's members live: a room on its mixer thread, its engine, and the fan-out of
//! frames and messages to its members' outboxes.
//!
//! The engine is the one source of truth for a participant's mode and mute state; a [`Member`]
//! holds only what the engine does not know (name, role, format, who muted it, its outbox).
//! Every message for several members is serialised once and shared ([`Utf8Bytes`] is reference
//! counted), so a broadcast to a room of 1,000 is one JSON encoding and 1,000 pointer copies.
//!
//! Members whose clients are on an edge node relay through their link ([`super::link_hub`]):
//! a broadcast and the tick's shared frame go to each link **once**, and the edge hands them
//! to its members, so what this node does per tick does not grow with the listeners on edges.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::{Bytes, BytesMut};
use mixer_protocol::{
    AUDIO_HEADER_LEN, AudioFormat, AudioHeader, ErrorCode, FloorInfo, Mode, ParticipantInfo, Role,
    ServerMessage,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::warn;

use super::link_hub::{HubSet, deliver_control};
use super::metrics::Metrics;
use super::outbox::{Outbox, Pushed};
use super::requests;
use super::ws_writer::{MAX_HEAD, WireFrame};
use crate::engine::{Event, ParticipantId, Room, RoomTotals, StreamKind};

/// A message serialised for the wire, ready to be shared by every recipient.
pub fn wire(message: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(message.to_json())
}

/// A participant as its mixer thread knows it, beyond what the engine knows.
#[derive(Debug)]
pub struct Member {
    /// Display name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The audio format it sends and receives.
    pub format: AudioFormat,
    /// The moderator who muted it, if one did (it may not unmute itself then).
    pub muted_by: Option<ParticipantId>,
    /// Where its frames and messages go.
    pub outbox: Arc<Outbox>,
    /// Its audio packets queued towards this thread (the connection bounds it).
    pub in_flight: Arc<AtomicUsize>,
}

/// Bytes allocated at a time for the wire form of frames (about 120 Opus frames at 48 kb/s).
const FRAME_BLOCK: usize = 16 * 1024;

/// Ticks between two copies of a room's engine counters into the metrics (one second).
const REPORT_EVERY_TICKS: u32 = 50;

/// A room on its mixer thread: the engine and who is in it.
pub struct RoomSlot {
    /// The room's name (for `joined` and logs).
    pub name: Arc<str>,
    /// The mixing engine.
    pub engine: Room,
    /// Who is in it.
    pub members: HashMap<ParticipantId, Member>,
    /// Chat messages delivered so far (the last chat id).
    pub chats: u64,
    /// Engine totals already added to the metrics.
    reported: RoomTotals,
    ticks_since_report: u32,
    /// Reused buffer for the wire form of this tick's frames.
    frames: BytesMut,
    /// In a fleet, the room's lease: the room is mixed only while it is open.
    pub gate: Option<Arc<super::fleet_rooms::LeaseGate>>,
    /// The links to edges that hear this tick's shared frame, and that frame (marker clear):
    /// sent by [`RoomSlot::flush_relays`] once the tick's stream switches have gone out.
    relay_shared: HubSet,
    relay_frame: Option<Bytes>,
    /// The phase of its mixer thread's tick grid the room ticks in (set by the thread).
    pub phase: usize,
    /// A broadcast was queued quietly since the last [`RoomSlot::wake_quiet`].
    quiet_pending: std::cell::Cell<bool>,
    /// The outboxes a fan-out has queued frames in and must wake (kept for its capacity).
    to_wake: Vec<Arc<Outbox>>,
}

impl RoomSlot {
    /// A room with no members yet.
    pub fn new(name: Arc<str>, engine: Room) -> RoomSlot {
        RoomSlot {
            name,
            engine,
            members: HashMap::new(),
            chats: 0,
            reported: RoomTotals::default(),
            ticks_since_report: 0,
            frames: BytesMut::new(),
            gate: None,
            relay_shared: HubSet::default(),
            relay_frame: None,
            phase: 0,
            quiet_pending: std::cell::Cell::new(false),
            to_wake: Vec::new(),
        }
    }

    /// A member's mode, as the engine has it.
    pub fn mode(&self, id: ParticipantId) -> Option<Mode> {
        self.engine.mode(id)
    }

    /// Sends `message` to everyone in the room.
    pub fn broadcast_all(&self, message: &ServerMessage) {
        self.deliver(None, message);
    }

    /// Sends `message` to everyone but `except`.
    pub fn broadcast(&self, except: ParticipantId, message: &ServerMessage) {
        self.deliver(Some(except), message);
    }

    /// Sends `message` to every member but `except`: queued in each local member's outbox,
    /// and once on each link to an edge (leaving out `except`'s session if it is behind it).
    fn deliver(&self, except: Option<ParticipantId>, message: &ServerMessage) {
        let json = wire(message);
        let left_out = except
            .and_then(|id| self.members.get(&id))
            .and_then(|member| member.outbox.relayed());
        let mut links = HubSet::default();
        for (id, member) in &self.members {
            if Some(*id) == except {
                continue;
            }
            if member.outbox.relayed().is_none() {
                // Woken after the room's next tick (see `wake_quiet`), with its audio frame.
                member.outbox.push_control_quietly(json.clone());
            } else {
                deliver_control(&member.outbox, &json, &mut links, left_out);
            }
        }
        self.quiet_pending.set(true);
    }

    /// Wakes the writers of members that were sent a broadcast quietly since the room's last
    /// tick and have not been woken since (a member whose mix was silent this tick got no
    /// frame to take the broadcast along). Called by the mixer thread after every tick, so a
    /// broadcast waits at most one frame: a burst of joins between two ticks then costs every
    /// member one wake-up and one write, not one per join.
    pub fn wake_quiet(&self) {
        if self.quiet_pending.take() {
            for member in self.members.values() {
                member.outbox.wake_pending();
            }
        }
    }

    /// Sends `message` to one member.
    pub fn send_to(&self, to: ParticipantId, message: &ServerMessage) {
        if let Some(member) = self.members.get(&to) {
            member.outbox.push_control(wire(message));
        }
    }

    /// Sends an error to one member, counting it.
    pub fn send_error(
        &self,
        to: ParticipantId,
        code: ErrorCode,
        message: impl Into<String>,
        metrics: &Metrics,
    ) {
        if let Some(member) = self.members.get(&to) {
            metrics.count_error(code);
            member
                .outbox
                .push_control(wire(&ServerMessage::error(code, message)));
        }
    }

    /// What the room says about `id`.
    pub fn info(&self, id: ParticipantId, member: &Member) -> ParticipantInfo {
        ParticipantInfo {
            id: id.0,
            name: member.name.clone(),
            mode: self.mode(id).unwrap_or(Mode::Listen),
            role: member.role,
            muted: self.engine.is_muted(id).unwrap_or(false),
        }
    }

    /// The `joined` message for `id`: the others in the room, the floor, the resume token.
    pub fn joined(
        &self,
        id: ParticipantId,
        format: &AudioFormat,
        token: Option<&str>,
        resumed: bool,
    ) -> ServerMessage {
        let mut others: Vec<ParticipantInfo> = self
            .members
            .iter()
            .filter(|(other, _)| **other != id)
            .map(|(other, m)| self.info(*other, m))
            .collect();
        others.sort_unstable_by_key(|p| p.id);
        ServerMessage::Joined {
            participant_id: id.0,
            room: self.name.to_string(),
            participants: others,
            format: format.clone(),
            floor: FloorInfo {
                policy: self.engine.floor_config().policy,
                holder: self.engine.floor_holder().map(|h| h.0),
            },
            resume_token: token.map(str::to_owned),
            resumed,
            replay_ms: self
                .engine
                .replay_backlog(id)
                .map(|behind| behind.as_millis() as u64),
        }
    }

    /// Hands this tick's frames to the members' outboxes. A shared frame is framed for the
    /// WebSocket once ([`WireFrame`]) and every listener of it gets a reference-counted clone of
    /// the same bytes, which its writer writes as they are.
    pub fn fan_out_frames(&mut self, metrics: &Metrics) {
        // The shared frames of one tick are the same bytes except for the marker bit, set for a
        // listener whose stream resumes after a pause: at most two wire forms, each built once.
        let mut shared: [Option<(AudioHeader, WireFrame)>; 2] = [None, None];
        // Counted here and added to the metrics once per tick, not once per listener.
        let (mut frames_out, mut bytes_out, mut drops) = (0u64, 0u64, 0u64);
        while let Some(transmit) = self.engine.poll_transmit() {
            let Some(member) = self.members.get(&transmit.to) else {
                continue;
            };
            let relay = member.outbox.relayed();
            let to_link = transmit.stream == StreamKind::Shared && relay.is_some();
            if to_link && self.relay_frame.is_some() {
                // This link, or another, has the tick's shared frame already.
                if let Some(relay) = relay {
                    self.relay_shared.insert(&relay.hub);
                }
                continue;
            }
            // A link gets the shared frame as a continuing listener would: the far end marks
            // each of its members' first frames itself.
            let header = if to_link {
                AudioHeader {
                    flags: transmit.header.flags.with_marker(false),
                    ..transmit.header
                }
            } else {
                transmit.header
            };
            let cached = (transmit.stream == StreamKind::Shared)
                .then(|| shared.iter().flatten().find(|(h, _)| *h == header))
                .flatten()
                .map(|(_, frame)| frame.clone());
            let frame = match cached {
                Some(frame) => frame,
                None => {
                    let needed = MAX_HEAD + AUDIO_HEADER_LEN + transmit.payload.len();
                    if self.frames.capacity() < needed {
                        // One allocation holds the next hundred or so frames; each frame handed
                        // out keeps the block alive until every outbox has sent it.
                        self.frames.reserve(FRAME_BLOCK.max(needed));
                    }
                    let frame =
                        WireFrame::build(&mut self.frames, &[&header.to_bytes(), transmit.payload]);
                    if transmit.stream == StreamKind::Shared
                        && let Some(free) = shared.iter_mut().find(|s| s.is_none())
                    {
                        *free = Some((header, frame.clone()));
                    }
                    frame
                }
            };
            if to_link {
                if let Some(relay) = relay {
                    self.relay_shared.insert(&relay.hub);
                }
                self.relay_frame = Some(frame.frame_bytes());
                continue;
            }
            let len = frame.len();
            let (pushed, wake) = member.outbox.push_audio_unwoken(frame);
            if wake {
                self.to_wake.push(member.outbox.clone());
            }
            match pushed {
                Pushed::Queued => {}
                Pushed::DroppedOldest => drops += 1,
                Pushed::Closed => continue,
            }
            frames_out += 1;
            bytes_out += len as u64;
        }
        // Every writer woken once the tick's frames are all queued (see push_audio_unwoken).
        for outbox in self.to_wake.drain(..) {
            outbox.wake();
        }
        if drops > 0 {
            metrics.send_queue_drops_total.inc_by(drops);
        }
        if frames_out > 0 {
            metrics.audio_frames_out_total.inc_by(frames_out);
            metrics.audio_bytes_out_total.inc_by(bytes_out);
        }
    }

    /// Sends this tick's shared frame once on every link to an edge that has members hearing
    /// it. Called after [`RoomSlot::drain_events`], so the edges learn of the tick's stream
    /// switches first: a talker behind a link whose own stream starts this tick never gets
    /// this tick's shared frame (its own voice).
    pub fn flush_relays(&mut self, metrics: &Metrics) {
        let frame = self.relay_frame.take();
        for hub in self.relay_shared.drain() {
            if let Some(frame) = &frame
                && hub.shared(frame)
            {
                metrics.audio_frames_out_total.inc();
                metrics.audio_bytes_out_total.inc_by(frame.len() as u64);
            }
        }
    }

    /// Acts on everything the engine has to say: the one place engine events are handled, after
    /// a tick, a request or a leave. The match is exhaustive on purpose: a new kind of event
    /// does not compile until it is handled here.
    pub fn drain_events(&mut self, metrics: &Metrics) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::DecodeFailed { participant } => self.send_error(
                    participant,
                    ErrorCode::InvalidOpus,
                    "an audio packet failed to decode as Opus and was concealed",
                    metrics,
                ),
                Event::EncodeFailed { participant } => {
                    warn!(room = %self.name, %participant, "Opus encode failed");
                }
                Event::SharedEncodeFailed => {
                    warn!(room = %self.name, "Opus encode of the shared mix failed");
                }
                Event::TicksSkipped { count } => {
                    metrics.ticks_skipped_total.inc_by(count);
                    warn!(room = %self.name, count, "mixer fell behind; ticks skipped");
                }
                Event::StreamSwitched {
                    participant,
                    shared,
                } => {
                    // Only an edge needs to know: it hands the shared frame on by itself.
                    if let Some(relay) = self
                        .members
                        .get(&participant)
                        .and_then(|m| m.outbox.relayed())
                    {
                        relay.hub.stream(relay.session, shared);
                    }
                }
                Event::CaughtUp { participant } => {
                    self.send_to(participant, &ServerMessage::CaughtUp);
                }
                Event::TalkingStarted { participant } => {
                    self.broadcast_all(&ServerMessage::TalkingStarted {
                        participant_id: participant.0,
                    });
                }
                Event::TalkingStopped { participant } => {
                    self.broadcast_all(&ServerMessage::TalkingStopped {
                        participant_id: participant.0,
                    });
                }
                Event::Floor(change) => {
                    let message = requests::floor_message(self, change, metrics);
                    self.broadcast_all(&message);
                }
            }
        }
    }

    /// Counts a tick; copies the engine's counters into the metrics once a second.
    pub fn ticked(&mut self, metrics: &Metrics) {
        self.ticks_since_report += 1;
        if self.ticks_since_report >= REPORT_EVERY_TICKS {
            self.report(metrics);
        }
    }

    /// Copies the growth of the engine's counters into the metrics.
    pub fn report(&mut self, metrics: &Metrics) {
        let totals = self.engine.totals();
        metrics.add_room_delta(&self.reported, &totals);
        self.reported = totals;
        self.ticks_since_report = 0;
        for delay in self.engine.jitter_delays() {
            metrics
                .jitter_buffer_delay_seconds
                .observe(delay.as_secs_f64());
        }
    }
}
