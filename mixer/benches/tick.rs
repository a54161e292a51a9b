//! What one mix tick costs on this machine, per participant, and where the time goes.
//!
//! Run it with `cargo bench -p mixer --bench tick` (about a minute and a half; add a filter such
//! as `-- room_tick` to run one group). Every packet and frame is prepared before the timed loops,
//! so they time only the work a tick does.
//!
//! - `opus_decode`: decoding one 20 ms mono 48 kHz packet from a talker (speech-like harmonics
//!   encoded as a client would: VOIP, 32 kb/s, complexity 9) with `decode_float`. A tick does this
//!   once per talker that is talking.
//! - `opus_encode/<setting>`: encoding one 960-sample mix frame. A tick does this once per
//!   participant, talkers and listeners alike. `default` is the server's
//!   [`EncoderSettings::default`] (CELT-only low-delay, 48 kb/s, complexity 5); the others are
//!   there to show what a different `--encoder-*` choice would cost.
//! - `mix/quiet`, `mix/loud`: one participant's share of the mixing kernels: adding its frame to
//!   the bus, its mix-minus, and its limiter. `quiet` stays under the ceiling and takes the
//!   limiter's fast path; `loud` needs gain reduction on every frame. Each iteration also resets
//!   the bus with a 960-sample copy, which stands in for the tick's own `bus.fill(0.0)`.
//! - `room_tick/N`: a whole [`Room`] tick with N talkers all talking, on a virtual clock: one
//!   packet into every jitter buffer, `handle_timeout`, and draining every frame with
//!   `poll_transmit` and `poll_event`. The time shown is per tick.
//! - `room_20ms_of_audio_by_frame/F`: 20 ms of audio for a room of 10 talkers in frames of F
//!   (one tick of 20 ms, two of 10 ms, four of 5 ms): what a low-latency room costs against a
//!   room of 20 ms frames.
//! - `parallel`: what spawning a scoped thread costs, and a 48-talker tick on one thread and
//!   split with the room's helper thread (see `EngineConfig::parallel_threshold`).
//!
//! Reading the throughput lines: every group counts participants as its elements, so criterion's
//! `thrpt` is participant-frames per second of one core. For `room_tick/N` the per-participant
//! cost is the tick time divided by N, and since each participant needs 50 frames a second,
//! `thrpt / 50` is how many participants one core could mix in real time in rooms of that size
//! (before the server's own I/O). Roughly, a tick of N talkers costs N decodes + N encodes + N
//! mix shares, which the other groups let you check.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mixer::engine::codec::{self, EncoderSettings, OpusApplication};
use mixer::engine::limiter::{Limiter, LimiterConfig};
use mixer::engine::mix::{self, accumulate, mix_minus};
use mixer::engine::{EngineConfig, ParticipantId, PhaseTimer, Room, TickPhase};
use mixer::server::metrics::Metrics;
use mixer_protocol::{
    AudioFrame, AudioHeader, AudioLevel, FRAME_SAMPLES, Flags, FrameSize, MAX_OPUS_PACKET, Mode,
};

/// Frames of audio pre-encoded per talker (2 s); the benches cycle through them.
const CLIP_FRAMES: usize = 100;

/// How a client encodes its uplink.
const CLIENT_ENCODER: EncoderSettings = EncoderSettings {
    application: OpusApplication::Voip,
    bitrate: 32_000,
    complexity: 9,
};

/// One talker's uplink, encoded the way a client would: `(level, packet)` per 20 ms frame.
fn encode_clip(voice: usize) -> Vec<(AudioLevel, Vec<u8>)> {
    encode_clip_in(voice, FrameSize::Ms20)
}

/// [`encode_clip`] in frames of `frame`.
fn encode_clip_in(voice: usize, frame: FrameSize) -> Vec<(AudioLevel, Vec<u8>)> {
    let mut encoder = CLIENT_ENCODER
        .build()
        .expect("client encoder settings are valid");
    let mut out = vec![0u8; MAX_OPUS_PACKET];
    loadgen::signal::speech_like(voice, CLIP_FRAMES, 0.3)
        .chunks_exact(frame.samples())
        .map(|frame| {
            let len = encoder
                .encode_float(frame, &mut out)
                .expect("encoding a clip frame");
            (
                AudioLevel::from_rms(true, mix::rms(frame)),
                out[..len].to_vec(),
            )
        })
        .collect()
}

fn bench_opus_decode(c: &mut Criterion) {
    let clip = encode_clip(0);
    let mut decoder = codec::decoder().expect("decoder");
    let mut pcm = vec![0.0f32; FRAME_SAMPLES];
    let mut i = 0;
    let mut group = c.benchmark_group("opus_decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("voip_32k", |b| {
        b.iter(|| {
            let n = decoder
                .decode_float(black_box(&clip[i].1), &mut pcm, false)
                .expect("decoding a valid packet");
            i = (i + 1) % clip.len();
            black_box(n)
        })
    });
    group.finish();
}

fn bench_opus_encode(c: &mut Criterion) {
    // A mix of three talkers, as a participant in a small room would get.
    let mut mix_frames = loadgen::signal::speech_like(1, CLIP_FRAMES, 0.3);
    for voice in [2, 3] {
        accumulate(
            &mut mix_frames,
            &loadgen::signal::speech_like(voice, CLIP_FRAMES, 0.3),
        );
    }
    let lowdelay = |complexity| EncoderSettings {
        application: OpusApplication::LowDelay,
        bitrate: 48_000,
        complexity,
    };
    let voip = |complexity| EncoderSettings {
        application: OpusApplication::Voip,
        bitrate: 32_000,
        complexity,
    };
    let settings = [
        ("default", EncoderSettings::default()),
        ("voip_32k_c9", voip(9)),
        ("voip_32k_c5", voip(5)),
        ("lowdelay_48k_c7", lowdelay(7)),
        ("lowdelay_48k_c10", lowdelay(10)),
        ("lowdelay_48k_c0", lowdelay(0)),
    ];
    let mut out = vec![0u8; MAX_OPUS_PACKET];
    let mut group = c.benchmark_group("opus_encode");
    group.throughput(Throughput::Elements(1));
    for (name, setting) in settings {
        let mut encoder = setting
            .build()
            .expect("benchmark encoder settings are valid");
        let mut frames = mix_frames.chunks_exact(FRAME_SAMPLES).cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let frame = frames.next().expect("a cycled non-empty clip never ends");
                black_box(
                    encoder
                        .encode_float(black_box(frame), &mut out)
                        .expect("encoding"),
                )
            })
        });
    }
    group.finish();
}

fn bench_mix(c: &mut Criterion) {
    let own = loadgen::signal::speech_like(0, 1, 0.3);
    let mut group = c.benchmark_group("mix");
    group.throughput(Throughput::Elements(1));
    // The rest of the room peaks at 0.6 (under the -3 dBFS ceiling) or 2.0 (9 dB over it).
    for (name, others_peak) in [("quiet", 0.6), ("loud", 2.0)] {
        let others = loadgen::signal::speech_like(1, 1, others_peak);
        let mut bus = vec![0.0f32; FRAME_SAMPLES];
        let mut out = vec![0.0f32; FRAME_SAMPLES];
        let mut limiter = Limiter::new(LimiterConfig::default());
        group.bench_function(name, |b| {
            b.iter(|| {
                bus.copy_from_slice(black_box(&others));
                accumulate(&mut bus, black_box(&own));
                mix_minus(&mut out, &bus, &own);
                black_box(limiter.process(&mut out))
            })
        });
    }
    group.finish();
}

/// A clock-reading phase timer like the server's, for the metrics-overhead comparison.
struct ClockTimer {
    since: Option<Instant>,
    spent: f64,
}

impl PhaseTimer for ClockTimer {
    fn phase(&mut self, phase: TickPhase) {
        let now = Instant::now();
        if let Some(since) = self.since.take() {
            self.spent += now.duration_since(since).as_secs_f64();
        }
        if phase != TickPhase::Done {
            self.since = Some(now);
        }
    }
}

/// Builds a warmed-up room of `talkers` and returns a closure that runs one steady tick: every
/// talker's next packet arrives just before the tick, then the tick runs and is drained. With
/// `metrics`, the tick also does what the server's mixer thread does around it: phase timing
/// with the clock, tick-duration and lateness histograms, and per-frame counters.
fn room_step(talkers: usize, metrics: Option<Metrics>) -> impl FnMut() -> usize {
    room_step_with(EngineConfig::default(), talkers, metrics)
}

/// [`room_step`] for a room with `config`.
fn room_step_with(
    config: EngineConfig,
    talkers: usize,
    metrics: Option<Metrics>,
) -> impl FnMut() -> usize {
    let frame = config.frame;
    let clips: Vec<_> = (0..talkers).map(|v| encode_clip_in(v, frame)).collect();
    let t0 = Instant::now();
    let mut room = Room::new(config, t0).expect("room");
    for id in 0..talkers {
        room.add_participant(ParticipantId(id as u32), Mode::Talk)
            .expect("room has space");
    }
    let mut now = t0;
    let mut tick = 0usize;
    let mut timer = ClockTimer {
        since: None,
        spent: 0.0,
    };
    let mut step = move || {
        for (id, clip) in clips.iter().enumerate() {
            let (level, payload) = &clip[tick % clip.len()];
            let header = AudioHeader {
                flags: Flags::default().with_marker(tick == 0),
                sequence: tick as u16,
                timestamp: (tick as u32).wrapping_mul(frame.samples() as u32),
                level: *level,
            };
            let frame = AudioFrame { header, payload };
            let outcome = room.handle_audio(ParticipantId(id as u32), frame, now);
            black_box(outcome.expect("a talker in the room"));
        }
        let started = Instant::now();
        match &metrics {
            Some(m) => {
                m.tick_lateness_seconds.observe(0.0);
                room.handle_timeout_timed(now, &mut timer);
                m.ticks_total.inc();
            }
            None => room.handle_timeout(now),
        }
        let mut bytes = 0;
        while let Some(transmit) = room.poll_transmit() {
            bytes += transmit.payload.len();
            if let Some(m) = &metrics {
                m.audio_frames_out_total.inc();
                m.audio_bytes_out_total
                    .inc_by(transmit.payload.len() as u64 + 9);
            }
        }
        if let Some(m) = &metrics {
            m.tick_duration_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        while let Some(event) = room.poll_event() {
            black_box(event);
        }
        tick += 1;
        now += frame.duration();
        black_box(bytes)
    };
    // Past the start-up: jitter buffers playing, limiters and encoders settled.
    for _ in 0..100 * FrameSize::Ms20.samples() / frame.samples() {
        step();
    }
    step
}

fn bench_room_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_tick");
    for talkers in [2usize, 5, 10, 20] {
        let mut step = room_step(talkers, None);
        group.throughput(Throughput::Elements(talkers as u64));
        group.bench_function(BenchmarkId::from_parameter(talkers), |b| b.iter(&mut step));
    }
    group.finish();
}

/// What 20 ms of audio costs a room of 10 talkers, all talking, at each frame size: one tick of
/// 20 ms frames, two of 10 ms, four of 5 ms. The ratio to `20ms` is the CPU price of the lower
/// delay, per participant.
fn bench_room_tick_by_frame(c: &mut Criterion) {
    let talkers = 10;
    let mut group = c.benchmark_group("room_20ms_of_audio_by_frame");
    group.throughput(Throughput::Elements(talkers as u64));
    for frame in FrameSize::ALL {
        let config = EngineConfig::default().with_frame(frame);
        let mut step = room_step_with(config, talkers, None);
        let ticks = FrameSize::Ms20.samples() / frame.samples();
        group.bench_function(format!("{}ms", frame.ms()), |b| {
            b.iter(|| (0..ticks).map(|_| step()).sum::<usize>())
        });
    }
    group.finish();
}

/// The same 10-talker tick with and without the server's metrics work around it.
fn bench_metrics_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_overhead");
    group.throughput(Throughput::Elements(10));
    let mut plain = room_step(10, None);
    group.bench_function("without", |b| b.iter(&mut plain));
    let mut instrumented = room_step(10, Some(Metrics::new()));
    group.bench_function("with", |b| b.iter(&mut instrumented));
    group.finish();
}

/// Whether splitting a large room's tick with a second thread pays: the cost of spawning a
/// scoped thread (what a split phase cost when each one spawned its helper), and a tick of 48
/// talkers all talking on one thread and split with the room's persistent helper thread, at the
/// default threshold (48: the decode phase splits) and at 16 (the encode phase splits too).
fn bench_parallel(c: &mut Criterion) {
    let mut group = c.benchmark_group("parallel");
    group.bench_function("scoped_spawn", |b| {
        b.iter(|| std::thread::scope(|scope| black_box(scope.spawn(|| black_box(1)).join())))
    });
    let talkers = 48;
    group.throughput(Throughput::Elements(talkers as u64));
    for (name, parallel_threshold) in [
        ("room_tick_48/one_thread", None),
        ("room_tick_48/helper_at_48", Some(48)),
        ("room_tick_48/helper_at_16", Some(16)),
    ] {
        let config = EngineConfig {
            parallel_threshold,
            ..EngineConfig::default()
        };
        let mut step = room_step_with(config, talkers, None);
        group.bench_function(name, |b| b.iter(&mut step));
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_opus_decode, bench_opus_encode, bench_mix, bench_room_tick, bench_metrics_overhead,
        bench_parallel, bench_room_tick_by_frame
}
criterion_main!(benches);
