//! What talkers send: a tone per talker from a frequency grid, shaped into 1 s bursts and
//! Opus-encoded once up front, or a WAV file; and the tone analysis receivers use to check it.
//!
//! The grid is 300 Hz + 23 Hz × i for i in 0..140 (300 to 3497 Hz, inside Opus's wideband
//! range). With `S = 140 / talkers`, talker `t` of room `r` gets grid index
//! `offset(r) + t × S (mod 140)`: the talkers of one room are spread over the band (≥ 100 Hz
//! apart for up to 32 talkers a room), and the rooms are spread evenly over one stride
//! (`offset(r) = r × S / rooms`) while `rooms ≤ S`, else one grid step apart. With more than 140
//! talkers in total, tones repeat across rooms (wrap-around); the leak check only uses other
//! rooms' tones at least [`LEAK_SEPARATION_HZ`] from every tone the receiver expects, so
//! repeated tones are never mistaken for leaks, and leaks between rooms sharing (or nearly
//! sharing) tones go unseen.
//!
//! One period of the signal is 1 s: the tone for 700 ms with 20 ms raised-cosine ramps (smooth enough
//! that a tone's on/off transitions stay 60 dB down 100 Hz away), then
//! 300 ms of silence, so an onset to time every second even in continuous mode. Amplitude 0.2
//! (-14 dBFS peak) lets 3 talkers sum without touching the mixer's -3 dBFS limiter; beyond that
//! the limiter works but the tones stay separable.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use mixer_protocol::{AudioLevel, FRAME_SAMPLES, SAMPLE_RATE};

/// Tones in the grid.
pub const GRID_TONES: usize = 140;
/// Lowest grid tone, Hz.
pub const GRID_BASE_HZ: f32 = 300.0;
/// Grid step, Hz.
pub const GRID_STEP_HZ: f32 = 23.0;
/// Tones closer than this cannot be told apart reliably next to 1 s bursts (their envelope's
/// sidebands), so the own-voice check skips such pairs.
pub const MIN_SEPARATION_HZ: f32 = 100.0;
/// The leak check only uses other rooms' tones at least this far from every tone the receiver
/// expects: Opus shapes its coding noise around strong tones, so closer to them a clean mix can
/// read less than 40 dB down.
pub const LEAK_SEPARATION_HZ: f32 = 300.0;
/// Peak amplitude of each talker's tone.
pub const TONE_AMPLITUDE: f32 = 0.2;
/// Frames in one signal period (1 s).
pub const PERIOD_FRAMES: usize = 50;
/// Samples in one period.
pub const PERIOD_SAMPLES: usize = PERIOD_FRAMES * FRAME_SAMPLES;
/// Tone-on part of the period.
const ON_SAMPLES: usize = 33_600;
/// Seconds the tone sounds from each onset (the rest of the 1 s period is digital silence).
pub const TONE_ON_SECS: f64 = ON_SAMPLES as f64 / SAMPLE_RATE as f64;
/// Length of each raised-cosine ramp.
const RAMP_SAMPLES: usize = 960;

/// Frequency of talker `talker` of room `room` when `rooms` rooms have `talkers` talkers each.
pub fn tone_for(room: usize, talker: usize, talkers: usize, rooms: usize) -> f32 {
    let stride = (GRID_TONES / talkers.max(1)).max(1);
    // Spread the rooms evenly over one stride while they fit, so rooms sit far apart in
    // frequency (good leak checks); beyond that, neighbouring rooms are one grid step apart.
    let offset = if rooms <= stride {
        room * stride / rooms.max(1)
    } else {
        room % stride
    };
    let index = (offset + talker * stride) % GRID_TONES;
    GRID_BASE_HZ + GRID_STEP_HZ * index as f32
}

/// A talker's pre-encoded audio: packets sent in a loop.
#[derive(Debug)]
pub struct Source {
    /// Opus packets, 20 ms each.
    pub packets: Vec<Bytes>,
    /// The level byte of each packet.
    pub levels: Vec<AudioLevel>,
    /// The tone, if this is a tone source (then `packets.len() == PERIOD_FRAMES` and the tone
    /// starts at the first sample of packet 0).
    pub freq: Option<f32>,
    /// Where [`onsets`] finds an onset relative to where the ramp starts, in samples.
    pub onset_bias: f64,
}

/// Why a signal could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The WAV file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The WAV file is not 16-bit PCM mono 48 kHz, or is malformed.
    #[error("{path}: {problem} (need a RIFF WAVE file of 16-bit PCM, mono, 48000 Hz)")]
    Wav {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The Opus encoder failed.
    #[error("opus encoder: {0}")]
    Opus(#[from] opus::Error),
}

/// One period of the tone signal for `freq`, as samples.
pub fn tone_period(freq: f32) -> Vec<f32> {
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(SAMPLE_RATE);
    (0..PERIOD_SAMPLES)
        .map(|n| {
            let gain = if n >= ON_SAMPLES {
                0.0
            } else if n < RAMP_SAMPLES {
                raised_cosine(n)
            } else if n >= ON_SAMPLES - RAMP_SAMPLES {
                raised_cosine(ON_SAMPLES - 1 - n)
            } else {
                1.0
            };
            (f64::from(TONE_AMPLITUDE) * gain * (w * n as f64).sin()) as f32
        })
        .collect()
}

fn raised_cosine(n: usize) -> f64 {
    0.5 - 0.5 * (std::f64::consts::PI * n as f64 / RAMP_SAMPLES as f64).cos()
}

fn encoder() -> Result<opus::Encoder, SignalError> {
    let mut encoder =
        opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
    encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
    Ok(encoder)
}

fn level_of(frame: &[f32]) -> AudioLevel {
    let rms = (frame.iter().map(|x| x * x).sum::<f32>() / frame.len() as f32).sqrt();
    AudioLevel::from_rms(rms > 1e-4, rms)
}

/// Encodes `pcm` (a whole number of frames) into packets. With `warm`, the signal is encoded
/// twice and the second pass kept, so the encoder state at the loop point matches its start.
fn encode(pcm: &[f32], warm: bool) -> Result<(Vec<Bytes>, Vec<AudioLevel>), SignalError> {
    let mut encoder = encoder()?;
    let mut buf = vec![0u8; mixer_protocol::MAX_OPUS_PACKET];
    if warm {
        for frame in pcm.chunks_exact(FRAME_SAMPLES) {
            encoder.encode_float(frame, &mut buf)?;
        }
    }
    let mut packets = Vec::new();
    let mut levels = Vec::new();
    for frame in pcm.chunks_exact(FRAME_SAMPLES) {
        let len = encoder.encode_float(frame, &mut buf)?;
        packets.push(Bytes::copy_from_slice(&buf[..len]));
        levels.push(level_of(frame));
    }
    Ok((packets, levels))
}

/// `pcm` at `from` Hz resampled to `to` Hz by linear interpolation, as a loop (the last input
/// sample interpolates towards the first). Good enough for the tone grid (at most 3.5 kHz, under
/// every PCM rate's Nyquist frequency) and cheap: done once per source, and once per verified
/// PCM receiver after the run.
pub fn resample_linear(pcm: &[f32], from: u32, to: u32) -> Vec<f32> {
    if pcm.is_empty() || from == to {
        return pcm.to_vec();
    }
    let len = (pcm.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..len)
        .map(|n| {
            let x = n as f64 * step;
            let i = x.floor() as usize;
            let frac = (x - i as f64) as f32;
            let a = pcm[i % pcm.len()];
            let b = pcm[(i + 1) % pcm.len()];
            a + (b - a) * frac
        })
        .collect()
}

/// 16-bit little-endian samples of `pcm` (clamped to full scale).
pub fn to_pcm16(pcm: &[f32]) -> Vec<u8> {
    pcm.iter()
        .flat_map(|x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect()
}

/// The tone source for `freq` as a PCM client at `rate` sends it: the same period, resampled,
/// 20 ms of 16-bit samples a packet, with the same levels and onset calibration as the Opus
/// source (the onset is judged after the receiver's audio is brought back to 48 kHz).
pub fn pcm_tone_source(freq: f32, rate: u32) -> Result<Source, SignalError> {
    let opus = tone_source(freq)?;
    let period = resample_linear(&tone_period(freq), SAMPLE_RATE, rate);
    let frame = (rate / 50) as usize;
    Ok(Source {
        packets: period
            .chunks_exact(frame)
            .map(|chunk| Bytes::from(to_pcm16(chunk)))
            .collect(),
        ..opus
    })
}

/// Pre-encodes the tone source for `freq`.
pub fn tone_source(freq: f32) -> Result<Source, SignalError> {
    let period = tone_period(freq);
    let (packets, levels) = encode(&period, true)?;
    // Calibrate the onset detector on the clean signal: where it sees the onset relative to
    // the start of the ramp, found in the second of two periods so the window sees silence first.
    let twice: Vec<f32> = period.iter().chain(period.iter()).copied().collect();
    let found = onsets(&twice, freq, TONE_AMPLITUDE);
    let onset_bias = found
        .iter()
        .find(|&&at| at > PERIOD_SAMPLES as f64 / 2.0)
        .map_or(0.0, |at| at - PERIOD_SAMPLES as f64);
    Ok(Source {
        packets,
        levels,
        freq: Some(freq),
        onset_bias,
    })
}

/// Reads a WAV file (16-bit PCM, mono, 48 kHz) and pre-encodes it.
pub fn wav_source(path: &Path) -> Result<Source, SignalError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SignalError::Read {
        path: name.clone(),
        source,
    })?;
    let mut pcm = parse_wav(&bytes).map_err(|problem| SignalError::Wav {
        path: name.clone(),
        problem,
    })?;
    if pcm.is_empty() {
        return Err(SignalError::Wav {
            path: name,
            problem: "no samples".into(),
        });
    }
    pcm.resize(pcm.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES, 0.0);
    let (packets, levels) = encode(&pcm, false)?;
    Ok(Source {
        packets,
        levels,
        freq: None,
        onset_bias: 0.0,
    })
}

/// Samples of a 16-bit PCM mono 48 kHz WAV file, scaled to ±1.
pub fn parse_wav(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF WAVE file".into());
    }
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = bytes
            .get(at + 8..(at + 8).saturating_add(len).min(bytes.len()))
            .unwrap_or_default();
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err("short fmt chunk".into());
                }
                let tag = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let bits = u16::from_le_bytes([body[14], body[15]]);
                if tag != 1 && tag != 0xFFFE {
                    return Err(format!("format tag {tag} is not PCM"));
                }
                if channels != 1 || rate != SAMPLE_RATE || bits != 16 {
                    return Err(format!("{channels} channel(s), {rate} Hz, {bits}-bit"));
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err("data chunk before fmt chunk".into());
                }
                return Ok(body
                    .chunks_exact(2)
                    .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                    .collect());
            }
            _ => {}
        }
        at += 8 + len + (len & 1);
    }
    Err("no data chunk".into())
}

/// A speech-like test signal of `frames` 20 ms frames peaking at `peak`: a harmonic series on a
/// gliding fundamental, shaped by a 4 Hz syllable envelope, plus a little noise. `voice` picks
/// the fundamental so talkers differ. The workspace's one synthetic voice: the mixer's
/// benchmarks and capacity example use it, so their numbers describe the same signal.
pub fn speech_like(voice: usize, frames: usize, peak: f32) -> Vec<f32> {
    let rate = SAMPLE_RATE as f32;
    let f0_base = 100.0 + 23.0 * (voice % 8) as f32;
    let mut noise_state = 0x9e37_79b9_u32.wrapping_add(voice as u32);
    let mut phase = 0.0f32;
    let mut samples = Vec::with_capacity(frames * FRAME_SAMPLES);
    for n in 0..frames * FRAME_SAMPLES {
        let t = n as f32 / rate;
        let f0 = f0_base * (1.0 + 0.08 * (2.0 * std::f32::consts::PI * 0.7 * t).sin());
        phase = (phase + f0 / rate).fract();
        let mut s = 0.0;
        for k in 1..=12 {
            // Harmonics fall off like a voiced glottal source, with a bump near 700 Hz.
            let freq = f0 * k as f32;
            let formant = 1.0 + 2.0 * (-((freq - 700.0) / 300.0).powi(2)).exp();
            s += formant / k as f32 * (2.0 * std::f32::consts::PI * phase * k as f32).sin();
        }
        let envelope = 0.55 + 0.45 * (2.0 * std::f32::consts::PI * 4.0 * t + voice as f32).sin();
        noise_state = noise_state
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let noise = (noise_state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        samples.push(envelope * s + 0.05 * noise);
    }
    let max = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    for s in &mut samples {
        *s *= peak / max;
    }
    samples
}

/// A Hann window of `n` points.
pub fn hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = 2.0 * std::f64::consts::PI * i as f64 / (n - 1).max(1) as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect()
}

/// Amplitude of `freq` in `samples` weighted by `window` (same length), so a sine of amplitude
/// A reads about A (Goertzel).
pub fn tone_amplitude(samples: &[f32], window: &[f32], freq: f32) -> f32 {
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut window_sum = 0.0f64;
    for (&x, &h) in samples.iter().zip(window) {
        window_sum += f64::from(h);
        let s0 = f64::from(x * h) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if window_sum <= 0.0 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    (2.0 * power.max(0.0).sqrt() / window_sum) as f32
}

/// Amplitude in dBFS (of a full-scale sine's amplitude).
pub fn db(amplitude: f32) -> f64 {
    20.0 * f64::from(amplitude.max(1e-7)).log10()
}

/// Long-window level of `freq`: the largest amplitude over 200 ms Hann blocks (100 ms hop).
/// Long blocks resolve tones [`MIN_SEPARATION_HZ`] apart by far more than 40 dB; the maximum
/// catches a talker heard only part of the time.
pub fn peak_level(samples: &[f32], window: &[f32], freq: f32) -> f32 {
    let len = window.len();
    let hop = len / 2;
    let mut best = 0.0f32;
    let mut at = 0;
    while at + len <= samples.len() {
        best = best.max(tone_amplitude(&samples[at..at + len], window, freq));
        at += hop;
    }
    best
}

/// Length of [`peak_level`]'s blocks.
pub const LEVEL_BLOCK: usize = 9_600;
/// An onset counts only after 100 ms of quiet, so a dip from a lost packet (concealment) and
/// the recovery after it are not mistaken for a talker starting.
const MIN_QUIET_HOPS: usize = 20;
/// Length of the onset detector's window (20 ms) and its hop (5 ms).
const ONSET_WINDOW: usize = 960;
const ONSET_HOP: usize = 240;

/// Positions (in samples, fractional) where `freq` rises through half of `level`, from 20 ms
/// Hann windows every 5 ms, interpolated between windows. A symmetric window centred on the
/// position makes the crossing an unbiased estimate of the ramp's middle; [`Source::onset_bias`]
/// calibrates the rest.
pub fn onsets(samples: &[f32], freq: f32, level: f32) -> Vec<f64> {
    let window = hann(ONSET_WINDOW);
    let (on, off) = (0.5 * level, 0.25 * level);
    let mut out = Vec::new();
    let mut state_on = true; // a tone already present at the start is not an onset
    let mut quiet_hops = 0usize;
    let mut previous: Option<(f64, f32)> = None;
    let mut at = 0;
    while at + ONSET_WINDOW <= samples.len() {
        let amplitude = tone_amplitude(&samples[at..at + ONSET_WINDOW], &window, freq);
        let centre = (at + ONSET_WINDOW / 2) as f64;
        // Hops since the tone was last at half level.
        let quiet_before = quiet_hops;
        quiet_hops = if amplitude >= on { 0 } else { quiet_hops + 1 };
        if state_on {
            if amplitude < off {
                state_on = false;
            }
        } else if amplitude >= on && quiet_before < MIN_QUIET_HOPS {
            state_on = true; // back after a short dip: not an onset
        } else if amplitude >= on {
            state_on = true;
            let position = match previous {
                Some((p_centre, p_amp)) if amplitude > p_amp => {
                    p_centre + (centre - p_centre) * f64::from((on - p_amp) / (amplitude - p_amp))
                }
                _ => centre,
            };
            out.push(position);
        }
        previous = Some((centre, amplitude));
        at += ONSET_HOP;
    }
    out
}

/// Builds the sources for a run: one per distinct tone, shared by `Arc`.
pub fn tone_sources(freqs: &[f32]) -> Result<Vec<(f32, Arc<Source>)>, SignalError> {
    tone_sources_for(freqs, None)
}

/// [`tone_sources`] for clients that send Opus (`pcm_rate` `None`) or 16-bit PCM at a rate.
pub fn tone_sources_for(
    freqs: &[f32],
    pcm_rate: Option<u32>,
) -> Result<Vec<(f32, Arc<Source>)>, SignalError> {
    let mut out: Vec<(f32, Arc<Source>)> = Vec::new();
    for &f in freqs {
        if !out.iter().any(|(g, _)| *g == f) {
            let source = match pcm_rate {
                None => tone_source(f)?,
                Some(rate) => pcm_tone_source(f, rate)?,
            };
            out.push((f, Arc::new(source)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_tones_are_spread_and_unique_until_the_grid_wraps() {
        for (rooms, talkers) in [(2, 2), (16, 2), (35, 4), (140, 1)] {
            let mut all = Vec::new();
            for room in 0..rooms {
                let tones: Vec<f32> = (0..talkers)
                    .map(|t| tone_for(room, t, talkers, rooms))
                    .collect();
                for a in &tones {
                    for b in &tones {
                        assert!(a == b || (a - b).abs() >= MIN_SEPARATION_HZ);
                    }
                    assert!((GRID_BASE_HZ..3500.0).contains(a));
                }
                all.extend(tones);
            }
            let mut unique = all.clone();
            unique.sort_by(f32::total_cmp);
            unique.dedup();
            assert_eq!(unique.len(), all.len(), "{rooms} rooms x {talkers} talkers");
        }
        // Two rooms of two talkers: the rooms are half a stride (805 Hz) apart.
        assert_eq!(
            tone_for(1, 0, 2, 2) - tone_for(0, 0, 2, 2),
            35.0 * GRID_STEP_HZ
        );
        // 36 rooms of 4 talkers need 144 tones: the grid wraps and room 35 repeats room 0.
        assert_eq!(tone_for(35, 0, 4, 36), tone_for(0, 0, 4, 36));
    }

    #[test]
    fn goertzel_reads_amplitude_and_separates_neighbours() {
        let period = tone_period(1000.0);
        let window = hann(LEVEL_BLOCK);
        let block = &period[4_800..4_800 + LEVEL_BLOCK];
        assert!((tone_amplitude(block, &window, 1000.0) - TONE_AMPLITUDE).abs() < 0.005);
        let neighbour = db(peak_level(&period, &window, 1000.0 + MIN_SEPARATION_HZ));
        assert!(neighbour < -70.0, "{neighbour}");
    }

    #[test]
    fn onset_detector_finds_each_period_with_a_small_fixed_bias() {
        let source = tone_source(700.0).expect("encodes");
        assert_eq!(source.packets.len(), PERIOD_FRAMES);
        assert!(source.onset_bias.abs() < 960.0, "{}", source.onset_bias);
        let three: Vec<f32> = (0..3).flat_map(|_| tone_period(700.0)).collect();
        let found = onsets(&three, 700.0, TONE_AMPLITUDE);
        assert_eq!(found.len(), 2, "{found:?}"); // the first period starts at sample 0
        for (k, at) in found.iter().enumerate() {
            let expected = ((k + 1) * PERIOD_SAMPLES) as f64 + source.onset_bias;
            assert!((at - expected).abs() < 1.0, "{at} vs {expected}");
        }
    }

    #[test]
    fn wav_parsing_accepts_pcm16_mono_48k_and_names_what_is_wrong() {
        let wav = |channels: u16, rate: u32| {
            let mut b = Vec::new();
            b.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
            b.extend_from_slice(&16u32.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&channels.to_le_bytes());
            b.extend_from_slice(&rate.to_le_bytes());
            b.extend_from_slice(&(rate * 2).to_le_bytes());
            b.extend_from_slice(&2u16.to_le_bytes());
            b.extend_from_slice(&16u16.to_le_bytes());
            b.extend_from_slice(b"data");
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&16384i16.to_le_bytes());
            b.extend_from_slice(&(-32768i16).to_le_bytes());
            b
        };
        assert_eq!(parse_wav(&wav(1, 48_000)), Ok(vec![0.5, -1.0]));
        let err = parse_wav(&wav(2, 44_100)).expect_err("stereo 44.1k");
        assert!(err.contains("2 channel(s), 44100 Hz"), "{err}");
        assert!(parse_wav(b"not a wav").is_err());
    }
}
