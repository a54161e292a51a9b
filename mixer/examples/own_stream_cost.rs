//! What the density-following bitrate costs a talker's own stream: encode time and packet size
//! at 4, 10 and 20 talkers, at the configured bitrate and at the one the engine now uses.
//!
//! ```sh
//! cargo run --release -p mixer --example own_stream_cost
//! ```
//!
//! Best of five rounds of 500 frames of a speech-like mix-minus (the other talkers, up to the
//! default cap of 16), on whatever else the machine is doing: compare rows of one run.

use std::time::{Duration, Instant};

use mixer::engine::codec::EncoderSettings;

const FRAMES: usize = 500;

fn main() {
    let base = EncoderSettings::default();
    println!("| talkers | bitrate | µs per encode | bytes per packet |");
    println!("|---|---|---|---|");
    for talkers in [4usize, 10, 20] {
        let voices = talkers.min(16) - 1;
        let mut mix = vec![0f32; FRAMES * 960];
        for voice in 0..voices {
            let speech = loadgen::signal::speech_like(voice, FRAMES, 0.6 / voices as f32);
            mixer::engine::mix::accumulate(&mut mix, &speech);
        }
        for bitrate in [base.bitrate, base.bitrate_for(voices)] {
            let settings = EncoderSettings { bitrate, ..base };
            let mut encoder = settings.build().expect("valid encoder settings");
            let mut packet = vec![0u8; 1275];
            let mut bytes = 0;
            let mut best = Duration::MAX;
            for _round in 0..5 {
                let start = Instant::now();
                for frame in mix.chunks(960) {
                    bytes += encoder.encode_float(frame, &mut packet).expect("encode");
                }
                best = best.min(start.elapsed());
            }
            println!(
                "| {talkers} | {} kb/s | {:.1} | {} |",
                bitrate / 1000,
                best.as_secs_f64() * 1e6 / FRAMES as f64,
                bytes / (5 * FRAMES)
            );
        }
    }
}
