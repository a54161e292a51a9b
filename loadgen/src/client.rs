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
//!
//! A session can break mid-run in a fleet: a `redirect` (`moved`: the node drained and handed
//! the room on, with a resume token; `lease_lost`: the node may no longer mix the room) or a
//! dropped connection (a node killed). The client then rejoins (see [`crate::join`]) while its
//! talker keeps its 20 ms schedule, counting the frames it could not send, and records each
//! [`Reconnection`]: why, when, how long until it was back, and how long its audio was gone.
//! Each connection is a stream of its own (sequence numbers, timestamps, jitter start afresh).

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, ClientMessage, FRAME_SAMPLES, Flags, FloorEndReason,
    JoinRequest, Mode, RedirectReason, Role, ServerMessage, close_code, parse_server_message,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::{Impairment, TalkPattern};
use crate::connect::{Connector, Ws};
use crate::join::{self, AttemptError, Joined, REJOIN_WINDOW, close_reason};
use crate::rng::Rng;
use crate::signal::{PERIOD_FRAMES, Source};
use crate::stats::{FrameCounts, Jitter, Live, SeqTracker};

const FRAME: Duration = Duration::from_millis(20);

/// One frame period in seconds.
const FRAME_SECS: f64 = 0.02;

/// How long a connection on which sending failed is still read, for a `redirect` (or the
/// error) that explains the failure, before its session counts as dropped.
const SEND_FAILED_GRACE: Duration = Duration::from_millis(500);

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
    /// When the reconnect storm drops its clients, if there is one.
    pub storm_at: Option<Instant>,
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
    /// Every server URL of the run: after a dropped connection the client rejoins at the one
    /// after the node it was on.
    pub urls: Arc<Vec<String>>,
    /// Its access token (for a server with keys), sent in the URL of every connection it
    /// makes, redirected ones included.
    pub access_token: Option<String>,
    /// Room name.
    pub room_name: String,
    /// When to connect.
    pub start_at: Instant,
    /// Stretches it spends out of its room (churn, or stages that ramp down and up again): it
    /// leaves at the first instant and joins again, afresh, at the second.
    pub away: Vec<(Instant, Instant)>,
    /// When it leaves for good, if before the end of the run (a stage ramping down).
    pub leave_at: Option<Instant>,
    /// Its talker talks push-to-talk: joins in `ptt` mode and asks for the floor before each
    /// spurt.
    pub ptt: bool,
    /// A moderator: joins as one (listening) and mutes the room's talkers in turn.
    pub moderate: Option<Moderate>,
    /// Its room has a moderator: its talker listens for being muted.
    pub moderated: bool,
    /// It sends and receives 16-bit PCM at this rate instead of Opus.
    pub pcm_rate: Option<u32>,
    /// Keep received packets for verification.
    pub record: bool,
    /// The reconnect storm drops this client.
    pub stormed: bool,
}

/// What a moderating client does: every `every`, it mutes the next of its room's talkers (the
/// first `talkers` slots, by their names) and unmutes it `hold` later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moderate {
    /// Between two mutes.
    pub every: Duration,
    /// How long each mute lasts.
    pub hold: Duration,
    /// The room's talkers: slots `0..talkers`.
    pub talkers: usize,
}

/// A moderator's mutes and unmutes, and a talker's experience of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModerationStats {
    /// Moderator: `mute`s sent (muted: true).
    pub mutes: u64,
    /// Moderator: unmutes sent.
    pub unmutes: u64,
    /// Moderator: `participant_muted` seen for its own mutes and unmutes (the server carried
    /// them out).
    pub confirmed: u64,
    /// Talker: times it was told it was muted.
    pub muted: u64,
    /// Talker: seconds (since the epoch) it spent muted, as (from, to).
    pub muted_spans: Vec<(f64, f64)>,
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
    /// `redirect`s followed: to reach the node that mixes its room when joining, mid-session
    /// ones (also counted in `reconnections`), and those followed while rejoining.
    pub redirects: u32,
    /// Each time its session broke and it (tried to) rejoin, in order.
    pub reconnections: Vec<Reconnection>,
    /// Talker: frames due while it was rejoining (or queued by the impairment when the
    /// connection broke), which it could not send. Not in `sent`.
    pub unsent: u64,
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
    /// Talker: packets sent (before the impairment), while connected.
    pub sent: u64,
    /// Talker: packets the impairment dropped.
    pub impaired_drops: u64,
    /// When it left for good before the end of the run (a stage ramping down), seconds since
    /// the epoch.
    pub left_at: Option<f64>,
    /// Push-to-talk: its floor requests and what became of them.
    pub floor: FloorStats,
    /// Moderation: mutes it sent, or suffered.
    pub moderation: ModerationStats,
    /// Its jitter estimate once a second after its warm-up, µs.
    pub jitter_us: Vec<u64>,
    /// The node it was last joined at.
    pub node: Option<String>,
    /// It received 16-bit PCM at this rate, not Opus (verification decodes accordingly).
    pub pcm_rate: Option<u32>,
}

/// A push-to-talk talker's floor requests (one per talk spurt) and their answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FloorStats {
    /// `floor_request`s sent.
    pub requests: u64,
    /// Granted.
    pub granted: u64,
    /// Denied: someone else held the floor.
    pub denied: u64,
    /// Taken away by the server before the talker let go (longest turn, silence, a
    /// moderator).
    pub revoked: u64,
    /// From each request to its grant, ms.
    pub grant_ms: Vec<f64>,
}

impl ClientOutcome {
    /// Its connections in order, as verification reads them: when each joined, which of
    /// `recording`'s packets came on it, and when it broke (`None`: it lasted to the end of the
    /// run, or the client gave up on it).
    pub fn segments(&self) -> Vec<Segment> {
        let Some(first) = self.joined_at else {
            return Vec::new();
        };
        let mut segments = vec![Segment {
            joined_at: first,
            packets: 0..self.recording.len(),
            broke_at: None,
        }];
        for r in &self.reconnections {
            if let Some(last) = segments.last_mut() {
                last.broke_at = Some(r.broke_at);
                last.packets.end = r.first_packet.min(self.recording.len());
            }
            let Some(joined_at) = r.rejoined_at else {
                break;
            };
            segments.push(Segment {
                joined_at,
                packets: r.first_packet.min(self.recording.len())..self.recording.len(),
                broke_at: None,
            });
        }
        segments
    }
}

/// One connection of a client, between its join and its break.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// When it joined (or rejoined), seconds since the epoch.
    pub joined_at: f64,
    /// The packets of [`ClientOutcome::recording`] that came on it.
    pub packets: Range<usize>,
    /// When it broke, seconds since the epoch; `None` if it did not.
    pub broke_at: Option<f64>,
}

/// Why a client's session broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconnectCause {
    /// A `redirect` with reason `moved`: the node drained and handed the room to another.
    Moved,
    /// A `redirect` with reason `lease_lost`: the node may no longer mix the room.
    LeaseLost,
    /// A `redirect` with reason `other_node` mid-session (a server sends it only at join).
    OtherNode,
    /// No redirect: the connection failed or ended, or the node went away (close 1001).
    Dropped,
    /// The reconnect storm (`--storm-at`): loadgen cut the connection itself.
    Storm,
    /// Planned: the client left (churn, or a stage ramping down) and joined again later as a
    /// new participant.
    Churn,
}

impl ReconnectCause {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectCause::Moved => "moved",
            ReconnectCause::LeaseLost => "lease_lost",
            ReconnectCause::OtherNode => "other_node",
            ReconnectCause::Dropped => "dropped",
            ReconnectCause::Storm => "storm",
            ReconnectCause::Churn => "churn",
        }
    }
}

impl From<RedirectReason> for ReconnectCause {
    fn from(reason: RedirectReason) -> ReconnectCause {
        match reason {
            RedirectReason::Moved => ReconnectCause::Moved,
            RedirectReason::LeaseLost => ReconnectCause::LeaseLost,
            RedirectReason::OtherNode => ReconnectCause::OtherNode,
        }
    }
}

/// One break of a client's session and its way back. Times are seconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnection {
    /// Why it broke.
    pub cause: ReconnectCause,
    /// What broke it, in words: the redirect, or the connection's error.
    pub reason: String,
    /// When it broke: the redirect came, or the connection ended or failed.
    pub broke_at: f64,
    /// Arrival of the last audio frame on the connection that broke, if any came.
    pub last_frame_at: Option<f64>,
    /// When the client started to join again: at once after a break, or at the end of its time
    /// away (churn).
    pub returns_at: f64,
    /// When the client was joined again; `None` if it never was (it gave up, or the run ended).
    pub rejoined_at: Option<f64>,
    /// Arrival of the first audio frame on the new connection.
    pub first_frame_at: Option<f64>,
    /// The server resumed it as the same participant (a moved room, with its token).
    pub resumed: bool,
    /// The node it rejoined at.
    pub url: Option<String>,
    /// Connections tried to rejoin.
    pub attempts: u32,
    /// It gave up: no rejoin within [`REJOIN_WINDOW`], or an answer no retry could change.
    pub gave_up: bool,
    /// Index in [`ClientOutcome::recording`] of the first packet of the new connection.
    pub first_packet: usize,
}

impl Reconnection {
    /// Its audio gap, ms: from the last frame received before the break to the first after.
    /// `None` without a frame on either side (a stream paused in silence, or never back).
    pub fn gap_ms(&self) -> Option<f64> {
        Some((self.first_frame_at? - self.last_frame_at?) * 1000.0)
    }

    /// From the break (or the end of a planned time away) to being joined again, ms.
    pub fn rejoin_ms(&self) -> Option<f64> {
        Some((self.rejoined_at? - self.returns_at) * 1000.0)
    }

    /// The time the client was out of its room, for a run ending at `end`: from the last frame
    /// before the break (or the break) to the rejoin (or the end). Receive rates and
    /// verification leave it out: it is reported as the gap, not counted as loss. `None` for a
    /// client that gave up, whose silence from then on is a failure like any disconnect.
    pub fn outage(&self, end: f64) -> Option<(f64, f64)> {
        if self.gave_up {
            return None;
        }
        let from = self
            .last_frame_at
            .unwrap_or(self.broke_at)
            .min(self.broke_at);
        Some((from, self.rejoined_at.unwrap_or(end).min(end)))
    }
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
    /// Out of the room by plan (churn): frames due are neither sent nor missed.
    away: bool,
    /// Push-to-talk: where its floor stands.
    floor: Floor,
    /// Push-to-talk: floor requests and releases to send before the next frames.
    control: Vec<ClientMessage>,
    /// A moderator muted it: it goes on sending (as a client does), but nobody should hear
    /// it, so nothing is recorded as said.
    muted: bool,
}

/// A push-to-talk talker's hold on the floor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Floor {
    /// Not talking (or talking freely: not push-to-talk).
    Idle,
    /// Asked at this instant, no answer yet: nothing is sent.
    Asked(Instant),
    /// Granted: sending.
    Held,
    /// Denied or taken away for the rest of this spurt: nothing is sent.
    Lost,
}

impl Sender {
    /// A talker starting its schedule at `joined`, its header counters drawn from the seed.
    fn new(source: Arc<Source>, ctx: &RunContext, index: usize, joined: Instant) -> Sender {
        let mut rng = Rng::new(ctx.seed, index as u64);
        let sequence = rng.next_u64() as u16;
        let timestamp = rng.next_u64() as u32;
        Sender {
            source,
            rng,
            next: joined,
            sequence,
            timestamp,
            position: 0,
            // Spurt mode starts with a spurt (so everyone is heard early): the first frame
            // flips it on.
            talking: ctx.pattern != TalkPattern::Spurts,
            frames_left: 0,
            first_of_spurt: true,
            in_loss: false,
            held: None,
            pending: Vec::new(),
            away: false,
            floor: Floor::Idle,
            control: Vec::new(),
            muted: false,
        }
    }

    /// Whether this frame may go out: always, but for a push-to-talk talker without the floor.
    fn has_floor(&self, ptt: bool) -> bool {
        !ptt || self.floor == Floor::Held
    }

    fn frames_for(&mut self, mean: Duration) -> u64 {
        let secs = self.rng.exponential(mean.as_secs_f64());
        ((secs / FRAME.as_secs_f64()).round() as u64).max(1)
    }

    /// Produces the frame scheduled at `self.next`, advances the schedule, and queues the
    /// frame (if the impairment lets it through) for its due time. While not `connected` the
    /// frame is only counted: the audio goes on (position, sequence, timestamp), as a real
    /// client's capture would, but nothing is recorded as said.
    fn generate(&mut self, ctx: &RunContext, out: &mut ClientOutcome, connected: bool, ptt: bool) {
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
                if ptt && connected {
                    // The button: pressed at a spurt's start, let go at its end.
                    match (self.talking, self.floor) {
                        (true, _) => {
                            self.floor = Floor::Asked(scheduled);
                            self.control
                                .push(ClientMessage::FloorRequest { preempt: false });
                            out.floor.requests += 1;
                        }
                        (false, Floor::Held) => {
                            self.floor = Floor::Idle;
                            self.control.push(ClientMessage::FloorRelease);
                        }
                        (false, _) => self.floor = Floor::Idle,
                    }
                }
            }
            self.frames_left -= 1;
        }
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        if !self.talking || (connected && !self.has_floor(ptt)) {
            return;
        }
        if !connected {
            self.position = (self.position + 1) % self.source.packets.len();
            self.sequence = self.sequence.wrapping_add(1);
            if !self.away {
                out.unsent += 1;
            }
            return;
        }
        let at = ctx.secs(scheduled);
        // The frame holds the 20 ms of audio captured before it is sent.
        let mouth = at - FRAME.as_secs_f64();
        let position = self.position;
        self.position = (self.position + 1) % self.source.packets.len();
        if !self.muted {
            match out.talking.last_mut() {
                Some((_, to)) if (*to - mouth).abs() < 1e-6 => *to = at,
                _ => out.talking.push((mouth, at)),
            }
            if self.source.freq.is_some() && position.is_multiple_of(PERIOD_FRAMES) {
                out.onsets.push(mouth);
            }
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

    /// The queued frames due by `now`, in order.
    fn take_due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        if self.pending.iter().any(|(at, _)| *at <= now) {
            self.pending.retain_mut(|(at, frame)| {
                if *at <= now {
                    due.push(std::mem::take(frame));
                    false
                } else {
                    true
                }
            });
        }
        due
    }

    /// The connection broke (or the client left, `planned`): frames queued by the impairment
    /// will not be sent, and count as unsent unless the client meant to leave.
    fn lose_pending(&mut self, out: &mut ClientOutcome, planned: bool) {
        let lost = self.pending.len() as u64 + u64::from(self.held.is_some());
        self.pending.clear();
        self.held = None;
        out.sent -= lost;
        if !planned {
            out.unsent += lost;
        }
        // A new connection is a new participant (or a resumed one that lost its floor): a
        // push-to-talk talker waits for its next spurt to ask again.
        self.floor = Floor::Idle;
        self.control.clear();
    }

    /// Takes in the server's answer about the floor.
    fn on_floor(&mut self, event: FloorEvent, out: &mut ClientOutcome, now: Instant) {
        match (event, self.floor) {
            (FloorEvent::Granted, Floor::Asked(at)) => {
                self.floor = Floor::Held;
                out.floor.granted += 1;
                out.floor
                    .grant_ms
                    .push(now.saturating_duration_since(at).as_secs_f64() * 1000.0);
            }
            (FloorEvent::Denied, floor) => {
                // Counted even when it comes after the spurt ended, so requests add up.
                out.floor.denied += 1;
                if matches!(floor, Floor::Asked(_)) {
                    self.floor = Floor::Lost;
                }
            }
            (FloorEvent::Revoked, Floor::Held) => {
                self.floor = Floor::Lost;
                out.floor.revoked += 1;
            }
            // Granted again while held: the server's answer to a press that overtook the
            // grant of the one before (asking while holding keeps the turn).
            (FloorEvent::Granted, Floor::Held) => {}
            // Granted after the spurt ended (or after a denial): the button is up already,
            // so the floor goes straight back rather than blocking the channel.
            (FloorEvent::Granted, _) => {
                out.floor.granted += 1;
                self.control.push(ClientMessage::FloorRelease);
            }
            // Late answers (the spurt already ended) change nothing.
            _ => {}
        }
    }
}

/// The `join` a loadgen client sends (resuming with `resume`, if given).
pub(crate) fn join_message(plan: &ClientPlan, resume: Option<String>) -> Message {
    let mode = match (&plan.source, plan.ptt) {
        (Some(_), true) => Mode::Ptt,
        (Some(_), false) => Mode::Talk,
        (None, _) => Mode::Listen,
    };
    let name = format!("lg-{}-{}", plan.room, plan.slot);
    let role = if plan.moderate.is_some() {
        Role::Moderator
    } else {
        Role::default()
    };
    let plain = join_request(&plan.room_name, &name, mode, role);
    let request = JoinRequest {
        resume,
        format: plan
            .pcm_rate
            .map_or(plain.format.clone(), AudioFormat::pcm16),
        ..plain
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

/// Runs one client to the end of the run.
pub async fn run_client(plan: ClientPlan, ctx: Arc<RunContext>) -> ClientOutcome {
    let mut out = ClientOutcome {
        index: plan.index,
        room: plan.room,
        slot: plan.slot,
        talker: plan.source.is_some(),
        pcm_rate: plan.pcm_rate,
        ..ClientOutcome::default()
    };
    tokio::time::sleep_until(plan.start_at).await;
    let started = Instant::now();
    let connecting = join::connect_and_join(&plan, &ctx.connector);
    let joined = match tokio::time::timeout(ctx.join_timeout, connecting).await {
        Ok(Ok(joined)) => joined,
        Ok(Err(e)) => {
            out.failure = Some(e.to_string());
            ctx.live.error();
            return out;
        }
        Err(_) => {
            out.failure = Some(format!("join timed out after {:?}", ctx.join_timeout));
            ctx.live.error();
            return out;
        }
    };
    out.redirects = joined.redirects;
    out.node = Some(joined.url.clone());
    let now = Instant::now();
    out.joined_at = Some(ctx.secs(now));
    out.join_ms = Some((now - started).as_secs_f64() * 1000.0);
    ctx.live.connected.fetch_add(1, Ordering::Relaxed);
    let link = Link::Up {
        ws: joined.ws,
        url: joined.url,
        token: joined.resume_token,
        me: joined.participant_id,
    };
    let session = run_session(&plan, &ctx, link, joined.others, now, &mut out).await;
    if let Some(Link::Up { mut ws, .. }) = session {
        ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_millis(500), (*ws).close(None)).await;
    }
    out
}

/// A rejoin under way (see [`join::rejoin`]).
type Rejoining<'a> = Pin<Box<dyn Future<Output = Result<Joined, AttemptError>> + Send + 'a>>;

/// The client's connection to its room: joined, or getting back in after a break.
enum Link<'a> {
    /// Joined at `url`.
    Up {
        /// The connection.
        ws: Box<Ws>,
        /// The node's URL.
        url: String,
        /// The resume token of this join: a dropped connection comes back with it as the same
        /// participant (the server keeps the seat for a while).
        token: Option<String>,
        /// Its participant id on this connection.
        me: u32,
    },
    /// The session broke; the client is rejoining.
    Down(Rejoining<'a>),
}

/// What the link did next.
enum LinkEvent {
    /// A message (or the end) on the connection.
    Message(Option<Result<Message, WsError>>),
    /// The rejoin ended.
    Rejoined(Result<Joined, AttemptError>),
}

/// Waits for the link's next event. Cancel-safe: a connection's `next` is, and a rejoin lives
/// on in its box.
async fn link_event(link: &mut Link<'_>) -> LinkEvent {
    match link {
        Link::Up { ws, .. } => LinkEvent::Message(ws.next().await),
        Link::Down(rejoining) => LinkEvent::Rejoined(rejoining.as_mut().await),
    }
}

/// What a connection's stream looks like to the receiver so far. A new one per connection: a
/// new node's stream (or a resumed one) starts its own sequence numbers and timestamps.
struct Stream {
    /// When this connection joined.
    joined: Instant,
    jitter: Jitter,
    last_timestamp: Option<u32>,
    /// Arrival and voice activity of the last in-order frame, to cover a trailing pause.
    last_frame: Option<(f64, bool)>,
    /// Arrival of the last frame of any order.
    last_arrival: Option<f64>,
}

impl Stream {
    fn new(joined: Instant) -> Stream {
        Stream {
            joined,
            jitter: Jitter::default(),
            last_timestamp: None,
            last_frame: None,
            last_arrival: None,
        }
    }
}

/// What the server said of a push-to-talk talker's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloorEvent {
    /// `floor_granted` to it.
    Granted,
    /// `floor_denied`.
    Denied,
    /// `floor_released` of it, for another reason than its own release.
    Revoked,
}

/// What a message on the connection means for the session.
enum Next {
    /// Carry on.
    Continue,
    /// The session broke (`reason`): rejoin, starting at `url` (resuming with `resume`), at
    /// once or (planned: churn) at `back`.
    Rejoin {
        cause: ReconnectCause,
        reason: String,
        url: String,
        resume: Option<String>,
        back: Option<Instant>,
    },
    /// News of the floor.
    Floor(FloorEvent),
    /// This client was muted (`true`) or unmuted by a moderator.
    Muted(bool),
    /// News of the room's members, for a moderator.
    Roster(RosterChange),
    /// The connection ended for good (the server's verdict on this client, not a node going
    /// away): it counts as disconnected.
    Stop(String),
}

/// Sends and receives until the end of the run, rejoining whenever the session breaks, and
/// returns the link as it is then (`None` when the client gave up).
async fn run_session<'a>(
    plan: &'a ClientPlan,
    ctx: &'a RunContext,
    mut link: Link<'a>,
    others: Vec<(u32, String)>,
    joined: Instant,
    out: &mut ClientOutcome,
) -> Option<Link<'a>> {
    let mut sender = plan
        .source
        .as_ref()
        .map(|source| Sender::new(source.clone(), ctx, plan.index, joined));
    let mut moderator = plan.moderate.map(|m| Moderator::new(m, joined, others));
    let warm_from = joined + ctx.warmup;
    let mut stream = Stream::new(joined);
    let mut flushed = FrameCounts::default();
    let mut next_flush = joined + Duration::from_secs(1);
    // When and why sending failed on the current connection. The session is not broken there
    // and then: a server that sent a `redirect` and closed may have reset the connection under
    // a frame being sent, and the redirect still waits to be read. Reading decides, or the
    // grace runs out.
    let mut send_failed: Option<(Instant, String)> = None;
    // The storm cuts this client's connection once, if it is one of those it takes.
    // A client that joins after the storm (a group starting late) was not there to be cut.
    let mut storm_at = ctx.storm_at.filter(|&at| plan.stormed && at >= joined);
    // This client's end: the run's, or its leave when a stage ramps down before it.
    let end = plan.leave_at.map_or(ctx.end, |leave| leave.min(ctx.end));
    let mut aways = plan.away.iter().copied().peekable();
    let sleep = tokio::time::sleep_until(joined);
    tokio::pin!(sleep);
    loop {
        let mut wake = end.min(next_flush);
        if let (Some(&(at, _)), Link::Up { .. }) = (aways.peek(), &link) {
            wake = wake.min(at);
        }
        if let Some(s) = &sender {
            wake = wake.min(s.next);
            if let Some(due) = s.next_due() {
                wake = wake.min(due);
            }
        }
        if let Some((at, _)) = &send_failed {
            wake = wake.min(*at + SEND_FAILED_GRACE);
        }
        if let Some(at) = storm_at {
            wake = wake.min(at);
        }
        if let (Some(m), Link::Up { .. }) = (&moderator, &link) {
            wake = wake.min(m.next_due());
        }
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        let next = tokio::select! {
            () = &mut sleep => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= next_flush {
                    next_flush += Duration::from_secs(1);
                    let counts = FrameCounts::of(&out.seq);
                    let jitter = (now >= warm_from).then(|| stream.jitter.millis());
                    if let Some(ms) = jitter {
                        out.jitter_us.push((ms * 1000.0).max(1.0) as u64);
                    }
                    ctx.live.flush(counts.since(flushed), jitter);
                    flushed = counts;
                }
                let away_now = aways.next_if(|&(at, _)| now >= at);
                if let Some((_, back)) = away_now {
                    match &link {
                        // Leaves, and comes back later as a new participant at the same node.
                        Link::Up { url, .. } => Next::Rejoin {
                            cause: ReconnectCause::Churn,
                            reason: "churn: left as planned".into(),
                            url: url.clone(),
                            resume: None,
                            back: Some(back),
                        },
                        // Rejoining after a break already: this time away is skipped.
                        Link::Down(_) => Next::Continue,
                    }
                } else if storm_at.is_some_and(|at| now >= at) {
                    storm_at = None;
                    match &link {
                        // Back at the same node at once, as a client whose network came back.
                        Link::Up { url, token, .. } => Next::Rejoin {
                            cause: ReconnectCause::Storm,
                            reason: "storm: connection cut by loadgen".into(),
                            url: url.clone(),
                            resume: token.clone(),
                            back: None,
                        },
                        // Already rejoining: the storm has nothing to cut.
                        Link::Down(_) => Next::Continue,
                    }
                } else if let (Some((at, reason)), Link::Up { url, token, .. }) =
                    (&send_failed, &link)
                    && now >= *at + SEND_FAILED_GRACE
                {
                    Next::Rejoin {
                        cause: ReconnectCause::Dropped,
                        reason: reason.clone(),
                        url: join::next_url(plan, url).to_owned(),
                        resume: token.clone(),
                        back: None,
                    }
                } else if let (Some(m), Link::Up { ws, .. }) = (moderator.as_mut(), &mut link)
                    && now >= m.next_due()
                {
                    let message = m.act(now, out);
                    if let Some(message) = message
                        && let Err(e) = ws.send(Message::text(message.to_json())).await
                    {
                        send_failed = Some((now, format!("send failed: {e}")));
                    }
                    Next::Continue
                } else if let Some(s) = sender.as_mut() {
                    // The talker keeps its schedule through a break: frames due while it
                    // cannot send are not sent, only counted.
                    let connected = matches!(link, Link::Up { .. }) && send_failed.is_none();
                    while s.next <= now {
                        s.generate(ctx, out, connected, plan.ptt);
                    }
                    let due = s.take_due(now);
                    let control = std::mem::take(&mut s.control);
                    match &mut link {
                        Link::Up { ws, .. } if connected && !(due.is_empty() && control.is_empty()) => {
                            if let Err(e) = send_all(ws, due, control).await {
                                send_failed = Some((now, format!("send failed: {e}")));
                            }
                        }
                        _ => {
                            let lost = due.len() as u64;
                            out.sent -= lost;
                            out.unsent += lost;
                        }
                    }
                    Next::Continue
                } else {
                    Next::Continue
                }
            }
            event = link_event(&mut link) => match event {
                LinkEvent::Message(message) => {
                    let Link::Up { url, token, me, .. } = &link else {
                        unreachable!("messages come only from a link that is up")
                    };
                    let on = Connection { url, token: token.as_deref(), me: *me };
                    receive(plan, ctx, &on, message, &mut stream, out)
                }
                LinkEvent::Rejoined(Ok(joined)) => {
                    let now = Instant::now();
                    if let Some(r) = out.reconnections.last_mut() {
                        r.rejoined_at = Some(ctx.secs(now));
                        r.resumed = joined.resumed;
                        r.url = Some(joined.url.clone());
                        r.attempts = joined.attempts;
                        r.first_packet = out.recording.len();
                    }
                    out.redirects += joined.redirects;
                    out.node = Some(joined.url.clone());
                    out.seq.restart();
                    stream = Stream::new(now);
                    if let Some(s) = sender.as_mut() {
                        // The first frame on the new connection starts a spurt: the server's
                        // jitter buffer takes it as a stream (re)starting, not as loss.
                        s.first_of_spurt = true;
                        s.away = false;
                        // A new participant starts unmuted (a resumed one keeps its state).
                        if s.muted && !joined.resumed {
                            s.muted = false;
                            if let Some(span) = out.moderation.muted_spans.last_mut() {
                                span.1 = ctx.secs(now);
                            }
                        }
                    }
                    ctx.live.connected.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = moderator.as_mut() {
                        m.rejoined(now, joined.others);
                    }
                    link = Link::Up {
                        ws: joined.ws,
                        url: joined.url,
                        token: joined.resume_token,
                        me: joined.participant_id,
                    };
                    Next::Continue
                }
                LinkEvent::Rejoined(Err(e)) => {
                    let cause = out.reconnections.last_mut().map(|r| {
                        r.gave_up = true;
                        r.cause
                    });
                    let cause = cause.map_or("?", ReconnectCause::as_str);
                    out.disconnect = Some(format!(
                        "{cause}: gave up rejoining (within {REJOIN_WINDOW:?}): {e}"
                    ));
                    ctx.live.error();
                    return None;
                }
            },
        };
        match next {
            Next::Continue => {}
            Next::Floor(event) => {
                if let Some(s) = sender.as_mut() {
                    s.on_floor(event, out, Instant::now());
                }
            }
            Next::Muted(muted) => {
                let at = ctx.secs(Instant::now());
                let stats = &mut out.moderation;
                match (muted, sender.as_mut()) {
                    (true, Some(s)) if !s.muted => {
                        s.muted = true;
                        stats.muted += 1;
                        stats.muted_spans.push((at, ctx.secs(end)));
                    }
                    (false, Some(s)) if s.muted => {
                        s.muted = false;
                        if let Some(span) = stats.muted_spans.last_mut() {
                            span.1 = at;
                        }
                    }
                    _ => {}
                }
            }
            Next::Roster(change) => {
                if let Some(m) = moderator.as_mut() {
                    m.roster(change, out);
                }
            }
            Next::Stop(reason) => {
                out.disconnect = Some(reason);
                ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
                ctx.live.error();
                return None;
            }
            Next::Rejoin {
                cause,
                reason,
                url,
                resume,
                back,
            } => {
                let now = Instant::now();
                out.reconnections.push(Reconnection {
                    cause,
                    reason,
                    broke_at: ctx.secs(now),
                    returns_at: ctx.secs(back.unwrap_or(now)),
                    last_frame_at: stream.last_arrival,
                    rejoined_at: None,
                    first_frame_at: None,
                    resumed: false,
                    url: None,
                    attempts: 0,
                    gave_up: false,
                    first_packet: out.recording.len(),
                });
                match cause {
                    ReconnectCause::Dropped => ctx.live.error(),
                    ReconnectCause::Storm | ReconnectCause::Churn => {}
                    // The mid-session redirect itself: followed, so counted with the others.
                    _ => out.redirects += 1,
                }
                ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
                ctx.live.reconnections.fetch_add(1, Ordering::Relaxed);
                send_failed = None;
                if let Some(s) = sender.as_mut() {
                    s.lose_pending(out, back.is_some());
                    s.away = back.is_some();
                }
                let (connector, timeout) = (&ctx.connector, ctx.join_timeout);
                let rejoining = async move {
                    let from = back.unwrap_or(now);
                    tokio::time::sleep_until(from).await;
                    join::rejoin(plan, connector, url, resume, timeout, from + REJOIN_WINDOW).await
                };
                match (
                    std::mem::replace(&mut link, Link::Down(Box::pin(rejoining))),
                    cause,
                ) {
                    // Cut with no WebSocket close, so the server holds the seat for a resume
                    // as for a network that failed (the socket's FIN still tells it at once,
                    // rather than its ping timeout). Dropped here.
                    (Link::Up { .. }, ReconnectCause::Storm) => {}
                    (Link::Up { mut ws, .. }, _) => {
                        // The server closes after a redirect anyway; closing from this side
                        // too, in the background, keeps the talker on its schedule meanwhile.
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(Duration::from_millis(500), (*ws).close(None))
                                    .await;
                        });
                    }
                    (Link::Down(_), _) => {}
                }
            }
        }
    }
    // Frames before a pause are encoded silence: a stream whose last frame had no voice activity
    // is paused until the end, not cut off.
    if end < ctx.end {
        out.left_at = Some(ctx.secs(end));
    }
    if let (Link::Up { .. }, Some((arrival, false))) = (&link, stream.last_frame) {
        let end = ctx.secs(end);
        let paused = ((end - arrival) / FRAME_SECS).max(0.0) as u64;
        for k in 1..=paused {
            count_at(&mut out.per_second, arrival + FRAME_SECS * k as f64);
        }
    }
    ctx.live
        .flush(FrameCounts::of(&out.seq).since(flushed), None);
    Some(link)
}

/// Feeds `frames`, then `control` messages, to the connection and flushes once. Frames first:
/// they were captured before the button went up, so a `floor_release` must not overtake them
/// (the server drops push-to-talk audio that arrives without the floor, with `no_floor`). A
/// `floor_request` never has frames of its own spurt beside it: those wait for the grant.
async fn send_all(
    ws: &mut Ws,
    frames: Vec<Vec<u8>>,
    control: Vec<ClientMessage>,
) -> Result<(), WsError> {
    for frame in frames {
        ws.feed(Message::binary(frame)).await?;
    }
    for message in control {
        ws.feed(Message::text(message.to_json())).await?;
    }
    ws.flush().await
}

/// The connection a message came on, as [`receive`] needs it.
struct Connection<'a> {
    /// The node's URL.
    url: &'a str,
    /// The join's resume token.
    token: Option<&'a str>,
    /// The client's participant id on it.
    me: u32,
}

/// Takes in one message of connection `on`.
fn receive(
    plan: &ClientPlan,
    ctx: &RunContext,
    on: &Connection<'_>,
    message: Option<Result<Message, WsError>>,
    stream: &mut Stream,
    out: &mut ClientOutcome,
) -> Next {
    let (url, token) = (on.url, on.token);
    // A dropped connection's node may be gone: the next URL of the client's list. The client
    // asks to come back as itself; a node that does not hold its seat answers `resume_failed`
    // and the rejoin joins afresh.
    let dropped = |reason: String| Next::Rejoin {
        cause: ReconnectCause::Dropped,
        reason,
        url: join::next_url(plan, url).to_owned(),
        resume: token.map(str::to_owned),
        back: None,
    };
    match message {
        Some(Ok(Message::Binary(bytes))) => {
            let Ok(frame) = AudioFrame::parse(&bytes) else {
                out.server_errors
                    .push(("bad_frame".into(), "unparsable audio frame".into()));
                return Next::Continue;
            };
            let arrival = ctx.secs(Instant::now());
            let header = frame.header;
            let marker = header.flags.marker();
            let voice_activity = header.level.voice_activity();
            if stream.last_arrival.is_none()
                && let Some(r) = out.reconnections.last_mut()
            {
                r.first_frame_at = Some(arrival);
            }
            stream.last_arrival = Some(arrival);
            let ahead = out.seq.record(header.sequence, marker);
            stream.jitter.record(arrival, header.timestamp);
            match (ahead, stream.last_timestamp) {
                (Some(ahead), Some(last)) => {
                    if is_tick_skip(ahead, header.timestamp.wrapping_sub(last)) {
                        out.tick_skips += 1;
                    }
                    if marker {
                        cover_before(&mut out.per_second, arrival, u64::from(ahead - 1));
                    }
                }
                (None, None) if marker => {
                    // The connection's first frame: the mix was silent from the join until now.
                    let joined = ctx.secs(stream.joined);
                    let paused = ((arrival - joined) / FRAME_SECS).max(0.0) as u64;
                    cover_before(&mut out.per_second, arrival, paused);
                }
                _ => {}
            }
            if ahead.is_some() || stream.last_timestamp.is_none() {
                stream.last_timestamp = Some(header.timestamp);
                stream.last_frame = Some((arrival, voice_activity));
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
            Next::Continue
        }
        Some(Ok(Message::Text(text))) if !may_matter(text.as_str(), interests(plan)) => {
            Next::Continue
        }
        Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
            Ok(ServerMessage::Error { code, message }) => {
                ctx.live.error();
                out.server_errors.push((code.as_str().to_owned(), message));
                Next::Continue
            }
            // Sent elsewhere mid-session (the server closes with 4307 next): a moved room is
            // resumed at its new node with the token; otherwise the client joins afresh at
            // `url`, which finds the room wherever it is now.
            Ok(ServerMessage::Redirect {
                url,
                reason,
                resume_token,
                ..
            }) => Next::Rejoin {
                cause: ReconnectCause::from(reason),
                reason: format!("redirect ({}) to {url}", reason.as_str()),
                url,
                resume: resume_token,
                back: None,
            },
            Ok(ServerMessage::FloorGranted { participant_id, .. }) if participant_id == on.me => {
                Next::Floor(FloorEvent::Granted)
            }
            Ok(ServerMessage::FloorDenied { .. }) => Next::Floor(FloorEvent::Denied),
            Ok(ServerMessage::ParticipantMuted {
                participant_id,
                muted,
                by,
            }) => {
                if participant_id == on.me {
                    Next::Muted(muted)
                } else if by == Some(on.me) {
                    Next::Roster(RosterChange::Confirmed)
                } else {
                    Next::Continue
                }
            }
            Ok(ServerMessage::ParticipantJoined { participant }) => {
                Next::Roster(RosterChange::Joined(participant.id, participant.name))
            }
            Ok(ServerMessage::ParticipantLeft { participant_id, .. }) => {
                Next::Roster(RosterChange::Left(participant_id))
            }
            Ok(ServerMessage::FloorReleased {
                participant_id,
                reason,
                ..
            }) if participant_id == on.me && reason != FloorEndReason::Released => {
                Next::Floor(FloorEvent::Revoked)
            }
            _ => Next::Continue,
        },
        Some(Ok(Message::Close(frame))) => {
            let reason = format!("closed by server: {}", close_reason(frame.as_ref()));
            // A node going away (1001, shutting down) is rejoined elsewhere; any other close
            // is the server's verdict on this client (slow consumer, removed, ...), and a
            // client that came back after it would hide it.
            match frame.map(|f| u16::from(f.code)) {
                Some(close_code::GOING_AWAY | close_code::REDIRECT) => dropped(reason),
                _ => Next::Stop(reason),
            }
        }
        Some(Ok(_)) => Next::Continue,
        Some(Err(e)) => dropped(format!("connection error: {e}")),
        None => dropped("connection dropped".into()),
    }
}

/// Whether a control message received during the run may be one the client acts on (`error`,
/// `redirect`, and for a push-to-talk client the floor's messages). Everything else (the roster, talking events) is only counted by the server's
/// side, so it is not parsed: every member of a room of N hears of every join, so a ramp of N
/// clients brings N²/2 such messages, and parsing each cost a town hall of 3,000 listeners more
/// than loadgen's core (the ramp stalled and its clients were closed as slow consumers). The
/// server writes the `type` first; a message that does not start that way is parsed in full.
fn may_matter(text: &str, extra: &[&str]) -> bool {
    const PREFIX: &str = "{\"type\":\"";
    match text.strip_prefix(PREFIX) {
        Some(rest) => {
            rest.starts_with("error\"")
                || rest.starts_with("redirect\"")
                || extra.iter().any(|prefix| rest.starts_with(prefix))
        }
        None => true,
    }
}

/// The message types (by prefix) a client acts on beyond errors and redirects: the floor's for
/// a push-to-talk talker, its own muting for a moderated talker, the roster for a moderator.
fn interests(plan: &ClientPlan) -> &'static [&'static str] {
    match (plan.moderate.is_some(), plan.ptt, plan.moderated) {
        (true, _, _) => &["participant_"],
        (false, true, true) => &["floor_", "participant_muted"],
        (false, true, false) => &["floor_"],
        (false, false, true) => &["participant_muted"],
        (false, false, false) => &[],
    }
}

/// A change in the room's membership, as a moderator tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RosterChange {
    /// Someone joined: id and name.
    Joined(u32, String),
    /// Someone left.
    Left(u32),
    /// The server carried out one of this moderator's mutes or unmutes.
    Confirmed,
}

/// A moderating client's state: the room's talkers by id, and its next mute or unmute.
struct Moderator {
    plan: Moderate,
    /// Talkers in the room: participant id → slot.
    talkers: std::collections::BTreeMap<u32, usize>,
    next_mute: Instant,
    /// The talker muted now, and when to unmute it.
    unmute: Option<(Instant, u32)>,
    /// Mutes so far: picks the next talker in turn.
    turn: usize,
}

impl Moderator {
    fn new(plan: Moderate, joined: Instant, others: Vec<(u32, String)>) -> Moderator {
        let mut moderator = Moderator {
            plan,
            talkers: std::collections::BTreeMap::new(),
            next_mute: joined + plan.every,
            unmute: None,
            turn: 0,
        };
        for (id, name) in others {
            moderator.note(id, &name);
        }
        moderator
    }

    /// Adds `id` if its name (`lg-<room>-<slot>`) is one of the room's talkers'.
    fn note(&mut self, id: u32, name: &str) {
        let slot = name
            .rsplit('-')
            .next()
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(slot) = slot.filter(|&slot| slot < self.plan.talkers) {
            self.talkers.insert(id, slot);
        }
    }

    fn next_due(&self) -> Instant {
        self.unmute
            .map_or(self.next_mute, |(at, _)| at.min(self.next_mute))
    }

    /// The mute or unmute due at `now`, if any.
    fn act(&mut self, now: Instant, out: &mut ClientOutcome) -> Option<ClientMessage> {
        if let Some((at, id)) = self.unmute
            && now >= at
        {
            self.unmute = None;
            out.moderation.unmutes += 1;
            return Some(ClientMessage::Mute {
                participant_id: Some(id),
                muted: false,
            });
        }
        if now < self.next_mute {
            return None;
        }
        self.next_mute += self.plan.every;
        // One mute at a time: a turn that comes while the last is still on is skipped.
        if self.unmute.is_some() || self.talkers.is_empty() {
            return None;
        }
        let mut by_slot: Vec<(usize, u32)> = self.talkers.iter().map(|(&id, &s)| (s, id)).collect();
        by_slot.sort_unstable();
        let (_, id) = by_slot[self.turn % by_slot.len()];
        self.turn += 1;
        self.unmute = Some((now + self.plan.hold, id));
        out.moderation.mutes += 1;
        Some(ClientMessage::Mute {
            participant_id: Some(id),
            muted: true,
        })
    }

    fn roster(&mut self, change: RosterChange, out: &mut ClientOutcome) {
        match change {
            RosterChange::Joined(id, name) => self.note(id, &name),
            RosterChange::Left(id) => {
                self.talkers.remove(&id);
                // Nobody left to unmute: the talker comes back (if it does) unmuted.
                if self.unmute.is_some_and(|(_, muted)| muted == id) {
                    self.unmute = None;
                }
            }
            RosterChange::Confirmed => out.moderation.confirmed += 1,
        }
    }

    /// Back on a new connection: the room as it is now. A mute under way is still undone, if
    /// its talker is still there (the server keeps a mute when its moderator goes).
    fn rejoined(&mut self, now: Instant, others: Vec<(u32, String)>) {
        self.talkers.clear();
        self.next_mute = now + self.plan.every;
        for (id, name) in others {
            self.note(id, &name);
        }
        if self
            .unmute
            .is_some_and(|(_, id)| !self.talkers.contains_key(&id))
        {
            self.unmute = None;
        }
    }
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
    fn only_errors_redirects_and_unexpected_layouts_are_parsed_during_the_run() {
        // The server's serialiser writes the type first, as the fast path expects.
        let error = ServerMessage::error(mixer_protocol::ErrorCode::RateLimited, "slow down");
        assert!(error.to_json().starts_with(r#"{"type":"error""#));
        assert!(may_matter(&error.to_json(), &[]));
        assert!(!may_matter(
            r#"{"type":"participant_joined","participant":{"id":3,"name":"Cy","mode":"listen","role":"listener"}}"#,
            &["floor_"]
        ));
        let granted = r#"{"type":"floor_granted","participant_id":3}"#;
        assert!(may_matter(granted, &["floor_"]) && !may_matter(granted, &[]));
        assert!(!may_matter(
            r#"{"type":"talking_started","participant_id":3}"#,
            &["participant_"]
        ));
        assert!(may_matter(
            r#"{"type":"redirect","room":"r","url":"ws://b/","reason":"moved"}"#,
            &[]
        ));
        // Not the server's layout: parsed in full rather than guessed at.
        assert!(may_matter(r#"{ "type": "participant_joined" }"#, &[]));
        assert!(may_matter(r#"{"participant_id":3,"type":"error"}"#, &[]));
    }

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
