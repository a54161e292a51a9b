//! The `loadgen` binary (in progress).
fn main() {}
