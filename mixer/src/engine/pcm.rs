//! Raw PCM for thin clients: 16-bit little-endian mono frames at a client rate, to and from the
//! engine's 48 kHz f32 frames.
//!
//! Microcontrollers and scripts that cannot run Opus send and receive one 20 ms frame of
//! `i16` LE samples per packet at 8000, 16000, 22050, 44100 or 48000 Hz. A [`PcmUplink`] turns
//! each such frame into the 960 f32 samples the mix bus works on; a [`PcmDownlink`] turns a
//! 960-sample mix back into one client frame.
//!
//! # Choices
//!
//! - **Resampler**: rubato 5's synchronous FFT resampler ([`rubato::Fft`], built with
//!   `Fft::new_custom(.., FixedSync::Input)`, BlackmanHarris2 window, f32) — the rates are fixed
//!   and related by exact ratios, so no asynchronous (sinc-interpolating) resampler is needed,
//!   and an FFT overlap-add filter is a plain linear-phase filter: the output is continuous
//!   across frames and a tone comes out at its level. 48 kHz clients bypass it and are
//!   bit-exact (`i16 / 32768` and back).
//! - **Chunk sizes**: one call per 20 ms frame, `samples_per_frame` in and 960 out (or the
//!   reverse), with the frame cut into FFT sub-blocks of 10 ms (6.7 ms at 22.05 kHz, where
//!   10 ms is not a whole number of the rates' smallest common block). The sub-blocks divide
//!   the frame exactly, so the fixed-input resampler never carries samples over and every call
//!   has exactly one frame out.
//! - **Delay**: half an FFT sub-block, each way: 240 samples at 48 kHz (5 ms), 160 (3.3 ms) at
//!   22.05 kHz, 0 at 48 kHz (the tests check it against an impulse's peak). See
//!   [`PcmUplink::delay_48k`] and [`PcmDownlink::delay_48k`].
//!   The first frames out of a fresh converter start with that many samples of silence. Larger
//!   blocks would move the anti-aliasing cutoff closer to the client's Nyquist frequency
//!   (from about 83% at 8 kHz with these blocks) for more delay; speech does not need it.
//! - **Real time**: every buffer is allocated by `new`. [`PcmUplink::decode`],
//!   [`PcmUplink::conceal`] and [`PcmDownlink::render`] do not allocate: they use rubato's
//!   `process_into_buffer` on preallocated buffers, never its allocating `process`.
//! - **Loss**: there is no codec to conceal a lost frame, so [`PcmUplink::conceal`] plays the
//!   last frame backwards (it starts where the signal stopped, so there is no step), fading it
//!   out over the frame; further losses are silence, and the first frame after a loss fades
//!   in over 5 ms. The resampler keeps running on this substitute input, so its state and the
//!   output timing stay continuous.

use mixer_protocol::{FRAME_SAMPLES, SAMPLE_RATE};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, ResamplerConstructionError, WindowFunction};

/// One of the sample rates a PCM client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcmRate {
    /// 8000 Hz (telephone band).
    Hz8000,
    /// 16000 Hz (wideband speech).
    Hz16000,
    /// 22050 Hz.
    Hz22050,
    /// 44100 Hz.
    Hz44100,
    /// 48000 Hz, the engine's own rate: no resampling.
    Hz48000,
}

impl PcmRate {
    /// Every supported rate, lowest first.
    pub const ALL: [PcmRate; 5] = [
        PcmRate::Hz8000,
        PcmRate::Hz16000,
        PcmRate::Hz22050,
        PcmRate::Hz44100,
        PcmRate::Hz48000,
    ];

    /// The rate for `hz`, if it is one of the supported ones.
    pub fn from_hz(hz: u32) -> Result<Self, PcmError> {
        Self::ALL
            .into_iter()
            .find(|rate| rate.hz() == hz)
            .ok_or(PcmError::UnsupportedRate(hz))
    }

    /// Samples per second.
    pub fn hz(self) -> u32 {
        match self {
            PcmRate::Hz8000 => 8_000,
            PcmRate::Hz16000 => 16_000,
            PcmRate::Hz22050 => 22_050,
            PcmRate::Hz44100 => 44_100,
            PcmRate::Hz48000 => 48_000,
        }
    }

    /// Samples in one 20 ms frame: `hz / 50`.
    pub fn samples_per_frame(self) -> usize {
        self.hz() as usize / 50
    }

    /// Bytes in one 20 ms frame of `i16` LE samples.
    pub fn frame_bytes(self) -> usize {
        2 * self.samples_per_frame()
    }

    /// FFT sub-blocks per 20 ms frame: 10 ms blocks, except at 22.05 kHz, whose smallest block
    /// common with 48 kHz is 147 : 320 samples (6.7 ms), so a frame holds three.
    fn sub_chunks(self) -> usize {
        match self {
            PcmRate::Hz22050 => 3,
            _ => 2,
        }
    }
}

impl TryFrom<u32> for PcmRate {
    type Error = PcmError;

    fn try_from(hz: u32) -> Result<Self, Self::Error> {
        Self::from_hz(hz)
    }
}

impl std::fmt::Display for PcmRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

/// What can go wrong converting PCM.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum PcmError {
    /// A sample rate other than the five supported ones.
    #[error("unsupported PCM sample rate {0} Hz; expected 8000, 16000, 22050, 44100 or 48000")]
    UnsupportedRate(u32),
    /// A client frame that is not exactly one 20 ms frame of `i16` samples.
    #[error("PCM frame of {actual} bytes at {rate}; expected {expected}")]
    FrameLength {
        /// The client's rate.
        rate: PcmRate,
        /// `2 * samples_per_frame` for that rate.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// rubato refused the resampler's parameters (a bug here: the rates are fixed).
    #[error("cannot build the resampler: {0}")]
    Resampler(#[from] ResamplerConstructionError),
}

/// Length of the fade-in after a loss: 5 ms.
const FADE_IN_DIVISOR: usize = 200;

/// Converts one client's PCM frames to 48 kHz f32 frames for the mix bus.
///
/// Allocation-free after [`PcmUplink::new`].
pub struct PcmUplink {
    rate: PcmRate,
    /// `None` at 48 kHz.
    resampler: Option<Fft<f32>>,
    /// The frame being fed to the resampler, at the client rate.
    input: Vec<f32>,
    /// The last frame fed, at the client rate (the source of a concealed frame).
    last: Vec<f32>,
    /// Whether `last` holds a frame.
    has_last: bool,
    /// Frames concealed since the last decoded one.
    lost: u32,
}

impl std::fmt::Debug for PcmUplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmUplink")
            .field("rate", &self.rate)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl PcmUplink {
    /// A converter for a client at `rate`, with all its buffers allocated.
    pub fn new(rate: PcmRate) -> Result<Self, PcmError> {
        let spf = rate.samples_per_frame();
        let resampler = if rate == PcmRate::Hz48000 {
            None
        } else {
            let resampler = Fft::<f32>::new_custom(
                rate.hz() as usize,
                SAMPLE_RATE as usize,
                spf,
                rate.sub_chunks(),
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )?;
            debug_assert_eq!(resampler.input_frames_next(), spf);
            debug_assert_eq!(resampler.output_frames_next(), FRAME_SAMPLES);
            Some(resampler)
        };
        Ok(PcmUplink {
            rate,
            resampler,
            input: vec![0.0; spf],
            last: vec![0.0; spf],
            has_last: false,
            lost: 0,
        })
    }

    /// The client's rate.
    pub fn rate(&self) -> PcmRate {
        self.rate
    }

    /// Samples (at 48 kHz) by which the output lags the input.
    pub fn delay_48k(&self) -> usize {
        self.resampler.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Converts one client frame (`i16` LE) into `out`, 960 samples at 48 kHz.
    ///
    /// # Errors
    ///
    /// [`PcmError::FrameLength`] unless `frame` is exactly [`PcmRate::frame_bytes`] long; the
    /// converter's state is then unchanged.
    ///
    /// # Panics
    ///
    /// If `out` is not [`FRAME_SAMPLES`] long (a bug in the caller, not bad client input).
    pub fn decode(&mut self, frame: &[u8], out: &mut [f32]) -> Result<(), PcmError> {
        let expected = self.rate.frame_bytes();
        if frame.len() != expected {
            return Err(PcmError::FrameLength {
                rate: self.rate,
                expected,
                actual: frame.len(),
            });
        }
        assert_eq!(out.len(), FRAME_SAMPLES, "an engine frame is 960 samples");
        for (sample, bytes) in self.input.iter_mut().zip(frame.chunks_exact(2)) {
            *sample = f32::from(i16::from_le_bytes([bytes[0], bytes[1]])) / 32_768.0;
        }
        if self.lost > 0 {
            // The input before this frame faded to silence; rise from it rather than jump.
            let len = self.rate.hz() as usize / FADE_IN_DIVISOR;
            for (i, sample) in self.input[..len].iter_mut().enumerate() {
                *sample *= raised_cosine(i, len);
            }
            self.lost = 0;
        }
        self.last.copy_from_slice(&self.input);
        self.has_last = true;
        self.run(out);
        Ok(())
    }

    /// Fills `out` (960 samples at 48 kHz) for a frame that never arrived.
    ///
    /// The first loss after a frame plays that frame backwards, fading out over the frame:
    /// reversed, it starts at the last sample played, so nothing steps. Later losses are
    /// silence. Either way the resampler runs on the substitute, so what was still in its
    /// filter comes out in order and the next frame follows without a gap; that frame fades
    /// in over 5 ms.
    ///
    /// # Panics
    ///
    /// If `out` is not [`FRAME_SAMPLES`] long.
    pub fn conceal(&mut self, out: &mut [f32]) {
        assert_eq!(out.len(), FRAME_SAMPLES, "an engine frame is 960 samples");
        if self.lost == 0 && self.has_last {
            let len = self.input.len();
            for (i, (sample, last)) in self
                .input
                .iter_mut()
                .zip(self.last.iter().rev())
                .enumerate()
            {
                *sample = last * raised_cosine(len - i, len);
            }
        } else {
            self.input.fill(0.0);
        }
        self.lost = self.lost.saturating_add(1);
        self.run(out);
    }

    /// Feeds `self.input` through the resampler (or copies it at 48 kHz) into `out`.
    fn run(&mut self, out: &mut [f32]) {
        match self.resampler.as_mut() {
            None => out.copy_from_slice(&self.input),
            Some(resampler) => resample(resampler, &self.input, out),
        }
    }
}

/// Converts 48 kHz f32 mixes into one client's PCM frames.
///
/// Allocation-free after [`PcmDownlink::new`].
pub struct PcmDownlink {
    rate: PcmRate,
    /// `None` at 48 kHz.
    resampler: Option<Fft<f32>>,
    /// One frame at the client rate.
    resampled: Vec<f32>,
    /// The last rendered frame, `i16` LE.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for PcmDownlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmDownlink")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PcmDownlink {
    /// A converter for a client at `rate`, with all its buffers allocated.
    pub fn new(rate: PcmRate) -> Result<Self, PcmError> {
        let spf = rate.samples_per_frame();
        let resampler = if rate == PcmRate::Hz48000 {
            None
        } else {
            let resampler = Fft::<f32>::new_custom(
                SAMPLE_RATE as usize,
                rate.hz() as usize,
                FRAME_SAMPLES,
                rate.sub_chunks(),
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )?;
            debug_assert_eq!(resampler.input_frames_next(), FRAME_SAMPLES);
            debug_assert_eq!(resampler.output_frames_next(), spf);
            Some(resampler)
        };
        Ok(PcmDownlink {
            rate,
            resampler,
            resampled: vec![0.0; spf],
            bytes: vec![0; 2 * spf],
        })
    }

    /// The client's rate.
    pub fn rate(&self) -> PcmRate {
        self.rate
    }

    /// Samples (at 48 kHz) by which the output lags the input: half the resampler's FFT
    /// block, which is on the 48 kHz side here.
    pub fn delay_48k(&self) -> usize {
        self.resampler.as_ref().map_or(0, |r| r.fft_size_in() / 2)
    }

    /// Converts one 960-sample mix into a client frame of `i16` LE samples (scaled by 32768,
    /// rounded, clamped to the `i16` range). The bytes live until the next call.
    ///
    /// # Panics
    ///
    /// If `frame` is not [`FRAME_SAMPLES`] long (a bug in the caller).
    pub fn render(&mut self, frame: &[f32]) -> &[u8] {
        assert_eq!(frame.len(), FRAME_SAMPLES, "an engine frame is 960 samples");
        match self.resampler.as_mut() {
            None => self.resampled.copy_from_slice(frame),
            Some(resampler) => resample(resampler, frame, &mut self.resampled),
        }
        for (bytes, sample) in self.bytes.chunks_exact_mut(2).zip(&self.resampled) {
            let value = (sample * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16;
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        &self.bytes
    }
}

/// One fixed-size resampler call between preallocated mono buffers.
fn resample(resampler: &mut Fft<f32>, input: &[f32], out: &mut [f32]) {
    let input = InterleavedSlice::new(input, 1, input.len())
        .expect("a mono slice holds as many frames as samples");
    let frames = out.len();
    let mut output = InterleavedSlice::new_mut(out, 1, frames)
        .expect("a mono slice holds as many frames as samples");
    let (_, written) = resampler
        .process_into_buffer(&input, &mut output, None)
        .expect("buffers are sized to the resampler's fixed chunks at construction");
    debug_assert_eq!(written, frames);
}

/// A half raised-cosine rising from 0 at `i = 0` to 1 at `i = len`.
fn raised_cosine(i: usize, len: usize) -> f32 {
    let x = i as f32 / len as f32;
    0.5 - 0.5 * (std::f32::consts::PI * x).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TONE_HZ: f64 = 1_000.0;
    const AMPLITUDE: f64 = 0.5;
    /// The tone's phase at every frame boundary (1 kHz fits 20 ms exactly): mid-wave, so a
    /// frame boundary, a cut or an onset that is not smooth shows up as a step.
    const PHASE: f64 = 1.0;

    /// `frames` consecutive client frames of a continuous tone.
    fn tone_frames(rate: PcmRate, hz: f64, frames: usize) -> Vec<Vec<u8>> {
        let spf = rate.samples_per_frame();
        (0..frames)
            .map(|f| {
                (0..spf)
                    .flat_map(|i| {
                        let n = (f * spf + i) as f64;
                        let t = n / f64::from(rate.hz());
                        let s = AMPLITUDE * (2.0 * std::f64::consts::PI * hz * t + PHASE).sin();
                        ((s * 32_768.0).round() as i16).to_le_bytes()
                    })
                    .collect()
            })
            .collect()
    }

    /// Power of `samples` at `hz` (a single DFT bin; `hz` should fit a whole number of cycles).
    fn power(samples: &[f32], rate: f64, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (n, s) in samples.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * hz * n as f64 / rate;
            re += f64::from(*s) * phase.cos();
            im += f64::from(*s) * phase.sin();
        }
        (re * re + im * im) / (samples.len() as f64).powi(2)
    }

    fn rms(samples: &[f32]) -> f64 {
        let sum: f64 = samples.iter().map(|s| f64::from(*s).powi(2)).sum();
        (sum / samples.len() as f64).sqrt()
    }

    fn max_step(samples: &[f32]) -> f64 {
        samples
            .windows(2)
            .map(|w| f64::from((w[1] - w[0]).abs()))
            .fold(0.0, f64::max)
    }

    /// The largest sample-to-sample step of a clean tone at `rate`.
    fn sine_step(rate: f64) -> f64 {
        2.0 * AMPLITUDE * (std::f64::consts::PI * TONE_HZ / rate).sin()
    }

    /// Asserts `samples` (at `rate`, past any start-up) is a clean 1 kHz tone at [`AMPLITUDE`].
    fn assert_tone(samples: &[f32], rate: f64, what: &str) {
        // A 100 ms window: 1 kHz and every compared frequency fit a whole number of cycles.
        let window = &samples[..(rate / 10.0) as usize];
        let tone = power(window, rate, TONE_HZ);
        for other in [
            100.0, 250.0, 500.0, 750.0, 900.0, 1_100.0, 1_500.0, 2_000.0, 3_000.0,
        ] {
            if other < rate / 2.0 {
                let db = 10.0 * (tone / power(window, rate, other).max(1e-20)).log10();
                assert!(db >= 30.0, "{what}: 1 kHz only {db:.1} dB above {other} Hz");
            }
        }
        let level_db = 20.0 * (rms(samples) / (AMPLITUDE / 2f64.sqrt())).log10();
        assert!(
            level_db.abs() <= 1.0,
            "{what}: level off by {level_db:.2} dB"
        );
        let step = max_step(samples);
        assert!(
            step <= 1.1 * sine_step(rate),
            "{what}: a step of {step:.4} against a clean sine's {:.4}",
            sine_step(rate)
        );
    }

    fn uplink_all(uplink: &mut PcmUplink, frames: &[Vec<u8>]) -> Vec<f32> {
        let mut out = vec![0.0; frames.len() * FRAME_SAMPLES];
        for (frame, chunk) in frames.iter().zip(out.chunks_exact_mut(FRAME_SAMPLES)) {
            uplink.decode(frame, chunk).expect("a whole frame");
        }
        out
    }

    fn downlink_all(downlink: &mut PcmDownlink, samples: &[f32]) -> Vec<f32> {
        samples
            .chunks_exact(FRAME_SAMPLES)
            .flat_map(|frame| {
                downlink
                    .render(frame)
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rates_have_their_frame_sizes() {
        let spf: Vec<usize> = PcmRate::ALL.iter().map(|r| r.samples_per_frame()).collect();
        assert_eq!(spf, [160, 320, 441, 882, 960]);
        for rate in PcmRate::ALL {
            assert_eq!(PcmRate::try_from(rate.hz()), Ok(rate));
            assert_eq!(rate.frame_bytes(), 2 * rate.samples_per_frame());
        }
        assert_eq!(
            PcmRate::from_hz(11_025),
            Err(PcmError::UnsupportedRate(11_025))
        );
    }

    #[test]
    fn uplink_carries_a_1khz_tone_at_every_rate() {
        for rate in PcmRate::ALL {
            let mut uplink = PcmUplink::new(rate).expect("uplink");
            let out = uplink_all(&mut uplink, &tone_frames(rate, TONE_HZ, 50));
            // Past the delay and the tone's onset.
            let steady = &out[uplink.delay_48k() + FRAME_SAMPLES..];
            assert_tone(steady, 48_000.0, &format!("uplink at {rate}"));
        }
    }

    #[test]
    fn downlink_carries_a_1khz_tone_at_every_rate() {
        let mix: Vec<f32> = tone_frames(PcmRate::Hz48000, TONE_HZ, 50)
            .concat()
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
            .collect();
        for rate in PcmRate::ALL {
            let mut downlink = PcmDownlink::new(rate).expect("downlink");
            let out = downlink_all(&mut downlink, &mix);
            let skip = (downlink.delay_48k() + FRAME_SAMPLES) * rate.hz() as usize / 48_000;
            assert_tone(
                &out[skip..],
                f64::from(rate.hz()),
                &format!("downlink at {rate}"),
            );
        }
    }

    #[test]
    fn round_trip_through_48k_keeps_the_tone() {
        let rate = PcmRate::Hz44100;
        let mut uplink = PcmUplink::new(rate).expect("uplink");
        let mut downlink = PcmDownlink::new(rate).expect("downlink");
        let mixed = uplink_all(&mut uplink, &tone_frames(rate, TONE_HZ, 50));
        let out = downlink_all(&mut downlink, &mixed);
        assert_eq!(out.len(), 50 * rate.samples_per_frame());
        let delay = uplink.delay_48k() + downlink.delay_48k();
        let skip = (delay + FRAME_SAMPLES) * 44_100 / 48_000;
        assert_tone(&out[skip..], 44_100.0, "44.1 kHz round trip");
    }

    #[test]
    fn wrong_byte_lengths_are_a_typed_error() {
        let mut out = vec![0.0; FRAME_SAMPLES];
        for rate in PcmRate::ALL {
            let mut uplink = PcmUplink::new(rate).expect("uplink");
            let expected = rate.frame_bytes();
            for actual in [0, 1, expected - 1, expected + 1, expected + 2, 2 * expected] {
                let err = uplink.decode(&vec![0; actual], &mut out);
                assert_eq!(
                    err,
                    Err(PcmError::FrameLength {
                        rate,
                        expected,
                        actual
                    })
                );
            }
            assert_eq!(uplink.decode(&vec![0; expected], &mut out), Ok(()));
        }
    }

    #[test]
    fn pass_through_at_48k_is_bit_exact() {
        let rate = PcmRate::Hz48000;
        let mut uplink = PcmUplink::new(rate).expect("uplink");
        let mut downlink = PcmDownlink::new(rate).expect("downlink");
        assert_eq!((uplink.delay_48k(), downlink.delay_48k()), (0, 0));
        let mut out = vec![0.0; FRAME_SAMPLES];
        for f in 0..20u32 {
            // Every i16 value turns up, the extremes included.
            let frame: Vec<u8> = (0..FRAME_SAMPLES as u32)
                .flat_map(|i| {
                    let v = (f * FRAME_SAMPLES as u32 + i).wrapping_mul(40_503) as u16;
                    let v = if i == 0 {
                        0x8000
                    } else if i == 1 {
                        0x7fff
                    } else {
                        v
                    };
                    v.to_le_bytes()
                })
                .collect();
            uplink.decode(&frame, &mut out).expect("frame");
            assert_eq!(downlink.render(&out), &frame[..]);
        }
    }

    #[test]
    fn downlink_clamps_and_rounds() {
        let mut downlink = PcmDownlink::new(PcmRate::Hz48000).expect("downlink");
        let mut frame = vec![0.0; FRAME_SAMPLES];
        frame[..5].copy_from_slice(&[2.0, -2.0, 1.0, 0.6 / 32_768.0, -0.6 / 32_768.0]);
        let bytes = downlink.render(&frame);
        let values: Vec<i16> = bytes[..10]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(values, [32_767, -32_768, 32_767, 1, -1]);
    }

    #[test]
    fn reported_delays_match_an_impulse() {
        for rate in PcmRate::ALL {
            // Uplink: a click at the start of the second frame.
            let mut uplink = PcmUplink::new(rate).expect("uplink");
            let mut frames = vec![vec![0u8; rate.frame_bytes()]; 4];
            frames[1][..2].copy_from_slice(&16_384i16.to_le_bytes());
            let out = uplink_all(&mut uplink, &frames);
            let peak = argmax(&out) - FRAME_SAMPLES;
            assert!(
                peak.abs_diff(uplink.delay_48k()) <= 1,
                "uplink at {rate}: peak after {peak} samples, reported {}",
                uplink.delay_48k()
            );

            let mut downlink = PcmDownlink::new(rate).expect("downlink");
            let mut mix = vec![0.0; 4 * FRAME_SAMPLES];
            mix[FRAME_SAMPLES] = 0.5;
            let out = downlink_all(&mut downlink, &mix);
            let peak_48k =
                (argmax(&out) - rate.samples_per_frame()) as f64 * 48_000.0 / f64::from(rate.hz());
            assert!(
                (peak_48k - downlink.delay_48k() as f64).abs() <= 48_000.0 / f64::from(rate.hz()),
                "downlink at {rate}: peak after {peak_48k} samples, reported {}",
                downlink.delay_48k()
            );
        }
    }

    fn argmax(samples: &[f32]) -> usize {
        samples
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map_or(0, |(i, _)| i)
    }

    #[test]
    fn concealment_fades_out_and_back_in_without_clicks() {
        for rate in PcmRate::ALL {
            let mut uplink = PcmUplink::new(rate).expect("uplink");
            let frames = tone_frames(rate, TONE_HZ, 60);
            let mut out = vec![0.0; frames.len() * FRAME_SAMPLES];
            for (f, (frame, chunk)) in frames
                .iter()
                .zip(out.chunks_exact_mut(FRAME_SAMPLES))
                .enumerate()
            {
                match f {
                    // One lost frame, then three in a row.
                    20 | 30..=32 => uplink.conceal(chunk),
                    _ => uplink.decode(frame, chunk).expect("frame"),
                }
            }
            let delay = uplink.delay_48k();
            let steady = &out[delay + FRAME_SAMPLES..];
            let step = max_step(steady);
            assert!(
                step <= 1.1 * sine_step(48_000.0),
                "{rate}: a step of {step:.4} across the losses"
            );
            // The second and third of three losses are silence, once the delay has passed.
            let silent = &out[31 * FRAME_SAMPLES + delay..33 * FRAME_SAMPLES + delay];
            assert!(
                rms(silent) < 1e-4,
                "{rate}: {} during a long loss",
                rms(silent)
            );
            // The tone is back at its level a frame after the loss.
            let back = &out[34 * FRAME_SAMPLES + delay..];
            assert_tone(back, 48_000.0, &format!("{rate} after losses"));
        }
    }
}
