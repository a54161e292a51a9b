//! Deterministic simulation of whole rooms on a virtual clock.
//!
//! Talkers encode real tones with Opus, a seeded network emulator delays, reorders, duplicates
//! and drops their packets, the engine mixes on its own tick schedule, and every participant's
//! output is decoded and checked as audio: who is heard, who is not, at what level, with what
//! delay, and without clicks. Nothing here reads the wall clock, so every run is identical.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{
    Listener, Netem, NetemConfig, Talker, max_step, onsets, tone_db, tone_step_bound,
};
use mixer::engine::floor::{FloorChange, FloorConfig, FloorEnd, FloorPolicy, FloorReply};
use mixer::engine::{EngineConfig, EngineError, Event, ParticipantId, Room};
use mixer_protocol::{AudioFrame, FRAME_SAMPLES, Mode};

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
}

impl Sim {
    fn new() -> Sim {
        Sim::with_config(EngineConfig::default())
    }

    fn with_config(config: EngineConfig) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: Duration::ZERO,
            next_tick: Duration::ZERO,
            room: Room::new(config, t0).expect("room"),
            talkers: HashMap::new(),
            listeners: HashMap::new(),
            events: Vec::new(),
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
                talker: Talker::new(freq, AMP),
                net: Netem::new(net, u64::from(id.0) * 7919 + 1),
                pattern,
                speed: 1.0,
                next_send: self.now + Duration::from_micros(3_700 * u64::from(id.0 % 5)),
                frames_sent: 0,
                onsets_sent: Vec::new(),
                active: true,
                rejected: 0,
            },
        );
        self.listeners.insert(
            id,
            SimListener {
                listener: Listener::default(),
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
                listener: Listener::default(),
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
    t.next_send += TICK.div_f64(t.speed);
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

#[test]
fn four_talkers_hear_each_other_but_not_themselves_and_a_listener_hears_all() {
    let mut sim = Sim::new();
    let ids = sim.add_tone_talkers(4);
    let listener = sim.add_listener(9);
    sim.run_until(secs(4.0));
    for (i, id) in ids.iter().enumerate() {
        let pcm = sim.heard(*id).window(secs(1.0), secs(3.9));
        let others: Vec<f32> = FREQS
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, f)| *f)
            .collect();
        assert_hears(pcm, &others, &[FREQS[i]], &format!("talker {i}"));
        let bound = tone_step_bound(&others.iter().map(|f| (*f, AMP)).collect::<Vec<_>>());
        assert!(
            max_step(pcm) < bound * 1.5 + 0.02,
            "click in talker {i}'s mix: {} vs {bound}",
            max_step(pcm)
        );
    }
    assert_hears(
        sim.heard(listener).window(secs(1.0), secs(3.9)),
        &FREQS,
        &[],
        "listener",
    );
    for id in ids {
        let stats = sim.room.participant_stats(id).expect("stats");
        assert_eq!(stats.jitter.lost, 0);
        assert_eq!(stats.decode_errors, 0);
        assert_eq!(sim.heard(id).sequence_gaps, 0);
    }
}

#[test]
fn jitter_reordering_and_duplicates_are_absorbed() {
    let mut sim = Sim::new();
    let net = NetemConfig {
        jitter: Duration::from_millis(60),
        duplicate: 0.05,
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 400.0, net, Pattern::Continuous);
    let b = sim.add_talker(2, 1000.0, NetemConfig::default(), Pattern::Continuous);
    sim.run_until(secs(20.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(stats.jitter.duplicates > 10, "{stats:?}");
    // 60 ms of uniform jitter reorders constantly; after the buffer adapts nothing more is lost.
    assert!(stats.jitter.lost + stats.jitter.late < 20, "{stats:?}");
    let pcm = sim.heard(b).window(secs(5.0), secs(19.0));
    assert_hears(pcm, &[400.0], &[1000.0], "b");
    let (target, _) = sim.room.jitter_state(a).expect("talker");
    assert!(
        target >= Duration::from_millis(60),
        "target {target:?} should cover the jitter"
    );
    // Smooth after adaptation: no gaps or clicks in the last 14 s.
    assert!(
        max_step(pcm) < tone_step_bound(&[(400.0, AMP)]) * 1.5 + 0.02,
        "click: {}",
        max_step(pcm)
    );
}

#[test]
fn loss_bursts_are_concealed_and_fec_recovers_single_losses() {
    let mut sim = Sim::new();
    let net = NetemConfig {
        loss: 0.05,
        burst: 0.3,
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 650.0, net, Pattern::Continuous);
    let b = sim.add_listener(2);
    sim.run_until(secs(30.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    let sent_lost = sim.talkers[&a].net.lost;
    assert!(
        sent_lost > 50,
        "the network should have lost packets: {sent_lost}"
    );
    // A steady tone gives libopus little reason to spend bits on LBRR, so only a few packets
    // carry FEC (the codec test checks the detection itself); the ones that did were used.
    assert!(stats.jitter.fec_recovered > 0, "{stats:?}");
    assert!(
        stats.jitter.lost + stats.jitter.fec_recovered + stats.jitter.expanded >= sent_lost / 2,
        "{stats:?}"
    );
    // The tone stays present throughout, at a level close to the clean one.
    let pcm = sim.heard(b).window(secs(1.0), secs(29.0));
    assert!(tone_db(pcm, 650.0) > -18.0, "{} dB", tone_db(pcm, 650.0));
    assert_eq!(
        sim.heard(b).sequence_gaps,
        0,
        "the server's own stream has no gaps"
    );
}

#[test]
fn late_packets_are_dropped_and_counted() {
    let mut sim = Sim::new();
    // Every packet 10 ms late except a few that take 300 ms: far beyond the 200 ms ceiling.
    let net = NetemConfig {
        stall: Some((secs(5.0), secs(5.4))),
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 400.0, net, Pattern::Continuous);
    let b = sim.add_listener(2);
    sim.run_until(secs(12.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(
        stats.jitter.late > 0 || stats.jitter.merged > 0,
        "{stats:?}"
    );
    // Delay does not stay inflated by the stall: after it, the tone is back with low delay.
    let pcm = sim.heard(b).window(secs(8.0), secs(11.9));
    assert_hears(pcm, &[400.0], &[], "listener after the stall");
    let (target, buffered) = sim.room.jitter_state(a).expect("state");
    assert!(
        buffered <= 12,
        "buffer holds {buffered} frames, target {target:?}"
    );
}

#[test]
fn sequence_and_timestamp_wrap_around_plays_seamlessly() {
    let mut sim = Sim::new();
    let a = sim.add_talker(1, 1000.0, NetemConfig::default(), Pattern::Continuous);
    sim.talker(a).talker.sequence = 65_500;
    sim.talker(a).talker.timestamp = u32::MAX - 960 * 30;
    let b = sim.add_listener(2);
    sim.run_until(secs(4.0));
    let stats = sim.room.participant_stats(a).expect("stats");
    assert_eq!(stats.jitter.lost, 0, "{stats:?}");
    assert_eq!(stats.jitter.late, 0, "{stats:?}");
    assert_eq!(stats.jitter.resets, 0, "{stats:?}");
    let pcm = sim.heard(b).window(secs(0.5), secs(3.9));
    assert_hears(pcm, &[1000.0], &[], "listener across the wrap");
    assert!(
        max_step(pcm) < tone_step_bound(&[(1000.0, AMP)]) * 1.5 + 0.02,
        "click at wrap: {}",
        max_step(pcm)
    );
}

#[test]
fn joining_and_leaving_mid_stream_changes_who_is_heard_without_clicks() {
    let mut sim = Sim::new();
    let a = sim.add_talker(1, 400.0, NetemConfig::default(), Pattern::Continuous);
    sim.run_until(secs(2.0));
    let c = sim.add_talker(3, 1500.0, NetemConfig::default(), Pattern::Continuous);
    sim.run_until(secs(4.0));
    sim.remove(c);
    sim.run_until(secs(6.0));
    let heard = sim.heard(a);
    // A's output starts at t=0: before C joined, while C was in, after C left.
    assert!(tone_db(heard.window(secs(0.5), secs(1.9)), 1500.0) < -60.0);
    assert_hears(
        heard.window(secs(2.5), secs(3.9)),
        &[1500.0],
        &[400.0],
        "a while c is in",
    );
    assert!(
        tone_db(heard.window(secs(4.2), secs(5.9)), 1500.0) < -60.0,
        "c still heard after leaving"
    );
    // C's own output, while it was in, is A only.
    assert_hears(
        sim.heard(c).window(secs(0.5), secs(1.9)),
        &[400.0],
        &[1500.0],
        "c",
    );
    assert!(
        max_step(heard.window(secs(0.5), secs(5.9)))
            < tone_step_bound(&[(1500.0, AMP)]) * 2.0 + 0.05
    );
}

#[test]
fn talk_spurts_play_silence_between_and_do_not_grow_the_delay() {
    let mut sim = Sim::new();
    let net = NetemConfig {
        jitter: Duration::from_millis(15),
        ..NetemConfig::default()
    };
    // 1 s of speech, 1 s of nothing sent, 30 times.
    let a = sim.add_talker(1, 650.0, net, Pattern::Spurts { on: 50, off: 50 });
    let b = sim.add_listener(2);
    sim.run_until(secs(60.0));
    let delays = sim.delays(a, b);
    assert!(
        delays.len() >= 28,
        "expected ~30 onsets, got {}",
        delays.len()
    );
    let first = delays[1];
    let last = *delays.last().expect("onsets");
    assert!(
        last <= first + Duration::from_millis(25),
        "delay grew from {first:?} to {last:?}"
    );
    assert!(last < Duration::from_millis(120), "delay {last:?}");
    // Between spurts the listener hears silence, not a frozen or looping frame.
    let gap = sim.heard(b).window(secs(51.3), secs(51.9));
    assert!(
        tone_db(gap, 650.0) < -50.0,
        "tone during a pause: {} dB",
        tone_db(gap, 650.0)
    );
    let stats = sim.room.participant_stats(a).expect("stats");
    assert!(
        stats.jitter.underruns >= 25,
        "each pause ends a spurt: {stats:?}"
    );
}

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

#[test]
fn a_fast_sender_clock_does_not_grow_the_delay() {
    let stats = drift_run(1.001);
    // 180 s at +0.1 % is 9 extra frames; they must have been shed.
    assert!(stats.jitter.merged >= 5, "{stats:?}");
}

#[test]
fn a_slow_sender_clock_is_absorbed_without_growing_gaps() {
    let stats = drift_run(0.999);
    assert!(stats.jitter.expanded >= 5, "{stats:?}");
}

#[test]
fn a_jitter_spike_raises_the_delay_which_then_shrinks_back() {
    let mut sim = Sim::new();
    // A 300 ms stall at t = 10 s (a TCP retransmission), otherwise a clean link.
    let net = NetemConfig {
        stall: Some((secs(10.0), secs(10.3))),
        ..NetemConfig::default()
    };
    let a = sim.add_talker(1, 1000.0, net, Pattern::Bursts { on: 25, off: 25 });
    let b = sim.add_listener(2);
    sim.run_until(secs(9.0));
    let (before, _) = sim.room.jitter_state(a).expect("state");
    sim.run_until(secs(10.6));
    let (during, _) = sim.room.jitter_state(a).expect("state");
    sim.run_until(secs(30.0));
    let (after, buffered) = sim.room.jitter_state(a).expect("state");
    assert!(
        during > before,
        "target should rise: {before:?} -> {during:?}"
    );
    assert!(
        after <= before + Duration::from_millis(20),
        "target should shrink back: {after:?}"
    );
    assert!(buffered <= 4, "{buffered} frames still buffered");
    let delays = sim.delays(a, b);
    let late = delays.iter().rev().take(5).max().expect("onsets");
    assert!(
        *late < Duration::from_millis(100),
        "delay after recovery {late:?}"
    );
}

#[test]
fn a_town_hall_pays_one_shared_encode_for_all_listeners() {
    let mut sim = Sim::new();
    let talkers = sim.add_tone_talkers(3);
    let listeners: Vec<_> = (0..30).map(|i| sim.add_listener(100 + i)).collect();
    sim.run_until(secs(1.0));
    let (ticks, encodes) = (sim.room.stats().ticks, sim.room.stats().encodes);
    sim.run_until(secs(3.0));
    let per_tick =
        (sim.room.stats().encodes - encodes) as f64 / (sim.room.stats().ticks - ticks) as f64;
    // Three talkers' own mix-minus streams plus one shared stream, whatever the audience size.
    assert_eq!(per_tick, 4.0);
    for id in &listeners {
        assert_hears(
            sim.heard(*id).window(secs(1.0), secs(2.9)),
            &FREQS[..3],
            &[],
            "listener",
        );
    }
    for (i, id) in talkers.iter().enumerate() {
        let others: Vec<f32> = (0..3).filter(|j| *j != i).map(|j| FREQS[j]).collect();
        assert_hears(
            sim.heard(*id).window(secs(1.0), secs(2.9)),
            &others,
            &[FREQS[i]],
            "talker",
        );
    }
}

#[test]
fn moving_between_own_and_shared_streams_is_click_free() {
    let mut sim = Sim::new();
    // A talks in spurts (sending nothing in between), so it moves between its own stream and
    // the shared one every second; B's tone plays throughout.
    let a = sim.add_talker(
        1,
        650.0,
        NetemConfig::default(),
        Pattern::Spurts { on: 50, off: 50 },
    );
    let _b = sim.add_talker(2, 400.0, NetemConfig::default(), Pattern::Continuous);
    sim.run_until(secs(12.0));
    assert!(sim.room.stats().primes >= 5, "{:?}", sim.room.stats());
    let heard = sim.heard(a).window(secs(1.0), secs(11.9));
    // What A hears (B's tone) stays continuous and level across every switch.
    let bound = tone_step_bound(&[(400.0, AMP)]);
    assert!(
        max_step(heard) < bound * 1.5 + 0.02,
        "click: step {} vs bound {bound}",
        max_step(heard)
    );
    let levels: Vec<f32> = heard
        .chunks(4800)
        .map(|block| tone_db(block, 400.0))
        .collect();
    let (lo, hi) = levels
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), l| (lo.min(*l), hi.max(*l)));
    assert!(
        hi - lo < 1.5,
        "B's level wanders from {lo:.1} to {hi:.1} dB across switches"
    );
    // No 10 ms block carries more than codec noise: a switch between encoders whose states
    // differ shows up here (about -17 dB when the shared encoder starts cold).
    let worst = worst_distortion_db(heard, 400.0);
    assert!(
        worst < -30.0,
        "distortion up to {worst:.1} dB relative to the tone"
    );
    // And A never hears itself, on either stream.
    assert!(tone_db(heard, 650.0) < tone_db(heard, 400.0) - 40.0);
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

#[test]
fn silent_uplinks_are_not_decoded_and_a_silent_room_is_not_encoded() {
    let mut sim = Sim::new();
    // A sends encoded silence (no voice activity, -127 dBov) every frame; B talks in bursts with
    // silent frames in between; C only listens.
    let a = sim.add_talker(
        1,
        300.0,
        NetemConfig::default(),
        Pattern::Bursts { on: 0, off: 1 },
    );
    let b = sim.add_talker(
        2,
        1000.0,
        NetemConfig::default(),
        Pattern::Bursts { on: 25, off: 25 },
    );
    let c = sim.add_listener(3);
    sim.run_until(secs(10.0));
    let ticks = sim.room.stats().ticks;
    let quiet = sim.room.participant_stats(a).expect("a");
    assert!(
        quiet.frames_decoded <= 10,
        "a silent talker was decoded: {quiet:?}"
    );
    assert!(
        quiet.frames_skipped as f64 > ticks as f64 * 0.9,
        "{quiet:?}"
    );
    let bursty = sim.room.participant_stats(b).expect("b");
    // B's silent halves are skipped after a short hangover; its tone still comes through whole.
    assert!(
        bursty.frames_skipped as f64 > ticks as f64 * 0.3,
        "{bursty:?}"
    );
    let heard = sim.heard(c).window(secs(1.0), secs(9.9));
    assert_hears(heard, &[1000.0], &[300.0], "listener");
    assert!(
        max_step(heard) < tone_step_bound(&[(1000.0, AMP)]) * 1.5 + 0.02,
        "click: {}",
        max_step(heard)
    );
    assert!(
        sim.delays(b, c)
            .iter()
            .skip(1)
            .all(|d| *d < Duration::from_millis(60))
    );

    // Now B leaves: the room is silent, so after the encoders settle nothing is encoded and
    // nothing is sent: every participant's frames are paused.
    sim.remove(b);
    sim.run_until(secs(11.0));
    let (ticks, encodes, frames) = (
        sim.room.stats().ticks,
        sim.room.stats().encodes,
        sim.heard(c).frames,
    );
    let paused = sim.room.participant_stats(c).expect("c").frames_paused;
    sim.run_until(secs(13.0));
    assert_eq!(
        sim.room.stats().encodes,
        encodes,
        "a silent room kept encoding"
    );
    assert_eq!(sim.heard(c).frames, frames, "a silent room kept sending");
    assert_eq!(
        sim.room.participant_stats(c).expect("c").frames_paused - paused,
        sim.room.stats().ticks - ticks
    );
    // The frames sent before the pause let the listener's decoder fade all the way to silence.
    let pcm = &sim.heard(c).pcm;
    let tail = &pcm[pcm.len() - FRAME_SAMPLES..];
    assert!(
        tail.iter().all(|s| s.abs() < 1e-4),
        "the stream paused before it was silent"
    );
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

#[test]
fn a_silent_mix_pauses_the_stream_and_resumes_inaudibly_with_a_marker() {
    let (dtx, a, b) = pause_run(false);
    let (continuous, _, _) = pause_run(true);
    let ticks = dtx.room.stats().ticks as usize;
    let paused = dtx.heard(b);
    let steady = continuous.heard(b);
    // Without pausing, a frame every tick; with it, each 2 s pause is (almost all) not sent.
    assert_eq!(steady.pauses, 0);
    assert_eq!(steady.frames, ticks);
    assert!(paused.pauses >= 3, "{} pauses", paused.pauses);
    assert!(
        paused.paused_frames > 3 * 80 && paused.frames < ticks / 2,
        "{} frames sent, {} paused",
        paused.frames,
        paused.paused_frames
    );
    assert_eq!(paused.sequence_gaps, 0, "a pause looked like loss");
    assert_eq!(
        dtx.room.participant_stats(b).expect("b").frames_paused as usize + paused.frames,
        ticks,
        "every tick is a frame sent or a frame paused"
    );
    // The talker is alone, so its own mix-minus is silent throughout: it is sent at most a
    // couple of silence frames per spurt (16 before priming counted towards settling).
    assert!(dtx.heard(a).frames <= 8, "{}", dtx.heard(a).frames);
    // What the listener hears is the same with or without the pauses: the talker in every
    // spurt, silence in between, and no click where the stream resumes.
    let n = paused.pcm.len().min(steady.pcm.len());
    assert!(n > ticks * FRAME_SAMPLES * 9 / 10, "{n}");
    let difference = paused.pcm[..n]
        .iter()
        .zip(&steady.pcm[..n])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        difference < 0.01,
        "pausing changed the audio by {difference}"
    );
    for spurt in 0..3 {
        let start = 3.0 * spurt as f64;
        assert_hears(
            paused.window(secs(start + 0.2), secs(start + 0.9)),
            &[650.0],
            &[],
            "listener in a spurt",
        );
        let gap = paused.window(secs(start + 1.4), secs(start + 2.8));
        assert!(tone_db(gap, 650.0) < -50.0, "tone in a pause");
    }
    assert!(max_step(&paused.pcm) < tone_step_bound(&[(650.0, AMP)]) * 1.5 + 0.02);
}

#[test]
fn the_talker_cap_mixes_the_loudest_without_flicker_or_clicks() {
    let config = EngineConfig {
        max_talkers: 2,
        ..EngineConfig::default()
    };
    let mut sim = Sim::with_config(config);
    let loud = sim.add_talker(1, 400.0, NetemConfig::default(), Pattern::Continuous);
    let _medium = sim.add_talker(2, 1000.0, NetemConfig::default(), Pattern::Continuous);
    let quiet = sim.add_talker(3, 1500.0, NetemConfig::default(), Pattern::Continuous);
    sim.talker(loud).talker.tone.amp = 0.3;
    sim.talker(quiet).talker.tone.amp = 0.05;
    let listener = sim.add_listener(9);
    sim.run_until(secs(4.0));
    // Three talk at once with room for two: the quiet one is left out, steadily.
    let heard = sim.heard(listener).window(secs(1.0), secs(3.9));
    assert!(tone_db(heard, 400.0) > -15.0 && tone_db(heard, 1000.0) > -20.0);
    assert!(
        tone_db(heard, 1500.0) < -60.0,
        "capped talker heard at {:.1} dB",
        tone_db(heard, 1500.0)
    );
    let capped = sim.room.stats().capped;
    assert!(capped >= 190, "{:?}", sim.room.stats());
    // Two own streams plus the shared one: the cap bounds the encodes.
    let (ticks, encodes) = (sim.room.stats().ticks, sim.room.stats().encodes);
    // The loud talker stops: the quiet one takes its place, faded in, and is heard.
    sim.talkers.get_mut(&loud).expect("loud").active = false;
    sim.run_until(secs(8.0));
    let per_tick =
        (sim.room.stats().encodes - encodes) as f64 / (sim.room.stats().ticks - ticks) as f64;
    assert!(
        per_tick <= 3.1,
        "{per_tick} encodes per tick with a cap of 2"
    );
    let after = sim.heard(listener).window(secs(5.0), secs(7.9));
    assert!(
        tone_db(after, 1500.0) > -35.0,
        "quiet talker not heard after the loud one left"
    );
    let swap = sim.heard(listener).window(secs(3.5), secs(5.0));
    let bound = tone_step_bound(&[(400.0, 0.3), (1000.0, AMP), (1500.0, 0.05)]);
    assert!(
        max_step(swap) < bound * 1.5 + 0.02,
        "click at the swap: {} vs {bound}",
        max_step(swap)
    );
}

#[test]
fn shared_frames_are_identical_for_all_listeners_and_every_stream_stays_continuous() {
    let mut sim = Sim::new();
    let talker = sim.add_talker(
        1,
        650.0,
        NetemConfig::default(),
        Pattern::Spurts { on: 30, off: 30 },
    );
    let listeners: Vec<_> = (0..3).map(|i| sim.add_listener(10 + i)).collect();
    sim.run_until(secs(1.0));
    // A late joiner picks up the room's numbering mid-stream.
    let late = sim.add_listener(20);
    sim.run_until(secs(1.2));
    let (mut sent_ticks, mut paused_ticks) = (0, 0);
    for _ in 0..100 {
        let now = sim.next_tick;
        sim.room.handle_timeout(sim.t0 + now);
        let mut frames = Vec::new();
        while let Some(tx) = sim.room.poll_transmit() {
            frames.push((tx.to, tx.header, tx.frame().to_vec()));
        }
        let shared: Vec<&(ParticipantId, _, Vec<u8>)> = frames
            .iter()
            .filter(|(to, _, _)| listeners.contains(to) || *to == late)
            .collect();
        // Between spurts the shared mix is silent and paused for all its listeners at once.
        if shared.is_empty() {
            paused_ticks += 1;
        } else {
            assert_eq!(shared.len(), 4);
            sent_ticks += 1;
        }
        assert!(
            shared.windows(2).all(|w| w[0].2 == w[1].2),
            "listeners got different bytes"
        );
        // The talker's own stream (silent while alone, so mostly paused) carries the same
        // numbering on the same tick.
        if let (Some(own), Some(first)) = (
            frames.iter().find(|(to, _, _)| *to == talker),
            shared.first(),
        ) {
            assert_eq!(own.1.sequence, first.1.sequence);
            assert_eq!(own.1.timestamp, first.1.timestamp);
        }
        for (to, _, bytes) in &frames {
            sim.listeners
                .get_mut(to)
                .expect("participant")
                .listener
                .receive_wire(bytes);
        }
        sim.next_tick = sim.room.poll_timeout().duration_since(sim.t0);
        sim.run_until(now + Duration::from_millis(19));
    }
    sim.run_until(sim.now + secs(1.0));
    // 30 ticks on, 30 off: the pause is shorter than the gap by the jitter-buffer delay and
    // the frames that let the decoder settle.
    assert!(
        sent_ticks > 30 && paused_ticks > 15,
        "{sent_ticks} / {paused_ticks}"
    );
    for id in listeners.iter().chain([&talker, &late]) {
        assert_eq!(sim.heard(*id).sequence_gaps, 0);
    }
}

#[test]
fn a_tick_split_across_two_threads_produces_exactly_the_same_audio() {
    let run = |parallel_threshold: Option<usize>| {
        let config = EngineConfig {
            parallel_threshold,
            ..EngineConfig::default()
        };
        let mut sim = Sim::with_config(config);
        let net = NetemConfig {
            jitter: Duration::from_millis(30),
            loss: 0.02,
            ..NetemConfig::default()
        };
        let talkers: Vec<_> = (0..6)
            .map(|i| {
                sim.add_talker(
                    i + 1,
                    300.0 + 170.0 * i as f32,
                    net.clone(),
                    Pattern::Spurts { on: 40, off: 20 },
                )
            })
            .collect();
        let listener = sim.add_listener(50);
        sim.run_until(secs(4.0));
        let mut heard: Vec<Vec<f32>> = talkers
            .iter()
            .map(|id| sim.heard(*id).pcm.clone())
            .collect();
        heard.push(sim.heard(listener).pcm.clone());
        (heard, sim.room.stats().clone())
    };
    let (serial, serial_stats) = run(None);
    let (parallel, parallel_stats) = run(Some(2));
    assert_eq!(serial_stats, parallel_stats);
    assert!(serial.iter().all(|pcm| pcm.len() > 150_000));
    assert!(serial == parallel, "splitting the tick changed the audio");
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

#[test]
fn talking_events_follow_speech_with_hysteresis_not_packets() {
    let mut sim = Sim::new();
    // 1 s spurts, 1 s pauses (nothing sent), and within each spurt the Talker's own 20 ms
    // frames; the tone has no gaps, so one start and one stop per spurt are expected.
    let a = sim.add_talker(
        1,
        650.0,
        NetemConfig::default(),
        Pattern::Spurts { on: 50, off: 50 },
    );
    let listener = sim.add_listener(2);
    sim.run_until(secs(10.0));
    let events = talking_events(&sim, a);
    assert_eq!(events.len(), 10, "{events:?}");
    for (k, pair) in events.chunks(2).enumerate() {
        let spurt = secs(2.0 * k as f64);
        let (started, stopped) = (pair[0], pair[1]);
        assert!(started.1 && !stopped.1, "{events:?}");
        // Start: after the jitter-buffer delay and two loud frames; stop: 300 ms after the end.
        assert!(
            started.0 > spurt && started.0 < spurt + secs(0.15),
            "{started:?}"
        );
        let end = spurt + secs(1.0);
        assert!(
            stopped.0 > end + secs(0.25) && stopped.0 < end + secs(0.45),
            "{stopped:?}"
        );
    }
    assert!(talking_events(&sim, listener).is_empty());
}

#[test]
fn a_muted_talker_fades_out_is_not_heard_and_comes_back_when_unmuted() {
    let mut sim = Sim::new();
    let talkers = sim.add_tone_talkers(2);
    let (a, b) = (talkers[0], talkers[1]);
    let listener = sim.add_listener(10);
    sim.run_until(secs(2.0));
    assert!(sim.room.set_muted(a, true).expect("present"));
    assert!(
        !sim.room.set_muted(a, true).expect("present"),
        "already muted"
    );
    sim.run_until(secs(2.03));
    assert_eq!(
        talking_events(&sim, a).last().map(|e| e.1),
        Some(false),
        "muting stops the talking indicator at once"
    );
    sim.run_until(secs(4.0));
    sim.room.set_muted(a, false).expect("present");
    sim.run_until(secs(6.0));
    let heard = sim.heard(listener);
    assert_hears(
        heard.window(secs(0.5), secs(1.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "before",
    );
    assert_hears(
        heard.window(secs(2.2), secs(3.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "muted",
    );
    assert_hears(
        heard.window(secs(4.3), secs(5.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "unmuted",
    );
    // Muting mid-tone fades it out rather than cutting it.
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(1.5), secs(6.0))) < bound,
        "click"
    );
    assert!(
        sim.talkers[&a].rejected > 80,
        "{}",
        sim.talkers[&a].rejected
    );
    let stats = sim.room.participant_stats(a).expect("a");
    assert_eq!(stats.frames_muted, sim.talkers[&a].rejected);
    let _ = b;
}

#[test]
fn single_floor_push_to_talk_mixes_only_the_holder_until_its_turn_ends() {
    let mut sim = Sim::with_config(EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(3),
            silence_timeout: Duration::from_secs(1),
        },
        ..EngineConfig::default()
    });
    // Two push-to-talk users who both keep transmitting (a stuck button, or impatience).
    let a = sim.add_sender(
        1,
        FREQS[0],
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let b = sim.add_sender(
        2,
        FREQS[1],
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let listener = sim.add_listener(10);
    sim.run_until(secs(0.5));
    let now = sim.t0 + sim.now;
    assert!(matches!(
        sim.room.request_floor(a, false, now),
        Ok(FloorReply::Granted { .. })
    ));
    assert_eq!(
        sim.room.request_floor(b, false, now).expect("b"),
        FloorReply::Denied { holder: a }
    );
    sim.run_until(secs(2.5));
    assert!(sim.room.release_floor(a).expect("a"));
    let now = sim.t0 + sim.now;
    assert!(matches!(
        sim.room.request_floor(b, false, now),
        Ok(FloorReply::Granted { .. })
    ));
    // B keeps talking past its 3 s turn: the floor is revoked at 5.5 s and B goes unheard.
    sim.run_until(secs(8.0));
    let heard = sim.heard(listener);
    assert_hears(
        heard.window(secs(0.8), secs(2.4)),
        &[FREQS[0]],
        &[FREQS[1]],
        "A's turn",
    );
    assert_hears(
        heard.window(secs(2.8), secs(5.4)),
        &[FREQS[1]],
        &[FREQS[0]],
        "B's turn",
    );
    let after = heard.window(secs(5.8), secs(7.9));
    assert!(
        tone_db(after, FREQS[1]) < -60.0 && tone_db(after, FREQS[0]) < -60.0,
        "after the turn"
    );
    let floor: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Floor(change) => Some((*at, *change)),
            _ => None,
        })
        .collect();
    assert!(matches!(floor[0].1, FloorChange::Granted { to, .. } if to == a));
    assert!(
        matches!(floor[1].1, FloorChange::Ended { from, reason: FloorEnd::Released } if from == a)
    );
    assert!(matches!(floor[2].1, FloorChange::Granted { to, .. } if to == b));
    assert!(
        matches!(floor[3].1, FloorChange::Ended { from, reason: FloorEnd::MaxTalkTime } if from == b)
    );
    assert!(
        floor[3].0 >= secs(5.5) && floor[3].0 < secs(5.6),
        "{:?}",
        floor[3].0
    );
    assert_eq!(floor.len(), 4);
    // Packets without the floor were refused and counted, and no turn change clicks.
    assert!(
        sim.room
            .participant_stats(b)
            .expect("b")
            .frames_without_floor
            > 100
    );
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(0.5), secs(8.0))) < bound,
        "click"
    );
    // A talker leaving while holding the floor frees it.
    let now = sim.t0 + sim.now;
    sim.room.request_floor(a, false, now).expect("a");
    sim.remove(a);
    assert_eq!(sim.room.floor_holder(), None);
}

#[test]
fn input_gain_and_normalisation_balance_loud_and_quiet_speakers() {
    let levels = |normalise: bool, gain_db: f32| {
        let mut sim = Sim::with_config(EngineConfig {
            normalise,
            ..EngineConfig::default()
        });
        let talkers = sim.add_tone_talkers(2);
        sim.talker(talkers[0]).talker.tone.amp = 0.3;
        sim.talker(talkers[1]).talker.tone.amp = 0.03;
        sim.room.set_gain(talkers[1], gain_db).expect("gain");
        let listener = sim.add_listener(10);
        sim.run_until(secs(8.0));
        let tail = sim.heard(listener).window(secs(6.0), secs(7.9));
        (tone_db(tail, FREQS[0]), tone_db(tail, FREQS[1]))
    };
    let (loud, quiet) = levels(false, 0.0);
    assert!((loud - quiet - 20.0).abs() < 2.0, "{loud} vs {quiet}");
    let (loud, quiet) = levels(false, 14.0);
    assert!(
        (loud - quiet - 6.0).abs() < 2.0,
        "+14 dB: {loud} vs {quiet}"
    );
    let (loud, quiet) = levels(true, 0.0);
    assert!((loud - quiet).abs() < 3.0, "normalised: {loud} vs {quiet}");
    let mut sim = Sim::new();
    let a = sim.add_talker(1, 400.0, NetemConfig::default(), Pattern::Continuous);
    assert!(matches!(
        sim.room.set_gain(a, 21.0),
        Err(EngineError::InvalidGain(_))
    ));
    assert!(matches!(
        sim.room.set_gain(a, f32::NAN),
        Err(EngineError::InvalidGain(_))
    ));
}

#[test]
fn a_talker_can_switch_to_listening_and_a_listener_to_talking() {
    let mut sim = Sim::new();
    let talkers = sim.add_tone_talkers(2);
    let (a, c) = (talkers[0], talkers[1]);
    let b = sim.add_listener(10);
    sim.run_until(secs(2.0));
    // A only listens from now on: its audio is refused and nobody hears it any more.
    sim.room.set_mode(a, Mode::Listen).expect("a");
    sim.run_until(secs(4.0));
    // B takes a microphone: it gets a stream of its own and goes on hearing C.
    sim.room.set_mode(b, Mode::Talk).expect("b");
    sim.run_until(secs(6.0));
    let heard = sim.heard(b);
    assert_hears(
        heard.window(secs(0.5), secs(1.9)),
        &[FREQS[0], FREQS[1]],
        &[],
        "before",
    );
    assert_hears(
        heard.window(secs(2.3), secs(3.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "a listening",
    );
    assert_hears(
        heard.window(secs(4.3), secs(5.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "b talking",
    );
    assert_hears(
        sim.heard(a).window(secs(2.3), secs(5.9)),
        &[FREQS[1]],
        &[FREQS[0]],
        "a",
    );
    assert!(
        sim.talkers[&a].rejected > 80,
        "{}",
        sim.talkers[&a].rejected
    );
    let bound = tone_step_bound(&[(FREQS[0], AMP), (FREQS[1], AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard.window(secs(0.5), secs(6.0))) < bound,
        "click"
    );
    assert_eq!(sim.heard(b).sequence_gaps, 0);
    let _ = c;
}

/// For each 20 ms block of `pcm`, whether `freq` is in it at a healthy level.
fn blocks_with(pcm: &[f32], freq: f32) -> Vec<bool> {
    pcm.chunks_exact(FRAME_SAMPLES)
        .map(|block| tone_db(block, freq) > -30.0)
        .collect()
}

#[test]
fn a_late_joiner_hears_the_transmission_from_its_start_then_catches_up_to_live() {
    let mut sim = Sim::with_config(EngineConfig {
        floor: FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(5),
        },
        ..EngineConfig::default()
    });
    let (tone_a, tone_b) = (FREQS[0], FREQS[1]);
    let a = sim.add_sender(
        1,
        tone_a,
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let b = sim.add_sender(
        2,
        tone_b,
        NetemConfig::default(),
        Pattern::Continuous,
        Mode::Ptt,
    );
    let early = sim.add_listener(10);
    sim.run_until(secs(0.5));
    // A talks for 2 s, then B answers for 3.4 s.
    let now = sim.t0 + sim.now;
    sim.room.request_floor(a, false, now).expect("a");
    sim.run_until(secs(1.5));
    // Someone tunes in 1 s into A's message.
    let late = sim.add_listener(11);
    let behind = sim.room.replay_backlog(late).expect("a replay");
    assert!(
        behind >= secs(0.95) && behind <= secs(1.05),
        "1 s behind, got {behind:?}"
    );
    sim.run_until(secs(2.5));
    assert!(sim.room.release_floor(a).expect("a"));
    sim.run_until(secs(2.6));
    let now = sim.t0 + sim.now;
    sim.room.request_floor(b, false, now).expect("b");
    sim.run_until(secs(6.0));
    assert!(sim.room.release_floor(b).expect("b"));
    sim.run_until(secs(7.0));
    // Someone joining when nothing is on the air hears the room live.
    let later = sim.add_listener(12);
    assert_eq!(sim.room.replay_backlog(later), None);

    let heard = &sim.heard(late).pcm;
    let with_a = blocks_with(heard, tone_a);
    let with_b = blocks_with(heard, tone_b);
    // The late joiner's audio starts with the start of A's message...
    assert!(
        with_a[..5].iter().all(|a| *a),
        "A's first words come first: {:?}",
        &with_a[..10]
    );
    // ...and it hears all of it: 2 s of tone, played 1.5x as fast. Live, it would have heard
    // only the last second.
    let a_blocks = with_a.iter().filter(|a| **a).count();
    assert!(
        (60..=75).contains(&a_blocks),
        "{a_blocks} blocks of A's 100 at 1.5x"
    );
    // Then B's answer, replayed from its start as well; the two never overlap, and B's live
    // voice is not heard while the joiner is still behind.
    let first_b = with_b.iter().position(|b| *b).expect("B heard");
    let last_a = with_a.iter().rposition(|a| *a).expect("A heard");
    assert!(
        last_a <= first_b + 1,
        "A ends ({last_a}) before B ({first_b})"
    );
    assert!(
        first_b <= last_a + 3,
        "B's answer follows A's message at once ({last_a} then {first_b})"
    );
    // It catches up: one CaughtUp event, for it, while B still talks.
    let caught_up: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::CaughtUp { .. }))
        .collect();
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    let (at, event) = caught_up[0];
    assert_eq!(*event, Event::CaughtUp { participant: late });
    assert!(*at > secs(2.8) && *at < secs(4.5), "caught up at {at:?}");
    // From then on it hears what the early listener hears, at the same time.
    let early_pcm = &sim.heard(early).pcm;
    let first_block = |who: ParticipantId| {
        (sim.listeners[&who]
            .first_frame_at
            .expect("heard something")
            .as_secs_f64()
            / 0.02)
            .round() as usize
    };
    let offset = first_block(late) - first_block(early);
    assert!(
        (75..=76).contains(&offset),
        "the late joiner's first frame: {offset}"
    );
    let from = ((at.as_secs_f64() + 0.2) / 0.02) as usize;
    let to = (heard.len() / FRAME_SAMPLES + offset).min(early_pcm.len() / FRAME_SAMPLES);
    assert!(to > 305, "both heard the end of B's message");
    for block in from..to {
        let late_block = &heard[(block - offset) * FRAME_SAMPLES..][..FRAME_SAMPLES];
        let early_block = &early_pcm[block * FRAME_SAMPLES..][..FRAME_SAMPLES];
        let (l, e) = (tone_db(late_block, tone_b), tone_db(early_block, tone_b));
        assert!(
            (l - e).abs() < 1.5 || (l < -60.0 && e < -60.0),
            "live after catching up: block {block}: {l:.1} vs {e:.1} dB"
        );
    }
    // No clicks anywhere: not where a pair of frames was merged, not between the messages,
    // not on catching up.
    let bound = tone_step_bound(&[(tone_a, AMP), (tone_b, AMP)]) * 1.5 + 0.02;
    assert!(
        max_step(heard) < bound,
        "click: {} vs {bound}",
        max_step(heard)
    );
    assert_eq!(sim.heard(late).sequence_gaps, 0);
    // Nothing else changed: the early listener heard both messages live.
    assert_hears(
        sim.heard(early).window(secs(0.8), secs(2.4)),
        &[tone_a],
        &[tone_b],
        "early listener, A",
    );
}

#[test]
fn a_talker_back_from_listening_is_heard_live_at_its_old_delay() {
    // (seconds in listen mode, whether the client keeps sending meanwhile (refused) or stops).
    // The talker sends 0.5 s tone spurts every second; it switches to listen mid-spurt, and
    // keeping clients come back in a pause, so any tone heard right after the switch back is
    // audio left over from before it.
    for (listen, keeps_sending) in [(0.4, true), (2.4, true), (2.4, false)] {
        let case = format!("{listen} s in listen mode, keeps sending: {keeps_sending}");
        let mut sim = Sim::new();
        let net = NetemConfig {
            jitter: Duration::from_millis(20),
            ..NetemConfig::default()
        };
        let a = sim.add_talker(1, 650.0, net, Pattern::Spurts { on: 25, off: 25 });
        let listener = sim.add_listener(9);
        let switch = 4.3;
        sim.run_until(secs(switch));
        let before = sim.delays(a, listener);
        let delay = before[before.len() / 2];
        sim.room.set_mode(a, Mode::Listen).expect("a");
        sim.talker(a).active = keeps_sending;
        let back = switch + listen;
        sim.run_until(secs(back));
        if !keeps_sending {
            // The client stopped sending: it resumes with the next sequence number and a
            // timestamp that moved on with the time it was silent.
            let now = sim.now;
            let t = sim.talker(a);
            t.active = true;
            t.next_send = now;
            t.talker.pause((listen / 0.02) as u32);
        }
        sim.room.set_mode(a, Mode::Talk).expect("a");
        sim.run_until(secs(back + 5.0));

        // The resumed talker's first tone is heard at its old delay: the next spurt it sends,
        // or (a client that stopped) the tone it resumes with at once.
        let first_sent = if keeps_sending {
            *sim.talkers[&a]
                .onsets_sent
                .iter()
                .find(|s| **s > secs(back))
                .expect("spurts after the switch back")
        } else {
            secs(back)
        };
        let start = sim.listeners[&listener].first_frame_at.expect("frames");
        let first_heard = onsets(&sim.heard(listener).pcm, 650.0, AMP * 0.3)
            .into_iter()
            .map(|s| start + Duration::from_secs_f64(s as f64 / 48_000.0))
            .find(|at| *at > secs(back))
            .expect("heard again");
        // (Heard before it was sent is stale audio.)
        let resumed = first_heard.checked_sub(first_sent);
        assert!(
            resumed.is_some_and(|d| d.abs_diff(delay) < Duration::from_millis(40)),
            "{case}: tone sent at {first_sent:?} first heard at {first_heard:?}; delay before the \
             switch {delay:?}"
        );
        // And so are the spurts after it. (An onset heard a spurt's length or more after the
        // last one sent is the tone coming back after a short dip within a spurt, which this
        // talker's pattern and network show now and then without any switch.)
        let after: Vec<Duration> = sim.delays(a, listener)[before.len()..]
            .iter()
            .copied()
            .filter(|d| *d < Duration::from_millis(500))
            .collect();
        assert!(after.len() >= 4, "{case}: {after:?}");
        for d in &after {
            assert!(
                d.abs_diff(delay) < Duration::from_millis(40),
                "{case}: delay {d:?} after the switch back, {delay:?} before ({after:?})"
            );
        }
        let heard = sim.heard(listener);
        let silent = |from: f64, to: f64, what: &str| {
            let db = tone_db(heard.window(secs(from), secs(to)), 650.0);
            assert!(db < -40.0, "{case}: {what}: {db:.1} dB");
        };
        let delay = delay.as_secs_f64();
        silent(switch + delay + 0.06, back, "heard while listening");
        // Audio sent after the switch back cannot be heard before its delay.
        silent(
            back,
            back + delay - 0.03,
            "stale audio after the switch back",
        );
        let bound = tone_step_bound(&[(650.0, AMP)]);
        let step = max_step(heard.window(secs(1.0), secs(back + 5.0)));
        assert!(
            step < bound * 1.5 + 0.02,
            "{case}: click: {step} vs {bound}"
        );
    }
}
