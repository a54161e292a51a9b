//! Opus encoder settings and codec construction for the mixer's own streams.

use std::fmt;
use std::str::FromStr;

use mixer_protocol::SAMPLE_RATE;

/// Which Opus coding mode the server uses to encode the mixes it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpusApplication {
    /// `OPUS_APPLICATION_VOIP`: SILK/hybrid for speech. Best quality per bit at low bitrates,
    /// about 2.8 times the CPU of CELT-only at the same complexity.
    Voip,
    /// `OPUS_APPLICATION_AUDIO`: libopus picks per frame; at speech bitrates it behaves much like
    /// VOIP, at 48 kb/s and up mostly CELT.
    Audio,
    /// `OPUS_APPLICATION_RESTRICTED_LOWDELAY`: CELT only. Cheapest to encode and 4 ms less
    /// look-ahead; needs a somewhat higher bitrate for the same speech quality.
    LowDelay,
}

impl OpusApplication {
    /// The highest limiter ceiling (linear) whose mixes still decode within full scale in this
    /// mode. A codec does not preserve peaks: a dense mix limited to a ceiling comes back from
    /// the decoder with peaks above it. Measured with 8 to 70 speech-like voices and 16 to 70
    /// tones at 0.9 each, limited and encoded at 16 to 256 kb/s and complexity 0 to 10 (see
    /// `tests/codec.rs`), the worst overshoot was 2.4 dB in CELT-only mode (1.4 dB from 32 kb/s
    /// up), 1.9 dB in audio mode and 3.6 dB in VOIP mode, where SILK rebuilds the waveform from
    /// a model rather than coding it: hence -3 dBFS for the first two and -6 dBFS for VOIP,
    /// which leaves at least 0.5 dB (1.0 dB from 32 kb/s up) and 2.4 dB to full scale.
    pub fn peak_ceiling(self) -> f32 {
        let db: f32 = match self {
            OpusApplication::Voip => -6.0,
            OpusApplication::Audio | OpusApplication::LowDelay => -3.0,
        };
        10f32.powf(db / 20.0)
    }

    fn to_opus(self) -> opus::Application {
        match self {
            OpusApplication::Voip => opus::Application::Voip,
            OpusApplication::Audio => opus::Application::Audio,
            OpusApplication::LowDelay => opus::Application::LowDelay,
        }
    }
}

impl fmt::Display for OpusApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpusApplication::Voip => "voip",
            OpusApplication::Audio => "audio",
            OpusApplication::LowDelay => "lowdelay",
        })
    }
}

/// A string that names no Opus application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Opus application {0:?}; expected voip, audio or lowdelay")]
pub struct UnknownApplication(pub String);

impl FromStr for OpusApplication {
    type Err = UnknownApplication;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "voip" => Ok(OpusApplication::Voip),
            "audio" => Ok(OpusApplication::Audio),
            "lowdelay" | "low-delay" | "restricted-lowdelay" => Ok(OpusApplication::LowDelay),
            _ => Err(UnknownApplication(s.to_owned())),
        }
    }
}

/// How the server encodes each outgoing mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    /// Coding mode.
    pub application: OpusApplication,
    /// Target bitrate in bits per second (VBR).
    pub bitrate: u32,
    /// Encoder complexity, 0 (cheapest) to 10.
    pub complexity: u8,
}

impl Default for EncoderSettings {
    /// CELT-only at 48 kb/s, complexity 5.
    ///
    /// The downlink runs over TCP, which never loses a packet, so SILK's in-band FEC (the main
    /// reason to prefer VOIP mode on lossy links) buys nothing here. CELT-only costs about a third
    /// of hybrid's CPU per encode and has 4 ms less look-ahead; 48 kb/s gives full-band speech and
    /// clean tones. Complexity 5 costs ~0.7x of complexity 10 with no audible difference on speech.
    fn default() -> Self {
        EncoderSettings {
            application: OpusApplication::LowDelay,
            bitrate: 48_000,
            complexity: 5,
        }
    }
}

/// Bitrate a talker's own (mix-minus) stream gets for each voice in its mix beyond the first.
///
/// The own voice is absent from a talker's mix, but the codec's noise is not: at a fixed
/// bitrate it rises with the number of voices sharing the bits, and at the talker's own
/// frequency it is what the talker hears of itself. Measured in the simulation (tone talkers,
/// `own_voice_stays_60_db_down_in_a_room_of_ten`) as the talker's own frequency against the
/// weakest other voice, worst talker, at the defaults: 45 / 44 / 38 dB at 4 / 10 / 20 talkers
/// with a fixed 48 kb/s, 56 / 67 / 65 dB with this rule (112 / 256 / 256 kb/s). The cost, per
/// own-stream encode (`own_stream_encode_cost` in `tests/codec.rs`, 2-core VM): 48 -> 60 µs,
/// 47 -> 65 µs and 49 -> 75 µs at 4 / 10 / 20 talkers, and 121 -> 281 / 641 / 641 bytes per
/// packet. Listeners hear the shared mix, which hides nobody's own voice, so it keeps the
/// configured bitrate.
pub const BITRATE_PER_VOICE: u32 = 32_000;

/// Most a talker's own stream is raised to by [`BITRATE_PER_VOICE`]: above this, mono Opus
/// measured no better (the same figures at 256, 320 and 510 kb/s).
pub const MAX_DENSE_BITRATE: u32 = 256_000;

/// Bad encoder settings or a libopus failure while building a codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bitrate is outside what Opus supports for mono.
    #[error("Opus bitrate {0} b/s is out of range (6000..=510000)")]
    Bitrate(u32),
    /// The complexity is above 10.
    #[error("Opus complexity {0} is out of range (0..=10)")]
    Complexity(u8),
    /// libopus refused to create or configure a codec.
    #[error("libopus: {0}")]
    Opus(#[from] opus::Error),
}

impl EncoderSettings {
    /// Checks the ranges libopus accepts.
    pub fn validate(&self) -> Result<(), CodecError> {
        if !(6_000..=510_000).contains(&self.bitrate) {
            return Err(CodecError::Bitrate(self.bitrate));
        }
        if self.complexity > 10 {
            return Err(CodecError::Complexity(self.complexity));
        }
        Ok(())
    }

    /// The bitrate of a talker's own stream whose mix holds `voices` talkers: the configured
    /// bitrate, plus [`BITRATE_PER_VOICE`] for each voice beyond the first, up to
    /// [`MAX_DENSE_BITRATE`] (never below the configured bitrate).
    pub fn bitrate_for(&self, voices: usize) -> u32 {
        let extra = u32::try_from(voices.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .saturating_mul(BITRATE_PER_VOICE);
        self.bitrate
            .max(self.bitrate.saturating_add(extra).min(MAX_DENSE_BITRATE))
    }

    /// Builds a configured mono 48 kHz encoder.
    pub fn build(&self) -> Result<opus::Encoder, CodecError> {
        self.validate()?;
        let mut encoder = opus::Encoder::new(
            SAMPLE_RATE,
            opus::Channels::Mono,
            self.application.to_opus(),
        )?;
        encoder.set_bitrate(opus::Bitrate::Bits(self.bitrate as i32))?;
        encoder.set_complexity(i32::from(self.complexity))?;
        encoder.set_vbr(true)?;
        // Every tick produces a frame; listeners rely on a continuous stream.
        encoder.set_dtx(false)?;
        Ok(encoder)
    }
}

/// Builds a mono 48 kHz decoder for one participant's uplink.
pub fn decoder() -> Result<opus::Decoder, CodecError> {
    Ok(opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_parses_and_displays() {
        for app in [
            OpusApplication::Voip,
            OpusApplication::Audio,
            OpusApplication::LowDelay,
        ] {
            assert_eq!(app.to_string().parse::<OpusApplication>(), Ok(app));
        }
        assert!("speech".parse::<OpusApplication>().is_err());
    }

    #[test]
    fn own_stream_bitrate_follows_the_voices_in_the_mix() {
        let s = EncoderSettings::default();
        assert_eq!(s.bitrate_for(0), s.bitrate);
        assert_eq!(s.bitrate_for(1), s.bitrate);
        assert_eq!(s.bitrate_for(2), s.bitrate + BITRATE_PER_VOICE);
        assert_eq!(s.bitrate_for(9), MAX_DENSE_BITRATE);
        assert_eq!(s.bitrate_for(usize::MAX), MAX_DENSE_BITRATE);
        let high = EncoderSettings {
            bitrate: 320_000,
            ..s
        };
        assert_eq!(high.bitrate_for(20), 320_000);
        for voices in 0..40 {
            let dense = EncoderSettings {
                bitrate: s.bitrate_for(voices),
                ..s
            };
            assert!(dense.validate().is_ok());
        }
    }

    #[test]
    fn settings_are_range_checked() {
        let mut s = EncoderSettings::default();
        assert!(s.build().is_ok());
        s.bitrate = 1_000;
        assert!(matches!(s.validate(), Err(CodecError::Bitrate(1_000))));
        s.bitrate = 32_000;
        s.complexity = 11;
        assert!(matches!(s.validate(), Err(CodecError::Complexity(11))));
    }
}
