//! All of the fleet's Redis I/O: a node's handle on the fleet ([`Fleet`]), its Lua scripts, and
//! the parsing of their replies. The key layout and the reasons behind it are in the
//! [module docs](super).
//!
//! Every operation is bounded by [`FleetConfig::timeout`]: an operation that has not been
//! answered by then fails with [`FleetError::Timeout`] and its effect is unknown, which the
//! lease bookkeeping ([`super::Leases`]) already assumes of any failure. The connection
//! reconnects by itself (the `redis` crate's connection manager): after Redis comes back, the
//! next operation or the one after it succeeds, and scripts are loaded again as needed.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tracing::warn;

use super::lease::Epoch;
use super::node::{Load, NodeId, NodeInfo, NodeState};
use super::{DEFAULT_LEASE, FleetError};

/// Renewals are sent in batches of at most this many rooms, so that one script never holds
/// Redis (single-threaded) for long: 500 rooms take well under a millisecond.
const RENEW_BATCH: usize = 500;

/// How a node reaches the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The Redis URL (`redis://host:port/db`).
    pub redis_url: String,
    /// The key prefix, without braces: keys are `{prefix}:...`. Fleets sharing one Redis need
    /// different prefixes (tests use one each).
    pub prefix: String,
    /// The lease of node registrations and room ownership. Every node of a fleet must use the
    /// same lease: a claim after data loss waits one lease, its own, for everyone's to pass.
    pub lease: Duration,
    /// The longest any Redis operation may take, connecting included.
    pub timeout: Duration,
}

impl FleetConfig {
    /// The defaults for `redis_url`: prefix `mixer`, a three-second lease, a 500 ms timeout
    /// (half the renewal interval, so a slow renewal does not overlap the next).
    pub fn new(redis_url: impl Into<String>) -> FleetConfig {
        FleetConfig {
            redis_url: redis_url.into(),
            prefix: "mixer".to_owned(),
            lease: DEFAULT_LEASE,
            timeout: Duration::from_millis(500),
        }
    }

    /// Checks that the values can work.
    ///
    /// # Errors
    ///
    /// [`FleetError::Config`] naming the bad value: a lease under 100 ms (its safety margin
    /// would eat most of it), a zero timeout, or a prefix that is empty or has braces.
    pub fn validate(&self) -> Result<(), FleetError> {
        if self.lease < Duration::from_millis(100) {
            return Err(FleetError::Config(format!(
                "the lease must be at least 100 ms (got {:?})",
                self.lease
            )));
        }
        if self.timeout.is_zero() {
            return Err(FleetError::Config(
                "the Redis timeout must be positive".into(),
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(FleetError::Config(format!(
                "the key prefix must be non-empty and without braces (got {:?})",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The room is this node's, under this epoch (a new lease, or this node's own lease found
    /// still running, renewed).
    Claimed {
        /// The lease's fencing epoch.
        epoch: Epoch,
        /// Whether the room's previous lease lapsed (its node died or was cut off from Redis)
        /// rather than being released within the last minute: the claim is a failover.
        took_over: bool,
    },
    /// Another node holds the room.
    OwnedBy(Owner),
    /// Redis lost its data recently (or this fleet never used it before): no room can be
    /// claimed until every lease granted before has run out at its holder.
    Held {
        /// How long until claims are taken again.
        retry_after: Duration,
    },
}

/// Who owns a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning node.
    pub node: NodeId,
    /// Where its clients connect (the node's public URL when it claimed the room).
    pub url: String,
    /// The owner's lease epoch.
    pub epoch: Epoch,
}

/// A room and its owner, as the cluster-wide room list gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOwner {
    /// The room.
    pub room: String,
    /// Its owner.
    pub owner: Owner,
    /// What its owner last published about it with a renewal (its settings and occupancy,
    /// JSON), if anything yet.
    pub summary: Option<String>,
}

/// A node's handle on the fleet: its id and public URL, and a connection to Redis.
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Fleet {
    conn: ConnectionManager,
    config: FleetConfig,
    node: NodeId,
    url: String,
    scripts: &'static Scripts,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .field("node", &self.node)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects to Redis as node `node`, reachable by clients at `url`.
    ///
    /// # Errors
    ///
    /// A bad configuration or URL, or Redis unreachable within the timeout.
    pub async fn connect(
        config: FleetConfig,
        node: NodeId,
        url: impl Into<String>,
    ) -> Result<Fleet, FleetError> {
        config.validate()?;
        let client =
            redis::Client::open(config.redis_url.as_str()).map_err(|source| FleetError::Url {
                url: config.redis_url.clone(),
                source,
            })?;
        // No retries inside a reconnection attempt (the crate's backoff starts at a second):
        // an attempt that fails is started again by the next operation, so a node notices Redis
        // coming back at its next renewal, and the renewal loop is the only retry policy.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout)
            .set_response_timeout(config.timeout)
            .set_number_of_retries(0);
        let timeout = config.timeout;
        let conn =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, manager))
                .await
                .map_err(|_| FleetError::Timeout {
                    op: "connect",
                    timeout,
                })?
                .map_err(|source| FleetError::Redis {
                    op: "connect",
                    source,
                })?;
        Ok(Fleet {
            conn,
            config,
            node,
            url: url.into(),
            scripts: scripts(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// This node's public URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Registers this node, or renews its registration: writes its info with a fresh lease.
    /// Call it every [`super::RENEW_INTERVAL`], and right after the load changed a lot (a room
    /// claimed or released), so that placements elsewhere see it.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn heartbeat(&self, state: NodeState, load: Load) -> Result<(), FleetError> {
        let mut info = NodeInfo::new(self.node.clone(), self.url.clone(), load.capacity);
        info.state = state;
        info.load = load;
        let json = serde_json::to_string(&info)?;
        let mut invocation = self.scripts.register.prepare_invoke();
        invocation
            .key(self.key_node(&self.node))
            .key(self.key("nodes"))
            .key(self.key("generation"))
            .key(self.key("hold"))
            .arg(json)
            .arg(self.lease_ms())
            .arg(self.node.as_str());
        let reply = self
            .run(
                "heartbeat",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        int("heartbeat", &reply).map(drop)
    }

    /// Removes this node's registration at once (at the end of a drain), instead of letting it
    /// lapse.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn deregister(&self) -> Result<(), FleetError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key_node(&self.node))
            .ignore()
            .zrem(self.key("nodes"), self.node.as_str())
            .ignore();
        self.run("deregister", pipe.query_async::<()>(&mut self.conn.clone()))
            .await
    }

    /// The live nodes (whose registration has not lapsed), sorted by id. An entry that cannot
    /// be decoded (written by an incompatible version) is logged and left out.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, FleetError> {
        let mut invocation = self.scripts.nodes.prepare_invoke();
        invocation
            .key(self.key("nodes"))
            .arg(self.key_node_prefix());
        let reply = self
            .run(
                "nodes",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        let mut nodes = Vec::new();
        for value in array("nodes", &reply)? {
            let json = match value {
                // Expired between the index and the read.
                Value::Nil => continue,
                other => bytes("nodes", other)?,
            };
            match serde_json::from_slice::<NodeInfo>(json) {
                Ok(info) => nodes.push(info),
                Err(error) => warn!(%error, "skipping a node entry that does not decode"),
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Claims `room` for this node: atomically takes it if nobody holds its lease, with a new
    /// epoch; otherwise says who owns it. Read the clock *before* calling, and pass that time to
    /// [`super::Leases::claimed`] on success.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error: the room's owner is then unknown, and the
    /// node must not mix it.
    pub async fn claim(&self, room: &str) -> Result<Claim, FleetError> {
        self.claim_for(room, &self.node, &self.url).await
    }

    /// Claims `room` on behalf of `node` (reachable at `url`): how a node that placed a new room
    /// elsewhere reserves it for the node it chose before redirecting the client there. The
    /// chosen node does not mix the room until it claims it itself (which finds its own lease
    /// and renews it under the same epoch); a reservation nobody takes up lapses with its lease.
    ///
    /// # Errors
    ///
    /// As [`Fleet::claim`].
    pub async fn claim_for(
        &self,
        room: &str,
        node: &NodeId,
        url: &str,
    ) -> Result<Claim, FleetError> {
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.key_room(room))
            .key(self.key("rooms"))
            .key(self.key("generation"))
            .key(self.key("hold"))
            .key(self.key("epoch"))
            .arg(node.as_str())
            .arg(url)
            .arg(self.lease_ms())
            .arg(room)
            // A reservation for another node stays out of the room index until that node claims
            // it: a reservation nobody took up then lapses without looking like a failover.
            .arg(if *node == self.node { "0" } else { "1" });
        let reply = self
            .run(
                "claim",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        parse_claim(&reply)
    }

    /// Renews the leases in `rooms` (each with the epoch this node holds it under) and returns
    /// the rooms *not* renewed: another node holds them now, or Redis lost them. Pass the answer
    /// to [`super::Leases::renewed`].
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error; a batch already renewed stays renewed
    /// (which only makes the local deadlines more conservative than Redis).
    pub async fn renew(&self, rooms: &[(String, Epoch)]) -> Result<Vec<String>, FleetError> {
        let rooms: Vec<(String, Epoch, Option<String>)> = rooms
            .iter()
            .map(|(room, epoch)| (room.clone(), *epoch, None))
            .collect();
        self.renew_publishing(&rooms).await
    }

    /// [`Fleet::renew`], also publishing with each renewed room what the cluster-wide room list
    /// shows of it (`summary`, JSON; `None` leaves the last one published).
    ///
    /// # Errors
    ///
    /// As [`Fleet::renew`].
    pub async fn renew_publishing(
        &self,
        rooms: &[(String, Epoch, Option<String>)],
    ) -> Result<Vec<String>, FleetError> {
        let mut lost = Vec::new();
        for batch in rooms.chunks(RENEW_BATCH) {
            let mut invocation = self.scripts.renew.prepare_invoke();
            invocation
                .key(self.key("rooms"))
                .arg(self.node.as_str())
                .arg(self.lease_ms());
            for (room, epoch, summary) in batch {
                invocation
                    .key(self.key_room(room))
                    .arg(room.as_str())
                    .arg(epoch.generation)
                    .arg(epoch.n)
                    .arg(summary.as_deref().unwrap_or(""));
            }
            let reply = self
                .run(
                    "renew",
                    invocation.invoke_async::<Value>(&mut self.conn.clone()),
                )
                .await?;
            for index in array("renew", &reply)? {
                let index = int("renew", index)?;
                let room = usize::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| batch.get(i))
                    .ok_or_else(|| FleetError::Reply {
                        op: "renew",
                        detail: format!("room index {index} out of range"),
                    })?;
                lost.push(room.0.clone());
            }
        }
        Ok(lost)
    }

    /// Releases `room` if this node still holds it under `epoch`; returns whether it did.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error: the lease then lapses by itself.
    pub async fn release(&self, room: &str, epoch: Epoch) -> Result<bool, FleetError> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.key_room(room))
            .key(self.key("rooms"))
            .arg(self.node.as_str())
            .arg(epoch.generation)
            .arg(epoch.n)
            .arg(room);
        let reply = self
            .run(
                "release",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        Ok(int("release", &reply)? == 1)
    }

    /// Hands `room`, held by this node under `epoch`, to `target` (a draining node moving its
    /// rooms): atomically, the lease becomes `target`'s under a new epoch, and `handoff` (what
    /// the target needs to take the room's participants back, JSON) is stored for it for one
    /// minute. Returns false, changing nothing, if this node no longer holds the lease.
    ///
    /// The target takes the room up when the first moved client reaches it: its claim finds its
    /// own lease, and [`Fleet::take_handoff`] gives it the participants.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error: the room may or may not have moved, and
    /// this node must not mix it either way (its lease may be the target's now).
    pub async fn hand_off(
        &self,
        room: &str,
        epoch: Epoch,
        target: &NodeId,
        target_url: &str,
        handoff: &str,
    ) -> Result<bool, FleetError> {
        let mut invocation = self.scripts.hand_off.prepare_invoke();
        invocation
            .key(self.key_room(room))
            .key(self.key("rooms"))
            .key(self.key("epoch"))
            .key(self.key_handoff(room))
            .arg(self.node.as_str())
            .arg(epoch.generation)
            .arg(epoch.n)
            .arg(target.as_str())
            .arg(target_url)
            .arg(self.lease_ms())
            .arg(room)
            .arg(handoff);
        let reply = self
            .run(
                "handoff",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        Ok(int("handoff", &reply)? == 1)
    }

    /// Takes (reads and deletes) what the node that handed `room` to this one left for it, if
    /// anything.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn take_handoff(&self, room: &str) -> Result<Option<String>, FleetError> {
        let mut invocation = self.scripts.take_handoff.prepare_invoke();
        invocation.key(self.key_handoff(room));
        let reply = self
            .run(
                "handoff",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            other => text("handoff", &other).map(Some),
        }
    }

    /// The owner of `room`, if any node holds its lease.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn owner(&self, room: &str) -> Result<Option<Owner>, FleetError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key_room(room))
            .arg("node")
            .arg("url")
            .arg("gen")
            .arg("n");
        let reply = self
            .run("owner", cmd.query_async::<Value>(&mut self.conn.clone()))
            .await?;
        let fields = array("owner", &reply)?;
        if fields.first().is_none_or(|v| matches!(v, Value::Nil)) {
            return Ok(None);
        }
        parse_owner("owner", fields).map(Some)
    }

    /// Every room with a live lease in the fleet and its owner, sorted by room name: the
    /// cluster-wide room list. It reads one index entry and one hash per room.
    ///
    /// # Errors
    ///
    /// Redis unreachable, slow or answering an error.
    pub async fn rooms(&self) -> Result<Vec<RoomOwner>, FleetError> {
        let mut invocation = self.scripts.rooms.prepare_invoke();
        invocation
            .key(self.key("rooms"))
            .arg(self.key_room_prefix());
        let reply = self
            .run(
                "rooms",
                invocation.invoke_async::<Value>(&mut self.conn.clone()),
            )
            .await?;
        let flat = array("rooms", &reply)?;
        if flat.len() % 6 != 0 {
            return Err(FleetError::Reply {
                op: "rooms",
                detail: format!("{} values, not a multiple of 6", flat.len()),
            });
        }
        let mut rooms = flat
            .chunks_exact(6)
            .map(|entry| {
                Ok(RoomOwner {
                    room: text("rooms", &entry[0])?,
                    owner: parse_owner("rooms", &entry[1..5])?,
                    summary: match &entry[5] {
                        Value::Nil => None,
                        value => Some(text("rooms", value)?).filter(|s| !s.is_empty()),
                    },
                })
            })
            .collect::<Result<Vec<_>, FleetError>>()?;
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(rooms)
    }

    async fn run<T>(
        &self,
        op: &'static str,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, future)
            .await
            .map_err(|_| FleetError::Timeout { op, timeout })?
            .map_err(|source| FleetError::Redis { op, source })
    }

    fn lease_ms(&self) -> u64 {
        self.config.lease.as_millis().try_into().unwrap_or(u64::MAX)
    }

    fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.config.prefix)
    }

    fn key_node_prefix(&self) -> String {
        self.key("node:")
    }

    fn key_node(&self, node: &NodeId) -> String {
        format!("{}{node}", self.key_node_prefix())
    }

    fn key_room_prefix(&self) -> String {
        self.key("room:")
    }

    fn key_room(&self, room: &str) -> String {
        format!("{}{room}", self.key_room_prefix())
    }

    fn key_handoff(&self, room: &str) -> String {
        format!("{}{room}", self.key("handoff:"))
    }
}

/// The fleet's Lua scripts. Each runs atomically in Redis; each reads Redis's clock (`TIME`)
/// only to score the index sorted sets, never to decide a lease, which Redis's own key expiry
/// does.
struct Scripts {
    register: Script,
    nodes: Script,
    claim: Script,
    renew: Script,
    release: Script,
    rooms: Script,
    hand_off: Script,
    take_handoff: Script,
}

/// The scripts, built once (a [`Script`] hashes its source when built).
fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        register: Script::new(&format!("{PRELUDE}{REGISTER}")),
        nodes: Script::new(&format!("{PRELUDE}{NODES}")),
        claim: Script::new(&format!("{PRELUDE}{CLAIM}")),
        renew: Script::new(&format!("{PRELUDE}{RENEW}")),
        release: Script::new(RELEASE),
        rooms: Script::new(&format!("{PRELUDE}{ROOMS}")),
        hand_off: Script::new(&format!("{PRELUDE}{HAND_OFF}")),
        take_handoff: Script::new(TAKE_HANDOFF),
    })
}

/// Redis's clock in ms, as a number (`now`) and as a decimal string (`now_text`, exact
/// whatever Lua's number formatting). Redis before 7 needs effects replication switched on to
/// write after reading `TIME`; Redis 7 always replicates effects.
const PRELUDE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_text = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local now = tonumber(now_text)
-- A data set without a generation is new, or Redis lost its data: no claim may succeed for one
-- lease, until every lease granted before has run out at its holder (see the module docs).
local function fresh(generation_key, hold_key, lease)
  if redis.call('EXISTS', generation_key) == 0 then
    redis.call('SET', generation_key, now_text)
    redis.call('SET', hold_key, '1', 'PX', lease)
  end
end
";

/// KEYS: node key, nodes index, generation, hold. ARGV: info JSON, lease ms, node id.
const REGISTER: &str = r"
fresh(KEYS[3], KEYS[4], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return 1
";

/// KEYS: nodes index. ARGV: node key prefix. Returns the live nodes' JSON (nil for a key that
/// expired since the index was pruned).
const NODES: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i, id in ipairs(ids) do
  out[i] = redis.call('GET', ARGV[1] .. id)
end
return out
";

/// KEYS: room key, rooms index, generation, hold, epoch counter. ARGV: node id, url, lease ms,
/// room name, '1' for a reservation (a claim for another node). Returns {'claimed', gen, n, lapsed}, {'owned', node, url, gen, n} or
/// {'held', ms}.
const CLAIM: &str = r"
fresh(KEYS[3], KEYS[4], ARGV[3])
local hold = redis.call('PTTL', KEYS[4])
if hold > 0 then return {'held', hold} end
local generation = redis.call('GET', KEYS[3])
local owner = redis.call('HMGET', KEYS[1], 'node', 'url', 'gen', 'n')
if owner[1] then
  if owner[1] ~= ARGV[1] then
    return {'owned', owner[1], owner[2], owner[3], owner[4]}
  end
  -- Our own lease, still running (a node that lost track of it): renew it, same epoch.
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
  return {'claimed', owner[3], owner[4], '0'}
end
-- Still in the index but without a lease: it lapsed instead of being released (release
-- removes it from the index), so this claim takes over from a node that died or was cut off.
local lapsed = redis.call('ZSCORE', KEYS[2], ARGV[4]) and '1' or '0'
local n = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'url', ARGV[2], 'gen', generation, 'n', n)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[5] ~= '1' then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4]) end
return {'claimed', generation, tostring(n), lapsed}
";

/// KEYS: rooms index, then one room key per room. ARGV: node id, lease ms, then room name,
/// gen, n, summary (empty: unchanged) per room. Returns the 1-based indexes of the rooms not
/// renewed.
const RENEW: &str = r"
local lost = {}
for i = 2, #KEYS do
  local base = 3 + (i - 2) * 4
  local owner = redis.call('HMGET', KEYS[i], 'node', 'gen', 'n')
  if owner[1] == ARGV[1] and owner[2] == ARGV[base + 1] and owner[3] == ARGV[base + 2] then
    if ARGV[base + 3] ~= '' then redis.call('HSET', KEYS[i], 'summary', ARGV[base + 3]) end
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[base])
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
";

/// KEYS: room key, rooms index. ARGV: node id, gen, n, room name. Returns 1 if released.
const RELEASE: &str = r"
local owner = redis.call('HMGET', KEYS[1], 'node', 'gen', 'n')
if owner[1] == ARGV[1] and owner[2] == ARGV[2] and owner[3] == ARGV[3] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 1
end
return 0
";

/// KEYS: rooms index. ARGV: room key prefix. Returns room, node, url, gen, n, summary for every
/// room with a live lease, flattened. Index entries of lapsed leases are kept for a minute, so
/// that a claim can tell a failover from a fresh room (see the claim script).
const ROOMS: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local names = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local out = {}
for _, name in ipairs(names) do
  local owner = redis.call('HMGET', ARGV[1] .. name, 'node', 'url', 'gen', 'n', 'summary')
  if owner[1] then
    out[#out + 1] = name
    for j = 1, 5 do out[#out + 1] = owner[j] or '' end
  end
end
return out
";

/// KEYS: room key, rooms index, epoch counter, handoff key. ARGV: node id, gen, n, target id,
/// target url, lease ms, room name, handoff JSON. Returns 1 if handed off.
const HAND_OFF: &str = r"
local owner = redis.call('HMGET', KEYS[1], 'node', 'gen', 'n')
if owner[1] ~= ARGV[1] or owner[2] ~= ARGV[2] or owner[3] ~= ARGV[3] then return 0 end
local n = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[4], 'url', ARGV[5], 'gen', owner[2], 'n', n)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[7])
redis.call('SET', KEYS[4], ARGV[8], 'PX', 60000)
return 1
";

/// KEYS: handoff key. Returns its value (nil if none) and deletes it.
const TAKE_HANDOFF: &str = r"
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
";

fn parse_claim(reply: &Value) -> Result<Claim, FleetError> {
    const OP: &str = "claim";
    let fields = array(OP, reply)?;
    let kind = fields.first().map(|v| text(OP, v)).transpose()?;
    match (kind.as_deref(), fields.len()) {
        (Some("claimed"), 4) => Ok(Claim::Claimed {
            epoch: Epoch {
                generation: int(OP, &fields[1])?,
                n: int(OP, &fields[2])?,
            },
            took_over: int(OP, &fields[3])? == 1,
        }),
        (Some("owned"), 5) => parse_owner(OP, &fields[1..]).map(Claim::OwnedBy),
        (Some("held"), 2) => Ok(Claim::Held {
            retry_after: Duration::from_millis(int(OP, &fields[1])?),
        }),
        _ => Err(FleetError::Reply {
            op: OP,
            detail: format!("{reply:?}"),
        }),
    }
}

/// Node, url, gen, n.
fn parse_owner(op: &'static str, fields: &[Value]) -> Result<Owner, FleetError> {
    let [node, url, generation, n] = fields else {
        return Err(FleetError::Reply {
            op,
            detail: format!("{} owner fields, not 4", fields.len()),
        });
    };
    let node = text(op, node)?;
    Ok(Owner {
        node: NodeId::new(&node).map_err(|e| FleetError::Reply {
            op,
            detail: e.to_string(),
        })?,
        url: text(op, url)?,
        epoch: Epoch {
            generation: int(op, generation)?,
            n: int(op, n)?,
        },
    })
}

fn array<'a>(op: &'static str, value: &'a Value) -> Result<&'a [Value], FleetError> {
    match value {
        Value::Array(values) => Ok(values),
        other => Err(FleetError::Reply {
            op,
            detail: format!("expected an array, got {other:?}"),
        }),
    }
}

fn bytes<'a>(op: &'static str, value: &'a Value) -> Result<&'a [u8], FleetError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.as_bytes()),
        other => Err(FleetError::Reply {
            op,
            detail: format!("expected a string, got {other:?}"),
        }),
    }
}

fn text(op: &'static str, value: &Value) -> Result<String, FleetError> {
    String::from_utf8(bytes(op, value)?.to_vec()).map_err(|e| FleetError::Reply {
        op,
        detail: format!("not UTF-8: {e}"),
    })
}

/// A non-negative integer, sent as an integer or as a decimal string (hash fields are strings).
fn int(op: &'static str, value: &Value) -> Result<u64, FleetError> {
    let parsed = match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(op, other)?.parse::<u64>().ok(),
    };
    parsed.ok_or_else(|| FleetError::Reply {
        op,
        detail: format!("expected a non-negative integer, got {value:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn claim_replies_parse_and_odd_ones_are_errors_not_panics() {
        let claimed = Value::Array(vec![
            bulk("claimed"),
            bulk("1712345678901"),
            bulk("7"),
            bulk("1"),
        ]);
        assert_eq!(
            parse_claim(&claimed).expect("claimed"),
            Claim::Claimed {
                epoch: Epoch {
                    generation: 1_712_345_678_901,
                    n: 7
                },
                took_over: true,
            }
        );
        let owned = Value::Array(vec![
            bulk("owned"),
            bulk("n2"),
            bulk("ws://b/"),
            bulk("5"),
            Value::Int(9),
        ]);
        assert!(
            matches!(parse_claim(&owned), Ok(Claim::OwnedBy(Owner { ref node, .. })) if node.as_str() == "n2")
        );
        let held = Value::Array(vec![bulk("held"), Value::Int(250)]);
        assert_eq!(
            parse_claim(&held).expect("held"),
            Claim::Held {
                retry_after: Duration::from_millis(250)
            }
        );
        for odd in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![bulk("claimed"), bulk("x"), bulk("1"), bulk("0")]),
            Value::Array(vec![bulk("claimed"), Value::Int(-1), bulk("1"), bulk("0")]),
            Value::Array(vec![bulk("claimed"), bulk("1"), bulk("1")]),
            Value::Array(vec![
                bulk("owned"),
                bulk("bad id"),
                bulk("u"),
                bulk("1"),
                bulk("1"),
            ]),
            Value::Array(vec![bulk("surprise")]),
        ] {
            assert!(
                matches!(parse_claim(&odd), Err(FleetError::Reply { .. })),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn configs_are_validated() {
        assert!(FleetConfig::new("redis://127.0.0.1/").validate().is_ok());
        let mut config = FleetConfig::new("redis://127.0.0.1/");
        config.lease = Duration::from_millis(50);
        assert!(config.validate().is_err());
        let mut config = FleetConfig::new("redis://127.0.0.1/");
        config.prefix = "a{b".into();
        let err = config.validate().expect_err("braces");
        assert!(err.to_string().contains("a{b"), "{err}");
    }
}
