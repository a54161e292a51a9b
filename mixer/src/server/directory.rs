//! The room directory: which rooms exist, their settings, how many seats each has taken, and
//! which mixer thread (and slot on it) mixes each one.
//!
//! It is plain data, with no locks, channels or clock inside: the pool holds it under one mutex
//! and passes `now` in. Joins are admitted here (room limits, mode rules) before anything
//! reaches a mixer thread, so a refused join costs the real-time threads nothing.
//!
//! Seats count memberships, not the mixer thread's roster: a seat is taken when a join is
//! admitted and given back when its membership leaves, so a room's seats are a bound on (and,
//! once the mixer thread has caught up with its commands, equal to) the members its thread knows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mixer_protocol::{
    AudioFormat, ErrorCode, FloorPolicy, FrameSize, JoinRequest, MAX_LISTED_ROOMS, Mode, Role,
    RoomSettings, RoomSummary,
};

use super::requests::mode_allowed;
use crate::engine::EngineConfig;
use crate::engine::floor::FloorConfig;

/// How long a room made by `create_room` waits for its first participant before it is forgotten.
pub const CREATED_ROOM_TTL: Duration = Duration::from_secs(60);

/// A room's slot on its mixer thread: a small dense index, so a command finds its room with one
/// array access instead of a lookup by name. Slots are reused once a room is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(pub u32);

/// Where a room is mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The mixer thread.
    pub thread: usize,
    /// The room's slot on that thread.
    pub key: RoomKey,
}

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
    /// The room's mixer thread has too many commands queued to take a join now.
    #[error("the server is busy; try again in a moment")]
    Busy,
    /// The mixer pool has shut down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The identity (or name or address) is banned from the room.
    #[error("you were removed from room {room:?}, and may not rejoin it while it exists")]
    Banned {
        /// The room.
        room: String,
    },
    /// Someone else in the room has this name, or one that looks like it.
    #[error(
        "someone in the room is already called {name:?} or something that looks like it; choose another name"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// The server is draining and takes no new rooms.
    #[error(
        "this server is draining (being taken out of service) and takes no new rooms; try another server"
    )]
    Draining,
    /// The room's frames are not the size the joiner's format asks for.
    #[error(
        "room {room:?} has {room_frame} frames and the join asks for {asked} ms; join with \
         frame_ms {} (an Opus format: PCM clients need a room of 20 ms frames)",
        room_frame.ms()
    )]
    FrameMismatch {
        /// The room.
        room: String,
        /// The room's frame size.
        room_frame: FrameSize,
        /// The joiner's `frame_ms`.
        asked: u32,
    },
}

impl JoinRefused {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinRefused::RoomFull { .. } => ErrorCode::RoomFull,
            JoinRefused::TooManyRooms { .. } => ErrorCode::ServerFull,
            JoinRefused::ModeNotAllowed(_) => ErrorCode::ModeNotAllowed,
            JoinRefused::Busy => ErrorCode::ServerBusy,
            JoinRefused::ShuttingDown => ErrorCode::ShuttingDown,
            JoinRefused::Banned { .. } => ErrorCode::Banned,
            JoinRefused::NameTaken { .. } => ErrorCode::NameTaken,
            JoinRefused::Draining => ErrorCode::Draining,
            JoinRefused::FrameMismatch { .. } => ErrorCode::UnsupportedFormat,
        }
    }
}

/// Why `create_room` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateRefused {
    /// Settings out of range.
    #[error("{0}")]
    Invalid(String),
    /// A room of that name exists.
    #[error("room {0:?} already exists")]
    Exists(String),
    /// The server is at its room limit.
    #[error("server has reached its limit of {limit} rooms")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The server is draining and takes no new rooms.
    #[error(
        "this server is draining (being taken out of service) and takes no new rooms; try another server"
    )]
    Draining,
}

impl CreateRefused {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            CreateRefused::Invalid(_) => ErrorCode::InvalidSettings,
            CreateRefused::Exists(_) => ErrorCode::RoomExists,
            CreateRefused::TooManyRooms { .. } => ErrorCode::ServerFull,
            CreateRefused::ShuttingDown => ErrorCode::ShuttingDown,
            CreateRefused::Draining => ErrorCode::Draining,
        }
    }
}

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
    /// The duration of its frames and ticks.
    pub frame: FrameSize,
}

impl RoomConfig {
    /// The room settings inside an engine configuration.
    pub fn of(engine: &EngineConfig) -> RoomConfig {
        RoomConfig {
            floor: engine.floor,
            max_participants: engine.max_participants,
            max_talkers: engine.max_talkers,
            normalise: engine.normalise,
            frame: engine.frame,
        }
    }

    /// `engine` with these room settings.
    pub fn apply(&self, engine: &EngineConfig) -> EngineConfig {
        let engine = engine.with_frame(self.frame);
        EngineConfig {
            floor: self.floor,
            max_participants: self.max_participants,
            max_talkers: self.max_talkers,
            normalise: self.normalise,
            ..engine
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
        if let Some(frame) = settings.frame_ms.and_then(FrameSize::from_ms) {
            config.frame = frame;
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
                frame_ms: Some(self.frame.ms()),
            },
            participants: participants as u32,
        }
    }
}

/// A seat taken in a room: what the room's mixer thread needs to seat the joiner.
#[derive(Debug, Clone)]
pub struct Seat {
    /// The room's name (shared with the directory).
    pub room: Arc<str>,
    /// Where the room is mixed.
    pub placement: Placement,
    /// The room's settings, for the mixer thread to create it with if it is new there.
    pub config: RoomConfig,
    /// The joiner's mode, resolved from its request and checked against its role and the room.
    pub mode: Mode,
}

#[derive(Debug)]
struct Entry {
    placement: Placement,
    seats: usize,
    config: RoomConfig,
    /// Since when it has waited for its first member (a room nobody joins is forgotten after
    /// [`CREATED_ROOM_TTL`]).
    waiting_since: Instant,
    /// Made by `create_room`: its settings are the creator's.
    created: bool,
}

/// One mixer thread's share of the directory.
#[derive(Debug, Default)]
struct ThreadRooms {
    rooms: usize,
    /// Keys of rooms that are gone, for reuse (so keys stay dense).
    free: Vec<u32>,
    next: u32,
}

/// The room directory (see the module docs).
#[derive(Debug)]
pub struct Directory {
    rooms: HashMap<Arc<str>, Entry>,
    threads: Vec<ThreadRooms>,
    max_rooms: usize,
    defaults: RoomConfig,
    /// No waiting room expires before this (`None`: none is waiting), so most calls of
    /// [`Directory::expire`] cost nothing instead of a scan of every room.
    next_expiry: Option<Instant>,
}

impl Directory {
    /// An empty directory for `threads` mixer threads, `max_rooms` rooms at most, and rooms
    /// made by a join with `defaults`.
    pub fn new(threads: usize, max_rooms: usize, defaults: RoomConfig) -> Directory {
        Directory {
            rooms: HashMap::new(),
            threads: (0..threads.max(1))
                .map(|_| ThreadRooms::default())
                .collect(),
            max_rooms,
            defaults,
            next_expiry: None,
        }
    }

    /// Rooms that exist.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Takes a seat in `room` for a participant with `role` asking for `mode` in `format`
    /// (validated), creating the room (on the least-loaded mixer thread) if it does not exist.
    /// A room a join creates has the frame size of the joiner's format; a room that exists
    /// takes only joiners of its frame size.
    pub fn take_seat(
        &mut self,
        room: &str,
        role: Role,
        mode: Option<Mode>,
        format: &AudioFormat,
        now: Instant,
    ) -> Result<Seat, JoinRefused> {
        let frame = format.frame_size().unwrap_or_default();
        let config = self.rooms.get(room).map_or(
            RoomConfig {
                frame,
                ..self.defaults
            },
            |e| e.config,
        );
        if config.frame != frame {
            return Err(JoinRefused::FrameMismatch {
                room: room.to_owned(),
                room_frame: config.frame,
                asked: format.frame_ms,
            });
        }
        let policy: FloorPolicy = config.floor.policy;
        let mode = JoinRequest::default_mode(mode, role, policy);
        mode_allowed(role, mode, policy).map_err(JoinRefused::ModeNotAllowed)?;
        if let Some((name, entry)) = self.rooms.get_key_value(room) {
            if entry.seats >= entry.config.max_participants {
                return Err(JoinRefused::RoomFull {
                    room: room.to_owned(),
                    limit: entry.config.max_participants,
                });
            }
            let name = name.clone();
            let entry = self.rooms.get_mut(room).expect("found just above");
            entry.seats += 1;
            return Ok(Seat {
                room: name,
                placement: entry.placement,
                config,
                mode,
            });
        }
        let name: Arc<str> = Arc::from(room);
        let placement = self.insert(name.clone(), config, 1, now)?;
        Ok(Seat {
            room: name,
            placement,
            config,
            mode,
        })
    }

    /// Gives back a seat taken in `room`; returns true if that closed the room (its slot is
    /// free for another room from now on).
    pub fn release_seat(&mut self, room: &str) -> bool {
        let Some(entry) = self.rooms.get_mut(room) else {
            return false;
        };
        entry.seats = entry.seats.saturating_sub(1);
        if entry.seats > 0 {
            return false;
        }
        self.remove(room);
        true
    }

    /// Gives back a seat whose joiner never became a member (its join was refused after the
    /// seat was taken). A room made by `create_room` that this empties is not removed: it goes
    /// back to waiting for its first member, its settings kept, for another
    /// [`CREATED_ROOM_TTL`] from `now`. Returns true if the room was removed.
    pub fn cancel_seat(&mut self, room: &str, now: Instant) -> bool {
        let Some(entry) = self.rooms.get_mut(room) else {
            return false;
        };
        if entry.seats == 1 && entry.created {
            entry.seats = 0;
            entry.waiting_since = now;
            self.note_waiting(now);
            return false;
        }
        self.release_seat(room)
    }

    /// Creates an empty room with `settings` (omitted ones from the defaults), where
    /// `max_talkers_limit` is the largest talker cap a room may ask for.
    pub fn create(
        &mut self,
        settings: &RoomSettings,
        max_talkers_limit: usize,
        now: Instant,
    ) -> Result<RoomSummary, CreateRefused> {
        settings
            .validate(
                self.defaults.max_participants as u32,
                max_talkers_limit.max(1) as u32,
            )
            .map_err(|e| CreateRefused::Invalid(e.to_string()))?;
        if self.rooms.contains_key(settings.room.as_str()) {
            return Err(CreateRefused::Exists(settings.room.clone()));
        }
        let config = self.defaults.with(settings);
        self.insert(Arc::from(settings.room.as_str()), config, 0, now)
            .map_err(|_| CreateRefused::TooManyRooms {
                limit: self.max_rooms,
            })?;
        self.note_waiting(now);
        Ok(config.summary(&settings.room, 0))
    }

    /// Forgets rooms made by `create_room` that nobody joined within [`CREATED_ROOM_TTL`];
    /// returns how many. Cheap when nothing is due.
    pub fn expire(&mut self, now: Instant) -> usize {
        if self.next_expiry.is_none_or(|due| now < due) {
            return 0;
        }
        let expired: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|(_, e)| {
                e.seats == 0 && now.saturating_duration_since(e.waiting_since) >= CREATED_ROOM_TTL
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.remove(name);
        }
        self.next_expiry = self
            .rooms
            .values()
            .filter(|e| e.seats == 0)
            .map(|e| e.waiting_since + CREATED_ROOM_TTL)
            .min();
        expired.len()
    }

    /// A room started waiting for its first member at `since`.
    fn note_waiting(&mut self, since: Instant) {
        let due = since + CREATED_ROOM_TTL;
        self.next_expiry = Some(self.next_expiry.map_or(due, |t| t.min(due)));
    }

    /// A room's settings and occupancy, if it exists.
    pub fn info(&self, room: &str) -> Option<RoomSummary> {
        let entry = self.rooms.get(room)?;
        Some(entry.config.summary(room, entry.seats))
    }

    /// Where `room` is mixed, if it exists.
    pub fn placement(&self, room: &str) -> Option<Placement> {
        self.rooms.get(room).map(|e| e.placement)
    }

    /// Every room, sorted by name, without the client listing's limit (for operators); the
    /// second value is always false.
    pub fn list_all(&self) -> (Vec<RoomSummary>, bool) {
        self.list_at_most(usize::MAX, |_| true)
    }

    /// The rooms, sorted by name (at most [`MAX_LISTED_ROOMS`]), and whether there are more.
    pub fn list(&self) -> (Vec<RoomSummary>, bool) {
        self.list_at_most(MAX_LISTED_ROOMS, |_| true)
    }

    /// [`Directory::list`] of only the rooms whose names pass `filter` (those an access token
    /// grants).
    pub fn list_matching(&self, filter: impl Fn(&str) -> bool) -> (Vec<RoomSummary>, bool) {
        self.list_at_most(MAX_LISTED_ROOMS, filter)
    }

    fn list_at_most(
        &self,
        limit: usize,
        filter: impl Fn(&str) -> bool,
    ) -> (Vec<RoomSummary>, bool) {
        let mut rooms: Vec<(&Arc<str>, &Entry)> =
            self.rooms.iter().filter(|(name, _)| filter(name)).collect();
        rooms.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let truncated = rooms.len() > limit;
        let rooms = rooms
            .into_iter()
            .take(limit)
            .map(|(name, entry)| entry.config.summary(name, entry.seats))
            .collect();
        (rooms, truncated)
    }

    /// Adds a room on the least-loaded thread, in a free slot.
    fn insert(
        &mut self,
        name: Arc<str>,
        config: RoomConfig,
        seats: usize,
        now: Instant,
    ) -> Result<Placement, JoinRefused> {
        if self.rooms.len() >= self.max_rooms {
            return Err(JoinRefused::TooManyRooms {
                limit: self.max_rooms,
            });
        }
        let thread = (0..self.threads.len())
            .min_by_key(|&t| self.threads[t].rooms)
            .unwrap_or(0);
        let rooms = &mut self.threads[thread];
        rooms.rooms += 1;
        let key = rooms.free.pop().unwrap_or_else(|| {
            rooms.next += 1;
            rooms.next - 1
        });
        let placement = Placement {
            thread,
            key: RoomKey(key),
        };
        self.rooms.insert(
            name,
            Entry {
                placement,
                seats,
                config,
                waiting_since: now,
                // A room is inserted empty only by create_room; a join inserts it with its seat.
                created: seats == 0,
            },
        );
        Ok(placement)
    }

    fn remove(&mut self, room: &str) {
        if let Some(entry) = self.rooms.remove(room) {
            let rooms = &mut self.threads[entry.placement.thread];
            rooms.rooms -= 1;
            rooms.free.push(entry.placement.key.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(threads: usize, max_rooms: usize, max_participants: usize) -> Directory {
        let engine = EngineConfig {
            max_participants,
            ..EngineConfig::default()
        };
        Directory::new(threads, max_rooms, RoomConfig::of(&engine))
    }

    fn opus() -> AudioFormat {
        AudioFormat::opus_48k_mono_20ms()
    }

    #[test]
    fn a_room_has_the_frame_size_of_its_creator_and_takes_only_joiners_of_that_size() {
        let mut d = directory(1, 10, 10);
        let now = Instant::now();
        let five = AudioFormat::opus_48k_mono(FrameSize::Ms5);
        // Made by a join: the joiner's frame size.
        let seat = d
            .take_seat("jam", Role::Speaker, None, &five, now)
            .expect("seat");
        assert_eq!(seat.config.frame, FrameSize::Ms5);
        assert_eq!(d.info("jam").expect("room").settings.frame_ms, Some(5));
        let refused = d
            .take_seat("jam", Role::Speaker, None, &opus(), now)
            .expect_err("a 20 ms joiner");
        assert_eq!(refused.code(), ErrorCode::UnsupportedFormat);
        assert_eq!(
            refused.to_string(),
            "room \"jam\" has 5 ms frames and the join asks for 20 ms; join with frame_ms 5 \
             (an Opus format: PCM clients need a room of 20 ms frames)"
        );
        let pcm = AudioFormat::pcm16(16_000);
        assert!(d.take_seat("jam", Role::Speaker, None, &pcm, now).is_err());
        // Made by create_room: its frame_ms, and the engine is tuned for it.
        let settings = RoomSettings {
            frame_ms: Some(10),
            ..RoomSettings::default()
        };
        let settings = RoomSettings {
            room: "band".into(),
            ..settings
        };
        d.create(&settings, 16, now).expect("created");
        let seat = d
            .take_seat(
                "band",
                Role::Speaker,
                None,
                &AudioFormat::opus_48k_mono(FrameSize::Ms10),
                now,
            )
            .expect("a 10 ms joiner");
        let engine = seat.config.apply(&EngineConfig::default());
        assert_eq!(engine.frame, FrameSize::Ms10);
        assert_eq!(engine.jitter.frame, Duration::from_millis(10));
        assert_eq!(engine.jitter.max_delay_frames, 20, "still 200 ms");
        assert_eq!(engine.jitter.min_delay_frames, 1, "the floor is one frame");
        // Rooms made by a join on defaults keep 20 ms.
        assert_eq!(seat_in(&mut d, "plain").config.frame, FrameSize::Ms20);
    }

    fn seat_in(d: &mut Directory, room: &str) -> Seat {
        seat(d, room).expect("seat")
    }

    fn seat(d: &mut Directory, room: &str) -> Result<Seat, JoinRefused> {
        d.take_seat(room, Role::Speaker, None, &opus(), Instant::now())
    }

    #[test]
    fn new_rooms_go_to_the_thread_with_fewest_rooms_and_members_share_a_placement() {
        let mut d = directory(2, 10, 10);
        let a = seat(&mut d, "a").expect("room a");
        let b = seat(&mut d, "b").expect("room b");
        let a2 = seat(&mut d, "a").expect("second seat in a");
        assert_ne!(a.placement.thread, b.placement.thread);
        assert_eq!(a.placement, a2.placement);
        assert!(Arc::ptr_eq(&a.room, &a2.room), "one shared name per room");
        assert_eq!(d.info("a").map(|s| s.participants), Some(2));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn a_room_closes_when_its_last_seat_is_given_back_and_its_key_is_reused() {
        let mut d = directory(1, 10, 10);
        let a = seat(&mut d, "a").expect("a");
        seat(&mut d, "a").expect("a again");
        let b = seat(&mut d, "b").expect("b");
        assert_ne!(a.placement.key, b.placement.key);
        assert!(!d.release_seat("a"));
        assert!(d.release_seat("a"), "the last seat closes the room");
        assert!(d.info("a").is_none());
        let c = seat(&mut d, "c").expect("c");
        assert_eq!(c.placement.key, a.placement.key, "a's slot is reused");
        assert!(!d.release_seat("nowhere"));
    }

    #[test]
    fn limits_refuse_with_their_reason() {
        let mut d = directory(1, 2, 2);
        seat(&mut d, "a").expect("a");
        seat(&mut d, "a").expect("a again");
        assert_eq!(
            seat(&mut d, "a").expect_err("full"),
            JoinRefused::RoomFull {
                room: "a".into(),
                limit: 2
            }
        );
        seat(&mut d, "b").expect("b");
        assert_eq!(
            seat(&mut d, "c").expect_err("too many rooms"),
            JoinRefused::TooManyRooms { limit: 2 }
        );
        assert_eq!(d.len(), 2, "a refused join creates nothing");
    }

    #[test]
    fn modes_are_resolved_and_checked_against_the_room() {
        let mut d = directory(1, 10, 10);
        let now = Instant::now();
        let settings = RoomSettings {
            room: "ptt".into(),
            floor_policy: Some(FloorPolicy::Single),
            max_participants: None,
            max_talkers: None,
            normalise: None,
            max_talk_ms: None,
            frame_ms: None,
        };
        d.create(&settings, 16, now).expect("created");
        let speaker = d
            .take_seat("ptt", Role::Speaker, None, &opus(), now)
            .expect("speaker");
        assert_eq!(speaker.mode, Mode::Ptt, "a speaker defaults to ptt here");
        let refused = d.take_seat("ptt", Role::Speaker, Some(Mode::Talk), &opus(), now);
        assert!(matches!(refused, Err(JoinRefused::ModeNotAllowed(_))));
        let listener = d
            .take_seat("open", Role::Listener, None, &opus(), now)
            .expect("listener");
        assert_eq!(listener.mode, Mode::Listen);
        assert_eq!(d.info("ptt").map(|s| s.participants), Some(1));
    }

    #[test]
    fn created_rooms_nobody_joins_are_forgotten_after_their_ttl() {
        let mut d = directory(1, 10, 10);
        let t0 = Instant::now();
        let settings = |room: &str| RoomSettings {
            room: room.into(),
            floor_policy: None,
            max_participants: Some(3),
            max_talkers: None,
            normalise: None,
            max_talk_ms: None,
            frame_ms: None,
        };
        let summary = d.create(&settings("empty"), 16, t0).expect("created");
        assert_eq!(summary.settings.max_participants, Some(3));
        d.create(&settings("joined"), 16, t0).expect("created");
        assert_eq!(
            d.create(&settings("joined"), 16, t0)
                .expect_err("exists")
                .code(),
            ErrorCode::RoomExists
        );
        d.take_seat("joined", Role::Speaker, None, &opus(), t0)
            .expect("joined");
        assert_eq!(d.expire(t0 + CREATED_ROOM_TTL - Duration::from_secs(1)), 0);
        assert_eq!(d.expire(t0 + CREATED_ROOM_TTL), 1);
        assert!(d.info("empty").is_none());
        assert_eq!(
            d.info("joined").map(|s| s.settings.max_participants),
            Some(Some(3)),
            "a joined room keeps its created settings"
        );
    }

    #[test]
    fn a_refused_first_join_leaves_a_created_room_waiting_with_its_settings() {
        let mut d = directory(1, 10, 10);
        let t0 = Instant::now();
        let settings = RoomSettings {
            room: "ch1".into(),
            floor_policy: Some(FloorPolicy::Single),
            max_participants: Some(4),
            max_talkers: None,
            normalise: None,
            max_talk_ms: None,
            frame_ms: None,
        };
        d.create(&settings, 16, t0).expect("created");
        let later = t0 + Duration::from_secs(50);
        d.take_seat("ch1", Role::Speaker, None, &opus(), later)
            .expect("seat");
        assert!(!d.cancel_seat("ch1", later), "a created room stays");
        let info = d.info("ch1").expect("still there");
        assert_eq!(info.participants, 0);
        assert_eq!(info.settings.max_participants, Some(4));
        // Its wait starts again: not forgotten at the first deadline, but at the new one.
        assert_eq!(d.expire(t0 + CREATED_ROOM_TTL), 0);
        assert_eq!(d.expire(later + CREATED_ROOM_TTL), 1);
        // A room a join made is removed when its refused joiner's seat is given back.
        d.take_seat("adhoc", Role::Speaker, None, &opus(), later)
            .expect("seat");
        assert!(d.cancel_seat("adhoc", later));
        assert!(d.info("adhoc").is_none());
    }

    #[test]
    fn the_list_is_sorted_and_capped() {
        let mut d = directory(2, MAX_LISTED_ROOMS + 5, 10);
        for n in (0..MAX_LISTED_ROOMS + 3).rev() {
            seat(&mut d, &format!("room-{n:05}")).expect("room");
        }
        let (rooms, truncated) = d.list();
        assert!(truncated);
        assert_eq!(rooms.len(), MAX_LISTED_ROOMS);
        assert!(
            rooms
                .windows(2)
                .all(|w| w[0].settings.room < w[1].settings.room)
        );
    }
}
