//! Where the tick runs: a mixer thread's event loop, the commands it takes, and the link
//! connections use to send them.
//!
//! Mixing runs on dedicated OS threads, not on the tokio runtime: a busy network cannot delay a
//! tick, and a long tick cannot stall socket I/O. Each room lives on exactly one mixer thread,
//! in a slot of a dense array ([`RoomKey`]), and that thread owns its engine outright (no locks
//! on the mix path). A thread with no rooms blocks on its command channel and uses no CPU;
//! otherwise it sleeps until the earliest tick deadline of its rooms or the next command.
//!
//! # What keeps the tick on time
//! - **Audio** is bounded per participant: at most [`MAX_IN_FLIGHT`] packets of one
//!   participant wait for the thread; the rest are dropped and counted. Audio does not wake the
//!   thread: it waits in an inbox (see [`AudioInbox`]) that the thread empties just before it
//!   ticks, so a room of 200 talkers costs the thread one wake-up per tick, not 10,000 a second.
//! - **Control** (joins, requests) is bounded per thread: at most [`MAX_CONTROL_QUEUED`] wait;
//!   beyond that the connection answers `server_busy` and nothing is queued. Each connection's
//!   control budget (see [`super::budget`]) keeps any one client far below that.
//! - **Leaves and resumes** are never refused (a seat must always be given back); there is at
//!   most one of each per membership, and a connection's joins are paid for by its budget.
//! - The thread stops taking commands as soon as a tick is due, so however many are queued, a
//!   tick waits for at most one command.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use mixer_protocol::{
    AudioFrame, AudioHeader, ErrorCode, LeaveReason, ParticipantInfo, RedirectReason,
    ServerMessage, close_code,
};
use tracing::{debug, info, warn};

use super::directory::{RoomConfig, RoomKey};
use super::fleet_rooms::LeaseGate;
use super::membership::Joiner;
use super::metrics::Metrics;
use super::outbox::{Closed, Outbox};
use super::requests::{self, RoomRequest};
use super::room_fanout::{Member, RoomSlot, wire};
use crate::engine::pcm::PcmRate;
use crate::engine::{
    ClientCodec, EngineConfig, EngineError, ParticipantId, PhaseTimer, Room, TickPhase,
};

/// Audio packets one participant may have queued towards its mixer thread.
pub const MAX_IN_FLIGHT: usize = 64;

/// Control commands (joins and room requests) one mixer thread may have queued. A thread
/// handles a request in microseconds, so a full queue means it is saturated: refusing more is
/// better than letting memory and the delay of every request grow.
pub const MAX_CONTROL_QUEUED: usize = 2048;

/// A participant admitted by the directory, on its way to its room's mixer thread.
#[derive(Debug)]
pub struct Admission {
    /// Its id.
    pub id: ParticipantId,
    /// The room's name.
    pub room: Arc<str>,
    /// The room's slot on the thread.
    pub key: RoomKey,
    /// Who it is.
    pub joiner: Joiner,
    /// Its mode, resolved and checked against its role and the room.
    pub mode: mixer_protocol::Mode,
    /// The room's settings, for the thread to create it with if it is new there.
    pub config: RoomConfig,
    /// The participant's resume token, for `joined`.
    pub token: Option<Arc<str>>,
    /// Its audio packets in flight (shared with its membership).
    pub in_flight: Arc<AtomicUsize>,
    /// In a fleet, the room's lease as the node last claimed or renewed it (the room is
    /// mixed only while it is open); `None` on a single server.
    pub gate: Option<Arc<LeaseGate>>,
}

/// What a mixer thread is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Seat a participant.
    Join(Admission),
    /// A participant left.
    Leave {
        /// Its room.
        room: RoomKey,
        /// Who.
        participant: ParticipantId,
        /// Why (told to the room).
        reason: LeaveReason,
    },
    /// A control request about the room.
    Request {
        /// Its room.
        room: RoomKey,
        /// From whom.
        participant: ParticipantId,
        /// What.
        request: RoomRequest,
        /// When it arrived.
        at: Instant,
    },
    /// A suspended participant is back on a new connection.
    Resume {
        /// Its room.
        room: RoomKey,
        /// Who.
        participant: ParticipantId,
        /// The new connection's outbox.
        outbox: Arc<Outbox>,
        /// Its resume token (unchanged), for `joined`.
        token: Option<Arc<str>>,
    },
    /// An action of the server itself on a room: the admin API, or an identity's new join
    /// replacing its old connection.
    Operator {
        /// The room.
        room: RoomKey,
        /// What to do.
        action: OperatorAction,
    },
    /// Report who is in the room, in what mode, and who holds the floor (a draining fleet node
    /// about to move the room).
    Snapshot {
        /// The room.
        room: RoomKey,
        /// Where the answer goes (`None` if the room is not on the thread).
        reply: tokio::sync::oneshot::Sender<Option<RoomSnapshot>>,
    },
    /// The room has been handed to another node: send every member there (`redirect`,
    /// `moved`, with its resume token) and close the room here.
    MoveOut {
        /// The room.
        room: RoomKey,
        /// The node that mixes it now.
        url: String,
        /// Each member's resume token, which the new node honours.
        tokens: HashMap<ParticipantId, Arc<str>>,
        /// Told once every member has its redirect (a node stopping after its drain waits for
        /// it, so that no client gets `shutting_down` instead).
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Stop the thread.
    Shutdown,
}

/// Who is in a room, as its mixer thread knows it: what a room moved to another node needs to
/// be the same room there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Every member (connected or waiting to resume) and its mode, by id.
    pub members: Vec<(ParticipantId, mixer_protocol::Mode)>,
    /// Who holds the floor.
    pub floor: Option<ParticipantId>,
}

/// What the server itself does to a room (see [`Command::Operator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// Tell a participant why, close its connection (1008) and take it out of the room.
    Evict {
        /// Whom.
        target: ParticipantId,
        /// The error it is sent.
        code: ErrorCode,
        /// The error's message.
        message: String,
        /// What the room is told.
        reason: LeaveReason,
    },
    /// Mute or unmute a participant (`by` 0 in `participant_muted`).
    Mute {
        /// Whom.
        target: ParticipantId,
        /// Mute or unmute.
        muted: bool,
    },
    /// Close the room: everyone is told and disconnected.
    Close,
    /// Tell everyone in the room (a recording started or stopped, say).
    Announce(Box<ServerMessage>),
}

/// Why a control command was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The thread has [`MAX_CONTROL_QUEUED`] commands waiting.
    Busy,
    /// The thread has stopped (the server is shutting down).
    Stopped,
    /// The room is mixed on another node, and this edge's link to it is being made again.
    Relinking,
}

impl SendError {
    /// What a participant whose request was not sent is told.
    pub fn refusal(self) -> (ErrorCode, &'static str) {
        match self {
            SendError::Busy => (
                ErrorCode::ServerBusy,
                "the room's mixer is saturated with requests; this one was not applied, try again",
            ),
            SendError::Stopped => (ErrorCode::ShuttingDown, "server is shutting down"),
            SendError::Relinking => (
                ErrorCode::FleetUnavailable,
                "this node is reconnecting to the node that mixes your room; the request was not applied, try again in a moment",
            ),
        }
    }
}

/// One audio frame, parsed and checked by the connection, on its way to its room.
#[derive(Debug)]
pub struct InboundAudio {
    /// Its room.
    pub room: RoomKey,
    /// Whose.
    pub participant: ParticipantId,
    /// Its header.
    pub header: AudioHeader,
    /// Its payload (Opus packet or PCM samples), sharing the received message's memory.
    pub payload: Bytes,
    /// When it arrived: the jitter buffer times it by this, not by when the thread takes it.
    pub arrival: Instant,
}

/// Audio waiting for a mixer thread. The network threads push; the mixer thread takes all of it
/// at once before it ticks, swapping in its spare (empty) vector, so neither side allocates in
/// the steady state and the lock is held for a push or a swap. A packet is needed only by its
/// room's next tick, and is timed by its arrival, so waking the thread for it would buy nothing.
#[derive(Debug, Default)]
pub struct AudioInbox {
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    packets: Vec<InboundAudio>,
    /// The thread has stopped: nothing more is taken.
    closed: bool,
}

impl AudioInbox {
    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        // A push or a swap cannot leave the vector half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `packet`; false if the thread has stopped.
    fn push(&self, packet: InboundAudio) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.packets.push(packet);
        true
    }

    /// Swaps everything queued into `into` (which must be empty).
    fn take_into(&self, into: &mut Vec<InboundAudio>) {
        std::mem::swap(&mut self.state().packets, into);
    }

    fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.packets.clear();
    }
}

/// The sending side of one mixer thread's command channel and audio inbox.
#[derive(Debug, Clone)]
pub struct MixerLink {
    sender: mpsc::Sender<Command>,
    control_queued: Arc<AtomicUsize>,
    audio: Arc<AudioInbox>,
}

impl MixerLink {
    /// Queues audio for its room's next tick (bounded per participant by its membership);
    /// false if the thread has stopped.
    pub fn send_audio(&self, packet: InboundAudio) -> bool {
        self.audio.push(packet)
    }

    /// Sends a join or a request, unless [`MAX_CONTROL_QUEUED`] are already waiting.
    pub fn send_control(&self, command: Command) -> Result<(), SendError> {
        if self.control_queued.fetch_add(1, Ordering::AcqRel) >= MAX_CONTROL_QUEUED {
            self.control_queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Busy);
        }
        self.sender.send(command).map_err(|_| {
            self.control_queued.fetch_sub(1, Ordering::AcqRel);
            SendError::Stopped
        })
    }

    /// Sends a leave, a resume or shutdown; false if the thread has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.sender.send(command).is_ok()
    }
}

/// Starts one mixer thread named `name`.
///
/// `removed` hears of every participant a moderator removes, so the pool can ban it and, if
/// it was waiting to resume, give its seat back (the thread never takes the pool's lock).
pub fn spawn(
    name: String,
    engine: EngineConfig,
    metrics: Arc<Metrics>,
    removed: mpsc::Sender<ParticipantId>,
) -> std::io::Result<(MixerLink, std::thread::JoinHandle<()>)> {
    let (sender, rx) = mpsc::channel();
    let control_queued = Arc::new(AtomicUsize::new(0));
    let audio = Arc::new(AudioInbox::default());
    let mut thread = MixerThread {
        audio: audio.clone(),
        audio_taken: Vec::new(),
        removed,
        rx,
        control_queued: control_queued.clone(),
        engine,
        rooms: Vec::new(),
        metrics,
        phases: PhaseClock::new(),
        epoch: Instant::now(),
        rooms_by_phase: [0; GRID_PHASES],
    };
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || thread.run())?;
    Ok((
        MixerLink {
            sender,
            control_queued,
            audio,
        },
        handle,
    ))
}

struct MixerThread {
    /// Where removals by moderators are reported (see [`spawn`]).
    removed: mpsc::Sender<ParticipantId>,
    rx: mpsc::Receiver<Command>,
    control_queued: Arc<AtomicUsize>,
    /// Audio for this thread's rooms, taken before each round of ticks.
    audio: Arc<AudioInbox>,
    /// The vector the inbox's audio is swapped into (empty between rounds, its capacity kept).
    audio_taken: Vec<InboundAudio>,
    engine: EngineConfig,
    /// Rooms by [`RoomKey`]; `None` for a free slot.
    rooms: Vec<Option<RoomSlot>>,
    metrics: Arc<Metrics>,
    phases: PhaseClock,
    /// Origin of this thread's shared tick grid.
    epoch: Instant,
    /// How many of this thread's rooms tick in each phase of the grid.
    rooms_by_phase: [usize; GRID_PHASES],
}

/// How many phases a mixer thread's tick grid has per frame.
///
/// Rooms on one thread share a grid so that one wake-up serves many rooms (hundreds of quiet
/// rooms cost a few wake-ups per frame, not hundreds). With a single phase, though, every room
/// is due at the same instant and the thread runs all their ticks back to back: with 60 busy
/// rooms of 5 the last one started 12 ms after its deadline, and any other work on the core
/// pushed it past a whole frame (measured: 10,100 deadline misses at 60 rooms on one core, while
/// the core still had time to spare). Each new room takes the phase with the fewest rooms, so
/// the work is spread over the frame and a room waits at most for its own phase's share.
const GRID_PHASES: usize = 4;

/// The phase of the grid with the fewest rooms (the earliest of equals).
fn quietest_phase(rooms_by_phase: &[usize; GRID_PHASES]) -> usize {
    (0..GRID_PHASES)
        .min_by_key(|&phase| rooms_by_phase[phase])
        .unwrap_or(0)
}

/// A new room's first tick: the first instant at or after `now` on the grid of `frame` that
/// starts at `epoch`, shifted by `phase` quarters of a frame. A room waits at most one frame.
fn first_tick(epoch: Instant, now: Instant, frame: std::time::Duration, phase: usize) -> Instant {
    let origin = epoch + frame * phase as u32 / GRID_PHASES as u32;
    let since = now.saturating_duration_since(origin);
    let frames = since.as_nanos().div_ceil(frame.as_nanos()) as u32;
    origin + frame * frames
}

impl MixerThread {
    fn run(&mut self) {
        self.serve();
        // Audio sent from now on is refused (its connection learns the thread has stopped).
        self.audio.close();
    }

    fn serve(&mut self) {
        loop {
            let deadline = self.next_deadline();
            // The mixer threads are the one place that reads the clock for the engine.
            let received = match deadline {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(command) => {
                    if !self.handle(command) {
                        return;
                    }
                    // Take what else is queued, but only until a tick is due: a backlog of
                    // commands (a burst of joins, say) waits for the tick, not the reverse.
                    let mut due = self.next_deadline();
                    while due.is_none_or(|due| Instant::now() < due) {
                        let Ok(command) = self.rx.try_recv() else {
                            break;
                        };
                        let joined = matches!(command, Command::Join(_));
                        if !self.handle(command) {
                            return;
                        }
                        if joined {
                            // A new room has a deadline of its own.
                            due = self.next_deadline();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.run_due_ticks();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.rooms
            .iter()
            .flatten()
            .map(|slot| slot.engine.poll_timeout())
            .min()
    }

    /// Applies one command; returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Join(admission) => {
                self.control_queued.fetch_sub(1, Ordering::AcqRel);
                self.join(admission);
            }
            Command::Leave {
                room,
                participant,
                reason,
            } => self.leave(room, participant, reason),
            Command::Request {
                room,
                participant,
                request,
                at,
            } => {
                self.control_queued.fetch_sub(1, Ordering::AcqRel);
                // Audio that came before the request on its connection goes in first: a
                // push-to-talk client's last frames and its `floor_release` leave together,
                // and the release must not overtake them (they would be dropped as sent
                // without the floor). Requests are few, so the inbox is swapped rarely.
                self.take_audio();
                self.request(room, participant, request, at);
            }
            Command::Resume {
                room,
                participant,
                outbox,
                token,
            } => self.resume(room, participant, outbox, token),
            Command::Operator { room, action } => self.operator(room, action),
            Command::Snapshot { room, reply } => {
                let snapshot = slot_mut(&mut self.rooms, room).map(|slot| {
                    let mut members: Vec<_> = slot
                        .members
                        .keys()
                        .filter_map(|&id| Some((id, slot.mode(id)?)))
                        .collect();
                    members.sort_unstable_by_key(|(id, _)| *id);
                    RoomSnapshot {
                        members,
                        floor: slot.engine.floor_holder(),
                    }
                });
                let _ = reply.send(snapshot);
            }
            Command::MoveOut {
                room,
                url,
                tokens,
                done,
            } => {
                self.move_out(room, &url, &tokens);
                let _ = done.send(());
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn operator(&mut self, room: RoomKey, action: OperatorAction) {
        let metrics = &*self.metrics;
        let Some(slot) = slot_mut(&mut self.rooms, room) else {
            return;
        };
        let evicted: Vec<(ParticipantId, LeaveReason)> = match action {
            OperatorAction::Mute { target, muted } => {
                requests::operator_mute(slot, target, muted);
                slot.drain_events(metrics);
                Vec::new()
            }
            OperatorAction::Evict {
                target,
                code,
                message,
                reason,
            } => {
                if !evict(slot, target, (code, message), code.as_str(), metrics) {
                    return;
                }
                info!(room = %slot.name, participant = %target, reason = reason.as_str(), "evicted by the server");
                vec![(target, reason)]
            }
            OperatorAction::Announce(message) => {
                slot.broadcast_all(&message);
                Vec::new()
            }
            OperatorAction::Close => {
                let mut targets: Vec<ParticipantId> = slot.members.keys().copied().collect();
                targets.sort_unstable();
                for &target in &targets {
                    // Closed as "room closed", not "removed": nobody is banned from a room
                    // that is going away.
                    evict(
                        slot,
                        target,
                        (
                            ErrorCode::Removed,
                            "the room was closed by the server's operator".to_owned(),
                        ),
                        "room closed",
                        metrics,
                    );
                }
                info!(room = %slot.name, participants = targets.len(), "room closed by the operator");
                targets
                    .into_iter()
                    .map(|t| (t, LeaveReason::RoomClosed))
                    .collect()
            }
        };
        for (target, reason) in evicted {
            self.leave(room, target, reason);
        }
    }

    fn audio(&mut self, packet: &InboundAudio) {
        let InboundAudio {
            room,
            participant,
            header,
            ref payload,
            arrival,
        } = *packet;
        let metrics = &*self.metrics;
        let Some(slot) = slot_mut(&mut self.rooms, room) else {
            return;
        };
        let Some(member) = slot.members.get(&participant) else {
            return;
        };
        member.in_flight.fetch_sub(1, Ordering::AcqRel);
        let frame = AudioFrame { header, payload };
        let (code, message) = match slot.engine.handle_audio(participant, frame, arrival) {
            Ok(_) | Err(EngineError::UnknownParticipant(_)) => return,
            Err(EngineError::Muted(_)) => {
                // The participant was told it is muted; keeping on sending is not an error.
                metrics.reject_audio("muted");
                return;
            }
            Err(EngineError::ListenOnly(_)) => (
                ErrorCode::ListenOnly,
                "in listen mode; audio is ignored (send set_mode to talk)",
            ),
            Err(EngineError::NoFloor(_)) => (
                ErrorCode::NoFloor,
                "push-to-talk audio without the floor is dropped; send floor_request first",
            ),
            Err(error) => return debug!(%participant, %error, "audio not accepted"),
        };
        metrics.reject_audio(code.as_str());
        if member
            .outbox
            .push_throttled_error(code, arrival, || wire(&ServerMessage::error(code, message)))
        {
            metrics.count_error(code);
        }
    }

    /// A suspended participant's client is back on a new connection.
    fn resume(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        outbox: Arc<Outbox>,
        token: Option<Arc<str>>,
    ) {
        let metrics = &*self.metrics;
        let slot =
            slot_mut(&mut self.rooms, room).filter(|slot| slot.members.contains_key(&participant));
        let Some(slot) = slot else {
            // It left meanwhile (removed by a moderator). The connection already holds the
            // membership, so close it: the client reconnects and joins afresh.
            metrics.count_error(ErrorCode::ResumeFailed);
            outbox.push_control(wire(&ServerMessage::error(
                ErrorCode::ResumeFailed,
                "the participant is no longer in the room; connect and join again without resume",
            )));
            outbox.close(Closed::Close {
                code: close_code::POLICY_VIOLATION,
                reason: "resume failed",
            });
            return;
        };
        let format = slot.members[&participant].format.clone();
        let joined = slot.joined(participant, &format, token.as_deref(), true);
        if let Some(member) = slot.members.get_mut(&participant) {
            member.outbox = outbox;
            member.outbox.push_control(wire(&joined));
            // A session on an edge starts out hearing the shared frames there: say so if this
            // participant has a stream of its own (the engine reports only switches).
            if let Some(relay) = member.outbox.relayed()
                && slot.engine.hears_shared(participant) == Some(false)
            {
                relay.hub.stream(relay.session, false);
            }
            info!(room = %slot.name, %participant, "resumed");
            metrics.resumes_total.inc();
        }
    }

    fn request(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        request: RoomRequest,
        at: Instant,
    ) {
        let metrics = &*self.metrics;
        let Some(slot) = slot_mut(&mut self.rooms, room) else {
            return;
        };
        let outcome = requests::apply(slot, participant, request, metrics, at);
        slot.drain_events(metrics);
        for removed in outcome.removed {
            // Reported before the room hears of it, so anyone who reacts to that
            // `participant_left` finds the pool already told. Never blocks; fails only once
            // the pool is gone.
            let _ = self.removed.send(removed);
            self.leave(room, removed, LeaveReason::Removed);
        }
    }

    fn join(&mut self, admission: Admission) {
        let Admission {
            id,
            room,
            key,
            joiner,
            mode,
            config,
            token,
            in_flight,
            gate,
        } = admission;
        let index = key.0 as usize;
        if self.rooms.len() <= index {
            self.rooms.resize_with(index + 1, || None);
        }
        if let Some(slot) = &self.rooms[index]
            && slot.name != room
        {
            // The directory gives a slot to a new room only after the old room's last leave,
            // which this thread handles first; a mismatch is a bug, not a client's doing.
            warn!(%room, other = %slot.name, "room slot still taken; refusing the join");
            return refuse(&self.metrics, &room, id, &joiner, None);
        }
        if self.rooms[index].is_none() {
            // Every room on this thread ticks on the same grid (20 ms, and 10 or 5 ms for rooms
            // of shorter frames, which divide it) in one of its phases (see GRID_PHASES).
            let phase = quietest_phase(&self.rooms_by_phase);
            let start = first_tick(self.epoch, Instant::now(), config.frame.duration(), phase);
            match Room::new(config.apply(&self.engine), start) {
                Ok(engine) => {
                    let mut slot = RoomSlot::new(room.clone(), engine);
                    slot.phase = phase;
                    self.rooms[index] = Some(slot);
                    self.rooms_by_phase[phase] += 1;
                }
                Err(error) => return refuse(&self.metrics, &room, id, &joiner, Some(error)),
            }
        }
        let metrics = &*self.metrics;
        let Some(slot) = self.rooms[index].as_mut() else {
            return;
        };
        if gate.is_some() {
            // The lease the node holds now: a room stopped for an old one and claimed again
            // carries on under the new one.
            slot.gate = gate;
        }
        let codec = match joiner.format.pcm_rate().map(PcmRate::from_hz) {
            Some(Ok(rate)) => ClientCodec::Pcm(rate),
            _ => ClientCodec::Opus,
        };
        if let Err(error) = slot.engine.add_participant_with(id, mode, codec) {
            refuse(metrics, &room, id, &joiner, Some(error));
            if slot.members.is_empty() {
                self.close_room(index);
            }
            return;
        }
        let info = ParticipantInfo {
            id: id.0,
            name: joiner.name.clone(),
            mode,
            role: joiner.role,
            muted: false,
        };
        let joined = slot.joined(id, &joiner.format, token.as_deref(), false);
        if matches!(
            joined,
            ServerMessage::Joined {
                replay_ms: Some(_),
                ..
            }
        ) {
            metrics.replays_total.inc();
        }
        joiner.outbox.push_control(wire(&joined));
        slot.broadcast(id, &ServerMessage::ParticipantJoined { participant: info });
        info!(%room, participant = %id, name = %joiner.name, mode = mode.as_str(), "joined");
        metrics
            .participants
            .with_label_values(&[mode.as_str()])
            .inc();
        metrics
            .joins_total
            .with_label_values(&[mode.as_str()])
            .inc();
        slot.members.insert(
            id,
            Member {
                name: joiner.name,
                role: joiner.role,
                format: joiner.format,
                muted_by: None,
                outbox: joiner.outbox,
                in_flight,
            },
        );
    }

    fn leave(&mut self, room: RoomKey, participant: ParticipantId, reason: LeaveReason) {
        let metrics = &*self.metrics;
        let Some(slot) = slot_mut(&mut self.rooms, room) else {
            return;
        };
        if !slot.members.contains_key(&participant) {
            return;
        }
        let mode = slot.mode(participant);
        slot.engine.remove_participant(participant);
        slot.members.remove(&participant);
        // The engine's last word on the participant (the floor it held) before the room hears
        // that it left.
        slot.drain_events(metrics);
        slot.broadcast(
            participant,
            &ServerMessage::ParticipantLeft {
                participant_id: participant.0,
                reason,
            },
        );
        info!(room = %slot.name, %participant, reason = reason.as_str(), "left");
        metrics
            .leaves_total
            .with_label_values(&[reason.as_str()])
            .inc();
        if reason == LeaveReason::SlowConsumer {
            metrics.slow_consumer_disconnects_total.inc();
        }
        if let Some(mode) = mode {
            metrics
                .participants
                .with_label_values(&[mode.as_str()])
                .dec();
        }
        if slot.members.is_empty() {
            slot.report(metrics);
            debug!(room = %slot.name, "room closed");
            self.close_room(room.0 as usize);
        }
    }

    /// Frees a room's slot and its place in the grid's phases.
    fn close_room(&mut self, index: usize) {
        if let Some(slot) = self.rooms.get_mut(index).and_then(Option::take) {
            self.rooms_by_phase[slot.phase] -= 1;
        }
    }

    /// Hands the rooms the audio that has arrived since the last round, in arrival order.
    fn take_audio(&mut self) {
        let mut taken = std::mem::take(&mut self.audio_taken);
        self.audio.take_into(&mut taken);
        for packet in taken.drain(..) {
            self.audio(&packet);
        }
        self.audio_taken = taken;
    }

    fn run_due_ticks(&mut self) {
        self.take_audio();
        let metrics = &self.metrics;
        let mut ran = false;
        let mut stopped = Vec::new();
        for (index, slot) in self.rooms.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            loop {
                let deadline = slot.engine.poll_timeout();
                let start = Instant::now();
                if deadline > start {
                    break;
                }
                // In a fleet, a room is mixed only under its lease: checked before every tick,
                // so it stops within a tick of its local deadline whatever the rest of the
                // node is doing.
                if slot.gate.as_ref().is_some_and(|gate| !gate.is_open(start)) {
                    stopped.push(RoomKey(index as u32));
                    break;
                }
                ran = true;
                let lateness = start.saturating_duration_since(deadline);
                metrics
                    .tick_lateness_seconds
                    .observe(lateness.as_secs_f64());
                if lateness >= slot.engine.frame().duration() {
                    metrics.tick_deadline_misses_total.inc();
                }
                slot.engine.handle_timeout_timed(start, &mut self.phases);
                metrics.ticks_total.inc();
                slot.fan_out_frames(metrics);
                metrics
                    .tick_duration_seconds
                    .observe(start.elapsed().as_secs_f64());
                slot.drain_events(metrics);
                slot.flush_relays(metrics);
                slot.wake_quiet();
                slot.ticked(metrics);
            }
        }
        if ran && self.phases.started.elapsed() >= std::time::Duration::from_secs(1) {
            self.phases.flush(metrics);
            self.phases.started = Instant::now();
        }
        for room in stopped {
            let url = slot_mut(&mut self.rooms, room)
                .and_then(|slot| slot.gate.as_ref().map(|gate| gate.url().to_owned()));
            if let Some(url) = url {
                self.send_away(room, &url, RedirectReason::LeaseLost, &HashMap::new());
            }
        }
    }

    /// A room handed to another node: everyone goes there, with a resume token.
    fn move_out(&mut self, room: RoomKey, url: &str, tokens: &HashMap<ParticipantId, Arc<str>>) {
        // No renewal moves the gate on any more; closed, it cannot reopen for this slot.
        if let Some(gate) = slot_mut(&mut self.rooms, room).and_then(|slot| slot.gate.take()) {
            drop(gate);
        }
        self.send_away(room, url, RedirectReason::Moved, tokens);
    }

    /// Sends every member of `room` a `redirect` to `url` for `reason` (with its resume token
    /// when the room moved with its participants), closes each connection (4307), and takes the
    /// room off this thread. A room stopped because its lease gate closed is sent back to this
    /// node (`lease_lost`), which finds the room wherever it is now.
    fn send_away(
        &mut self,
        room: RoomKey,
        url: &str,
        reason: RedirectReason,
        tokens: &HashMap<ParticipantId, Arc<str>>,
    ) {
        let metrics = &*self.metrics;
        let Some(slot) = slot_mut(&mut self.rooms, room) else {
            return;
        };
        let mut targets: Vec<ParticipantId> = slot.members.keys().copied().collect();
        targets.sort_unstable();
        for target in &targets {
            if let Some(member) = slot.members.get(target) {
                member.outbox.push_control(wire(&ServerMessage::Redirect {
                    room: slot.name.to_string(),
                    url: url.to_owned(),
                    reason,
                    resume_token: tokens.get(target).map(|t| t.to_string()),
                }));
                member.outbox.close(Closed::Close {
                    code: close_code::REDIRECT,
                    reason: "redirect",
                });
            }
        }
        metrics
            .redirects_total
            .with_label_values(&[reason.as_str()])
            .inc_by(targets.len() as u64);
        if reason == RedirectReason::LeaseLost {
            warn!(room = %slot.name, participants = targets.len(), "room stopped: its lease is no longer held");
        } else {
            info!(room = %slot.name, participants = targets.len(), %url, "room moved to another node");
        }
        for target in targets {
            self.leave(room, target, LeaveReason::Moved);
        }
    }
}

/// Sends `target` an error and closes its connection (1008) with `reason` (a connection closed
/// as `removed` bans its identity from the room); false if it is not in the room.
fn evict(
    slot: &RoomSlot,
    target: ParticipantId,
    (code, message): (ErrorCode, String),
    reason: &'static str,
    metrics: &Metrics,
) -> bool {
    let Some(member) = slot.members.get(&target) else {
        return false;
    };
    slot.send_error(target, code, message, metrics);
    member.outbox.close(Closed::Close {
        code: close_code::POLICY_VIOLATION,
        reason,
    });
    true
}

/// The room in slot `key`, if there is one. A free function rather than a method, so a caller
/// can hold it beside a borrow of the thread's metrics.
fn slot_mut(rooms: &mut [Option<RoomSlot>], key: RoomKey) -> Option<&mut RoomSlot> {
    rooms.get_mut(key.0 as usize)?.as_mut()
}

/// Tells a joiner its join failed on the mixer thread (room full in the engine, a codec that
/// failed to build, a slot mix-up) and closes its connection (1011). It is not kept for
/// resuming: it never had a token.
fn refuse(
    metrics: &Metrics,
    room: &str,
    id: ParticipantId,
    joiner: &Joiner,
    error: Option<EngineError>,
) {
    let code = match &error {
        Some(EngineError::RoomFull(_)) => ErrorCode::RoomFull,
        _ => ErrorCode::Internal,
    };
    let message = error.map_or_else(|| "internal error".to_owned(), |e| e.to_string());
    warn!(%room, participant = %id, %message, "join failed on the mixer thread");
    metrics
        .join_failures_total
        .with_label_values(&[code.as_str()])
        .inc();
    metrics.count_error(code);
    joiner
        .outbox
        .push_control(wire(&ServerMessage::error(code, message)));
    joiner.outbox.close(Closed::Close {
        code: close_code::INTERNAL_ERROR,
        reason: "join failed",
    });
}

/// Measures the phases of a tick with the wall clock, for the phase-time metrics.
struct PhaseClock {
    started: Instant,
    current: Option<(TickPhase, Instant)>,
    spent: [f64; 3],
}

impl PhaseClock {
    fn new() -> PhaseClock {
        PhaseClock {
            started: Instant::now(),
            current: None,
            spent: [0.0; 3],
        }
    }

    fn flush(&mut self, metrics: &Metrics) {
        for (phase, seconds) in super::metrics::TICK_PHASES.iter().zip(&mut self.spent) {
            if *seconds > 0.0 {
                metrics
                    .tick_phase_seconds_total
                    .with_label_values(&[*phase])
                    .inc_by(*seconds);
                *seconds = 0.0;
            }
        }
    }
}

impl PhaseTimer for PhaseClock {
    fn phase(&mut self, phase: TickPhase) {
        let now = Instant::now();
        if let Some((previous, since)) = self.current.take() {
            let index = match previous {
                TickPhase::Decode => 0,
                TickPhase::Mix => 1,
                TickPhase::Encode | TickPhase::Done => 2,
            };
            self.spent[index] += now.saturating_duration_since(since).as_secs_f64();
        }
        if phase != TickPhase::Done {
            self.current = Some((phase, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Command {
        Command::Request {
            room: RoomKey(0),
            participant: ParticipantId(1),
            request: RoomRequest::FloorRelease,
            at: Instant::now(),
        }
    }

    #[test]
    fn new_rooms_spread_over_the_grid_phases_and_start_within_a_frame_on_their_phase() {
        let mut rooms_by_phase = [0; GRID_PHASES];
        let mut phases = Vec::new();
        for _ in 0..6 {
            let phase = quietest_phase(&rooms_by_phase);
            rooms_by_phase[phase] += 1;
            phases.push(phase);
        }
        assert_eq!(phases, [0, 1, 2, 3, 0, 1]);
        rooms_by_phase[2] -= 1;
        assert_eq!(
            quietest_phase(&rooms_by_phase),
            2,
            "a freed phase is taken first"
        );

        let epoch = Instant::now();
        let ms = std::time::Duration::from_millis;
        let frame = ms(20);
        // Phase 1 of a 20 ms grid is 5 ms into each frame.
        assert_eq!(first_tick(epoch, epoch, frame, 1), epoch + ms(5));
        assert_eq!(first_tick(epoch, epoch + ms(5), frame, 1), epoch + ms(5));
        assert_eq!(first_tick(epoch, epoch + ms(6), frame, 1), epoch + ms(25));
        assert_eq!(first_tick(epoch, epoch + ms(41), frame, 0), epoch + ms(60));
        // A 5 ms room's phases are 1.25 ms apart.
        let five = ms(5);
        assert_eq!(
            first_tick(epoch, epoch + ms(12), five, 3),
            epoch + ms(13) + std::time::Duration::from_micros(750)
        );
        for phase in 0..GRID_PHASES {
            for now in [0, 3, 19, 20, 21, 999] {
                let now = epoch + ms(now);
                let start = first_tick(epoch, now, frame, phase);
                assert!(start >= now && start - now < frame, "phase {phase}");
            }
        }
    }

    #[test]
    fn audio_waits_in_the_inbox_in_order_until_taken_and_is_refused_once_the_thread_stops() {
        let inbox = AudioInbox::default();
        let packet = |sequence: u16| InboundAudio {
            room: RoomKey(0),
            participant: ParticipantId(1),
            header: AudioHeader {
                flags: mixer_protocol::Flags::default(),
                sequence,
                timestamp: 0,
                level: mixer_protocol::AudioLevel::UNKNOWN,
            },
            payload: Bytes::from_static(&[0xf8]),
            arrival: Instant::now(),
        };
        assert!(inbox.push(packet(1)) && inbox.push(packet(2)));
        let mut taken = Vec::with_capacity(8);
        inbox.take_into(&mut taken);
        let order: Vec<u16> = taken.iter().map(|p| p.header.sequence).collect();
        assert_eq!(order, [1, 2]);
        // The spare vector went in: the next pushes reuse its capacity.
        taken.clear();
        let mut again = Vec::new();
        inbox.take_into(&mut again);
        assert!(again.is_empty());
        inbox.close();
        assert!(!inbox.push(packet(3)), "a stopped thread takes no audio");
    }

    #[test]
    fn control_is_bounded_per_thread_but_leaves_always_get_through() {
        let (sender, rx) = mpsc::channel();
        let link = MixerLink {
            sender,
            control_queued: Arc::new(AtomicUsize::new(0)),
            audio: Arc::new(AudioInbox::default()),
        };
        for _ in 0..MAX_CONTROL_QUEUED {
            assert_eq!(link.send_control(request()), Ok(()));
        }
        // The thread is saturated: the next request is refused, nothing more is queued.
        assert_eq!(link.send_control(request()), Err(SendError::Busy));
        assert_eq!(
            link.control_queued.load(Ordering::Acquire),
            MAX_CONTROL_QUEUED
        );
        // A leave gives a seat back: it is never refused.
        assert!(link.send(Command::Leave {
            room: RoomKey(0),
            participant: ParticipantId(1),
            reason: LeaveReason::Left,
        }));
        assert_eq!(rx.try_iter().count(), MAX_CONTROL_QUEUED + 1);
        // Once the thread has taken one (it decrements as it handles), there is room again.
        link.control_queued.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(link.send_control(request()), Ok(()));
        // A stopped thread refuses too, and the count stays true.
        drop(rx);
        link.control_queued.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(link.send_control(request()), Err(SendError::Stopped));
        assert_eq!(
            link.control_queued.load(Ordering::Acquire),
            MAX_CONTROL_QUEUED - 1
        );
    }
}
