//! Replays the `http_head` fuzz target's corpus and saved crashes through the check it runs, so
//! `cargo test` covers them on stable and without cargo-fuzz (the protocol's targets are
//! replayed by the protocol crate's tests).

use std::path::Path;

use mixer_protocol::fuzzing::replay;

#[test]
fn http_head_corpus() {
    let fuzz = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"));
    replay(fuzz, "http_head", mixer::fuzzing::http_head);
}
