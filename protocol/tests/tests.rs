//! The protocol crate's integration tests, one binary (see `autotests = false` in Cargo.toml):
//! each module is a topic, and `support` holds what they share.

mod fuzz_corpus;
mod golden;
mod names;
mod properties;
mod rejects;
mod spec;
mod support;
mod validation;
