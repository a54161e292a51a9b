//! The upstream end of a node-to-node link: `GET /link/ROOM` from an edge (see
//! `protocol/README.md`, "Node-to-node link", and [`super::edge`] for the other end).
//!
//! The link's token is checked against the fleet's node key; then each session the edge
//! attaches is seated like a client of this node's own. If this node mixes the room, that is a
//! [`Membership`](super::membership::Membership) whose outbox relays into the link's hub
//! ([`super::link_hub`]): the mixer thread sends the shared frame and broadcasts once per link.
//! If another node mixes it and this node is an edge too, the sessions become members of this
//! node's own edge room, one level further up a tree of mixers.
//!
//! When the link drops, its sessions are suspended for [`LINK_RESUME_WINDOW`]: an edge that
//! comes back in time takes them back with their resume tokens, and one that does not has its
//! members released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mixer_protocol::link::{
    LINK_AUDIENCE, LINK_HEADER_LEN, LinkAttach, LinkClaims, LinkHeader, LinkKind, MAX_LINK_HOPS,
    parse_attach, parse_detach,
};
use mixer_protocol::{
    AUDIO_HEADER_LEN, AudioHeader, ClientMessage, ErrorCode, JoinRequest, LeaveReason,
    ServerMessage, close_code, parse_client_message, validate_chat,
};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use super::connection::{Context, Transport};
use super::edge::{Edges, ServedTicket};
use super::fleet_rooms::{LeaseGate, Located, Purpose};
use super::http::{self, Prefixed};
use super::link_hub::{LinkHub, Relay};
use super::membership::{Identity, Joiner};
use super::outbox::Outbox;
use super::requests::{RoomRequest, chat_timestamp};
use super::room_fanout::wire;
use super::seat::Seat;
use crate::auth::KeyError;

/// How long the sessions of a link that dropped keep their seats, waiting for their edge.
pub const LINK_RESUME_WINDOW: Duration = Duration::from_secs(5);

/// How long a link token is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A link that brings nothing (not even a ping, sent every second) for this long is closed.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// The fleet's node key: signs this node's link tokens, checks other nodes'.
pub struct LinkKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.write_str("LinkKey")
    }
}

/// Why a link token is refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkAuthError {
    /// No `Authorization: Bearer`.
    #[error("a link needs Authorization: Bearer <link token>")]
    Missing,
    /// The token does not verify (signature, expiry, audience, form).
    #[error("link token refused: {0}")]
    Invalid(String),
    /// The token is for another room.
    #[error("the link token is for room {token:?}, not {asked:?}")]
    WrongRoom {
        /// The token's room.
        token: String,
        /// The room of the request.
        asked: String,
    },
}

impl LinkKey {
    /// The key from a secret of at least [`crate::auth::MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> LinkKey {
        LinkKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Loads the key from `--node-key-file`.
    pub fn from_file(path: &std::path::Path) -> Result<LinkKey, KeyError> {
        Ok(LinkKey::new(&crate::auth::read_secret(path)?))
    }

    /// A token for `node`'s link for `room`, carrying clients `hops` links away.
    pub fn mint(
        &self,
        node: &str,
        room: &str,
        hops: u8,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = LinkClaims {
            iss: node.to_owned(),
            aud: LINK_AUDIENCE.to_owned(),
            room: room.to_owned(),
            hops,
            iat: now,
            exp: now + TOKEN_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a link token for `room`.
    pub fn verify(&self, token: &str, room: &str) -> Result<LinkClaims, LinkAuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = crate::auth::LEEWAY.as_secs();
        validation.set_audience(&[LINK_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims = jsonwebtoken::decode::<LinkClaims>(token, &self.decoding, &validation)
            .map_err(|e| LinkAuthError::Invalid(e.to_string()))?
            .claims;
        if claims.room != room {
            return Err(LinkAuthError::WrongRoom {
                token: claims.room,
                asked: room.to_owned(),
            });
        }
        Ok(claims)
    }
}

/// Where a link's sessions are seated.
enum Upstream {
    /// This node mixes the room (under this lease gate, in a fleet).
    Owner(Option<Arc<LeaseGate>>),
    /// Another node does: this node relays the sessions further up as an edge.
    Relay(Arc<Edges>),
}

/// Serves `GET /link/ROOM` (its head already read into `head`) until the link ends.
pub async fn serve<S: Transport>(
    mut stream: S,
    head: Vec<u8>,
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(edges) = context.edges.clone() else {
        let _ = http::respond(
            &mut stream,
            "403 Forbidden",
            "this node takes no links (it has no --node-key-file)\n",
        )
        .await;
        return;
    };
    if let Err(error) = JoinRequest::validate_room_name(room) {
        let _ = http::respond(&mut stream, "400 Bad Request", &format!("{error}\n")).await;
        return;
    }
    let claims = http::bearer_of(&head)
        .ok_or(LinkAuthError::Missing)
        .and_then(|token| edges.settings().key.verify(&token, room));
    let claims = match claims {
        Ok(claims) => claims,
        Err(error) => {
            context.metrics.count_error(ErrorCode::InvalidToken);
            debug!(%peer, room, %error, "link refused");
            let _ = http::respond(&mut stream, "401 Unauthorized", &format!("{error}\n")).await;
            return;
        }
    };
    if claims.hops > MAX_LINK_HOPS {
        let _ = http::respond(
            &mut stream,
            "409 Conflict",
            &format!(
                "a link {} hops from its clients; at most {MAX_LINK_HOPS} (is there a ring of --edge-upstream?)\n",
                claims.hops
            ),
        )
        .await;
        return;
    }
    let upstream = match locate(context, room).await {
        Ok(upstream) => upstream,
        Err(why) => {
            let _ =
                http::respond(&mut stream, "503 Service Unavailable", &format!("{why}\n")).await;
            return;
        }
    };
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let upgrade =
        tokio_tungstenite::accept_async_with_config(Prefixed::new(head, stream), Some(ws_config));
    let ws = match tokio::time::timeout(context.settings.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        _ => {
            debug!(%peer, room, "link handshake failed");
            return;
        }
    };
    info!(%peer, room, node = %claims.iss, hops = claims.hops, "link from an edge");
    let ticket = edges.take_over_link(&claims.iss, room).await;
    context.metrics.links.inc();
    LinkSession {
        room: room.to_owned(),
        hops: claims.hops,
        context: context.clone(),
        upstream,
        hub: Arc::new(LinkHub::default()),
        seats: HashMap::new(),
    }
    .run(ws, shutdown, &ticket)
    .await;
    edges.link_ended(ticket);
    context.metrics.links.dec();
    info!(%peer, room, node = %claims.iss, "link ended");
}

/// Where a link's sessions go: this node's own room, or a link further up.
async fn locate(context: &Arc<Context>, room: &str) -> Result<Upstream, String> {
    let relay = |why: &str| match context.relaying_edges() {
        Some(edges) => Ok(Upstream::Relay(edges)),
        None => Err(format!("{why}, and this node is not an edge (--edge)")),
    };
    let Some(fleet) = &context.fleet else {
        return match context
            .edges
            .as_ref()
            .and_then(|e| e.settings().upstream.as_ref())
        {
            Some(_) => relay("rooms are relayed to --edge-upstream"),
            None => Ok(Upstream::Owner(None)),
        };
    };
    match fleet
        .locate(room, Purpose::Join, context.pool.is_draining())
        .await
    {
        Ok(Located::Here(gate)) => Ok(Upstream::Owner(Some(gate))),
        Ok(Located::Elsewhere { url }) => relay(&format!("room {room:?} is mixed at {url}")),
        Ok(Located::Nowhere) => Err(format!("there is no room {room:?}")),
        Err(error) => Err(error.to_string()),
    }
}

type Ws<S> = WebSocketStream<Prefixed<S>>;

/// One link from an edge: its sessions' seats here, and the hub of what goes back.
struct LinkSession {
    room: String,
    hops: u8,
    context: Arc<Context>,
    upstream: Upstream,
    hub: Arc<LinkHub>,
    seats: HashMap<u32, Seat>,
}

impl LinkSession {
    async fn run<S: Transport>(
        mut self,
        ws: Ws<S>,
        mut shutdown: watch::Receiver<bool>,
        ticket: &ServedTicket,
    ) {
        let (sink, mut stream) = ws.split();
        let mut writer = tokio::spawn(write_loop(sink, self.hub.clone()));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut last_seen = Instant::now();
        let mut stopping = false;
        // A finished JoinHandle must not be polled again (tokio panics), so its end is noted.
        let mut writer_done = false;
        loop {
            tokio::select! {
                message = stream.next() => {
                    last_seen = Instant::now();
                    match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            if let Err(error) = self.on_message(bytes).await {
                                warn!(room = %self.room, %error, "closing a link that sent a malformed message");
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
                _ = housekeeping.tick() => {
                    if last_seen.elapsed() > LINK_TIMEOUT || self.hub.is_closed() {
                        break;
                    }
                }
                _ = &mut writer => {
                    writer_done = true;
                    break;
                }
                // The edge has made a new link for the room (this one's end not seen yet).
                () = ticket.end.notified() => break,
                _ = shutdown.changed() => {
                    stopping = true;
                    break;
                }
            }
        }
        let seats = std::mem::take(&mut self.seats);
        if stopping {
            for (session, seat) in seats {
                let message =
                    ServerMessage::error(ErrorCode::ShuttingDown, "server is shutting down");
                self.hub
                    .send(LinkKind::Send, session, wire(&message).as_bytes());
                self.hub
                    .close_session(session, close_code::GOING_AWAY, "server shutting down");
                seat.leave(LeaveReason::ServerShutdown);
            }
        } else {
            // The edge may come back for them (its link dropped, or it is making a new one).
            for seat in seats.into_values() {
                seat.suspend(LINK_RESUME_WINDOW, None);
            }
        }
        ticket.suspended();
        self.hub.close();
        if !writer_done
            && tokio::time::timeout(Duration::from_secs(1), &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    }

    async fn on_message(&mut self, message: Bytes) -> Result<(), String> {
        let header = LinkHeader::parse(&message).map_err(|e| e.to_string())?;
        let body = message.slice(LINK_HEADER_LEN..);
        let session = header.session;
        match header.kind {
            LinkKind::Attach => {
                let attach = parse_attach(&body).map_err(|e| e.to_string())?;
                if session == 0 || self.seats.contains_key(&session) {
                    return Err(format!("attach of session {session}, which is in use"));
                }
                self.attach(session, attach).await;
            }
            LinkKind::Detach => {
                let detach = parse_detach(&body).map_err(|e| e.to_string())?;
                if let Some(seat) = self.seats.remove(&session) {
                    if detach.suspend {
                        seat.suspend(self.context.settings.resume_window, None);
                    } else {
                        seat.leave(detach.reason);
                    }
                }
            }
            LinkKind::Audio => {
                let Some(seat) = self.seats.get(&session) else {
                    return Ok(());
                };
                let Some(header) = body
                    .get(..AUDIO_HEADER_LEN)
                    .and_then(|h| <[u8; AUDIO_HEADER_LEN]>::try_from(h).ok())
                    .and_then(|h| AudioHeader::from_bytes(h).ok())
                else {
                    self.context.metrics.reject_audio("link_malformed");
                    return Ok(());
                };
                let len = body.len() as u64;
                seat.send_audio(header, body, Instant::now());
                self.context.metrics.audio_frames_in_total.inc();
                self.context.metrics.audio_bytes_in_total.inc_by(len);
            }
            LinkKind::Request => self.request(session, body).await,
            kind => return Err(format!("{kind:?} does not travel up a link")),
        }
        Ok(())
    }

    fn tell(&self, session: u32, code: ErrorCode, message: impl Into<String>) {
        self.context.metrics.count_error(code);
        let message = ServerMessage::error(code, message);
        self.hub
            .send(LinkKind::Send, session, wire(&message).as_bytes());
    }

    async fn attach(&mut self, session: u32, attach: LinkAttach) {
        if let Err(error) = attach.format.validate() {
            return self.tell(session, error.code(), error.to_string());
        }
        let outbox = Arc::new(Outbox::relay(Relay {
            hub: self.hub.clone(),
            session,
        }));
        let gate = match &self.upstream {
            Upstream::Relay(edges) => {
                let hops = self.hops;
                match edges.attach(&self.room, attach, outbox, hops) {
                    Ok((seat, _answer)) => {
                        self.seats.insert(session, Seat::Edge(seat));
                    }
                    Err(error) => self.tell(session, ErrorCode::ShuttingDown, error.to_string()),
                }
                return;
            }
            Upstream::Owner(gate) => gate.clone(),
        };
        // A room that moved away since the link was made: the edge must find it again.
        if let (Some(fleet), Some(_)) = (&self.context.fleet, &gate)
            && fleet.held(&self.room).is_none()
        {
            self.hub.close();
            return;
        }
        let identity = Identity::from_link(&attach.identity);
        let pool = &self.context.pool;
        if let Some(token) = &attach.resume {
            let bound = matches!(identity, Identity::Token(_)).then_some(&identity);
            if let Some(membership) =
                pool.resume(token, &self.room, &attach.format, bound, outbox.clone())
            {
                self.seats.insert(session, Seat::Local(membership));
                return;
            }
            if !attach.rejoin {
                return self.tell(
                    session,
                    ErrorCode::ResumeFailed,
                    format!(
                        "nothing to resume in room {:?} with that token (unknown, expired, already resumed, another identity's or in another format); join again without resume",
                        self.room
                    ),
                );
            }
        }
        let joiner = Joiner {
            identity,
            address: attach.address,
            name: attach.name,
            mode: attach.mode,
            role: attach.role,
            format: attach.format,
            outbox,
        };
        match pool.join(&self.room, joiner, gate) {
            Ok(membership) => {
                self.seats.insert(session, Seat::Local(membership));
            }
            Err(refused) => self.tell(session, refused.code(), refused.to_string()),
        }
    }

    async fn request(&mut self, session: u32, body: Bytes) {
        let Some(seat) = self.seats.get(&session) else {
            return;
        };
        let (room, id) = match seat {
            // One more edge up: passed on as it came.
            Seat::Edge(edge) => return edge.forward_raw(&body),
            Seat::Local(local) => (local.room().to_owned(), local.id()),
        };
        let Ok(text) = std::str::from_utf8(&body) else {
            return self.tell(session, ErrorCode::BadMessage, "not UTF-8");
        };
        let message = match parse_client_message(text) {
            Ok(message) => message,
            Err(error) => return self.tell(session, error.code(), error.to_string()),
        };
        match message {
            ClientMessage::Record { recording } => {
                match super::recording::moderator_request(&self.context, &room, id, recording).await
                {
                    Ok(Some(reply)) => {
                        self.hub
                            .send(LinkKind::Send, session, wire(&reply).as_bytes());
                    }
                    Ok(None) => {}
                    Err((code, message)) => self.tell(session, code, message),
                }
            }
            message => {
                if let ClientMessage::Chat { text } = &message
                    && let Err(error) = validate_chat(text)
                {
                    return self.tell(session, error.code(), error.to_string());
                }
                match RoomRequest::from_client(message, chat_timestamp()) {
                    Some(request) => {
                        if let Err(error) = seat.request(request, Instant::now()) {
                            let (code, message) = error.refusal();
                            self.tell(session, code, message);
                        }
                    }
                    None => self.tell(
                        session,
                        ErrorCode::BadMessage,
                        "only room requests travel over a link",
                    ),
                }
            }
        }
    }
}

/// Sends the hub's messages to the edge as they come, and pings it.
async fn write_loop<S: Transport>(mut sink: SplitSink<Ws<S>, Message>, hub: Arc<LinkHub>) {
    let mut batch = Vec::new();
    let mut ping = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut send_ping = false;
        tokio::select! {
            () = hub.wait() => {}
            _ = ping.tick() => send_ping = true,
        }
        let closed = hub.drain(&mut batch);
        if send_ping && sink.feed(Message::Ping(Bytes::new())).await.is_err() {
            return;
        }
        for message in batch.drain(..) {
            if sink.feed(Message::Binary(message)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        if closed {
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    }
}
