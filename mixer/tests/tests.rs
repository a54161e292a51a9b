//! The mixer's integration tests, one binary (see `autotests = false` in Cargo.toml), so the
//! suite links libopus and the server once. The exception is `no_alloc.rs`, a binary of its
//! own: its counting allocator counts every thread, so it must not share the process with other
//! tests.
//!
//! Each module is a topic; `common` is what they share on top of loadgen's audio kit (Opus
//! talkers and listeners, tone sources, a network emulator).
//!
//! - `simulation`: whole rooms on a virtual clock, asserting on decoded audio, by topic
//!   (`network`, `mixing`, `silence`, `voice_rooms`);
//! - `room_properties`, `floor_properties`, `fleet_properties`: property tests against reference
//!   models;
//! - `request_properties`: random control sequences from several clients through the mixer pool,
//!   against a reference model;
//! - `fuzz_corpus`: the `http_head` fuzz target's corpus, replayed;
//! - `codec`, `pcm`: the codec and PCM paths against libopus and on tones;
//! - `e2e`: the real server on a loopback port, by topic (`mixing`, `robustness`, `service`,
//!   `voice_rooms`, `flood`, `tls`);
//! - `fleet`: the fleet's coordination layer (registry, room leases, placement) against a
//!   private `redis-server` the tests start themselves;
//! - `dashboards`: the dashboard and alert rules name only exported metrics.

mod codec;
mod common;
mod dashboards;
mod e2e;
mod fleet;
mod fleet_properties;
mod floor_properties;
mod fuzz_corpus;
mod pcm;
mod request_properties;
mod room_properties;
mod simulation;
