//! Which node takes a new room: the least-loaded active node with room to spare.
//!
//! Pure: it sees only the node list it is given, so any node computes the same answer from the
//! same list. That matters when two nodes place one room at once (two clients joining it at two
//! nodes): with the same view they pick the same node, and the claim, which is atomic, settles
//! the rare case where their views differ.

use super::node::{NodeInfo, NodeState};

/// A node whose busiest mixer thread leaves less than this share of its tick unused takes no
/// new rooms, whatever its counts say: the counts are a model of the cost, the headroom is the
/// measurement (a room of unusual settings, a noisy neighbour on the machine).
pub const MIN_HEADROOM: f32 = 0.1;

/// The node that should take `room`, or `None` when no node can (none active, every one at its
/// capacity or out of tick headroom).
///
/// The least loaded is the one with the lowest [cost](super::Load::cost) relative to its
/// capacity, compared exactly (in integers), so nodes with more cores, which announce more
/// capacity, get proportionally more rooms. Ties, which are the rule between nodes that
/// announced their load before a burst of new rooms, go to the node that ranks first for this
/// room by rendezvous hashing (highest hash of room and node id): a burst spreads over the tied
/// nodes instead of all landing on one, and every node breaks the tie the same way. Equal hashes
/// (which a 64-bit hash makes theoretical) fall back to the node id.
pub fn place<'a>(nodes: &'a [NodeInfo], room: &str) -> Option<&'a NodeInfo> {
    nodes.iter().filter(|node| eligible(node)).min_by(|a, b| {
        // a.cost / a.capacity vs b.cost / b.capacity, without division or floats.
        let left = u128::from(a.load.cost()) * u128::from(b.load.capacity);
        let right = u128::from(b.load.cost()) * u128::from(a.load.capacity);
        left.cmp(&right)
            .then_with(|| rank(room, b).cmp(&rank(room, a)))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// Whether `node` may take a new room at all.
fn eligible(node: &NodeInfo) -> bool {
    node.state == NodeState::Active
        && node.load.cost() < u64::from(node.load.capacity)
        && node.load.tick_headroom >= MIN_HEADROOM
}

/// The rendezvous weight of `node` for `room`: FNV-1a over both, finished with SplitMix64's
/// mixer so that room names that differ in one character still spread. A fixed function rather
/// than std's hasher, whose output may change between Rust releases: nodes of different builds
/// must agree during a rolling upgrade.
fn rank(room: &str, node: &NodeInfo) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in room
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(node.id.as_str().bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::node::{Load, NodeId};

    fn node(id: &str, rooms: u32, capacity: u32) -> NodeInfo {
        let mut info = NodeInfo::new(
            NodeId::new(id).expect("id"),
            format!("ws://{id}/"),
            capacity,
        );
        info.load.rooms = rooms;
        info
    }

    fn counts(nodes: &[NodeInfo], placed: &[&NodeInfo]) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| placed.iter().filter(|p| p.id == n.id).count())
            .collect()
    }

    #[test]
    fn the_least_loaded_active_node_with_capacity_wins() {
        let mut nodes = vec![node("a", 5, 100), node("b", 2, 100), node("c", 1, 100)];
        nodes[2].state = NodeState::Draining;
        assert_eq!(place(&nodes, "r").map(|n| n.id.as_str()), Some("b"));
        // Relative to capacity: 10 of 400 is less than 2 of 20.
        nodes[0].load = Load {
            rooms: 10,
            capacity: 400,
            tick_headroom: 1.0,
            ..Load::default()
        };
        nodes[1].load.capacity = 20;
        assert_eq!(place(&nodes, "r").map(|n| n.id.as_str()), Some("a"));
        // Out of tick headroom: skipped whatever its counts.
        nodes[0].load.tick_headroom = 0.05;
        assert_eq!(place(&nodes, "r").map(|n| n.id.as_str()), Some("b"));
        // Full (cost at capacity), draining, no headroom: nowhere to go.
        nodes[1].load.rooms = 20;
        assert_eq!(place(&nodes, "r"), None);
        assert_eq!(place(&[], "r"), None);
    }

    #[test]
    fn ties_are_broken_the_same_way_whatever_the_order() {
        let nodes = vec![node("a", 0, 100), node("b", 0, 100), node("c", 0, 100)];
        let mut reversed = nodes.clone();
        reversed.reverse();
        for i in 0..50 {
            let room = format!("room-{i}");
            assert_eq!(
                place(&nodes, &room).map(|n| &n.id),
                place(&reversed, &room).map(|n| &n.id)
            );
        }
    }

    /// A burst placed on a stale view (every node announced zero rooms) still spreads, through
    /// the rendezvous tie-break alone.
    #[test]
    fn a_burst_on_a_stale_view_spreads_over_tied_nodes() {
        let nodes = vec![node("a", 0, 1000), node("b", 0, 1000), node("c", 0, 1000)];
        let rooms: Vec<String> = (0..300).map(|i| format!("room-{i}")).collect();
        let placed: Vec<&NodeInfo> = rooms
            .iter()
            .map(|room| place(&nodes, room).expect("placed"))
            .collect();
        let counts = counts(&nodes, &placed);
        // Binomial(300, 1/3) has a standard deviation of 8: within 25 is three of them.
        assert!(
            counts.iter().all(|&c| (75..=125).contains(&c)),
            "{counts:?}"
        );
    }

    /// With fresh loads (each node's count updated after every placement, as a node announces
    /// right after a claim), equal nodes end within one room of each other.
    #[test]
    fn fresh_loads_balance_equal_nodes_exactly() {
        let mut nodes = vec![node("a", 0, 1000), node("b", 0, 1000), node("c", 0, 1000)];
        for i in 0..300 {
            let id = place(&nodes, &format!("room-{i}"))
                .expect("placed")
                .id
                .clone();
            if let Some(n) = nodes.iter_mut().find(|n| n.id == id) {
                n.load.rooms += 1;
            }
        }
        let rooms: Vec<u32> = nodes.iter().map(|n| n.load.rooms).collect();
        assert_eq!(rooms, vec![100, 100, 100]);
    }
}
