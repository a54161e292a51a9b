//! One encoded output stream (limiter, encoder, buffers) and what a tick gives a participant.

use mixer_protocol::{AudioLevel, MAX_OPUS_PACKET};

use super::codec::{CodecError, EncoderSettings};
use super::config::{EngineConfig, LIMITER_DB_BUCKETS, SILENCE_SETTLE_FRAMES, VOICE_RMS_THRESHOLD};
use super::limiter::Limiter;
use super::mix;
use super::stats::ParticipantStats;

/// What a participant gets from one tick.
#[derive(Debug, Clone, Copy)]
pub(super) enum Output {
    /// A frame with this level byte.
    Frame(AudioLevel),
    /// Nothing: its mix is settled silence and frames are paused (downlink DTX).
    Paused,
    /// Nothing: the encoder failed.
    Failed,
}

/// One encoded output stream: limiter, Opus encoder and buffers. Each talker has its own (for
/// its mix-minus); the room has one more, shared by everyone who hears the full mix.
pub(super) struct MixStream {
    pub(super) encoder: opus::Encoder,
    settings: EncoderSettings,
    /// The bitrate the encoder is set to.
    bitrate: u32,
    /// Talkers in this tick's mix, when the stream is a talker's own (mix-minus): its bitrate
    /// follows them ([`EncoderSettings::bitrate_for`]). 0 for the shared and replay streams,
    /// which keep the configured bitrate.
    pub(super) voices: usize,
    pub(super) limiter: Limiter,
    /// This tick's mix, limited in place.
    pub(super) output: Box<[f32]>,
    pub(super) encoded: Box<[u8]>,
    pub(super) encoded_len: usize,
    pub(super) level: AudioLevel,
    /// Consecutive encodes of an all-zero mix.
    pub(super) silent_encodes: u32,
    /// This tick's packet repeats the settled silence packet (it may be paused instead).
    pub(super) repeating_silence: bool,
}

impl MixStream {
    pub(super) fn new(config: &EngineConfig) -> Result<MixStream, CodecError> {
        Ok(MixStream {
            encoder: config.encoder.build()?,
            settings: config.encoder,
            bitrate: config.encoder.bitrate,
            voices: 0,
            limiter: Limiter::new(config.stream_limiter()),
            output: vec![0.0; config.frame.samples()].into_boxed_slice(),
            encoded: vec![0; MAX_OPUS_PACKET].into_boxed_slice(),
            encoded_len: 0,
            level: AudioLevel::SILENT,
            silent_encodes: 0,
            repeating_silence: false,
        })
    }

    /// Runs the limiter over `output`, counting its work into `stats`.
    pub(super) fn limit(&mut self, stats: &mut ParticipantStats) {
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
    pub(super) fn encode(&mut self, encodes: &mut u64) -> Option<AudioLevel> {
        // Digital silence: once the encoder has settled on it, its frame does not change, so
        // repeat it instead of paying a full encode (which costs as much as for speech).
        let silent = self.output.iter().all(|s| *s == 0.0);
        self.repeating_silence =
            silent && self.silent_encodes >= SILENCE_SETTLE_FRAMES && self.encoded_len > 0;
        if self.repeating_silence {
            return Some(self.level);
        }
        self.silent_encodes = if silent { self.silent_encodes + 1 } else { 0 };
        let bitrate = self.settings.bitrate_for(self.voices);
        if bitrate != self.bitrate {
            // A control call on the existing encoder: no allocation, applies from this frame.
            // If libopus refused, the encoder keeps its bitrate and the next encode tries again.
            if self
                .encoder
                .set_bitrate(opus::Bitrate::Bits(bitrate as i32))
                .is_ok()
            {
                self.bitrate = bitrate;
            }
        }
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

    pub(super) fn payload(&self) -> &[u8] {
        &self.encoded[..self.encoded_len]
    }
}
