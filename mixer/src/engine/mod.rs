//! The sans-IO mixing engine.
//!
//! A [`Room`] owns everything needed to mix one room: a jitter buffer and Opus decoder per
//! talker, an Opus encoder and limiter per participant, the mix bus and the tick clock. It never
//! reads the clock, never touches a socket and never spawns: time and packets come in as
//! arguments, encoded frames and events come out. That is what lets the simulation tests run ten
//! minutes of a room in about a second on a virtual clock, through the same code as production.
//!
//! # Contract
//!
//! ```text
//! room = Room::new(config, now)
//! loop {
//!     on a packet from participant p (arrival time t):  room.handle_audio(p, frame, t)
//!     on join / leave:                                  room.add_participant(..) / remove_participant(..)
//!     when now >= room.poll_timeout():                  room.handle_timeout(now)   // one tick
//!         then drain:  while let Some(tx) = room.poll_transmit() { send tx.header + tx.payload to tx.to }
//!                      while let Some(ev) = room.poll_event()    { act on it }
//!         and repeat while room.poll_timeout() <= now (catch-up, see the clock module)
//! }
//! ```
//!
//! `handle_timeout` runs at most one tick per call, and each tick leaves at most one frame per
//! participant to drain (none while its mix is paused in silence, see below). A frame not drained before the next tick is replaced (and counted in
//! [`ParticipantStats::frames_overwritten`]); the shell drains after every call.
//!
//! # One tick
//!
//! 1. Every talker's jitter buffer decides what plays now: a packet, a concealed frame (Opus PLC
//!    or in-band FEC from the next packet), two frames merged to shed delay, or silence.
//!    Silence costs nothing: the participant is not decoded and not summed.
//! 2. The decoded frames are summed into the bus.
//! 3. Each contributing talker's output is the bus minus its own decoded frame (mix-minus: its
//!    own voice is absent, not merely quieter), limited and encoded with its own encoder.
//! 4. Everyone else — listeners and silent talkers — hears the bus as it is, which is limited and
//!    encoded **once** per tick and shared: a room of N with K talking costs K + 1 encodes, not N.
//! 5. Every frame is stamped with the room's sequence number (+1 per tick) and timestamp (+960
//!    per tick): each participant's stream is continuous, and a shared frame is the same bytes
//!    for all its listeners.
//!
//! A room with many talkers (see [`EngineConfig::parallel_threshold`]) decodes and encodes half
//! of its participants on a scoped helper thread each tick; the result is bit-identical.
//!
//! Silence is cheap: a talker whose packets say "silent" (no voice activity below -60 dBov, or an
//! Opus DTX frame) is not decoded after a short hangover, and a stream whose mix has been digital
//! silence for a few frames is not encoded again. Unless [`EngineConfig::send_silence`] is set, it
//! is not sent either (downlink DTX): the participant's frames pause, and the first frame after
//! the pause carries the marker bit, its sequence number and timestamp jumped by the ticks not
//! sent. A room of silent participants therefore costs neither encodes nor sends.
//!
//! Moving between a talker's own stream and the shared one is done so the listener's decoder
//! never sees a jump between unrelated encoder states: a talker keeps its own stream for a few
//! ticks after it falls silent while the shared stream encodes the same input (the two encoders
//! and limiters converge), and a talker who starts talking continues from the shared limiter's
//! state with its encoder primed on the shared stream's last inputs.
//!
//! In a single-floor push-to-talk room the transmission on the air is recorded, and a
//! participant who joins during it hears it replayed from its start on a stream of its own
//! until it has caught up with live (see [`replay`]).
//!
//! Nothing in a steady-state tick allocates: all buffers are sized when a participant joins
//! (a recording grows by about 100 bytes per tick while a transmission is on the air).

pub mod clock;
pub mod codec;
pub mod floor;
pub mod jitter;
pub mod limiter;
pub mod mix;
pub mod pcm;
pub mod replay;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mixer_protocol::{
    AudioFrame, AudioHeader, AudioLevel, FRAME_MS, FRAME_SAMPLES, Flags, MAX_OPUS_PACKET, Mode,
};

use self::clock::TickClock;
use self::codec::{CodecError, EncoderSettings};
use self::floor::{Floor, FloorChange, FloorConfig, FloorPolicy, FloorReply};
use self::jitter::{
    ArrivingPacket, InsertOutcome, JitterBuffer, JitterConfig, JitterStats, Playout,
};
use self::limiter::{Limiter, LimiterConfig};
use self::pcm::{PcmDownlink, PcmError, PcmRate, PcmUplink};
use self::replay::{Capture, Captured, Player, Recordings, Step};

/// The server-wide id of one participant (one joined connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u32);

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The duration of one frame and one mix tick.
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);

/// Ticks a talker keeps its own stream after it stops contributing. While it is silent its own
/// mix equals the shared one, so after a few ticks of identical input its encoder and limiter
/// have converged on the shared stream's state and the switch is inaudible.
const OWN_STREAM_HANGOVER: u32 = 3;

/// Frames of the shared stream's recent input replayed into a talker's own encoder when it moves
/// from the shared stream to its own, so its encoder state matches what the listener's decoder
/// has been following.
const PRIME_FRAMES: usize = 2;

/// Silent packets (by header, or DTX) still decoded after audible ones before decoding stops.
/// Decoding the start of a silence lets the decoder's state settle on it, so the first packet of
/// the next talk spurt decodes cleanly after the skipped ones.
const SILENT_DECODE_HANGOVER: u32 = 5;

/// Encodes of an all-zero mix after which a stream stops calling the encoder and repeats its
/// last packet (the codec's digital-silence frame) until the mix is audible again.
const SILENCE_SETTLE_FRAMES: u32 = 3;

/// Time constant of the smoothed talker level used to pick the loudest talkers, in ticks (200 ms).
const LOUDNESS_TICKS: f32 = 10.0;

/// Level advantage of a talker already in the mix over a newcomer when the room is at its talker
/// cap (2x in power, 3 dB), so the set of mixed talkers does not flicker between near-equals.
const SELECTED_BONUS: f32 = 2.0;

/// Buckets of [`ParticipantStats::limiter_reduction_db`].
pub const LIMITER_DB_BUCKETS: usize = 25;

/// Below this RMS an output frame is marked as carrying no voice activity (about -60 dBFS).
const VOICE_RMS_THRESHOLD: f32 = 0.001;

/// A participant starts "talking" (for talking events) when its decoded level is above this RMS
/// (about -40 dBFS) for [`TALK_START_FRAMES`] frames in a row...
const TALK_START_RMS: f32 = 0.01;
const TALK_START_FRAMES: u32 = 2;
/// ...and stops after [`TALK_STOP_FRAMES`] frames (300 ms) below this RMS (about -50 dBFS) or
/// without audio: the gap between the two thresholds and the hold time are the hysteresis that
/// keeps a talking indicator from flickering between words.
const TALK_STOP_RMS: f32 = 0.003;
const TALK_STOP_FRAMES: u32 = 15;

/// Level normalisation aims each talker's speech at this RMS (about -20 dBFS)...
const NORMALISE_TARGET_RMS: f32 = 0.1;
/// ...with at most this much gain or attenuation (linear: +-15 dB)...
const NORMALISE_MAX_GAIN: f32 = 5.62;
/// ...adapting over about this many voiced frames (2 s), so it follows a speaker's level, not
/// the syllables.
const NORMALISE_FRAMES: f32 = 100.0;

/// Largest manual input gain a moderator may set, in dB (either way).
pub const MAX_GAIN_DB: f32 = 20.0;

/// Everything that tunes a room.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How outgoing mixes are encoded.
    pub encoder: EncoderSettings,
    /// Jitter-buffer tuning for every talker.
    pub jitter: JitterConfig,
    /// Output limiter.
    pub limiter: LimiterConfig,
    /// Late ticks still run when the room is behind by fewer than this many ticks; beyond it
    /// they are skipped (see the clock module).
    pub max_catch_up_ticks: u32,
    /// Participants a room holds at most.
    pub max_participants: usize,
    /// Talkers mixed at most in one tick: when more talk at once, the loudest (by a smoothed
    /// level, with hysteresis) are mixed and the rest are left out of the mix that tick. This
    /// bounds a room's encodes at `max_talkers + 1` whatever its size.
    pub max_talkers: usize,
    /// Rooms with at least this many talkers split each tick's decoding and encoding
    /// between the mixer thread and one scoped helper thread, so one large room can use two
    /// cores; `None` keeps every room on one thread. Spawning the helper costs tens of
    /// microseconds per tick, so only rooms whose tick takes milliseconds should split.
    pub parallel_threshold: Option<usize>,
    /// Keep sending a frame every tick even when a participant's mix has settled into digital
    /// silence (the same silence packet, repeated). Off by default: those frames are paused
    /// (downlink DTX), which is what makes hundreds of quiet rooms cheap to serve. For clients
    /// whose player cannot cope with gaps in the stream.
    pub send_silence: bool,
    /// Push-to-talk floor control.
    pub floor: FloorConfig,
    /// Bring every talker's speech towards a common level (slowly, within +-15 dB).
    pub normalise: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            encoder: EncoderSettings::default(),
            jitter: JitterConfig::default(),
            limiter: LimiterConfig::default(),
            max_catch_up_ticks: 5,
            max_participants: 256,
            max_talkers: 16,
            parallel_threshold: Some(48),
            send_silence: false,
            floor: FloorConfig::default(),
            normalise: false,
        }
    }
}

/// Why the engine refused a call.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The id is already in this room.
    #[error("participant {0} is already in the room")]
    AlreadyJoined(ParticipantId),
    /// The id is not in this room.
    #[error("participant {0} is not in the room")]
    UnknownParticipant(ParticipantId),
    /// The room is at its participant limit.
    #[error("room is full ({0} participants)")]
    RoomFull(usize),
    /// Audio from a participant in listen mode, which is never mixed.
    #[error("participant {0} joined in listen mode; its audio is not mixed")]
    ListenOnly(ParticipantId),
    /// Audio from a participant who is muted; it is dropped (and counted).
    #[error("participant {0} is muted")]
    Muted(ParticipantId),
    /// Audio from a push-to-talk participant who does not hold the floor in a single-floor room.
    #[error("participant {0} does not hold the floor")]
    NoFloor(ParticipantId),
    /// A floor request from a participant not in push-to-talk mode.
    #[error("participant {0} is not in push-to-talk mode")]
    NotPushToTalk(ParticipantId),
    /// A gain outside +-[`MAX_GAIN_DB`] (or not a number).
    #[error("gain {0} dB is outside -{MAX_GAIN_DB}..={MAX_GAIN_DB} dB")]
    InvalidGain(f32),
    /// Building a codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Building a PCM converter failed.
    #[error(transparent)]
    Pcm(#[from] PcmError),
}

/// How a participant's audio is coded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCodec {
    /// Opus at 48 kHz (the engine's own rate).
    #[default]
    Opus,
    /// 16-bit PCM at a client rate, resampled to and from 48 kHz.
    Pcm(PcmRate),
}

/// A PCM client's converters and its rendered frame.
struct PcmLink {
    uplink: PcmUplink,
    downlink: PcmDownlink,
    /// This tick's frame for the client (16-bit little-endian at its rate).
    payload: Vec<u8>,
    /// Consecutive silent outputs (for pausing in silence, like the Opus streams).
    silent_ticks: u32,
}

/// One encoded frame for one participant, borrowed from the room until the next call.
#[derive(Debug)]
pub struct Transmit<'a> {
    /// Who receives it.
    pub to: ParticipantId,
    /// The header for this listener's stream (its own sequence and timestamp).
    pub header: AudioHeader,
    /// One Opus packet.
    pub payload: &'a [u8],
}

impl Transmit<'_> {
    /// The frame as it goes on the wire: header followed by the Opus packet.
    pub fn frame(&self) -> AudioFrame<'_> {
        AudioFrame {
            header: self.header,
            payload: self.payload,
        }
    }
}

/// Something the shell may want to act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A participant's packet failed to decode (it was concealed instead). Reported once per
    /// run of failures, not per packet.
    DecodeFailed {
        /// Whose packet.
        participant: ParticipantId,
    },
    /// Encoding a participant's mix failed; that participant got no frame this tick.
    EncodeFailed {
        /// Whose mix.
        participant: ParticipantId,
    },
    /// Encoding the shared full mix failed; everyone on it got no frame this tick.
    SharedEncodeFailed,
    /// The caller was so late that ticks were skipped instead of run.
    TicksSkipped {
        /// How many.
        count: u64,
    },
    /// A participant started talking (its decoded level rose above the talking threshold).
    TalkingStarted {
        /// Who.
        participant: ParticipantId,
    },
    /// A participant stopped talking (quiet for a while, muted, or no longer allowed to talk).
    TalkingStopped {
        /// Who.
        participant: ParticipantId,
    },
    /// The push-to-talk floor changed hands.
    Floor(FloorChange),
    /// A participant who joined during a transmission and heard it replayed from its start
    /// has caught up: from now on it hears the room live (see [`replay`]).
    CaughtUp {
        /// Who.
        participant: ParticipantId,
    },
}

/// Plain counters for one participant; the shell copies them into metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    /// Jitter-buffer counters (received, late, lost, concealed, ...), copied at snapshot time.
    pub jitter: JitterStats,
    /// Packets that failed to decode.
    pub decode_errors: u64,
    /// Frames decoded (including concealment and merges).
    pub frames_decoded: u64,
    /// Silent packets played without decoding.
    pub frames_skipped: u64,
    /// Frames encoded and handed out.
    pub frames_out: u64,
    /// Frames replaced before the shell drained them.
    pub frames_overwritten: u64,
    /// Frames not sent because the mix had settled into silence (downlink DTX).
    pub frames_paused: u64,
    /// Output frames in which the limiter reduced the gain.
    pub frames_limited: u64,
    /// Limited frames by their deepest gain reduction, in whole dB (index 1 = up to 1 dB, ...,
    /// the last bucket = that much or more).
    pub limiter_reduction_db: [u64; LIMITER_DB_BUCKETS],
    /// Encoder failures.
    pub encode_errors: u64,
    /// Audio packets dropped because the participant was muted.
    pub frames_muted: u64,
    /// Audio packets dropped because a push-to-talk participant did not hold the floor.
    pub frames_without_floor: u64,
}

/// Plain counters for a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// Ticks run.
    pub ticks: u64,
    /// Ticks skipped by the catch-up policy.
    pub ticks_skipped: u64,
    /// Talkers that contributed audio, summed over ticks (divide by ticks for the average).
    pub contributions: u64,
    /// Opus encodes run (own streams, the shared stream and priming).
    pub encodes: u64,
    /// Encodes that primed a talker's encoder on moving off the shared stream.
    pub primes: u64,
    /// Talker frames decoded but left out of the mix by the talker cap.
    pub capped: u64,
}

/// The phases of one tick, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickPhase {
    /// Jitter buffers and Opus decoding (and concealment).
    Decode,
    /// Summing, mix-minus and the limiter.
    Mix,
    /// Opus encoding of every output.
    Encode,
    /// The tick is over.
    Done,
}

/// Told when each phase of a tick starts; the shell implements it with a clock to measure the
/// cost of decoding, mixing and encoding.
pub trait PhaseTimer {
    /// `phase` starts now.
    fn phase(&mut self, phase: TickPhase);
}

/// A [`PhaseTimer`] that measures nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTimer;

impl PhaseTimer for NoTimer {
    fn phase(&mut self, _phase: TickPhase) {}
}

/// Counters summed over everyone who was ever in a room, for the shell's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomTotals {
    /// Jitter-buffer counters, summed.
    pub jitter: JitterStats,
    /// Participant counters, summed (the `jitter` field inside stays zero; see above).
    pub participants: ParticipantStats,
}

impl RoomTotals {
    fn add(&mut self, stats: &ParticipantStats) {
        let j = &mut self.jitter;
        let s = &stats.jitter;
        j.received += s.received;
        j.played += s.played;
        j.duplicates += s.duplicates;
        j.late += s.late;
        j.invalid += s.invalid;
        j.lost += s.lost;
        j.fec_recovered += s.fec_recovered;
        j.expanded += s.expanded;
        j.merged += s.merged;
        j.overflow_dropped += s.overflow_dropped;
        j.resets += s.resets;
        j.underruns += s.underruns;
        j.reordered += s.reordered;
        let p = &mut self.participants;
        p.decode_errors += stats.decode_errors;
        p.frames_decoded += stats.frames_decoded;
        p.frames_skipped += stats.frames_skipped;
        p.frames_out += stats.frames_out;
        p.frames_overwritten += stats.frames_overwritten;
        p.frames_paused += stats.frames_paused;
        p.frames_limited += stats.frames_limited;
        p.encode_errors += stats.encode_errors;
        p.frames_muted += stats.frames_muted;
        p.frames_without_floor += stats.frames_without_floor;
        for (total, n) in p
            .limiter_reduction_db
            .iter_mut()
            .zip(&stats.limiter_reduction_db)
        {
            *total += n;
        }
    }
}

/// One participant's codec state and buffers, all sized at join.
struct Participant {
    id: ParticipantId,
    mode: Mode,
    jitter: JitterBuffer,
    decoder: opus::Decoder,
    /// The participant's own mix-minus stream; talkers only (listeners always hear the shared
    /// mix, so they never need an encoder of their own).
    own: Option<MixStream>,
    /// This tick's decoded contribution (valid when `contributing`).
    decoded: Box<[f32]>,
    /// Second decode target for merges.
    scratch: Box<[f32]>,
    /// This tick's frame is ready, with this header; its payload comes from `own` when
    /// `uses_own`, else from the room's shared stream.
    pending: Option<AudioHeader>,
    contributing: bool,
    /// Whether this tick's output is the participant's own stream (else the shared one).
    uses_own: bool,
    /// The own encoder must be primed with the shared stream's recent input before its next
    /// encode (the participant just moved from the shared stream to its own).
    needs_prime: bool,
    /// Consecutive ticks without contributing audio.
    quiet_ticks: u32,
    /// Consecutive silent packets decoded (see `SILENT_DECODE_HANGOVER`).
    silent_packets: u32,
    /// Smoothed power of this talker's decoded audio (for the talker cap).
    loudness: f32,
    /// Result of this tick's own encode (when `uses_own`).
    own_level: Option<AudioLevel>,
    /// Mixed in the previous tick (for the talker cap's hysteresis).
    selected: bool,
    /// Left out of the mix by the talker cap this tick while it had audio.
    capped: bool,
    /// `capped` as it was in the previous tick.
    was_capped: bool,
    decode_failing: bool,
    /// Set for PCM clients: they are decoded and "encoded" by resampling, not by Opus.
    pcm: Option<PcmLink>,
    /// This tick's PCM frame level, or `None` when paused in silence.
    pcm_level: Option<AudioLevel>,
    /// Muted (by itself or a moderator): its audio is dropped on arrival.
    muted: bool,
    /// May not be mixed now (muted, or push-to-talk without the floor); its buffered audio is
    /// dropped and a frame in progress faded out.
    gated: bool,
    /// Manual input gain (linear), set by a moderator.
    gain: f32,
    /// Level-normalisation gain (linear), when the room normalises.
    auto_gain: f32,
    /// Talking state for talking events, and the frames counted towards changing it.
    talking: bool,
    talk_frames: u32,
    /// The next frame sent starts a new run of frames (the first one, or the first after a
    /// pause in silence): it carries the marker bit.
    starts_run: bool,
    /// How the client's audio is coded.
    codec: ClientCodec,
    /// This tick's playout, captured while the participant holds a single floor (its
    /// transmission is recorded for late joiners).
    capture: Option<Capture>,
    /// Set while the participant, a late joiner, hears a transmission replayed.
    replay: Option<Box<Catchup>>,
    stats: ParticipantStats,
}

/// A late joiner's replay of the transmission it joined in, and the stream it hears meanwhile.
struct Catchup {
    player: Player,
    /// The joiner's own output while it is behind the room (the room's mix with the replay in
    /// place of the live transmission).
    stream: MixStream,
    /// This tick's replayed frame.
    frame: Box<[f32]>,
    /// 0 while replaying; then ticks since the replay caught up, during which `stream` encodes
    /// the room's mix alongside the shared stream, so the move to it is inaudible.
    live_ticks: u32,
}

impl Participant {
    fn new(
        id: ParticipantId,
        mode: Mode,
        codec: ClientCodec,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let pcm = match codec {
            ClientCodec::Opus => None,
            ClientCodec::Pcm(rate) => Some(PcmLink {
                uplink: PcmUplink::new(rate)?,
                downlink: PcmDownlink::new(rate)?,
                payload: Vec::with_capacity(rate.frame_bytes()),
                silent_ticks: 0,
            }),
        };
        let jitter = match codec {
            ClientCodec::Opus => config.jitter.clone(),
            ClientCodec::Pcm(rate) => JitterConfig {
                max_payload: rate.frame_bytes(),
                ..config.jitter.clone()
            },
        };
        Ok(Participant {
            pcm,
            pcm_level: None,
            id,
            mode,
            jitter: JitterBuffer::new(jitter),
            decoder: codec::decoder()?,
            own: match mode {
                Mode::Talk | Mode::Ptt => Some(MixStream::new(config)?),
                Mode::Listen => None,
            },
            decoded: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
            scratch: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
            pending: None,
            contributing: false,
            // A newcomer starts on the shared stream; it has no decoder state to keep in step.
            uses_own: false,
            needs_prime: false,
            quiet_ticks: OWN_STREAM_HANGOVER + 1,
            silent_packets: 0,
            loudness: 0.0,
            own_level: None,
            selected: false,
            capped: false,
            was_capped: false,
            decode_failing: false,
            muted: false,
            gated: false,
            gain: 1.0,
            auto_gain: 1.0,
            talking: false,
            talk_frames: 0,
            starts_run: true,
            codec,
            capture: None,
            replay: None,
            stats: ParticipantStats::default(),
        })
    }

    /// The stream this participant hears this tick when it is not the shared one: its replay
    /// while it catches up, else its own mix-minus when in use.
    fn stream(&self) -> Option<&MixStream> {
        match self.replay.as_ref() {
            Some(catchup) => Some(&catchup.stream),
            None => self.own.as_ref().filter(|_| self.uses_own),
        }
    }

    fn snapshot(&self) -> ParticipantStats {
        ParticipantStats {
            jitter: self.jitter.stats().clone(),
            ..self.stats.clone()
        }
    }

    /// Runs the jitter buffer and decoder for this tick; returns whether `decoded` holds audio.
    /// Runs this tick's playout: decoding (see [`Participant::decode`]), then talking detection
    /// and input gain. Returns whether `decoded` holds audio to mix.
    fn pull(&mut self, now: Instant, normalise: bool, events: &mut VecDeque<Event>) -> bool {
        if self.gated {
            // Not allowed to be heard: nothing buffered may play, and a frame in progress
            // fades out over one concealed frame instead of stopping with a click.
            let fade = self.contributing && !self.jitter.is_idle();
            if let Some(capture) = self.capture.as_mut() {
                capture.push(Captured::Silence, &[]);
            }
            if !self.jitter.is_idle() {
                self.jitter.reset();
            }
            self.update_talking(None, events);
            if fade && decode_into(&mut self.decoder, &[], false, &mut self.decoded) {
                mix::fade_out(&mut self.decoded);
                return true;
            }
            return false;
        }
        if !self.decode(now, events) {
            self.update_talking(None, events);
            return false;
        }
        let rms = mix::rms(&self.decoded);
        self.update_talking(Some(rms), events);
        if normalise && rms > TALK_START_RMS {
            let wanted =
                (NORMALISE_TARGET_RMS / rms).clamp(1.0 / NORMALISE_MAX_GAIN, NORMALISE_MAX_GAIN);
            self.auto_gain += (wanted - self.auto_gain) / NORMALISE_FRAMES;
        }
        let gain = if normalise {
            self.gain * self.auto_gain
        } else {
            self.gain
        };
        if gain != 1.0 {
            self.decoded.iter_mut().for_each(|s| *s *= gain);
        }
        true
    }

    /// The PCM counterpart of the Opus decoding: resampling to 48 kHz, with the converter's own
    /// concealment for lost frames. It runs every tick (concealing when there is nothing), so
    /// the resampler's timing stays continuous.
    #[allow(clippy::too_many_arguments)]
    fn decode_pcm(
        link: &mut PcmLink,
        jitter: &mut JitterBuffer,
        decoded: &mut [f32],
        scratch: &mut [f32],
        stats: &mut ParticipantStats,
        capture: Option<&mut Capture>,
        now: Instant,
    ) -> bool {
        let playout = jitter.pop(now);
        if let Some(capture) = capture {
            capture_playout(capture, &playout, false);
        }
        let ok = match playout {
            Playout::Silence => {
                link.uplink.conceal(scratch);
                return false;
            }
            Playout::Packet(packet) => link.uplink.decode(packet, decoded).is_ok(),
            Playout::Conceal { .. } => {
                link.uplink.conceal(decoded);
                true
            }
            Playout::Merge(first, second) => {
                let a = link.uplink.decode(first, scratch).is_ok();
                let b = link.uplink.decode(second, decoded).is_ok();
                if a && b {
                    mix::crossfade_into(scratch, decoded);
                }
                a && b
            }
        };
        stats.frames_decoded += 1;
        if !ok {
            // The shell checks frame lengths; count it anyway and play concealment.
            stats.decode_errors += 1;
            link.uplink.conceal(decoded);
        }
        true
    }

    /// Renders this tick's output for a PCM client from `mix` (48 kHz, limited); `None` while
    /// its output is settled silence and silence is not sent.
    fn render_pcm(link: &mut PcmLink, mix: &[f32], send_silence: bool) -> Option<AudioLevel> {
        let silent = mix.iter().all(|s| *s == 0.0);
        link.silent_ticks = if silent { link.silent_ticks + 1 } else { 0 };
        if !send_silence && link.silent_ticks > SILENCE_SETTLE_FRAMES {
            return None;
        }
        let bytes = link.downlink.render(mix);
        link.payload.clear();
        link.payload.extend_from_slice(bytes);
        let rms = mix::rms(mix);
        Some(AudioLevel::from_rms(rms > VOICE_RMS_THRESHOLD, rms))
    }

    /// Advances the talking state by one tick with this tick's decoded level (`None`: no audio).
    fn update_talking(&mut self, rms: Option<f32>, events: &mut VecDeque<Event>) {
        let change = if self.talking {
            rms.is_none_or(|r| r < TALK_STOP_RMS)
        } else {
            rms.is_some_and(|r| r > TALK_START_RMS)
        };
        if !change {
            self.talk_frames = 0;
            return;
        }
        self.talk_frames += 1;
        let needed = if self.talking {
            TALK_STOP_FRAMES
        } else {
            TALK_START_FRAMES
        };
        if self.talk_frames >= needed {
            self.set_talking(!self.talking, events);
        }
    }

    fn set_talking(&mut self, talking: bool, events: &mut VecDeque<Event>) {
        self.talk_frames = 0;
        if self.talking == talking {
            return;
        }
        self.talking = talking;
        let participant = self.id;
        events.push_back(if talking {
            Event::TalkingStarted { participant }
        } else {
            Event::TalkingStopped { participant }
        });
    }

    /// Runs the jitter buffer and decoder for this tick; returns whether `decoded` holds audio.
    fn decode(&mut self, now: Instant, events: &mut VecDeque<Event>) -> bool {
        if !self.mode.sends_audio() {
            return false;
        }
        if let Some(link) = self.pcm.as_mut() {
            return Self::decode_pcm(
                link,
                &mut self.jitter,
                &mut self.decoded,
                &mut self.scratch,
                &mut self.stats,
                self.capture.as_mut(),
                now,
            );
        }
        let silent = self.jitter.next_is_silent();
        let decoder = &mut self.decoder;
        let decoded = &mut self.decoded;
        let playout = self.jitter.pop(now);
        if let Some(capture) = self.capture.as_mut() {
            let skipped = silent && self.silent_packets >= SILENT_DECODE_HANGOVER;
            capture_playout(capture, &playout, skipped);
        }
        let ok = match playout {
            Playout::Silence => return false,
            Playout::Packet(_) if silent && self.silent_packets >= SILENT_DECODE_HANGOVER => {
                // A silent uplink costs no decode and adds nothing to the mix.
                self.stats.frames_skipped += 1;
                return false;
            }
            Playout::Packet(packet) => decode_into(decoder, packet, false, decoded),
            Playout::Conceal {
                fec_from: Some(next),
            } => decode_into(decoder, next, true, decoded),
            Playout::Conceal { fec_from: None } => decode_into(decoder, &[], false, decoded),
            Playout::Merge(first, second) => {
                let a = decode_into(decoder, first, false, &mut self.scratch);
                let b = decode_into(decoder, second, false, decoded);
                if a && b {
                    mix::crossfade_into(&self.scratch, decoded);
                    self.stats.frames_decoded += 1;
                }
                a && b
            }
        };
        self.stats.frames_decoded += 1;
        self.silent_packets = if silent {
            self.silent_packets.saturating_add(1)
        } else {
            0
        };
        if ok {
            self.decode_failing = false;
        } else {
            // A packet that passed the shell's checks and still fails to decode: conceal it so
            // the room hears a smooth gap, and report it once per run of failures.
            self.stats.decode_errors += 1;
            if !self.decode_failing {
                events.push_back(Event::DecodeFailed {
                    participant: self.id,
                });
            }
            self.decode_failing = true;
            if !decode_into(&mut self.decoder, &[], false, &mut self.decoded) {
                return false;
            }
        }
        true
    }

    /// Stamps this tick's frame with the room's sequence number and timestamp, around a payload
    /// encoded either by this participant's own encoder or by the shared one. Sharing the room's
    /// numbering makes every shared frame byte-identical for all its listeners (but for the
    /// marker on a newcomer's first frame), so the shell can build it once.
    fn stamp(&mut self, sequence: u16, timestamp: u32, output: Output) {
        if self.pending.take().is_some() {
            self.stats.frames_overwritten += 1;
        }
        match output {
            Output::Frame(level) => {
                self.pending = Some(AudioHeader {
                    flags: Flags::default().with_marker(self.starts_run),
                    sequence,
                    timestamp,
                    level,
                });
                self.starts_run = false;
                self.stats.frames_out += 1;
            }
            Output::Paused => {
                self.starts_run = true;
                self.stats.frames_paused += 1;
            }
            Output::Failed => {}
        }
    }
}

/// What a participant gets from one tick.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// A frame with this level byte.
    Frame(AudioLevel),
    /// Nothing: its mix is settled silence and frames are paused (downlink DTX).
    Paused,
    /// Nothing: the encoder failed.
    Failed,
}

/// One encoded output stream: limiter, Opus encoder and buffers. Each talker has its own (for
/// its mix-minus); the room has one more, shared by everyone who hears the full mix.
struct MixStream {
    encoder: opus::Encoder,
    limiter: Limiter,
    /// This tick's mix, limited in place.
    output: Box<[f32]>,
    encoded: Box<[u8]>,
    encoded_len: usize,
    level: AudioLevel,
    /// Consecutive encodes of an all-zero mix.
    silent_encodes: u32,
    /// This tick's packet repeats the settled silence packet (it may be paused instead).
    repeating_silence: bool,
}

impl MixStream {
    fn new(config: &EngineConfig) -> Result<MixStream, CodecError> {
        Ok(MixStream {
            encoder: config.encoder.build()?,
            limiter: Limiter::new(config.limiter),
            output: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
            encoded: vec![0; MAX_OPUS_PACKET].into_boxed_slice(),
            encoded_len: 0,
            level: AudioLevel::SILENT,
            silent_encodes: 0,
            repeating_silence: false,
        })
    }

    /// Runs the limiter over `output`, counting its work into `stats`.
    fn limit(&mut self, stats: &mut ParticipantStats) {
        let report = self.limiter.process(&mut self.output);
        if report.min_gain < 1.0 {
            stats.frames_limited += 1;
            // Whole decibels of gain reduction, for the limiter histogram.
            let db = (-20.0 * report.min_gain.max(1e-6).log10()).ceil() as usize;
            stats.limiter_reduction_db[db.min(LIMITER_DB_BUCKETS - 1)] += 1;
        }
    }

    /// Encodes `output`; returns the level for the header, or `None` if libopus failed. `encodes`
    /// counts calls into the encoder.
    fn encode(&mut self, encodes: &mut u64) -> Option<AudioLevel> {
        // Digital silence: once the encoder has settled on it, its frame does not change, so
        // repeat it instead of paying a full encode (which costs as much as for speech).
        let silent = self.output.iter().all(|s| *s == 0.0);
        self.repeating_silence =
            silent && self.silent_encodes >= SILENCE_SETTLE_FRAMES && self.encoded_len > 0;
        if self.repeating_silence {
            return Some(self.level);
        }
        self.silent_encodes = if silent { self.silent_encodes + 1 } else { 0 };
        *encodes += 1;
        match self.encoder.encode_float(&self.output, &mut self.encoded) {
            Ok(len) => {
                let rms = mix::rms(&self.output);
                self.encoded_len = len;
                self.level = AudioLevel::from_rms(rms > VOICE_RMS_THRESHOLD, rms);
                Some(self.level)
            }
            Err(_) => {
                self.encoded_len = 0;
                self.repeating_silence = false;
                None
            }
        }
    }

    fn payload(&self) -> &[u8] {
        &self.encoded[..self.encoded_len]
    }
}

/// Notes a tick's playout in the recording of a transmission; `skipped` when a silent packet
/// is played without decoding (the replay skips it too).
fn capture_playout(capture: &mut Capture, playout: &Playout<'_>, skipped: bool) {
    match *playout {
        Playout::Silence => capture.push(Captured::Silence, &[]),
        Playout::Packet(_) if skipped => capture.push(Captured::Silence, &[]),
        Playout::Packet(packet) => capture.push(Captured::Packet(packet.len()), packet),
        Playout::Conceal {
            fec_from: Some(next),
        } => capture.push(Captured::Fec(next.len()), next),
        Playout::Conceal { fec_from: None } => capture.push(Captured::Conceal, &[]),
        Playout::Merge(first, second) => {
            capture.push(Captured::Packet(first.len()), first);
            capture.push(Captured::Packet(second.len()), second);
        }
    }
}

/// Decodes one packet (or conceals, for an empty one) into exactly one 20 ms frame.
fn decode_into(decoder: &mut opus::Decoder, packet: &[u8], fec: bool, out: &mut [f32]) -> bool {
    match decoder.decode_float(packet, out, fec) {
        Ok(n) if n == out.len() => true,
        _ => {
            out.fill(0.0);
            false
        }
    }
}

/// One room's mixer: participants, their codecs and jitter buffers, and the mix clock.
pub struct Room {
    config: EngineConfig,
    clock: TickClock,
    participants: Vec<Participant>,
    index: HashMap<ParticipantId, usize>,
    /// Talkers removed since the last tick while they were audible: they contribute one more
    /// concealed frame faded to silence, so a leave is not a click in everyone else's mix.
    departing: Vec<Participant>,
    /// Counters of participants who left, so totals never go backwards.
    departed: RoomTotals,
    /// The full mix, encoded once per tick for everyone who contributes nothing.
    shared: MixStream,
    /// Limiter counters of the shared stream.
    shared_stats: ParticipantStats,
    /// The shared stream's last encoded inputs (post-limiter), oldest first, for priming.
    shared_history: [Box<[f32]>; PRIME_FRAMES],
    /// How many of `shared_history` are consecutive frames up to the previous tick.
    shared_history_len: usize,
    /// Whether this tick's shared frame was encoded.
    shared_ready: bool,
    /// Sequence number of the next frame sent: +1 per tick run.
    out_sequence: u16,
    /// Timestamp of the next frame: +960 per tick, skipped ticks included.
    out_timestamp: u32,
    /// Events raised on the helper thread of a split tick, merged after it.
    spare_events: VecDeque<Event>,
    /// Participants who send audio (kept up to date so a tick need not count them).
    talkers: usize,
    /// Push-to-talk floor.
    floor: Floor,
    /// Scratch for floor changes.
    floor_changes: Vec<FloorChange>,
    /// Scratch for choosing the loudest talkers: (ranking level, participant index).
    ranking: Vec<(f32, usize)>,
    /// Transmissions recorded for late joiners (single-floor rooms).
    recordings: Recordings,
    /// Participants hearing a replay (kept up to date so a tick need not count them).
    replays: usize,
    /// This tick's live voice of the transmission on the air, as mixed (for replays to take
    /// out of the mix they hear).
    live_voice: Box<[f32]>,
    bus: Box<[f32]>,
    transmit_cursor: usize,
    events: VecDeque<Event>,
    stats: RoomStats,
    /// Tests turn the settled-silence shortcut off to prove it changes nothing.
    #[cfg(test)]
    always_full_ticks: bool,
    #[cfg(test)]
    shortcut_ticks: u64,
}

impl Room {
    /// An empty room whose first tick is due at `now`.
    ///
    /// Fails only if libopus refuses the encoder settings (which the CLI validates up front).
    pub fn new(config: EngineConfig, now: Instant) -> Result<Room, EngineError> {
        let capacity = config.max_participants.min(1024);
        Ok(Room {
            clock: TickClock::new(now, FRAME, config.max_catch_up_ticks),
            participants: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            departing: Vec::with_capacity(4),
            departed: RoomTotals::default(),
            shared: MixStream::new(&config)?,
            shared_stats: ParticipantStats::default(),
            shared_history: std::array::from_fn(|_| vec![0.0; FRAME_SAMPLES].into_boxed_slice()),
            shared_history_len: 0,
            shared_ready: false,
            out_sequence: 0,
            out_timestamp: 0,
            spare_events: VecDeque::with_capacity(64),
            talkers: 0,
            floor: Floor::new(config.floor),
            floor_changes: Vec::with_capacity(2),
            ranking: Vec::with_capacity(capacity),
            recordings: Recordings::default(),
            replays: 0,
            live_voice: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
            bus: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
            transmit_cursor: 0,
            events: VecDeque::with_capacity(64),
            stats: RoomStats::default(),
            #[cfg(test)]
            always_full_ticks: false,
            #[cfg(test)]
            shortcut_ticks: 0,
            config,
        })
    }

    /// Adds a participant. Talkers get a jitter buffer, a decoder and an encoder for their own
    /// mix-minus; listeners only ever hear the shared full mix.
    pub fn add_participant(&mut self, id: ParticipantId, mode: Mode) -> Result<(), EngineError> {
        self.add_participant_with(id, mode, ClientCodec::Opus)
    }

    /// [`Room::add_participant`] for a client whose audio is coded as `codec` (Opus, or 16-bit
    /// PCM at its own rate, resampled to and from the room's 48 kHz).
    pub fn add_participant_with(
        &mut self,
        id: ParticipantId,
        mode: Mode,
        codec: ClientCodec,
    ) -> Result<(), EngineError> {
        if self.index.contains_key(&id) {
            return Err(EngineError::AlreadyJoined(id));
        }
        if self.participants.len() >= self.config.max_participants {
            return Err(EngineError::RoomFull(self.config.max_participants));
        }
        let mut participant = Participant::new(id, mode, codec, &self.config)?;
        // Joining during a transmission: hear it from its start. A replay that cannot be set
        // up (libopus refusing a decoder) is not worth refusing the join for: live it is.
        if let Some(Ok(player)) = self.recordings.replay_for_joiner()
            && let Ok(stream) = MixStream::new(&self.config)
        {
            participant.replay = Some(Box::new(Catchup {
                player,
                stream,
                frame: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
                live_ticks: 0,
            }));
            self.replays += 1;
        }
        self.talkers += usize::from(participant.own.is_some());
        self.index.insert(id, self.participants.len());
        self.participants.push(participant);
        self.regate(self.participants.len() - 1);
        Ok(())
    }

    /// Removes a participant; returns its final counters, or `None` if it was not here.
    pub fn remove_participant(&mut self, id: ParticipantId) -> Option<ParticipantStats> {
        let position = self.index.remove(&id)?;
        let removed = self.participants.remove(position);
        self.talkers -= usize::from(removed.own.is_some());
        self.replays -= usize::from(removed.replay.is_some());
        for (i, p) in self.participants.iter().enumerate().skip(position) {
            self.index.insert(p.id, i);
        }
        if self.transmit_cursor > position {
            self.transmit_cursor -= 1;
        }
        if let Some(change) = self.floor.left(id) {
            // Its transmission is over: nobody joining now hears it replayed.
            self.recordings.stop();
            self.events.push_back(Event::Floor(change));
        }
        let stats = removed.snapshot();
        self.departed.add(&stats);
        if removed.contributing {
            self.departing.push(removed);
        }
        Some(stats)
    }

    /// Queues one packet from a talker into its jitter buffer. `arrival` is when it reached the
    /// server, which drives the jitter estimate.
    pub fn handle_audio(
        &mut self,
        id: ParticipantId,
        frame: AudioFrame<'_>,
        arrival: Instant,
    ) -> Result<InsertOutcome, EngineError> {
        let position = *self
            .index
            .get(&id)
            .ok_or(EngineError::UnknownParticipant(id))?;
        let participant = &mut self.participants[position];
        if !participant.mode.sends_audio() {
            return Err(EngineError::ListenOnly(id));
        }
        if participant.muted {
            participant.stats.frames_muted += 1;
            return Err(EngineError::Muted(id));
        }
        if participant.mode == Mode::Ptt {
            if !self.floor.may_talk(id) {
                participant.stats.frames_without_floor += 1;
                return Err(EngineError::NoFloor(id));
            }
            if frame.header.level.voice_activity() {
                self.floor.voice(id, arrival);
            }
        }
        let packet = ArrivingPacket {
            sequence: frame.header.sequence,
            timestamp: frame.header.timestamp,
            voice_activity: frame.header.level.voice_activity(),
            level_dbov: frame.header.level.level_dbov(),
            payload: frame.payload,
        };
        Ok(participant.jitter.insert(packet, arrival))
    }

    /// Changes a participant's mode without rejoining. A participant who stops sending audio
    /// (to `listen`) loses the floor and its own stream; one who starts gets an encoder.
    pub fn set_mode(&mut self, id: ParticipantId, mode: Mode) -> Result<(), EngineError> {
        let position = self.position(id)?;
        let participant = &mut self.participants[position];
        if participant.mode == mode {
            return Ok(());
        }
        if mode.sends_audio() && participant.own.is_none() {
            participant.own = Some(MixStream::new(&self.config)?);
            self.talkers += 1;
        }
        if !mode.sends_audio() && participant.own.take().is_some() {
            self.talkers -= 1;
            participant.uses_own = false;
            participant.needs_prime = false;
        }
        participant.mode = mode;
        if mode != Mode::Ptt
            && let Some(change) = self.floor.left(id)
        {
            self.apply_floor_change(change);
        }
        self.regate(position);
        Ok(())
    }

    /// Mutes or unmutes a participant; returns whether that changed anything. A muted
    /// participant's audio is dropped on arrival and it stops talking at once.
    pub fn set_muted(&mut self, id: ParticipantId, muted: bool) -> Result<bool, EngineError> {
        let position = self.position(id)?;
        let participant = &mut self.participants[position];
        if participant.muted == muted {
            return Ok(false);
        }
        participant.muted = muted;
        self.regate(position);
        Ok(true)
    }

    /// Sets a participant's input gain in dB (within +-[`MAX_GAIN_DB`]), applied to its decoded
    /// audio before mixing, e.g. to balance a loud and a quiet speaker.
    pub fn set_gain(&mut self, id: ParticipantId, gain_db: f32) -> Result<(), EngineError> {
        if gain_db.is_nan() || gain_db.abs() > MAX_GAIN_DB {
            return Err(EngineError::InvalidGain(gain_db));
        }
        let position = self.position(id)?;
        self.participants[position].gain = 10f32.powf(gain_db / 20.0);
        Ok(())
    }

    /// A push-to-talk participant asks for the floor; `preempt` takes it from another holder
    /// (moderators). Floor changes are reported as [`Event::Floor`].
    pub fn request_floor(
        &mut self,
        id: ParticipantId,
        preempt: bool,
        now: Instant,
    ) -> Result<FloorReply, EngineError> {
        let position = self.position(id)?;
        if self.participants[position].mode != Mode::Ptt {
            return Err(EngineError::NotPushToTalk(id));
        }
        let mut changes = std::mem::take(&mut self.floor_changes);
        let reply = self.floor.request(id, preempt, now, &mut changes);
        self.apply_floor_changes(&mut changes);
        self.floor_changes = changes;
        Ok(reply)
    }

    /// Gives the floor back; returns whether `id` held it.
    pub fn release_floor(&mut self, id: ParticipantId) -> Result<bool, EngineError> {
        self.position(id)?;
        let Some(change) = self.floor.release(id) else {
            return Ok(false);
        };
        self.apply_floor_change(change);
        Ok(true)
    }

    /// Who holds the floor (single-floor rooms).
    pub fn floor_holder(&self) -> Option<ParticipantId> {
        self.floor.holder()
    }

    /// The room's floor settings.
    pub fn floor_config(&self) -> &FloorConfig {
        self.floor.config()
    }

    /// Whether a participant is muted.
    pub fn is_muted(&self, id: ParticipantId) -> Option<bool> {
        self.index.get(&id).map(|&i| self.participants[i].muted)
    }

    /// How far behind live a late joiner is while it hears a transmission replayed (recorded
    /// audio still to play, silence included, before it speeds up); `None` when it hears the
    /// room live.
    pub fn replay_backlog(&self, id: ParticipantId) -> Option<Duration> {
        let position = *self.index.get(&id)?;
        let catchup = self.participants[position]
            .replay
            .as_ref()
            .filter(|c| c.live_ticks == 0)?;
        Some(FRAME * self.recordings.backlog(&catchup.player) as u32)
    }

    fn position(&self, id: ParticipantId) -> Result<usize, EngineError> {
        self.index
            .get(&id)
            .copied()
            .ok_or(EngineError::UnknownParticipant(id))
    }

    fn apply_floor_changes(&mut self, changes: &mut Vec<FloorChange>) {
        for change in changes.drain(..) {
            self.apply_floor_change(change);
        }
    }

    /// Reports a floor change and updates whether its participant may be heard.
    fn apply_floor_change(&mut self, change: FloorChange) {
        let who = match change {
            FloorChange::Granted { to, .. } => to,
            FloorChange::Ended { from, .. } => {
                self.recordings.stop();
                from
            }
        };
        if let Some(&position) = self.index.get(&who) {
            self.regate(position);
        }
        self.events.push_back(Event::Floor(change));
    }

    /// Recomputes whether a participant may be heard (mute, mode, floor), and whether its
    /// playout is recorded (it holds a single floor).
    fn regate(&mut self, position: usize) {
        let participant = &mut self.participants[position];
        participant.gated = participant.muted
            || (participant.mode == Mode::Ptt && !self.floor.may_talk(participant.id));
        let on_air = self.floor.config().policy == FloorPolicy::Single
            && self.floor.holder() == Some(participant.id);
        if on_air != participant.capture.is_some() {
            participant.capture = on_air.then(|| {
                Capture::new(match participant.codec {
                    ClientCodec::Opus => MAX_OPUS_PACKET,
                    ClientCodec::Pcm(rate) => rate.frame_bytes(),
                })
            });
        }
        if participant.gated || !participant.mode.sends_audio() {
            participant.set_talking(false, &mut self.events);
        }
    }

    /// When [`Room::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.clock.deadline()
    }

    /// Runs the next tick if it is due at `now` (at most one per call).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_timed(now, &mut NoTimer);
    }

    /// [`Room::handle_timeout`], reporting the start of each phase of the tick to `timer` so the
    /// caller can measure where the time goes. The engine itself never reads a clock.
    pub fn handle_timeout_timed(&mut self, now: Instant, timer: &mut impl PhaseTimer) {
        let Some(advance) = self.clock.advance(now) else {
            return;
        };
        if advance.skipped > 0 {
            self.stats.ticks_skipped += advance.skipped;
            self.events.push_back(Event::TicksSkipped {
                count: advance.skipped,
            });
        }
        self.tick(now, advance.skipped, timer);
    }

    fn tick(&mut self, now: Instant, skipped: u64, timer: &mut impl PhaseTimer) {
        self.stats.ticks += 1;
        if let Some(change) = self.floor.poll(now) {
            self.apply_floor_change(change);
        }
        self.transmit_cursor = 0;
        // Skipped ticks are a gap in media time, not lost frames: the timestamp jumps, the
        // sequence number does not.
        let timestamp = self
            .out_timestamp
            .wrapping_add((FRAME_SAMPLES as u32).wrapping_mul(skipped as u32));
        timer.phase(TickPhase::Decode);
        let split = self.parallel_split();
        let (first, second) = self.participants.split_at_mut(split);
        let events = &mut self.events;
        let spare = &mut self.spare_events;
        let normalise = self.config.normalise;
        let decode = |half: &mut [Participant], events: &mut VecDeque<Event>| {
            for participant in half {
                participant.contributing = participant.pull(now, normalise, events);
            }
        };
        if second.is_empty() {
            decode(first, events);
        } else {
            std::thread::scope(|scope| {
                scope.spawn(|| decode(second, spare));
                decode(first, events);
            });
            events.extend(spare.drain(..));
        }
        self.record_tick();
        timer.phase(TickPhase::Mix);
        self.cap_talkers();
        if self.is_settled_silence() {
            self.silent_tick(timestamp, timer);
            return;
        }
        self.bus.fill(0.0);
        for participant in &self.participants {
            if participant.contributing {
                mix::accumulate(&mut self.bus, &participant.decoded);
                self.stats.contributions += 1;
            }
        }
        for mut gone in self.departing.drain(..) {
            // Opus concealment continues the last sound naturally; the fade takes it to zero.
            if decode_into(&mut gone.decoder, &[], false, &mut gone.decoded) {
                mix::fade_out(&mut gone.decoded);
                mix::accumulate(&mut self.bus, &gone.decoded);
            }
        }
        // Late joiners hearing a replay have a stream of their own.
        let mut shared_needed = self.run_replays();
        // Who needs a stream of their own this tick: talkers who contribute (their mix lacks
        // their own voice) and, for a short hangover, talkers who just stopped. Everyone else
        // hears the full mix, encoded once for all of them.
        for participant in &mut self.participants {
            participant.quiet_ticks = if participant.contributing {
                0
            } else {
                participant.quiet_ticks.saturating_add(1)
            };
            if participant.replay.is_some() {
                participant.uses_own = false;
                continue;
            }
            let wants_own =
                participant.own.is_some() && participant.quiet_ticks <= OWN_STREAM_HANGOVER;
            let Some(own) = participant.own.as_mut().filter(|_| wants_own) else {
                participant.uses_own = false;
                shared_needed = true;
                continue;
            };
            if !participant.uses_own {
                // Moving off the shared stream: continue from the shared limiter's state, and
                // (at encode time) replay its recent input into this encoder.
                own.limiter.clone_from(&self.shared.limiter);
                participant.needs_prime = self.shared_history_len > 0;
                participant.uses_own = true;
            }
            if participant.contributing {
                mix::mix_minus(&mut own.output, &self.bus, &participant.decoded);
            } else {
                // In the hangover: the own mix is the full mix. Run the shared stream too, so
                // its encoder has been following the same input when this talker moves to it.
                own.output.copy_from_slice(&self.bus);
                shared_needed = true;
            }
            own.limit(&mut participant.stats);
        }
        if shared_needed {
            self.shared.output.copy_from_slice(&self.bus);
            self.shared.limit(&mut self.shared_stats);
        }
        timer.phase(TickPhase::Encode);
        for participant in &mut self.participants {
            if !std::mem::take(&mut participant.needs_prime) {
                continue;
            }
            let Some(own) = participant.own.as_mut() else {
                continue;
            };
            let start = PRIME_FRAMES - self.shared_history_len;
            for frame in &self.shared_history[start..] {
                // The packet is never sent: only the encoder's state matters. Silent inputs
                // count towards settling on silence as if this encoder had sent them, so a
                // talker whose own mix stays silent (alone in the room) pauses at once.
                own.encoded_len = own
                    .encoder
                    .encode_float(frame, &mut own.encoded)
                    .unwrap_or(0);
                own.silent_encodes = if frame.iter().all(|s| *s == 0.0) {
                    own.silent_encodes + 1
                } else {
                    0
                };
                self.stats.encodes += 1;
                self.stats.primes += 1;
            }
        }
        self.shared_ready = false;
        if shared_needed {
            self.shared_ready = self.shared.encode(&mut self.stats.encodes).is_some();
            if !self.shared_ready {
                self.shared_stats.encode_errors += 1;
                self.events.push_back(Event::SharedEncodeFailed);
            }
            // Keep the last PRIME_FRAMES inputs, oldest first.
            self.shared_history.rotate_left(1);
            self.shared_history[PRIME_FRAMES - 1].copy_from_slice(&self.shared.output);
            self.shared_history_len = (self.shared_history_len + 1).min(PRIME_FRAMES);
        } else {
            self.shared_history_len = 0;
        }
        let (first, second) = self.participants.split_at_mut(split);
        let shared_mix: &[f32] = &self.shared.output;
        let send_silence = self.config.send_silence;
        let encode = |half: &mut [Participant]| {
            let mut encodes = 0;
            for participant in half {
                let own = participant.own.as_mut().filter(|_| participant.uses_own);
                let replay = participant.replay.as_mut().map(|c| &mut c.stream);
                if let Some(link) = participant.pcm.as_mut() {
                    // PCM clients get their mix resampled instead of encoded.
                    let mix = match (replay, own) {
                        (Some(replay), _) => &replay.output[..],
                        (None, Some(own)) => &own.output[..],
                        (None, None) => shared_mix,
                    };
                    participant.pcm_level = Participant::render_pcm(link, mix, send_silence);
                } else if let Some(replay) = replay {
                    participant.own_level = replay.encode(&mut encodes);
                } else if let Some(own) = own {
                    participant.own_level = own.encode(&mut encodes);
                }
            }
            encodes
        };
        self.stats.encodes += if second.is_empty() {
            encode(first)
        } else {
            std::thread::scope(|scope| {
                let other = scope.spawn(|| encode(second));
                // A panic on the helper thread would be a bug in libopus or here; take this
                // half's result either way rather than lose the tick.
                encode(first) + other.join().unwrap_or(0)
            })
        };
        let pause_silence = !self.config.send_silence;
        let shared_output = if !self.shared_ready {
            Output::Failed
        } else if pause_silence && self.shared.repeating_silence {
            Output::Paused
        } else {
            Output::Frame(self.shared.level)
        };
        for participant in &mut self.participants {
            if participant.pcm.is_some() {
                let output = match participant.pcm_level {
                    Some(level) => Output::Frame(level),
                    None => Output::Paused,
                };
                participant.stamp(self.out_sequence, timestamp, output);
                continue;
            }
            let output = match participant.stream() {
                Some(own) => match participant.own_level {
                    None => {
                        participant.stats.encode_errors += 1;
                        self.events.push_back(Event::EncodeFailed {
                            participant: participant.id,
                        });
                        Output::Failed
                    }
                    Some(_) if pause_silence && own.repeating_silence => Output::Paused,
                    Some(level) => Output::Frame(level),
                },
                None => shared_output,
            };
            participant.stamp(self.out_sequence, timestamp, output);
        }
        self.out_sequence = self.out_sequence.wrapping_add(1);
        self.out_timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
        timer.phase(TickPhase::Done);
    }

    /// Adds this tick of the transmission on the air (if any) to its recording, starting and
    /// ending recordings as the single floor changes hands, and forgets recordings nobody
    /// needs any more.
    fn record_tick(&mut self) {
        let holder = self
            .floor
            .holder()
            .filter(|_| self.floor.config().policy == FloorPolicy::Single)
            .and_then(|id| self.index.get(&id).copied());
        let holder_id = holder.map(|i| self.participants[i].id);
        if self.recordings.on_air() != holder_id {
            self.recordings.stop();
            if let Some(i) = holder {
                self.recordings
                    .start(self.participants[i].id, self.participants[i].codec);
            }
        }
        if let Some(i) = holder {
            let normalise = self.config.normalise;
            let participant = &mut self.participants[i];
            let gain = participant.gain
                * if normalise {
                    participant.auto_gain
                } else {
                    1.0
                };
            if let Some(capture) = participant.capture.as_mut() {
                self.recordings.append(capture, gain);
            }
        }
        // Only rooms with a replay in progress look through their participants.
        let oldest_in_use = if self.replays == 0 {
            None
        } else {
            self.participants
                .iter()
                .filter_map(|p| p.replay.as_ref())
                .map(|c| c.player.recording())
                .min()
        };
        self.recordings.collect(oldest_in_use);
    }

    /// Renders this tick's mix for every late joiner hearing a replay: the room's mix with the
    /// replayed transmission in place of the live one. Returns whether the shared stream must
    /// be encoded for a joiner about to move to it.
    fn run_replays(&mut self) -> bool {
        if self.replays == 0 {
            return false;
        }
        // The live transmission's voice, as mixed this tick: a joiner still behind hears it
        // later, from the recording.
        let live = self
            .recordings
            .on_air()
            .and_then(|id| self.index.get(&id))
            .map(|&i| &self.participants[i])
            .filter(|p| p.contributing);
        let has_live_voice = live.is_some();
        if let Some(holder) = live {
            self.live_voice.copy_from_slice(&holder.decoded);
        }
        let mut shared_needed = false;
        for participant in &mut self.participants {
            let Some(catchup) = participant.replay.as_mut() else {
                continue;
            };
            if participant.contributing || catchup.live_ticks > OWN_STREAM_HANGOVER {
                // Live now (or talking: then it needs its own mix-minus, and hears the room
                // live; the replay is abandoned).
                participant.replay = None;
                self.replays -= 1;
                shared_needed = true;
                continue;
            }
            let stream = &mut catchup.stream;
            stream.output.copy_from_slice(&self.bus);
            if catchup.live_ticks > 0 {
                // Caught up: the room's mix, encoded here and on the shared stream alike.
                catchup.live_ticks += 1;
                shared_needed = true;
            } else {
                let step = catchup
                    .player
                    .next_frame(&self.recordings, &mut catchup.frame);
                if step == Step::Done {
                    // Nothing left to replay (the recording ran out): live from here on.
                    catchup.live_ticks = 1;
                    shared_needed = true;
                } else {
                    if has_live_voice {
                        for (out, live) in stream.output.iter_mut().zip(self.live_voice.iter()) {
                            *out -= live;
                        }
                    }
                    mix::accumulate(&mut stream.output, &catchup.frame);
                    if step == Step::CaughtUp {
                        catchup.live_ticks = 1;
                    }
                }
                if catchup.live_ticks > 0 {
                    self.events.push_back(Event::CaughtUp {
                        participant: participant.id,
                    });
                }
            }
            stream.limit(&mut participant.stats);
        }
        shared_needed
    }

    /// Whether this tick can only repeat the shared stream's settled silence to everyone: nobody
    /// contributes or is fading out, everyone is on the shared stream past any own-stream
    /// hangover, and the shared limiter and encoder have come to rest on digital silence. Then
    /// the outcome of the tick is known without touching a sample, which is what makes an idle
    /// room nearly free.
    fn is_settled_silence(&self) -> bool {
        #[cfg(test)]
        if self.always_full_ticks {
            return false;
        }
        !self.participants.is_empty()
            && self.departing.is_empty()
            && self.replays == 0
            && self.shared.repeating_silence
            && self.shared.limiter.is_silent()
            && self
                .participants
                .iter()
                // PCM clients run their converters every tick.
                .all(|p| {
                    !p.contributing
                        && !p.uses_own
                        && p.quiet_ticks >= OWN_STREAM_HANGOVER
                        && p.pcm.is_none()
                })
    }

    /// The rest of a tick for which [`Room::is_settled_silence`] holds: exactly what the full
    /// path would do (the same state, counters and frames), minus the arithmetic on zeros.
    fn silent_tick(&mut self, timestamp: u32, timer: &mut impl PhaseTimer) {
        #[cfg(test)]
        {
            self.shortcut_ticks += 1;
        }
        timer.phase(TickPhase::Encode);
        // The shared history holds the last inputs, all silence by now; only its length moves.
        self.shared_history_len = (self.shared_history_len + 1).min(PRIME_FRAMES);
        self.shared_ready = true;
        let output = if self.config.send_silence {
            Output::Frame(self.shared.level)
        } else {
            Output::Paused
        };
        for participant in &mut self.participants {
            participant.quiet_ticks = participant.quiet_ticks.saturating_add(1);
            participant.stamp(self.out_sequence, timestamp, output);
        }
        self.out_sequence = self.out_sequence.wrapping_add(1);
        self.out_timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
        timer.phase(TickPhase::Done);
    }

    /// Where to split the participants between this thread and a helper thread for decoding
    /// and encoding, or `len` (no split) for rooms under the parallel threshold.
    fn parallel_split(&self) -> usize {
        let len = self.participants.len();
        let Some(threshold) = self.config.parallel_threshold else {
            return len;
        };
        // Only talkers cost codec work, so the threshold counts them and the split balances
        // them between the two halves.
        let talkers = self.talkers;
        if talkers < threshold.max(2) {
            return len;
        }
        let mut seen = 0;
        for (index, participant) in self.participants.iter().enumerate() {
            if seen >= talkers / 2 {
                return index;
            }
            seen += usize::from(participant.own.is_some());
        }
        len
    }

    /// Leaves all but the loudest `max_talkers` contributors out of this tick's mix. A talker
    /// leaving the mix is faded out over one frame and one entering it is faded in, so the cap
    /// never cuts a voice mid-word with a click.
    fn cap_talkers(&mut self) {
        let mut contributing = 0;
        for participant in &mut self.participants {
            participant.was_capped = std::mem::take(&mut participant.capped);
            let power = if participant.contributing {
                contributing += 1;
                let rms = mix::rms(&participant.decoded);
                rms * rms
            } else {
                0.0
            };
            participant.loudness += (power - participant.loudness) / LOUDNESS_TICKS;
        }
        let cap = self.config.max_talkers.max(1);
        if contributing > cap {
            self.ranking.clear();
            for (index, participant) in self.participants.iter().enumerate() {
                if participant.contributing {
                    let bonus = if participant.selected {
                        SELECTED_BONUS
                    } else {
                        1.0
                    };
                    self.ranking.push((participant.loudness * bonus, index));
                }
            }
            // Loudest first; only the split point matters, so a partial selection is enough.
            self.ranking
                .select_nth_unstable_by(cap - 1, |a, b| b.0.total_cmp(&a.0));
            for &(_, index) in &self.ranking[cap..] {
                let participant = &mut self.participants[index];
                if participant.selected {
                    // Mixed last tick: one more frame, fading out.
                    mix::fade_out(&mut participant.decoded);
                    participant.selected = false;
                } else {
                    // Decoded (its level keeps being tracked) but neither summed nor given a
                    // mix-minus: it hears the full mix, which does not contain it.
                    participant.contributing = false;
                    participant.capped = true;
                    self.stats.capped += 1;
                }
            }
            for &(_, index) in &self.ranking[..cap] {
                self.participants[index].selected = true;
            }
        } else {
            for participant in &mut self.participants {
                participant.selected = participant.contributing;
            }
        }
        for participant in &mut self.participants {
            if participant.contributing && participant.was_capped {
                // Back in the mix after being left out: fade in rather than start mid-wave.
                mix::fade_in(&mut participant.decoded);
            }
        }
    }

    /// The next frame to send, if any; drain until `None` after every tick.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        while self.transmit_cursor < self.participants.len() {
            let i = self.transmit_cursor;
            self.transmit_cursor += 1;
            if let Some(header) = self.participants[i].pending.take() {
                let p = &self.participants[i];
                let payload = match (&p.pcm, p.stream()) {
                    (Some(link), _) => &link.payload[..],
                    (None, Some(own)) => own.payload(),
                    (None, None) => self.shared.payload(),
                };
                return Some(Transmit {
                    to: p.id,
                    header,
                    payload,
                });
            }
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters for one participant (a snapshot, merged with its jitter-buffer counters).
    pub fn participant_stats(&self, id: ParticipantId) -> Option<ParticipantStats> {
        let participant = &self.participants[*self.index.get(&id)?];
        Some(participant.snapshot())
    }

    /// Jitter-buffer state of a talker: (target delay, buffered frames).
    pub fn jitter_state(&self, id: ParticipantId) -> Option<(Duration, usize)> {
        let participant = &self.participants[*self.index.get(&id)?];
        Some((
            participant.jitter.target_delay(),
            participant.jitter.buffered_frames(),
        ))
    }

    /// Counters summed over current and past participants; they only ever grow.
    pub fn totals(&self) -> RoomTotals {
        let mut totals = self.departed.clone();
        totals.add(&self.shared_stats);
        for participant in &self.participants {
            totals.add(&participant.snapshot());
        }
        totals
    }

    /// Jitter-buffer target delays of the talkers currently in the room.
    pub fn jitter_delays(&self) -> impl Iterator<Item = Duration> + '_ {
        self.participants
            .iter()
            .filter(|p| p.mode.sends_audio() && !p.jitter.is_idle())
            .map(|p| p.jitter.target_delay())
    }

    /// Room counters.
    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    /// Participants in the room.
    pub fn len(&self) -> usize {
        self.participants.len()
    }

    /// Whether the room has no participants.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame one tick hands out: (to, header, payload).
    type TickOutput = Vec<(ParticipantId, AudioHeader, Vec<u8>)>;

    fn drain(room: &mut Room) -> TickOutput {
        let mut out = Vec::new();
        while let Some(tx) = room.poll_transmit() {
            out.push((tx.to, tx.header, tx.payload.to_vec()));
        }
        out
    }

    #[test]
    fn the_settled_silence_shortcut_changes_nothing() {
        for send_silence in [false, true] {
            let config = EngineConfig {
                send_silence,
                ..EngineConfig::default()
            };
            let t0 = Instant::now();
            let mut fast = Room::new(config.clone(), t0).expect("room");
            let mut full = Room::new(config, t0).expect("room");
            full.always_full_ticks = true;
            let (talker, quiet, listener) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
            for room in [&mut fast, &mut full] {
                room.add_participant(talker, Mode::Talk).expect("join");
                room.add_participant(quiet, Mode::Talk).expect("join");
                room.add_participant(listener, Mode::Listen).expect("join");
            }
            let mut encoder =
                opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                    .expect("encoder");
            let mut packet = vec![0u8; 1500];
            let mut pcm = vec![0.0f32; FRAME_SAMPLES];
            let mut phase = 0.0f32;
            // 0.5 s of tone, 1.5 s of nothing sent, eight times over.
            for tick in 0..800u32 {
                let now = t0 + FRAME * tick;
                if tick % 100 < 25 {
                    for s in pcm.iter_mut() {
                        *s = 0.3 * phase.sin();
                        phase += 2.0 * std::f32::consts::PI * 440.0 / 48_000.0;
                    }
                    let len = encoder.encode_float(&pcm, &mut packet).expect("encode");
                    let frame = AudioFrame {
                        header: AudioHeader {
                            flags: Flags::default().with_marker(tick % 100 == 0),
                            sequence: tick as u16,
                            timestamp: tick * FRAME_SAMPLES as u32,
                            level: AudioLevel::new(true, 20),
                        },
                        payload: &packet[..len],
                    };
                    for room in [&mut fast, &mut full] {
                        room.handle_audio(talker, frame, now).expect("audio");
                    }
                }
                fast.handle_timeout(now);
                full.handle_timeout(now);
                assert_eq!(drain(&mut fast), drain(&mut full), "tick {tick}");
                assert_eq!(fast.stats(), full.stats(), "tick {tick}");
                for id in [talker, quiet, listener] {
                    assert_eq!(fast.participant_stats(id), full.participant_stats(id));
                }
            }
            assert!(
                fast.shortcut_ticks > 300,
                "the shortcut was taken {} times",
                fast.shortcut_ticks
            );
            assert_eq!(full.shortcut_ticks, 0);
        }
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    fn single_floor_room(t0: Instant) -> Room {
        let config = EngineConfig {
            floor: FloorConfig {
                policy: FloorPolicy::Single,
                ..FloorConfig::default()
            },
            ..EngineConfig::default()
        };
        Room::new(config, t0).expect("room")
    }

    fn ticks(room: &mut Room, now: &mut Instant, n: u32) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..n {
            *now += FRAME;
            room.handle_timeout(*now);
            while room.poll_transmit().is_some() {}
            while let Some(event) = room.poll_event() {
                events.push(event);
            }
        }
        events
    }

    #[test]
    fn only_a_join_during_a_single_floor_transmission_is_replayed() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = single_floor_room(t0);
        let (holder, first, second, third) = (
            ParticipantId(1),
            ParticipantId(2),
            ParticipantId(3),
            ParticipantId(4),
        );
        room.add_participant(holder, Mode::Ptt).expect("join");
        room.handle_timeout(now);
        room.add_participant(first, Mode::Listen).expect("join");
        assert_eq!(room.replay_backlog(first), None, "nothing on the air");
        room.request_floor(holder, false, now).expect("request");
        ticks(&mut room, &mut now, 10);
        room.add_participant(second, Mode::Ptt).expect("join");
        assert_eq!(room.replay_backlog(second), Some(FRAME * 10));
        // The transmission held only silence: the replay skips it and is live at once.
        let events = ticks(&mut room, &mut now, 2);
        assert!(events.contains(&Event::CaughtUp {
            participant: second
        }));
        assert_eq!(room.replay_backlog(second), None);
        room.release_floor(holder).expect("release");
        ticks(&mut room, &mut now, 10);
        room.add_participant(third, Mode::Listen).expect("join");
        assert_eq!(room.replay_backlog(third), None, "the floor is free");
        // Replays over and floor free: the recording is forgotten and the room is idle again.
        ticks(&mut room, &mut now, 10);
        assert_eq!(room.replays, 0);
        assert!(room.recordings.on_air().is_none());
    }

    #[test]
    fn open_rooms_record_nothing() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = Room::new(EngineConfig::default(), t0).expect("room");
        room.add_participant(ParticipantId(1), Mode::Ptt)
            .expect("join");
        room.request_floor(ParticipantId(1), false, now)
            .expect("request");
        ticks(&mut room, &mut now, 10);
        room.add_participant(ParticipantId(2), Mode::Listen)
            .expect("join");
        assert_eq!(room.replay_backlog(ParticipantId(2)), None);
        assert!(room.recordings.on_air().is_none());
    }
}
