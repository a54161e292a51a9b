//! Replays the protocol's fuzz targets' corpora and saved crashes (`fuzz/corpus/<target>/`,
//! `fuzz/artifacts/<target>/`) through the checks the targets run, so `cargo test` covers every
//! input the fuzzers found worth keeping, on stable and without cargo-fuzz.

use std::path::Path;

use mixer_protocol::fuzzing;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"))
}

#[test]
fn audio_header_corpus() {
    fuzzing::replay(fuzz_dir(), "audio_header", fuzzing::audio_frame);
}

#[test]
fn control_json_corpus() {
    fuzzing::replay(fuzz_dir(), "control_json", fuzzing::control_json);
}
