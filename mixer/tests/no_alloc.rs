//! Steady-state ticks never allocate.
//!
//! The engine promises that everything is sized at join (see the `engine` module docs): a tick
//! that allocated could stall on the allocator's locks on a busy server. This test installs a
//! counting global allocator, warms a room up, and then asserts that about four seconds of
//! ticks (packets in, ticks run, frames and events drained) make no allocation at all.
//!
//! Only Rust allocations go through the global allocator; libopus's C code would call `malloc`
//! directly. libopus allocates only when a codec is created, so that is not a gap in practice.

// A global allocator can only be written with `unsafe impl GlobalAlloc`. The impl forwards every
// call unchanged to `System`, so it upholds exactly the contract `System` does.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mixer::engine::codec::{EncoderSettings, OpusApplication};
use mixer::engine::{EngineConfig, Event, FRAME, ParticipantId, Room};
use mixer_protocol::{AudioFrame, AudioHeader, AudioLevel, FRAME_SAMPLES, Flags, Mode};

/// Forwards to the system allocator, counting allocations made on threads that opted in.
struct CountingAllocator;

/// Allocations and reallocations seen while counting was on.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether allocations on this thread are counted. A const-initialised `Cell` needs no
    /// allocation or destructor of its own, so the allocator can read it safely.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with` because the harness's threads may allocate while their thread-locals are torn
    // down; those are never counted anyway.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which implements
// `GlobalAlloc` correctly; counting touches only an atomic and a const thread-local.
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

/// Counts the allocations `f` makes on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
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
        AudioFrame {
            header: AudioHeader {
                flags: Flags::default().with_marker(tick == 0),
                sequence: tick as u16,
                timestamp: (tick as u32).wrapping_mul(FRAME_SAMPLES as u32),
                level: AudioLevel::new(true, 10),
            },
            payload: &self.packets[tick % self.packets.len()],
        }
    }
}

#[test]
fn steady_state_ticks_do_not_allocate() {
    const TALKERS: usize = 4;
    const LISTENER: ParticipantId = ParticipantId(100);
    const WARM_UP_TICKS: usize = 100;
    const COUNTED_TICKS: usize = 200;

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
                _ => events += 1,
            }
        }
    };

    for tick in 0..WARM_UP_TICKS {
        step(tick);
    }
    let allocations = allocations_in(|| {
        for tick in WARM_UP_TICKS..WARM_UP_TICKS + COUNTED_TICKS {
            step(tick);
        }
    });

    // Every tick gave every participant a frame, so the counted ticks did real work.
    assert_eq!(frames_out, (WARM_UP_TICKS + COUNTED_TICKS) * (TALKERS + 1));
    assert_eq!(events, 0, "a clean run raises no events");
    assert_eq!(
        talking, TALKERS,
        "each talker is announced once, when it starts"
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
    assert_eq!(
        allocations, 0,
        "{COUNTED_TICKS} steady-state ticks allocated {allocations} times"
    );
}
