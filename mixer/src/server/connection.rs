//! One client connection: HTTP routing, the WebSocket session, and its reader and writer.
//!
//! The reader (this task) parses what the client sends and forwards audio to the client's mixer
//! thread; a separate writer task drains the client's [`Outbox`] into the socket and sends
//! keepalive pings. Neither ever blocks a mixer thread or another client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{
    AUDIO_HEADER_LEN, AudioFrame, ClientMessage, ErrorCode, FRAME_SAMPLES, LeaveReason,
    MAX_AUDIO_FRAME, MAX_CONTROL_MESSAGE, SAMPLE_RATE, ServerMessage, parse_client_message,
};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};
use tracing::{debug, info};

use super::Settings;
use super::http::{self, Prefixed, Route};
use super::metrics::Metrics;
use super::outbox::{Closed, ErrorThrottle, Outbox, Outgoing};
use super::pool::{Joiner, Membership, MixerPool};
use super::requests::RoomRequest;
use crate::engine::ParticipantId;
use crate::engine::pcm::PcmRate;

type Ws = WebSocketStream<Prefixed<TcpStream>>;

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
}

/// Serves one accepted TCP connection until it ends.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
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
        Route::Health => Some(("200 OK", "ok\n")),
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
    let upgrade =
        tokio_tungstenite::accept_async_with_config(Prefixed::new(bytes, stream), Some(ws_config));
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
    Session::new(peer, context.clone()).run(ws, shutdown).await;
    context.metrics.connections.dec();
}

/// A token bucket that lets a talker send in real time with bursts (a TCP stall releases a
/// backlog at once) but not faster than real time for long.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Option<Instant>,
}

impl RateLimit {
    fn new(capacity: f64, per_second: f64) -> RateLimit {
        RateLimit {
            tokens: capacity,
            capacity,
            per_second,
            last: None,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
    context: Arc<Context>,
    outbox: Arc<Outbox>,
    membership: Option<Membership>,
    /// The PCM rate of a `pcm16` client (its frames are checked by size, not as Opus).
    pcm: Option<PcmRate>,
    rate: RateLimit,
    /// Chat: a burst of 5 messages, then 1 a second.
    chat_rate: RateLimit,
    /// `create_room`: a burst of 5, then 1 every 10 s, so one client cannot fill the server's
    /// room table with empty rooms (each is kept 60 s) and lock everyone else out.
    create_rate: RateLimit,
    errors: ErrorThrottle,
}

impl Session {
    fn new(peer: SocketAddr, context: Arc<Context>) -> Session {
        let settings = &context.settings;
        let outbox = Arc::new(Outbox::new(
            settings.send_queue_frames,
            settings.slow_client_drops,
        ));
        // One second of burst, and 10 % over real time sustained (clock drift, catch-up).
        let frames_per_second = f64::from(SAMPLE_RATE) / FRAME_SAMPLES as f64;
        Session {
            peer,
            context,
            outbox,
            membership: None,
            pcm: None,
            rate: RateLimit::new(frames_per_second, frames_per_second * 1.1),
            chat_rate: RateLimit::new(5.0, 1.0),
            create_rate: RateLimit::new(5.0, 0.1),
            errors: ErrorThrottle::default(),
        }
    }

    async fn run(mut self, ws: Ws, mut shutdown: watch::Receiver<bool>) {
        let settings = self.context.settings.clone();
        let (sink, mut stream) = ws.split();
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
                            if let Some(end) = self.on_message(message, now) {
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
                    if last_seen.elapsed() > settings.ping_timeout {
                        self.send_error(ErrorCode::PingTimeout, format!(
                            "nothing received for {} s (not even a pong); closing",
                            settings.ping_timeout.as_secs()
                        ));
                        self.outbox.close(Closed::Close { code: 1008, reason: "ping timeout" });
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
                    self.outbox.close(Closed::Close { code: 1001, reason: "server shutting down" });
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
            // Someone the server itself closed (removed, a failed resume) is not coming back.
            let closed_by_server = matches!(
                self.outbox.closed(),
                Some(Closed::Close {
                    reason: "removed" | "resume failed",
                    ..
                })
            );
            if matches!(reason, LeaveReason::Disconnected | LeaveReason::TimedOut)
                && !window.is_zero()
                && !closed_by_server
            {
                membership.suspend(window);
            } else {
                membership.leave(reason);
            }
        }
        self.outbox.close(Closed::Close {
            code: 1000,
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
        self.context
            .metrics
            .errors_sent_total
            .with_label_values(&[code.as_str()])
            .inc();
        self.outbox
            .push_control(ServerMessage::error(code, message).to_json());
    }

    fn refuse_join(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.context
            .metrics
            .join_failures_total
            .with_label_values(&[code.as_str()])
            .inc();
        self.send_error(code, message);
    }

    /// Counts a refused audio frame and tells the client (at most once a second per code).
    fn reject_audio(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.context
            .metrics
            .audio_frames_rejected_total
            .with_label_values(&[code.as_str()])
            .inc();
        self.send_audio_error(code, message);
    }

    fn send_audio_error(&mut self, code: ErrorCode, message: impl Into<String>) {
        if self.errors.allow(code, Instant::now()) {
            self.send_error(code, message);
        }
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
                    code: 1009,
                    reason: "message too large",
                });
                End::Fatal
            }
            WsError::Protocol(error) => {
                debug!(peer = %self.peer, %error, "WebSocket protocol error");
                self.outbox.close(Closed::Close {
                    code: 1002,
                    reason: "protocol error",
                });
                End::Fatal
            }
            WsError::Utf8(_) => {
                self.send_error(ErrorCode::BadMessage, "text frame is not valid UTF-8");
                self.outbox.close(Closed::Close {
                    code: 1007,
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

    fn on_message(&mut self, message: Message, now: Instant) -> Option<End> {
        match message {
            Message::Text(text) => self.on_text(text.as_str()),
            Message::Binary(bytes) => self.on_audio(bytes, now),
            Message::Close(_) => return Some(End::ClientClosed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        None
    }

    fn on_text(&mut self, text: &str) {
        if text.len() > MAX_CONTROL_MESSAGE {
            self.send_error(
                ErrorCode::MessageTooLarge,
                format!(
                    "control message of {} bytes exceeds {MAX_CONTROL_MESSAGE}",
                    text.len()
                ),
            );
            return;
        }
        let message = match parse_client_message(text) {
            Ok(message) => message,
            Err(error) => return self.send_error(error.code(), error.to_string()),
        };
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
                // The format was validated above, so a pcm16 rate is one the engine takes.
                self.pcm = request
                    .format
                    .pcm_rate()
                    .and_then(|hz| PcmRate::from_hz(hz).ok());
                if let Some(token) = &request.resume {
                    return match self
                        .context
                        .pool
                        .resume(token, &request.room, &request.format, self.outbox.clone())
                    {
                        Some(membership) => self.membership = Some(membership),
                        None => self.refuse_join(
                            ErrorCode::ResumeFailed,
                            format!(
                                "nothing to resume in room {:?} with that token (unknown, expired, already resumed or in another format); join again without resume",
                                request.room
                            ),
                        ),
                    };
                }
                let joiner = Joiner {
                    name: request.name.clone(),
                    mode: request.mode,
                    role: request.role,
                    format: request.format.clone(),
                    outbox: self.outbox.clone(),
                };
                match self.context.pool.join(&request.room, joiner) {
                    Ok(membership) => {
                        self.membership = Some(membership);
                    }
                    Err(refused) => self.refuse_join(refused.code(), refused.to_string()),
                }
            }
            ClientMessage::Leave => match self.membership.take() {
                Some(membership) => membership.leave(LeaveReason::Left),
                None => self.send_error(ErrorCode::NotJoined, "leave before join"),
            },
            ClientMessage::Ping { id } => {
                self.outbox
                    .push_control(ServerMessage::Pong { id }.to_json());
            }
            ClientMessage::Chat { text } => self.chat(text),
            ClientMessage::CreateRoom(settings) => {
                if !self.create_rate.allow(Instant::now()) {
                    return self.send_error(
                        ErrorCode::RateLimited,
                        "more than 5 create_room at once or 1 per 10 s; no room was created",
                    );
                }
                let reply = match self.context.pool.create_room(&settings) {
                    Ok(summary) => ServerMessage::RoomInfo(summary),
                    Err((code, message)) => return self.send_error(code, message),
                };
                self.outbox.push_control(reply.to_json());
            }
            ClientMessage::RoomInfo { room } => {
                if let Err(error) = mixer_protocol::JoinRequest::validate_room_name(&room) {
                    return self.send_error(error.code(), error.to_string());
                }
                match self.context.pool.room_info(&room) {
                    Some(summary) => {
                        self.outbox
                            .push_control(ServerMessage::RoomInfo(summary).to_json());
                    }
                    None => self
                        .send_error(ErrorCode::UnknownRoom, format!("there is no room {room:?}")),
                }
            }
            ClientMessage::ListRooms => {
                let (rooms, truncated) = self.context.pool.list_rooms();
                self.outbox
                    .push_control(ServerMessage::Rooms { rooms, truncated }.to_json());
            }
            ClientMessage::SetMode { mode } => self.request(RoomRequest::SetMode(mode)),
            ClientMessage::Mute {
                participant_id,
                muted,
            } => self.request(RoomRequest::Mute {
                target: participant_id.map(ParticipantId),
                muted,
            }),
            ClientMessage::MuteRoom { muted } => self.request(RoomRequest::MuteRoom { muted }),
            ClientMessage::FloorRequest { preempt } => {
                self.request(RoomRequest::FloorRequest { preempt })
            }
            ClientMessage::FloorRelease => self.request(RoomRequest::FloorRelease),
            ClientMessage::Remove { participant_id } => self.request(RoomRequest::Remove {
                target: ParticipantId(participant_id),
            }),
            ClientMessage::SetGain {
                participant_id,
                gain_db,
            } => self.request(RoomRequest::SetGain {
                target: ParticipantId(participant_id),
                gain_db,
            }),
        }
    }

    /// Checks a chat message and the sender's chat rate, then hands it to the room.
    fn chat(&mut self, text: String) {
        if self.membership.is_none() {
            return self.send_error(ErrorCode::NotJoined, "chat needs a join first");
        }
        if let Err(error) = mixer_protocol::validate_chat(&text) {
            return self.send_error(error.code(), error.to_string());
        }
        if !self.chat_rate.allow(Instant::now()) {
            return self.send_error(
                ErrorCode::ChatRateLimited,
                "more than 5 chat messages at once or 1 per second; message dropped",
            );
        }
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.request(RoomRequest::Chat { text, ts_ms });
    }

    /// Forwards a room request to the mixer thread, or refuses it before a join.
    fn request(&mut self, request: RoomRequest) {
        match &self.membership {
            Some(membership) => membership.request(request),
            None => self.send_error(ErrorCode::NotJoined, "room requests need a join first"),
        }
    }

    fn on_audio(&mut self, bytes: Bytes, now: Instant) {
        if self.membership.is_none() {
            return self.reject_audio(ErrorCode::NotJoined, "audio before join; send join first");
        }
        if let Some(rate) = self.pcm {
            // PCM: exactly one 20 ms frame of 16-bit samples after the header.
            let expected = AUDIO_HEADER_LEN + rate.frame_bytes();
            if bytes.len() != expected {
                return self.reject_audio(ErrorCode::UnsupportedFormat, format!(
                    "a pcm16/{}/1/20 audio frame is exactly {expected} bytes (9-byte header + {} samples), not {}",
                    rate.hz(), rate.samples_per_frame(), bytes.len()
                ));
            }
            if let Err(error) = AudioFrame::parse_pcm(&bytes) {
                return self.reject_audio(error.code(), error.to_string());
            }
            return self.forward_audio(bytes, now);
        }
        if bytes.len() > MAX_AUDIO_FRAME {
            return self.reject_audio(ErrorCode::FrameTooLarge, format!(
                "audio frame of {} bytes exceeds {MAX_AUDIO_FRAME} (9-byte header + 1275-byte Opus packet)",
                bytes.len()
            ));
        }
        let frame = match AudioFrame::parse(&bytes) {
            Ok(frame) => frame,
            Err(error) => return self.reject_audio(error.code(), error.to_string()),
        };
        // Whether this participant may be heard (listen mode, mute, the floor) is the mixer
        // thread's call: the mode can change at any time.
        match opus::packet::get_nb_samples(frame.payload, SAMPLE_RATE) {
            Ok(n) if n == FRAME_SAMPLES => {}
            Ok(n) => {
                return self.reject_audio(ErrorCode::InvalidOpus, format!(
                    "Opus packet holds {n} samples ({} ms); this server takes 20 ms frames ({FRAME_SAMPLES} samples)",
                    n * 1000 / SAMPLE_RATE as usize
                ));
            }
            Err(error) => {
                return self.reject_audio(
                    ErrorCode::InvalidOpus,
                    format!("not a valid Opus packet: {error}"),
                );
            }
        }
        self.forward_audio(bytes, now);
    }

    /// Rate-limits a checked audio frame and hands it to the mixer thread.
    fn forward_audio(&mut self, bytes: Bytes, now: Instant) {
        let Some(membership) = &self.membership else {
            return;
        };
        if !self.rate.allow(now) {
            return self.reject_audio(
                ErrorCode::RateLimited,
                "audio arrives faster than real time; excess frames dropped",
            );
        }
        // Dropping here only happens when the mixer is far behind this one participant.
        let len = bytes.len() as u64;
        if membership.send_audio(bytes, now) {
            self.context.metrics.audio_frames_in_total.inc();
            self.context.metrics.audio_bytes_in_total.inc_by(len);
        }
    }
}

/// Bytes tungstenite reads from a client socket at a time (see where it is used).
const READ_BUFFER_BYTES: usize = 4 * 1024;

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    outbox: Arc<Outbox>,
    ping_interval: Duration,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut batch = Vec::new();
    loop {
        let mut send_ping = false;
        tokio::select! {
            _ = outbox.wait() => {}
            _ = ping.tick() => send_ping = true,
        }
        let closed = outbox.drain(&mut batch);
        if send_ping && sink.feed(Message::Ping(Bytes::new())).await.is_err() {
            return;
        }
        for item in batch.drain(..) {
            let message = match item {
                Outgoing::Audio(bytes) => Message::Binary(bytes),
                Outgoing::Control(text) => Message::text(text),
            };
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        let (code, reason) = match closed {
            None => {
                if sink.flush().await.is_err() {
                    return;
                }
                continue;
            }
            Some(Closed::SlowConsumer) => {
                let message = ServerMessage::error(
                    ErrorCode::SlowConsumer,
                    "you read audio too slowly and fell behind; disconnecting",
                );
                let _ = sink.feed(Message::text(message.to_json())).await;
                (1008, "slow consumer")
            }
            Some(Closed::Close { code, reason }) => (code, reason),
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_real_time_and_a_burst_but_not_a_flood() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(50.0, 55.0);
        // Real time for 10 s: every frame passes.
        assert!((0..500u32).all(|k| rate.allow(t0 + Duration::from_millis(20) * k)));
        // A 1 s stall, then the backlog arrives at once: the bucket refilled and absorbs it.
        let later = t0 + Duration::from_secs(11);
        assert!((0..50).all(|_| rate.allow(later)));
        // A flood at 10x real time: about one frame in ten passes.
        let mut passed = 0;
        for k in 0..1000u32 {
            if rate.allow(later + Duration::from_millis(2) * k) {
                passed += 1;
            }
        }
        assert!((100..=130).contains(&passed), "{passed} of 1000 passed");
    }

    #[test]
    fn error_throttle_reports_each_code_once_per_second() {
        let t0 = Instant::now();
        let mut throttle = ErrorThrottle::default();
        assert!(throttle.allow(ErrorCode::InvalidOpus, t0));
        assert!(!throttle.allow(ErrorCode::InvalidOpus, t0 + Duration::from_millis(500)));
        assert!(throttle.allow(ErrorCode::RateLimited, t0 + Duration::from_millis(500)));
        assert!(throttle.allow(ErrorCode::InvalidOpus, t0 + Duration::from_millis(1001)));
    }
}
