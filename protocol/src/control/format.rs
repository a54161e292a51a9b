//! The audio stream format a client asks for in `join` and the server confirms in `joined`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{ControlError, quote_bare};
use crate::audio::{AUDIO_HEADER_LEN, FRAME_MS, FrameSize, MAX_PCM_PAYLOAD, SAMPLE_RATE};

/// An audio stream format, as requested in `join` and announced in `joined`.
///
/// Two are supported (see [`AudioFormat::validate`]): Opus at 48 kHz, mono, with 20, 10 or 5 ms
/// frames (the room's [`FrameSize`]), and 16-bit PCM at one of [`PCM_RATES`] for clients that
/// cannot run Opus, mono with 20 ms frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioFormat {
    /// Codec name: `"opus"` or `"pcm16"` (case-sensitive).
    pub codec: String,
    /// Sample rate in Hz: 48000 for Opus, one of [`PCM_RATES`] for `pcm16`.
    pub sample_rate: u32,
    /// Channel count; only 1 (mono) is supported.
    pub channels: u8,
    /// Duration of the audio in each packet in ms: the room's frame size, 20 (the default), 10
    /// or 5 for Opus; 20 for PCM.
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

    /// Opus, 48 kHz, mono, in packets of `frame`.
    pub fn opus_48k_mono(frame: FrameSize) -> AudioFormat {
        AudioFormat {
            frame_ms: frame.ms(),
            ..AudioFormat::opus_48k_mono_20ms()
        }
    }

    /// The frame size asked for, if it is one a room can have (whatever the codec).
    pub fn frame_size(&self) -> Option<FrameSize> {
        FrameSize::from_ms(self.frame_ms)
    }

    /// The PCM sample rate, if this is a `pcm16` format.
    pub fn pcm_rate(&self) -> Option<u32> {
        (self.codec == "pcm16").then_some(self.sample_rate)
    }

    /// Checks that this is a supported format: `opus/48000/1/F` with F one of 20, 10 or 5, or
    /// `pcm16/R/1/20` with R one of [`PCM_RATES`]. The error names what was asked for. (Whether
    /// the frame size is the room's is checked when the client is seated.)
    pub fn validate(&self) -> Result<(), ControlError> {
        if self
            .frame_size()
            .is_some_and(|frame| *self == AudioFormat::opus_48k_mono(frame))
            || (PCM_RATES.contains(&self.sample_rate)
                && *self == AudioFormat::pcm16(self.sample_rate))
        {
            return Ok(());
        }
        Err(ControlError::UnsupportedFormat {
            detail: format!(
                "format {} is not supported; use opus/48000/1/F with F one of 20, 10 or 5 \
                 (the room's frame_ms), or pcm16/R/1/20 with R one of {:?}",
                self, PCM_RATES
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
