//! What a node announces about itself: its id, where clients reach it, its state and its load.
//! Stored as JSON under `{P}:node:<id>` (see the [module docs](super)).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id: unique in the fleet, stable for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// Why a string cannot be a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node id {0:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.' (it is part of Redis keys and log lines)"
)]
pub struct InvalidNodeId(pub String);

impl NodeId {
    /// A node id from `id`, which must be 1 to 64 characters of `[A-Za-z0-9._-]`.
    ///
    /// # Errors
    ///
    /// [`InvalidNodeId`] names the bad value.
    pub fn new(id: &str) -> Result<NodeId, InvalidNodeId> {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(NodeId(id.to_owned()))
        } else {
            Err(InvalidNodeId(id.to_owned()))
        }
    }

    /// A random id, `node-` and 16 hex digits (64 bits from the operating system's generator):
    /// two nodes started without `--node-id` do not collide in practice.
    ///
    /// # Errors
    ///
    /// When the operating system's random number generator fails.
    pub fn random() -> Result<NodeId, getrandom::Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)?;
        Ok(NodeId(format!("node-{:016x}", u64::from_be_bytes(bytes))))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a node takes new rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new rooms.
    Active,
    /// Being taken out of service: keeps its rooms for a while, takes no new ones.
    Draining,
}

/// A node's load, as it last announced it. Every field defaults to zero when missing, so nodes of
/// different versions can read each other's announcements during a rolling upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Load {
    /// Rooms it mixes.
    pub rooms: u32,
    /// Participants in those rooms.
    pub participants: u32,
    /// Talkers mixed in the last tick (at most each room's talker cap).
    pub talkers: u32,
    /// The process's CPU use, in cores (1.0 is one core busy). Shown to operators; not used for
    /// placement (see [`Load::cost`]).
    pub cpu: f32,
    /// The share of the 20 ms tick the busiest mixer thread left unused, 0 to 1 (1: idle).
    pub tick_headroom: f32,
    /// The [cost](Load::cost) the node takes at most; zero takes no new rooms.
    pub capacity: u32,
}

impl Load {
    /// The node's mixing work per tick, in units of about one Opus encode: one shared encode
    /// per room, one own (mix-minus) encode per talker plus the decode of its uplink, one send
    /// per participant.
    ///
    /// Why this measure: it is what the mixer threads spend their tick on (see the engine's
    /// stats: encodes dominate, then decodes; sends and mixing are cheap per participant but many),
    /// it is counted exactly from state the server already holds, and it moves at once when a
    /// room is placed, unlike CPU use, which lags and includes whatever else runs on the machine.
    /// Tick headroom is the direct measure of overload, so it is used as a guard instead (see
    /// [`super::placement::MIN_HEADROOM`]).
    pub fn cost(&self) -> u64 {
        u64::from(self.rooms) + 2 * u64::from(self.talkers) + u64::from(self.participants)
    }
}

/// What a node announces: stored in Redis as JSON under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Where clients connect to it (`ws://` or `wss://`), as a redirect tells them.
    pub url: String,
    /// Its software version (the crate version), for operators during an upgrade.
    pub version: String,
    /// Whether it takes new rooms.
    pub state: NodeState,
    /// Its load.
    #[serde(default)]
    pub load: Load,
}

impl NodeInfo {
    /// An active node with no load yet and this build's version.
    pub fn new(id: NodeId, url: impl Into<String>, capacity: u32) -> NodeInfo {
        NodeInfo {
            id,
            url: url.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state: NodeState::Active,
            load: Load {
                capacity,
                tick_headroom: 1.0,
                ..Load::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("mixer-1.eu_west").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a:b").is_err());
        assert!(NodeId::new(&"x".repeat(65)).is_err());
        let err = NodeId::new("a b").expect_err("space");
        assert!(err.to_string().contains("\"a b\""), "{err}");
        let a = NodeId::random().expect("random");
        let b = NodeId::random().expect("random");
        assert_ne!(a, b);
        assert!(NodeId::new(a.as_str()).is_ok(), "{a}");
    }

    #[test]
    fn node_info_round_trips_and_tolerates_missing_load_fields() {
        let mut info = NodeInfo::new(NodeId::new("n1").expect("id"), "ws://10.0.0.1:8080/", 500);
        info.load.rooms = 3;
        info.state = NodeState::Draining;
        let json = serde_json::to_string(&info).expect("encode");
        assert!(json.contains("\"state\":\"draining\""), "{json}");
        let back: NodeInfo = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, info);
        let older: NodeInfo = serde_json::from_str(
            r#"{"id":"n2","url":"ws://x/","version":"0.0.1","state":"active","load":{"rooms":2}}"#,
        )
        .expect("decode");
        assert_eq!(older.load.rooms, 2);
        assert_eq!(older.load.capacity, 0);
    }

    #[test]
    fn cost_counts_encodes_decodes_and_sends() {
        let load = Load {
            rooms: 2,
            participants: 10,
            talkers: 3,
            ..Load::default()
        };
        assert_eq!(load.cost(), 2 + 6 + 10);
    }
}
