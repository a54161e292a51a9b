//! Deterministic simulation of whole rooms on a virtual clock.
//!
//! Talkers encode real tones with Opus, a seeded network emulator delays, reorders, duplicates
//! and drops their packets, the engine mixes on its own tick schedule, and every participant's
//! output is decoded and checked as audio: who is heard, who is not, at what level, with what
//! delay, and without clicks. Nothing here reads the wall clock, so every run is identical.
//!
//! The harness ([`Sim`]) is here; the tests are by topic below.

mod low_latency;
mod mixing;
mod network;
mod silence;
mod spec;
mod voice_rooms;

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{
    Listener, Netem, NetemConfig, Talker, max_step, onsets, tone_db, tone_step_bound,
};
use mixer::engine::floor::{FloorChange, FloorConfig, FloorEnd, FloorPolicy, FloorReply};
use mixer::engine::{EngineConfig, EngineError, Event, ParticipantId, Room};
use mixer_protocol::{AudioFrame, AudioLevel, FRAME_SAMPLES, FrameSize, Mode};

/// The tick of a room of the default frame size.
const TICK: Duration = Duration::from_millis(20);

const AMP: f32 = 0.2;

/// When a simulated talker sends.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// A tone every frame.
    Continuous,
    /// `on` frames of tone, then `off` frames during which nothing is sent (DTX / end of spurt).
    Spurts { on: u64, off: u64 },
    /// Tone bursts with silent frames still sent between them.
    Bursts { on: u64, off: u64 },
}

struct SimTalker {
    talker: Talker,
    net: Netem,
    pattern: Pattern,
    /// Sender clock rate relative to the server's (1.001 = 0.1 % fast).
    speed: f64,
    next_send: Duration,
    frames_sent: u64,
    /// Virtual send times of tone onsets.
    onsets_sent: Vec<Duration>,
    active: bool,
    /// Packets the room refused (muted, no floor).
    rejected: u64,
    /// Time between two sends: the room's frame.
    period: Duration,
}

struct SimListener {
    listener: Listener,
    first_frame_at: Option<Duration>,
}

struct Sim {
    t0: Instant,
    now: Duration,
    next_tick: Duration,
    room: Room,
    talkers: HashMap<ParticipantId, SimTalker>,
    listeners: HashMap<ParticipantId, SimListener>,
    /// Every event the room raised, with the virtual time of the tick.
    events: Vec<(Duration, Event)>,
    /// The room's frame size, which its clients send and receive.
    frame: FrameSize,
}

impl Sim {
    fn new() -> Sim {
        Sim::with_config(EngineConfig::default())
    }

    fn with_config(config: EngineConfig) -> Sim {
        let t0 = Instant::now();
        let frame = config.frame;
        Sim {
            t0,
            now: Duration::ZERO,
            next_tick: Duration::ZERO,
            room: Room::new(config, t0).expect("room"),
            talkers: HashMap::new(),
            listeners: HashMap::new(),
            events: Vec::new(),
            frame,
        }
    }

    fn add_talker(
        &mut self,
        id: u32,
        freq: f32,
        net: NetemConfig,
        pattern: Pattern,
    ) -> ParticipantId {
        self.add_sender(id, freq, net, pattern, Mode::Talk)
    }

    fn add_sender(
        &mut self,
        id: u32,
        freq: f32,
        net: NetemConfig,
        pattern: Pattern,
        mode: Mode,
    ) -> ParticipantId {
        let id = ParticipantId(id);
        self.room.add_participant(id, mode).expect("join");
        self.talkers.insert(
            id,
            SimTalker {
                talker: Talker::with_frame(freq, AMP, self.frame),
                net: Netem::new(net, u64::from(id.0) * 7919 + 1),
                pattern,
                speed: 1.0,
                next_send: self.now + Duration::from_micros(3_700 * u64::from(id.0 % 5)),
                frames_sent: 0,
                onsets_sent: Vec::new(),
                active: true,
                rejected: 0,
                period: self.frame.duration(),
            },
        );
        self.listeners.insert(
            id,
            SimListener {
                listener: Listener::for_frame(self.frame),
                first_frame_at: None,
            },
        );
        id
    }

    /// Adds `n` talkers with ids 1..=n, each sending a continuous tone from `FREQS`.
    fn add_tone_talkers(&mut self, n: usize) -> Vec<ParticipantId> {
        (0..n)
            .map(|i| {
                self.add_talker(
                    i as u32 + 1,
                    FREQS[i],
                    NetemConfig::default(),
                    Pattern::Continuous,
                )
            })
            .collect()
    }

    fn add_listener(&mut self, id: u32) -> ParticipantId {
        let id = ParticipantId(id);
        self.room.add_participant(id, Mode::Listen).expect("join");
        self.listeners.insert(
            id,
            SimListener {
                listener: Listener::for_frame(self.frame),
                first_frame_at: None,
            },
        );
        id
    }

    fn remove(&mut self, id: ParticipantId) {
        self.room.remove_participant(id).expect("was in the room");
        if let Some(t) = self.talkers.get_mut(&id) {
            t.active = false;
        }
    }

    fn talker(&mut self, id: ParticipantId) -> &mut SimTalker {
        self.talkers.get_mut(&id).expect("talker")
    }

    fn heard(&self, id: ParticipantId) -> &Listener {
        &self.listeners[&id].listener
    }

    /// Advances virtual time to `end`, processing sends, arrivals and ticks in time order.
    fn run_until(&mut self, end: Duration) {
        loop {
            let next_send = self
                .talkers
                .values()
                .filter(|t| t.active)
                .map(|t| t.next_send)
                .min();
            let next_arrival = self
                .talkers
                .values()
                .filter_map(|t| t.net.next_arrival())
                .min();
            let next = [Some(self.next_tick), next_send, next_arrival]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end;
                return;
            };
            self.now = next;
            for (id, t) in &mut self.talkers {
                while let Some((at, packet)) = t.net.poll(self.now) {
                    if !t.active {
                        continue;
                    }
                    let frame = AudioFrame::parse(&packet).expect("own frames parse");
                    match self.room.handle_audio(*id, frame, self.t0 + at) {
                        Ok(_) => {}
                        Err(
                            EngineError::Muted(_)
                            | EngineError::NoFloor(_)
                            | EngineError::ListenOnly(_),
                        ) => t.rejected += 1,
                        Err(e) => panic!("packet refused: {e}"),
                    }
                }
                if t.active && t.next_send <= self.now {
                    send_one(t, self.now);
                }
            }
            if self.next_tick <= self.now {
                self.room.handle_timeout(self.t0 + self.now);
                while let Some(tx) = self.room.poll_transmit() {
                    if let Some(l) = self.listeners.get_mut(&tx.to) {
                        l.first_frame_at.get_or_insert(self.now);
                        l.listener.receive(tx.header, tx.payload);
                    }
                }
                while let Some(event) = self.room.poll_event() {
                    self.events.push((self.now, event));
                }
                self.next_tick = self.room.poll_timeout().duration_since(self.t0);
            }
        }
    }

    /// Mouth-to-ear delays from talker `from`'s tone onsets to their onsets in `to`'s output.
    fn delays(&self, from: ParticipantId, to: ParticipantId) -> Vec<Duration> {
        let talker = &self.talkers[&from];
        let listener = &self.listeners[&to];
        let Some(start) = listener.first_frame_at else {
            return Vec::new();
        };
        let heard = onsets(&listener.listener.pcm, talker.talker.tone.freq, AMP * 0.3);
        heard
            .into_iter()
            .filter_map(|sample| {
                let at = start + Duration::from_secs_f64(sample as f64 / 48_000.0);
                let sent = talker.onsets_sent.iter().rev().find(|s| **s <= at)?;
                Some(at - *sent)
            })
            .collect()
    }
}

fn send_one(t: &mut SimTalker, now: Duration) {
    let k = t.frames_sent;
    let (on, send) = match t.pattern {
        Pattern::Continuous => (true, true),
        Pattern::Spurts { on, off } => {
            let talking = k % (on + off) < on;
            (talking, talking)
        }
        Pattern::Bursts { on, off } => (k % (on + off) < on, true),
    };
    let starts = match t.pattern {
        Pattern::Continuous => k == 0,
        Pattern::Spurts { on, off } | Pattern::Bursts { on, off } => k.is_multiple_of(on + off),
    };
    if starts {
        t.onsets_sent.push(now);
    }
    if send {
        let frame = t.talker.next_frame(on);
        t.net.send(now, frame);
    } else {
        t.talker.pause(1);
    }
    t.frames_sent += 1;
    t.next_send += t.period.div_f64(t.speed);
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Asserts `pcm` holds each of `present` at a healthy level and none of `absent`.
fn assert_hears(pcm: &[f32], present: &[f32], absent: &[f32], who: &str) {
    let loudest = present
        .iter()
        .map(|f| tone_db(pcm, *f))
        .fold(f32::MIN, f32::max);
    for f in present {
        let db = tone_db(pcm, *f);
        // A 0.2 tone is -14 dBFS; allow codec and limiter loss.
        assert!(db > -20.0, "{who} should hear {f} Hz, got {db:.1} dB");
    }
    for f in absent {
        let db = tone_db(pcm, *f);
        assert!(
            db < loudest - 40.0,
            "{who} must not hear {f} Hz: {db:.1} dB vs {loudest:.1} dB"
        );
    }
}

const FREQS: [f32; 4] = [400.0, 650.0, 1000.0, 1500.0];

/// A talker whose clock runs at `speed` times ours, sending tone bursts with silent frames in
/// between (so onsets can be timed while the stream never stops), and a listener, after
/// `seconds` of simulated time.
fn drift_sim(speed: f64, seconds: f64) -> (Sim, ParticipantId, ParticipantId) {
    let mut sim = Sim::new();
    let a = sim.add_talker(
        1,
        1000.0,
        NetemConfig::default(),
        Pattern::Bursts { on: 25, off: 25 },
    );
    sim.talker(a).speed = speed;
    let b = sim.add_listener(2);
    sim.run_until(secs(seconds));
    (sim, a, b)
}

/// Three simulated minutes with the sender's clock at `speed` times ours; asserts that the
/// mouth-to-ear delay and the buffer stay bounded, and returns the talker's counters.
fn drift_run(speed: f64) -> mixer::engine::ParticipantStats {
    let (sim, a, b) = drift_sim(speed, 180.0);
    let (_, buffered) = sim.room.jitter_state(a).expect("state");
    let delays = sim.delays(a, b);
    let max = delays.iter().skip(2).max().expect("onsets");
    assert!(
        *max < Duration::from_millis(60),
        "speed {speed}: delay reached {max:?}"
    );
    assert!(
        buffered <= 4,
        "speed {speed}: buffer holds {buffered} frames"
    );
    sim.room.participant_stats(a).expect("stats")
}

/// Worst 10 ms block of everything in `pcm` that is not the `freq` tone, in dB below the tone.
fn worst_distortion_db(pcm: &[f32], freq: f32) -> f32 {
    distortion_by_block(pcm, freq)
        .into_iter()
        .fold(f32::MIN, f32::max)
}

/// Per 10 ms block: everything that is not the `freq` tone, in dB relative to the tone.
fn distortion_by_block(pcm: &[f32], freq: f32) -> Vec<f32> {
    let block = 480;
    pcm.chunks(block)
        .filter(|c| c.len() == block)
        .map(|chunk| {
            let amp = common::tone_amplitude(chunk, freq);
            // Remove the best-fitting sine of this frequency, measure what is left.
            let w = 2.0 * std::f32::consts::PI * freq / 48_000.0;
            let (mut s, mut c) = (0.0f32, 0.0f32);
            for (i, x) in chunk.iter().enumerate() {
                s += x * (w * i as f32).sin();
                c += x * (w * i as f32).cos();
            }
            let (a, b) = (2.0 * s / block as f32, 2.0 * c / block as f32);
            let residual: f32 = chunk
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let r = x - a * (w * i as f32).sin() - b * (w * i as f32).cos();
                    r * r
                })
                .sum::<f32>()
                / block as f32;
            10.0 * (residual.max(1e-12)).log10() - 20.0 * (amp / 2f32.sqrt()).max(1e-9).log10()
        })
        .collect()
}

/// Runs a talker with 1 s spurts and 2 s pauses (nothing sent while paused) to a listener for
/// 10 s, with or without `send_silence`; returns the listener's client-side state.
fn pause_run(send_silence: bool) -> (Sim, ParticipantId, ParticipantId) {
    let mut sim = Sim::with_config(EngineConfig {
        send_silence,
        ..EngineConfig::default()
    });
    let a = sim.add_talker(
        1,
        650.0,
        NetemConfig::default(),
        Pattern::Spurts { on: 50, off: 100 },
    );
    let b = sim.add_listener(2);
    sim.run_until(secs(10.0));
    (sim, a, b)
}

/// Talking events for `who`, as (time, started).
fn talking_events(sim: &Sim, who: ParticipantId) -> Vec<(Duration, bool)> {
    sim.events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::TalkingStarted { participant } if *participant == who => Some((*at, true)),
            Event::TalkingStopped { participant } if *participant == who => Some((*at, false)),
            _ => None,
        })
        .collect()
}

/// For each 20 ms block of `pcm`, whether `freq` is in it at a healthy level.
fn blocks_with(pcm: &[f32], freq: f32) -> Vec<bool> {
    pcm.chunks_exact(FRAME_SAMPLES)
        .map(|block| tone_db(block, freq) > -30.0)
        .collect()
}
