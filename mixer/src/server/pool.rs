//! The mixer pool: the façade connections use to reach rooms. It starts the mixer threads
//! ([`super::mixer_thread`]), admits joins through the room directory ([`super::directory`])
//! and hands out memberships ([`super::membership`]).
//!
//! The directory and the suspended participants sit under one mutex, held for a few map
//! operations at a time (a listing of the rooms is the longest) and never by a mixer thread.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use mixer_protocol::{
    AudioFormat, ErrorCode, LeaveReason, Role, RoomSettings, RoomSummary, ServerMessage,
};
use tracing::{info, warn};

use super::address_limit;
use super::directory::Placement;
use super::directory::{CreateRefused, Directory, JoinRefused, RoomConfig};
use super::fleet_rooms::LeaseGate;
use super::membership::{Identity, Joiner, Membership, Suspended, new_resume_token};
use super::metrics::Metrics;
use super::mixer_thread::{self, Admission, Command, MixerLink, OperatorAction, SendError};
use super::outbox::Outbox;
use crate::engine::{EngineConfig, ParticipantId};

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

/// Handle to the running mixer threads.
#[derive(Debug, Clone)]
pub struct MixerPool {
    shared: Arc<Shared>,
}

/// What the pool and every membership share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) threads: Vec<MixerLink>,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
    registry: Mutex<Registry>,
    next_id: AtomicU32,
    /// The largest `max_talkers` a room may ask for.
    max_talkers: usize,
    /// Participants get resume tokens.
    resumable: bool,
    /// Draining: no new rooms (set by the admin API).
    draining: AtomicBool,
    pub(super) metrics: Arc<Metrics>,
}

/// Everything under the pool's one lock.
#[derive(Debug)]
pub(super) struct Registry {
    pub(super) directory: Directory,
    /// Participants whose connection dropped, by resume token, waiting to be taken back.
    pub(super) suspended: HashMap<Arc<str>, Suspended>,
    /// Every seated participant (live or suspended): who it is, for one seat per identity,
    /// bans and the admin API.
    pub(super) seated: HashMap<ParticipantId, SeatRecord>,
    /// Which participant holds each identity's seat in each room.
    identities: HashMap<(Arc<str>, Identity), ParticipantId>,
    /// Who may not join each room again while it exists (removed by a moderator or the
    /// operator).
    bans: HashMap<Arc<str>, HashSet<Ban>>,
    /// Participants the mixer threads report removed by a moderator, handled at the next
    /// [`Shared::lock_registry`].
    removals: mpsc::Receiver<ParticipantId>,
    pub(super) shut_down: bool,
}

/// A seated participant, as the pool knows it.
#[derive(Debug, Clone)]
pub(super) struct SeatRecord {
    pub(super) room: Arc<str>,
    pub(super) identity: Identity,
    pub(super) name: Arc<str>,
    pub(super) role: Role,
    pub(super) address: IpAddr,
    pub(super) placement: Placement,
    /// The audio format it joined with.
    pub(super) format: AudioFormat,
    /// Its resume token: while it is a key of `suspended`, the participant is suspended.
    pub(super) token: Option<Arc<str>>,
}

/// What a ban holds back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ban {
    /// An identity.
    Identity(Identity),
    /// A client address (its /64 for IPv6): on a server without tokens a name is free to
    /// change, so the address is banned too.
    Address(IpAddr),
}

impl Registry {
    /// Forgets a participant that left (its seat is given back separately).
    pub(super) fn forget(&mut self, id: ParticipantId) {
        let Some(record) = self.seated.remove(&id) else {
            return;
        };
        let key = (record.room, record.identity);
        if self.identities.get(&key) == Some(&id) {
            self.identities.remove(&key);
        }
    }

    /// Every participant seated in `room` (live or suspended).
    pub(super) fn seated_in(&self, room: &str) -> Vec<ParticipantId> {
        self.seated
            .iter()
            .filter(|(_, r)| &*r.room == room)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Gives back a seat in `room`; a room this empties is gone, and its bans with it.
    pub(super) fn release_seat(&mut self, room: &str) {
        if self.directory.release_seat(room) {
            self.bans.remove(room);
        }
    }

    /// Bans a seated participant's identity from its room while the room exists; with
    /// `address` and on a server without tokens (where a name is free to change) also its
    /// client address, as the operator's removal does. A moderator's removal bans only the
    /// identity: on an open server anyone may claim to be a moderator, and an address may be
    /// shared by many (a NAT, or every test on loopback).
    pub(super) fn ban(&mut self, id: ParticipantId, address: bool) {
        let Some(record) = self.seated.get(&id) else {
            return;
        };
        let bans = self.bans.entry(record.room.clone()).or_default();
        bans.insert(Ban::Identity(record.identity.clone()));
        if address && matches!(record.identity, Identity::Name(_)) {
            bans.insert(Ban::Address(address_limit::key(record.address)));
        }
    }

    /// A moderator removed `id` (its mixer thread has taken it out of the room): its identity
    /// is banned from the room, and if it was waiting to resume, its seat is given back now
    /// rather than at the end of its window. Returns whether a seat was given back.
    fn removed_by_moderator(&mut self, id: ParticipantId) -> bool {
        self.ban(id, false);
        // Live, its connection was closed and its membership leaves when that ends.
        self.release_ghost(id).is_some()
    }

    /// If `id` is suspended (waiting to resume), lets it go: forgets it and gives its seat, and
    /// its dropped connection's places, back. Returns its record, for telling its mixer
    /// thread; `None` if it is not suspended.
    fn release_ghost(&mut self, id: ParticipantId) -> Option<SeatRecord> {
        let record = self.seated.get(&id)?.clone();
        let ghost = self.suspended.remove(record.token.as_ref()?)?;
        self.forget(id);
        self.release_seat(&record.room);
        // Its places under the connection limits go back with it.
        drop(ghost);
        Some(record)
    }

    fn banned(&self, room: &str, identity: &Identity, address: IpAddr) -> bool {
        self.bans.get(room).is_some_and(|bans| {
            bans.contains(&Ban::Identity(identity.clone()))
                || (matches!(identity, Identity::Name(_))
                    && bans.contains(&Ban::Address(address_limit::key(address))))
        })
    }
}

/// A room on its way from one node of a fleet to another (see [`MixerPool::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MovedRoom {
    /// Its settings.
    pub settings: RoomSettings,
    /// Who held the floor.
    pub floor: Option<u32>,
    /// Who was in it.
    pub members: Vec<MovedMember>,
}

/// A participant of a moved room: what it is seated with again at the new node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MovedMember {
    /// Its id, kept if free at the new node.
    pub id: u32,
    /// Its resume token.
    pub token: String,
    /// Who it is.
    pub identity: MovedIdentity,
    /// Its display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its mode.
    pub mode: mixer_protocol::Mode,
    /// Its audio format.
    pub format: AudioFormat,
    /// Its client's address.
    pub address: IpAddr,
}

/// A moved participant's [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovedIdentity {
    /// An access token's `sub`.
    Token(String),
    /// A name's key, on a server without tokens.
    Name(String),
}

/// A participant as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParticipantRecord {
    /// Its id in the room.
    pub id: u32,
    /// Its identity (a token's `sub`, or `name:` and its name's key).
    pub identity: String,
    /// Its display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its client's address.
    pub address: String,
    /// Whether its connection dropped and it waits to be resumed.
    pub suspended: bool,
}

/// A room as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoomRecord {
    /// Settings and occupancy.
    #[serde(flatten)]
    pub summary: RoomSummary,
    /// Who is in it, by id.
    pub members: Vec<ParticipantRecord>,
}

/// Why an admin action could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefused {
    /// No such room.
    #[error("there is no room {0:?}")]
    UnknownRoom(String),
    /// No such participant in the room.
    #[error("participant {id} is not in room {room:?}")]
    UnknownParticipant {
        /// The room.
        room: String,
        /// The id asked for.
        id: u32,
    },
    /// The mixer thread has stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl Shared {
    /// The registry, with created rooms nobody joined in time forgotten.
    pub(super) fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        // Every critical section is a few map operations that cannot leave the maps
        // inconsistent, so a poisoned lock is still usable.
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Collected first: handling one needs the registry. Usually none, and an empty Vec
        // does not allocate.
        let removed: Vec<ParticipantId> = registry.removals.try_iter().collect();
        let mut changed = false;
        for id in removed {
            changed |= registry.removed_by_moderator(id);
        }
        if registry.directory.expire(Instant::now()) > 0 || changed {
            self.metrics.rooms.set(registry.directory.len() as i64);
        }
        registry
    }
}

impl MixerPool {
    /// Starts `config.threads` mixer threads.
    pub fn start(config: PoolConfig, metrics: Arc<Metrics>) -> std::io::Result<MixerPool> {
        let count = config.threads.max(1);
        metrics.mixer_threads.set(count as i64);
        let mut links = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let (removed, removals) = mpsc::channel();
        for index in 0..count {
            let (link, handle) = mixer_thread::spawn(
                format!("mixer-{index}"),
                config.engine.clone(),
                metrics.clone(),
                removed.clone(),
            )?;
            links.push(link);
            handles.push(handle);
        }
        Ok(MixerPool {
            shared: Arc::new(Shared {
                threads: links,
                handles: Mutex::new(handles),
                registry: Mutex::new(Registry {
                    directory: Directory::new(
                        count,
                        config.max_rooms,
                        RoomConfig::of(&config.engine),
                    ),
                    suspended: HashMap::new(),
                    seated: HashMap::new(),
                    identities: HashMap::new(),
                    bans: HashMap::new(),
                    removals,
                    shut_down: false,
                }),
                next_id: AtomicU32::new(1),
                max_talkers: config.engine.max_talkers,
                resumable: config.resumable,
                draining: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    /// Reserves a seat in `room` (creating it if needed) and hands the joiner to its mixer thread,
    /// which answers with `joined` and tells the others. In a fleet, `gate` is the room's lease
    /// (the room is mixed only while it is open).
    pub fn join(
        &self,
        room: &str,
        joiner: Joiner,
        gate: Option<Arc<LeaseGate>>,
    ) -> Result<Membership, JoinRefused> {
        self.join_with(room, joiner, gate, None)
    }

    /// [`MixerPool::join`]; `moved` is the id and resume token of a participant whose room
    /// another node handed to this one, kept if the id is free here.
    fn join_with(
        &self,
        room: &str,
        joiner: Joiner,
        gate: Option<Arc<LeaseGate>>,
        moved: Option<(ParticipantId, Arc<str>)>,
    ) -> Result<Membership, JoinRefused> {
        let shared = &self.shared;
        let token = match moved.as_ref() {
            Some((_, token)) => Ok(Some(token.clone())),
            None => shared.resumable.then(new_resume_token).transpose(),
        };
        let token = match token {
            Ok(token) => token,
            Err(error) => {
                // Without the OS's randomness there is no safe token; the join goes on without.
                warn!(%error, "no randomness for a resume token");
                None
            }
        };
        let mut registry = shared.lock_registry();
        if registry.shut_down {
            return Err(JoinRefused::ShuttingDown);
        }
        if registry.banned(room, &joiner.identity, joiner.address) {
            return Err(JoinRefused::Banned {
                room: room.to_owned(),
            });
        }
        // A fleet node places new rooms elsewhere while draining (a room placed here before
        // the drain began may still arrive with its gate).
        if self.is_draining() && gate.is_none() && registry.directory.info(room).is_none() {
            return Err(JoinRefused::Draining);
        }
        // One seat per identity and room.
        let holder = registry
            .identities
            .get(&(Arc::from(room), joiner.identity.clone()))
            .copied();
        if let Some(holder) = holder {
            self.take_identity_seat(&mut registry, holder, &joiner)?;
        }
        let seat = registry.directory.take_seat(
            room,
            joiner.role,
            joiner.mode,
            &joiner.format,
            Instant::now(),
        )?;
        shared.metrics.rooms.set(registry.directory.len() as i64);
        let id = match moved {
            // Ids come from each node's own counter, started at a random point in a fleet:
            // one taken here already is rare, and the participant then gets a new one.
            Some((id, _)) if !registry.seated.contains_key(&id) => id,
            _ => ParticipantId(shared.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        let in_flight = Arc::new(AtomicUsize::new(0));
        let format = joiner.format.clone();
        let record = SeatRecord {
            room: seat.room.clone(),
            identity: joiner.identity.clone(),
            name: Arc::from(joiner.name.as_str()),
            role: joiner.role,
            address: joiner.address,
            placement: seat.placement,
            format: format.clone(),
            token: token.clone(),
        };
        let admission = Admission {
            id,
            room: seat.room.clone(),
            key: seat.placement.key,
            joiner,
            mode: seat.mode,
            config: seat.config,
            token: token.clone(),
            in_flight: in_flight.clone(),
            gate,
        };
        // Sent under the lock, like leaves, so the thread sees joins and leaves of a room (and
        // of rooms reusing its slot) in the order the directory decided them.
        if let Err(error) =
            shared.threads[seat.placement.thread].send_control(Command::Join(admission))
        {
            // The joiner never became a member: a room made for it by create_room stays.
            if registry.directory.cancel_seat(&seat.room, Instant::now()) {
                registry.bans.remove(&*seat.room);
            }
            shared.metrics.rooms.set(registry.directory.len() as i64);
            return Err(match error {
                SendError::Busy => {
                    shared
                        .metrics
                        .control_refused_total
                        .with_label_values(&["busy"])
                        .inc();
                    JoinRefused::Busy
                }
                SendError::Stopped | SendError::Relinking => JoinRefused::ShuttingDown,
            });
        }
        registry
            .identities
            .insert((record.room.clone(), record.identity.clone()), id);
        registry.seated.insert(id, record);
        drop(registry);
        Ok(Membership {
            pool: shared.clone(),
            token,
            format,
            suspension: 0,
            room: seat.room,
            placement: seat.placement,
            id,
            in_flight,
            left: false,
        })
    }

    /// Takes back the suspended participant with this resume token in `room`, for a new
    /// connection whose outbox is `outbox`; it is told with a `joined` (`resumed`).
    ///
    /// With `identity` (a server with access tokens), the participant must be that identity's:
    /// a leaked resume token is no use without a token for the same identity.
    pub fn resume(
        &self,
        token: &str,
        room: &str,
        format: &AudioFormat,
        identity: Option<&Identity>,
        outbox: Arc<Outbox>,
    ) -> Option<Membership> {
        let mut registry = self.shared.lock_registry();
        let parked = registry.suspended.get(token)?;
        if &*parked.room != room || parked.format != *format {
            return None;
        }
        if let Some(identity) = identity
            && registry
                .seated
                .get(&parked.id)
                .is_none_or(|record| record.identity != *identity)
        {
            return None;
        }
        let membership = registry
            .suspended
            .remove(token)?
            .revive(self.shared.clone());
        self.shared.threads[membership.placement.thread].send(Command::Resume {
            room: membership.placement.key,
            participant: membership.id,
            outbox,
            token: membership.token.clone(),
        });
        Some(membership)
    }

    /// Creates an empty room with `settings` (omitted ones from the server's defaults); it is
    /// forgotten if nobody joins within a minute.
    pub fn create_room(&self, settings: &RoomSettings) -> Result<RoomSummary, CreateRefused> {
        let mut registry = self.shared.lock_registry();
        if registry.shut_down {
            return Err(CreateRefused::ShuttingDown);
        }
        if self.is_draining() {
            return Err(CreateRefused::Draining);
        }
        let summary =
            registry
                .directory
                .create(settings, self.shared.max_talkers, Instant::now())?;
        self.shared
            .metrics
            .rooms
            .set(registry.directory.len() as i64);
        info!(room = %settings.room, "room created");
        Ok(summary)
    }

    /// A room's settings and occupancy, if it exists.
    pub fn room_info(&self, room: &str) -> Option<RoomSummary> {
        self.shared.lock_registry().directory.info(room)
    }

    /// The rooms, sorted by name (at most `MAX_LISTED_ROOMS`), and whether there are more.
    pub fn list_rooms(&self) -> (Vec<RoomSummary>, bool) {
        self.shared.lock_registry().directory.list()
    }

    /// [`MixerPool::list_rooms`] of only the rooms whose names pass `filter`.
    pub fn list_rooms_matching(&self, filter: impl Fn(&str) -> bool) -> (Vec<RoomSummary>, bool) {
        self.shared.lock_registry().directory.list_matching(filter)
    }

    /// Makes way for `joiner` in the seat its identity holds in the room, held by `holder`:
    /// a suspended holder (a ghost) is let go; a live one is replaced if the identity is a
    /// verified one (the same person on a new connection), and the join is refused if it is
    /// only a name (someone else may not take a name in use).
    fn take_identity_seat(
        &self,
        registry: &mut Registry,
        holder: ParticipantId,
        joiner: &Joiner,
    ) -> Result<(), JoinRefused> {
        // Under the lock, like a leave: the seat goes back and the thread hears of it before
        // it hears of the new join.
        if self.let_ghost_go(registry, holder, LeaveReason::Replaced) {
            return Ok(());
        }
        let Some(record) = registry.seated.get(&holder).cloned() else {
            return Ok(());
        };
        match joiner.identity {
            Identity::Name(_) => Err(JoinRefused::NameTaken {
                name: joiner.name.clone(),
            }),
            Identity::Token(_) => {
                // The old connection is told and closed; its membership gives the seat back
                // when its connection task ends, as for a moderator's removal.
                registry.forget(holder);
                self.shared.threads[record.placement.thread].send(Command::Operator {
                    room: record.placement.key,
                    action: OperatorAction::Evict {
                        target: holder,
                        code: ErrorCode::Replaced,
                        message: "the same identity joined this room on another connection"
                            .to_owned(),
                        reason: LeaveReason::Replaced,
                    },
                });
                Ok(())
            }
        }
    }

    /// If `id` is suspended, lets it go (see [`Registry::release_ghost`]) and tells its mixer
    /// thread that it left for `reason`, under the lock so that the thread hears of it before
    /// any later join of the room. Returns whether it was suspended.
    fn let_ghost_go(
        &self,
        registry: &mut Registry,
        id: ParticipantId,
        reason: LeaveReason,
    ) -> bool {
        let Some(record) = registry.release_ghost(id) else {
            return false;
        };
        self.shared
            .metrics
            .rooms
            .set(registry.directory.len() as i64);
        self.shared.threads[record.placement.thread].send(Command::Leave {
            room: record.placement.key,
            participant: id,
            reason,
        });
        true
    }

    /// Starts this node's participant ids at a random point, so that ids from different nodes
    /// of a fleet rarely meet when a room moves between them (a moved participant keeps its id
    /// when it is free at the new node).
    pub fn randomise_ids(&self) {
        let mut bytes = [0u8; 4];
        if getrandom::fill(&mut bytes).is_ok() {
            // Below 2^31: billions of joins before the counter wraps.
            let start = (u32::from_le_bytes(bytes) >> 1).max(1);
            self.shared.next_id.store(start, Ordering::Relaxed);
        }
    }

    /// What another node needs to take `room` over with everyone in it: its settings, its
    /// members (connected or waiting to resume) with their identity, role, mode, format and
    /// resume token, and its floor holder. `None` if the room is not here.
    pub async fn snapshot(&self, room: &str) -> Option<MovedRoom> {
        let (placement, settings, records) = {
            let registry = self.shared.lock_registry();
            let placement = registry.directory.placement(room)?;
            let settings = registry.directory.info(room)?.settings;
            let records: HashMap<ParticipantId, SeatRecord> = registry
                .seated
                .iter()
                .filter(|(_, r)| &*r.room == room)
                .map(|(id, r)| (*id, r.clone()))
                .collect();
            (placement, settings, records)
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared.threads[placement.thread].send(Command::Snapshot {
            room: placement.key,
            reply,
        });
        let snapshot = answer.await.ok()??;
        let members = snapshot
            .members
            .into_iter()
            .filter_map(|(id, mode)| {
                let record = records.get(&id)?;
                Some(MovedMember {
                    id: id.0,
                    token: record.token.as_deref()?.to_owned(),
                    identity: match &record.identity {
                        Identity::Token(sub) => MovedIdentity::Token(sub.to_string()),
                        Identity::Name(key) => MovedIdentity::Name(key.to_string()),
                    },
                    name: record.name.to_string(),
                    role: record.role,
                    mode,
                    format: record.format.clone(),
                    address: record.address,
                })
            })
            .collect();
        Some(MovedRoom {
            settings,
            floor: snapshot.floor.map(|id| id.0),
            members,
        })
    }

    /// `room` has been handed to the node at `url`: every member is sent there with its resume
    /// token, and the room is gone from this node (those waiting to resume are let go here:
    /// they resume at the new node).
    ///
    /// Returns once the room's mixer thread has sent every member its redirect.
    pub async fn move_out(&self, room: &str, url: &str) {
        let (done, redirected) = tokio::sync::oneshot::channel();
        self.send_move_out(room, url, done);
        let _ = redirected.await;
    }

    fn send_move_out(&self, room: &str, url: &str, done: tokio::sync::oneshot::Sender<()>) {
        let mut registry = self.shared.lock_registry();
        let Some(placement) = registry.directory.placement(room) else {
            return;
        };
        let ids = registry.seated_in(room);
        let tokens = ids
            .iter()
            .filter_map(|id| Some((*id, registry.seated.get(id)?.token.clone()?)))
            .collect();
        // Under the lock, like leaves: ordered before any later join of the room's slot.
        self.shared.threads[placement.thread].send(Command::MoveOut {
            room: placement.key,
            url: url.to_owned(),
            tokens,
            done,
        });
        for id in ids {
            // The thread has taken them out with the room.
            registry.release_ghost(id);
        }
        self.shared
            .metrics
            .rooms
            .set(registry.directory.len() as i64);
    }

    /// Takes over a room another node handed to this one: creates it with its settings and
    /// seats each moved participant under its id (when free here) and resume token, waiting
    /// `window` to resume, the floor holder holding the floor again. Returns how many were
    /// seated.
    pub fn adopt(&self, moved: MovedRoom, gate: Arc<LeaseGate>, window: Duration) -> usize {
        let room = moved.settings.room.clone();
        {
            let mut registry = self.shared.lock_registry();
            if registry.directory.info(&room).is_none()
                && let Err(error) = registry.directory.create(
                    &moved.settings,
                    self.shared.max_talkers,
                    Instant::now(),
                )
            {
                warn!(%room, %error, "could not take over a moved room");
                return 0;
            }
        }
        let mut seated = 0;
        for member in moved.members {
            let id = ParticipantId(member.id);
            let outbox = Arc::new(Outbox::new(1, 1));
            // Nobody reads it until the participant resumes on a connection of its own.
            outbox.close(super::outbox::Closed::Close {
                code: mixer_protocol::close_code::NORMAL,
                reason: "moved",
            });
            let joiner = Joiner {
                identity: match member.identity {
                    MovedIdentity::Token(sub) => Identity::Token(Arc::from(sub)),
                    MovedIdentity::Name(key) => Identity::Name(Arc::from(key)),
                },
                address: member.address,
                name: member.name,
                mode: Some(member.mode),
                role: member.role,
                format: member.format,
                outbox,
            };
            let token: Arc<str> = Arc::from(member.token);
            match self.join_with(&room, joiner, Some(gate.clone()), Some((id, token))) {
                Ok(membership) => {
                    if moved.floor == Some(member.id) {
                        let _ = membership.request(
                            super::requests::RoomRequest::FloorRequest { preempt: false },
                            Instant::now(),
                        );
                    }
                    membership.suspend(window, None);
                    seated += 1;
                }
                Err(refused) => {
                    warn!(%room, participant = member.id, %refused, "a moved participant could not be seated")
                }
            }
        }
        info!(%room, participants = seated, "took over a room moved from another node");
        seated
    }

    /// Whether the node is draining (no new rooms).
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Starts (or stops) draining: existing rooms go on, new rooms are refused.
    pub fn set_draining(&self, draining: bool) {
        self.shared.draining.store(draining, Ordering::Relaxed);
        info!(draining, "drain state changed");
    }

    /// Every room with its members, sorted by name (the admin API).
    pub fn rooms_with_members(&self) -> Vec<RoomRecord> {
        let registry = self.shared.lock_registry();
        let (rooms, _) = registry.directory.list_all();
        rooms
            .into_iter()
            .map(|summary| {
                let members = members_of(&registry, &summary.settings.room);
                RoomRecord { summary, members }
            })
            .collect()
    }

    /// One room with its members (the admin API).
    pub fn room_with_members(&self, room: &str) -> Option<RoomRecord> {
        let registry = self.shared.lock_registry();
        let summary = registry.directory.info(room)?;
        Some(RoomRecord {
            members: members_of(&registry, room),
            summary,
        })
    }

    /// The operator mutes or unmutes a participant (the room hears it, `by` 0).
    pub fn operator_mute(&self, room: &str, id: u32, muted: bool) -> Result<(), AdminRefused> {
        let target = ParticipantId(id);
        self.operator(room, Some(target), OperatorAction::Mute { target, muted })
    }

    /// The operator removes a participant and bans its identity (and, on a server without
    /// tokens, its address) from the room for as long as the room exists.
    pub fn operator_remove(&self, room: &str, id: u32) -> Result<(), AdminRefused> {
        let target = ParticipantId(id);
        {
            let mut registry = self.shared.lock_registry();
            if registry
                .seated
                .get(&target)
                .is_none_or(|r| &*r.room != room)
            {
                return Err(AdminRefused::UnknownParticipant {
                    room: room.to_owned(),
                    id,
                });
            }
            registry.ban(target, true);
            // A suspended participant has no connection to close: it is let go here.
            if self.let_ghost_go(&mut registry, target, LeaveReason::Removed) {
                return Ok(());
            }
        }
        self.operator(
            room,
            Some(target),
            OperatorAction::Evict {
                target,
                code: ErrorCode::Removed,
                message: "removed from the room by the server's operator; you may not rejoin it"
                    .to_owned(),
                reason: LeaveReason::Removed,
            },
        )
    }

    /// The operator closes a room: everyone in it is told and disconnected.
    pub fn operator_close(&self, room: &str) -> Result<(), AdminRefused> {
        {
            let mut registry = self.shared.lock_registry();
            if registry.directory.info(room).is_none() {
                return Err(AdminRefused::UnknownRoom(room.to_owned()));
            }
            let ids: Vec<ParticipantId> = registry
                .seated
                .iter()
                .filter(|(_, r)| &*r.room == room)
                .map(|(id, _)| *id)
                .collect();
            // Those waiting to resume have no connection to close: they are let go here.
            for id in ids {
                self.let_ghost_go(&mut registry, id, LeaveReason::RoomClosed);
            }
        }
        match self.operator(room, None, OperatorAction::Close) {
            // Only ghosts were left: the room is gone already.
            Err(AdminRefused::UnknownRoom(_)) => Ok(()),
            other => other,
        }
    }

    /// Tells everyone in `room` (the server's own news, such as a recording's start).
    pub fn announce(&self, room: &str, message: ServerMessage) -> Result<(), AdminRefused> {
        self.operator(room, None, OperatorAction::Announce(Box::new(message)))
    }

    /// The role participant `id` holds in `room`, if it is seated there.
    pub fn role_in(&self, room: &str, id: ParticipantId) -> Option<Role> {
        let registry = self.shared.lock_registry();
        registry
            .seated
            .get(&id)
            .filter(|record| &*record.room == room)
            .map(|record| record.role)
    }

    /// Sends an operator action to `room`'s mixer thread, after checking that `target` (if
    /// any) is in the room.
    fn operator(
        &self,
        room: &str,
        target: Option<ParticipantId>,
        action: OperatorAction,
    ) -> Result<(), AdminRefused> {
        let registry = self.shared.lock_registry();
        let placement = registry
            .directory
            .placement(room)
            .ok_or_else(|| AdminRefused::UnknownRoom(room.to_owned()))?;
        if let Some(target) = target
            && registry
                .seated
                .get(&target)
                .is_none_or(|r| &*r.room != room)
        {
            return Err(AdminRefused::UnknownParticipant {
                room: room.to_owned(),
                id: target.0,
            });
        }
        // Unbounded, like leaves: operator actions are rare and authenticated, and one must
        // not be refused because clients filled the control queue.
        if self.shared.threads[placement.thread].send(Command::Operator {
            room: placement.key,
            action,
        }) {
            Ok(())
        } else {
            Err(AdminRefused::ShuttingDown)
        }
    }

    /// Refuses further joins, stops every mixer thread and waits for them.
    pub fn shutdown(&self) {
        let suspended = {
            let mut registry = self.shared.lock_registry();
            registry.shut_down = true;
            std::mem::take(&mut registry.suspended)
        };
        // Outside the lock: each one leaves its room, which takes the lock.
        for (_, parked) in suspended {
            parked
                .revive(self.shared.clone())
                .leave(LeaveReason::ServerShutdown);
        }
        for link in &self.shared.threads {
            link.send(Command::Shutdown);
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

/// The members of `room`, by id.
fn members_of(registry: &Registry, room: &str) -> Vec<ParticipantRecord> {
    let mut members: Vec<ParticipantRecord> = registry
        .seated
        .iter()
        .filter(|(_, r)| &*r.room == room)
        .map(|(id, r)| ParticipantRecord {
            id: id.0,
            identity: r.identity.describe(),
            name: r.name.to_string(),
            role: r.role,
            address: r.address.to_string(),
            suspended: r
                .token
                .as_ref()
                .is_some_and(|t| registry.suspended.contains_key(t)),
        })
        .collect();
    members.sort_unstable_by_key(|m| m.id);
    members
}

#[cfg(test)]
mod tests {

    use mixer_protocol::Role;

    use super::*;

    fn joiner() -> Joiner {
        Joiner {
            identity: Identity::Name("away".into()),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            name: "away".into(),
            mode: None,
            role: Role::Speaker,
            format: AudioFormat::opus_48k_mono_20ms(),
            outbox: Arc::new(Outbox::new(4, 100)),
        }
    }

    #[tokio::test]
    async fn a_suspended_participant_keeps_its_seat_but_no_reference_to_the_pool() {
        let pool = MixerPool::start(
            PoolConfig {
                threads: 1,
                max_rooms: 10,
                engine: EngineConfig::default(),
                resumable: true,
            },
            Arc::new(Metrics::new()),
        )
        .expect("pool");
        let membership = pool.join("lobby", joiner(), None).expect("joined");
        let token = membership.token.clone().expect("a resume token");
        assert_eq!(
            Arc::strong_count(&pool.shared),
            2,
            "the pool and the membership"
        );
        membership.suspend(Duration::from_secs(60), None);
        // Only the pool's own handle is left: the registry holds no reference back to it.
        assert_eq!(Arc::strong_count(&pool.shared), 1);
        assert_eq!(pool.room_info("lobby").map(|r| r.participants), Some(1));
        // It resumes as the same participant, in the same seat.
        let outbox = Arc::new(Outbox::new(4, 100));
        let back = pool
            .resume(
                &token,
                "lobby",
                &AudioFormat::opus_48k_mono_20ms(),
                None,
                outbox,
            )
            .expect("resumed");
        assert_eq!(pool.room_info("lobby").map(|r| r.participants), Some(1));
        back.suspend(Duration::from_secs(60), None);
        // Shutting down lets the suspended go: the seat is given back.
        let stopping = pool.clone();
        tokio::task::spawn_blocking(move || stopping.shutdown())
            .await
            .expect("shutdown");
        assert!(pool.room_info("lobby").is_none());
    }
}
