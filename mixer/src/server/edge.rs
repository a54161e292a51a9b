//! This node as an *edge* for rooms mixed on other nodes (`--edge`): one upstream link per room
//! to the node that mixes it (or to `--edge-upstream`, a parent in a tree of mixers), carrying
//! every local member of the room as a numbered session (see `protocol/README.md`,
//! "Node-to-node link").
//!
//! ```text
//!  client ──ws──▶ connection ──EdgeSeat──▶ EdgeRoom ══ link (one per room) ══▶ upstream node
//!  client ◀──ws── writer ◀── Outbox ◀───── fan-out of Shared / Own / Send / Broadcast ◀══
//! ```
//!
//! Nothing is decoded or mixed here. Up, each member's audio and requests go to the upstream as
//! they came (tagged with the session). Down, the room's shared frame comes **once** per tick and
//! is handed to every member that hears the shared stream (the upstream says who does not, see
//! [`LinkKind::Stream`]); a talker's own frames, and messages for one member, come tagged with
//! its session. Members may themselves be sessions of a link from a node further down (a tree):
//! their outboxes relay into that link's hub, which gets each shared frame and broadcast once.
//!
//! When the link drops, the edge connects again (to the room's new node if it moved, found
//! through the fleet's registry) and attaches every session again with its latest resume
//! token: the same upstream resumes them, a new one seats them afresh. Members hear a gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mixer_protocol::link::{
    LINK_HEADER_LEN, LINK_PATH_PREFIX, LinkAttach, LinkDetach, LinkError, LinkHeader, LinkKind,
    parse_close, parse_stream,
};
use mixer_protocol::{AUDIO_HEADER_LEN, AudioHeader, ClientMessage, ErrorCode, LeaveReason};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, info, warn};

use super::fleet_rooms::{FleetRooms, Located, Purpose};
use super::link::LinkKey;
use super::link_hub::{HubSet, deliver_control};
use super::membership::Forwarded;
use super::metrics::Metrics;
use super::mixer_thread::SendError;
use super::outbox::{Closed, Outbox, Pushed};
use super::requests::RoomRequest;
use super::ws_writer::WireFrame;
use crate::engine::ParticipantId;

/// A room's link closes this long after its last member left (a member coming back soon
/// finds it open).
const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// The first wait before connecting again after a link failed; it doubles up to
/// [`MAX_BACKOFF`], and starts over once a link has held for [`STABLE_LINK`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const STABLE_LINK: Duration = Duration::from_secs(5);

/// A link that brings nothing (not even a pong) for this long is given up and made again: a
/// cut network path shows as silence, not as an error.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the edge pings its upstream (the upstream answers with a pong).
const LINK_PING: Duration = Duration::from_secs(1);

/// Audio messages queued towards the upstream before more are dropped (about a second of 50
/// talkers).
const AUDIO_QUEUE: usize = 2500;

/// How long a client's `join` waits for the room's node to answer through the link.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How this node takes part in links (`--node-key-file`, `--edge`, `--edge-upstream`).
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The fleet's node key: signs this node's link tokens and checks those of others.
    pub key: Arc<LinkKey>,
    /// This node's id, named in its link tokens.
    pub node: String,
    /// Serve clients of rooms mixed elsewhere as an edge instead of redirecting them.
    pub edge: bool,
    /// Link through this node rather than straight to a room's owner (a tree of mixers). On a
    /// node outside a fleet, every room is relayed there.
    pub upstream: Option<String>,
    /// This node's own public URL (a room placed on this node while it relays it is linked
    /// to here).
    pub public_url: Option<String>,
}

/// The answer to a session's attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Seated in the room with this id (its `joined` has been passed on).
    Seated(ParticipantId),
    /// Refused (its `error` has been passed on).
    Refused,
}

/// Why a session cannot be attached at all.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// This node is shutting down.
    #[error("this node is shutting down")]
    Stopping,
}

/// Why a member could not be seated through an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeJoinError {
    /// This node is shutting down.
    #[error(transparent)]
    Stopping(#[from] EdgeError),
    /// The room's node refused it; its error went to the member's outbox.
    #[error("the room's node refused the member")]
    Refused,
    /// The room's node did not answer in time.
    #[error(
        "the node that mixes the room did not answer this edge within {} s; try again",
        ATTACH_TIMEOUT.as_secs()
    )]
    TimedOut,
}

impl EdgeJoinError {
    /// The error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            EdgeJoinError::Stopping(_) => ErrorCode::ShuttingDown,
            EdgeJoinError::Refused | EdgeJoinError::TimedOut => ErrorCode::FleetUnavailable,
        }
    }
}

/// The rooms this node is an edge for.
#[derive(Debug)]
pub struct Edges {
    settings: LinkSettings,
    fleet: Option<Arc<FleetRooms>>,
    metrics: Arc<Metrics>,
    rooms: Mutex<HashMap<String, Arc<EdgeRoom>>>,
    shutdown: watch::Receiver<bool>,
    /// The links other nodes hold into this one, by (their node, room): see
    /// [`Edges::take_over_link`].
    served: Mutex<HashMap<(String, String), ServedLink>>,
}

/// A link another node holds into this one.
#[derive(Debug)]
struct ServedLink {
    generation: u64,
    /// Tells the link to end (its edge has made a new one).
    end: Arc<tokio::sync::Notify>,
    /// Turns true once the link has ended and its sessions are suspended.
    ended: watch::Receiver<bool>,
}

impl ServedTicket {
    /// The link's sessions are suspended: a newer link of the same edge may resume them.
    pub fn suspended(&self) {
        let _ = self.ended.send(true);
    }
}

/// A link's place among those this node serves (see [`Edges::take_over_link`]).
#[derive(Debug)]
pub struct ServedTicket {
    key: (String, String),
    generation: u64,
    /// Notified when a newer link from the same node for the same room replaces this one.
    pub end: Arc<tokio::sync::Notify>,
    ended: watch::Sender<bool>,
}

impl Edges {
    /// No rooms yet. Links end when `shutdown` turns true.
    pub fn new(
        settings: LinkSettings,
        fleet: Option<Arc<FleetRooms>>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Edges {
        Edges {
            settings,
            fleet,
            metrics,
            rooms: Mutex::new(HashMap::new()),
            shutdown,
            served: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a link from `node` for `room`. An edge whose link dropped makes a new one,
    /// maybe before this node has seen the old one go: the old one is told to end, and this
    /// waits (at most a second) until its sessions are suspended, so that the new link's
    /// attaches resume them instead of seating them afresh.
    pub async fn take_over_link(&self, node: &str, room: &str) -> ServedTicket {
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let key = (node.to_owned(), room.to_owned());
        let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(tokio::sync::Notify::new());
        let (ended, ended_rx) = watch::channel(false);
        let old = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.clone(),
                ServedLink {
                    generation,
                    end: end.clone(),
                    ended: ended_rx,
                },
            );
        if let Some(mut old) = old {
            old.end.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(1), old.ended.wait_for(|e| *e)).await;
        }
        ServedTicket {
            key,
            generation,
            end,
            ended,
        }
    }

    /// A served link has ended (and said when its sessions were suspended).
    pub fn link_ended(&self, ticket: ServedTicket) {
        ticket.suspended();
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if served
            .get(&ticket.key)
            .is_some_and(|s| s.generation == ticket.generation)
        {
            served.remove(&ticket.key);
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LinkSettings {
        &self.settings
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<EdgeRoom>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rooms this node is an edge for now.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    /// Attaches a member to `room` through the room's link (made if this node has none yet):
    /// its messages and frames will go to `outbox`. `hops` is how many links are already
    /// between the member and this node (0 for a client of this node's own). The answer comes
    /// on the receiver, once the room's node has seated or refused it.
    pub fn attach(
        self: &Arc<Self>,
        room: &str,
        attach: LinkAttach,
        outbox: Arc<Outbox>,
        hops: u8,
    ) -> Result<(EdgeSeat, oneshot::Receiver<Attached>), EdgeError> {
        if *self.shutdown.borrow() {
            return Err(EdgeError::Stopping);
        }
        let mut rooms = self.rooms();
        let edge_room = match rooms.get(room) {
            Some(existing) => existing.clone(),
            None => {
                let (edge_room, control, audio) = EdgeRoom::new(room);
                let edge_room = Arc::new(edge_room);
                rooms.insert(room.to_owned(), edge_room.clone());
                info!(room, "relaying a room as an edge");
                tokio::spawn(run_link(edge_room.clone(), self.clone(), control, audio));
                edge_room
            }
        };
        let (tell, answer) = oneshot::channel();
        let session = edge_room.add_session(attach, outbox, hops, tell);
        drop(rooms);
        Ok((
            EdgeSeat {
                room: edge_room,
                session,
                id: ParticipantId(0),
                left: false,
            },
            answer,
        ))
    }

    /// Attaches a member of this node's own (a client, a player) to `room` and waits (at most
    /// [`ATTACH_TIMEOUT`]) for the room's node to seat it.
    pub async fn seat(
        self: &Arc<Self>,
        room: &str,
        attach: LinkAttach,
        outbox: Arc<Outbox>,
    ) -> Result<EdgeSeat, EdgeJoinError> {
        let (mut seat, answer) = self.attach(room, attach, outbox, 0)?;
        match tokio::time::timeout(ATTACH_TIMEOUT, answer).await {
            Ok(Ok(Attached::Seated(id))) => {
                seat.seated(id);
                Ok(seat)
            }
            Ok(Ok(Attached::Refused)) | Ok(Err(_)) => {
                seat.forget();
                Err(EdgeJoinError::Refused)
            }
            Err(_) => {
                seat.leave(LeaveReason::Disconnected);
                Err(EdgeJoinError::TimedOut)
            }
        }
    }

    /// Forgets `room` if it still has no member (under the registry's lock, so no attach can
    /// slip in); returns whether it did.
    fn retire(&self, room: &Arc<EdgeRoom>) -> bool {
        let mut rooms = self.rooms();
        let mut state = room.state();
        if !state.sessions.is_empty() {
            return false;
        }
        state.retired = true;
        if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.name);
        }
        true
    }

    /// Where `room`'s link goes now: `--edge-upstream`, or the room's node in the fleet.
    async fn upstream(&self, room: &str) -> Result<String, String> {
        if let Some(url) = &self.settings.upstream {
            return Ok(url.clone());
        }
        let Some(fleet) = &self.fleet else {
            return Err("no fleet and no --edge-upstream: nowhere to link to".to_owned());
        };
        match fleet.locate(room, Purpose::Join, false).await {
            Ok(Located::Elsewhere { url }) => Ok(url),
            // The room came to this node (its owner failed and the fleet placed it here): the
            // members already attached keep their link, now to this node itself.
            Ok(Located::Here(_)) => self
                .settings
                .public_url
                .clone()
                .ok_or_else(|| "the room is placed on this node".to_owned()),
            Ok(Located::Nowhere) => Err("no node holds the room".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// The link URL of `room` on the node whose public URL is `base`.
pub fn link_url(base: &str, room: &str) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    if base.starts_with("wss://") {
        return Err(format!(
            "{base}: links over wss:// are not supported yet; give the nodes ws:// URLs on a private network"
        ));
    }
    if !base.starts_with("ws://") {
        return Err(format!("{base}: not a ws:// URL"));
    }
    Ok(format!("{base}{LINK_PATH_PREFIX}{room}"))
}

/// One member of an edge room.
#[derive(Debug)]
struct EdgeSession {
    outbox: Arc<Outbox>,
    /// What it was attached with (its resume token kept up to date, for attaching it again).
    attach: LinkAttach,
    /// Links between it and this node.
    hops: u8,
    /// Its `joined` has come: it gets the room's messages and frames.
    seated: bool,
    /// It hears the shared frames (the upstream says when not).
    hears_shared: bool,
    /// The sequence number its next frame continues with (a jump sets the marker bit).
    next_sequence: Option<u16>,
    /// A `redirect` came for it: the room moved, and the close after it is not for its client.
    moving: bool,
    /// Who waits for the answer to its first attach.
    answer: Option<oneshot::Sender<Attached>>,
}

#[derive(Debug)]
struct EdgeState {
    sessions: HashMap<u32, EdgeSession>,
    next_session: u32,
    connected: bool,
    /// Since when the room has had no member.
    empty_since: Option<Instant>,
    /// Taken out of the registry: the link ends.
    retired: bool,
    /// The hops the link's token said when it was made.
    link_hops: u8,
}

/// A room this node relays: its members and the queues towards its upstream link.
#[derive(Debug)]
pub struct EdgeRoom {
    name: String,
    state: Mutex<EdgeState>,
    control: mpsc::UnboundedSender<Bytes>,
    audio: mpsc::Sender<Bytes>,
    connected: AtomicBool,
    /// Told when the link must be made again: a session deeper than its token said arrived,
    /// so the upstream must see the new depth (and refuse it past the limit: a ring of
    /// `--edge-upstream` ends there instead of looping).
    relink: tokio::sync::Notify,
}

/// What a member's `joined` or `redirect` says that the edge keeps.
#[derive(Debug, Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    participant_id: Option<u32>,
    #[serde(default)]
    resume_token: Option<String>,
}

fn peek(json: &[u8]) -> Option<Peek> {
    // Server messages put their type first; only the few the edge acts on are parsed.
    const ACTED_ON: [&[u8]; 3] = [
        b"{\"type\":\"joined\"",
        b"{\"type\":\"redirect\"",
        b"{\"type\":\"error\"",
    ];
    if !ACTED_ON.iter().any(|prefix| json.starts_with(prefix)) {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// What to do after a message from the upstream.
enum Next {
    Continue,
    /// The room moved: make the link again, to wherever it is now.
    Relink,
}

impl EdgeRoom {
    fn new(
        name: &str,
    ) -> (
        EdgeRoom,
        mpsc::UnboundedReceiver<Bytes>,
        mpsc::Receiver<Bytes>,
    ) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (audio, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        (
            EdgeRoom {
                name: name.to_owned(),
                state: Mutex::new(EdgeState {
                    sessions: HashMap::new(),
                    next_session: 1,
                    connected: false,
                    empty_since: None,
                    retired: false,
                    link_hops: 0,
                }),
                relink: tokio::sync::Notify::new(),
                control,
                audio,
                connected: AtomicBool::new(false),
            },
            control_rx,
            audio_rx,
        )
    }

    fn state(&self) -> MutexGuard<'_, EdgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_session(
        &self,
        attach: LinkAttach,
        outbox: Arc<Outbox>,
        hops: u8,
        answer: oneshot::Sender<Attached>,
    ) -> u32 {
        let mut state = self.state();
        let session = state.next_session;
        state.next_session = state.next_session.wrapping_add(1).max(1);
        let message = attach_message(session, &attach);
        state.sessions.insert(
            session,
            EdgeSession {
                outbox,
                attach,
                hops,
                seated: false,
                hears_shared: true,
                next_sequence: None,
                moving: false,
                answer: Some(answer),
            },
        );
        state.empty_since = None;
        // While the link is down the attach waits: every session is attached when it is up.
        if state.connected {
            if hops.saturating_add(1) > state.link_hops {
                self.relink.notify_one();
            } else {
                let _ = self.control.send(message);
            }
        }
        session
    }

    fn remove_session(&self, session: u32, detach: LinkDetach) {
        let mut state = self.state();
        if state.sessions.remove(&session).is_none() {
            return;
        }
        if state.sessions.is_empty() {
            state.empty_since = Some(Instant::now());
        }
        if state.connected {
            let body = serde_json::to_vec(&detach).unwrap_or_default();
            let _ = self.control.send(Bytes::from(
                LinkHeader {
                    kind: LinkKind::Detach,
                    session,
                }
                .message(&body),
            ));
        }
    }

    fn send_control(&self, kind: LinkKind, session: u32, body: &[u8]) {
        if self.connected.load(Ordering::Relaxed) {
            let _ = self
                .control
                .send(Bytes::from(LinkHeader { kind, session }.message(body)));
        }
    }

    /// The link is up: every session is attached (again), what was queued before is dropped.
    fn connected(
        &self,
        control: &mut mpsc::UnboundedReceiver<Bytes>,
        audio: &mut mpsc::Receiver<Bytes>,
    ) -> Vec<Bytes> {
        let mut state = self.state();
        while control.try_recv().is_ok() {}
        while audio.try_recv().is_ok() {}
        let mut messages = Vec::with_capacity(state.sessions.len());
        let mut ids: Vec<u32> = state.sessions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(session) = state.sessions.get_mut(&id) else {
                continue;
            };
            if session.seated || session.moving {
                // Seated before: taken back where it is, or seated afresh by a new owner.
                session.attach.rejoin = true;
            }
            session.moving = false;
            messages.push(attach_message(id, &session.attach));
        }
        state.connected = true;
        self.connected.store(true, Ordering::Relaxed);
        messages
    }

    /// The link dropped: members hear nothing until it is back.
    fn disconnected(&self) {
        let mut state = self.state();
        state.connected = false;
        self.connected.store(false, Ordering::Relaxed);
        for session in state.sessions.values_mut() {
            session.hears_shared = true;
            session.next_sequence = None;
        }
    }

    /// Acts on one message from the upstream.
    fn on_down(&self, message: &Bytes, metrics: &Metrics) -> Result<Next, LinkError> {
        let header = LinkHeader::parse(message)?;
        let body = message.slice(LINK_HEADER_LEN..);
        let mut state = self.state();
        let mut next = Next::Continue;
        match header.kind {
            LinkKind::Send => {
                let json = utf8(header.kind, body)?;
                let Some(session) = state.sessions.get_mut(&header.session) else {
                    return Ok(next);
                };
                match peek(json.as_bytes()) {
                    Some(p) if p.kind == "joined" => {
                        session.seated = true;
                        if let Some(token) = p.resume_token {
                            session.attach.resume = Some(token);
                        }
                        if let (Some(answer), Some(id)) = (session.answer.take(), p.participant_id)
                        {
                            let _ = answer.send(Attached::Seated(ParticipantId(id)));
                        }
                    }
                    Some(p) if p.kind == "error" && !session.seated => {
                        if let Some(answer) = session.answer.take() {
                            let _ = answer.send(Attached::Refused);
                        }
                    }
                    Some(p) if p.kind == "redirect" => {
                        // The room moved: its members follow it through this edge, with the
                        // resume tokens the old node gave them, rather than leave it.
                        session.moving = true;
                        session.seated = false;
                        if let Some(token) = p.resume_token {
                            session.attach.resume = Some(token);
                        }
                        next = Next::Relink;
                        return Ok(next);
                    }
                    _ => {}
                }
                session.outbox.push_control(json);
            }
            LinkKind::Broadcast => {
                let json = utf8(header.kind, body)?;
                let left_out = state
                    .sessions
                    .get(&header.session)
                    .and_then(|s| s.outbox.relayed().cloned());
                let mut links = HubSet::default();
                for (id, session) in &state.sessions {
                    if *id != header.session && session.seated {
                        deliver_control(&session.outbox, &json, &mut links, left_out.as_ref());
                    }
                }
            }
            LinkKind::Close => {
                let (code, reason) = parse_close(&body)?;
                let moving = state
                    .sessions
                    .get(&header.session)
                    .is_some_and(|s| s.moving);
                if moving {
                    return Ok(next);
                }
                if let Some(mut session) = state.sessions.remove(&header.session) {
                    if let Some(answer) = session.answer.take() {
                        let _ = answer.send(Attached::Refused);
                    }
                    session.outbox.close(Closed::Close {
                        code,
                        reason: static_reason(reason),
                    });
                    if state.sessions.is_empty() {
                        state.empty_since = Some(Instant::now());
                    }
                }
            }
            LinkKind::Shared => {
                let sequence = sequence_of(header.kind, &body)?;
                let mut links = HubSet::default();
                // Framed for the WebSocket once for all this edge's listeners of the frame.
                let mut plain: Option<WireFrame> = None;
                let mut marked: Option<WireFrame> = None;
                for session in state.sessions.values_mut() {
                    if !session.seated || !session.hears_shared {
                        continue;
                    }
                    if let Some(relay) = session.outbox.relayed() {
                        if links.insert(&relay.hub) {
                            relay.hub.shared(&body);
                        }
                        continue;
                    }
                    let gap = session.next_sequence != Some(sequence);
                    session.next_sequence = Some(sequence.wrapping_add(1));
                    let frame = if gap {
                        marked
                            .get_or_insert_with(|| WireFrame::of(&with_marker(&body)))
                            .clone()
                    } else {
                        plain.get_or_insert_with(|| WireFrame::of(&body)).clone()
                    };
                    push_frame(&session.outbox, frame, metrics);
                }
            }
            LinkKind::Own => {
                let sequence = sequence_of(header.kind, &body)?;
                if let Some(session) = state.sessions.get_mut(&header.session)
                    && session.seated
                {
                    session.next_sequence = Some(sequence.wrapping_add(1));
                    push_frame(&session.outbox, WireFrame::of(&body), metrics);
                }
            }
            LinkKind::Stream => {
                let shared = parse_stream(&body)?;
                if let Some(session) = state.sessions.get_mut(&header.session) {
                    session.hears_shared = shared;
                    if let Some(relay) = session.outbox.relayed() {
                        relay.hub.stream(relay.session, shared);
                    }
                }
            }
            kind => {
                return Err(LinkError::Body {
                    kind,
                    reason: "an edge takes no upward messages from its upstream".to_owned(),
                });
            }
        }
        Ok(next)
    }
}

fn push_frame(outbox: &Outbox, frame: WireFrame, metrics: &Metrics) {
    let len = frame.len();
    match outbox.push_audio(frame) {
        Pushed::Queued => {}
        Pushed::DroppedOldest => metrics.send_queue_drops_total.inc(),
        Pushed::Closed => return,
    }
    metrics.audio_frames_out_total.inc();
    metrics.audio_bytes_out_total.inc_by(len as u64);
}

fn utf8(kind: LinkKind, body: Bytes) -> Result<Utf8Bytes, LinkError> {
    Utf8Bytes::try_from(body).map_err(|_| LinkError::Body {
        kind,
        reason: "not UTF-8".to_owned(),
    })
}

fn sequence_of(kind: LinkKind, frame: &[u8]) -> Result<u16, LinkError> {
    let header: [u8; AUDIO_HEADER_LEN] = frame
        .get(..AUDIO_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| LinkError::Body {
            kind,
            reason: "shorter than an audio header".to_owned(),
        })?;
    AudioHeader::from_bytes(header)
        .map(|h| h.sequence)
        .map_err(|e| LinkError::Body {
            kind,
            reason: e.to_string(),
        })
}

/// The frame with its marker bit set (a member's first frame after a gap).
fn with_marker(frame: &Bytes) -> Bytes {
    let mut marked = BytesMut::from(&frame[..]);
    marked[1] |= mixer_protocol::Flags::MARKER.0;
    marked.freeze()
}

fn attach_message(session: u32, attach: &LinkAttach) -> Bytes {
    let body = serde_json::to_vec(attach).unwrap_or_default();
    Bytes::from(
        LinkHeader {
            kind: LinkKind::Attach,
            session,
        }
        .message(&body),
    )
}

/// A close reason from the upstream as the same text with a static lifetime (a close frame's
/// reason here is a `&'static str`): every reason a node of this server gives (its own texts,
/// and the error codes an eviction closes with) comes through unchanged; another text becomes
/// a general one.
fn static_reason(reason: &str) -> &'static str {
    const KNOWN: [&str; 15] = [
        "bye",
        "redirect",
        "removed",
        "room closed",
        "resume failed",
        "slow consumer",
        "server shutting down",
        "moved",
        "join failed",
        "join timeout",
        "ping timeout",
        "control flood",
        "message too large",
        "protocol error",
        "invalid UTF-8",
    ];
    KNOWN
        .into_iter()
        .chain(ErrorCode::ALL.iter().map(|code| code.as_str()))
        .find(|known| *known == reason)
        .unwrap_or("closed by the room's node")
}

/// A member's seat in a room relayed by this edge.
#[derive(Debug)]
pub struct EdgeSeat {
    room: Arc<EdgeRoom>,
    session: u32,
    id: ParticipantId,
    left: bool,
}

impl EdgeSeat {
    /// Its id in the room (0 until seated).
    pub fn id(&self) -> ParticipantId {
        self.id
    }

    /// Records the id the room's node gave it.
    pub fn seated(&mut self, id: ParticipantId) {
        self.id = id;
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room.name
    }

    /// Forwards one audio frame (header and payload) to the room's node.
    pub fn send_audio(&self, frame: &[u8]) -> Forwarded {
        if !self.room.connected.load(Ordering::Relaxed) {
            return Forwarded::Backlogged;
        }
        let message = Bytes::from(
            LinkHeader {
                kind: LinkKind::Audio,
                session: self.session,
            }
            .message(frame),
        );
        match self.room.audio.try_send(message) {
            Ok(()) => Forwarded::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Forwarded::Backlogged,
            Err(mpsc::error::TrySendError::Closed(_)) => Forwarded::Stopped,
        }
    }

    /// Forwards a room request; the answer comes as the room's messages. While the link is
    /// being made again the request cannot go anywhere, and the member is told so.
    pub fn request(&self, request: &RoomRequest) -> Result<(), SendError> {
        if !self.room.connected.load(Ordering::Relaxed) {
            return Err(SendError::Relinking);
        }
        self.forward(&request.to_client());
        Ok(())
    }

    /// Forwards a client message the room's node answers (a room request, `record`).
    pub fn forward(&self, message: &ClientMessage) {
        self.room.send_control(
            LinkKind::Request,
            self.session,
            message.to_json().as_bytes(),
        );
    }

    /// Forwards a client message as it came (a link's session relaying one further up).
    pub fn forward_raw(&self, json: &[u8]) {
        self.room
            .send_control(LinkKind::Request, self.session, json);
    }

    /// Leaves the room.
    pub fn leave(mut self, reason: LeaveReason) {
        self.detach(LinkDetach {
            reason,
            suspend: false,
        });
    }

    /// Keeps the seat for the room's resume window: the client may resume at any node.
    pub fn suspend(mut self) {
        self.detach(LinkDetach {
            reason: LeaveReason::Disconnected,
            suspend: true,
        });
    }

    /// Lets the seat go without telling anyone (the room's node refused it).
    pub fn forget(mut self) {
        self.left = true;
        let mut state = self.room.state();
        state.sessions.remove(&self.session);
        if state.sessions.is_empty() {
            state.empty_since = Some(Instant::now());
        }
    }

    fn detach(&mut self, detach: LinkDetach) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        self.room.remove_session(self.session, detach);
    }
}

impl Drop for EdgeSeat {
    fn drop(&mut self) {
        self.detach(LinkDetach {
            reason: LeaveReason::Disconnected,
            suspend: false,
        });
    }
}

/// A room's link, for as long as the room has members here: connect, attach everyone, pass
/// messages both ways; on failure, wait and connect again.
async fn run_link(
    room: Arc<EdgeRoom>,
    edges: Arc<Edges>,
    mut control: mpsc::UnboundedReceiver<Bytes>,
    mut audio: mpsc::Receiver<Bytes>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut shutdown = edges.shutdown.clone();
    loop {
        if *shutdown.borrow() || room.state().retired {
            return;
        }
        let since = Instant::now();
        match connect(&room, &edges).await {
            Ok(ws) => {
                let outcome = pump(&room, &edges, ws, &mut control, &mut audio).await;
                room.disconnected();
                if matches!(outcome, Pumped::Retired | Pumped::Shutdown) {
                    return;
                }
                if since.elapsed() >= STABLE_LINK || matches!(outcome, Pumped::Relink) {
                    backoff = MIN_BACKOFF;
                }
                if matches!(outcome, Pumped::Relink) {
                    continue;
                }
            }
            Err(error) => {
                debug!(room = %room.name, %error, "link to the room's node failed");
                let idle = room
                    .state()
                    .empty_since
                    .is_some_and(|t| t.elapsed() >= IDLE_CLOSE);
                if idle && edges.retire(&room) {
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type LinkStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(room: &EdgeRoom, edges: &Edges) -> Result<LinkStream, String> {
    let base = edges.upstream(&room.name).await?;
    let url = link_url(&base, &room.name)?;
    let hops = {
        let state = room.state();
        state
            .sessions
            .values()
            .map(|s| s.hops.saturating_add(1))
            .max()
            .unwrap_or(1)
    };
    let token = edges
        .settings
        .key
        .mint(&edges.settings.node, &room.name, hops)
        .map_err(|e| e.to_string())?;
    room.state().link_hops = hops;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    info!(room = %room.name, %url, "link up");
    Ok(ws)
}

enum Pumped {
    Dropped,
    Relink,
    Retired,
    Shutdown,
}

async fn pump(
    room: &Arc<EdgeRoom>,
    edges: &Edges,
    ws: LinkStream,
    control: &mut mpsc::UnboundedReceiver<Bytes>,
    audio: &mut mpsc::Receiver<Bytes>,
) -> Pumped {
    let (mut sink, mut stream) = ws.split();
    let attaches = room.connected(control, audio);
    for message in attaches {
        if sink.feed(Message::Binary(message)).await.is_err() {
            return Pumped::Dropped;
        }
    }
    if sink.flush().await.is_err() {
        return Pumped::Dropped;
    }
    let mut shutdown = edges.shutdown.clone();
    let mut housekeeping = tokio::time::interval(LINK_PING);
    let mut last_seen = Instant::now();
    let outcome = loop {
        tokio::select! {
            message = stream.next() => {
                last_seen = Instant::now();
                match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        match room.on_down(&bytes, &edges.metrics) {
                            Ok(Next::Continue) => {}
                            Ok(Next::Relink) => break Pumped::Relink,
                            Err(error) => {
                                warn!(room = %room.name, %error, "malformed message on a link; making it again");
                                break Pumped::Dropped;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Pumped::Dropped,
                    Some(Ok(_)) => {}
                }
            }
            Some(message) = control.recv() => {
                if sink.send(Message::Binary(message)).await.is_err() {
                    break Pumped::Dropped;
                }
            }
            Some(message) = audio.recv() => {
                if sink.feed(Message::Binary(message)).await.is_err() {
                    break Pumped::Dropped;
                }
                // Everything else queued goes in the same write.
                while let Ok(message) = audio.try_recv() {
                    if sink.feed(Message::Binary(message)).await.is_err() {
                        break;
                    }
                }
                if sink.flush().await.is_err() {
                    break Pumped::Dropped;
                }
            }
            _ = housekeeping.tick() => {
                let idle = room.state().empty_since.is_some_and(|t| t.elapsed() >= IDLE_CLOSE);
                if idle && edges.retire(room) {
                    info!(room = %room.name, "no members left; link closed");
                    break Pumped::Retired;
                }
                if last_seen.elapsed() > LINK_TIMEOUT {
                    warn!(room = %room.name, "link silent; making it again");
                    break Pumped::Dropped;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break Pumped::Dropped;
                }
            }
            () = room.relink.notified() => break Pumped::Relink,
            _ = shutdown.changed() => break Pumped::Shutdown,
        }
    };
    let _ = sink.send(Message::Close(None)).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_of_the_room_s_node_come_through_unchanged() {
        for reason in [
            "redirect",
            "room closed",
            "slow consumer",
            "server shutting down",
        ] {
            assert_eq!(static_reason(reason), reason);
        }
        for code in ErrorCode::ALL {
            assert_eq!(static_reason(code.as_str()), code.as_str());
        }
        assert_eq!(static_reason("made up"), "closed by the room's node");
    }

    #[test]
    fn link_urls_are_the_node_s_url_and_the_room() {
        assert_eq!(
            link_url("ws://10.0.0.1:8080/", "standup").as_deref(),
            Ok("ws://10.0.0.1:8080/link/standup")
        );
        assert_eq!(
            link_url("ws://10.0.0.1:8080", "a").as_deref(),
            Ok("ws://10.0.0.1:8080/link/a")
        );
        assert!(link_url("wss://10.0.0.1/", "a").is_err());
        assert!(link_url("http://10.0.0.1/", "a").is_err());
    }
}
