//! Mixer threads and the room directory.
//!
//! Mixing runs on dedicated OS threads, not on the tokio runtime: a busy network cannot delay a
//! tick, and a long tick cannot stall socket I/O. Each room lives on exactly one mixer thread,
//! which owns its [`Room`] engine outright (no locks on the mix path). New rooms go to the thread
//! with the fewest rooms. A thread with no rooms blocks on its command channel and uses no CPU;
//! otherwise it sleeps until the earliest tick deadline of its rooms or the next command.
//!
//! Connections talk to mixer threads over an unbounded channel whose audio share is bounded per
//! participant: each participant may have at most `MAX_IN_FLIGHT` audio packets queued towards
//! its mixer thread, the rest are dropped and counted. So a flooding client cannot grow memory or
//! crowd out anyone else's audio, and control commands (join, leave) are never lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, ErrorCode, FloorInfo, FloorPolicy, LeaveReason,
    MAX_LISTED_ROOMS, Mode, ParticipantInfo, Role, RoomSettings, RoomSummary, ServerMessage,
};
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use super::outbox::{Closed, ErrorThrottle, Outbox, Pushed};
use super::requests::{self, RoomRequest};
use crate::engine::floor::FloorConfig;
use crate::engine::pcm::PcmRate;
use crate::engine::{
    ClientCodec, EngineConfig, EngineError, Event, ParticipantId, PhaseTimer, Room, RoomTotals,
    TickPhase,
};

/// Audio packets one participant may have queued towards its mixer thread.
const MAX_IN_FLIGHT: usize = 64;

/// Why a join was refused before it reached a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// The room is at its participant limit.
    #[error("room {room:?} is full ({limit} participants)")]
    RoomFull {
        /// The room asked for.
        room: String,
        /// Its limit.
        limit: usize,
    },
    /// The server is at its room limit.
    #[error("server has reached its limit of {limit} rooms")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The mode asked for is not allowed for the role in this room.
    #[error("{0}")]
    ModeNotAllowed(String),
    /// The mixer pool has shut down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl JoinRefused {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinRefused::RoomFull { .. } => ErrorCode::RoomFull,
            JoinRefused::TooManyRooms { .. } => ErrorCode::ServerFull,
            JoinRefused::ModeNotAllowed(_) => ErrorCode::ModeNotAllowed,
            JoinRefused::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

/// Limits the pool enforces.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Mixer threads to run.
    pub threads: usize,
    /// Rooms at most, server-wide.
    pub max_rooms: usize,
    /// Engine settings for every room (includes the per-room participant limit).
    pub engine: EngineConfig,
    /// Whether participants get resume tokens (a resume window is configured).
    pub resumable: bool,
}

/// The participant's side of a room membership; leaving (or dropping it) removes the participant.
#[derive(Debug)]
pub struct Membership {
    pool: Arc<Shared>,
    /// Secret for taking this participant back after a dropped connection.
    token: Option<Arc<str>>,
    /// The audio format it joined with (a resume must use the same).
    format: AudioFormat,
    /// Which suspension this is (an expiry timer only ends its own).
    suspension: u64,
    room: Arc<str>,
    thread: usize,
    id: ParticipantId,
    in_flight: Arc<AtomicUsize>,
    left: bool,
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

    /// Forwards one validated audio frame. Returns false if it was dropped because too many of
    /// this participant's packets are already waiting for the mixer.
    pub fn send_audio(&self, frame: Bytes, arrival: Instant) -> bool {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.pool
                .metrics
                .audio_frames_rejected_total
                .with_label_values(&["mixer_backlog"])
                .inc();
            return false;
        }
        let command = Command::Audio {
            participant: self.id,
            frame,
            arrival,
        };
        if self.pool.threads[self.thread].send(command).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Sends a control request (mode, mute, floor, moderation) to the room; the answer and
    /// the room's reaction arrive as messages on the participant's outbox.
    pub fn request(&self, request: RoomRequest) {
        let _ = self.pool.threads[self.thread].send(Command::Request {
            participant: self.id,
            request,
            at: Instant::now(),
        });
    }

    /// Keeps the participant in its room, silent, for `window` after its connection dropped, so
    /// that a `join` with its resume token can take it back; then it leaves (`disconnected`).
    /// Without a token it leaves at once.
    pub fn suspend(mut self, window: Duration) {
        static SUSPENSIONS: AtomicU64 = AtomicU64::new(1);
        let Some(token) = self.token.clone() else {
            return self.leave(LeaveReason::Disconnected);
        };
        let suspension = SUSPENSIONS.fetch_add(1, Ordering::Relaxed);
        self.suspension = suspension;
        let pool = self.pool.clone();
        let mut directory = pool.directory.lock().unwrap_or_else(|p| p.into_inner());
        if directory.shut_down {
            drop(directory);
            return self.leave(LeaveReason::Disconnected);
        }
        directory.suspended.insert(token.clone(), self);
        drop(directory);
        let expiry = Arc::downgrade(&pool);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let Some(pool) = expiry.upgrade() else {
                return;
            };
            let expired = {
                let mut directory = pool.directory.lock().unwrap_or_else(|p| p.into_inner());
                // Resumed and suspended again since: that later suspension has its own timer.
                if directory
                    .suspended
                    .get(&token)
                    .is_some_and(|m| m.suspension == suspension)
                {
                    directory.suspended.remove(&token)
                } else {
                    None
                }
            };
            if let Some(membership) = expired {
                debug!(participant = %membership.id, "resume window over");
                membership.leave(LeaveReason::Disconnected);
            }
        });
    }

    /// Leaves the room, telling the others why.
    pub fn leave(mut self, reason: LeaveReason) {
        self.leave_inner(reason);
    }

    fn leave_inner(&mut self, reason: LeaveReason) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let mut directory = self
            .pool
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = directory.rooms.get_mut(&self.room) {
            entry.members -= 1;
            if entry.members == 0 {
                directory.rooms.remove(&self.room);
                directory.rooms_per_thread[self.thread] -= 1;
                self.pool.metrics.rooms.dec();
            }
        }
        // Sent under the directory lock so it is ordered before any later join of this room.
        let _ = self.pool.threads[self.thread].send(Command::Leave {
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

/// A participant about to join, as the mixer thread needs it.
#[derive(Debug)]
pub struct Joiner {
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

impl Joiner {
    /// The mode asked for, or the default for the role in a room with `policy`.
    fn mode_in(&self, policy: FloorPolicy) -> Mode {
        mixer_protocol::JoinRequest::default_mode(self.mode, self.role, policy)
    }
}

/// Handle to the running mixer threads.
#[derive(Debug, Clone)]
pub struct MixerPool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    threads: Vec<mpsc::Sender<Command>>,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
    directory: Mutex<Directory>,
    next_id: AtomicU32,
    max_rooms: usize,
    max_participants: usize,
    /// Settings of rooms created by a join.
    defaults: RoomConfig,
    /// The largest `max_talkers` a room may ask for.
    max_talkers: usize,
    /// Participants get resume tokens.
    resumable: bool,
    metrics: Arc<Metrics>,
}

/// A new resume token: 128 bits from two independently keyed SipHash instances (the standard
/// library seeds each `RandomState` from the operating system), as 32 hex digits.
fn new_resume_token() -> Arc<str> {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut token = String::with_capacity(32);
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(n);
        token.push_str(&format!("{:016x}", hasher.finish()));
    }
    Arc::from(token)
}

/// How long a room made by `create_room` waits for its first participant before it is forgotten.
const CREATED_ROOM_TTL: Duration = Duration::from_secs(60);

/// The settings that can differ between rooms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomConfig {
    /// Push-to-talk floor.
    pub floor: FloorConfig,
    /// Participants at most.
    pub max_participants: usize,
    /// Talkers mixed at once at most.
    pub max_talkers: usize,
    /// Level normalisation.
    pub normalise: bool,
}

impl RoomConfig {
    /// The room settings inside an engine configuration.
    pub fn of(engine: &EngineConfig) -> RoomConfig {
        RoomConfig {
            floor: engine.floor,
            max_participants: engine.max_participants,
            max_talkers: engine.max_talkers,
            normalise: engine.normalise,
        }
    }

    /// `engine` with these room settings.
    fn apply(&self, engine: &EngineConfig) -> EngineConfig {
        EngineConfig {
            floor: self.floor,
            max_participants: self.max_participants,
            max_talkers: self.max_talkers,
            normalise: self.normalise,
            ..engine.clone()
        }
    }

    /// These defaults overridden by what `settings` gives (already validated).
    fn with(&self, settings: &RoomSettings) -> RoomConfig {
        let mut config = *self;
        if let Some(policy) = settings.floor_policy {
            config.floor.policy = policy;
        }
        if let Some(n) = settings.max_participants {
            config.max_participants = n as usize;
        }
        if let Some(n) = settings.max_talkers {
            config.max_talkers = n as usize;
        }
        if let Some(normalise) = settings.normalise {
            config.normalise = normalise;
        }
        if let Some(ms) = settings.max_talk_ms {
            config.floor.max_talk = Duration::from_millis(ms);
        }
        config
    }

    /// The room as described to clients.
    fn summary(&self, room: &str, participants: usize) -> RoomSummary {
        RoomSummary {
            settings: RoomSettings {
                room: room.to_owned(),
                floor_policy: Some(self.floor.policy),
                max_participants: Some(self.max_participants as u32),
                max_talkers: Some(self.max_talkers as u32),
                normalise: Some(self.normalise),
                max_talk_ms: Some(self.floor.max_talk.as_millis() as u64),
            },
            participants: participants as u32,
        }
    }
}

#[derive(Debug)]
struct Directory {
    rooms: HashMap<Arc<str>, DirectoryEntry>,
    /// Participants whose connection dropped, by resume token, waiting to be taken back.
    suspended: HashMap<Arc<str>, Membership>,
    rooms_per_thread: Vec<usize>,
    shut_down: bool,
}

impl Directory {
    /// The mixer thread with the fewest rooms, for a new room.
    fn least_loaded_thread(&self) -> usize {
        (0..self.rooms_per_thread.len())
            .min_by_key(|&t| self.rooms_per_thread[t])
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct DirectoryEntry {
    thread: usize,
    members: usize,
    /// The room's settings, so joins can be checked before they reach the mixer thread.
    config: RoomConfig,
    /// When `create_room` made it (it is forgotten if nobody joins in time).
    created: Instant,
}

/// A seat reserved in the directory, on its way to the room's mixer thread.
#[derive(Debug)]
struct Admission {
    room: Arc<str>,
    id: ParticipantId,
    joiner: Joiner,
    /// The joiner's mode, resolved and checked against its role and the room.
    mode: Mode,
    /// The room's settings, for the mixer thread to create it with if it is new there.
    config: RoomConfig,
    /// The participant's resume token, for `joined`.
    token: Option<Arc<str>>,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Debug)]
enum Command {
    Join(Admission),
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    Audio {
        participant: ParticipantId,
        frame: Bytes,
        arrival: Instant,
    },
    Request {
        participant: ParticipantId,
        request: RoomRequest,
        at: Instant,
    },
    Resume {
        participant: ParticipantId,
        outbox: Arc<Outbox>,
        token: Option<Arc<str>>,
    },
    Shutdown,
}

impl MixerPool {
    /// Starts `config.threads` mixer threads.
    pub fn start(config: PoolConfig, metrics: Arc<Metrics>) -> std::io::Result<MixerPool> {
        let count = config.threads.max(1);
        metrics.mixer_threads.set(count as i64);
        let mut senders = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel();
            let mut worker = MixerThread {
                rx,
                engine: config.engine.clone(),
                rooms: HashMap::new(),
                where_is: HashMap::new(),
                metrics: metrics.clone(),
                phases: PhaseClock::new(),
                epoch: Instant::now(),
            };
            let handle = thread::Builder::new()
                .name(format!("mixer-{index}"))
                .spawn(move || worker.run())?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(MixerPool {
            shared: Arc::new(Shared {
                threads: senders,
                handles: Mutex::new(handles),
                directory: Mutex::new(Directory {
                    rooms: HashMap::new(),
                    suspended: HashMap::new(),
                    rooms_per_thread: vec![0; count],
                    shut_down: false,
                }),
                next_id: AtomicU32::new(1),
                max_rooms: config.max_rooms,
                max_participants: config.engine.max_participants,
                defaults: RoomConfig::of(&config.engine),
                max_talkers: config.engine.max_talkers,
                resumable: config.resumable,
                metrics,
            }),
        })
    }

    /// Takes back the suspended participant with this resume token in `room`, for a new
    /// connection whose outbox is `outbox`; it is told with a `joined` (`resumed`).
    pub fn resume(
        &self,
        token: &str,
        room: &str,
        format: &AudioFormat,
        outbox: Arc<Outbox>,
    ) -> Option<Membership> {
        let mut directory = self.directory();
        if directory
            .suspended
            .get(token)
            .is_none_or(|m| &*m.room != room || m.format != *format)
        {
            return None;
        }
        let membership = directory.suspended.remove(token)?;
        let _ = self.shared.threads[membership.thread].send(Command::Resume {
            participant: membership.id,
            outbox,
            token: membership.token.clone(),
        });
        Some(membership)
    }

    /// Creates an empty room with `settings` (omitted ones from the server's defaults); it is
    /// forgotten if nobody joins within a minute.
    pub fn create_room(&self, settings: &RoomSettings) -> Result<RoomSummary, (ErrorCode, String)> {
        let shared = &self.shared;
        settings
            .validate(
                shared.max_participants as u32,
                shared.max_talkers.max(1) as u32,
            )
            .map_err(|e| (e.code(), e.to_string()))?;
        let mut directory = self.directory();
        if directory.shut_down {
            return Err((ErrorCode::ShuttingDown, "server is shutting down".into()));
        }
        if directory.rooms.contains_key(settings.room.as_str()) {
            return Err((
                ErrorCode::RoomExists,
                format!("room {:?} already exists", settings.room),
            ));
        }
        if directory.rooms.len() >= shared.max_rooms {
            return Err((
                ErrorCode::ServerFull,
                format!("server has reached its limit of {} rooms", shared.max_rooms),
            ));
        }
        let config = shared.defaults.with(settings);
        let thread = directory.least_loaded_thread();
        directory.rooms_per_thread[thread] += 1;
        directory.rooms.insert(
            Arc::from(settings.room.as_str()),
            DirectoryEntry {
                thread,
                members: 0,
                config,
                created: Instant::now(),
            },
        );
        shared.metrics.rooms.inc();
        info!(room = %settings.room, ?config, "room created");
        Ok(config.summary(&settings.room, 0))
    }

    /// A room's settings and occupancy, if it exists.
    pub fn room_info(&self, room: &str) -> Option<RoomSummary> {
        let directory = self.directory();
        let entry = directory.rooms.get(room)?;
        Some(entry.config.summary(room, entry.members))
    }

    /// The rooms, sorted by name (at most `MAX_LISTED_ROOMS`), and whether there are more.
    pub fn list_rooms(&self) -> (Vec<RoomSummary>, bool) {
        let directory = self.directory();
        let mut names: Vec<&Arc<str>> = directory.rooms.keys().collect();
        names.sort_unstable();
        let truncated = names.len() > MAX_LISTED_ROOMS;
        let rooms = names
            .into_iter()
            .take(MAX_LISTED_ROOMS)
            .map(|name| {
                directory.rooms[name]
                    .config
                    .summary(name, directory.rooms[name].members)
            })
            .collect();
        (rooms, truncated)
    }

    /// The directory, with created rooms nobody joined in time forgotten.
    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        let mut directory = self
            .shared
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let expired: Vec<Arc<str>> = directory
            .rooms
            .iter()
            .filter(|(_, e)| e.members == 0 && e.created.elapsed() >= CREATED_ROOM_TTL)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            if let Some(entry) = directory.rooms.remove(&name) {
                directory.rooms_per_thread[entry.thread] -= 1;
                self.shared.metrics.rooms.dec();
                debug!(room = %name, "created room expired unjoined");
            }
        }
        directory
    }

    /// Reserves a seat in `room` (creating it if needed) and hands the joiner to its mixer thread,
    /// which answers with `joined` and tells the others.
    pub fn join(&self, room: &str, joiner: Joiner) -> Result<Membership, JoinRefused> {
        let shared = &self.shared;
        let mut directory = self.directory();
        if directory.shut_down {
            return Err(JoinRefused::ShuttingDown);
        }
        let existing = directory
            .rooms
            .get_key_value(room)
            .map(|(name, _)| name.clone());
        let room_config = existing
            .as_ref()
            .and_then(|name| directory.rooms.get(name))
            .map_or(shared.defaults, |entry| entry.config);
        let policy = room_config.floor.policy;
        let mode = joiner.mode_in(policy);
        requests::mode_allowed(joiner.role, mode, policy).map_err(JoinRefused::ModeNotAllowed)?;
        let (room, thread) = match existing.and_then(|name| {
            let entry = directory.rooms.get_mut(&name)?;
            Some((name, entry))
        }) {
            Some((name, entry)) => {
                if entry.members >= entry.config.max_participants {
                    return Err(JoinRefused::RoomFull {
                        room: room.to_owned(),
                        limit: entry.config.max_participants,
                    });
                }
                entry.members += 1;
                (name, entry.thread)
            }
            None => {
                if directory.rooms.len() >= shared.max_rooms {
                    return Err(JoinRefused::TooManyRooms {
                        limit: shared.max_rooms,
                    });
                }
                let thread = directory.least_loaded_thread();
                directory.rooms_per_thread[thread] += 1;
                let name: Arc<str> = Arc::from(room);
                directory.rooms.insert(
                    name.clone(),
                    DirectoryEntry {
                        thread,
                        members: 1,
                        config: room_config,
                        created: Instant::now(),
                    },
                );
                shared.metrics.rooms.inc();
                (name, thread)
            }
        };
        let id = ParticipantId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let token = shared.resumable.then(new_resume_token);
        let format = joiner.format.clone();
        let command = Command::Join(Admission {
            room: room.clone(),
            id,
            joiner,
            mode,
            config: room_config,
            token: token.clone(),
            in_flight: in_flight.clone(),
        });
        if shared.threads[thread].send(command).is_err() {
            return Err(JoinRefused::ShuttingDown);
        }
        drop(directory);
        Ok(Membership {
            pool: shared.clone(),
            token,
            format,
            suspension: 0,
            room,
            thread,
            id,
            in_flight,
            left: false,
        })
    }

    /// Refuses further joins, stops every mixer thread and waits for them.
    pub fn shutdown(&self) {
        let suspended = {
            let mut directory = self
                .shared
                .directory
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            directory.shut_down = true;
            std::mem::take(&mut directory.suspended)
        };
        // Dropped outside the lock: each one leaves its room, which takes the lock.
        drop(suspended);
        for sender in &self.shared.threads {
            let _ = sender.send(Command::Shutdown);
        }
        let handles = std::mem::take(
            &mut *self
                .shared
                .handles
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for handle in handles {
            if handle.join().is_err() {
                warn!("a mixer thread panicked");
            }
        }
    }
}

/// A participant as its mixer thread knows it.
pub(super) struct Member {
    pub(super) name: String,
    pub(super) mode: Mode,
    pub(super) role: Role,
    /// The audio format it sends and receives.
    pub(super) format: AudioFormat,
    /// The moderator who muted it, if one did (it may not unmute itself then).
    pub(super) muted_by: Option<ParticipantId>,
    pub(super) outbox: Arc<Outbox>,
    in_flight: Arc<AtomicUsize>,
    /// Audio-path errors raised on the mixer thread, at most one per code per second.
    errors: ErrorThrottle,
}

/// Ticks between two copies of a room's engine counters into the metrics (one second).
const REPORT_EVERY_TICKS: u32 = 50;

/// A room on its mixer thread: the engine and who is in it.
pub(super) struct RoomSlot {
    pub(super) engine: Room,
    pub(super) members: HashMap<ParticipantId, Member>,
    /// Engine totals already added to the metrics.
    reported: RoomTotals,
    /// Chat messages delivered so far (the last chat id).
    pub(super) chats: u64,
    ticks_since_report: u32,
}

impl RoomSlot {
    /// Sends `message` to everyone in the room.
    pub(super) fn broadcast_all(&self, message: &ServerMessage) {
        let json = message.to_json();
        for member in self.members.values() {
            member.outbox.push_control(json.clone());
        }
    }

    /// Sends `message` to one member.
    pub(super) fn send_to(&self, to: ParticipantId, message: &ServerMessage) {
        if let Some(member) = self.members.get(&to) {
            member.outbox.push_control(message.to_json());
        }
    }

    fn info(&self, id: ParticipantId, member: &Member) -> ParticipantInfo {
        ParticipantInfo {
            id: id.0,
            name: member.name.clone(),
            mode: member.mode,
            role: member.role,
            muted: self.engine.is_muted(id).unwrap_or(false),
        }
    }

    /// The `joined` message for `id`: the others in the room, the floor, the resume token.
    fn joined(
        &self,
        id: ParticipantId,
        room: &str,
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
            room: room.to_owned(),
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

    fn broadcast(&self, except: ParticipantId, message: &ServerMessage) {
        let json = message.to_json();
        for (id, member) in &self.members {
            if *id != except {
                member.outbox.push_control(json.clone());
            }
        }
    }

    /// Copies the growth of the engine's counters into the metrics.
    fn report(&mut self, metrics: &Metrics) {
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
        for (phase, seconds) in ["decode", "mix", "encode"].iter().zip(&mut self.spent) {
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

struct MixerThread {
    rx: mpsc::Receiver<Command>,
    engine: EngineConfig,
    rooms: HashMap<Arc<str>, RoomSlot>,
    where_is: HashMap<ParticipantId, Arc<str>>,
    metrics: Arc<Metrics>,
    phases: PhaseClock,
    /// Origin of this thread's shared tick grid.
    epoch: Instant,
}

/// Tells a joiner the engine could not take it (room full, or a codec that failed to build) and
/// closes its connection.
fn refuse(metrics: &Metrics, room: &str, id: ParticipantId, joiner: &Joiner, error: EngineError) {
    warn!(%room, participant = %id, %error, "join failed in the engine");
    let code = match error {
        EngineError::RoomFull(_) => ErrorCode::RoomFull,
        _ => ErrorCode::Internal,
    };
    metrics
        .join_failures_total
        .with_label_values(&[code.as_str()])
        .inc();
    joiner
        .outbox
        .push_control(ServerMessage::error(code, error.to_string()).to_json());
    joiner.outbox.close(Closed::Close {
        code: 1011,
        reason: "join failed",
    });
}

fn reason_label(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::Disconnected => "disconnected",
        LeaveReason::TimedOut => "timed_out",
        LeaveReason::SlowConsumer => "slow_consumer",
        LeaveReason::ServerShutdown => "server_shutdown",
        LeaveReason::Removed => "removed",
    }
}

impl MixerThread {
    fn run(&mut self) {
        loop {
            let deadline = self
                .rooms
                .values()
                .map(|slot| slot.engine.poll_timeout())
                .min();
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
                    // Take everything else already queued before mixing.
                    while let Ok(command) = self.rx.try_recv() {
                        if !self.handle(command) {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.run_due_ticks();
        }
    }

    /// Applies one command; returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Audio {
                participant,
                frame,
                arrival,
            } => self.audio(participant, &frame, arrival),
            Command::Join(admission) => self.join(admission),
            Command::Leave {
                participant,
                reason,
            } => self.leave(participant, reason),
            Command::Request {
                participant,
                request,
                at,
            } => self.request(participant, request, at),
            Command::Resume {
                participant,
                outbox,
                token,
            } => self.resume(participant, outbox, token),
            Command::Shutdown => return false,
        }
        true
    }

    fn audio(&mut self, participant: ParticipantId, frame: &[u8], arrival: Instant) {
        let Some(slot) = self
            .where_is
            .get(&participant)
            .and_then(|r| self.rooms.get_mut(r))
        else {
            return;
        };
        if let Some(member) = slot.members.get(&participant) {
            member.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        // The connection validated the frame already; parse again to borrow its parts.
        let Ok(frame) = AudioFrame::parse_pcm(frame) else {
            return;
        };
        let (code, message) = match slot.engine.handle_audio(participant, frame, arrival) {
            Ok(_) | Err(EngineError::UnknownParticipant(_)) => return,
            Err(EngineError::Muted(_)) => {
                // The participant was told it is muted; keeping on sending is not an error.
                self.metrics
                    .audio_frames_rejected_total
                    .with_label_values(&["muted"])
                    .inc();
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
        self.metrics
            .audio_frames_rejected_total
            .with_label_values(&[code.as_str()])
            .inc();
        if let Some(member) = slot.members.get_mut(&participant)
            && member.errors.allow(code, arrival)
        {
            self.metrics
                .errors_sent_total
                .with_label_values(&[code.as_str()])
                .inc();
            member
                .outbox
                .push_control(ServerMessage::error(code, message).to_json());
        }
    }

    /// A suspended participant's client is back on a new connection.
    fn resume(&mut self, participant: ParticipantId, outbox: Arc<Outbox>, token: Option<Arc<str>>) {
        let Some(room) = self.where_is.get(&participant).cloned() else {
            // It left meanwhile (removed by a moderator). The connection already holds the
            // membership, so close it: the client reconnects and joins afresh.
            outbox.push_control(
                ServerMessage::error(
                    ErrorCode::ResumeFailed,
                    "the participant is no longer in the room; connect and join again without resume",
                )
                .to_json(),
            );
            outbox.close(Closed::Close {
                code: 1008,
                reason: "resume failed",
            });
            return;
        };
        let Some(slot) = self.rooms.get_mut(&room) else {
            return;
        };
        let format = slot
            .members
            .get(&participant)
            .map_or_else(AudioFormat::opus_48k_mono_20ms, |m| m.format.clone());
        let joined = slot.joined(participant, &room, &format, token.as_deref(), true);
        if let Some(member) = slot.members.get_mut(&participant) {
            member.outbox = outbox;
            member.errors = ErrorThrottle::default();
            member.outbox.push_control(joined.to_json());
            info!(%room, %participant, "resumed");
            self.metrics.resumes_total.inc();
        }
    }

    fn request(&mut self, participant: ParticipantId, request: RoomRequest, at: Instant) {
        let Some(room) = self.where_is.get(&participant).cloned() else {
            return;
        };
        let Some(slot) = self.rooms.get_mut(&room) else {
            return;
        };
        let outcome = requests::apply(slot, participant, request, &self.metrics, at);
        while let Some(event) = slot.engine.poll_event() {
            requests::announce(slot, &event, &self.metrics);
        }
        for removed in outcome.removed {
            self.leave(removed, LeaveReason::Removed);
        }
    }

    fn join(&mut self, admission: Admission) {
        let Admission {
            room,
            id,
            joiner,
            mode,
            config,
            token,
            in_flight,
        } = admission;
        if !self.rooms.contains_key(&room) {
            // Every room on this thread ticks on the same 20 ms grid, so a thread wakes once per
            // tick for all its rooms rather than once per room: hundreds of quiet rooms cost
            // one wake-up, not hundreds. A new room waits at most one frame for its first tick.
            let period = crate::engine::FRAME;
            let since = Instant::now().saturating_duration_since(self.epoch);
            let slots = since.as_nanos().div_ceil(period.as_nanos()) as u32;
            let start = self.epoch + period * slots;
            match Room::new(config.apply(&self.engine), start) {
                Ok(engine) => {
                    let slot = RoomSlot {
                        engine,
                        members: HashMap::new(),
                        reported: RoomTotals::default(),
                        chats: 0,
                        ticks_since_report: 0,
                    };
                    self.rooms.insert(room.clone(), slot);
                }
                Err(error) => return refuse(&self.metrics, &room, id, &joiner, error),
            }
        }
        let Some(slot) = self.rooms.get_mut(&room) else {
            return;
        };
        let codec = match joiner.format.pcm_rate().map(PcmRate::from_hz) {
            Some(Ok(rate)) => ClientCodec::Pcm(rate),
            _ => ClientCodec::Opus,
        };
        if let Err(error) = slot.engine.add_participant_with(id, mode, codec) {
            refuse(&self.metrics, &room, id, &joiner, error);
            if slot.members.is_empty() {
                self.rooms.remove(&room);
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
        let joined = slot.joined(id, &room, &joiner.format, token.as_deref(), false);
        if matches!(
            joined,
            ServerMessage::Joined {
                replay_ms: Some(_),
                ..
            }
        ) {
            self.metrics.replays_total.inc();
        }
        joiner.outbox.push_control(joined.to_json());
        slot.broadcast(id, &ServerMessage::ParticipantJoined { participant: info });
        info!(%room, participant = %id, name = %joiner.name, mode = mode.as_str(), "joined");
        let label = mode.as_str();
        self.metrics.participants.with_label_values(&[label]).inc();
        self.metrics.joins_total.with_label_values(&[label]).inc();
        slot.members.insert(
            id,
            Member {
                name: joiner.name,
                mode,
                role: joiner.role,
                format: joiner.format,
                muted_by: None,
                outbox: joiner.outbox,
                in_flight,
                errors: ErrorThrottle::default(),
            },
        );
        self.where_is.insert(id, room);
    }

    fn leave(&mut self, participant: ParticipantId, reason: LeaveReason) {
        let Some(room) = self.where_is.remove(&participant) else {
            return;
        };
        let Some(slot) = self.rooms.get_mut(&room) else {
            return;
        };
        slot.engine.remove_participant(participant);
        let member = slot.members.remove(&participant);
        // The engine's last word on the participant (the floor it held) before the room hears
        // that it left.
        while let Some(event) = slot.engine.poll_event() {
            requests::announce(slot, &event, &self.metrics);
        }
        slot.broadcast(
            participant,
            &ServerMessage::ParticipantLeft {
                participant_id: participant.0,
                reason,
            },
        );
        let reason_label = reason_label(reason);
        info!(%room, %participant, reason = reason_label, "left");
        self.metrics
            .leaves_total
            .with_label_values(&[reason_label])
            .inc();
        if reason == LeaveReason::SlowConsumer {
            self.metrics.slow_consumer_disconnects_total.inc();
        }
        if let Some(member) = member {
            self.metrics
                .participants
                .with_label_values(&[Mode::as_str(member.mode)])
                .dec();
        }
        if slot.members.is_empty() {
            slot.report(&self.metrics);
            debug!(%room, "room closed");
            self.rooms.remove(&room);
        }
    }

    fn run_due_ticks(&mut self) {
        let metrics = &self.metrics;
        let mut frame = Vec::with_capacity(mixer_protocol::MAX_AUDIO_FRAME);
        let mut ran = false;
        for (room, slot) in &mut self.rooms {
            loop {
                let deadline = slot.engine.poll_timeout();
                let start = Instant::now();
                if deadline > start {
                    break;
                }
                ran = true;
                let lateness = start.saturating_duration_since(deadline);
                metrics
                    .tick_lateness_seconds
                    .observe(lateness.as_secs_f64());
                if lateness >= crate::engine::FRAME {
                    metrics.tick_deadline_misses_total.inc();
                }
                slot.engine.handle_timeout_timed(start, &mut self.phases);
                metrics.ticks_total.inc();
                // A shared frame is the same bytes for all its listeners: build it once and hand
                // out reference-counted clones.
                let mut last: Option<(usize, AudioHeader, Bytes)> = None;
                while let Some(transmit) = slot.engine.poll_transmit() {
                    let Some(member) = slot.members.get(&transmit.to) else {
                        continue;
                    };
                    let key = transmit.payload.as_ptr() as usize;
                    let bytes = match &last {
                        Some((k, header, bytes)) if *k == key && *header == transmit.header => {
                            bytes.clone()
                        }
                        _ => {
                            frame.clear();
                            transmit.frame().write_to(&mut frame);
                            let bytes = Bytes::copy_from_slice(&frame);
                            last = Some((key, transmit.header, bytes.clone()));
                            bytes
                        }
                    };
                    let len = bytes.len();
                    match member.outbox.push_audio(bytes) {
                        Pushed::Queued => {}
                        Pushed::DroppedOldest => metrics.send_queue_drops_total.inc(),
                        Pushed::Closed => continue,
                    }
                    metrics.audio_frames_out_total.inc();
                    metrics.audio_bytes_out_total.inc_by(len as u64);
                }
                metrics
                    .tick_duration_seconds
                    .observe(start.elapsed().as_secs_f64());
                while let Some(event) = slot.engine.poll_event() {
                    match event {
                        Event::DecodeFailed { participant } => {
                            if let Some(member) = slot.members.get(&participant) {
                                let message = ServerMessage::error(
                                    ErrorCode::InvalidOpus,
                                    "an audio packet failed to decode as Opus and was concealed",
                                );
                                metrics
                                    .errors_sent_total
                                    .with_label_values(&["invalid_opus"])
                                    .inc();
                                member.outbox.push_control(message.to_json());
                            }
                        }
                        Event::EncodeFailed { participant } => {
                            warn!(%room, %participant, "Opus encode failed");
                        }
                        Event::SharedEncodeFailed => {
                            warn!(%room, "Opus encode of the shared mix failed");
                        }
                        Event::TicksSkipped { count } => {
                            metrics.ticks_skipped_total.inc_by(count);
                            warn!(%room, count, "mixer fell behind; ticks skipped");
                        }
                        Event::CaughtUp { participant } => {
                            slot.send_to(participant, &ServerMessage::CaughtUp);
                        }
                        Event::TalkingStarted { .. }
                        | Event::TalkingStopped { .. }
                        | Event::Floor(_) => {
                            requests::announce(slot, &event, &self.metrics);
                        }
                    }
                }
                slot.ticks_since_report += 1;
                if slot.ticks_since_report >= REPORT_EVERY_TICKS {
                    slot.report(metrics);
                }
            }
        }
        if ran && self.phases.started.elapsed() >= std::time::Duration::from_secs(1) {
            self.phases.flush(metrics);
            self.phases.started = Instant::now();
        }
    }
}
