//! The mixer pool: the façade connections use to reach rooms. It starts the mixer threads
//! ([`super::mixer_thread`]), admits joins through the room directory ([`super::directory`])
//! and hands out memberships ([`super::membership`]).
//!
//! The directory and the suspended participants sit under one mutex, held for a few map
//! operations at a time (a listing of the rooms is the longest) and never by a mixer thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use mixer_protocol::{AudioFormat, LeaveReason, RoomSettings, RoomSummary};
use tracing::{info, warn};

use super::directory::{CreateRefused, Directory, JoinRefused, RoomConfig};
use super::membership::{Joiner, Membership, Suspended, new_resume_token};
use super::metrics::Metrics;
use super::mixer_thread::{self, Admission, Command, MixerLink, SendError};
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
    pub(super) metrics: Arc<Metrics>,
}

/// Everything under the pool's one lock.
#[derive(Debug)]
pub(super) struct Registry {
    pub(super) directory: Directory,
    /// Participants whose connection dropped, by resume token, waiting to be taken back.
    pub(super) suspended: HashMap<Arc<str>, Suspended>,
    pub(super) shut_down: bool,
}

impl Shared {
    /// The registry, with created rooms nobody joined in time forgotten.
    pub(super) fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        // Every critical section is a few map operations that cannot leave the maps
        // inconsistent, so a poisoned lock is still usable.
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if registry.directory.expire(Instant::now()) > 0 {
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
        for index in 0..count {
            let (link, handle) = mixer_thread::spawn(
                format!("mixer-{index}"),
                config.engine.clone(),
                metrics.clone(),
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
                    shut_down: false,
                }),
                next_id: AtomicU32::new(1),
                max_talkers: config.engine.max_talkers,
                resumable: config.resumable,
                metrics,
            }),
        })
    }

    /// Reserves a seat in `room` (creating it if needed) and hands the joiner to its mixer thread,
    /// which answers with `joined` and tells the others.
    pub fn join(&self, room: &str, joiner: Joiner) -> Result<Membership, JoinRefused> {
        let shared = &self.shared;
        let token = match shared.resumable.then(new_resume_token).transpose() {
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
        let seat = registry
            .directory
            .take_seat(room, joiner.role, joiner.mode, Instant::now())?;
        shared.metrics.rooms.set(registry.directory.len() as i64);
        let id = ParticipantId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let format = joiner.format.clone();
        let admission = Admission {
            id,
            room: seat.room.clone(),
            key: seat.placement.key,
            joiner,
            mode: seat.mode,
            config: seat.config,
            token: token.clone(),
            in_flight: in_flight.clone(),
        };
        // Sent under the lock, like leaves, so the thread sees joins and leaves of a room (and
        // of rooms reusing its slot) in the order the directory decided them.
        if let Err(error) =
            shared.threads[seat.placement.thread].send_control(Command::Join(admission))
        {
            // The joiner never became a member: a room made for it by create_room stays.
            registry.directory.cancel_seat(&seat.room, Instant::now());
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
                SendError::Stopped => JoinRefused::ShuttingDown,
            });
        }
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
    pub fn resume(
        &self,
        token: &str,
        room: &str,
        format: &AudioFormat,
        outbox: Arc<Outbox>,
    ) -> Option<Membership> {
        let mut registry = self.shared.lock_registry();
        if registry
            .suspended
            .get(token)
            .is_none_or(|m| &*m.room != room || m.format != *format)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mixer_protocol::Role;

    use super::*;

    fn joiner() -> Joiner {
        Joiner {
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
        let membership = pool.join("lobby", joiner()).expect("joined");
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
            .resume(&token, "lobby", &AudioFormat::opus_48k_mono_20ms(), outbox)
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
