//! This node's rooms in a fleet (`--redis-url`): where a room a client asks for is mixed, the
//! room leases this node holds, and the gate through which each lease lets a mixer thread mix.
//!
//! A request for a room (`join`, `create_room`, `room_info`) first asks [`FleetRooms::locate`]:
//! - a room whose lease this node holds is mixed here, with no Redis round trip;
//! - a room another node holds is answered with a `redirect` to that node's URL;
//! - a new room is placed ([`crate::fleet::place`]) on the least-loaded active node: this node
//!   claims it for itself, or reserves it for the chosen node ([`Fleet::claim_for`]) and
//!   redirects the client there.
//!
//! Every room mixed here carries a [`LeaseGate`]: the local deadline of its lease (see
//! [`crate::fleet::lease`]), which the mixer thread reads before each tick. A gate whose deadline
//! has passed (no renewal got through: Redis unreachable, or another node took the room) stops
//! the room on that tick, whatever the tokio side is doing: a node never mixes a room past its
//! lease. Renewals ([`FleetRooms::renew`], every second from [`super::fleet_node`]) move the
//! deadlines on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mixer_protocol::{MAX_LISTED_ROOMS, RoomSummary};
use tracing::{info, warn};

use super::metrics::Metrics;
use super::pool::{MixerPool, MovedRoom};
use crate::fleet::{Claim, Epoch, Fleet, FleetError, FleetSettings, Leases, NodeInfo, place};

/// How long a room this node claimed may stay without anyone in it before its lease is
/// released: the time a client redirected here, or one that created the room, has to join.
const UNUSED_GRACE: Duration = Duration::from_secs(10);

/// How long a read of the node list is reused for placing new rooms.
const NODES_CACHE: Duration = Duration::from_millis(100);

/// The longest a request waits for Redis's hold after data loss (one lease) before it is
/// refused: a fresh or restarted Redis delays the first rooms by up to this much.
const MAX_HOLD_WAIT: Duration = Duration::from_secs(4);

/// The local deadline of one room lease, shared with the mixer thread that mixes the room.
///
/// The mixer thread reads it before every tick ([`LeaseGate::is_open`]) and stops the room once
/// it has passed; the fleet side moves it on after each renewal and closes it when the lease is
/// lost. An atomic, so neither side ever waits for the other.
#[derive(Debug)]
pub struct LeaseGate {
    /// Nanoseconds after [`base`] until which the room may be mixed; 0: closed.
    until: AtomicU64,
    /// Where a client of a room stopped for its lease is sent to join again: this node (which
    /// finds the room's new owner, or claims it anew).
    url: Arc<str>,
}

/// The instant gate deadlines count from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` as gate nanoseconds (at least 1: 0 means closed).
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl LeaseGate {
    /// A closed gate; `url` is where clients of a room stopped for its lease go.
    pub fn new(url: Arc<str>) -> LeaseGate {
        base();
        LeaseGate {
            until: AtomicU64::new(0),
            url,
        }
    }

    /// Whether the room may be mixed at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        nanos(now) < self.until.load(Ordering::Acquire)
    }

    /// Lets the room be mixed until `deadline`.
    pub fn open_until(&self, deadline: Instant) {
        self.until.store(nanos(deadline), Ordering::Release);
    }

    /// Stops the room at its next tick.
    pub fn close(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// Where the clients of a room stopped for its lease are sent.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Where a room is, for a request about it.
#[derive(Debug)]
pub enum Located {
    /// This node mixes it, under this gate.
    Here(Arc<LeaseGate>),
    /// Another node mixes it (or was chosen for it): the client is redirected there.
    Elsewhere {
        /// The owner's public URL.
        url: String,
    },
    /// No node holds it (answer to [`Purpose::Info`] only: the other purposes place it).
    Nowhere,
}

/// What a client asks of a room, which decides what happens to a room no node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `join`: a room nobody holds is placed and created.
    Join,
    /// `create_room`: likewise.
    Create,
    /// `room_info`: a room nobody holds does not exist.
    Info,
}

/// Why a room could not be located: the request is refused with `fleet_unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis could not be reached (or is not reached yet).
    #[error(
        "the fleet's registry (Redis) cannot be reached ({0}); rooms already mixed on this node go on, but no other room can be placed now: try again in a few seconds"
    )]
    Registry(String),
    /// Redis lost its data (or was just started) and holds every claim for one lease.
    #[error(
        "the fleet's registry (Redis) restarted and holds new rooms for {0} ms more; try again then"
    )]
    Held(u64),
    /// No active node has room to spare (every node draining or at its capacity).
    #[error("no node of the fleet can take a new room now (all draining or full); try again later")]
    NoNode,
    /// This node is handing the room to another one, right now.
    #[error("the room is moving to another node; join again in a moment")]
    Moving,
}

/// This node's side of the fleet's room ownership: the handle on Redis, the leases held, their
/// gates.
#[derive(Debug)]
pub struct FleetRooms {
    settings: FleetSettings,
    metrics: Arc<Metrics>,
    /// The rooms, for taking over rooms handed to this node.
    pool: MixerPool,
    /// How long a participant of a room handed to this node waits to resume.
    resume_window: Duration,
    /// The connection to Redis, once [`super::fleet_node`] has made it.
    fleet: Mutex<Option<Fleet>>,
    local: Mutex<Local>,
    /// One lock per room being located through Redis: concurrent requests for a room this node
    /// does not hold yet ask Redis one at a time, so the first takes the room over (and its
    /// moved participants) before the others look.
    locating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Told when a room is claimed here, so the node announces its new load soon.
    claimed: tokio::sync::Notify,
}

/// The leases and what goes with them, under one lock held for a few map operations.
#[derive(Debug)]
struct Local {
    leases: Leases,
    gates: HashMap<String, Arc<LeaseGate>>,
    /// When a client last came for each held room (a claim, a located join): a held room
    /// without members is released once this is [`UNUSED_GRACE`] old.
    used: HashMap<String, Instant>,
    /// The node list last read, and when.
    nodes: Option<(Instant, Vec<NodeInfo>)>,
    /// Rooms being handed to another node (requests for them wait).
    moving: HashSet<String>,
}

impl FleetRooms {
    /// No leases yet, and no connection until [`FleetRooms::connected`]. Participants of rooms
    /// handed to this node get `resume_window` to come back.
    pub fn new(
        settings: FleetSettings,
        metrics: Arc<Metrics>,
        pool: MixerPool,
        resume_window: Duration,
    ) -> FleetRooms {
        let leases = Leases::new(settings.store.lease);
        FleetRooms {
            settings,
            metrics,
            pool,
            resume_window,
            fleet: Mutex::new(None),
            local: Mutex::new(Local {
                leases,
                gates: HashMap::new(),
                used: HashMap::new(),
                nodes: None,
                moving: HashSet::new(),
            }),
            locating: Mutex::new(HashMap::new()),
            claimed: tokio::sync::Notify::new(),
        }
    }

    /// Resolves when a room has been claimed here since the last call (the node's load grew).
    pub async fn load_changed(&self) {
        self.claimed.notified().await;
    }

    /// The node's settings.
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Hands over the connection to Redis once it is made.
    pub fn connected(&self, fleet: Fleet) {
        *self.fleet.lock().unwrap_or_else(|p| p.into_inner()) = Some(fleet);
    }

    /// The connection to Redis, if made.
    pub fn fleet(&self) -> Option<Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate of `room` if this node holds its lease now.
    pub fn held(&self, room: &str) -> Option<Arc<LeaseGate>> {
        let now = Instant::now();
        let mut local = self.local();
        if local.moving.contains(room) {
            return None;
        }
        local.leases.holds(room, now)?;
        local.used.insert(room.to_owned(), now);
        local.gates.get(room).cloned()
    }

    /// How many room leases this node holds.
    pub fn held_count(&self) -> usize {
        self.local().leases.len()
    }

    /// Where `room` is mixed, for a request of `purpose`; `draining` nodes place new rooms
    /// elsewhere only.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when Redis cannot answer (and this node does not hold the room) or no node
    /// can take a new room.
    pub async fn locate(
        &self,
        room: &str,
        purpose: Purpose,
        draining: bool,
    ) -> Result<Located, Unavailable> {
        if let Some(gate) = self.held(room) {
            return Ok(Located::Here(gate));
        }
        let lock = self
            .locating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(room.to_owned())
            .or_default()
            .clone();
        let located = {
            let _turn = lock.lock().await;
            self.locate_through_redis(room, purpose, draining).await
        };
        drop(lock);
        let mut locating = self.locating.lock().unwrap_or_else(|p| p.into_inner());
        // The last one out removes the room's lock (the map holds one reference).
        if locating
            .get(room)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locating.remove(room);
        }
        located
    }

    async fn locate_through_redis(
        &self,
        room: &str,
        purpose: Purpose,
        draining: bool,
    ) -> Result<Located, Unavailable> {
        // Someone ahead in the queue may have taken the room over meanwhile.
        if let Some(gate) = self.held(room) {
            return Ok(Located::Here(gate));
        }
        if self.local().moving.contains(room) {
            return Err(Unavailable::Moving);
        }
        let fleet = self.fleet().ok_or_else(|| {
            Unavailable::Registry("not connected yet since this node started".into())
        })?;
        let owner = self
            .redis("owner", fleet.owner(room))
            .await
            .map_err(unreachable)?;
        match owner {
            Some(owner) if owner.node != *fleet.node() => {
                return Ok(Located::Elsewhere { url: owner.url });
            }
            // Ours in Redis but not here: reserved for this node by another that placed the
            // room and redirected the client here, or a lease this node lost track of. Taken
            // up, even while draining (the client was sent here for it).
            Some(_) => return self.claim_here(&fleet, room).await,
            None if purpose == Purpose::Info => return Ok(Located::Nowhere),
            None => {}
        }
        let me = fleet.node();
        let mut nodes = self.nodes(&fleet).await?;
        if draining {
            nodes.retain(|node| node.id != *me);
        }
        let target = match place(&nodes, room) {
            Some(node) => node.clone(),
            // Not registered yet (just started, or Redis just came back): a node that is not
            // draining takes the room rather than refuse it.
            None if !draining && !nodes.iter().any(|n| n.id == *me) => {
                return self.claim_here(&fleet, room).await;
            }
            None => return Err(Unavailable::NoNode),
        };
        // Until the chosen node's next announcement (within a second), this node's placements
        // count the room there themselves: a burst of new rooms spreads by load, not only by
        // the hash that breaks ties.
        self.note_placed(&target.id);
        if target.id == *me {
            return self.claim_here(&fleet, room).await;
        }
        let (claim, _) = self
            .claim_waiting(&fleet, room, Some((&target.id, &target.url)))
            .await?;
        match claim {
            Claim::Claimed { .. } => Ok(Located::Elsewhere { url: target.url }),
            Claim::OwnedBy(owner) if owner.node == *me => self.claim_here(&fleet, room).await,
            Claim::OwnedBy(owner) => Ok(Located::Elsewhere { url: owner.url }),
            Claim::Held { retry_after } => Err(held(retry_after)),
        }
    }

    /// Claims `room` for this node and records the lease.
    async fn claim_here(&self, fleet: &Fleet, room: &str) -> Result<Located, Unavailable> {
        let (claim, sent) = self.claim_waiting(fleet, room, None).await?;
        match claim {
            Claim::Claimed { epoch, took_over } => {
                self.claimed.notify_one();
                if took_over {
                    self.metrics.fleet_failovers_total.inc();
                    info!(room, %epoch, "took over a room whose node's lease lapsed");
                }
                let (gate, new) = {
                    let local = self.local();
                    let lease = local.leases.lease().saturating_sub(local.leases.margin());
                    let gate = match local.gates.get(room) {
                        Some(gate) => (gate.clone(), false),
                        None => (Arc::new(LeaseGate::new(Arc::from(fleet.url()))), true),
                    };
                    gate.0.open_until(sent + lease);
                    gate
                };
                if new {
                    // A room handed to this node by a draining one: its participants are
                    // seated, waiting to resume, before anyone else can find the room here.
                    match self.redis("handoff", fleet.take_handoff(room)).await {
                        Ok(Some(json)) => match serde_json::from_str::<MovedRoom>(&json) {
                            Ok(moved) => {
                                self.pool.adopt(moved, gate.clone(), self.resume_window);
                            }
                            Err(error) => warn!(room, %error, "a handoff that does not decode"),
                        },
                        Ok(None) => {}
                        // Its participants then join afresh (their resume fails).
                        Err(error) => warn!(room, %error, "could not read a room's handoff"),
                    }
                }
                let mut local = self.local();
                local.leases.claimed(room, epoch, sent);
                local.gates.insert(room.to_owned(), gate.clone());
                local.used.insert(room.to_owned(), Instant::now());
                self.metrics
                    .fleet_rooms_owned
                    .set(local.leases.len() as i64);
                Ok(Located::Here(gate))
            }
            Claim::OwnedBy(owner) => Ok(Located::Elsewhere { url: owner.url }),
            Claim::Held { retry_after } => Err(held(retry_after)),
        }
    }

    /// A claim (for this node, or for `other`), waiting once for Redis's hold after data loss
    /// if it ends soon enough. Returns the answer and when the claim that got it was sent.
    async fn claim_waiting(
        &self,
        fleet: &Fleet,
        room: &str,
        other: Option<(&crate::fleet::NodeId, &String)>,
    ) -> Result<(Claim, Instant), Unavailable> {
        let mut waited = false;
        loop {
            // Read before sending: the local deadline counts from here (see `Leases`).
            let sent = Instant::now();
            let claim = match other {
                None => self.redis("claim", fleet.claim(room)).await,
                Some((node, url)) => self.redis("claim", fleet.claim_for(room, node, url)).await,
            };
            let claim = match claim {
                Ok(claim) => claim,
                Err(error) => {
                    self.count_claim("error");
                    return Err(unreachable(error));
                }
            };
            self.count_claim(match &claim {
                Claim::Claimed { .. } => "claimed",
                Claim::OwnedBy(_) => "owned",
                Claim::Held { .. } => "held",
            });
            match claim {
                Claim::Held { retry_after } if !waited && retry_after <= MAX_HOLD_WAIT => {
                    waited = true;
                    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
                }
                other => return Ok((other, sent)),
            }
        }
    }

    fn count_claim(&self, outcome: &str) {
        self.metrics
            .fleet_claims_total
            .with_label_values(&[outcome])
            .inc();
    }

    /// The live nodes, read at most every [`NODES_CACHE`].
    async fn nodes(&self, fleet: &Fleet) -> Result<Vec<NodeInfo>, Unavailable> {
        if let Some((at, nodes)) = &self.local().nodes
            && at.elapsed() < NODES_CACHE
        {
            return Ok(nodes.clone());
        }
        let nodes = self
            .redis("nodes", fleet.nodes())
            .await
            .map_err(unreachable)?;
        self.metrics.fleet_nodes.set(nodes.len() as i64);
        self.local().nodes = Some((Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    /// Reads the node list afresh (every renewal round): the placement cache and the
    /// `mixer_fleet_nodes` gauge stay current even on a node that places nothing.
    pub async fn refresh_nodes(&self, fleet: &Fleet) {
        self.local().nodes = None;
        if let Err(error) = self.nodes(fleet).await {
            // Counted and logged with the heartbeat's failure; nothing else to do.
            tracing::debug!(%error, "could not read the node list");
        }
    }

    /// Counts a room placed on `node` in the cached node list.
    fn note_placed(&self, node: &crate::fleet::NodeId) {
        if let Some((_, nodes)) = &mut self.local().nodes
            && let Some(info) = nodes.iter_mut().find(|n| n.id == *node)
        {
            // A new room and the client joining it: the least it adds to the node's cost.
            info.load.rooms = info.load.rooms.saturating_add(1);
            info.load.participants = info.load.participants.saturating_add(1);
        }
    }

    /// Runs one Redis operation, counting it.
    async fn redis<T>(
        &self,
        op: &str,
        future: impl Future<Output = Result<T, FleetError>>,
    ) -> Result<T, FleetError> {
        self.metrics
            .fleet_redis_commands_total
            .with_label_values(&[op])
            .inc();
        future.await
    }

    /// The cluster-wide room list, of the rooms `allowed` passes: every room with a live lease,
    /// as its owner last published it (within a second), this node's own rooms as they are now.
    /// Sorted by name, at most [`MAX_LISTED_ROOMS`], and whether there were more.
    ///
    /// # Errors
    ///
    /// [`Unavailable::Registry`] when Redis cannot answer: the list is the fleet's or nothing.
    pub async fn list_rooms(
        &self,
        pool: &MixerPool,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<(Vec<RoomSummary>, bool), Unavailable> {
        let fleet = self.fleet().ok_or_else(|| {
            Unavailable::Registry("not connected yet since this node started".into())
        })?;
        let listed = self
            .redis("rooms", fleet.rooms())
            .await
            .map_err(unreachable)?;
        let mut rooms: BTreeMap<String, RoomSummary> = BTreeMap::new();
        for entry in listed {
            if !allowed(&entry.room) {
                continue;
            }
            // A room claimed less than a second ago has published nothing yet; one published
            // by an incompatible version is left out rather than shown wrong.
            if let Some(summary) = entry
                .summary
                .and_then(|json| serde_json::from_str::<RoomSummary>(&json).ok())
            {
                rooms.insert(entry.room, summary);
            }
        }
        let held: Vec<String> = self
            .local()
            .leases
            .to_renew()
            .into_iter()
            .map(|(room, _)| room)
            .collect();
        for room in held {
            if allowed(&room)
                && let Some(summary) = pool.room_info(&room)
            {
                rooms.insert(room, summary);
            }
        }
        let truncated = rooms.len() > MAX_LISTED_ROOMS;
        Ok((
            rooms.into_values().take(MAX_LISTED_ROOMS).collect(),
            truncated,
        ))
    }

    /// One renewal round, every [`crate::fleet::RENEW_INTERVAL`]: releases the held rooms that
    /// `exists` says are gone (after [`UNUSED_GRACE`]), closes the gates of leases past their
    /// local deadline, renews the rest (publishing each room's `summary`), and moves the
    /// renewed gates on or closes the lost ones.
    pub async fn renew(&self, fleet: &Fleet, summary: impl Fn(&str) -> Option<RoomSummary>) {
        let now = Instant::now();
        let (release, asked) = {
            let mut local = self.local();
            for (room, _) in local.leases.expire(now) {
                self.lost(&mut local, &room, "expired");
            }
            let mut release = Vec::new();
            for (room, epoch) in local.leases.to_renew() {
                let used = local.used.get(&room).copied();
                if summary(&room).is_none()
                    && used.is_none_or(|at| now.saturating_duration_since(at) > UNUSED_GRACE)
                {
                    local.leases.released(&room);
                    if let Some(gate) = local.gates.remove(&room) {
                        gate.close();
                    }
                    local.used.remove(&room);
                    release.push((room, epoch));
                }
            }
            self.metrics
                .fleet_rooms_owned
                .set(local.leases.len() as i64);
            (release, local.leases.to_renew())
        };
        for (room, epoch) in release {
            if let Err(error) = self.redis("release", fleet.release(&room, epoch)).await {
                // It lapses by itself.
                warn!(room, %error, "could not release a room lease");
            }
        }
        if asked.is_empty() {
            return;
        }
        let publish: Vec<_> = asked
            .iter()
            .map(|(room, epoch)| {
                let json = summary(room).and_then(|s| serde_json::to_string(&s).ok());
                (room.clone(), *epoch, json)
            })
            .collect();
        let sent = Instant::now();
        match self.redis("renew", fleet.renew_publishing(&publish)).await {
            Ok(lost) => {
                let mut local = self.local();
                let stopped = local.leases.renewed(&asked, &lost, sent);
                for room in &stopped {
                    self.lost(&mut local, room, "taken");
                }
                for (room, _) in &asked {
                    if let (Some(deadline), Some(gate)) =
                        (local.leases.deadline(room), local.gates.get(room))
                    {
                        gate.open_until(deadline);
                    }
                }
                self.metrics
                    .fleet_rooms_owned
                    .set(local.leases.len() as i64);
            }
            Err(error) => {
                // The deadlines stay where they are: the rooms stop at them unless a later
                // renewal gets through.
                warn!(%error, rooms = asked.len(), "could not renew room leases");
            }
        }
    }

    /// Hands every room this node holds to other nodes (the end of a drain): each goes to the
    /// node placement picks among the others, with its participants, who are sent there with
    /// their resume tokens. Returns how many rooms are still held (no other node could take
    /// them, or Redis failed; the next round tries again).
    pub async fn move_rooms(&self, fleet: &Fleet) -> usize {
        let held = self.local().leases.to_renew();
        if held.is_empty() {
            return 0;
        }
        let nodes = match self.redis("nodes", fleet.nodes()).await {
            Ok(nodes) => nodes,
            Err(error) => {
                warn!(%error, "cannot list the fleet's nodes to move rooms to");
                return held.len();
            }
        };
        let me = fleet.node();
        let others: Vec<NodeInfo> = nodes.into_iter().filter(|n| n.id != *me).collect();
        for (room, epoch) in held {
            let Some(target) = place(&others, &room) else {
                warn!(
                    room,
                    "no other node can take the room; it stays here for now"
                );
                continue;
            };
            self.move_room(fleet, &room, epoch, target).await;
        }
        self.held_count()
    }

    /// Hands one room to `target`.
    async fn move_room(&self, fleet: &Fleet, room: &str, epoch: Epoch, target: &NodeInfo) {
        self.local().moving.insert(room.to_owned());
        let handoff = match self.pool.snapshot(room).await {
            // Empty: released by the next renewal.
            None => {
                self.local().moving.remove(room);
                return;
            }
            Some(moved) => serde_json::to_string(&moved),
        };
        let Ok(handoff) = handoff else {
            self.local().moving.remove(room);
            return;
        };
        let answer = self
            .redis(
                "handoff",
                fleet.hand_off(room, epoch, &target.id, &target.url, &handoff),
            )
            .await;
        let moved = {
            let mut local = self.local();
            local.moving.remove(room);
            match answer {
                Ok(true) => {
                    local.leases.released(room);
                    // Not closed: the room is moved out below, not stopped for a lost lease.
                    local.gates.remove(room);
                    local.used.remove(room);
                    self.metrics
                        .fleet_rooms_owned
                        .set(local.leases.len() as i64);
                    true
                }
                Ok(false) => {
                    self.lost(&mut local, room, "taken");
                    false
                }
                // Moved or not, it may be the other node's now: stop mixing it here.
                Err(error) => {
                    warn!(room, %error, "handing a room over failed");
                    self.lost(&mut local, room, "expired");
                    false
                }
            }
        };
        if moved {
            // Returns once every client has its redirect: only then may a node stopping after
            // its drain close its connections.
            self.pool.move_out(room, &target.url).await;
            self.metrics.fleet_rooms_moved_total.inc();
            info!(room, to = %target.id, "room handed to another node");
        }
    }

    /// Closes the gate of a lease that is gone: its mixer thread stops the room at its next
    /// tick and sends its clients back to this node to join again.
    fn lost(&self, local: &mut Local, room: &str, cause: &str) {
        local.leases.released(room);
        local.used.remove(room);
        if let Some(gate) = local.gates.remove(room) {
            gate.close();
        }
        self.metrics
            .fleet_lease_losses_total
            .with_label_values(&[cause])
            .inc();
        warn!(room, cause, "lost a room lease; the room stops here");
    }
}

fn unreachable(error: FleetError) -> Unavailable {
    Unavailable::Registry(error.to_string())
}

fn held(retry_after: Duration) -> Unavailable {
    Unavailable::Held(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_is_open_until_its_deadline_and_closes_at_once() {
        let gate = LeaseGate::new(Arc::from("ws://here/"));
        let now = Instant::now();
        assert!(!gate.is_open(now), "a new gate is closed");
        gate.open_until(now + Duration::from_millis(100));
        assert!(gate.is_open(now));
        assert!(gate.is_open(now + Duration::from_millis(99)));
        assert!(!gate.is_open(now + Duration::from_millis(100)));
        gate.close();
        assert!(!gate.is_open(now));
        assert_eq!(gate.url(), "ws://here/");
    }
}
