//! Prints the encoder trade-off table in the README's Architecture section: for each Opus
//! setting, how far the codec's noise floor sits below a busy four-tone mix at frequencies
//! absent from it (the mix-minus isolation the codec allows) and the packet size.
//!
//! ```sh
//! cargo run --release -p mixer --example encoder_tradeoffs
//! ```
//!
//! The measurement is the shared audio test kit's `isolation_db`, the same one the codec test
//! asserts on for the default setting.

#[path = "../tests/common/mod.rs"]
mod common;

use mixer::engine::codec::{EncoderSettings, OpusApplication::*};

fn main() {
    println!("| setting | isolation dB | bytes/packet |");
    println!("|---|---|---|");
    for (application, bitrate, complexity) in [
        (Voip, 32_000, 9),
        (Voip, 32_000, 5),
        (Voip, 32_000, 0),
        (LowDelay, 32_000, 5),
        (LowDelay, 48_000, 0),
        (LowDelay, 48_000, 5),
        (LowDelay, 48_000, 7),
        (LowDelay, 48_000, 8),
        (LowDelay, 48_000, 10),
        (LowDelay, 64_000, 5),
        (LowDelay, 64_000, 10),
        (LowDelay, 96_000, 5),
    ] {
        let (isolation, bytes) = common::isolation_db(EncoderSettings {
            application,
            bitrate,
            complexity,
        });
        println!(
            "| {application} {} kb/s c{complexity} | {isolation:.1} | {bytes:.0} |",
            bitrate / 1000
        );
    }
}
