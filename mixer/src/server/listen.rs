//! `GET /listen/ROOM`: a room's mix as an Ogg/Opus stream over chunked HTTP, which any player
//! plays (VLC, ffplay, mpv, a browser's `<audio>`), as an Icecast mount does.
//!
//! An HTTP listener is a participant in listen mode, like a WebSocket listener: it takes a seat,
//! counts against the room's and the address's limits, is refused as any join is, and gets the
//! room's shared listener frame: the one encode every listener of the room shares, so a listener
//! costs a copy of its bytes into an Ogg page, never an encode. It is dropped like any client
//! that does not read (its bounded outbox). The room sees it join and leave like anyone.
//!
//! The stream is Ogg with one Opus stream (RFC 7845): the `OpusHead` and `OpusTags` headers, then
//! one page per 20 ms frame, so a player is never more than a frame behind the room. The room
//! sends nothing while its mix is settled silence (downlink DTX); a player would stall, so the
//! gaps are filled with silence packets, keeping the stream's clock with the wall clock.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mixer_protocol::{AudioFormat, AudioFrame, JoinRequest, LeaveReason, Mode, Role};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{debug, info};

use super::connection::{Context, Transport};
use super::edge::{EdgeJoinError, Edges};
use super::fleet_rooms::{LeaseGate, Located, Purpose};
use super::http;
use super::membership::{Identity, Joiner, new_resume_token};
use super::outbox::{Closed, Outbox, Outgoing};
use super::seat::Seat;
use mixer_protocol::link::LinkAttach;

/// Samples in the 20 ms silence packet (and in a packet whose duration cannot be read) at
/// 48 kHz: the granule position's unit is a 48 kHz sample.
const FRAME_SAMPLES: u64 = 960;

/// Samples a player discards at the start of the stream (`pre-skip`): 80 ms, what RFC 7845
/// recommends when decoding starts in the middle of a stream, which a live mix always is.
const PRE_SKIP: u16 = 3840;

/// How far (in 20 ms frames) the stream may fall behind the wall clock before the gap is filled
/// with silence: more than the room's own jitter, less than a player's buffer.
const FILL_AFTER_FRAMES: u64 = 3;

/// How often a stream checks whether the room has paused and its gap needs filling.
const FILL_CHECK: Duration = Duration::from_millis(60);

/// How often a blocked write checks whether the player has been given up on.
const SLOW_CHECK: Duration = Duration::from_millis(100);

/// An Ogg/Opus stream of 48 kHz mono packets (of the room's frame size, and 20 ms of silence
/// to fill pauses), written page by page into memory.
///
/// Pure: the caller hands it packets and takes the bytes to send.
pub struct OggOpusStream {
    writer: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    granule: u64,
}

impl OggOpusStream {
    /// A stream with serial number `serial`, titled `title` (its `OpusTags`); its two header
    /// pages are ready to be taken.
    pub fn new(serial: u32, title: &str) -> OggOpusStream {
        let mut stream = OggOpusStream {
            writer: PacketWriter::new(Vec::with_capacity(4096)),
            serial,
            granule: 0,
        };
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes()); // the input's sample rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo, no table
        let vendor = concat!("mixer ", env!("CARGO_PKG_VERSION"));
        let comment = format!("TITLE={title}");
        let mut tags = Vec::with_capacity(64);
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&1u32.to_le_bytes());
        tags.extend_from_slice(&(comment.len() as u32).to_le_bytes());
        tags.extend_from_slice(comment.as_bytes());
        // Each header ends its page, as RFC 7845 requires; writing to a Vec cannot fail.
        for header in [head, tags] {
            let _ = stream
                .writer
                .write_packet(header, serial, PacketWriteEndInfo::EndPage, 0);
        }
        stream
    }

    /// Adds one Opus packet, on a page of its own.
    pub fn push(&mut self, packet: &[u8]) {
        // The room's packets are checked when they are made; a duration that cannot be read
        // counts as 20 ms rather than stopping the stream.
        self.granule +=
            opus::packet::get_nb_samples(packet, 48_000).map_or(FRAME_SAMPLES, |n| n as u64);
        let _ = self.writer.write_packet(
            packet.to_vec(),
            self.serial,
            PacketWriteEndInfo::EndPage,
            self.granule,
        );
    }

    /// Ends the stream: a last 20 ms of silence on a page flagged end-of-stream, as a file's
    /// last page must be.
    pub fn finish(&mut self) {
        self.granule += FRAME_SAMPLES;
        let _ = self.writer.write_packet(
            silence_packet().to_vec(),
            self.serial,
            PacketWriteEndInfo::EndStream,
            self.granule,
        );
    }

    /// Keeps the stream's clock with the wall clock, `elapsed` after its start: if the room
    /// paused (its mix is silence, which it does not send) for more than a few frames, the
    /// gap is filled with silence packets.
    pub fn keep_time(&mut self, elapsed: Duration) {
        let due = (elapsed.as_micros() * 48 / 1000) as u64;
        if due > self.granule + FILL_AFTER_FRAMES * FRAME_SAMPLES {
            while self.granule + FRAME_SAMPLES < due {
                self.push(silence_packet());
            }
        }
    }

    /// The 48 kHz samples in the stream so far (its granule position).
    pub fn samples(&self) -> u64 {
        self.granule
    }

    /// Takes the bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.inner_mut())
    }
}

/// 20 ms of silence as an Opus packet (encoded once, like the room's mixes: CELT, 48 kHz mono).
fn silence_packet() -> &'static [u8] {
    static SILENCE: OnceLock<Vec<u8>> = OnceLock::new();
    SILENCE.get_or_init(|| {
        let encoded = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::LowDelay)
            .and_then(|mut encoder| encoder.encode_vec(&[0i16; 960], 256));
        // A zero-length frame (TOC byte only: CELT, 20 ms, mono) is what a decoder conceals
        // as silence: the fallback if the encoder cannot be built.
        encoded.unwrap_or_else(|_| vec![0xf8])
    })
}

/// Serves `GET /listen/ROOM` (the request head already read into `head`) until the player goes
/// away, the room drops it, or the server shuts down.
pub async fn serve<S: Transport>(
    mut stream: S,
    head: &[u8],
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    let outbox = Arc::new(Outbox::new(
        context.settings.send_queue_frames,
        context.settings.slow_client_drops,
    ));
    let membership = match admit(head, room, peer, context, outbox.clone()).await {
        Ok(membership) => membership,
        Err(Refusal::Status(status, body)) => {
            let _ = http::respond(&mut stream, status, &body).await;
            return;
        }
        Err(Refusal::Redirect(location)) => {
            let response = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\
                 connection: close\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    info!(%peer, room, "HTTP listener joined");
    let reason = stream_room(&mut stream, room, &outbox, &mut shutdown).await;
    debug!(%peer, room, ?reason, "HTTP listener left");
    membership.leave(reason);
}

/// Why a listen request was not admitted.
enum Refusal {
    /// Answer with this status and body.
    Status(&'static str, String),
    /// Another node of the fleet mixes the room: send the player there.
    Redirect(String),
}

/// Checks the request (room name, token, fleet) and seats the listener.
async fn admit(
    head: &[u8],
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
    outbox: Arc<Outbox>,
) -> Result<Seat, Refusal> {
    let status = |status: &'static str, body: String| Refusal::Status(status, body + "\n");
    JoinRequest::validate_room_name(room).map_err(|e| status("400 Bad Request", e.to_string()))?;
    let token = http::access_token(head);
    let (identity, name) = match &context.auth {
        None => {
            // Every HTTP listener is someone of its own: a fresh identity, never a name taken.
            let key = new_resume_token()
                .map_err(|_| status("503 Service Unavailable", "no randomness".into()))?;
            (
                Identity::Name(Arc::from(format!("listen:{key}"))),
                "HTTP listener".to_owned(),
            )
        }
        Some(verifier) => {
            let Some(token) = token else {
                return Err(status(
                    "401 Unauthorized",
                    "this server needs an access token: ?access_token=TOKEN or Authorization: Bearer TOKEN".into(),
                ));
            };
            let grant = verifier
                .verify(&token)
                .map_err(|e| status("401 Unauthorized", e.to_string()))?;
            grant
                .admit(room, Some(Role::Listener))
                .map_err(|e| status("403 Forbidden", e.to_string()))?;
            let name = if grant.name.is_empty() {
                "HTTP listener".to_owned()
            } else {
                grant.name.clone()
            };
            (Identity::Token(Arc::from(grant.identity.as_str())), name)
        }
    };
    let edges = context.relaying_edges();
    let gate = match (http_seat(room, peer, context).await, edges) {
        // An edge outside a fleet relays every room; in a fleet, those mixed elsewhere.
        (Ok(None), Some(edges)) if context.fleet.is_none() => {
            return listen_through_edge(&edges, room, identity, name, peer, outbox).await;
        }
        (Err(HttpSeatRefused::Elsewhere(_)), Some(edges)) => {
            return listen_through_edge(&edges, room, identity, name, peer, outbox).await;
        }
        (Ok(gate), _) => gate,
        (Err(HttpSeatRefused::Status(code, body)), _) => return Err(status(code, body)),
        (Err(HttpSeatRefused::Elsewhere(url)), None) => {
            return Err(Refusal::Redirect(listen_url(&url, head, room)));
        }
    };
    let joiner = Joiner {
        identity,
        address: peer.ip(),
        name,
        mode: Some(Mode::Listen),
        role: Role::Listener,
        format: AudioFormat::opus_48k_mono_20ms(),
        outbox,
    };
    context
        .pool
        .join(room, joiner, gate)
        .map(Seat::Local)
        .map_err(|refused| status("503 Service Unavailable", refused.to_string()))
}

/// Seats an HTTP listener of a room mixed on another node through this node's link for it, as
/// an edge does a WebSocket client: the room's shared frames come once over the link and go to
/// the player as they came.
async fn listen_through_edge(
    edges: &Arc<Edges>,
    room: &str,
    identity: Identity,
    name: String,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
) -> Result<Seat, Refusal> {
    let attach = LinkAttach {
        identity: identity.to_link(),
        name,
        role: Role::Listener,
        mode: Some(Mode::Listen),
        format: AudioFormat::opus_48k_mono_20ms(),
        address: peer.ip(),
        resume: None,
        rejoin: false,
    };
    let unavailable = |why: String| Refusal::Status("503 Service Unavailable", why + "\n");
    match edges.seat(room, attach, outbox.clone()).await {
        Ok(seat) => Ok(Seat::Edge(seat)),
        Err(EdgeJoinError::Refused) => {
            // The room's refusal went to the outbox: say it to the player.
            let mut queued = Vec::new();
            outbox.drain(&mut queued);
            let why = queued
                .into_iter()
                .find_map(|item| match item {
                    Outgoing::Control(json) => Some(json.to_string()),
                    Outgoing::Audio(_) | Outgoing::Raw(_) => None,
                })
                .unwrap_or_else(|| "the room's node refused the listener".to_owned());
            Err(unavailable(why))
        }
        Err(error) => Err(unavailable(error.to_string())),
    }
}

/// Why an HTTP client (a player, a source) may not take a seat in a room here.
pub(super) enum HttpSeatRefused {
    /// Answer with this status and body.
    Status(&'static str, String),
    /// Another node of the fleet mixes the room; its WebSocket URL.
    Elsewhere(String),
}

/// The checks before an HTTP client takes a seat, as a WebSocket join has them: the address's
/// join rate, and in a fleet where the room is mixed (and its lease gate here).
pub(super) async fn http_seat(
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
) -> Result<Option<Arc<LeaseGate>>, HttpSeatRefused> {
    if !context.addresses.allow_join(peer.ip(), Instant::now()) {
        return Err(HttpSeatRefused::Status(
            "429 Too Many Requests",
            "too many joins from your address; wait a few seconds".into(),
        ));
    }
    let Some(fleet) = &context.fleet else {
        return Ok(None);
    };
    match fleet
        .locate(room, Purpose::Join, context.pool.is_draining())
        .await
    {
        Ok(Located::Here(gate)) => Ok(Some(gate)),
        Ok(Located::Elsewhere { url }) => Err(HttpSeatRefused::Elsewhere(url)),
        Ok(Located::Nowhere) => Err(HttpSeatRefused::Status(
            "404 Not Found",
            "no such room".into(),
        )),
        Err(unavailable) => Err(HttpSeatRefused::Status(
            "503 Service Unavailable",
            unavailable.to_string(),
        )),
    }
}

/// The listen URL of `room` at the node whose WebSocket URL is `node` (`ws://host/` becomes
/// `http://host/listen/ROOM`, `wss://` becomes `https://`), with the request's query (its
/// token) carried over.
fn listen_url(node: &str, head: &[u8], room: &str) -> String {
    let base = node
        .strip_prefix("wss://")
        .map(|rest| format!("https://{rest}"))
        .or_else(|| {
            node.strip_prefix("ws://")
                .map(|rest| format!("http://{rest}"))
        })
        .unwrap_or_else(|| node.to_owned());
    let query = http::query(head)
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{}/listen/{room}{query}", base.trim_end_matches('/'))
}

/// Streams the room until it ends; returns why, as the room is told.
async fn stream_room<S: Transport>(
    stream: &mut S,
    room: &str,
    outbox: &Outbox,
    shutdown: &mut watch::Receiver<bool>,
) -> LeaveReason {
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: audio/ogg\r\ntransfer-encoding: chunked\r\n\
         cache-control: no-cache, no-store\r\nconnection: close\r\n\
         x-content-type-options: nosniff\r\naccess-control-allow-origin: *\r\n\
         icy-name: {room}\r\nicy-description: the live mix of room {room}\r\nicy-pub: 0\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return LeaveReason::Disconnected;
    }
    let mut ogg = OggOpusStream::new(serial(), room);
    let started = Instant::now();
    // Gaps are filled only once they are longer than FILL_AFTER_FRAMES, so the clock need not
    // wake the task for every frame: the frames themselves do while the room talks.
    let mut fill = tokio::time::interval(FILL_CHECK);
    fill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            () = outbox.wait() => {}
            _ = fill.tick() => {}
            _ = shutdown.changed() => {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                return LeaveReason::ServerShutdown;
            }
        }
        let closed = outbox.drain(&mut batch);
        for item in batch.drain(..) {
            // Roster and other control messages have no place in an audio stream.
            if let Outgoing::Audio(wire) = item
                && let Ok(frame) = AudioFrame::parse(wire.frame())
            {
                ogg.push(frame.payload);
            }
        }
        ogg.keep_time(started.elapsed());
        let bytes = ogg.take();
        if !bytes.is_empty() {
            // A player that stops reading blocks this write once the socket's buffers are full;
            // meanwhile its outbox drops frames and, after the slow-client timeout, closes: the
            // write is abandoned then, as a WebSocket writer's is.
            let write = write_chunk(stream, &bytes);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    written = &mut write => {
                        if written.is_err() {
                            return LeaveReason::Disconnected;
                        }
                        break;
                    }
                    () = tokio::time::sleep(SLOW_CHECK) => {
                        if outbox.closed() == Some(Closed::SlowConsumer) {
                            return LeaveReason::SlowConsumer;
                        }
                    }
                }
            }
        }
        match closed {
            None => {}
            Some(Closed::SlowConsumer) => return LeaveReason::SlowConsumer,
            Some(Closed::Close { .. }) => {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                // Removed, moved or the room closed: the room already knows why.
                return LeaveReason::Left;
            }
        }
    }
}

/// Writes one HTTP chunk.
///
/// One write (one system call, one TLS record) for the chunk's size line, bytes and end.
async fn write_chunk<S: Transport>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(bytes.len() + 12);
    chunk.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    chunk.extend_from_slice(bytes);
    chunk.extend_from_slice(b"\r\n");
    stream.write_all(&chunk).await?;
    stream.flush().await
}

/// A random Ogg serial number (a player tells streams apart by it).
pub(super) fn serial() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages of `bytes`: (granule position, packet) for each page, parsed by hand.
    fn pages(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(&bytes[..4], b"OggS");
            let granule = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
            let segments = bytes[26] as usize;
            let lacing = &bytes[27..27 + segments];
            let size: usize = lacing.iter().map(|&l| l as usize).sum();
            let start = 27 + segments;
            out.push((granule, bytes[start..start + size].to_vec()));
            bytes = &bytes[start + size..];
        }
        out
    }

    #[test]
    fn a_stream_has_its_headers_then_a_page_per_frame_with_the_granule_in_48_khz_samples() {
        let mut stream = OggOpusStream::new(7, "radio");
        let headers = pages(&stream.take());
        assert_eq!(headers.len(), 2);
        assert_eq!(&headers[0].1[..8], b"OpusHead");
        assert_eq!(headers[0].1.len(), 19);
        assert_eq!(headers[0].1[9], 1, "mono");
        assert_eq!(
            u16::from_le_bytes([headers[0].1[10], headers[0].1[11]]),
            PRE_SKIP
        );
        assert_eq!(&headers[1].1[..8], b"OpusTags");
        assert!(String::from_utf8_lossy(&headers[1].1).contains("TITLE=radio"));
        assert_eq!((headers[0].0, headers[1].0), (0, 0));
        stream.push(&[0xfc, 1, 2, 3]);
        stream.push(silence_packet());
        let audio = pages(&stream.take());
        assert_eq!(audio.len(), 2);
        assert_eq!(audio[0], (960, vec![0xfc, 1, 2, 3]));
        assert_eq!(audio[1].0, 1920);
        assert_eq!(stream.samples(), 2 * FRAME_SAMPLES);
        assert!(stream.take().is_empty());
    }

    #[test]
    fn gaps_are_filled_with_silence_and_the_last_page_ends_the_stream() {
        let mut stream = OggOpusStream::new(7, "radio");
        stream.take();
        stream.push(&[0xfc, 1]);
        // A pause of up to FILL_AFTER_FRAMES is the room's own jitter: left alone.
        stream.keep_time(Duration::from_millis(20 * (1 + FILL_AFTER_FRAMES)));
        assert_eq!(stream.samples(), FRAME_SAMPLES);
        // Longer, and the stream catches up to one frame behind the clock.
        stream.keep_time(Duration::from_millis(1000));
        assert_eq!(stream.samples(), 49 * FRAME_SAMPLES);
        stream.finish();
        let bytes = stream.take();
        let pages = pages(&bytes);
        assert_eq!(pages.len(), 50);
        assert_eq!(pages.last().expect("last").0, 50 * FRAME_SAMPLES);
        let last = bytes.windows(4).rposition(|w| w == b"OggS").expect("page");
        assert_eq!(bytes[last + 5] & 4, 4, "end of stream");
    }

    #[test]
    fn the_silence_packet_decodes_to_20_ms_of_silence() {
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
        let mut pcm = [1.0f32; 960];
        let n = decoder
            .decode_float(silence_packet(), &mut pcm, false)
            .expect("decodes");
        assert_eq!(n, 960);
        assert!(pcm.iter().all(|s| s.abs() < 1e-3));
    }
}
