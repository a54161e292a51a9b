//! The sans-IO mixing engine.
//!
//! A [`Room`] owns everything needed to mix one room: a jitter buffer and Opus decoder per
//! talker, an Opus encoder and limiter per participant, the mix bus and the tick clock. It never
//! reads the clock and never touches a socket (and starts no thread but a large room's helper,
//! see below): time and packets come in as arguments, encoded frames and events come out. That is what lets the simulation tests run ten
//! minutes of a room in about a second on a virtual clock, through the same code as production.
//!
//! # Contract
//!
//! ```text
//! room = Room::new(config, now)
//! loop {
//!     on a packet from participant p (arrival time t):  room.handle_audio(p, frame, t)
//!     on join / leave:                                  room.add_participant(..) / remove_participant(..)
//!     when now >= room.poll_timeout():                  room.handle_timeout(now)   // one tick
//!         then drain:  while let Some(tx) = room.poll_transmit() { send tx.header + tx.payload to tx.to }
//!                          (tx.stream == Shared: the same frame as the tick's other shared ones)
//!                      while let Some(ev) = room.poll_event()    { act on it }
//!         and repeat while room.poll_timeout() <= now (catch-up, see the clock module)
//! }
//! ```
//!
//! `handle_timeout` runs at most one tick per call, and each tick leaves at most one frame per
//! participant to drain (none while its mix is paused in silence, see below). A frame not drained before the next tick is replaced (and counted in
//! [`ParticipantStats::frames_overwritten`]); the shell drains after every call.
//!
//! # One tick
//!
//! 1. Every talker's jitter buffer decides what plays now: a packet, a concealed frame (Opus PLC
//!    or in-band FEC from the next packet), two frames merged to shed delay, or silence.
//!    Silence costs nothing: the participant is not decoded and not summed.
//! 2. The decoded frames are summed into the bus.
//! 3. Each contributing talker's output is the bus minus its own decoded frame (mix-minus: its
//!    own voice is absent, not merely quieter), limited and encoded with its own encoder.
//! 4. Everyone else — listeners and silent talkers — hears the bus as it is, which is limited and
//!    encoded **once** per tick and shared: a room of N with K talking costs K + 1 encodes, not N.
//! 5. Every frame is stamped with the room's sequence number (+1 per tick) and timestamp (+960
//!    per tick): each participant's stream is continuous, and a shared frame is the same bytes
//!    for all its listeners. [`Transmit::stream`] says which frames are shared
//!    ([`StreamKind::Shared`]), so the shell builds each shared frame once.
//!
//! A large room splits a tick's decoding, and its encoding, with a helper thread of its own when
//! at least [`EngineConfig::parallel_threshold`] participants have that work this tick (talkers
//! who had audio last tick; streams to encode or PCM frames to render): the helper takes half
//! of them, the mixer thread the other half, and the result is bit-identical. The helper is the
//! one thread the engine ever starts: spawned the first time a room crosses the threshold, kept
//! until the room is dropped, and handed its half by moving boxed participants over a one-slot
//! channel and back, so a split tick neither spawns nor allocates. Measured with
//! `cargo bench -p mixer --bench tick -- parallel` (2-core VM, shared with other builds, so
//! noisy): spawning and joining a scoped thread costs 30-75 µs, and allocates, each time; a tick
//! of 48 talkers all talking costs 2.0 ms on one thread, 1.6 ms with the helper decoding half
//! (the default threshold of 48) and 1.3 ms with it encoding half as well (threshold 16).
//!
//! Silence is cheap: a talker whose packets say "silent" (no voice activity below -60 dBov, or an
//! Opus DTX frame) is not decoded after a short hangover, and a stream whose mix has been digital
//! silence for a few frames is not encoded again. Unless [`EngineConfig::send_silence`] is set, it
//! is not sent either (downlink DTX): the participant's frames pause, and the first frame after
//! the pause carries the marker bit, its sequence number and timestamp jumped by the ticks not
//! sent. A room of silent participants therefore costs neither encodes nor sends.
//!
//! Moving between a talker's own stream and the shared one is done so the listener's decoder
//! never sees a jump between unrelated encoder states: a talker keeps its own stream for a few
//! ticks after it falls silent while the shared stream encodes the same input (the two encoders
//! and limiters converge), and a talker who starts talking continues from the shared limiter's
//! state with its encoder primed on the shared stream's last inputs.
//!
//! In a single-floor push-to-talk room the transmission on the air is recorded, and a
//! participant who joins during it hears it replayed from its start on a stream of its own
//! until it has caught up with live, or until it transmits itself (see [`replay`]).
//!
//! Nothing in a steady-state tick allocates: all buffers are sized when a participant joins
//! (a recording grows by about 100 bytes per tick while a transmission is on the air).

pub mod clock;
pub mod codec;
pub mod floor;
pub mod jitter;
pub mod limiter;
pub mod mix;
pub mod pcm;
pub mod replay;

mod config;
mod error;
mod helper;
mod participant;
mod room;
mod stats;
mod stream;
mod tick;

pub use self::config::{EngineConfig, FRAME, LIMITER_DB_BUCKETS, MAX_GAIN_DB};
pub use self::error::EngineError;
pub use self::participant::{ClientCodec, ParticipantId};
pub use self::room::{Event, Room, StreamKind, Transmit};
pub use self::stats::{NoTimer, ParticipantStats, PhaseTimer, RoomStats, RoomTotals, TickPhase};
