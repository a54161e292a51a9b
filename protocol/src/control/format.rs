//! The audio stream format a client asks for in `join` and the server confirms in `joined`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{ControlError, quote_bare};
use crate::audio::{AUDIO_HEADER_LEN, FRAME_MS, MAX_PCM_PAYLOAD, SAMPLE_RATE};

/// An audio stream format, as requested in `join` and announced in `joined`.
///
/// Two are supported (see [`AudioFormat::validate`]): Opus at 48 kHz, and 16-bit PCM at one of
/// [`PCM_RATES`] for clients that cannot run Opus; both mono with 20 ms frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioFormat {
    /// Codec name: `"opus"` or `"pcm16"` (case-sensitive).
    pub codec: String,
    /// Sample rate in Hz: 48000 for Opus, one of [`PCM_RATES`] for `pcm16`.
    pub sample_rate: u32,
    /// Channel count; only 1 (mono) is supported.
    pub channels: u8,
    /// Duration of the audio in each packet in ms; only 20 is supported.
    pub frame_ms: u32,
}

impl AudioFormat {
    /// Opus, 48 kHz, mono, 20 ms packets: the format of every client that can run Opus.
    pub fn opus_48k_mono_20ms() -> AudioFormat {
        AudioFormat {
            codec: "opus".to_owned(),
            sample_rate: SAMPLE_RATE,
            channels: 1,
            frame_ms: FRAME_MS,
        }
    }

    /// 16-bit little-endian PCM, mono, 20 ms frames at `sample_rate`, for clients that cannot
    /// run Opus.
    pub fn pcm16(sample_rate: u32) -> AudioFormat {
        AudioFormat {
            codec: "pcm16".to_owned(),
            sample_rate,
            channels: 1,
            frame_ms: FRAME_MS,
        }
    }

    /// The PCM sample rate, if this is a `pcm16` format.
    pub fn pcm_rate(&self) -> Option<u32> {
        (self.codec == "pcm16").then_some(self.sample_rate)
    }

    /// Checks that this is a supported format: `opus/48000/1/20`, or `pcm16/R/1/20` with R one
    /// of [`PCM_RATES`]. The error names what was asked for.
    pub fn validate(&self) -> Result<(), ControlError> {
        if *self == AudioFormat::opus_48k_mono_20ms()
            || (PCM_RATES.contains(&self.sample_rate)
                && *self == AudioFormat::pcm16(self.sample_rate))
        {
            return Ok(());
        }
        Err(ControlError::UnsupportedFormat {
            detail: format!(
                "format {} is not supported; use {} or pcm16/R/1/20 with R one of {:?}",
                self,
                AudioFormat::opus_48k_mono_20ms(),
                PCM_RATES
            ),
        })
    }
}

/// Sample rates a `pcm16` client may use.
pub const PCM_RATES: [u32; 5] = [8_000, 16_000, 22_050, 44_100, 48_000];

/// Largest `pcm16` audio frame: the 9-byte header and 20 ms of 48 kHz 16-bit samples.
pub const MAX_PCM_AUDIO_FRAME: usize = AUDIO_HEADER_LEN + MAX_PCM_PAYLOAD;

impl fmt::Display for AudioFormat {
    /// `codec/sample_rate/channels/frame_ms`, e.g. `opus/48000/1/20`; a long codec is cut short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            quote_bare(&self.codec),
            self.sample_rate,
            self.channels,
            self.frame_ms
        )
    }
}
