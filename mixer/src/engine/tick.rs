//! One tick of a [`Room`], step by step (see the module docs of [`super`]).

use std::collections::VecDeque;
use std::time::Instant;

use super::config::{LOUDNESS_TICKS, OWN_STREAM_HANGOVER, PRIME_FRAMES, SELECTED_BONUS};
use super::floor::FloorPolicy;
use super::helper::{Helper, Work};
use super::mix;
use super::participant::{Participant, decode_into};
use super::replay::Step;
use super::room::{Event, Room};
use super::stats::{NoTimer, PhaseTimer, TickPhase};
use super::stream::Output;

impl Room {
    /// Runs the next tick if it is due at `now` (at most one per call).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_timed(now, &mut NoTimer);
    }

    /// [`Room::handle_timeout`], reporting the start of each phase of the tick to `timer` so the
    /// caller can measure where the time goes. The engine itself never reads a clock.
    pub fn handle_timeout_timed(&mut self, now: Instant, timer: &mut impl PhaseTimer) {
        let Some(advance) = self.clock.advance(now) else {
            return;
        };
        if advance.skipped > 0 {
            self.stats.ticks_skipped += advance.skipped;
            self.events.push_back(Event::TicksSkipped {
                count: advance.skipped,
            });
        }
        self.tick(now, advance.skipped, timer);
    }

    /// One tick, in the order of the module docs' "One tick": playout and decoding, the mix,
    /// each participant's stream, encoding, and stamping the frames handed out.
    fn tick(&mut self, now: Instant, skipped: u64, timer: &mut impl PhaseTimer) {
        self.stats.ticks += 1;
        if let Some(change) = self.floor.poll(now) {
            self.apply_floor_change(change);
        }
        self.transmit_cursor = 0;
        // Skipped ticks are a gap in media time, not lost frames: the timestamp jumps, the
        // sequence number does not.
        let timestamp = self
            .out_timestamp
            .wrapping_add((self.config.frame.samples() as u32).wrapping_mul(skipped as u32));
        timer.phase(TickPhase::Decode);
        self.pull_all(now);
        self.record_tick();
        timer.phase(TickPhase::Mix);
        self.cap_talkers();
        if self.is_settled_silence() {
            self.silent_tick(timestamp, timer);
            return;
        }
        self.sum_bus();
        // Late joiners hearing a replay have a stream of their own.
        let replays_need_shared = self.run_replays();
        let shared_needed = self.mix_own_streams() || replays_need_shared;
        if shared_needed {
            self.shared.output.copy_from_slice(&self.bus);
            self.shared.limit(&mut self.shared_stats);
        }
        timer.phase(TickPhase::Encode);
        self.count_own_voices();
        self.prime_own_encoders();
        self.encode_shared(shared_needed);
        self.encode_streams();
        self.stamp_frames(timestamp);
        timer.phase(TickPhase::Done);
    }

    /// Step 1: every participant's playout for this tick (jitter buffer, decoding, talking
    /// detection, input gain). A room with enough talkers decoding (those who had audio last
    /// tick; this tick's are known only once decoded) splits them with its helper thread.
    fn pull_all(&mut self, now: Instant) {
        let normalise = self.config.normalise;
        let split = self.parallel_split(|p| p.contributing || p.capped);
        let ready = self.helper_ready(split);
        let helper = self.helper.as_mut().filter(|_| ready);
        match helper {
            None => pull_half(&mut self.participants, now, normalise, &mut self.events),
            Some(helper) => {
                helper.run(
                    &mut self.participants,
                    split,
                    Work::Pull { now, normalise },
                    &[],
                    &mut self.events,
                    |half, events| pull_half(half, now, normalise, events),
                );
            }
        }
    }

    /// Adds this tick of the transmission on the air (if any) to its recording, starting and
    /// ending recordings as the single floor changes hands, and forgets recordings nobody
    /// needs any more.
    fn record_tick(&mut self) {
        let holder = self
            .floor
            .holder()
            .filter(|_| self.floor.config().policy == FloorPolicy::Single)
            .and_then(|id| self.index.get(&id).copied());
        let holder_id = holder.map(|i| self.participants[i].id);
        if self.recordings.on_air() != holder_id {
            self.recordings.stop();
            if let Some(i) = holder {
                self.recordings
                    .start(self.participants[i].id, self.participants[i].codec);
            }
        }
        if let Some(i) = holder {
            let normalise = self.config.normalise;
            let participant = &mut self.participants[i];
            let gain = participant.gain
                * if normalise {
                    participant.auto_gain
                } else {
                    1.0
                };
            if let Some(capture) = participant.capture.as_mut() {
                self.recordings.append(capture, gain);
            }
        }
        // Only rooms with a replay in progress look through their participants.
        let oldest_in_use = if self.replays == 0 {
            None
        } else {
            self.participants
                .iter()
                .filter_map(|p| p.replay.as_ref())
                .map(|c| c.player.recording())
                .min()
        };
        self.recordings.collect(oldest_in_use);
    }

    /// Leaves all but the loudest `max_talkers` contributors out of this tick's mix. A talker
    /// leaving the mix is faded out over one frame and one entering it is faded in, so the cap
    /// never cuts a voice mid-word with a click.
    fn cap_talkers(&mut self) {
        let mut contributing = 0;
        for participant in &mut self.participants {
            participant.was_capped = std::mem::take(&mut participant.capped);
            let power = if participant.contributing {
                contributing += 1;
                let rms = mix::rms(&participant.decoded);
                rms * rms
            } else {
                0.0
            };
            participant.loudness +=
                (power - participant.loudness) / (LOUDNESS_TICKS * self.config.ticks_per_20ms());
        }
        let cap = self.config.max_talkers.max(1);
        if contributing > cap {
            self.ranking.clear();
            for (index, participant) in self.participants.iter().enumerate() {
                if participant.contributing {
                    let bonus = if participant.selected {
                        SELECTED_BONUS
                    } else {
                        1.0
                    };
                    self.ranking.push((participant.loudness * bonus, index));
                }
            }
            // Loudest first, and at exactly equal loudness the earlier joiner (participants are
            // kept in join order); only the split point matters, so a partial selection is
            // enough.
            self.ranking
                .select_nth_unstable_by(cap - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, index) in &self.ranking[cap..] {
                let participant = &mut self.participants[index];
                if participant.selected {
                    // Mixed last tick: one more frame, fading out.
                    mix::fade_out(&mut participant.decoded);
                    participant.selected = false;
                } else {
                    // Decoded (its level keeps being tracked) but neither summed nor given a
                    // mix-minus: it hears the full mix, which does not contain it.
                    participant.contributing = false;
                    participant.capped = true;
                    self.stats.capped += 1;
                }
            }
            for &(_, index) in &self.ranking[..cap] {
                self.participants[index].selected = true;
            }
        } else {
            for participant in &mut self.participants {
                participant.selected = participant.contributing;
            }
        }
        for participant in &mut self.participants {
            if participant.contributing && participant.was_capped {
                // Back in the mix after being left out: fade in rather than start mid-wave.
                mix::fade_in(&mut participant.decoded);
            }
        }
    }

    /// Whether this tick can only repeat the shared stream's settled silence to everyone: nobody
    /// contributes or is fading out, everyone is on the shared stream past any own-stream
    /// hangover, and the shared limiter and encoder have come to rest on digital silence. Then
    /// the outcome of the tick is known without touching a sample, which is what makes an idle
    /// room nearly free.
    fn is_settled_silence(&self) -> bool {
        #[cfg(test)]
        if self.always_full_ticks {
            return false;
        }
        !self.participants.is_empty()
            && self.departing.is_empty()
            && self.replays == 0
            && self.shared.repeating_silence
            && self.shared.limiter.is_silent()
            && self
                .participants
                .iter()
                // PCM clients run their converters every tick.
                .all(|p| {
                    !p.contributing
                        && !p.uses_own
                        && p.quiet_ticks >= OWN_STREAM_HANGOVER
                        && p.pcm.is_none()
                })
    }

    /// The rest of a tick for which [`Room::is_settled_silence`] holds: exactly what the full
    /// path would do (the same state, counters and frames), minus the arithmetic on zeros.
    fn silent_tick(&mut self, timestamp: u32, timer: &mut impl PhaseTimer) {
        #[cfg(test)]
        {
            self.shortcut_ticks += 1;
        }
        timer.phase(TickPhase::Encode);
        // The shared history holds the last inputs, all silence by now; only its length moves.
        self.shared_history_len = (self.shared_history_len + 1).min(PRIME_FRAMES);
        self.shared_ready = true;
        let output = if self.config.send_silence {
            Output::Frame(self.shared.level)
        } else {
            Output::Paused
        };
        for participant in &mut self.participants {
            participant.quiet_ticks = participant.quiet_ticks.saturating_add(1);
            participant.stamp(self.out_sequence, timestamp, output, &mut self.events);
        }
        self.out_sequence = self.out_sequence.wrapping_add(1);
        self.out_timestamp = timestamp.wrapping_add(self.config.frame.samples() as u32);
        timer.phase(TickPhase::Done);
    }

    /// Step 2: sums this tick's contributions into the bus, with one faded-out concealed frame
    /// of each talker who left while audible.
    fn sum_bus(&mut self) {
        self.bus.fill(0.0);
        for participant in &self.participants {
            if participant.contributing {
                mix::accumulate(&mut self.bus, &participant.decoded);
                self.stats.contributions += 1;
            }
        }
        for mut gone in self.departing.drain(..) {
            // Opus concealment continues the last sound naturally; the fade takes it to zero.
            if decode_into(&mut gone.decoder, &[], false, &mut gone.decoded) {
                mix::fade_out(&mut gone.decoded);
                mix::accumulate(&mut self.bus, &gone.decoded);
            }
        }
    }

    /// Renders this tick's mix for every late joiner hearing a replay: the room's mix with the
    /// replayed transmission in place of the live one. Returns whether the shared stream must
    /// be encoded for a joiner about to move to it.
    ///
    /// A joiner who transmits (is heard in the mix, or holds the floor) goes live at once: see
    /// "Talking while behind" in [`replay`](super::replay).
    fn run_replays(&mut self) -> bool {
        if self.replays == 0 {
            return false;
        }
        let on_air = self.recordings.on_air();
        // The live transmission's voice, as mixed this tick: a joiner still behind hears it
        // later, from the recording.
        let live = on_air
            .and_then(|id| self.index.get(&id))
            .map(|&i| &self.participants[i])
            .filter(|p| p.contributing);
        let has_live_voice = live.is_some();
        if let Some(holder) = live {
            self.live_voice.copy_from_slice(&holder.decoded);
        }
        let mut shared_needed = false;
        for participant in &mut self.participants {
            let Some(catchup) = participant.replay.as_mut() else {
                continue;
            };
            let transmitting = participant.contributing || on_air == Some(participant.id);
            if catchup.live_ticks == 0 && transmitting {
                // Live now, the rest of the replay unheard: a talker answers the room as it is.
                catchup.live_ticks = 1;
                self.events.push_back(Event::CaughtUp {
                    participant: participant.id,
                });
            }
            if participant.contributing {
                // Its mix must lack its own voice: the replay stream becomes its own stream
                // (mix-minus from this tick), so its decoder goes on with the same encoder.
                if let Some(own) = participant.own.as_mut() {
                    std::mem::swap(own, &mut catchup.stream);
                    participant.uses_own = true;
                    participant.needs_prime = false;
                }
                participant.replay = None;
                self.replays -= 1;
                continue;
            }
            if catchup.live_ticks > OWN_STREAM_HANGOVER {
                // The shared stream has encoded the same mix long enough: move to it.
                participant.replay = None;
                self.replays -= 1;
                shared_needed = true;
                continue;
            }
            let stream = &mut catchup.stream;
            stream.output.copy_from_slice(&self.bus);
            if catchup.live_ticks > 0 {
                // Caught up: the room's mix, encoded here and on the shared stream alike.
                catchup.live_ticks += 1;
                shared_needed = true;
            } else {
                let step = catchup
                    .player
                    .next_frame(&self.recordings, &mut catchup.frame);
                if step == Step::Done {
                    // Nothing left to replay (the recording ran out): live from here on.
                    catchup.live_ticks = 1;
                    shared_needed = true;
                } else {
                    if has_live_voice {
                        for (out, live) in stream.output.iter_mut().zip(self.live_voice.iter()) {
                            *out -= live;
                        }
                    }
                    mix::accumulate(&mut stream.output, &catchup.frame);
                    if step == Step::CaughtUp {
                        catchup.live_ticks = 1;
                    }
                }
                if catchup.live_ticks > 0 {
                    self.events.push_back(Event::CaughtUp {
                        participant: participant.id,
                    });
                }
            }
            stream.limit(&mut participant.stats);
        }
        shared_needed
    }

    /// Step 3: decides who hears a stream of its own this tick and mixes and limits it: talkers
    /// who contribute (their mix lacks their own voice) and, for a short hangover, talkers who
    /// just stopped. Everyone else hears the full mix, encoded once for all of them. Returns
    /// whether anyone needs the shared stream this tick.
    fn mix_own_streams(&mut self) -> bool {
        let mut shared_needed = false;
        for participant in &mut self.participants {
            participant.quiet_ticks = if participant.contributing {
                0
            } else {
                participant.quiet_ticks.saturating_add(1)
            };
            if participant.replay.is_some() {
                participant.uses_own = false;
                continue;
            }
            let wants_own =
                participant.own.is_some() && participant.quiet_ticks <= OWN_STREAM_HANGOVER;
            let Some(own) = participant.own.as_mut().filter(|_| wants_own) else {
                participant.uses_own = false;
                shared_needed = true;
                continue;
            };
            if !participant.uses_own {
                // Moving off the shared stream: continue from the shared limiter's state, and
                // (at encode time) replay its recent input into this encoder.
                own.limiter.clone_from(&self.shared.limiter);
                participant.needs_prime = self.shared_history_len > 0;
                participant.uses_own = true;
            }
            if participant.contributing {
                mix::mix_minus(&mut own.output, &self.bus, &participant.decoded);
            } else {
                // In the hangover: the own mix is the full mix. Run the shared stream too, so
                // its encoder has been following the same input when this talker moves to it.
                own.output.copy_from_slice(&self.bus);
                shared_needed = true;
            }
            own.limit(&mut participant.stats);
        }
        shared_needed
    }

    /// Step 4: tells every talker's own stream how many talkers its mix holds, for its bitrate
    /// (see [`BITRATE_PER_VOICE`](super::codec::BITRATE_PER_VOICE)): everyone contributing this
    /// tick but the talker itself.
    fn count_own_voices(&mut self) {
        let voices = self.participants.iter().filter(|p| p.contributing).count();
        for participant in &mut self.participants {
            if let Some(own) = participant.own.as_mut() {
                own.voices = voices - usize::from(participant.contributing);
            }
        }
    }

    /// Step 4a: replays the shared stream's recent input into the encoder of every talker who
    /// just moved to its own stream, so that encoder continues where the listener's decoder is.
    fn prime_own_encoders(&mut self) {
        for participant in &mut self.participants {
            if !std::mem::take(&mut participant.needs_prime) {
                continue;
            }
            let Some(own) = participant.own.as_mut() else {
                continue;
            };
            let start = PRIME_FRAMES - self.shared_history_len;
            for frame in &self.shared_history[start..] {
                // The packet is never sent: only the encoder's state matters. Silent inputs
                // count towards settling on silence as if this encoder had sent them, so a
                // talker whose own mix stays silent (alone in the room) pauses at once.
                own.encoded_len = own
                    .encoder
                    .encode_float(frame, &mut own.encoded)
                    .unwrap_or(0);
                own.silent_encodes = if frame.iter().all(|s| *s == 0.0) {
                    own.silent_encodes + 1
                } else {
                    0
                };
                self.stats.encodes += 1;
                self.stats.primes += 1;
            }
        }
    }

    /// Step 4b: encodes the shared full mix once (when anyone hears it) and keeps its input for
    /// priming.
    fn encode_shared(&mut self, shared_needed: bool) {
        self.shared_ready = false;
        if shared_needed {
            self.shared_ready = self.shared.encode(&mut self.stats.encodes).is_some();
            if !self.shared_ready {
                self.shared_stats.encode_errors += 1;
                self.events.push_back(Event::SharedEncodeFailed);
            }
            // Keep the last PRIME_FRAMES inputs, oldest first.
            self.shared_history.rotate_left(1);
            self.shared_history[PRIME_FRAMES - 1].copy_from_slice(&self.shared.output);
            self.shared_history_len = (self.shared_history_len + 1).min(PRIME_FRAMES);
        } else {
            self.shared_history_len = 0;
        }
    }

    /// Step 4c: encodes every participant's stream of its own (replay or mix-minus) and renders
    /// PCM clients' frames. A room with enough of them splits them with its helper thread.
    fn encode_streams(&mut self) {
        let send_silence = self.config.send_silence;
        let split = self.parallel_split(|p| p.pcm.is_some() || p.replay.is_some() || p.uses_own);
        let shared_mix: &[f32] = &self.shared.output;
        let encodes = match self
            .helper
            .as_mut()
            .filter(|_| split < self.participants.len())
        {
            None => encode_half(&mut self.participants, shared_mix, send_silence),
            Some(helper) => {
                let mut here = 0;
                let there = helper.run(
                    &mut self.participants,
                    split,
                    Work::Encode { send_silence },
                    shared_mix,
                    &mut self.events,
                    |half, _| here = encode_half(half, shared_mix, send_silence),
                );
                here + there
            }
        };
        self.stats.encodes += encodes;
    }

    /// Step 5: stamps every participant's frame for this tick (or notes it paused or failed),
    /// and moves the room's numbering on.
    fn stamp_frames(&mut self, timestamp: u32) {
        let pause_silence = !self.config.send_silence;
        let shared_output = if !self.shared_ready {
            Output::Failed
        } else if pause_silence && self.shared.repeating_silence {
            Output::Paused
        } else {
            Output::Frame(self.shared.level)
        };
        for participant in &mut self.participants {
            if participant.pcm.is_some() {
                let output = match participant.pcm_level {
                    Some(level) => Output::Frame(level),
                    None => Output::Paused,
                };
                participant.stamp(self.out_sequence, timestamp, output, &mut self.events);
                continue;
            }
            let output = match participant.stream() {
                Some(own) => match participant.own_level {
                    None => {
                        participant.stats.encode_errors += 1;
                        self.events.push_back(Event::EncodeFailed {
                            participant: participant.id,
                        });
                        Output::Failed
                    }
                    Some(_) if pause_silence && own.repeating_silence => Output::Paused,
                    Some(level) => Output::Frame(level),
                },
                None => shared_output,
            };
            participant.stamp(self.out_sequence, timestamp, output, &mut self.events);
        }
        self.out_sequence = self.out_sequence.wrapping_add(1);
        self.out_timestamp = timestamp.wrapping_add(self.config.frame.samples() as u32);
    }

    /// Where to split the participants between this thread and the helper for one phase of
    /// the tick: so that each side has half of those with codec work in this phase (`busy`), or
    /// `len` (no split) when fewer than [`EngineConfig::parallel_threshold`] have any. Only
    /// codec work is worth a second thread, so the participants who have none do not count.
    ///
    /// [`EngineConfig::parallel_threshold`]: super::EngineConfig::parallel_threshold
    fn parallel_split(&self, busy: impl Fn(&Participant) -> bool) -> usize {
        let len = self.participants.len();
        let Some(threshold) = self.config.parallel_threshold else {
            return len;
        };
        let threshold = threshold.max(2);
        // Everyone with codec work in a phase sends audio (or is a PCM client, or hears a
        // replay), so a room with few talkers and PCM clients is not worth counting.
        if self.talkers + self.participants.len() < threshold {
            return len;
        }
        let working = self.participants.iter().filter(|p| busy(p)).count();
        if working < threshold {
            return len;
        }
        let mut seen = 0;
        for (index, participant) in self.participants.iter().enumerate() {
            if seen >= working / 2 {
                return index;
            }
            seen += usize::from(busy(participant));
        }
        len
    }

    /// Whether this phase is split at `split` and the room's helper thread is there for it,
    /// spawning the helper the first time a room needs it. `false` runs the phase on this thread
    /// alone (also when the helper cannot be spawned: the tick is slower, not wrong).
    fn helper_ready(&mut self, split: usize) -> bool {
        if split >= self.participants.len() || self.helper_failed {
            return false;
        }
        if self.helper.is_none() {
            match Helper::spawn(self.participants.capacity()) {
                Ok(helper) => self.helper = Some(helper),
                Err(_) => self.helper_failed = true,
            }
        }
        self.helper.is_some()
    }
}

/// Step 1 for some of the participants (on the mixer thread or the helper).
pub(super) fn pull_half(
    half: &mut [Box<Participant>],
    now: Instant,
    normalise: bool,
    events: &mut VecDeque<Event>,
) {
    for participant in half {
        participant.contributing = participant.pull(now, normalise, events);
    }
}

/// Step 4c for some of the participants (on the mixer thread or the helper); returns the
/// encoder calls made.
pub(super) fn encode_half(
    half: &mut [Box<Participant>],
    shared_mix: &[f32],
    send_silence: bool,
) -> u64 {
    let mut encodes = 0;
    for participant in half {
        let own = participant.own.as_mut().filter(|_| participant.uses_own);
        let replay = participant.replay.as_mut().map(|c| &mut c.stream);
        if let Some(link) = participant.pcm.as_mut() {
            // PCM clients get their mix resampled instead of encoded.
            let mix = match (replay, own) {
                (Some(replay), _) => &replay.output[..],
                (None, Some(own)) => &own.output[..],
                (None, None) => shared_mix,
            };
            participant.pcm_level = Participant::render_pcm(link, mix, send_silence);
        } else if let Some(replay) = replay {
            participant.own_level = replay.encode(&mut encodes);
        } else if let Some(own) = own {
            participant.own_level = own.encode(&mut encodes);
        }
    }
    encodes
}

#[cfg(test)]
mod tests {
    use mixer_protocol::{AudioFrame, AudioHeader, AudioLevel, FRAME_SAMPLES, Flags, Mode};

    use super::*;
    use crate::engine::{EngineConfig, FRAME, ParticipantId};

    /// Every frame one tick hands out: (to, header, payload).
    type TickOutput = Vec<(ParticipantId, AudioHeader, Vec<u8>)>;

    fn drain(room: &mut Room) -> TickOutput {
        let mut out = Vec::new();
        while let Some(tx) = room.poll_transmit() {
            out.push((tx.to, tx.header, tx.payload.to_vec()));
        }
        out
    }

    #[test]
    fn the_settled_silence_shortcut_changes_nothing() {
        for send_silence in [false, true] {
            let config = EngineConfig {
                send_silence,
                ..EngineConfig::default()
            };
            let t0 = Instant::now();
            let mut fast = Room::new(config.clone(), t0).expect("room");
            let mut full = Room::new(config, t0).expect("room");
            full.always_full_ticks = true;
            let (talker, quiet, listener) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
            for room in [&mut fast, &mut full] {
                room.add_participant(talker, Mode::Talk).expect("join");
                room.add_participant(quiet, Mode::Talk).expect("join");
                room.add_participant(listener, Mode::Listen).expect("join");
            }
            let mut encoder =
                opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                    .expect("encoder");
            let mut packet = vec![0u8; 1500];
            let mut pcm = vec![0.0f32; FRAME_SAMPLES];
            let mut phase = 0.0f32;
            // 0.5 s of tone, 1.5 s of nothing sent, eight times over.
            for tick in 0..800u32 {
                let now = t0 + FRAME * tick;
                if tick % 100 < 25 {
                    for s in pcm.iter_mut() {
                        *s = 0.3 * phase.sin();
                        phase += 2.0 * std::f32::consts::PI * 440.0 / 48_000.0;
                    }
                    let len = encoder.encode_float(&pcm, &mut packet).expect("encode");
                    let frame = AudioFrame {
                        header: AudioHeader {
                            flags: Flags::default().with_marker(tick % 100 == 0),
                            sequence: tick as u16,
                            timestamp: tick * FRAME_SAMPLES as u32,
                            level: AudioLevel::new(true, 20),
                        },
                        payload: &packet[..len],
                    };
                    for room in [&mut fast, &mut full] {
                        room.handle_audio(talker, frame, now).expect("audio");
                    }
                }
                fast.handle_timeout(now);
                full.handle_timeout(now);
                assert_eq!(drain(&mut fast), drain(&mut full), "tick {tick}");
                assert_eq!(fast.stats(), full.stats(), "tick {tick}");
                for id in [talker, quiet, listener] {
                    assert_eq!(fast.participant_stats(id), full.participant_stats(id));
                }
            }
            assert!(
                fast.shortcut_ticks > 300,
                "the shortcut was taken {} times",
                fast.shortcut_ticks
            );
            assert_eq!(full.shortcut_ticks, 0);
        }
    }

    /// One tone packet per talker and tick; talker `i` talks while `talks(i, tick)`.
    struct Uplinks {
        encoders: Vec<opus::Encoder>,
        packet: Vec<u8>,
    }

    impl Uplinks {
        fn new(talkers: usize) -> Uplinks {
            let encoders = (0..talkers)
                .map(|_| {
                    opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                        .expect("encoder")
                })
                .collect();
            Uplinks {
                encoders,
                packet: vec![0; 1500],
            }
        }

        /// Sends talker `i`'s next packet to every room.
        fn send(&mut self, rooms: &mut [&mut Room], i: usize, tick: u32, now: Instant) {
            let freq = 200.0 + 90.0 * i as f32;
            let pcm: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|n| {
                    let t = (tick as usize * FRAME_SAMPLES + n) as f32 / 48_000.0;
                    0.2 * (2.0 * std::f32::consts::PI * freq * t).sin()
                })
                .collect();
            let len = self.encoders[i]
                .encode_float(&pcm, &mut self.packet)
                .expect("encode");
            let frame = AudioFrame {
                header: AudioHeader {
                    flags: Flags::default(),
                    sequence: tick as u16,
                    timestamp: tick * FRAME_SAMPLES as u32,
                    level: AudioLevel::new(true, 14),
                },
                payload: &self.packet[..len],
            };
            for room in rooms {
                room.handle_audio(ParticipantId(i as u32), frame, now)
                    .expect("audio");
            }
        }
    }

    fn events(room: &mut Room) -> Vec<Event> {
        std::iter::from_fn(|| room.poll_event()).collect()
    }

    #[test]
    fn a_split_tick_hands_out_exactly_what_one_thread_does() {
        let t0 = Instant::now();
        let config = |parallel_threshold| EngineConfig {
            parallel_threshold,
            max_talkers: 4,
            ..EngineConfig::default()
        };
        let mut serial = Room::new(config(None), t0).expect("room");
        let mut split = Room::new(config(Some(4)), t0).expect("room");
        const TALKERS: usize = 8;
        for room in [&mut serial, &mut split] {
            for i in 0..TALKERS {
                room.add_participant(ParticipantId(i as u32), Mode::Talk)
                    .expect("join");
            }
            room.add_participant(ParticipantId(100), Mode::Listen)
                .expect("join");
        }
        let mut uplinks = Uplinks::new(TALKERS);
        for tick in 0..400u32 {
            let now = t0 + FRAME * tick;
            // Talkers come and go in staggered spurts, so the split point moves.
            for i in 0..TALKERS {
                if (tick as usize + 13 * i) % 90 < 50 {
                    uplinks.send(&mut [&mut serial, &mut split], i, tick, now);
                }
            }
            serial.handle_timeout(now);
            split.handle_timeout(now);
            assert_eq!(drain(&mut serial), drain(&mut split), "tick {tick}");
            assert_eq!(events(&mut serial), events(&mut split), "tick {tick}");
            assert_eq!(serial.stats(), split.stats(), "tick {tick}");
        }
        assert!(split.helper.is_some(), "the split room never split");
        assert!(serial.helper.is_none());
        assert_eq!(serial.totals(), split.totals());
    }

    #[test]
    fn only_talkers_with_audio_make_a_room_split() {
        let t0 = Instant::now();
        let config = EngineConfig {
            parallel_threshold: Some(8),
            ..EngineConfig::default()
        };
        let mut room = Room::new(config, t0).expect("room");
        for i in 0..40 {
            room.add_participant(ParticipantId(i), Mode::Talk)
                .expect("join");
        }
        let mut uplinks = Uplinks::new(8);
        // Forty participants in talk mode, of whom two talk: one thread is enough.
        for tick in 0..100u32 {
            let now = t0 + FRAME * tick;
            for i in 0..2 {
                uplinks.send(&mut [&mut room], i, tick, now);
            }
            room.handle_timeout(now);
            drain(&mut room);
        }
        assert!(room.helper.is_none(), "two talkers split the tick");
        // Eight talk at once: now the decoding is worth splitting.
        for tick in 100..200u32 {
            let now = t0 + FRAME * tick;
            for i in 0..8 {
                uplinks.send(&mut [&mut room], i, tick, now);
            }
            room.handle_timeout(now);
            drain(&mut room);
        }
        assert!(
            room.helper.is_some(),
            "eight talkers did not split the tick"
        );
    }
}
