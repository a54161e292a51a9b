//! Binary WebSocket frames: a 9-byte header followed by exactly one Opus packet.
//!
//! The same layout is used in both directions. Parsing is total: [`AudioFrame::parse`] returns an
//! [`AudioError`] for every malformed input and never panics, because every byte of it comes from a
//! peer.

use crate::control::ErrorCode;

/// Version byte written at offset 0 of every audio frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Sample rate of every Opus stream and of the header timestamp, in Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of one audio frame in milliseconds in a room of the default [`FrameSize`].
pub const FRAME_MS: u32 = 20;
/// Samples per channel in one 20 ms frame at 48 kHz; the timestamp step between frames in a room
/// of the default [`FrameSize`], and the most any frame holds.
pub const FRAME_SAMPLES: usize = 960;

/// The duration of every frame in a room: of each packet its clients send and receive, and of
/// its mix tick. 20 ms is the default; 10 and 5 ms rooms trade more packets (and CPU) per second
/// for less delay, for musicians and others who play together. Opus codes all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FrameSize {
    /// 20 ms, 960 samples: 50 packets a second.
    #[default]
    Ms20,
    /// 10 ms, 480 samples: 100 packets a second.
    Ms10,
    /// 5 ms, 240 samples: 200 packets a second.
    Ms5,
}

impl FrameSize {
    /// Every frame size, longest first.
    pub const ALL: [FrameSize; 3] = [FrameSize::Ms20, FrameSize::Ms10, FrameSize::Ms5];

    /// The frame size of `ms` milliseconds, if it is one of [`FrameSize::ALL`].
    pub fn from_ms(ms: u32) -> Option<FrameSize> {
        FrameSize::ALL.into_iter().find(|f| f.ms() == ms)
    }

    /// Its duration in milliseconds.
    pub fn ms(self) -> u32 {
        match self {
            FrameSize::Ms20 => 20,
            FrameSize::Ms10 => 10,
            FrameSize::Ms5 => 5,
        }
    }

    /// Samples per channel in one frame at 48 kHz: the timestamp step between frames.
    pub fn samples(self) -> usize {
        self.ms() as usize * (SAMPLE_RATE as usize / 1000)
    }

    /// Its duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.ms()))
    }

    /// Frames in one second.
    pub fn per_second(self) -> u32 {
        1000 / self.ms()
    }

    /// How many of these frames last as long as `duration` (rounded up, at least 1): for tuning
    /// given in time, kept the same whatever the frame.
    pub fn frames_in(self, duration: std::time::Duration) -> u32 {
        let frame = self.duration().as_micros();
        u32::try_from(duration.as_micros().div_ceil(frame))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

impl std::fmt::Display for FrameSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms", self.ms())
    }
}
/// Largest Opus packet allowed by RFC 6716 section 3.4 (R5), in bytes.
pub const MAX_OPUS_PACKET: usize = 1275;
/// Length of the fixed audio header in bytes.
pub const AUDIO_HEADER_LEN: usize = 9;
/// Largest valid binary frame: header plus the largest Opus packet.
pub const MAX_AUDIO_FRAME: usize = AUDIO_HEADER_LEN + MAX_OPUS_PACKET;
/// Largest `pcm16` payload: 20 ms of 16-bit samples at 48 kHz.
pub const MAX_PCM_PAYLOAD: usize = 2 * 960;

/// The flags byte (offset 1) of an audio header.
///
/// Only [`Flags::MARKER`] is defined. Reserved bits are sent as zero and ignored on receipt, but
/// kept in the value so a frame can be re-encoded unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Bit 0: this packet is the first of a talk spurt (after silence or at stream start).
    pub const MARKER: Flags = Flags(0x01);

    /// Whether the marker bit is set.
    pub fn marker(self) -> bool {
        self.0 & Self::MARKER.0 != 0
    }

    /// These flags with the marker bit set or cleared; other bits are preserved.
    #[must_use]
    pub fn with_marker(self, on: bool) -> Flags {
        if on {
            Flags(self.0 | Self::MARKER.0)
        } else {
            Flags(self.0 & !Self::MARKER.0)
        }
    }
}

/// The audio level byte (offset 8), in the spirit of RFC 6464.
///
/// Bit 7 is V (voice activity); bits 0-6 are the level in -dBov, 0 being the loudest. A measured
/// level is `0..=126`, 126 meaning -126 dBov or quieter (digital silence). `0x7F` (no V, 127)
/// means "not measured": the server decodes such a frame like any other and measures it itself.
/// Every byte value is a valid level, so decoding cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AudioLevel {
    voice_activity: bool,
    level_dbov: u8,
}

impl AudioLevel {
    /// No voice activity, level 126 (-126 dBov): what a measuring sender reports for digital
    /// silence.
    pub const SILENT: AudioLevel = AudioLevel {
        voice_activity: false,
        level_dbov: Self::MAX_MEASURED,
    };

    /// `0x7F`: the sender does not measure the level. The server never skips such a frame.
    pub const UNKNOWN: AudioLevel = AudioLevel {
        voice_activity: false,
        level_dbov: Self::MAX_LEVEL,
    };

    /// Largest level value: 127 (with V clear, [`AudioLevel::UNKNOWN`]).
    pub const MAX_LEVEL: u8 = 0x7f;

    /// Largest measured level: 126, meaning -126 dBov or quieter.
    pub const MAX_MEASURED: u8 = 126;

    const V_BIT: u8 = 0x80;

    /// A level of `-level_dbov` dBov; values above 127 are clamped to 127.
    pub fn new(voice_activity: bool, level_dbov: u8) -> AudioLevel {
        AudioLevel {
            voice_activity,
            level_dbov: level_dbov.min(Self::MAX_LEVEL),
        }
    }

    /// Decodes the level byte of a header.
    pub fn from_byte(b: u8) -> AudioLevel {
        AudioLevel {
            voice_activity: b & Self::V_BIT != 0,
            level_dbov: b & Self::MAX_LEVEL,
        }
    }

    /// Encodes this level as the header byte.
    pub fn to_byte(self) -> u8 {
        let v = if self.voice_activity { Self::V_BIT } else { 0 };
        v | self.level_dbov
    }

    /// The V bit: the sender believes this packet contains speech.
    pub fn voice_activity(self) -> bool {
        self.voice_activity
    }

    /// The level as a positive number N meaning -N dBov, in `0..=127`.
    pub fn level_dbov(self) -> u8 {
        self.level_dbov
    }

    /// Whether the sender said it does not measure the level (`0x7F`).
    pub fn is_unknown(self) -> bool {
        self == Self::UNKNOWN
    }

    /// The level of a block of f32 samples (full scale is ±1.0) from their RMS.
    ///
    /// The level is `-20 * log10(rms)` rounded and clamped to `0..=126`, so a full-scale sine
    /// (RMS 0.707) gives 3 and a full-scale square wave 0. Zero, negative, tiny or NaN RMS values
    /// give 126 (silence). A measured level is never 127, which says "not measured".
    pub fn from_rms(voice_activity: bool, rms: f32) -> AudioLevel {
        if rms.is_nan() || rms <= 0.0 {
            return AudioLevel::new(voice_activity, Self::MAX_MEASURED);
        }
        let dbov = (-20.0 * rms.log10()).round();
        let clamped = dbov.clamp(0.0, f32::from(Self::MAX_MEASURED));
        // In range 0..=126 after the clamp, so the cast is exact.
        AudioLevel::new(voice_activity, clamped as u8)
    }
}

/// The fixed 9-byte header of an audio frame, without its version byte (always
/// [`PROTOCOL_VERSION`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AudioHeader {
    /// Flags byte; see [`Flags`].
    pub flags: Flags,
    /// Packet sequence number: +1 per packet sent, wrapping at 65535.
    pub sequence: u16,
    /// Media time of the packet's first sample in 48 kHz samples: +960 per 20 ms, jumps forward
    /// over silence the sender did not send, wraps at 2^32.
    pub timestamp: u32,
    /// Audio level of the packet; see [`AudioLevel`].
    pub level: AudioLevel,
}

impl AudioHeader {
    /// Encodes the header, including the version byte, as it appears on the wire.
    pub fn to_bytes(&self) -> [u8; AUDIO_HEADER_LEN] {
        let seq = self.sequence.to_be_bytes();
        let ts = self.timestamp.to_be_bytes();
        [
            PROTOCOL_VERSION,
            self.flags.0,
            seq[0],
            seq[1],
            ts[0],
            ts[1],
            ts[2],
            ts[3],
            self.level.to_byte(),
        ]
    }

    /// Decodes a header, checking only the version byte (every other byte value is valid).
    pub fn from_bytes(bytes: [u8; AUDIO_HEADER_LEN]) -> Result<AudioHeader, AudioError> {
        let [version, flags, s0, s1, t0, t1, t2, t3, level] = bytes;
        if version != PROTOCOL_VERSION {
            return Err(AudioError::UnsupportedVersion { version });
        }
        Ok(AudioHeader {
            flags: Flags(flags),
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            level: AudioLevel::from_byte(level),
        })
    }
}

/// One binary WebSocket frame: a header and the Opus packet it carries, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioFrame<'a> {
    /// The decoded header.
    pub header: AudioHeader,
    /// Exactly one Opus packet, `1..=1275` bytes in a valid frame.
    pub payload: &'a [u8],
}

impl<'a> AudioFrame<'a> {
    /// Parses a binary frame. Total: every input gives a frame or an error, never a panic.
    ///
    /// The Opus packet itself is not inspected beyond its length; decoding it is the receiver's
    /// job.
    pub fn parse(bytes: &'a [u8]) -> Result<AudioFrame<'a>, AudioError> {
        Self::parse_within(bytes, MAX_OPUS_PACKET)
    }

    /// [`AudioFrame::parse`] for a `pcm16` client's frames, whose payload (20 ms of 16-bit
    /// samples, up to 1920 bytes at 48 kHz) may be larger than an Opus packet. The caller checks
    /// the exact length for the client's rate.
    pub fn parse_pcm(bytes: &'a [u8]) -> Result<AudioFrame<'a>, AudioError> {
        Self::parse_within(bytes, MAX_PCM_PAYLOAD)
    }

    fn parse_within(bytes: &'a [u8], max_payload: usize) -> Result<AudioFrame<'a>, AudioError> {
        let Some((head, payload)) = bytes.split_first_chunk::<AUDIO_HEADER_LEN>() else {
            return Err(AudioError::Truncated { len: bytes.len() });
        };
        let header = AudioHeader::from_bytes(*head)?;
        if payload.is_empty() {
            return Err(AudioError::EmptyPayload);
        }
        if payload.len() > max_payload {
            return Err(AudioError::PayloadTooLarge { len: payload.len() });
        }
        Ok(AudioFrame { header, payload })
    }

    /// Appends the encoded frame (header, then payload) to `out`.
    ///
    /// The payload is written as given; a sender must keep it within `1..=1275` bytes or the
    /// receiver rejects the frame.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(self.payload);
    }

    /// The encoded frame in a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    /// Length of the encoded frame in bytes: header plus payload.
    pub fn encoded_len(&self) -> usize {
        AUDIO_HEADER_LEN + self.payload.len()
    }
}

/// Why a binary frame is not a valid audio frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// The frame is shorter than the 9-byte header.
    #[error("audio frame of {len} bytes is shorter than the {AUDIO_HEADER_LEN}-byte header")]
    Truncated {
        /// Length of the frame received.
        len: usize,
    },
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("audio frame version {version} is not supported (expected {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// Version byte received.
        version: u8,
    },
    /// The frame has a header but no Opus packet.
    #[error("audio frame has a header but no Opus packet (expected 1 to {MAX_OPUS_PACKET} bytes)")]
    EmptyPayload,
    /// The Opus packet is longer than RFC 6716 allows.
    #[error("Opus packet of {len} bytes exceeds the maximum of {MAX_OPUS_PACKET}")]
    PayloadTooLarge {
        /// Length of the Opus packet received (frame length minus the header).
        len: usize,
    },
}

impl AudioError {
    /// The error code the server reports for this error in an `error` message.
    pub fn code(&self) -> ErrorCode {
        match self {
            AudioError::Truncated { .. } => ErrorCode::BadAudioHeader,
            AudioError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            AudioError::EmptyPayload => ErrorCode::InvalidOpus,
            AudioError::PayloadTooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Opus "silence" packet: TOC 0xF8 (CELT fullband 20 ms, mono, one frame) and two bytes.
    const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

    fn header(flags: u8, sequence: u16, timestamp: u32, level: u8) -> AudioHeader {
        AudioHeader {
            flags: Flags(flags),
            sequence,
            timestamp,
            level: AudioLevel::from_byte(level),
        }
    }

    #[test]
    fn golden_header_with_marker_and_voice() {
        let h = AudioHeader {
            flags: Flags::MARKER,
            sequence: 0x1234,
            timestamp: 0x89ab_cdef,
            level: AudioLevel::new(true, 30),
        };
        let bytes = [0x01, 0x01, 0x12, 0x34, 0x89, 0xab, 0xcd, 0xef, 0x9e];
        assert_eq!(h.to_bytes(), bytes);
        assert_eq!(AudioHeader::from_bytes(bytes), Ok(h));
    }

    #[test]
    fn golden_frame_silent_no_marker() {
        let frame = AudioFrame {
            header: AudioHeader {
                flags: Flags::default(),
                sequence: 0,
                timestamp: 960,
                level: AudioLevel::SILENT,
            },
            payload: &OPUS_SILENCE,
        };
        let bytes = [
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xc0, 0x7e, 0xf8, 0xff, 0xfe,
        ];
        assert_eq!(frame.to_vec(), bytes);
        assert_eq!(AudioFrame::parse(&bytes), Ok(frame));
    }

    #[test]
    fn golden_frame_wrapped_counters_reserved_bits() {
        // Sequence and timestamp at their maxima; reserved flag bits kept; V=0 level 0.
        let bytes = [0x01, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0xaa];
        let frame = AudioFrame::parse(&bytes).expect("golden frame is valid");
        assert_eq!(frame.header, header(0xfe, u16::MAX, u32::MAX, 0x00));
        assert!(!frame.header.flags.marker());
        assert!(!frame.header.level.voice_activity());
        assert_eq!(frame.header.level.level_dbov(), 0);
        assert_eq!(frame.payload, &[0xaa]);
        assert_eq!(frame.to_vec(), bytes);
    }

    #[test]
    fn write_to_appends() {
        let frame = AudioFrame {
            header: header(1, 7, 8, 9),
            payload: &OPUS_SILENCE,
        };
        let mut out = vec![0xee];
        frame.write_to(&mut out);
        assert_eq!(out.len(), 1 + frame.encoded_len());
        assert_eq!(out[0], 0xee);
        assert_eq!(&out[1..], frame.to_vec().as_slice());
    }

    #[test]
    fn truncated_frames() {
        for len in 0..AUDIO_HEADER_LEN {
            let bytes = vec![PROTOCOL_VERSION; len];
            assert_eq!(
                AudioFrame::parse(&bytes),
                Err(AudioError::Truncated { len })
            );
        }
    }

    #[test]
    fn unsupported_version() {
        let mut bytes = header(0, 1, 2, 3).to_bytes().to_vec();
        bytes.extend_from_slice(&OPUS_SILENCE);
        for version in [0u8, 2, 0x7f, 0xff] {
            bytes[0] = version;
            assert_eq!(
                AudioFrame::parse(&bytes),
                Err(AudioError::UnsupportedVersion { version })
            );
        }
    }

    #[test]
    fn empty_payload() {
        let bytes = header(0, 1, 2, 3).to_bytes();
        assert_eq!(AudioFrame::parse(&bytes), Err(AudioError::EmptyPayload));
    }

    #[test]
    fn payload_size_limits() {
        let mut bytes = header(0, 1, 2, 3).to_bytes().to_vec();
        bytes.resize(MAX_AUDIO_FRAME, 0x55);
        let frame = AudioFrame::parse(&bytes).expect("largest packet is valid");
        assert_eq!(frame.payload.len(), MAX_OPUS_PACKET);
        bytes.push(0x55);
        assert_eq!(
            AudioFrame::parse(&bytes),
            Err(AudioError::PayloadTooLarge {
                len: MAX_OPUS_PACKET + 1
            })
        );
    }

    #[test]
    fn error_codes_and_messages() {
        let cases = [
            (
                AudioError::Truncated { len: 4 },
                ErrorCode::BadAudioHeader,
                "audio frame of 4 bytes is shorter than the 9-byte header",
            ),
            (
                AudioError::UnsupportedVersion { version: 7 },
                ErrorCode::UnsupportedVersion,
                "audio frame version 7 is not supported (expected 1)",
            ),
            (
                AudioError::EmptyPayload,
                ErrorCode::InvalidOpus,
                "audio frame has a header but no Opus packet (expected 1 to 1275 bytes)",
            ),
            (
                AudioError::PayloadTooLarge { len: 2000 },
                ErrorCode::FrameTooLarge,
                "Opus packet of 2000 bytes exceeds the maximum of 1275",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn flags_marker() {
        assert!(Flags::MARKER.marker());
        assert!(!Flags::default().marker());
        assert_eq!(Flags(0xf0).with_marker(true), Flags(0xf1));
        assert_eq!(Flags(0xf1).with_marker(false), Flags(0xf0));
        assert_eq!(Flags::MARKER.with_marker(true), Flags::MARKER);
    }

    #[test]
    fn level_constructors() {
        assert_eq!(AudioLevel::SILENT.to_byte(), 0x7e);
        assert_eq!(AudioLevel::UNKNOWN.to_byte(), 0x7f);
        assert!(AudioLevel::from_byte(0x7f).is_unknown());
        assert!(!AudioLevel::SILENT.is_unknown());
        assert!(
            !AudioLevel::from_byte(0xff).is_unknown(),
            "V set: a loud 'voice' at -127"
        );
        assert_eq!(AudioLevel::new(false, 200), AudioLevel::UNKNOWN);
        assert_eq!(AudioLevel::new(true, 0).to_byte(), 0x80);
        assert_eq!(AudioLevel::new(true, 127).to_byte(), 0xff);
        let l = AudioLevel::from_byte(0x9e);
        assert!(l.voice_activity());
        assert_eq!(l.level_dbov(), 30);
    }

    #[test]
    fn level_from_rms() {
        let cases = [
            (0.0, 126),
            (-1.0, 126),
            (f32::NAN, 126),
            (1e-12, 126),
            (f32::MIN_POSITIVE, 126),
            (1.0, 0),
            (2.0, 0),
            (f32::INFINITY, 0),
            (std::f32::consts::FRAC_1_SQRT_2, 3),
            (0.1, 20),
            (0.01, 40),
            (0.001, 60),
        ];
        for (rms, want) in cases {
            let level = AudioLevel::from_rms(true, rms);
            assert_eq!(level.level_dbov(), want, "rms {rms}");
            assert!(level.voice_activity());
        }
        assert!(!AudioLevel::from_rms(false, 0.5).voice_activity());
    }

    #[test]
    fn level_of_full_scale_sine() {
        let samples: Vec<f32> = (0..FRAME_SAMPLES)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / SAMPLE_RATE as f32).sin())
            .collect();
        let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
        assert_eq!(AudioLevel::from_rms(true, rms).level_dbov(), 3);
    }

    #[test]
    fn constants_agree() {
        assert_eq!(
            FRAME_SAMPLES as u32,
            SAMPLE_RATE / 1000 * FRAME_MS,
            "960 samples per 20 ms at 48 kHz"
        );
        assert_eq!(MAX_AUDIO_FRAME, 1284);
    }

    proptest! {
        #[test]
        fn header_round_trip(flags: u8, sequence: u16, timestamp: u32, level: u8) {
            let h = header(flags, sequence, timestamp, level);
            let bytes = h.to_bytes();
            prop_assert_eq!(bytes[0], PROTOCOL_VERSION);
            prop_assert_eq!(bytes[1], flags);
            prop_assert_eq!(bytes[8], level);
            prop_assert_eq!(AudioHeader::from_bytes(bytes), Ok(h));
        }

        #[test]
        fn frame_round_trip(
            flags: u8,
            sequence: u16,
            timestamp: u32,
            level: u8,
            payload in proptest::collection::vec(any::<u8>(), 1..=MAX_OPUS_PACKET),
        ) {
            let header = header(flags, sequence, timestamp, level);
            let frame = AudioFrame { header, payload: &payload };
            let bytes = frame.to_vec();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(AudioFrame::parse(&bytes), Ok(frame));
        }

        #[test]
        fn level_byte_round_trip(b: u8) {
            prop_assert_eq!(AudioLevel::from_byte(b).to_byte(), b);
        }

        #[test]
        fn level_new_clamps(v: bool, n: u8) {
            let l = AudioLevel::new(v, n);
            prop_assert_eq!(l.voice_activity(), v);
            prop_assert_eq!(l.level_dbov(), n.min(127));
        }

        #[test]
        fn level_from_rms_is_monotonic(a in 0.0f32..4.0, b in 0.0f32..4.0) {
            let (quiet, loud) = if a <= b { (a, b) } else { (b, a) };
            let lq = AudioLevel::from_rms(false, quiet).level_dbov();
            let ll = AudioLevel::from_rms(false, loud).level_dbov();
            prop_assert!(lq >= ll, "rms {} -> {}, rms {} -> {}", quiet, lq, loud, ll);
            prop_assert!(lq <= 127);
        }

        #[test]
        fn level_from_any_rms_never_panics(bits: u32) {
            let l = AudioLevel::from_rms(true, f32::from_bits(bits));
            prop_assert!(l.level_dbov() <= 127);
        }

        #[test]
        fn parse_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..=MAX_AUDIO_FRAME + 16),
        ) {
            match AudioFrame::parse(&bytes) {
                Ok(frame) => {
                    prop_assert!(!frame.payload.is_empty());
                    prop_assert!(frame.payload.len() <= MAX_OPUS_PACKET);
                    prop_assert_eq!(frame.to_vec(), bytes);
                }
                Err(err) => {
                    // Every error maps to an audio-related code and prints.
                    prop_assert!(!err.to_string().is_empty());
                    let _ = err.code();
                }
            }
        }

        #[test]
        fn parse_valid_prefix_arbitrary_rest(
            rest in proptest::collection::vec(any::<u8>(), 0..=MAX_AUDIO_FRAME),
        ) {
            let mut bytes = vec![PROTOCOL_VERSION];
            bytes.extend_from_slice(&rest);
            let result = AudioFrame::parse(&bytes);
            let payload_len = bytes.len().saturating_sub(AUDIO_HEADER_LEN);
            match payload_len {
                _ if bytes.len() < AUDIO_HEADER_LEN => {
                    prop_assert_eq!(result, Err(AudioError::Truncated { len: bytes.len() }));
                }
                0 => prop_assert_eq!(result, Err(AudioError::EmptyPayload)),
                n if n > MAX_OPUS_PACKET => {
                    prop_assert_eq!(result, Err(AudioError::PayloadTooLarge { len: n }));
                }
                _ => prop_assert!(result.is_ok()),
            }
        }
    }
}
