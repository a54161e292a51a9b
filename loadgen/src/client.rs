//! One simulated client: connects, joins, sends its talker's packets on an absolute 20 ms
//! schedule (through the client-side impairment), and measures everything it receives.
//!
//! Each client is one tokio task. Talkers share their pre-encoded packets through an `Arc` and
//! only rewrite the 9-byte header, so feeding thousands of clients costs little; every receiver
//! takes the cheap path (header, sequence gaps, jitter, per-second counts) and only verified
//! receivers keep the packets, to be decoded after the run.
//!
//! The server pauses a client's frames while its mix is silent (downlink DTX): its sequence
//! numbers and timestamps jump over the pause and the frame that resumes carries the marker bit.
//! Receivers count such gaps as paused, not lost, and count the paused 20 ms periods as covered
//! in the per-second receive counts, so a stream that pauses in silence does not look choppy.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, ClientMessage, FRAME_SAMPLES, Flags, JoinRequest, Mode,
    Role, ServerMessage, parse_server_message,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::{Impairment, TalkPattern};
use crate::connect::{Connector, Ws};
use crate::rng::Rng;
use crate::signal::{PERIOD_FRAMES, Source};
use crate::stats::{FrameCounts, Jitter, Live, SeqTracker};

const FRAME: Duration = Duration::from_millis(20);

/// One frame period in seconds.
const FRAME_SECS: f64 = 0.02;

/// What is shared by all clients of a run.
#[derive(Debug)]
pub struct RunContext {
    /// Opens the clients' connections (ws:// or wss://).
    pub connector: Connector,
    /// Time zero of the run; all recorded times are seconds since it.
    pub epoch: Instant,
    /// When every client stops.
    pub end: Instant,
    /// Live counters.
    pub live: Arc<Live>,
    /// Talk pattern.
    pub pattern: TalkPattern,
    /// Mean spurt and pause lengths.
    pub talk_on: Duration,
    /// Mean pause length.
    pub talk_off: Duration,
    /// Client-side impairment.
    pub impairment: Impairment,
    /// Seed.
    pub seed: u64,
    /// Connect plus join timeout.
    pub join_timeout: Duration,
    /// Jitter samples start this long after a client's join.
    pub warmup: Duration,
}

impl RunContext {
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

/// Who a client is and what it does.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Global index.
    pub index: usize,
    /// Room index.
    pub room: usize,
    /// Index within the room; the first `talkers` talk.
    pub slot: usize,
    /// The talker's audio, `None` for a listener.
    pub source: Option<Arc<Source>>,
    /// Server URL.
    pub url: String,
    /// Its access token (for a server with keys), sent in the URL of every connection it
    /// makes, redirected ones included.
    pub access_token: Option<String>,
    /// Room name.
    pub room_name: String,
    /// When to connect.
    pub start_at: Instant,
    /// Keep received packets for verification.
    pub record: bool,
}

/// One received packet kept for verification.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival, seconds since the epoch.
    pub arrival: f64,
    /// Server sequence number.
    pub sequence: u16,
    /// The marker bit: the first frame of the stream or after a pause in silence.
    pub marker: bool,
    /// The level byte's V bit: the mix had something audible in it.
    pub voice_activity: bool,
    /// The Opus packet.
    pub payload: Bytes,
}

/// Everything a client measured.
#[derive(Debug, Default)]
pub struct ClientOutcome {
    /// Global index.
    pub index: usize,
    /// Room.
    pub room: usize,
    /// Slot within the room.
    pub slot: usize,
    /// Whether it talked.
    pub talker: bool,
    /// When the join completed, seconds since the epoch.
    pub joined_at: Option<f64>,
    /// Connect plus join time, ms.
    pub join_ms: Option<f64>,
    /// Why connecting or joining failed.
    pub failure: Option<String>,
    /// `redirect`s followed to reach the node that mixes its room.
    pub redirects: u32,
    /// Why the connection ended before the run did.
    pub disconnect: Option<String>,
    /// Server `error` messages: (code, message).
    pub server_errors: Vec<(String, String)>,
    /// Sequence accounting.
    pub seq: SeqTracker,
    /// Frames whose timestamp jumped further than their sequence number explains (more than
    /// 960 per sequence step): the server skipped mix ticks.
    pub tick_skips: u64,
    /// Frames covered in each second since the epoch: received, or paused in silence (a marked
    /// gap's frames spread 20 ms apart back from the frame that resumed; before a marked first
    /// frame, back to the join; after a last frame without voice activity, up to the end).
    pub per_second: Vec<u32>,
    /// Packets kept for verification.
    pub recording: Vec<Recorded>,
    /// Talker: scheduled time of each tone onset leaving the mouth, seconds since the epoch.
    pub onsets: Vec<f64>,
    /// Talker: seconds (since the epoch) it spent talking, as (from, to) intervals.
    pub talking: Vec<(f64, f64)>,
    /// Talker: packets sent.
    pub sent: u64,
    /// Talker: packets the impairment dropped.
    pub impaired_drops: u64,
}

/// The talker's send state: header counters, talk-spurt state and the impairment queue.
struct Sender {
    source: Arc<Source>,
    rng: Rng,
    next: Instant,
    sequence: u16,
    timestamp: u32,
    position: usize,
    talking: bool,
    frames_left: u64,
    first_of_spurt: bool,
    in_loss: bool,
    held: Option<Vec<u8>>,
    pending: Vec<(Instant, Vec<u8>)>,
}

impl Sender {
    fn frames_for(&mut self, mean: Duration) -> u64 {
        let secs = self.rng.exponential(mean.as_secs_f64());
        ((secs / FRAME.as_secs_f64()).round() as u64).max(1)
    }

    /// Produces the frame scheduled at `self.next`, advances the schedule, and queues the
    /// frame (if the impairment lets it through) for its due time.
    fn generate(&mut self, ctx: &RunContext, out: &mut ClientOutcome) {
        let scheduled = self.next;
        self.next += FRAME;
        if ctx.pattern == TalkPattern::Spurts {
            if self.frames_left == 0 {
                self.talking = !self.talking;
                let mean = if self.talking {
                    ctx.talk_on
                } else {
                    ctx.talk_off
                };
                self.frames_left = self.frames_for(mean);
                if self.talking {
                    self.position = 0;
                    self.first_of_spurt = true;
                }
            }
            self.frames_left -= 1;
        }
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        if !self.talking {
            return;
        }
        let at = ctx.secs(scheduled);
        // The frame holds the 20 ms of audio captured before it is sent.
        let mouth = at - FRAME.as_secs_f64();
        match out.talking.last_mut() {
            Some((_, to)) if (*to - mouth).abs() < 1e-6 => *to = at,
            _ => out.talking.push((mouth, at)),
        }
        let position = self.position;
        self.position = (self.position + 1) % self.source.packets.len();
        if self.source.freq.is_some() && position.is_multiple_of(PERIOD_FRAMES) {
            out.onsets.push(mouth);
        }
        let header = AudioHeader {
            flags: Flags::default().with_marker(self.first_of_spurt),
            sequence: self.sequence,
            timestamp,
            level: self.source.levels[position],
        };
        self.first_of_spurt = false;
        self.sequence = self.sequence.wrapping_add(1);
        out.sent += 1;
        let impairment = &ctx.impairment;
        let lose = if self.in_loss {
            self.rng.chance(impairment.loss_burst)
        } else {
            self.rng.chance(impairment.loss)
        };
        self.in_loss = lose;
        if lose {
            out.impaired_drops += 1;
            return;
        }
        let payload = &self.source.packets[position];
        let mut frame = Vec::with_capacity(mixer_protocol::AUDIO_HEADER_LEN + payload.len());
        AudioFrame { header, payload }.write_to(&mut frame);
        let due = scheduled + impairment.jitter.mul_f64(self.rng.unit());
        if let Some(held) = self.held.take() {
            // The held packet goes right after this one: the pair is swapped.
            self.pending.push((due, frame));
            self.pending.push((due, held));
        } else if self.rng.chance(impairment.reorder) {
            self.held = Some(frame);
        } else {
            self.pending.push((due, frame));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(at, _)| *at).min()
    }
}

fn join_message(plan: &ClientPlan, resume: Option<String>) -> Message {
    let mode = if plan.source.is_some() {
        Mode::Talk
    } else {
        Mode::Listen
    };
    let name = format!("lg-{}-{}", plan.room, plan.slot);
    let request = JoinRequest {
        resume,
        ..join_request(&plan.room_name, &name, mode, Role::default())
    };
    Message::text(ClientMessage::Join(request).to_json())
}

/// A `join` for `room` as a speaker named `name`, in Opus.
pub fn join_json(room: &str, name: &str, mode: Mode) -> String {
    join_json_as(room, name, mode, Role::default())
}

/// A `join` for `room` named `name` with `role`, in Opus.
pub fn join_json_as(room: &str, name: &str, mode: Mode, role: Role) -> String {
    ClientMessage::Join(join_request(room, name, mode, role)).to_json()
}

/// The `join` every loadgen client sends: Opus, no token in the message (it travels in the
/// URL), not a resume.
fn join_request(room: &str, name: &str, mode: Mode, role: Role) -> JoinRequest {
    JoinRequest {
        room: room.to_owned(),
        name: name.to_owned(),
        token: None,
        mode: Some(mode),
        resume: None,
        role: Some(role),
        format: AudioFormat::opus_48k_mono_20ms(),
    }
}

/// Redirects a client follows in a row before it gives up (a misconfigured fleet must not
/// bounce it forever).
pub const MAX_REDIRECTS: u32 = 3;

/// Connects and joins, following `redirect`s to the node that mixes the room; returns the
/// joined connection and how many redirects it followed.
async fn connect_and_join(plan: &ClientPlan, connector: &Connector) -> Result<(Ws, u32), String> {
    let mut url = plan.url.clone();
    let mut resume = None;
    for redirects in 0..=MAX_REDIRECTS {
        match join_at(plan, connector, &url, resume.take()).await? {
            Joined::Yes(ws) => return Ok((*ws, redirects)),
            Joined::Redirect { to, resume_token } => {
                url = to;
                resume = resume_token;
            }
        }
    }
    Err(format!(
        "more than {MAX_REDIRECTS} redirects in a row (last to {url})"
    ))
}

/// What one connection's `join` came to.
enum Joined {
    /// Joined (boxed: a connection is large, and this is one value per join).
    Yes(Box<Ws>),
    /// Sent elsewhere.
    Redirect {
        /// Where.
        to: String,
        /// To resume with there.
        resume_token: Option<String>,
    },
}

async fn join_at(
    plan: &ClientPlan,
    connector: &Connector,
    url: &str,
    resume: Option<String>,
) -> Result<Joined, String> {
    // tungstenite zero-fills the free part of its read buffer before every read; with the
    // 128 KiB default that memset, once per 20 ms frame per client, cost more than the read.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    // The client's own token goes with it to whichever node it is sent to.
    let url = match &plan.access_token {
        Some(token) => crate::auth::with_token(url, token),
        None => url.to_owned(),
    };
    let (mut ws, _) = connector
        .websocket(&url, Some(config))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ws.send(join_message(plan, resume))
        .await
        .map_err(|e| format!("sending join: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
                Ok(ServerMessage::Joined { .. }) => return Ok(Joined::Yes(Box::new(ws))),
                Ok(ServerMessage::Redirect {
                    url, resume_token, ..
                }) => {
                    let _ = ws.close(None).await;
                    return Ok(Joined::Redirect {
                        to: url,
                        resume_token,
                    });
                }
                Ok(ServerMessage::Error { code, message }) => {
                    return Err(format!("join rejected: {code}: {message}"));
                }
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed during join: {}",
                    close_reason(frame.as_ref())
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("during join: {e}")),
            None => return Err("connection dropped during join".into()),
        }
    }
}

fn close_reason(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("close {}", u16::from(f.code)),
        Some(f) => format!("close {} {}", u16::from(f.code), f.reason.as_str()),
        None => "close without code".into(),
    }
}

/// Runs one client to the end of the run.
pub async fn run_client(plan: ClientPlan, ctx: Arc<RunContext>) -> ClientOutcome {
    let mut out = ClientOutcome {
        index: plan.index,
        room: plan.room,
        slot: plan.slot,
        talker: plan.source.is_some(),
        ..ClientOutcome::default()
    };
    tokio::time::sleep_until(plan.start_at).await;
    let started = Instant::now();
    let connecting = connect_and_join(&plan, &ctx.connector);
    let mut ws = match tokio::time::timeout(ctx.join_timeout, connecting).await {
        Ok(Ok((ws, redirects))) => {
            out.redirects = redirects;
            ws
        }
        Ok(Err(e)) => {
            out.failure = Some(e);
            ctx.live.error();
            return out;
        }
        Err(_) => {
            out.failure = Some(format!("join timed out after {:?}", ctx.join_timeout));
            ctx.live.error();
            return out;
        }
    };
    let joined = Instant::now();
    out.joined_at = Some(ctx.secs(joined));
    out.join_ms = Some((joined - started).as_secs_f64() * 1000.0);
    ctx.live.connected.fetch_add(1, Ordering::Relaxed);
    receive_and_send(&plan, &ctx, &mut ws, joined, &mut out).await;
    ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
    if out.disconnect.is_none() {
        let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    }
    out
}

async fn receive_and_send(
    plan: &ClientPlan,
    ctx: &RunContext,
    ws: &mut Ws,
    joined: Instant,
    out: &mut ClientOutcome,
) {
    let mut sender = plan.source.as_ref().map(|source| {
        let mut rng = Rng::new(ctx.seed, plan.index as u64);
        let sequence = rng.next_u64() as u16;
        let timestamp = rng.next_u64() as u32;
        Sender {
            source: source.clone(),
            rng,
            next: joined,
            sequence,
            timestamp,
            position: 0,
            talking: true,
            // Spurt mode starts with a spurt (so everyone is heard early); drawn at first frame.
            frames_left: 0,
            first_of_spurt: true,
            in_loss: false,
            held: None,
            pending: Vec::new(),
        }
    });
    if let Some(s) = sender.as_mut()
        && ctx.pattern == TalkPattern::Spurts
    {
        s.talking = false; // flipped to a spurt by the first frame
    }
    let warm_from = joined + ctx.warmup;
    let joined_secs = ctx.secs(joined);
    let mut jitter = Jitter::default();
    let mut last_timestamp: Option<u32> = None;
    // Arrival and voice activity of the last in-order frame, to cover a trailing pause.
    let mut last_frame: Option<(f64, bool)> = None;
    let mut flushed = FrameCounts::default();
    let mut next_flush = joined + Duration::from_secs(1);
    let sleep = tokio::time::sleep_until(joined);
    tokio::pin!(sleep);
    loop {
        let mut wake = ctx.end.min(next_flush);
        if let Some(s) = &sender {
            wake = wake.min(s.next);
            if let Some(due) = s.next_due() {
                wake = wake.min(due);
            }
        }
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            () = &mut sleep => {
                let now = Instant::now();
                if now >= ctx.end {
                    break;
                }
                if now >= next_flush {
                    next_flush += Duration::from_secs(1);
                    let counts = FrameCounts::of(&out.seq);
                    ctx.live.flush(
                        counts.since(flushed),
                        if now >= warm_from { Some(jitter.millis()) } else { None },
                    );
                    flushed = counts;
                }
                if let Some(s) = sender.as_mut() {
                    while s.next <= now {
                        s.generate(ctx, out);
                    }
                    if s.pending.iter().any(|(at, _)| *at <= now) {
                        let mut due = Vec::new();
                        s.pending.retain_mut(|(at, frame)| {
                            if *at <= now {
                                due.push(std::mem::take(frame));
                                false
                            } else {
                                true
                            }
                        });
                        for frame in due {
                            if let Err(e) = ws.feed(Message::binary(frame)).await {
                                out.disconnect = Some(format!("send failed: {e}"));
                                ctx.live.error();
                                return;
                            }
                        }
                        if let Err(e) = ws.flush().await {
                            out.disconnect = Some(format!("send failed: {e}"));
                            ctx.live.error();
                            return;
                        }
                    }
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let Ok(frame) = AudioFrame::parse(&bytes) else {
                        out.server_errors.push(("bad_frame".into(), "unparsable audio frame".into()));
                        continue;
                    };
                    let now = Instant::now();
                    let arrival = ctx.secs(now);
                    let header = frame.header;
                    let marker = header.flags.marker();
                    let voice_activity = header.level.voice_activity();
                    let ahead = out.seq.record(header.sequence, marker);
                    jitter.record(arrival, header.timestamp);
                    match (ahead, last_timestamp) {
                        (Some(ahead), Some(last)) => {
                            if is_tick_skip(ahead, header.timestamp.wrapping_sub(last)) {
                                out.tick_skips += 1;
                            }
                            if marker {
                                cover_before(&mut out.per_second, arrival, u64::from(ahead - 1));
                            }
                        }
                        (None, None) if marker => {
                            // The first frame: the mix was silent from the join until now.
                            let paused = ((arrival - joined_secs) / FRAME_SECS).max(0.0) as u64;
                            cover_before(&mut out.per_second, arrival, paused);
                        }
                        _ => {}
                    }
                    if ahead.is_some() || last_timestamp.is_none() {
                        last_timestamp = Some(header.timestamp);
                        last_frame = Some((arrival, voice_activity));
                    }
                    count_at(&mut out.per_second, arrival);
                    if plan.record {
                        let start = mixer_protocol::AUDIO_HEADER_LEN;
                        out.recording.push(Recorded {
                            arrival,
                            sequence: header.sequence,
                            marker,
                            voice_activity,
                            payload: bytes.slice(start..),
                        });
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ServerMessage::Error { code, message }) =
                        parse_server_message(text.as_str())
                    {
                        ctx.live.error();
                        out.server_errors.push((code.as_str().to_owned(), message));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    out.disconnect = Some(format!("closed by server: {}", close_reason(frame.as_ref())));
                    ctx.live.error();
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    out.disconnect = Some(format!("connection error: {e}"));
                    ctx.live.error();
                    return;
                }
                None => {
                    out.disconnect = Some("connection dropped".into());
                    ctx.live.error();
                    return;
                }
            },
        }
    }
    // Frames before a pause are encoded silence: a stream whose last frame had no voice activity
    // is paused until the end, not cut off.
    if let Some((arrival, false)) = last_frame {
        let end = ctx.secs(ctx.end);
        let paused = ((end - arrival) / FRAME_SECS).max(0.0) as u64;
        for k in 1..=paused {
            count_at(&mut out.per_second, arrival + FRAME_SECS * k as f64);
        }
    }
    ctx.live
        .flush(FrameCounts::of(&out.seq).since(flushed), None);
}

/// Whether a frame `ahead` sequence numbers past the previous one, its timestamp `step` samples
/// later, shows skipped mix ticks: a pause advances both together, so only a timestamp step
/// beyond 960 per sequence step is a skip.
pub fn is_tick_skip(ahead: u16, step: u32) -> bool {
    step < 1 << 31 && u64::from(step) > u64::from(ahead) * FRAME_SAMPLES as u64
}

/// Counts one frame covered at `at` seconds in its second.
fn count_at(per_second: &mut Vec<u32>, at: f64) {
    if at < 0.0 {
        return;
    }
    let second = at as usize;
    if per_second.len() <= second {
        per_second.resize(second + 1, 0);
    }
    per_second[second] += 1;
}

/// Counts `frames` paused frames as covered, 20 ms apart, ending 20 ms before `arrival`.
fn cover_before(per_second: &mut Vec<u32>, arrival: f64, frames: u64) {
    for k in 1..=frames {
        count_at(per_second, arrival - FRAME_SECS * k as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timestamp_steps_beyond_the_sequence_step_are_tick_skips() {
        assert!(!is_tick_skip(1, 960));
        assert!(is_tick_skip(1, 1920)); // one tick skipped
        assert!(!is_tick_skip(50, 50 * 960)); // a pause of 49 frames
        assert!(is_tick_skip(50, 51 * 960)); // a pause, and a tick skipped
        assert!(!is_tick_skip(3, 3 * 960)); // loss
        assert!(!is_tick_skip(1, 0u32.wrapping_sub(960))); // backwards
        assert!(!is_tick_skip(40_000, 40_000 * 960)); // a 13-minute pause
    }

    #[test]
    fn paused_frames_are_covered_in_the_seconds_they_span() {
        let mut per_second = Vec::new();
        count_at(&mut per_second, 2.03);
        // Three frames paused before the one at 2.03 s: 2.01 s, 1.99 s and 1.97 s.
        cover_before(&mut per_second, 2.03, 3);
        assert_eq!(per_second, vec![0, 2, 2]);
        // Nothing before the epoch.
        cover_before(&mut per_second, 0.03, 5);
        assert_eq!(per_second, vec![1, 2, 2]);
    }
}
