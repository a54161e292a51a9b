//! Icecast-style sources: `PUT /ROOM` (or the legacy `SOURCE /ROOM`) with HTTP Basic auth and an
//! Ogg/Opus body, as `ffmpeg -re -i music.flac -c:a libopus -f ogg
//! icecast://source:SECRET@host:port/ROOM` sends, becomes a talker in the room.
//!
//! The source joins the room as a participant in `talk` mode (named `[source]`, or as its token
//! says) and is heard like any talker, under the room's mode and floor rules: a room whose floor
//! is `single` lets only moderators talk with an open microphone, so there a source needs a
//! token with the moderator role (and is refused with 403 otherwise). Its Opus packets, at whatever rate and with one or
//! two channels, are decoded at 48 kHz (Opus decodes at any rate it is asked for), mixed down to
//! mono, and handed to the room as 20 ms frames of the protocol's `pcm16` format, so the room's
//! own jitter buffer takes them as from any PCM client.
//!
//! Who may be a source: on a server with access tokens, the Basic password is an access token
//! that grants the room with at least the speaker role (the user name is ignored, as Icecast
//! clients send `source`); on one without, the password in `--source-password-file`; with
//! neither, sources are refused. One source per room ("mount"): a second one for the same room
//! is refused with 403 while the first streams, as Icecast does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mixer_protocol::{
    AudioFormat, AudioHeader, AudioLevel, Flags, JoinRequest, LeaveReason, Mode, Role,
};
use ogg::reading::{BasePacketReader, PageParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::connection::{Context, Transport};
use super::http::{self, Prefixed};
use super::listen::HttpSeatRefused;
use super::membership::{Forwarded, Identity, Joiner, Membership};
use super::outbox::Outbox;

/// Samples in 20 ms at 48 kHz.
const FRAME: usize = 960;

/// The longest Opus packet: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES: usize = 5760;

/// A source's display name when its token gives none: a label, which no participant's name
/// may look like.
pub const SOURCE_NAME: &str = "[source]";

/// A source that sends nothing for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a source stream ended or was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The body is not Ogg.
    #[error("the body is not an Ogg stream: {0}")]
    NotOgg(String),
    /// The Ogg stream does not carry Opus, or carries a kind of Opus this server does not take.
    #[error("the Ogg stream is not Opus the server can take: {0}")]
    NotOpus(String),
    /// An Opus packet did not decode.
    #[error("an Opus packet did not decode: {0}")]
    Decode(String),
    /// The connection failed while the body was read.
    #[error("reading the source's stream failed: {0}")]
    Read(#[from] std::io::Error),
    /// The source sent nothing for [`IDLE_TIMEOUT`].
    #[error("the source sent nothing for {0:?}")]
    Idle(Duration),
}

/// Serves one source connection until its stream ends, it goes quiet, or the server stops.
pub async fn serve<S: Transport>(
    stream: S,
    head_and_body: Vec<u8>,
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The bytes read so far hold the request head and perhaps the start of the body.
    let head_len = head_length(&head_and_body).unwrap_or(head_and_body.len());
    let head = head_and_body[..head_len].to_vec();
    let mut stream = Prefixed::new(head_and_body[head_len..].to_vec(), stream);
    let (membership, outbox) = match admit(&head, room, peer, context).await {
        Ok(admitted) => admitted,
        Err((status, body)) => {
            let challenge = if status.starts_with("401") {
                "www-authenticate: Basic realm=\"mixer\"\r\n"
            } else {
                ""
            };
            let _ = http::respond_with_headers(
                &mut stream,
                status,
                "text/plain; charset=utf-8",
                challenge,
                format!("{body}\n").as_bytes(),
            )
            .await;
            return;
        }
    };
    // Icecast answers the source with 200 and then reads its stream; ffmpeg waits for it
    // (it sends `Expect: 100-continue`, and takes the 200 as the go-ahead).
    if stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
        membership.leave(LeaveReason::Disconnected);
        return;
    }
    info!(%peer, room, "source connected");
    let ended = tokio::select! {
        ended = ingest(&mut stream, &membership, &outbox) => ended,
        _ = shutdown.changed() => Ok(LeaveReason::ServerShutdown),
    };
    let reason = match ended {
        Ok(reason) => reason,
        Err(error) => {
            warn!(%peer, room, %error, "source stream refused");
            LeaveReason::Disconnected
        }
    };
    info!(%peer, room, ?reason, "source left");
    membership.leave(reason);
}

/// The length of the request head (through its blank line), if complete.
fn head_length(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Checks the source's credentials and seats it in the room; on refusal, the HTTP status and
/// the reason.
async fn admit(
    head: &[u8],
    room: &str,
    peer: SocketAddr,
    context: &Arc<Context>,
) -> Result<(Membership, Arc<Outbox>), (&'static str, String)> {
    JoinRequest::validate_room_name(room).map_err(|e| ("400 Bad Request", e.to_string()))?;
    if is_chunked(head) {
        return Err((
            "501 Not Implemented",
            "chunked request bodies are not taken: send the Ogg stream as the raw body, as Icecast clients do".to_owned(),
        ));
    }
    let password = http::basic_auth(head).map(|(_, password)| password);
    let (name, role) = match (&context.auth, &context.source_password) {
        (Some(verifier), _) => {
            let token = password.ok_or((
                "401 Unauthorized",
                "a source needs HTTP Basic auth whose password is an access token for the room"
                    .to_owned(),
            ))?;
            let grant = verifier
                .verify(&token)
                .map_err(|e| ("401 Unauthorized", e.to_string()))?;
            // A moderator's token makes a moderator source, which a room whose floor is
            // single lets talk with an open microphone, as it lets its moderators.
            let role = grant
                .admit(room, Some(Role::Moderator))
                .or_else(|_| grant.admit(room, Some(Role::Speaker)))
                .map_err(|e| ("403 Forbidden", e.to_string()))?;
            let name = if grant.name.is_empty() {
                SOURCE_NAME.to_owned()
            } else {
                grant.name.clone()
            };
            (name, role)
        }
        (None, Some(expected)) => {
            let given = password.unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(("401 Unauthorized", "wrong source password".to_owned()));
            }
            (SOURCE_NAME.to_owned(), Role::Speaker)
        }
        (None, None) => {
            return Err((
                "403 Forbidden",
                "this server takes no sources: start it with --source-password-file (or --auth-key-file)".to_owned(),
            ));
        }
    };
    let gate = super::listen::http_seat(room, peer, context)
        .await
        .map_err(|refused| match refused {
            HttpSeatRefused::Status(status, body) => (status, body),
            HttpSeatRefused::Elsewhere(url) => (
                "503 Service Unavailable",
                format!("another node mixes this room: send the source to {url}"),
            ),
        })?;
    // Nobody reads what the room sends a source: its outbox takes one frame and drops the rest.
    let outbox = Arc::new(Outbox::new(1, u32::MAX));
    let joiner = Joiner {
        // One source per room: a second one finds this identity's seat taken.
        identity: Identity::Name(Arc::from(format!("source:{room}"))),
        address: peer.ip(),
        name,
        mode: Some(Mode::Talk),
        role,
        format: AudioFormat::pcm16(48_000),
        outbox: outbox.clone(),
    };
    let membership = context.pool.join(room, joiner, gate).map_err(|refused| {
        let status = match refused.code() {
            mixer_protocol::ErrorCode::NameTaken => "403 Forbidden",
            mixer_protocol::ErrorCode::Banned => "403 Forbidden",
            mixer_protocol::ErrorCode::ModeNotAllowed => "403 Forbidden",
            mixer_protocol::ErrorCode::RateLimited => "429 Too Many Requests",
            _ => "503 Service Unavailable",
        };
        let message = match refused.code() {
            mixer_protocol::ErrorCode::NameTaken => {
                "this room already has a source (one per room, as a mount point has)".to_owned()
            }
            mixer_protocol::ErrorCode::ModeNotAllowed => {
                "this room is push-to-talk with one speaker at a time: only a moderator may talk with an open microphone there, so a source needs a token with the moderator role".to_owned()
            }
            _ => refused.to_string(),
        };
        (status, message)
    })?;
    Ok((membership, outbox))
}

/// Whether the request's body is sent in HTTP chunks (`Transfer-Encoding: chunked`), which the
/// Ogg reader does not take apart; Icecast clients send the stream raw.
fn is_chunked(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(head).is_err() {
        return false;
    }
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    })
}

/// Compares without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the Ogg/Opus body and feeds the room, paced, until the stream ends.
///
/// Sources send in Ogg pages, and ffmpeg's muxer fills a page with up to a second of packets
/// before it sends it: the frames arrive in bursts that the room's jitter buffer, sized for
/// network jitter, would overflow. So the reading (decode, and backpressure on the socket) and
/// the sending (one frame every 20 ms, by [`Pacer`]) run side by side.
async fn ingest<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    membership: &Membership,
    outbox: &Outbox,
) -> Result<LeaveReason, SourceError> {
    let (frames, queued) = tokio::sync::mpsc::channel(MAX_QUEUED_FRAMES);
    let reading = read_frames(stream, frames);
    let sending = send_paced(queued, membership, outbox);
    tokio::pin!(reading, sending);
    tokio::select! {
        read = &mut reading => {
            read?;
            // The stream ended: what is queued still plays out.
            Ok(sending.await)
        }
        sent = &mut sending => Ok(sent),
    }
}

/// Reads and decodes the stream into `frames` (waiting while it is full, so a source faster
/// than real time is held back by TCP) until the stream ends.
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    frames: tokio::sync::mpsc::Sender<(Bytes, f32)>,
) -> Result<(), SourceError> {
    let mut packets = BasePacketReader::new();
    let mut opus = OpusToRoom::default();
    while let Some(page) = read_page(stream).await? {
        packets
            .push_page(page)
            .map_err(|e| SourceError::NotOgg(e.to_string()))?;
        while let Some(packet) = packets.read_packet() {
            for frame in opus.packet(&packet.data)? {
                if frames.send(frame).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Sends the queued frames to the room at their paced times; returns when the queue is closed
/// and empty (the stream ended), or the room lets the source go (its outbox closes: removed by
/// a moderator or the operator, the room closed or moved), or stops taking audio.
async fn send_paced(
    mut queued: tokio::sync::mpsc::Receiver<(Bytes, f32)>,
    membership: &Membership,
    outbox: &Outbox,
) -> LeaveReason {
    let mut pacer = Pacer::default();
    let mut open = true;
    let mut sent = 0u64;
    loop {
        let due = pacer.next_due();
        if !open && due.is_none() {
            return LeaveReason::Left;
        }
        if outbox.closed().is_some() {
            // The room has already said why the source left.
            return LeaveReason::Left;
        }
        tokio::select! {
            frame = queued.recv(), if open => match frame {
                Some(frame) => pacer.push(frame, Instant::now()),
                None => open = false,
            },
            () = sleep_until(due), if due.is_some() => {
                while let Some((frame, rms)) = pacer.pop_due(Instant::now()) {
                    let header = AudioHeader {
                        flags: Flags::default().with_marker(sent == 0),
                        sequence: sent as u16,
                        timestamp: (sent as u32).wrapping_mul(FRAME as u32),
                        // Voice activity as a talker's client would judge it: above -60 dBFS.
                        level: AudioLevel::from_rms(rms > 0.001, rms),
                    };
                    sent += 1;
                    if let Forwarded::Stopped = membership.send_audio(header, frame, Instant::now()) {
                        return LeaveReason::ServerShutdown;
                    }
                }
            }
        }
    }
}

/// Sleeps until `due`, or forever for `None`.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// A source's playout: frame `n` is due `n` × 20 ms after the first frame's arrival, plus the
/// latest any frame has arrived relative to that timeline, plus a margin; so no frame is due
/// before it can have arrived, and the room gets one frame every 20 ms.
///
/// Pure: arrivals and times go in as arguments. The lateness only grows: a source that is late
/// once (a page delayed, its clock slower than ours) shifts the rest by that much, one gap, and
/// its frames are never cut. A source faster than real time fills the queue, which holds back
/// its reads. ffmpeg sends a page once it holds a second of packets, so its first frame arrives
/// a second after it started and the room hears it [`PACING_MARGIN`] after that.
#[derive(Default)]
struct Pacer {
    queue: std::collections::VecDeque<(Bytes, f32)>,
    /// When the first frame arrived.
    first: Option<Instant>,
    /// Frames pushed so far.
    pushed: u64,
    /// Frames popped so far.
    popped: u64,
    /// The latest arrival relative to the source's timeline, in µs after `first`.
    latest: i64,
}

/// Added to the spread of arrivals: scheduling jitter of this server's own timers.
const PACING_MARGIN: Duration = Duration::from_millis(40);

/// Frames queued at most between the reading and the sending (3 s).
const MAX_QUEUED_FRAMES: usize = 150;

impl Pacer {
    /// A frame arrives at `now`.
    fn push(&mut self, frame: (Bytes, f32), now: Instant) {
        let first = *self.first.get_or_insert(now);
        let arrival = now.duration_since(first).as_micros() as i64;
        let offset = arrival - self.pushed as i64 * 20_000;
        self.latest = self.latest.max(offset);
        self.pushed += 1;
        self.queue.push_back(frame);
    }

    /// When the next queued frame is due; `None` if none is queued.
    fn next_due(&self) -> Option<Instant> {
        let first = self.first?;
        if self.queue.is_empty() {
            return None;
        }
        let due = self.latest + PACING_MARGIN.as_micros() as i64 + self.popped as i64 * 20_000;
        // `latest` is at least 0 (the first frame's offset), so `due` is never before `first`.
        Some(first + Duration::from_micros(due.max(0) as u64))
    }

    /// The next frame, if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(Bytes, f32)> {
        if self.next_due()? > now {
            return None;
        }
        self.popped += 1;
        self.queue.pop_front()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Reads one Ogg page; `None` at a clean end of the stream (between pages).
async fn read_page<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<ogg::reading::OggPage>, SourceError> {
    let mut header = [0u8; 27];
    if !read_exact_or_end(stream, &mut header).await? {
        return Ok(None);
    }
    let (mut parser, segments) =
        PageParser::new(header).map_err(|e| SourceError::NotOgg(e.to_string()))?;
    let mut lacing = vec![0u8; segments];
    if !read_exact_or_end(stream, &mut lacing).await? {
        return Err(SourceError::NotOgg("the stream ended inside a page".into()));
    }
    let body = parser.parse_segments(lacing);
    let mut data = vec![0u8; body];
    if !read_exact_or_end(stream, &mut data).await? {
        return Err(SourceError::NotOgg("the stream ended inside a page".into()));
    }
    parser
        .parse_packet_data(data)
        .map(Some)
        .map_err(|e| SourceError::NotOgg(e.to_string()))
}

/// Fills `buf`; false if the stream ended before the first byte. Times out after
/// [`IDLE_TIMEOUT`] of silence from the source.
async fn read_exact_or_end<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<bool, SourceError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf[filled..]))
            .await
            .map_err(|_| SourceError::Idle(IDLE_TIMEOUT))??;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(SourceError::NotOgg("the stream ended inside a page".into()))
            };
        }
        filled += n;
    }
    Ok(true)
}

/// Turns an Ogg/Opus stream's packets into the room's 20 ms mono `pcm16` frames.
#[derive(Default)]
struct OpusToRoom {
    decoder: Option<(opus::Decoder, usize)>,
    /// Decoded mono samples not yet sent.
    pending: Vec<f32>,
    /// Packets seen (the first two are the headers).
    packets: u64,
    decoded: Vec<f32>,
}

impl OpusToRoom {
    /// Takes one packet; returns the whole 20 ms frames it completes, as little-endian i16,
    /// each with its RMS level.
    fn packet(&mut self, packet: &[u8]) -> Result<Vec<(Bytes, f32)>, SourceError> {
        self.packets += 1;
        match self.packets {
            1 => {
                let channels = parse_opus_head(packet)?;
                let decoder = opus::Decoder::new(
                    48_000,
                    if channels == 2 {
                        opus::Channels::Stereo
                    } else {
                        opus::Channels::Mono
                    },
                )
                .map_err(|e| SourceError::Decode(e.to_string()))?;
                self.decoder = Some((decoder, channels));
                self.decoded = vec![0.0; MAX_PACKET_SAMPLES * channels];
                return Ok(Vec::new());
            }
            2 => {
                if !packet.starts_with(b"OpusTags") {
                    return Err(SourceError::NotOpus(
                        "the second packet is not OpusTags".into(),
                    ));
                }
                return Ok(Vec::new());
            }
            _ => {}
        }
        let Some((decoder, channels)) = self.decoder.as_mut() else {
            return Err(SourceError::NotOpus("no OpusHead".into()));
        };
        let channels = *channels;
        let n = decoder
            .decode_float(packet, &mut self.decoded, false)
            .map_err(|e| SourceError::Decode(e.to_string()))?;
        // Mixed down to mono by averaging the channels.
        self.pending.extend(
            self.decoded[..n * channels]
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() / channels as f32),
        );
        let whole = self.pending.len() / FRAME;
        let frames = (0..whole)
            .map(|i| {
                let samples = &self.pending[i * FRAME..(i + 1) * FRAME];
                let mut bytes = Vec::with_capacity(2 * FRAME);
                for &sample in samples {
                    let value = (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    bytes.extend_from_slice(&value.to_le_bytes());
                }
                let rms = (samples.iter().map(|s| s * s).sum::<f32>() / FRAME as f32).sqrt();
                (Bytes::from(bytes), rms)
            })
            .collect();
        self.pending.drain(..whole * FRAME);
        Ok(frames)
    }
}

/// The channel count of an `OpusHead` packet (RFC 7845): 1 or 2 with mapping family 0; other
/// layouts (surround, mapping family 1 and up) are refused.
fn parse_opus_head(packet: &[u8]) -> Result<usize, SourceError> {
    if packet.len() < 19 || !packet.starts_with(b"OpusHead") {
        return Err(SourceError::NotOpus(
            "the first packet is not OpusHead".into(),
        ));
    }
    let version = packet[8];
    if version >> 4 != 0 {
        return Err(SourceError::NotOpus(format!("OpusHead version {version}")));
    }
    let channels = usize::from(packet[9]);
    let family = packet[18];
    match (channels, family) {
        (1 | 2, 0) => Ok(channels),
        _ => Err(SourceError::NotOpus(format!(
            "{channels} channels with mapping family {family}; sources must be mono or stereo"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opus_head(channels: u8, family: u8) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, channels, 0x38, 0x01, 0x44, 0xac, 0, 0, 0, 0, family]);
        head
    }

    #[test]
    fn stereo_opus_at_any_rate_becomes_20_ms_mono_frames() {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)
                .expect("encoder");
        let mut room = OpusToRoom::default();
        assert!(room.packet(&opus_head(2, 0)).expect("head").is_empty());
        assert!(
            room.packet(b"OpusTags\0\0\0\0\0\0\0\0")
                .expect("tags")
                .is_empty()
        );
        // 60 ms packets of a 700 Hz tone in both channels: three frames each.
        let mut frames = Vec::new();
        let mut t = 0usize;
        for _ in 0..10 {
            let pcm: Vec<f32> = (0..2880)
                .flat_map(|_| {
                    let x = 0.25 * (2.0 * std::f32::consts::PI * 700.0 * t as f32 / 48_000.0).sin();
                    t += 1;
                    [x, x]
                })
                .collect();
            let packet = encoder.encode_vec_float(&pcm, 4000).expect("encode");
            frames.extend(room.packet(&packet).expect("decode"));
        }
        assert_eq!(frames.len(), 30);
        assert!(frames.iter().all(|(f, _)| f.len() == 2 * FRAME));
        let last: Vec<f32> = frames[29]
            .0
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32767.0)
            .collect();
        let peak = last.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.2..0.3).contains(&peak), "peak {peak}");
        assert!((0.15..0.2).contains(&frames[29].1), "rms {}", frames[29].1);
    }

    #[test]
    fn only_mono_and_stereo_opus_is_taken() {
        assert_eq!(parse_opus_head(&opus_head(1, 0)).expect("mono"), 1);
        assert!(parse_opus_head(&opus_head(6, 1)).is_err());
        assert!(parse_opus_head(b"OggS").is_err());
        assert!(OpusToRoom::default().packet(b"not a head at all").is_err());
    }

    #[test]
    fn passwords_compare_whole() {
        assert!(constant_time_eq(b"secret123", b"secret123"));
        assert!(!constant_time_eq(b"secret123", b"secret124"));
        assert!(!constant_time_eq(b"secret", b"secret123"));
    }

    #[test]
    fn pacing_turns_one_second_pages_into_a_frame_every_20_ms() {
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let frame = (Bytes::from_static(b"x"), 0.0);
        let mut pacer = Pacer::default();
        assert_eq!(pacer.next_due(), None);
        // The first page: 50 frames at once; then the next 50 a second later, 30 ms late (after
        // the first page played out: it is due from 40 to 1020 ms).
        for _ in 0..50 {
            pacer.push(frame.clone(), t0);
        }
        let mut sent = Vec::new();
        let mut now = t0;
        while sent.len() < 100 {
            if now == t0 + ms(1030) && pacer.is_empty() {
                for _ in 0..50 {
                    pacer.push(frame.clone(), now);
                }
            }
            match pacer.pop_due(now) {
                Some(_) => sent.push(now.duration_since(t0)),
                None => now += ms(1),
            }
        }
        // One frame every 20 ms from the margin on, shifted once by the second page's lateness.
        assert_eq!(sent[0], PACING_MARGIN);
        for pair in sent[..50].windows(2) {
            assert_eq!(pair[1] - pair[0], ms(20));
        }
        assert_eq!(sent[49], ms(1020));
        assert_eq!(sent[50], ms(1000 + 30 + 40), "shifted by the lateness");
        for pair in sent[50..].windows(2) {
            assert_eq!(pair[1] - pair[0], ms(20));
        }
        assert!(pacer.is_empty() && pacer.next_due().is_none());
    }

    #[test]
    fn chunked_bodies_are_recognised() {
        assert!(is_chunked(
            b"PUT /r HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
        ));
        assert!(!is_chunked(
            b"PUT /r HTTP/1.1\r\nContent-Type: audio/ogg\r\n\r\n"
        ));
    }
}
