//! Steady-state ticks never allocate.
//!
//! The engine promises that everything is sized at join (see the `engine` module docs): a tick
//! that allocated could stall on the allocator's locks on a busy server. This test installs a
//! counting global allocator, warms rooms up, and then asserts that four seconds of ticks
//! (packets in, ticks run, frames and events drained) make no allocation at all, in:
//!
//! - a room of Opus talkers and a listener, with loss and jitter on the uplinks;
//! - a large room whose ticks are split with its helper thread (decoding and encoding);
//! - a room of PCM clients (resampled at 8, 16 and 44.1 kHz) and Opus clients;
//! - a single-floor push-to-talk room: a transmission on the air (recorded), a participant
//!   without the floor whose packets are refused, and a late joiner hearing the transmission
//!   replayed and catching up.
//!
//! Allocations are counted on every thread while counting is on, so the split room's helper
//! thread is counted too. That needs the process to itself: this is the one test file kept out
//! of the shared `tests` binary (see Cargo.toml), and its tests hold one lock while they run,
//! so no other test thread allocates meanwhile.
//!
//! The shell's fan-out of a tick's frames to the members' outboxes is checked here too: it
//! allocates once per block of about a hundred frames, not once per frame.
//!
//! Only Rust allocations go through the global allocator; libopus's C code would call `malloc`
//! directly. libopus allocates only when a codec is created, so that is not a gap in practice.

// A global allocator can only be written with `unsafe impl GlobalAlloc`. The impl forwards every
// call unchanged to `System`, so it upholds exactly the contract `System` does.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use mixer::engine::codec::{EncoderSettings, OpusApplication};
use mixer::engine::floor::{FloorConfig, FloorPolicy};
use mixer::engine::pcm::PcmRate;
use mixer::engine::{ClientCodec, EngineConfig, EngineError, Event, FRAME, ParticipantId, Room};
use mixer_protocol::{AudioFrame, AudioHeader, AudioLevel, FRAME_SAMPLES, Flags, Mode};

/// Forwards to the system allocator, counting allocations while counting is on.
struct CountingAllocator;

/// Allocations and reallocations seen while counting was on.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether allocations are counted (on every thread).
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which implements
// `GlobalAlloc` correctly; counting touches only atomics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Held by each test for its whole run: counting covers every thread, so the tests of this
/// binary must not run at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts the allocations made (on any thread) while `f` runs.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const WARM_UP_TICKS: usize = 100;
const COUNTED_TICKS: usize = 200;

/// The frame a client sends at `tick`, its payload cycled from `payloads`.
fn looped_frame(payloads: &[Vec<u8>], tick: usize) -> AudioFrame<'_> {
    AudioFrame {
        header: AudioHeader {
            flags: Flags::default().with_marker(tick == 0),
            sequence: tick as u16,
            timestamp: (tick as u32).wrapping_mul(FRAME_SAMPLES as u32),
            level: AudioLevel::new(true, 10),
        },
        payload: &payloads[tick % payloads.len()],
    }
}

/// One talker's uplink: a tone per talker, encoded as a client would, cycled.
struct Uplink {
    packets: Vec<Vec<u8>>,
}

impl Uplink {
    fn new(talker: usize, amplitude: f32) -> Uplink {
        let client = EncoderSettings {
            application: OpusApplication::Voip,
            bitrate: 32_000,
            complexity: 5,
        };
        let mut encoder = client.build().expect("client encoder settings are valid");
        let freq = 220.0 * (talker + 1) as f32;
        let mut out = vec![0u8; 1275];
        let packets = (0..50)
            .map(|frame| {
                let pcm: Vec<f32> = (0..FRAME_SAMPLES)
                    .map(|i| {
                        let t = (frame * FRAME_SAMPLES + i) as f32 / 48_000.0;
                        amplitude * (2.0 * std::f32::consts::PI * freq * t).sin()
                    })
                    .collect();
                let len = encoder
                    .encode_float(&pcm, &mut out)
                    .expect("encoding a tone");
                out[..len].to_vec()
            })
            .collect();
        Uplink { packets }
    }

    fn frame(&self, tick: usize) -> AudioFrame<'_> {
        looped_frame(&self.packets, tick)
    }
}

/// A room to check: builds it, runs it and returns the allocations of its counted ticks.
type Scenario = fn() -> usize;

#[test]
fn steady_state_ticks_do_not_allocate() {
    let _serial = serial();
    let rooms: [(&str, Scenario); 4] = [
        ("Opus talkers and a listener", opus_room),
        ("a split tick", split_room),
        ("PCM clients", pcm_room),
        ("a single-floor push-to-talk room", single_floor_room),
    ];
    let allocating: Vec<String> = rooms
        .iter()
        .map(|(name, run)| (name, run()))
        .filter(|(_, allocations)| *allocations > 0)
        .map(|(name, allocations)| format!("{name}: {allocations} allocations"))
        .collect();
    assert!(
        allocating.is_empty(),
        "{COUNTED_TICKS} steady-state ticks allocated: {allocating:?}"
    );
}

/// Warms `room` up with `step`, then counts the allocations of [`COUNTED_TICKS`] more.
fn count_steady_ticks(mut step: impl FnMut(usize)) -> usize {
    for tick in 0..WARM_UP_TICKS {
        step(tick);
    }
    allocations_in(|| {
        for tick in WARM_UP_TICKS..WARM_UP_TICKS + COUNTED_TICKS {
            step(tick);
        }
    })
}

/// Runs the tick due at `tick` and drains it: returns (frames, events other than talking).
fn tick_and_drain(room: &mut Room, now: Instant) -> (usize, usize) {
    room.handle_timeout(now);
    let mut frames = 0;
    while let Some(transmit) = room.poll_transmit() {
        assert!(!transmit.payload.is_empty());
        frames += 1;
    }
    let mut events = 0;
    while let Some(event) = room.poll_event() {
        // Talkers starting, and moving to their own streams as they do, are expected.
        if !matches!(
            event,
            Event::TalkingStarted { .. } | Event::StreamSwitched { shared: false, .. }
        ) {
            events += 1;
        }
    }
    (frames, events)
}

/// Four Opus talkers (with loss and jitter) and a listener.
fn opus_room() -> usize {
    const TALKERS: usize = 4;
    const LISTENER: ParticipantId = ParticipantId(100);

    // Talker 0 is loud enough that the others' mixes need limiting.
    let uplinks: Vec<Uplink> = (0..TALKERS)
        .map(|t| Uplink::new(t, if t == 0 { 0.9 } else { 0.3 }))
        .collect();
    let t0 = Instant::now();
    let mut room = Room::new(EngineConfig::default(), t0).expect("room");
    for id in 0..TALKERS {
        room.add_participant(ParticipantId(id as u32), Mode::Talk)
            .expect("room has space");
    }
    room.add_participant(LISTENER, Mode::Listen)
        .expect("room has space");

    let mut frames_out = 0usize;
    let mut events = 0usize;
    let mut talking = 0usize;
    let mut switched = 0usize;
    let mut step = |tick: usize| {
        let now = t0 + FRAME * tick as u32;
        // Not only the easy path: talker 1 loses a packet now and then (concealment) and talker
        // 2's packets arrive in pairs, one of them 20 ms late (jitter estimation and a deeper
        // buffer). Talkers 0 and 3 arrive on time.
        for (id, uplink) in uplinks.iter().enumerate() {
            let sent: &[usize] = match id {
                1 if tick % 25 == 7 => &[],
                2 if tick.is_multiple_of(2) => &[],
                2 => &[tick - 1, tick],
                _ => &[tick],
            };
            for &seq in sent {
                room.handle_audio(ParticipantId(id as u32), uplink.frame(seq), now)
                    .expect("a talker in the room");
            }
        }
        room.handle_timeout(now);
        while let Some(transmit) = room.poll_transmit() {
            assert!(!transmit.payload.is_empty());
            frames_out += 1;
        }
        while let Some(event) = room.poll_event() {
            match event {
                Event::TalkingStarted { .. } => talking += 1,
                Event::StreamSwitched { shared: false, .. } => switched += 1,
                _ => events += 1,
            }
        }
    };

    let allocations = count_steady_ticks(&mut step);

    // Every tick gave every participant a frame, so the counted ticks did real work.
    assert_eq!(frames_out, (WARM_UP_TICKS + COUNTED_TICKS) * (TALKERS + 1));
    assert_eq!(events, 0, "a clean run raises no events");
    assert_eq!(
        talking, TALKERS,
        "each talker is announced once, when it starts"
    );
    assert_eq!(
        switched, TALKERS,
        "each talker moves to a stream of its own once, when it starts"
    );
    let stats = |id| room.participant_stats(id).expect("participant present");
    for id in 0..TALKERS {
        let stats = stats(ParticipantId(id as u32));
        assert!(
            stats.frames_decoded >= COUNTED_TICKS as u64,
            "talker {id}: {stats:?}"
        );
    }
    assert!(
        stats(ParticipantId(1)).jitter.lost > 0,
        "{:?}",
        stats(ParticipantId(1))
    );
    // The listener hears the shared full mix, whose limiter counts at room level.
    assert!(
        room.totals().participants.frames_limited > 0,
        "{:?}",
        room.totals()
    );
    allocations
}

/// Twelve talkers, all talking, in a room that splits ticks from four talkers on: its helper
/// thread decodes and encodes half of them every tick.
fn split_room() -> usize {
    const TALKERS: usize = 12;
    let uplinks: Vec<Uplink> = (0..TALKERS).map(|t| Uplink::new(t, 0.2)).collect();
    let t0 = Instant::now();
    let config = EngineConfig {
        parallel_threshold: Some(4),
        ..EngineConfig::default()
    };
    let mut room = Room::new(config, t0).expect("room");
    for id in 0..=TALKERS {
        let mode = if id < TALKERS {
            Mode::Talk
        } else {
            Mode::Listen
        };
        room.add_participant(ParticipantId(id as u32), mode)
            .expect("room has space");
    }
    let mut frames_out = 0;
    let allocations = count_steady_ticks(|tick| {
        let now = t0 + FRAME * tick as u32;
        for (id, uplink) in uplinks.iter().enumerate() {
            room.handle_audio(ParticipantId(id as u32), uplink.frame(tick), now)
                .expect("a talker in the room");
        }
        let (frames, events) = tick_and_drain(&mut room, now);
        assert_eq!(events, 0);
        frames_out += frames;
    });
    assert_eq!(frames_out, (WARM_UP_TICKS + COUNTED_TICKS) * (TALKERS + 1));
    allocations
}

/// PCM talkers at 16 and 44.1 kHz, an Opus talker, a PCM listener at 8 kHz and an Opus
/// listener: resampling both ways every tick.
fn pcm_room() -> usize {
    let t0 = Instant::now();
    let mut room = Room::new(EngineConfig::default(), t0).expect("room");
    let pcm_talkers = [PcmRate::Hz16000, PcmRate::Hz44100];
    let pcm_uplinks: Vec<PcmUplink> = pcm_talkers
        .iter()
        .enumerate()
        .map(|(i, &rate)| PcmUplink::new(rate, 330.0 * (i + 1) as f32))
        .collect();
    for (i, &rate) in pcm_talkers.iter().enumerate() {
        room.add_participant_with(ParticipantId(i as u32), Mode::Talk, ClientCodec::Pcm(rate))
            .expect("room has space");
    }
    let opus_talker = ParticipantId(10);
    let opus_uplink = Uplink::new(3, 0.3);
    room.add_participant(opus_talker, Mode::Talk)
        .expect("room has space");
    room.add_participant_with(
        ParticipantId(20),
        Mode::Listen,
        ClientCodec::Pcm(PcmRate::Hz8000),
    )
    .expect("room has space");
    room.add_participant(ParticipantId(21), Mode::Listen)
        .expect("room has space");
    let mut frames_out = 0;
    let allocations = count_steady_ticks(|tick| {
        let now = t0 + FRAME * tick as u32;
        for (i, uplink) in pcm_uplinks.iter().enumerate() {
            room.handle_audio(ParticipantId(i as u32), uplink.frame(tick), now)
                .expect("a talker in the room");
        }
        room.handle_audio(opus_talker, opus_uplink.frame(tick), now)
            .expect("a talker in the room");
        let (frames, events) = tick_and_drain(&mut room, now);
        assert_eq!(events, 0);
        frames_out += frames;
    });
    assert_eq!(frames_out, (WARM_UP_TICKS + COUNTED_TICKS) * 5);
    allocations
}

/// A single-floor push-to-talk room: the holder talks (its transmission is recorded), another
/// push-to-talk participant sends without the floor (refused), and a participant who joined
/// during warm-up hears the transmission replayed, then catches up during the counted ticks.
fn single_floor_room() -> usize {
    let t0 = Instant::now();
    let config = EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            ..FloorConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut room = Room::new(config, t0).expect("room");
    let (holder, other, listener, late) = (
        ParticipantId(1),
        ParticipantId(2),
        ParticipantId(3),
        ParticipantId(4),
    );
    room.add_participant(holder, Mode::Ptt)
        .expect("room has space");
    room.add_participant(other, Mode::Ptt)
        .expect("room has space");
    room.add_participant(listener, Mode::Listen)
        .expect("room has space");
    room.request_floor(holder, false, t0)
        .expect("a ptt participant");
    let uplinks = [Uplink::new(0, 0.3), Uplink::new(1, 0.3)];
    let mut refused = 0;
    let mut caught_up = 0;
    let mut replaying_at_count_start = false;
    let allocations = count_steady_ticks(|tick| {
        let now = t0 + FRAME * tick as u32;
        if tick == 60 {
            // Joining allocates (its codecs and replay); the ticks after it must not.
            room.add_participant(late, Mode::Listen)
                .expect("room has space");
        }
        if tick == WARM_UP_TICKS {
            replaying_at_count_start = room.replay_backlog(late).is_some();
        }
        room.handle_audio(holder, uplinks[0].frame(tick), now)
            .expect("the holder may talk");
        match room.handle_audio(other, uplinks[1].frame(tick), now) {
            Err(EngineError::NoFloor(_)) => refused += 1,
            outcome => panic!("{outcome:?}"),
        }
        room.handle_timeout(now);
        while room.poll_transmit().is_some() {}
        while let Some(event) = room.poll_event() {
            if event == (Event::CaughtUp { participant: late }) {
                caught_up += 1;
            }
        }
    });
    assert_eq!(room.floor_holder(), Some(holder));
    assert_eq!(refused, WARM_UP_TICKS + COUNTED_TICKS);
    assert!(replaying_at_count_start, "the replay ended during warm-up");
    assert_eq!(caught_up, 1, "the late joiner caught up while counted");
    allocations
}

/// A PCM client's uplink: a tone as 16-bit little-endian samples at its rate, cycled.
struct PcmUplink {
    frames: Vec<Vec<u8>>,
}

impl PcmUplink {
    fn new(rate: PcmRate, freq: f32) -> PcmUplink {
        let n = rate.samples_per_frame();
        let frames = (0..50)
            .map(|frame| {
                (0..n)
                    .flat_map(|i| {
                        let t = (frame * n + i) as f32 / rate.hz() as f32;
                        let s = 0.3 * (2.0 * std::f32::consts::PI * freq * t).sin();
                        ((s * 32767.0) as i16).to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        PcmUplink { frames }
    }

    fn frame(&self, tick: usize) -> AudioFrame<'_> {
        looped_frame(&self.frames, tick)
    }
}

/// The shell's side of a tick: frames written to the wire form and handed to the members'
/// outboxes (and drained, as the writer tasks do). Frames are built in shared blocks, so about
/// one allocation serves a hundred frames; it used to be at least one per frame built.
#[test]
fn fanning_out_a_tick_allocates_per_block_of_frames_not_per_frame() {
    let _serial = serial();
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize as Count;

    use mixer::server::metrics::Metrics;
    use mixer::server::outbox::Outbox;
    use mixer::server::room_fanout::{Member, RoomSlot};
    use mixer_protocol::{AudioFormat, Role};

    const TALKERS: usize = 3;
    const LISTENERS: u32 = 10;
    let uplinks: Vec<Uplink> = (0..TALKERS).map(|t| Uplink::new(t, 0.3)).collect();
    let t0 = Instant::now();
    let mut slot = RoomSlot::new(
        Arc::from("hall"),
        Room::new(EngineConfig::default(), t0).expect("room"),
    );
    let mut members = HashMap::new();
    for id in 0..TALKERS as u32 + LISTENERS {
        let mode = if (id as usize) < TALKERS {
            Mode::Talk
        } else {
            Mode::Listen
        };
        slot.engine
            .add_participant(ParticipantId(id), mode)
            .expect("room has space");
        members.insert(
            ParticipantId(id),
            Member {
                name: format!("p{id}"),
                role: Role::Speaker,
                format: AudioFormat::opus_48k_mono_20ms(),
                muted_by: None,
                outbox: Arc::new(Outbox::new(10, 250)),
                in_flight: Arc::new(Count::new(0)),
            },
        );
    }
    slot.members = members;
    let metrics = Metrics::new();
    let mut batch = Vec::with_capacity(64);
    let mut built_before = 0;
    let mut step = |tick: usize| {
        let now = t0 + FRAME * tick as u32;
        for (id, uplink) in uplinks.iter().enumerate() {
            slot.engine
                .handle_audio(ParticipantId(id as u32), uplink.frame(tick), now)
                .expect("a talker in the room");
        }
        slot.engine.handle_timeout(now);
        slot.fan_out_frames(&metrics);
        slot.drain_events(&metrics);
        for member in slot.members.values() {
            member.outbox.drain(&mut batch);
            batch.clear();
        }
    };
    for tick in 0..WARM_UP_TICKS {
        step(tick);
        built_before = metrics.audio_frames_out_total.get();
    }
    let allocations = allocations_in(|| {
        for tick in WARM_UP_TICKS..WARM_UP_TICKS + COUNTED_TICKS {
            step(tick);
        }
    });
    let frames = metrics.audio_frames_out_total.get() - built_before;
    // Every member gets a frame every tick: 13 frames a tick, 4 of them built (3 own streams
    // and the shared one).
    assert_eq!(
        frames,
        (TALKERS as u64 + u64::from(LISTENERS)) * COUNTED_TICKS as u64
    );
    let built = (TALKERS as u64 + 1) * COUNTED_TICKS as u64;
    assert!(
        (allocations as u64) * 20 <= built,
        "{allocations} allocations for {built} frames built ({frames} handed out)"
    );
}
