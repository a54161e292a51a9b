//! One client connection: HTTP routing, the WebSocket session, and its reader and writer.
//!
//! The reader (this task) parses what the client sends and forwards audio to the client's mixer
//! thread; a separate writer task drains the client's [`Outbox`] into the socket and sends
//! keepalive pings. Neither ever blocks a mixer thread or another client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use mixer_protocol::AudioHeader;
use mixer_protocol::{
    AUDIO_HEADER_LEN, AudioFrame, CONTROL_FLOOD_DROPS_PER_SECOND, ClientMessage, ErrorCode,
    FrameSize, INVALID_MESSAGE_COST, LeaveReason, MAX_AUDIO_FRAME, MAX_CONTROL_MESSAGE,
    RedirectReason, SAMPLE_RATE, ServerMessage, close_code, parse_client_message,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};
use tracing::{debug, info};

use super::Settings;
use super::address_limit::{AddressLimits, ConnectionPlaces};
use super::admin;
use super::budget::{ControlBudget, TokenBucket, Verdict};
use super::edge::{EdgeJoinError, Edges};
use super::fleet_rooms::{FleetRooms, LeaseGate, Located, Purpose};
use super::http::{self, Prefixed, Route};
use super::membership::{Forwarded, Identity, Joiner};
use super::metrics::Metrics;
use super::mixer_thread::SendError;
use super::outbox::{Closed, Outbox};
use super::pool::MixerPool;
use super::requests::RoomRequest;
use super::room_fanout::wire;
use super::seat::Seat;
use super::ws_writer::{Duplex, write_loop};
use crate::auth::{AuthError, Grant, Verifier};
use crate::engine::pcm::PcmRate;
use mixer_protocol::link::LinkAttach;

/// tungstenite reads the socket; the writer task writes it (see [`super::ws_writer`]).
type Ws<S> = WebSocketStream<Duplex<Prefixed<S>>>;

/// The byte stream a connection runs over: a TCP socket, or TLS over one. The session code is
/// generic over it rather than an enum of the two, so plain TCP pays nothing for TLS.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for S {}

/// What a connection task needs from the server.
#[derive(Debug)]
pub struct Context {
    /// Server settings.
    pub settings: Settings,
    /// The mixer threads.
    pub pool: MixerPool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether `/metrics` is served on this (public) port.
    pub public_metrics: bool,
    /// Limits per client address.
    pub addresses: Arc<AddressLimits>,
    /// The access-token verifier; `None`: the server is open (no tokens).
    pub auth: Option<Verifier>,
    /// The body of `GET /healthz` when healthy (it says so when the server runs without
    /// authentication on a public address).
    pub health: &'static str,
    /// In a fleet (`--redis-url`): where rooms are mixed, and this node's room leases.
    pub fleet: Option<Arc<FleetRooms>>,
    /// The password of Icecast-style sources on a server without tokens.
    pub source_password: Option<Arc<str>>,
    /// Rooms being recorded (`--record-dir`).
    pub recorders: Arc<super::recording::Recorders>,
    /// Node-to-node links and the rooms this node relays as an edge (`--node-key-file`).
    pub edges: Option<Arc<super::edge::Edges>>,
}

impl Context {
    /// This node's edge rooms, if it relays rooms mixed elsewhere (`--edge`) rather than
    /// redirecting their clients.
    pub fn relaying_edges(&self) -> Option<Arc<Edges>> {
        self.edges.clone().filter(|edges| edges.settings().edge)
    }
}

/// Serves one accepted connection (after its TLS handshake, on a TLS port) until it ends.
/// `places` are its places under the connection limits: given back when it ends, or kept by its
/// participant while suspended.
pub async fn serve<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    places: ConnectionPlaces,
    context: Arc<Context>,
    shutdown: watch::Receiver<bool>,
) {
    let settings = &context.settings;
    let head = tokio::time::timeout(settings.handshake_timeout, http::read_head(&mut stream)).await;
    let (bytes, route) = match head {
        Ok(Ok(head)) => head,
        Ok(Err(error)) => {
            debug!(%peer, %error, "connection closed before a request");
            return;
        }
        Err(_) => {
            debug!(%peer, "no request within the handshake timeout");
            return;
        }
    };
    let reply = match route {
        Route::WebSocket => None,
        Route::Health if context.pool.is_draining() => {
            Some(("503 Service Unavailable", "draining\n"))
        }
        Route::Health => Some(("200 OK", context.health)),
        Route::Admin => {
            admin::serve(&mut stream, &bytes, &context).await;
            return;
        }
        Route::Listen(room) => {
            super::listen::serve(stream, &bytes, &room, peer, &context, shutdown).await;
            return;
        }
        Route::Link(room) => {
            super::link::serve(stream, bytes, &room, peer, &context, shutdown).await;
            return;
        }
        Route::Source(room) => {
            super::source::serve(stream, bytes, &room, peer, &context, shutdown).await;
            return;
        }
        Route::App(file) => {
            let _ = super::web::serve(&mut stream, &file).await;
            return;
        }
        Route::NotFound => Some((
            "404 Not Found",
            "not found: WebSocket clients connect to /\n",
        )),
        Route::BadRequest => Some(("400 Bad Request", "bad request\n")),
        Route::Metrics if context.public_metrics => {
            let body = context.metrics.render();
            let _ =
                http::respond_with(&mut stream, "200 OK", http::METRICS_CONTENT_TYPE, &body).await;
            return;
        }
        Route::Metrics => Some((
            "404 Not Found",
            "metrics are served on the metrics listener\n",
        )),
    };
    if let Some((status, body)) = reply {
        let _ = http::respond(&mut stream, status, body).await;
        return;
    }
    // tungstenite zero-fills the free part of its read buffer (128 KiB by default) before every
    // read, and a read happens for each 20 ms audio frame: with the default that memset cost more
    // than the read itself. Client messages are small; a bigger one just takes several reads.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(settings.max_message_bytes))
        .max_frame_size(Some(settings.max_message_bytes));
    let url_token = http::access_token(&bytes);
    let upgrade = tokio_tungstenite::accept_async_with_config(
        Duplex::new(Prefixed::new(bytes, stream)),
        Some(ws_config),
    );
    let ws = match tokio::time::timeout(settings.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            debug!(%peer, %error, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    debug!(%peer, "WebSocket connected");
    context.metrics.connections.inc();
    Session::new(peer, context.clone(), places, url_token)
        .run(ws, shutdown)
        .await;
    context.metrics.connections.dec();
}

/// Where a join goes.
enum Joining {
    /// The room is mixed here (under this lease gate, in a fleet).
    Here(Option<Arc<LeaseGate>>),
    /// The room is mixed elsewhere; this node relays it as an edge.
    Edge(Arc<Edges>),
}

/// Why the session loop ended.
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket failed or closed without a close frame.
    Disconnected,
    /// Nothing arrived within the ping timeout.
    TimedOut,
    /// The client fell too far behind.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// A protocol violation that leaves the stream unusable.
    Fatal,
}

struct Session {
    peer: SocketAddr,
    /// Since when the connection has been without a room (connected, or left), if it is.
    unjoined_since: Option<Instant>,
    /// Its places under the connection limits (see [`ConnectionPlaces`]).
    places: Option<ConnectionPlaces>,
    context: Arc<Context>,
    outbox: Arc<Outbox>,
    membership: Option<Seat>,
    /// The PCM rate of a `pcm16` client (its frames are checked by size, not as Opus).
    pcm: Option<PcmRate>,
    /// The frame size of the client's format (its room's, once it is seated).
    frame: FrameSize,
    /// Audio: one second of burst, and 10 % over real time sustained.
    rate: TokenBucket,
    /// Every text message draws on it (see [`budget`]).
    budget: ControlBudget,
    /// Chat: a burst of 5 messages, then 1 a second.
    chat_rate: TokenBucket,
    /// The connection's access token: from its URL or header, or the last `join` that carried
    /// one and was accepted.
    token: Option<String>,
}

impl Session {
    fn new(
        peer: SocketAddr,
        context: Arc<Context>,
        places: ConnectionPlaces,
        token: Option<String>,
    ) -> Session {
        let settings = &context.settings;
        let outbox = Arc::new(Outbox::new(
            settings.send_queue_frames,
            settings.slow_client_drops,
        ));
        let frame = FrameSize::default();
        Session {
            peer,
            unjoined_since: Some(Instant::now()),
            places: Some(places),
            context,
            outbox,
            membership: None,
            pcm: None,
            frame,
            rate: audio_rate(frame),
            budget: ControlBudget::default(),
            chat_rate: TokenBucket::new(5.0, 1.0),
            token,
        }
    }

    /// What the presented token grants: `token` (from the message) or else the connection's.
    /// `Ok(None)` on a server without tokens.
    fn grant(&self, token: Option<&str>) -> Result<Option<Grant>, AuthError> {
        let Some(verifier) = &self.context.auth else {
            return Ok(None);
        };
        let token = token.or(self.token.as_deref()).ok_or(AuthError::Missing)?;
        verifier.verify(token).map(Some)
    }

    /// Refuses a request for want of a token, counting it.
    fn refuse_auth(&mut self, error: AuthError) {
        self.context
            .metrics
            .auth_failures_total
            .with_label_values(&[error.code().as_str()])
            .inc();
        self.send_error(error.code(), error.to_string());
    }

    async fn run<S: Transport>(mut self, ws: Ws<S>, mut shutdown: watch::Receiver<bool>) {
        let settings = self.context.settings.clone();
        let mut stream = ws;
        let sink = stream
            .get_mut()
            .hand_over(self.outbox.clone())
            .expect("a new session's socket has not been handed over yet");
        let mut writer = tokio::spawn(write_loop(
            sink,
            self.outbox.clone(),
            settings.ping_interval,
        ));
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut last_seen = Instant::now();
        // A finished JoinHandle must not be polled again.
        let mut writer_done = false;
        let end = loop {
            tokio::select! {
                message = stream.next() => {
                    let now = Instant::now();
                    last_seen = now;
                    match message {
                        Some(Ok(message)) => {
                            if let Some(end) = self.on_message(message, now).await {
                                break end;
                            }
                        }
                        Some(Err(error)) => break self.on_read_error(error),
                        None => break End::Disconnected,
                    }
                }
                _ = housekeeping.tick() => {
                    if self.outbox.closed() == Some(Closed::SlowConsumer) {
                        break End::SlowConsumer;
                    }
                    if self.membership.is_some() {
                        self.unjoined_since = None;
                    } else if !settings.unjoined_timeout.is_zero()
                        && self
                            .unjoined_since
                            .get_or_insert_with(Instant::now)
                            .elapsed()
                            > settings.unjoined_timeout
                    {
                        self.send_error(ErrorCode::JoinTimeout, format!(
                            "no room joined within {} s; closing (connect again to join)",
                            settings.unjoined_timeout.as_secs()
                        ));
                        self.outbox.close(Closed::Close {
                            code: close_code::POLICY_VIOLATION,
                            reason: "join timeout",
                        });
                        break End::Fatal;
                    }
                    if last_seen.elapsed() > settings.ping_timeout {
                        self.send_error(ErrorCode::PingTimeout, format!(
                            "nothing received for {} s (not even a pong); closing",
                            settings.ping_timeout.as_secs()
                        ));
                        self.outbox.close(Closed::Close {
                            code: close_code::POLICY_VIOLATION,
                            reason: PING_TIMEOUT,
                        });
                        break End::TimedOut;
                    }
                }
                _ = &mut writer => {
                    writer_done = true;
                    break if self.outbox.closed() == Some(Closed::SlowConsumer) {
                        End::SlowConsumer
                    } else {
                        End::Disconnected
                    };
                }
                _ = shutdown.changed() => {
                    self.send_error(ErrorCode::ShuttingDown, "server is shutting down");
                    self.outbox.close(Closed::Close {
                        code: close_code::GOING_AWAY,
                        reason: "server shutting down",
                    });
                    break End::Shutdown;
                }
            }
        };
        // A client that stopped reading often also trips a socket error (its buffers are full);
        // the slow-consumer verdict is the real cause.
        let end = if self.outbox.closed() == Some(Closed::SlowConsumer) {
            End::SlowConsumer
        } else {
            end
        };
        let reason = match end {
            End::ClientClosed => LeaveReason::Left,
            End::Disconnected | End::Fatal => LeaveReason::Disconnected,
            End::TimedOut => LeaveReason::TimedOut,
            End::SlowConsumer => LeaveReason::SlowConsumer,
            End::Shutdown => LeaveReason::ServerShutdown,
        };
        if let Some(membership) = self.membership.take() {
            info!(peer = %self.peer, participant = %membership.id(), room = membership.room(),
                  ?reason, dropped_frames = self.outbox.dropped(), "connection ended");
            // A connection that dropped (rather than closed or was closed by the server) may
            // come back: keep the participant for the resume window.
            let window = self.context.settings.resume_window;
            // Someone the server itself closed (removed, a failed join or resume, a protocol
            // violation, a flood) is not coming back.
            // A ping timeout is the one close of the server's that a dropped network causes.
            let closed_by_server = matches!(end, End::Fatal)
                || match self.outbox.closed() {
                    None
                    | Some(Closed::Close {
                        reason: PING_TIMEOUT,
                        ..
                    }) => false,
                    Some(_) => true,
                };
            if matches!(reason, LeaveReason::Disconnected | LeaveReason::TimedOut)
                && !window.is_zero()
                && !closed_by_server
            {
                // The ghost keeps this connection's places until it resumes or its window
                // ends: a client cannot pile up ghosts past the connection limits.
                membership.suspend(window, self.places.take());
            } else {
                membership.leave(reason);
            }
        }
        self.outbox.close(Closed::Close {
            code: close_code::NORMAL,
            reason: "bye",
        });
        // Give the writer a moment to flush the error and close frame, then cut the socket.
        if !writer_done
            && tokio::time::timeout(Duration::from_secs(1), &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    }

    fn send_error(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.context.metrics.count_error(code);
        self.outbox
            .push_control(wire(&ServerMessage::error(code, message)));
    }

    /// Sends an error at most once a second per code (see [`Outbox::push_throttled_error`]).
    fn send_throttled_error(&mut self, code: ErrorCode, message: impl Into<String>) {
        let sent = self.outbox.push_throttled_error(code, Instant::now(), || {
            wire(&ServerMessage::error(code, message))
        });
        if sent {
            self.context.metrics.count_error(code);
        }
    }

    fn refuse_join(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.count_join_failure(code);
        self.send_error(code, message);
    }

    fn count_join_failure(&self, code: ErrorCode) {
        self.context
            .metrics
            .join_failures_total
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Counts a refused audio frame and tells the client (at most once a second per code).
    fn reject_audio(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.context.metrics.reject_audio(code.as_str());
        self.send_throttled_error(code, message);
    }

    fn on_read_error(&mut self, error: WsError) -> End {
        match error {
            WsError::Capacity(error) => {
                self.send_error(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "{error}; the limit is {} bytes",
                        self.context.settings.max_message_bytes
                    ),
                );
                self.outbox.close(Closed::Close {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: "message too large",
                });
                End::Fatal
            }
            // The peer went away without a closing handshake: a dropped connection, which may
            // come back and resume, not a protocol violation.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Disconnected,
            WsError::Protocol(error) => {
                debug!(peer = %self.peer, %error, "WebSocket protocol error");
                self.outbox.close(Closed::Close {
                    code: close_code::PROTOCOL_ERROR,
                    reason: "protocol error",
                });
                End::Fatal
            }
            WsError::Utf8(_) => {
                self.send_error(ErrorCode::BadMessage, "text frame is not valid UTF-8");
                self.outbox.close(Closed::Close {
                    code: close_code::INVALID_PAYLOAD,
                    reason: "invalid UTF-8",
                });
                End::Fatal
            }
            error => {
                debug!(peer = %self.peer, %error, "connection lost");
                End::Disconnected
            }
        }
    }

    async fn on_message(&mut self, message: Message, now: Instant) -> Option<End> {
        match message {
            Message::Text(text) => return self.on_text(text.as_str(), now).await,
            Message::Binary(bytes) => self.on_audio(bytes, now),
            Message::Close(_) => return Some(End::ClientClosed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        None
    }

    async fn on_text(&mut self, text: &str, now: Instant) -> Option<End> {
        if text.len() > MAX_CONTROL_MESSAGE {
            // As the protocol says: message_too_large closes the connection (1009).
            self.send_error(
                ErrorCode::MessageTooLarge,
                format!(
                    "control message of {} bytes exceeds {MAX_CONTROL_MESSAGE}",
                    text.len()
                ),
            );
            self.outbox.close(Closed::Close {
                code: close_code::MESSAGE_TOO_BIG,
                reason: "message too large",
            });
            return Some(End::Fatal);
        }
        let parsed = parse_client_message(text);
        let cost = parsed
            .as_ref()
            .map_or(INVALID_MESSAGE_COST, ClientMessage::budget_cost);
        let verdict = self.budget.pay(cost, now);
        // A joined client can always give its seat back: its `leave` is applied even when the
        // budget cannot pay for it (the seat is what the budget protects).
        let leaving = matches!(parsed, Ok(ClientMessage::Leave)) && self.membership.is_some();
        match (verdict, parsed) {
            (Verdict::Paid, Ok(message)) => self.on_control(message, now).await,
            (Verdict::Paid, Err(error)) => self.send_error(error.code(), error.to_string()),
            (Verdict::Dropped | Verdict::Flooding, Ok(message)) if leaving => {
                self.on_control(message, now).await;
            }
            (Verdict::Dropped, _) => {
                self.context
                    .metrics
                    .control_refused_total
                    .with_label_values(&["budget"])
                    .inc();
                self.send_throttled_error(
                    ErrorCode::ControlRateLimited,
                    "control messages exceed this connection's budget (see the protocol's \"Control budget\"); message dropped",
                );
            }
            (Verdict::Flooding, _) => {
                self.context
                    .metrics
                    .control_refused_total
                    .with_label_values(&["flood"])
                    .inc();
                self.send_error(
                    ErrorCode::ControlRateLimited,
                    format!(
                        "more than {CONTROL_FLOOD_DROPS_PER_SECOND} control messages dropped within a second; closing"
                    ),
                );
                self.outbox.close(Closed::Close {
                    code: close_code::POLICY_VIOLATION,
                    reason: "control flood",
                });
                return Some(End::Fatal);
            }
        }
        None
    }

    /// Where `room` is mixed, for a request of `purpose`: `Ok(None)` on a single server,
    /// `Ok(Some(gate))` when this fleet node mixes it. Otherwise the client has been answered
    /// (a `redirect`, `unknown_room` or `fleet_unavailable`) and `Err(())` says so.
    async fn locate(&mut self, room: &str, purpose: Purpose) -> Result<Option<Arc<LeaseGate>>, ()> {
        let Some(fleet) = self.context.fleet.clone() else {
            return Ok(None);
        };
        let located = fleet
            .locate(room, purpose, self.context.pool.is_draining())
            .await;
        self.answer_located(room, purpose, located)
    }

    /// Acts on where `room` is: `Ok(Some(gate))` when this node mixes it; otherwise answers the
    /// client (a `redirect`, `unknown_room` or `fleet_unavailable`) and returns `Err(())`.
    fn answer_located(
        &mut self,
        room: &str,
        purpose: Purpose,
        located: Result<Located, super::fleet_rooms::Unavailable>,
    ) -> Result<Option<Arc<LeaseGate>>, ()> {
        match located {
            Ok(Located::Here(gate)) => Ok(Some(gate)),
            Ok(Located::Elsewhere { url }) => {
                self.redirect(room, url, RedirectReason::OtherNode);
                Err(())
            }
            Ok(Located::Nowhere) => {
                self.send_error(ErrorCode::UnknownRoom, format!("there is no room {room:?}"));
                Err(())
            }
            Err(unavailable) => {
                if purpose == Purpose::Join {
                    self.count_join_failure(ErrorCode::FleetUnavailable);
                }
                self.send_error(ErrorCode::FleetUnavailable, unavailable.to_string());
                Err(())
            }
        }
    }

    /// Where `room` is mixed, for a join: here (`Ok(Joining::Here)`, with the lease gate in a
    /// fleet), or elsewhere with this node as an edge for it. Otherwise the client has been
    /// answered (a `redirect` or an error) and `Err(())` says so.
    async fn locate_join(&mut self, room: &str) -> Result<Joining, ()> {
        let edges = self.context.relaying_edges();
        let Some(fleet) = self.context.fleet.clone() else {
            // Outside a fleet, an edge relays every room to its --edge-upstream.
            return Ok(match edges {
                Some(edges) => Joining::Edge(edges),
                None => Joining::Here(None),
            });
        };
        let located = fleet
            .locate(room, Purpose::Join, self.context.pool.is_draining())
            .await;
        match (located, edges) {
            (Ok(Located::Elsewhere { .. }), Some(edges)) => Ok(Joining::Edge(edges)),
            (located, _) => self
                .answer_located(room, Purpose::Join, located)
                .map(Joining::Here),
        }
    }

    /// Seats the client in a room mixed on another node, through this node's link for the
    /// room (see [`super::edge`]): the room's node answers with `joined` or an error, which the
    /// link passes on to the client.
    async fn join_edge(&mut self, edges: &Arc<Edges>, room: &str, attach: LinkAttach) {
        match edges.seat(room, attach, self.outbox.clone()).await {
            Ok(seat) => {
                debug!(peer = %self.peer, room, participant = %seat.id(), "joined through this edge");
                self.membership = Some(Seat::Edge(seat));
            }
            // The room's error has reached the client already.
            Err(EdgeJoinError::Refused) => {}
            Err(error) => self.refuse_join(error.code(), error.to_string()),
        }
    }

    /// Sends the client to another node: a `redirect`, then the close (4307).
    fn redirect(&mut self, room: &str, url: String, reason: RedirectReason) {
        self.context
            .metrics
            .redirects_total
            .with_label_values(&[reason.as_str()])
            .inc();
        debug!(peer = %self.peer, room, %url, "redirecting");
        self.outbox.push_control(wire(&ServerMessage::Redirect {
            room: room.to_owned(),
            url,
            reason,
            resume_token: None,
        }));
        self.outbox.close(Closed::Close {
            code: close_code::REDIRECT,
            reason: "redirect",
        });
    }

    async fn on_control(&mut self, message: ClientMessage, now: Instant) {
        match message {
            ClientMessage::Join(request) => {
                if self.membership.is_some() {
                    return self.refuse_join(
                        ErrorCode::AlreadyJoined,
                        "this connection already joined a room; send leave first",
                    );
                }
                if let Err(error) = request.validate() {
                    return self.refuse_join(error.code(), error.to_string());
                }
                let ip = self.peer.ip();
                if !self.context.addresses.allow_join(ip, now) {
                    return self.refuse_join(
                        ErrorCode::RateLimited,
                        "too many joins from your address; wait a few seconds",
                    );
                }
                // Who is joining, by what name and in what role: from the token on a server
                // with keys, from the request on an open one.
                let (identity, name, role) = match self.grant(request.token.as_deref()) {
                    Err(error) => {
                        self.count_join_failure(error.code());
                        return self.refuse_auth(error);
                    }
                    Ok(Some(grant)) => match grant.admit(&request.room, request.role) {
                        Ok(role) => {
                            if let Some(token) = &request.token {
                                self.token = Some(token.clone());
                            }
                            (Identity::Token(Arc::from(grant.identity)), grant.name, role)
                        }
                        Err(error) => {
                            self.count_join_failure(error.code());
                            return self.refuse_auth(error);
                        }
                    },
                    Ok(None) => match mixer_protocol::normalise_name(&request.name) {
                        Ok(name) => (
                            Identity::Name(Arc::from(mixer_protocol::name_key(&name))),
                            name,
                            request.role.unwrap_or_default(),
                        ),
                        Err(error) => return self.refuse_join(error.code(), error.to_string()),
                    },
                };
                // The format was validated above, so a pcm16 rate is one the engine takes.
                self.pcm = request
                    .format
                    .pcm_rate()
                    .and_then(|hz| PcmRate::from_hz(hz).ok());
                self.frame = request.format.frame_size().unwrap_or_default();
                self.rate = audio_rate(self.frame);
                let gate = match self.locate_join(&request.room).await {
                    Ok(Joining::Here(gate)) => gate,
                    Ok(Joining::Edge(edges)) => {
                        let attach = LinkAttach {
                            identity: identity.to_link(),
                            name,
                            role,
                            mode: request.mode,
                            format: request.format.clone(),
                            address: ip,
                            resume: request.resume.clone(),
                            rejoin: false,
                        };
                        return self.join_edge(&edges, &request.room, attach).await;
                    }
                    Err(()) => return,
                };
                if let Some(token) = &request.resume {
                    if !self.context.addresses.may_try_resume(ip, now) {
                        return self.refuse_join(
                            ErrorCode::RateLimited,
                            "too many failed resume attempts from your address; wait, or join again without resume",
                        );
                    }
                    // With tokens, a resume is bound to the identity: a leaked resume token
                    // is no use without an access token for the same identity.
                    let bound = matches!(identity, Identity::Token(_)).then_some(&identity);
                    return match self.context.pool.resume(
                        token,
                        &request.room,
                        &request.format,
                        bound,
                        self.outbox.clone(),
                    ) {
                        Some(membership) => self.membership = Some(Seat::Local(membership)),
                        None => {
                            self.context.addresses.resume_failed(ip, now);
                            self.refuse_join(
                                ErrorCode::ResumeFailed,
                                format!(
                                    "nothing to resume in room {:?} with that token (unknown, expired, already resumed, another identity's or in another format); join again without resume",
                                    request.room
                                ),
                            )
                        }
                    };
                }
                let joiner = Joiner {
                    identity,
                    address: ip,
                    name,
                    mode: request.mode,
                    role,
                    format: request.format.clone(),
                    outbox: self.outbox.clone(),
                };
                match self.context.pool.join(&request.room, joiner, gate) {
                    Ok(membership) => {
                        self.membership = Some(Seat::Local(membership));
                    }
                    Err(refused) => self.refuse_join(refused.code(), refused.to_string()),
                }
            }
            ClientMessage::Leave => match self.membership.take() {
                Some(membership) => membership.leave(LeaveReason::Left),
                None => self.send_error(ErrorCode::NotJoined, "leave before join"),
            },
            ClientMessage::Ping { id } => {
                self.outbox.push_control(wire(&ServerMessage::Pong { id }));
            }
            ClientMessage::CreateRoom(settings) => {
                match self.grant(None) {
                    Ok(Some(grant)) => {
                        if let Err(error) = grant.may_create(&settings.room) {
                            return self.refuse_auth(error);
                        }
                    }
                    Ok(None) => {}
                    Err(error) => return self.refuse_auth(error),
                }
                // Per address, not per connection: reconnecting does not reset it, so one
                // client cannot fill the server's room table with empty rooms (each kept 60 s).
                if !self.context.addresses.allow_create(self.peer.ip(), now) {
                    return self.send_error(
                        ErrorCode::RateLimited,
                        "more than 5 create_room at once or 1 per 10 s from your address; no room was created",
                    );
                }
                if self.locate(&settings.room, Purpose::Create).await.is_err() {
                    return;
                }
                let reply = match self.context.pool.create_room(&settings) {
                    Ok(summary) => ServerMessage::RoomInfo(summary),
                    Err(refused) => return self.send_error(refused.code(), refused.to_string()),
                };
                self.outbox.push_control(wire(&reply));
            }
            ClientMessage::RoomInfo { room } => {
                if let Err(error) = mixer_protocol::JoinRequest::validate_room_name(&room) {
                    return self.send_error(error.code(), error.to_string());
                }
                match self.grant(None) {
                    Ok(Some(grant)) if !grant.allows_room(&room) => {
                        return self.refuse_auth(AuthError::WrongRoom { room });
                    }
                    Ok(_) => {}
                    Err(error) => return self.refuse_auth(error),
                }
                if self.locate(&room, Purpose::Info).await.is_err() {
                    return;
                }
                match self.context.pool.room_info(&room) {
                    Some(summary) => {
                        self.outbox
                            .push_control(wire(&ServerMessage::RoomInfo(summary)));
                    }
                    None => self
                        .send_error(ErrorCode::UnknownRoom, format!("there is no room {room:?}")),
                }
            }
            ClientMessage::ListRooms => {
                let grant = match self.grant(None) {
                    Ok(grant) => grant,
                    Err(error) => return self.refuse_auth(error),
                };
                if let Some(grant) = &grant
                    && let Err(error) = grant.may_list()
                {
                    return self.refuse_auth(error);
                }
                // Only the rooms the token grants: a token for "team-*" does not learn of
                // other teams' rooms.
                let allowed = |room: &str| grant.as_ref().is_none_or(|g| g.allows_room(room));
                let listed = match &self.context.fleet {
                    None => Ok(self.context.pool.list_rooms_matching(allowed)),
                    Some(fleet) => fleet.list_rooms(&self.context.pool, allowed).await,
                };
                let (rooms, truncated) = match listed {
                    Ok(listed) => listed,
                    Err(unavailable) => {
                        return self
                            .send_error(ErrorCode::FleetUnavailable, unavailable.to_string());
                    }
                };
                self.outbox
                    .push_control(wire(&ServerMessage::Rooms { rooms, truncated }));
            }
            ClientMessage::Record { recording } => self.record(recording).await,
            ClientMessage::Chat { text } => self.chat(text, now),
            other => {
                if let Some(request) = RoomRequest::from_client(other, 0) {
                    self.request(now, request);
                }
            }
        }
    }

    /// A moderator starts or stops the recording of its room; the room hears of it (with
    /// `recording`), or the asker gets an error. On an edge, the room's node decides.
    async fn record(&mut self, recording: bool) {
        let Some(membership) = &self.membership else {
            return self.send_error(ErrorCode::NotJoined, "record needs a join first");
        };
        let (room, id) = match membership {
            Seat::Edge(seat) => {
                seat.forward(&ClientMessage::Record { recording });
                return;
            }
            Seat::Local(local) => (local.room().to_owned(), local.id()),
        };
        match super::recording::moderator_request(&self.context, &room, id, recording).await {
            Ok(Some(reply)) => {
                self.outbox.push_control(wire(&reply));
            }
            Ok(None) => {}
            Err((code, message)) => self.send_error(code, message),
        }
    }

    /// Checks a chat message and the sender's chat rate, then hands it to the room.
    fn chat(&mut self, text: String, now: Instant) {
        if self.membership.is_none() {
            return self.send_error(ErrorCode::NotJoined, "chat needs a join first");
        }
        if let Err(error) = mixer_protocol::validate_chat(&text) {
            return self.send_error(error.code(), error.to_string());
        }
        if !self.chat_rate.allow(now) {
            return self.send_error(
                ErrorCode::ChatRateLimited,
                "more than 5 chat messages at once or 1 per second; message dropped",
            );
        }
        let ts_ms = super::requests::chat_timestamp();
        self.request(now, RoomRequest::Chat { text, ts_ms });
    }

    /// Forwards a room request to the mixer thread, or refuses it before a join or when the
    /// mixer thread is saturated.
    fn request(&mut self, now: Instant, request: RoomRequest) {
        let Some(membership) = &self.membership else {
            return self.send_error(ErrorCode::NotJoined, "room requests need a join first");
        };
        if let Err(error) = membership.request(request, now) {
            if error == SendError::Busy {
                self.context
                    .metrics
                    .control_refused_total
                    .with_label_values(&["busy"])
                    .inc();
            }
            let (code, message) = error.refusal();
            self.send_error(code, message);
        }
    }

    fn on_audio(&mut self, bytes: Bytes, now: Instant) {
        if self.membership.is_none() {
            return self.reject_audio(ErrorCode::NotJoined, "audio before join; send join first");
        }
        // The one parse of this frame: the mixer thread gets its header and payload as they are.
        let header = match self.check_audio(&bytes) {
            Ok(header) => header,
            Err((code, message)) => return self.reject_audio(code, message),
        };
        let Some(membership) = &self.membership else {
            return;
        };
        if !self.rate.allow(now) {
            return self.reject_audio(
                ErrorCode::RateLimited,
                "audio arrives faster than real time; excess frames dropped",
            );
        }
        let len = bytes.len() as u64;
        match membership.send_audio(header, bytes, now) {
            Forwarded::Queued => {
                self.context.metrics.audio_frames_in_total.inc();
                self.context.metrics.audio_bytes_in_total.inc_by(len);
            }
            // Only when the mixer is far behind this one participant.
            Forwarded::Backlogged => self.context.metrics.reject_audio("mixer_backlog"),
            Forwarded::Stopped => {}
        }
    }

    /// Parses and checks an audio frame for this participant's format; returns its header.
    fn check_audio(&self, bytes: &[u8]) -> Result<AudioHeader, (ErrorCode, String)> {
        if let Some(rate) = self.pcm {
            // PCM: exactly one 20 ms frame of 16-bit samples after the header.
            let expected = AUDIO_HEADER_LEN + rate.frame_bytes();
            if bytes.len() != expected {
                return Err((
                    ErrorCode::UnsupportedFormat,
                    format!(
                        "a pcm16/{}/1/20 audio frame is exactly {expected} bytes (9-byte header + {} samples), not {}",
                        rate.hz(),
                        rate.samples_per_frame(),
                        bytes.len()
                    ),
                ));
            }
            let frame = AudioFrame::parse_pcm(bytes).map_err(|e| (e.code(), e.to_string()))?;
            return Ok(frame.header);
        }
        if bytes.len() > MAX_AUDIO_FRAME {
            return Err((
                ErrorCode::FrameTooLarge,
                format!(
                    "audio frame of {} bytes exceeds {MAX_AUDIO_FRAME} (9-byte header + 1275-byte Opus packet)",
                    bytes.len()
                ),
            ));
        }
        let frame = AudioFrame::parse(bytes).map_err(|e| (e.code(), e.to_string()))?;
        // Whether this participant may be heard (listen mode, mute, the floor) is the mixer
        // thread's call: the mode can change at any time.
        match opus::packet::get_nb_samples(frame.payload, SAMPLE_RATE) {
            Ok(n) if n == self.frame.samples() => Ok(frame.header),
            Ok(n) => Err((
                ErrorCode::InvalidOpus,
                format!(
                    "Opus packet holds {n} samples ({} ms); this room takes {} frames ({} samples)",
                    n as f64 * 1000.0 / f64::from(SAMPLE_RATE),
                    self.frame,
                    self.frame.samples()
                ),
            )),
            Err(error) => Err((
                ErrorCode::InvalidOpus,
                format!("not a valid Opus packet: {error}"),
            )),
        }
    }
}

/// The close reason of a ping timeout.
const PING_TIMEOUT: &str = "ping timeout";

/// Bytes tungstenite reads from a client socket at a time (see where it is used).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// The audio rate limit of a client sending `frame`-long frames: one second of burst, and 10 %
/// over real time sustained (clock drift, catch-up).
fn audio_rate(frame: FrameSize) -> TokenBucket {
    let frames_per_second = f64::from(frame.per_second());
    TokenBucket::new(frames_per_second, frames_per_second * 1.1)
}
