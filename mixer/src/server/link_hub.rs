//! The send side of a node-to-node link (see `protocol/README.md`, "Node-to-node link"): one
//! bounded queue of link messages towards the node at the other end, shared by every session the
//! link carries.
//!
//! A participant whose client is on an edge node has an [`Outbox`](super::outbox::Outbox) that
//! relays into its link's hub (see [`Relay`]): what the room sends it is tagged with its session
//! and queued here, so the mixer thread, the requests and the operator's actions reach it
//! through the same calls as any other participant. What is the same for many sessions — the
//! tick's shared frame, a message for the whole room — goes into the hub once, by the room's
//! fan-out ([`super::room_fanout`]) or the edge's ([`super::edge`]), and the far end hands it to
//! each of its members: the sender's cost does not grow with the members behind a link.
//!
//! The queue is bounded in bytes, in two steps, as a client's outbox is: past
//! [`AUDIO_BACKLOG_BYTES`] queued, new audio is dropped (and counted): audio that late is worth
//! nothing, and a burst of control (the `joined` of hundreds of sessions, each with the
//! room's roster) must not cost the link. Past [`HUB_LIMIT_BYTES`] the far end is not reading
//! at all, and the link is closed (the far end reconnects and its sessions resume). It is never
//! waited for: the mixer thread never blocks on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use mixer_protocol::link::{LINK_HEADER_LEN, LinkHeader, LinkKind, close_body};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::Outbox;

/// Bytes a link's queue may hold before the link is closed as too slow. A thousand sessions
/// attaching at once to a room of a thousand is about 40 MB of `joined` (each holds the
/// roster): that must fit.
pub const HUB_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes queued past which new audio is dropped instead of queued: about a second of a room
/// with fifty talkers' own frames.
pub const AUDIO_BACKLOG_BYTES: usize = 512 * 1024;

#[derive(Debug, Default)]
struct HubState {
    queue: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
}

/// One link's queue of messages towards the far end, and its writer's wake-up.
#[derive(Debug)]
pub struct LinkHub {
    state: Mutex<HubState>,
    notify: Notify,
    limit: usize,
    /// Link messages queued, and their bytes (for the metrics and the tests' checks).
    sent_messages: AtomicU64,
    sent_bytes: AtomicU64,
    /// Audio messages dropped because the queue was backlogged.
    dropped_audio: AtomicU64,
}

/// Where a relayed participant's messages go: its link's hub, under its session number.
#[derive(Debug, Clone)]
pub struct Relay {
    /// The link.
    pub hub: Arc<LinkHub>,
    /// The session on that link.
    pub session: u32,
}

impl Default for LinkHub {
    fn default() -> Self {
        LinkHub::new(HUB_LIMIT_BYTES)
    }
}

impl LinkHub {
    /// An open hub holding at most `limit` bytes.
    pub fn new(limit: usize) -> LinkHub {
        LinkHub {
            state: Mutex::new(HubState::default()),
            notify: Notify::new(),
            limit,
            sent_messages: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            dropped_audio: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // Every critical section is a few VecDeque calls: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message built from a header and up to two body parts; false if the hub is
    /// closed (or has just closed because the far end fell behind).
    fn push(&self, kind: LinkKind, session: u32, parts: [&[u8]; 2]) -> bool {
        let len = LINK_HEADER_LEN + parts[0].len() + parts[1].len();
        let mut message = BytesMut::with_capacity(len);
        message.put_slice(&LinkHeader { kind, session }.to_bytes());
        message.put_slice(parts[0]);
        message.put_slice(parts[1]);
        let audio = matches!(kind, LinkKind::Shared | LinkKind::Own);
        let queued = {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            if audio && state.bytes + len > self.limit.min(AUDIO_BACKLOG_BYTES) {
                // Behind: this frame would arrive too late to be worth sending.
                self.dropped_audio.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if state.bytes + len > self.limit {
                // The far end is not reading: close rather than grow or block the sender.
                state.closed = true;
                state.queue.clear();
                false
            } else {
                state.bytes += len;
                state.queue.push_back(message.freeze());
                true
            }
        };
        if queued {
            self.sent_messages.fetch_add(1, Ordering::Relaxed);
            self.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        self.notify.notify_one();
        queued
    }

    /// A message for one session (a server message's JSON, or up: a request's).
    pub fn send(&self, kind: LinkKind, session: u32, body: &[u8]) -> bool {
        self.push(kind, session, [body, &[]])
    }

    /// A message for every session of the link but `except` (0: all of them).
    pub fn broadcast(&self, except: u32, json: &[u8]) -> bool {
        self.push(LinkKind::Broadcast, except, [json, &[]])
    }

    /// Closes one session's connection at the far end.
    pub fn close_session(&self, session: u32, code: u16, reason: &str) -> bool {
        self.push(LinkKind::Close, session, [&close_body(code, reason), &[]])
    }

    /// The tick's shared frame, once for the whole link.
    pub fn shared(&self, frame: &[u8]) -> bool {
        self.push(LinkKind::Shared, 0, [frame, &[]])
    }

    /// A frame for one session alone.
    pub fn own(&self, session: u32, frame: &[u8]) -> bool {
        self.push(LinkKind::Own, session, [frame, &[]])
    }

    /// Whether `session` hears the shared frames from now on.
    pub fn stream(&self, session: u32, shared: bool) -> bool {
        self.push(LinkKind::Stream, session, [&[u8::from(shared)], &[]])
    }

    /// Moves every queued message into `into`; returns whether the hub is closed.
    pub fn drain(&self, into: &mut Vec<Bytes>) -> bool {
        let mut state = self.lock();
        into.extend(state.queue.drain(..));
        state.bytes = 0;
        state.closed
    }

    /// Waits until something is queued or the hub closes.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops accepting messages (the link is going away); wakes the writer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Whether the hub is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Audio messages dropped so far because the queue was backlogged.
    pub fn dropped_audio(&self) -> u64 {
        self.dropped_audio.load(Ordering::Relaxed)
    }

    /// Messages and bytes queued so far.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.sent_messages.load(Ordering::Relaxed),
            self.sent_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Gives a message for many members to one of them: into its outbox, or, for a member behind a
/// link, into that link once (the first of its members met does it; `links` remembers), leaving
/// out `left_out`'s session if it is behind the same link. The far end hands it to the rest.
pub fn deliver_control(
    outbox: &Outbox,
    json: &Utf8Bytes,
    links: &mut HubSet,
    left_out: Option<&Relay>,
) {
    match outbox.relayed() {
        None => {
            outbox.push_control(json.clone());
        }
        Some(relay) => {
            if links.insert(&relay.hub) {
                let skip = left_out
                    .filter(|l| Arc::ptr_eq(&l.hub, &relay.hub))
                    .map_or(0, |l| l.session);
                relay.hub.broadcast(skip, json.as_bytes());
            }
        }
    }
}

/// The hubs a fan-out has already sent one message to, so each gets it once (a room has a few
/// links, so a short list beats a set).
#[derive(Debug, Default)]
pub struct HubSet(Vec<Arc<LinkHub>>);

impl HubSet {
    /// Adds `hub`; false if it was already there.
    pub fn insert(&mut self, hub: &Arc<LinkHub>) -> bool {
        if self.0.iter().any(|h| Arc::ptr_eq(h, hub)) {
            return false;
        }
        self.0.push(hub.clone());
        true
    }

    /// Takes the hubs out, leaving the set empty (its memory kept).
    pub fn drain(&mut self) -> impl Iterator<Item = Arc<LinkHub>> + '_ {
        self.0.drain(..)
    }

    /// Whether no hub is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixer_protocol::link::parse_close;

    #[test]
    fn messages_keep_their_order_and_carry_their_session() {
        let hub = LinkHub::new(1024);
        assert!(hub.send(LinkKind::Send, 7, b"{\"type\":\"pong\"}"));
        assert!(hub.shared(b"frame"));
        assert!(hub.stream(7, false));
        assert!(hub.close_session(7, 4307, "redirect"));
        let mut out = Vec::new();
        assert!(!hub.drain(&mut out));
        let headers: Vec<_> = out
            .iter()
            .map(|m| LinkHeader::parse(m).expect("a header"))
            .collect();
        assert_eq!(
            headers
                .iter()
                .map(|h| (h.kind, h.session))
                .collect::<Vec<_>>(),
            [
                (LinkKind::Send, 7),
                (LinkKind::Shared, 0),
                (LinkKind::Stream, 7),
                (LinkKind::Close, 7)
            ]
        );
        assert_eq!(&out[1][LINK_HEADER_LEN..], b"frame");
        assert_eq!(&out[2][LINK_HEADER_LEN..], &[0]);
        assert_eq!(
            parse_close(&out[3][LINK_HEADER_LEN..]),
            Ok((4307, "redirect"))
        );
        assert_eq!(hub.sent().0, 4);
    }

    #[test]
    fn a_far_end_that_does_not_read_closes_the_hub_instead_of_growing_it() {
        let hub = LinkHub::new(100);
        let message = [b' '; 40];
        assert!(hub.send(LinkKind::Send, 1, &message));
        assert!(hub.send(LinkKind::Send, 1, &message));
        // The third would pass the limit: the hub closes and forgets what it held.
        assert!(!hub.send(LinkKind::Send, 1, &message));
        assert!(hub.is_closed());
        assert!(!hub.send(LinkKind::Send, 1, b"{}"));
        let mut out = Vec::new();
        assert!(hub.drain(&mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_backlogged_link_drops_new_audio_and_keeps_its_control() {
        let hub = LinkHub::new(HUB_LIMIT_BYTES);
        let frame = [0u8; 1000];
        let mut queued = 0;
        while hub.dropped_audio() == 0 {
            assert!(hub.shared(&frame));
            queued += 1;
        }
        // The last one went over the backlog and was dropped.
        assert_eq!(queued - 1, AUDIO_BACKLOG_BYTES / (LINK_HEADER_LEN + 1000));
        // Control still goes in (a roster burst is not audio), and the link stays open.
        assert!(hub.send(LinkKind::Send, 1, &[b' '; 100_000]));
        assert!(!hub.is_closed());
        let mut out = Vec::new();
        assert!(!hub.drain(&mut out));
        assert_eq!(
            out.len(),
            queued,
            "the frames queued, and the control message"
        );
        // Drained: audio goes in again.
        assert!(hub.own(1, &frame));
        assert_eq!(hub.dropped_audio(), 1);
    }
}
