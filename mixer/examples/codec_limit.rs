//! The codec-bound limit: how many participants one core could serve if every participant needed
//! one Opus decode and one Opus encode per 20 ms tick, and nothing else.
//!
//! It times libopus directly, with the mixer's own settings: the decoder is
//! [`codec::decoder`], fed packets encoded the way a client would (VOIP, 32 kb/s, complexity 9,
//! like `benches/tick.rs`) from a speech-like signal; the encoder is built by
//! [`EncoderSettings::build`] (the server's default unless overridden) and fed a mix of three
//! such voices. Silence would be cheaper on both sides, so there is none. Each round times
//! `--iterations` decodes and as many encodes; the figures are the medians over `--rounds`.
//!
//! ```sh
//! cargo run --release -p mixer --example codec_limit
//! cargo run --release -p mixer --example codec_limit -- --application voip --bitrate 32000 \
//!     --complexity 9 --json
//! ```
//!
//! The limit ignores mixing, limiting, jitter buffers and all I/O, so a real server holds less;
//! it is the ceiling the README's capacity table compares against.
//!
//! By default one decoder and one encoder are timed over and over, so their state stays in the
//! CPU's caches, and the mix is three voices. A server with a room of 120 talkers cycles through
//! 120 decoders and 120 encoders every tick and encodes mixes of 119 voices. `--states N` cycles
//! through N decoders and N encoders (one decode and one encode each per round of N), and
//! `--voices V` mixes V voices (scaled to the same peak, as the server's limiter would), so the
//! codec's own cost at a room's scale can be told apart from the server's overhead.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use mixer::engine::codec::{self, EncoderSettings, OpusApplication};
use mixer::engine::mix::accumulate;
use mixer_protocol::{FRAME_MS, FRAME_SAMPLES, MAX_OPUS_PACKET};

/// Frames of audio prepared per voice (2 s); the timed loops cycle through them.
const CLIP_FRAMES: usize = 100;

/// How a client encodes its uplink (as in `benches/tick.rs`).
const CLIENT_ENCODER: EncoderSettings = EncoderSettings {
    application: OpusApplication::Voip,
    bitrate: 32_000,
    complexity: 9,
};

/// What to measure, from the command line.
#[derive(Debug)]
struct Options {
    /// The server's encoder settings for the mixes.
    encoder: EncoderSettings,
    /// Timed rounds; the median is reported.
    rounds: usize,
    /// Decodes (and encodes) per round.
    iterations: usize,
    /// Decoder and encoder states cycled through (1: one of each, always in cache).
    states: usize,
    /// Voices summed into the encoded mix.
    voices: usize,
    /// Print one JSON line instead of the human summary.
    json: bool,
}

const USAGE: &str = "usage: codec_limit [--application voip|audio|lowdelay] [--bitrate N] \
[--complexity N] [--rounds N] [--iterations N] [--states N] [--voices N] [--json]

Times one Opus decode (client uplink: VOIP 32 kb/s) and one encode (the server's mix settings;
default: the mixer's defaults) of a 20 ms frame, and prints participants per core =
20 ms / (decode + encode). --states N cycles through N decoders and N encoders (default 1);
--voices V encodes mixes of V voices (default 3).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codec_limit: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses the arguments, measures and prints.
fn run() -> anyhow::Result<()> {
    let Some(options) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    options
        .encoder
        .validate()
        .context("checking the encoder settings")?;

    let packets = client_packets()?;
    let mix = voice_mix(options.voices);
    let mut decoders = (0..options.states)
        .map(|_| codec::decoder().context("building a decoder"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut encoders = (0..options.states)
        .map(|_| options.encoder.build().context("building a mix encoder"))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // One untimed round warms the CPU's clock and every codec's state.
    time_round(
        &mut decoders,
        &mut encoders,
        &packets,
        &mix,
        CLIP_FRAMES.max(options.states),
    )?;
    let mut decode_us = Vec::with_capacity(options.rounds);
    let mut encode_us = Vec::with_capacity(options.rounds);
    for _ in 0..options.rounds {
        let (decode, encode) = time_round(
            &mut decoders,
            &mut encoders,
            &packets,
            &mix,
            options.iterations,
        )?;
        decode_us.push(decode);
        encode_us.push(encode);
    }
    let decode = median(&mut decode_us);
    let encode = median(&mut encode_us);
    let per_core = (f64::from(FRAME_MS) * 1_000.0 / (decode + encode)).floor();

    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "decode_us": round2(decode),
                "encode_us": round2(encode),
                "per_core": per_core as u64,
                "application": options.encoder.application.to_string(),
                "bitrate": options.encoder.bitrate,
                "complexity": options.encoder.complexity,
                "states": options.states,
                "voices": options.voices,
            })
        );
    } else {
        let EncoderSettings {
            application,
            bitrate,
            complexity,
        } = options.encoder;
        println!(
            "codec-bound limit, median of {} rounds of {} frames each, {} decoder and encoder \
             state(s), mixes of {} voices",
            options.rounds, options.iterations, options.states, options.voices
        );
        println!(
            "decode  {decode:7.1} µs  client uplink: {} {} b/s complexity {}",
            CLIENT_ENCODER.application, CLIENT_ENCODER.bitrate, CLIENT_ENCODER.complexity
        );
        println!(
            "encode  {encode:7.1} µs  server mix: {application} {bitrate} b/s complexity {complexity}"
        );
        println!(
            "participants per core = {FRAME_MS} ms / ({decode:.1} + {encode:.1} µs) = {per_core}"
        );
    }
    Ok(())
}

/// Parses the arguments; `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        encoder: EncoderSettings::default(),
        rounds: 7,
        iterations: 2_000,
        states: 1,
        voices: 3,
        json: false,
    };
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--application" => {
                options.encoder.application = value()?.parse().context("--application")?;
            }
            "--bitrate" => {
                options.encoder.bitrate =
                    value()?.parse().context("--bitrate (bits per second)")?;
            }
            "--complexity" => {
                options.encoder.complexity = value()?.parse().context("--complexity (0 to 10)")?;
            }
            "--rounds" => options.rounds = positive(&value()?, "--rounds")?,
            "--iterations" => options.iterations = positive(&value()?, "--iterations")?,
            "--states" => options.states = positive(&value()?, "--states")?,
            "--voices" => options.voices = positive(&value()?, "--voices")?,
            "--json" => options.json = true,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(options))
}

/// Parses a count that must be at least 1.
fn positive(text: &str, flag: &str) -> anyhow::Result<usize> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} must be a positive integer (got {text:?})"),
    }
}

/// Times `iterations` decodes, then as many encodes, each taking the next of the states in
/// turn; returns the mean µs of each.
///
/// The only place this program reads the clock.
fn time_round(
    decoders: &mut [opus::Decoder],
    encoders: &mut [opus::Encoder],
    packets: &[Vec<u8>],
    mix: &[f32],
    iterations: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut pcm = vec![0.0f32; FRAME_SAMPLES];
    let mut out = vec![0u8; MAX_OPUS_PACKET];

    let start = Instant::now();
    // Packet i goes to decoder i % states, so each decoder still sees a continuous stream
    // when the clip's length is a multiple of the states, and a plausible one otherwise.
    for (i, packet) in packets.iter().cycle().take(iterations).enumerate() {
        let n = decoders[i % decoders.len()]
            .decode_float(black_box(packet), &mut pcm, false)
            .context("decoding a client packet")?;
        black_box((n, &pcm));
    }
    let decode = start.elapsed();

    let start = Instant::now();
    let frames = mix.chunks_exact(FRAME_SAMPLES).cycle().take(iterations);
    for (i, frame) in frames.enumerate() {
        let n = encoders[i % encoders.len()]
            .encode_float(black_box(frame), &mut out)
            .context("encoding a mix frame")?;
        black_box((n, &out));
    }
    let encode = start.elapsed();

    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / iterations as f64;
    Ok((per(decode), per(encode)))
}

/// One talker's uplink, encoded the way a client would.
fn client_packets() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut encoder = CLIENT_ENCODER
        .build()
        .context("building the client encoder")?;
    let mut out = vec![0u8; MAX_OPUS_PACKET];
    loadgen::signal::speech_like(0, CLIP_FRAMES, 0.3)
        .chunks_exact(FRAME_SAMPLES)
        .map(|frame| {
            let len = encoder
                .encode_float(frame, &mut out)
                .context("encoding a client frame")?;
            Ok(out[..len].to_vec())
        })
        .collect()
}

/// What a participant hears: `voices` voices summed, then scaled so the mix peaks near 0.9
/// (three voices of 0.3 already do; a denser mix is brought down as the limiter would).
fn voice_mix(voices: usize) -> Vec<f32> {
    let mut mix = loadgen::signal::speech_like(1, CLIP_FRAMES, 0.3);
    for voice in 2..=voices {
        accumulate(
            &mut mix,
            &loadgen::signal::speech_like(voice, CLIP_FRAMES, 0.3),
        );
    }
    let peak = mix.iter().fold(0.0f32, |peak, s| peak.max(s.abs()));
    if peak > 0.9 {
        let gain = 0.9 / peak;
        mix.iter_mut().for_each(|s| *s *= gain);
    }
    mix
}

/// The median of a non-empty list (sorts it).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rounds to two decimals for the JSON line.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
