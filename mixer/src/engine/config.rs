//! What tunes a room: [`EngineConfig`] and the engine's fixed tuning constants.

use std::time::Duration;

use mixer_protocol::{FRAME_MS, FrameSize};

use super::codec::EncoderSettings;
use super::floor::FloorConfig;
use super::jitter::JitterConfig;
use super::limiter::LimiterConfig;

/// The duration of one frame and one mix tick in a room of the default frame size (see
/// [`EngineConfig::frame`] for a room's own).
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);

/// Ticks a talker keeps its own stream after it stops contributing. While it is silent its own
/// mix equals the shared one, so after a few ticks of identical input its encoder and limiter
/// have converged on the shared stream's state and the switch is inaudible.
pub(super) const OWN_STREAM_HANGOVER: u32 = 3;

/// Frames of the shared stream's recent input replayed into a talker's own encoder when it moves
/// from the shared stream to its own, so its encoder state matches what the listener's decoder
/// has been following.
pub(super) const PRIME_FRAMES: usize = 2;

/// Silent packets (by header, or DTX) still decoded after audible ones before decoding stops.
/// Decoding the start of a silence lets the decoder's state settle on it, so the first packet of
/// the next talk spurt decodes cleanly after the skipped ones.
pub(super) const SILENT_DECODE_HANGOVER: u32 = 5;

/// Encodes of an all-zero mix after which a stream stops calling the encoder and repeats its
/// last packet (the codec's digital-silence frame) until the mix is audible again.
pub(super) const SILENCE_SETTLE_FRAMES: u32 = 3;

/// Time constant of the smoothed talker level used to pick the loudest talkers, in ticks (200 ms).
pub(super) const LOUDNESS_TICKS: f32 = 10.0;

/// Level advantage of a talker already in the mix over a newcomer when the room is at its talker
/// cap (2x in power, 3 dB), so the set of mixed talkers does not flicker between near-equals.
pub(super) const SELECTED_BONUS: f32 = 2.0;

/// Buckets of [`ParticipantStats::limiter_reduction_db`].
pub const LIMITER_DB_BUCKETS: usize = 25;

/// Below this RMS an output frame is marked as carrying no voice activity (about -60 dBFS).
pub(super) const VOICE_RMS_THRESHOLD: f32 = 0.001;

/// A participant starts "talking" (for talking events) when its decoded level is above this RMS
/// (about -40 dBFS) for [`TALK_START_FRAMES`] frames in a row...
pub(super) const TALK_START_RMS: f32 = 0.01;
pub(super) const TALK_START_FRAMES: u32 = 2;
/// ...and stops after [`TALK_STOP_FRAMES`] frames (300 ms) below this RMS (about -50 dBFS) or
/// without audio: the gap between the two thresholds and the hold time are the hysteresis that
/// keeps a talking indicator from flickering between words.
pub(super) const TALK_STOP_RMS: f32 = 0.003;
pub(super) const TALK_STOP_FRAMES: u32 = 15;

/// Level normalisation aims each talker's speech at this RMS (about -20 dBFS)...
pub(super) const NORMALISE_TARGET_RMS: f32 = 0.1;
/// ...with at most this much gain or attenuation (linear: +-15 dB)...
pub(super) const NORMALISE_MAX_GAIN: f32 = 5.62;
/// ...adapting over about this many voiced frames (2 s), so it follows a speaker's level, not
/// the syllables.
pub(super) const NORMALISE_FRAMES: f32 = 100.0;

/// Largest manual input gain a moderator may set, in dB (either way).
pub const MAX_GAIN_DB: f32 = 20.0;

/// Everything that tunes a room.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The duration of every frame in the room and of its tick. Set it with
    /// [`EngineConfig::with_frame`], which keeps the time-based tuning the same in time.
    pub frame: FrameSize,
    /// How outgoing mixes are encoded.
    pub encoder: EncoderSettings,
    /// Jitter-buffer tuning for every talker.
    pub jitter: JitterConfig,
    /// Output limiter; each stream lowers its ceiling to what the encoder's mode needs (see
    /// [`EngineConfig::stream_limiter`]).
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
    /// A tick in which at least this many participants have decoding (talkers with audio) or
    /// encoding (own streams, replays, PCM frames) to do splits that phase between the mixer
    /// thread and the room's helper thread, so one large room can use two cores; `None` keeps
    /// every room on one thread. The helper is spawned once, when a room first needs it, and
    /// kept until the room is dropped; handing it work costs a thread wake-up (microseconds)
    /// per split phase, so only rooms whose tick takes milliseconds should split.
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

impl EngineConfig {
    /// This configuration for a room of `frame`-long frames: the jitter buffer's tuning given in
    /// frames (its floor, ceiling, capacity, measurement window and concealment run) is rescaled
    /// so that it stays the same in time, except the floor, which is one frame whatever its
    /// length: the shorter the frame, the lower the delay a clean network allows.
    pub fn with_frame(&self, frame: FrameSize) -> EngineConfig {
        let old = self.frame;
        let rescale = |frames: u32| -> u32 {
            let time = old.duration() * frames;
            frame.frames_in(time)
        };
        let jitter = JitterConfig {
            frame: frame.duration(),
            min_delay_frames: self.jitter.min_delay_frames,
            max_delay_frames: rescale(self.jitter.max_delay_frames),
            capacity: rescale(self.jitter.capacity as u32) as usize,
            max_expand_frames: rescale(self.jitter.max_expand_frames),
            window: rescale(self.jitter.window as u32) as usize,
            ..self.jitter.clone()
        };
        EngineConfig {
            frame,
            jitter,
            ..self.clone()
        }
    }

    /// Ticks of this room in 20 ms: 1, 2 or 4. The engine's constants counted in ticks (talking
    /// hysteresis, loudness and level smoothing) are given for 20 ms ticks and scaled by this.
    pub fn ticks_per_20ms(&self) -> f32 {
        (FrameSize::Ms20.samples() / self.frame.samples()) as f32
    }
    /// The limiter every output stream uses: [`EngineConfig::limiter`], its ceiling lowered to
    /// what the encoder's mode keeps within full scale once decoded
    /// ([`OpusApplication::peak_ceiling`](super::codec::OpusApplication::peak_ceiling)).
    pub fn stream_limiter(&self) -> LimiterConfig {
        LimiterConfig {
            threshold: self
                .limiter
                .threshold
                .min(self.encoder.application.peak_ceiling()),
            ..self.limiter
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            frame: FrameSize::default(),
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
