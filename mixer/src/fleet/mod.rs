//! A fleet of mixer nodes coordinated through Redis (issue 14): which nodes are alive and how
//! loaded, which node mixes each room, and where a new room should go.
//!
//! This is the coordination layer; the server's side (locating rooms, redirects, the gates that
//! stop a room at its lease's local deadline, drain and handoff) is
//! [`crate::server::fleet_rooms`], driven every second by [`crate::server::fleet_node`]. The
//! pure parts are sans-IO and take `now` as an argument, as the
//! engine does: [`node`] (what a node announces), [`lease`] (a node's local view of the room
//! leases it holds, and when it must stop mixing each), [`placement`] (which node takes a new
//! room). All Redis I/O is in [`store`], a node's handle on the fleet.
//!
//! # Keys
//!
//! Every key starts with a prefix in braces (`{mixer}` by default; tests use a prefix of their
//! own), a Redis Cluster hash tag: all of a fleet's keys hash to one slot, so the Lua scripts,
//! which touch several keys at once, also run on a cluster.
//!
//! | key | type | expires | holds |
//! |---|---|---|---|
//! | `{P}:node:<id>` | string | the node lease (3 s) | the node's [`NodeInfo`], JSON |
//! | `{P}:nodes` | sorted set | never | node ids, scored by their lease's expiry (ms); members whose score has passed are pruned when the set is read |
//! | `{P}:room:<room>` | hash | the room lease (3 s) | the owner: `node`, `url`, and its epoch `gen`, `n`; `summary`, the room's settings and occupancy as the owner last published them with a renewal (for the cluster-wide `list_rooms`) |
//! | `{P}:rooms` | sorted set | never | room names, scored by their lease's expiry (ms); an entry stays a minute past its expiry (released rooms leave at once), so that a claim can tell a room whose node died (a *failover*) from a new one |
//! | `{P}:handoff:<room>` | string | one minute | what a draining node left for the node it handed the room to: the room's settings, its participants (id, identity, name, role, mode, format, resume token) and floor holder, JSON; taken (read and deleted) by the new owner's first claim |
//! | `{P}:generation` | string | never | this Redis data set's generation: Redis's clock (ms) when a claim first found it missing |
//! | `{P}:epoch` | string | never | the epoch counter, `INCR`ed by every successful claim |
//! | `{P}:hold` | string | one room lease | while it exists, no room can be claimed (see "Data loss") |
//!
//! The two sorted sets exist so that listing nodes or rooms reads only the fleet's own entries
//! instead of `SCAN`ning the whole key space; the keys' own TTLs stay the truth (a listed member
//! whose key has expired is skipped).
//!
//! # Leases and epochs
//!
//! A node registers by writing its info with a lease (`SET PX`), renewed every second
//! ([`RENEW_INTERVAL`]); the default lease is three seconds ([`DEFAULT_LEASE`]), so two missed
//! renewals are tolerated and a node that dies disappears within three seconds.
//!
//! A room is owned through a lease of the same length, claimed atomically by a Lua script: the
//! claim succeeds only if the room has no lease (never claimed, released, or its owner stopped
//! renewing), and then stamps it with a new **fencing epoch** `(generation, n)`. `n` comes from
//! one counter for the whole fleet rather than one per room: it still grows with every new claim
//! of each room, and there is no per-room key left behind when a room is gone. Renewal and
//! release compare the node *and* the epoch, so a node that lost a room and has not noticed
//! cannot extend or delete the lease of the node that took it over, even if it is itself again.
//!
//! # The local deadline and its margin
//!
//! Redis decides when a lease lapses; a node cut off from Redis cannot ask. It therefore keeps,
//! for each lease, a local deadline on its own monotonic clock: the time it *sent* the claim or
//! the latest successful renewal, plus the lease, minus a safety margin ([`safety_margin`]). It
//! stops mixing the room at that deadline unless a renewal has succeeded since.
//!
//! Why that is safe: Redis starts the lease's countdown when it runs the command, which is no
//! earlier than the send, so measuring from the send can only make the local deadline earlier.
//! What is left is that two clocks measure the same lease: the node's and Redis's. Only their
//! *rates* matter (no absolute time is compared, so clock offsets and NTP steps do not); the
//! margin covers a rate difference of up to 1 % (real oscillators differ by under 0.01 %;
//! virtual machines and NTP slewing by more, still far under 1 %), Redis's expiry precision
//! (up to 1 ms), and one 20 ms mixer tick for the mixing thread to notice the deadline. With the
//! default three-second lease the margin is 51 ms.
//!
//! A process that is paused (a stopped VM, a suspended laptop) does not see its monotonic clock
//! advance while Redis's does; when it resumes, its next renewal reports the rooms as lost. The
//! server will renew at once after a long stall (it already detects skipped ticks) to keep that
//! window short.
//!
//! # Data loss
//!
//! With persistence off (how the fleet should run Redis: its state is soft and rebuilt within
//! seconds), a Redis restart loses every key. Two dangers follow, and both are handled by the
//! claim script:
//! - a lease granted before the loss may still be running at its holder, locally; so the first
//!   claim that finds `{P}:generation` missing sets `{P}:hold` for one lease, and no claim
//!   succeeds while it exists: every lease granted before the loss has passed its holder's
//!   local deadline by then;
//! - the epoch counter restarts; so the epoch carries the generation, Redis's clock at the new
//!   start, and epochs compare by generation first. (This assumes Redis's wall clock does not go
//!   back across a restart by more than the time the restart takes.)
//!
//! Redis must not evict these keys (`maxmemory-policy noeviction`, the default): an evicted lease
//! would be claimable while its holder still mixes. Restoring an old snapshot is not detected.
//!
//! # Reservations and handoffs
//!
//! A node that places a new room on another node claims it *for* that node
//! ([`Fleet::claim_for`]) before redirecting the client there: the lease is the other node's
//! from the start, so two nodes placing one room at once agree on its owner, and the chosen
//! node, whose own claim then finds its own lease, does not place the room again. It does not
//! mix the room before claiming it itself; a reservation nobody takes up lapses with its lease.
//!
//! A draining node hands a room over with [`Fleet::hand_off`]: atomically, if it still holds the
//! lease, the lease becomes the target's under a new epoch and the handoff is stored; then the
//! old node redirects the room's clients to the target with their resume tokens. It stops
//! mixing the room as it redirects them, a few milliseconds after the lease changed hands; the
//! target starts mixing only when the first of them arrives, so the two never mix at once.
//!
//! # Placement
//!
//! [`placement::place`] picks the least-loaded active node for a new room, by the cost
//! [`Load::cost`] (what a node's mixer threads do per tick: a shared encode per room, an own
//! mix-minus encode and a decode per talker, a send per participant) relative to the node's
//! announced capacity; see its docs for why that measure and how ties are broken.

pub mod lease;
pub mod node;
pub mod placement;
pub mod store;

use std::time::Duration;

pub use self::lease::{Epoch, Leases};
pub use self::node::{Load, NodeId, NodeInfo, NodeState};
pub use self::placement::place;
pub use self::store::{Claim, Fleet, FleetConfig, Owner, RoomOwner};

/// The default lease of a node's registration and of a room's ownership.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// How often a node renews its registration and its room leases with the default lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// The safety margin subtracted from a lease to get a node's local deadline: 1 % of the lease
/// (the clock-rate difference it tolerates) plus 1 ms (Redis's expiry precision) plus 20 ms (one
/// mixer tick, the time the mixing thread may take to notice). See the module docs.
pub fn safety_margin(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(1) + Duration::from_millis(20)
}

/// A node's fleet settings, from `mixer serve`'s flags (`--redis-url` and the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// How to reach Redis, the key prefix and the lease.
    pub store: FleetConfig,
    /// This node's id.
    pub node: NodeId,
    /// Where clients reach this node.
    pub public_url: String,
    /// How long a draining node keeps its rooms before moving them.
    pub drain_timeout: Duration,
}

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration cannot work (a lease too short for its margin, an empty prefix).
    #[error("fleet configuration: {0}")]
    Config(String),
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// What the client library said.
        source: redis::RedisError,
    },
    /// Redis could not be reached, or answered a command with an error.
    #[error("Redis {op} failed: {source}")]
    Redis {
        /// The operation (`claim`, `renew`, ...).
        op: &'static str,
        /// What the client library said.
        source: redis::RedisError,
    },
    /// Redis did not answer within the operation timeout.
    #[error("Redis {op}: no answer within {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// Redis answered with something the script or command cannot return (a key of the wrong
    /// type, a different script under the same name): never trusted, never panicked on.
    #[error("Redis {op}: unexpected reply: {detail}")]
    Reply {
        /// The operation.
        op: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A node's info could not be encoded as JSON.
    #[error("encoding node info: {0}")]
    Encode(#[from] serde_json::Error),
}
