//! # mixer: a real-time Opus audio mixer (MCU) for thin clients
//!
//! Clients stream 20 ms Opus frames over a WebSocket into a room; for every participant the server
//! de-jitters and decodes each talker, sums the room, removes that participant's own voice
//! (mix-minus), limits, re-encodes and sends back one Opus stream. A client sends one stream and
//! plays one stream, whatever the size of the room. The wire format is in the `mixer-protocol`
//! crate.
//!
//! ## Architecture
//!
//! - [`engine`] is sans-IO: a [`engine::Room`] takes packets and the current time as arguments
//!   and yields encoded frames and events. It owns the jitter buffers, codecs, mix bus, limiter
//!   and the tick clock. It never reads the clock or touches a socket, so tests drive it on a
//!   virtual clock.
//! - [`server`] is the tokio shell: it accepts WebSocket connections, keeps the room directory,
//!   and runs each room on one of a few dedicated mixer threads. Connections and mixer threads
//!   meet only at bounded queues; the mixer never waits on a client.
//! - [`auth`] verifies access tokens (signed JWTs) and mints them for `mixer token create`.
//! - [`fleet`] coordinates several mixer nodes through Redis: node registry, room-ownership
//!   leases with fencing epochs, placement of new rooms; the server's side of it (redirects,
//!   lease gates, drain, failover) is in [`server::fleet_rooms`] and [`server::fleet_node`].
//! - [`cli`] turns command-line flags and environment variables into a validated
//!   [`server::ServerConfig`].
//!
//! ## One tick (every 20 ms, on absolute deadlines)
//!
//! jitter buffer → decode (or conceal) per talker → sum → per participant: sum − own → limiter →
//! Opus encode → that participant's bounded send queue. See [`engine`] for the details and the
//! call contract.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod engine;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;
