//! Test helpers shared by the simulation and end-to-end tests: signal sources, a tone detector,
//! click and onset detection, Opus talkers and listeners, and a seeded network emulator; and a
//! private Redis for the fleet tests (`private_redis`).
#![allow(dead_code, missing_docs)]

pub mod private_redis;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use loadgen::signal;
use mixer_protocol::{AudioFrame, AudioHeader, AudioLevel, FRAME_SAMPLES, Flags, SAMPLE_RATE};

pub const FS: f32 = SAMPLE_RATE as f32;

/// The seeded generator of the shared kit (see `loadgen::rng`).
pub use loadgen::rng::Rng;

/// A continuous-phase sine source that can be switched on and off (bursts) without clicks at
/// the joints, with a 5 ms ramp.
#[derive(Debug, Clone)]
pub struct Tone {
    pub freq: f32,
    pub amp: f32,
    sample: u64,
    gain: f32,
}

impl Tone {
    pub fn new(freq: f32, amp: f32) -> Tone {
        Tone {
            freq,
            amp,
            sample: 0,
            gain: 1.0,
        }
    }

    /// Fills one 20 ms frame; `on` selects tone or silence (ramped).
    pub fn frame(&mut self, on: bool) -> Vec<f32> {
        self.frame_of(on, FRAME_SAMPLES)
    }

    /// Fills one frame of `samples`; `on` selects tone or silence (ramped).
    pub fn frame_of(&mut self, on: bool, samples: usize) -> Vec<f32> {
        let target = if on { 1.0 } else { 0.0 };
        let step = 1.0 / (0.005 * FS);
        (0..samples)
            .map(|_| {
                if self.gain < target {
                    self.gain = (self.gain + step).min(target);
                } else if self.gain > target {
                    self.gain = (self.gain - step).max(target);
                }
                let t = self.sample as f64 / f64::from(SAMPLE_RATE);
                self.sample += 1;
                self.amp
                    * self.gain
                    * (2.0 * std::f64::consts::PI * f64::from(self.freq) * t).sin() as f32
            })
            .collect()
    }
}

/// Amplitude of `freq` in `samples` (Goertzel over a Hann window of the whole slice, from the
/// shared kit), so a full-scale sine reads about 1.0.
pub fn tone_amplitude(samples: &[f32], freq: f32) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    signal::tone_amplitude(samples, &signal::hann(samples.len()), freq)
}

/// Level of `freq` in dB relative to full scale amplitude.
pub fn tone_db(samples: &[f32], freq: f32) -> f32 {
    20.0 * tone_amplitude(samples, freq).max(1e-9).log10()
}

/// Largest sample-to-sample step, for click detection. A sine of amplitude A at f never steps
/// more than 2*pi*f*A/48000; a click (a gap, a discontinuity) shows as a much larger step.
pub fn max_step(samples: &[f32]) -> f32 {
    samples
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

/// The largest step a sum of these tones can make on its own.
pub fn tone_step_bound(tones: &[(f32, f32)]) -> f32 {
    tones
        .iter()
        .map(|(f, a)| 2.0 * std::f32::consts::PI * f * a / FS)
        .sum()
}

/// Sample positions where `freq` rises through `threshold` after at least 100 ms below it (the
/// shared kit's onset detector: 20 ms windows every 5 ms, interpolated).
pub fn onsets(samples: &[f32], freq: f32, threshold: f32) -> Vec<usize> {
    signal::onsets(samples, freq, 2.0 * threshold)
        .into_iter()
        .map(|position| position.round() as usize)
        .collect()
}

/// A client-side talker: tone source, Opus encoder (VOIP with in-band FEC, as a phone would
/// send) and the wire header counters.
pub struct Talker {
    pub tone: Tone,
    pub encoder: opus::Encoder,
    pub sequence: u16,
    pub timestamp: u32,
    pub first: bool,
    /// The level byte to send; `None` measures each frame (`AudioLevel::from_rms`).
    pub level: Option<AudioLevel>,
    /// Samples in each frame it sends.
    pub samples: usize,
    buf: Vec<u8>,
}

impl Talker {
    /// A talker sending frames of `frame` instead of 20 ms. For 10 and 5 ms frames it encodes
    /// as a low-latency client would (Opus's restricted low-delay mode: 2.5 ms of look-ahead
    /// instead of VOIP's 6.5 ms).
    pub fn with_frame(freq: f32, amp: f32, frame: mixer_protocol::FrameSize) -> Talker {
        let mut talker = Talker::new(freq, amp);
        if frame != mixer_protocol::FrameSize::Ms20 {
            talker.encoder = opus::Encoder::new(
                SAMPLE_RATE,
                opus::Channels::Mono,
                opus::Application::LowDelay,
            )
            .expect("encoder");
            talker
                .encoder
                .set_bitrate(opus::Bitrate::Bits(64_000))
                .expect("bitrate");
        }
        Talker {
            samples: frame.samples(),
            ..talker
        }
    }

    pub fn new(freq: f32, amp: f32) -> Talker {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .expect("encoder");
        encoder
            .set_bitrate(opus::Bitrate::Bits(32_000))
            .expect("bitrate");
        encoder.set_inband_fec(true).expect("fec");
        encoder.set_packet_loss_perc(10).expect("loss");
        Talker {
            tone: Tone::new(freq, amp),
            encoder,
            sequence: 0,
            timestamp: 0,
            first: true,
            level: None,
            samples: FRAME_SAMPLES,
            buf: vec![0; 1275],
        }
    }

    /// Encodes the next frame (tone on or off) into a complete wire frame.
    pub fn next_frame(&mut self, on: bool) -> Vec<u8> {
        let pcm = self.tone.frame_of(on, self.samples);
        let len = self
            .encoder
            .encode_float(&pcm, &mut self.buf)
            .expect("encode");
        let header = AudioHeader {
            flags: Flags::default().with_marker(self.first),
            sequence: self.sequence,
            timestamp: self.timestamp,
            level: self.level.unwrap_or_else(|| {
                AudioLevel::from_rms(on, if on { self.tone.amp * 0.707 } else { 0.0 })
            }),
        };
        self.first = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.samples as u32);
        AudioFrame {
            header,
            payload: &self.buf[..len],
        }
        .to_vec()
    }

    /// Skips `frames` frames of media time without sending (DTX / a pause). The encoder keeps
    /// encoding what the microphone hears (the silence), as a DTX encoder does, so the next
    /// packet is coded from the state the receiver's decoder is in after the pause.
    pub fn pause(&mut self, frames: u32) {
        for _ in 0..frames {
            let pcm = self.tone.frame_of(false, self.samples);
            self.encoder
                .encode_float(&pcm, &mut self.buf)
                .expect("encode");
        }
        self.timestamp = self.timestamp.wrapping_add(self.samples as u32 * frames);
    }
}

/// A client-side listener: decodes what the server sends and checks its sequence numbers. A
/// sequence gap that ends in a marked frame is a pause in silence (downlink DTX): it is played
/// as silence, so `pcm` stays aligned with the room's ticks. Any other gap is counted.
pub struct Listener {
    pub decoder: opus::Decoder,
    pub pcm: Vec<f32>,
    pub frames: usize,
    /// Unexplained gaps in the sequence numbers (dropped frames).
    pub sequence_gaps: usize,
    /// Pauses in silence, and the frames they covered.
    pub pauses: usize,
    pub paused_frames: usize,
    /// Samples in each frame the server sends.
    pub samples: usize,
    last_sequence: Option<u16>,
    buf: Vec<f32>,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).expect("decoder"),
            pcm: Vec::new(),
            frames: 0,
            sequence_gaps: 0,
            pauses: 0,
            paused_frames: 0,
            samples: FRAME_SAMPLES,
            last_sequence: None,
            buf: vec![0.0; FRAME_SAMPLES],
        }
    }
}

impl Listener {
    /// A listener of a room whose frames are `frame` long.
    pub fn for_frame(frame: mixer_protocol::FrameSize) -> Listener {
        Listener {
            samples: frame.samples(),
            buf: vec![0.0; frame.samples()],
            ..Listener::default()
        }
    }

    pub fn receive(&mut self, header: AudioHeader, payload: &[u8]) {
        if let Some(last) = self.last_sequence
            && header.sequence != last.wrapping_add(1)
        {
            if header.flags.marker() {
                let missing = usize::from(header.sequence.wrapping_sub(last).wrapping_sub(1));
                self.pauses += 1;
                self.paused_frames += missing;
                self.pcm
                    .resize(self.pcm.len() + missing * self.samples, 0.0);
            } else {
                self.sequence_gaps += 1;
            }
        }
        self.last_sequence = Some(header.sequence);
        let n = self
            .decoder
            .decode_float(payload, &mut self.buf, false)
            .expect("server sent valid Opus");
        assert_eq!(n, self.samples, "server frames are the room's size");
        self.pcm.extend_from_slice(&self.buf);
        self.frames += 1;
    }

    pub fn receive_wire(&mut self, bytes: &[u8]) {
        let frame = AudioFrame::parse(bytes).expect("server frame parses");
        self.receive(frame.header, frame.payload);
    }

    /// Decoded audio between two times since the first frame.
    pub fn window(&self, from: Duration, to: Duration) -> &[f32] {
        let a = ((from.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize).min(self.pcm.len());
        let b = ((to.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize).min(self.pcm.len());
        &self.pcm[a..b]
    }
}

/// Network conditions for one direction of one client.
#[derive(Debug, Clone)]
pub struct NetemConfig {
    pub latency: Duration,
    /// Extra delay, uniform in [0, jitter].
    pub jitter: Duration,
    pub loss: f64,
    /// A head-of-line stall like a TCP retransmission: packets sent in [from, to) are all
    /// delivered together at `to` (plus latency).
    pub stall: Option<(Duration, Duration)>,
    /// Probability that a loss continues to the next packet (burst loss, Gilbert-style).
    pub burst: f64,
    pub duplicate: f64,
}

impl Default for NetemConfig {
    fn default() -> Self {
        NetemConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            stall: None,
            burst: 0.0,
            duplicate: 0.0,
        }
    }
}

/// A seeded network emulator: packets go in with a send time and come out in arrival order.
pub struct Netem {
    pub config: NetemConfig,
    rng: Rng,
    in_loss_burst: bool,
    queue: BinaryHeap<Reverse<(Duration, u64, Vec<u8>)>>,
    counter: u64,
    pub sent: u64,
    pub lost: u64,
}

impl Netem {
    pub fn new(config: NetemConfig, seed: u64) -> Netem {
        Netem {
            config,
            rng: Rng::from_seed(seed),
            in_loss_burst: false,
            queue: BinaryHeap::new(),
            counter: 0,
            sent: 0,
            lost: 0,
        }
    }

    pub fn send(&mut self, at: Duration, packet: Vec<u8>) {
        self.sent += 1;
        let lose = if self.in_loss_burst {
            self.rng.chance(self.config.burst)
        } else {
            self.rng.chance(self.config.loss)
        };
        self.in_loss_burst = lose;
        if lose {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = self.config.jitter.mul_f64(self.rng.unit());
            let mut arrival = at + self.config.latency + jitter;
            if let Some((from, to)) = self.config.stall
                && at >= from
                && at < to
            {
                arrival = arrival.max(to + self.config.latency);
            }
            self.counter += 1;
            self.queue
                .push(Reverse((arrival, self.counter, packet.clone())));
        }
    }

    /// The next packet that has arrived by `now`.
    pub fn poll(&mut self, now: Duration) -> Option<(Duration, Vec<u8>)> {
        if self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            self.queue.pop().map(|Reverse((at, _, p))| (at, p))
        } else {
            None
        }
    }

    /// When the next packet arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// A client that cannot run Opus: sends a tone as 16-bit PCM frames at its own sample rate.
pub struct PcmTalker {
    pub rate: u32,
    pub freq: f32,
    pub amp: f32,
    sample: u64,
    sequence: u16,
}

impl PcmTalker {
    pub fn new(rate: u32, freq: f32, amp: f32) -> PcmTalker {
        PcmTalker {
            rate,
            freq,
            amp,
            sample: 0,
            sequence: 0,
        }
    }

    /// The next 20 ms as a complete wire frame (header + little-endian i16 samples).
    pub fn next_frame(&mut self) -> Vec<u8> {
        let n = self.rate as usize / 50;
        let header = AudioHeader {
            flags: Flags::default().with_marker(self.sequence == 0),
            sequence: self.sequence,
            timestamp: u32::from(self.sequence).wrapping_mul(FRAME_SAMPLES as u32),
            level: AudioLevel::from_rms(true, self.amp * 0.707),
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut payload = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let t = self.sample as f64 / f64::from(self.rate);
            self.sample += 1;
            let x =
                f64::from(self.amp) * (2.0 * std::f64::consts::PI * f64::from(self.freq) * t).sin();
            payload.extend_from_slice(&((x * 32767.0).round() as i16).to_le_bytes());
        }
        AudioFrame {
            header,
            payload: &payload,
        }
        .to_vec()
    }
}

/// Decodes a PCM payload (16-bit little-endian) to samples in -1..1.
pub fn pcm_samples(payload: &[u8]) -> Vec<f32> {
    payload
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// [`tone_db`] for samples at another rate: a tone at `freq` in `rate` samples reads like one
/// at `freq * 48000 / rate` to the 48 kHz analysis.
pub fn tone_db_at(samples: &[f32], freq: f32, rate: u32) -> f32 {
    tone_db(samples, freq * SAMPLE_RATE as f32 / rate as f32)
}

/// Runs a four-tone mix (the shape of a busy room) through an encoder setting and returns the
/// worst level, relative to the weakest tone, of eight frequencies absent from the mix: the
/// codec's noise floor where a listener's own voice would be, i.e. the mix-minus isolation the
/// codec allows. Also returns the mean packet size.
pub fn isolation_db(settings: mixer::engine::codec::EncoderSettings) -> (f32, f32) {
    let tones = [
        (400.0f32, 0.2f32),
        (650.0, 0.2),
        (1000.0, 0.2),
        (1500.0, 0.2),
    ];
    let absent = [
        300.0f32, 530.0, 820.0, 1250.0, 1800.0, 2300.0, 3100.0, 4400.0,
    ];
    let mut sources: Vec<Tone> = tones.iter().map(|(f, a)| Tone::new(*f, *a)).collect();
    let mut encoder = settings.build().expect("encoder");
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let (mut packet, mut out) = (vec![0u8; 1275], vec![0f32; 960]);
    let (mut decoded, mut bytes) = (Vec::new(), 0usize);
    for _ in 0..150 {
        let mut frame = vec![0f32; 960];
        for source in &mut sources {
            for (x, s) in frame.iter_mut().zip(source.frame(true)) {
                *x += s;
            }
        }
        let n = encoder.encode_float(&frame, &mut packet).expect("encode");
        bytes += n;
        decoder
            .decode_float(&packet[..n], &mut out, false)
            .expect("decode");
        decoded.extend_from_slice(&out);
    }
    let window = &decoded[48_000..];
    let weakest = tones
        .iter()
        .map(|(f, _)| tone_db(window, *f))
        .fold(f32::MAX, f32::min);
    let noise = absent
        .iter()
        .map(|f| tone_db(window, *f))
        .fold(f32::MIN, f32::max);
    (weakest - noise, bytes as f32 / 150.0)
}

/// Frequencies for `n` tone talkers in a dense room: 310 Hz upwards in steps of 17 %, half a
/// hertz off the grid. Not evenly spaced, so the products of two tones (`2 * f1 - f2`, which a
/// limiter's gain changes create) do not land on a third talker's frequency.
pub fn dense_freqs(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (310.0 * 1.17f32.powi(i as i32)).round() + 0.5)
        .collect()
}

/// How far below the others a talker's own frequency is in what it hears, in dB: the weakest
/// of `others` minus `own`. Its own voice is removed exactly from its mix, so what is left at
/// its frequency is the codec's noise.
pub fn own_voice_db(heard: &[f32], own: f32, others: &[f32]) -> f32 {
    let weakest = others
        .iter()
        .map(|f| tone_db(heard, *f))
        .fold(f32::MAX, f32::min);
    weakest - tone_db(heard, own)
}
