//! A [`Room`]: its state, the calls that change it between ticks, and the `poll_*` outputs.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mixer_protocol::{AudioFrame, AudioHeader, MAX_OPUS_PACKET, Mode};

use super::clock::TickClock;
use super::config::{EngineConfig, MAX_GAIN_DB, PRIME_FRAMES};
use super::error::EngineError;
use super::floor::{Floor, FloorChange, FloorConfig, FloorPolicy, FloorReply};
use super::helper::Helper;
use super::jitter::{ArrivingPacket, InsertOutcome};
use super::participant::{Catchup, ClientCodec, Participant, ParticipantId};
use super::replay::{Capture, Recordings};
use super::stats::{ParticipantStats, RoomStats, RoomTotals};
use super::stream::MixStream;

/// One encoded frame for one participant, borrowed from the room until the next call.
#[derive(Debug)]
pub struct Transmit<'a> {
    /// Who receives it.
    pub to: ParticipantId,
    /// The header for this listener's stream (its own sequence and timestamp).
    pub header: AudioHeader,
    /// One Opus packet (or, for a PCM client, one frame of 16-bit samples).
    pub payload: &'a [u8],
    /// Which stream the frame belongs to: whether other participants get the same bytes.
    pub stream: StreamKind,
}

/// Which stream a [`Transmit`] belongs to, so the shell can tell which frames are shared.
///
/// Within one tick (between two `handle_timeout` calls), every [`StreamKind::Shared`] transmit
/// carries the same payload bytes and the same header, but for the marker bit (set on a
/// participant's first frame of a run, see [`mixer_protocol::Flags::marker`]): the shell can
/// build that frame once and hand it to all of them. Any other transmit is for its recipient
/// alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The room's full mix, encoded once per tick for everyone who contributes nothing.
    Shared,
    /// The participant's own stream: its mix-minus while it talks, or any frame of a PCM
    /// client (rendered at the client's rate for it alone).
    Own,
    /// A late joiner's stream while it hears a transmission replayed and catches up.
    Replay,
}

impl Transmit<'_> {
    /// The frame as it goes on the wire: header followed by the Opus packet.
    pub fn frame(&self) -> AudioFrame<'_> {
        AudioFrame {
            header: self.header,
            payload: self.payload,
        }
    }
}

/// Something the shell may want to act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A participant's packet failed to decode (it was concealed instead). Reported once per
    /// run of failures, not per packet.
    DecodeFailed {
        /// Whose packet.
        participant: ParticipantId,
    },
    /// Encoding a participant's mix failed; that participant got no frame this tick.
    EncodeFailed {
        /// Whose mix.
        participant: ParticipantId,
    },
    /// Encoding the shared full mix failed; everyone on it got no frame this tick.
    SharedEncodeFailed,
    /// The caller was so late that ticks were skipped instead of run.
    TicksSkipped {
        /// How many.
        count: u64,
    },
    /// A participant started talking (its decoded level rose above the talking threshold).
    TalkingStarted {
        /// Who.
        participant: ParticipantId,
    },
    /// A participant stopped talking (quiet for a while, muted, or no longer allowed to talk).
    TalkingStopped {
        /// Who.
        participant: ParticipantId,
    },
    /// The push-to-talk floor changed hands.
    Floor(FloorChange),
    /// A participant moved onto (`shared`) or off the shared stream: from now on it hears the
    /// shared frames, or frames of its own (its mix-minus, a replay, PCM), even while those are
    /// paused. Every participant starts on the shared stream, so a participant whose first
    /// frames are its own is reported before its first tick's frames are handed out. A relay
    /// that passes the shared frame on once for many listeners (an edge node) needs this.
    StreamSwitched {
        /// Who.
        participant: ParticipantId,
        /// Whether it hears the shared stream now.
        shared: bool,
    },
    /// A participant who joined during a transmission and heard it replayed from its start
    /// has caught up: from now on it hears the room live (see [`replay`](super::replay)). Also
    /// reported, once, when such a joiner transmits before catching up: it goes live at once.
    CaughtUp {
        /// Who.
        participant: ParticipantId,
    },
}

/// One room's mixer: participants, their codecs and jitter buffers, and the mix clock.
pub struct Room {
    pub(super) config: EngineConfig,
    pub(super) clock: TickClock,
    /// Boxed so a split tick hands half of them to the helper thread and back by moving
    /// pointers rather than the structs (over two kilobytes each).
    #[allow(clippy::vec_box)]
    pub(super) participants: Vec<Box<Participant>>,
    pub(super) index: HashMap<ParticipantId, usize>,
    /// Talkers removed since the last tick while they were audible: they contribute one more
    /// concealed frame faded to silence, so a leave is not a click in everyone else's mix.
    pub(super) departing: Vec<Participant>,
    /// Counters of participants who left, so totals never go backwards.
    pub(super) departed: RoomTotals,
    /// The full mix, encoded once per tick for everyone who contributes nothing.
    pub(super) shared: MixStream,
    /// Limiter counters of the shared stream.
    pub(super) shared_stats: ParticipantStats,
    /// The shared stream's last encoded inputs (post-limiter), oldest first, for priming.
    pub(super) shared_history: [Box<[f32]>; PRIME_FRAMES],
    /// How many of `shared_history` are consecutive frames up to the previous tick.
    pub(super) shared_history_len: usize,
    /// Whether this tick's shared frame was encoded.
    pub(super) shared_ready: bool,
    /// Sequence number of the next frame sent: +1 per tick run.
    pub(super) out_sequence: u16,
    /// Timestamp of the next frame: +960 per tick, skipped ticks included.
    pub(super) out_timestamp: u32,
    /// The helper thread large ticks are split with, spawned when the room first needs it.
    pub(super) helper: Option<Helper>,
    /// Spawning the helper failed once: this room's ticks stay on one thread.
    pub(super) helper_failed: bool,
    /// Participants who send audio (kept up to date so a small room's tick need not count its
    /// participants to know it is not split).
    pub(super) talkers: usize,
    /// Push-to-talk floor.
    pub(super) floor: Floor,
    /// Scratch for floor changes.
    pub(super) floor_changes: Vec<FloorChange>,
    /// Scratch for choosing the loudest talkers: (ranking level, participant index).
    pub(super) ranking: Vec<(f32, usize)>,
    /// Transmissions recorded for late joiners (single-floor rooms).
    pub(super) recordings: Recordings,
    /// Participants hearing a replay (kept up to date so a tick need not count them).
    pub(super) replays: usize,
    /// This tick's live voice of the transmission on the air, as mixed (for replays to take
    /// out of the mix they hear).
    pub(super) live_voice: Box<[f32]>,
    pub(super) bus: Box<[f32]>,
    pub(super) transmit_cursor: usize,
    pub(super) events: VecDeque<Event>,
    pub(super) stats: RoomStats,
    /// Tests turn the settled-silence shortcut off to prove it changes nothing.
    #[cfg(test)]
    pub(super) always_full_ticks: bool,
    #[cfg(test)]
    pub(super) shortcut_ticks: u64,
}

impl Room {
    /// An empty room whose first tick is due at `now`.
    ///
    /// Fails only if libopus refuses the encoder settings (which the CLI validates up front).
    pub fn new(config: EngineConfig, now: Instant) -> Result<Room, EngineError> {
        let capacity = config.max_participants.min(1024);
        Ok(Room {
            clock: TickClock::new(now, config.frame.duration(), config.max_catch_up_ticks),
            participants: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            departing: Vec::with_capacity(4),
            departed: RoomTotals::default(),
            shared: MixStream::new(&config)?,
            shared_stats: ParticipantStats::default(),
            shared_history: std::array::from_fn(|_| {
                vec![0.0; config.frame.samples()].into_boxed_slice()
            }),
            shared_history_len: 0,
            shared_ready: false,
            out_sequence: 0,
            out_timestamp: 0,
            helper: None,
            helper_failed: false,
            talkers: 0,
            floor: Floor::new(config.floor),
            floor_changes: Vec::with_capacity(2),
            ranking: Vec::with_capacity(capacity),
            recordings: Recordings::for_frame(config.frame),
            replays: 0,
            live_voice: vec![0.0; config.frame.samples()].into_boxed_slice(),
            bus: vec![0.0; config.frame.samples()].into_boxed_slice(),
            transmit_cursor: 0,
            events: VecDeque::with_capacity(64),
            stats: RoomStats::default(),
            #[cfg(test)]
            always_full_ticks: false,
            #[cfg(test)]
            shortcut_ticks: 0,
            config,
        })
    }

    /// Adds a participant. Talkers get a jitter buffer, a decoder and an encoder for their own
    /// mix-minus; listeners only ever hear the shared full mix.
    pub fn add_participant(&mut self, id: ParticipantId, mode: Mode) -> Result<(), EngineError> {
        self.add_participant_with(id, mode, ClientCodec::Opus)
    }

    /// [`Room::add_participant`] for a client whose audio is coded as `codec` (Opus, or 16-bit
    /// PCM at its own rate, resampled to and from the room's 48 kHz).
    pub fn add_participant_with(
        &mut self,
        id: ParticipantId,
        mode: Mode,
        codec: ClientCodec,
    ) -> Result<(), EngineError> {
        if self.index.contains_key(&id) {
            return Err(EngineError::AlreadyJoined(id));
        }
        if self.participants.len() >= self.config.max_participants {
            return Err(EngineError::RoomFull(self.config.max_participants));
        }
        let mut participant = Box::new(Participant::new(id, mode, codec, &self.config)?);
        // Joining during a transmission: hear it from its start. A replay that cannot be set
        // up (libopus refusing a decoder) is not worth refusing the join for: live it is.
        if let Some(Ok(player)) = self.recordings.replay_for_joiner()
            && let Ok(stream) = MixStream::new(&self.config)
        {
            participant.replay = Some(Box::new(Catchup {
                player,
                stream,
                frame: vec![0.0; self.config.frame.samples()].into_boxed_slice(),
                live_ticks: 0,
            }));
            self.replays += 1;
        }
        self.talkers += usize::from(participant.own.is_some());
        self.index.insert(id, self.participants.len());
        self.participants.push(participant);
        self.regate(self.participants.len() - 1);
        Ok(())
    }

    /// Removes a participant; returns its final counters, or `None` if it was not here.
    pub fn remove_participant(&mut self, id: ParticipantId) -> Option<ParticipantStats> {
        let position = self.index.remove(&id)?;
        let removed = self.participants.remove(position);
        self.talkers -= usize::from(removed.own.is_some());
        self.replays -= usize::from(removed.replay.is_some());
        for (i, p) in self.participants.iter().enumerate().skip(position) {
            self.index.insert(p.id, i);
        }
        if self.transmit_cursor > position {
            self.transmit_cursor -= 1;
        }
        if let Some(change) = self.floor.left(id) {
            // Its transmission is over: nobody joining now hears it replayed.
            self.recordings.stop();
            self.events.push_back(Event::Floor(change));
        }
        let stats = removed.snapshot();
        self.departed.add(&stats);
        if removed.contributing {
            self.departing.push(*removed);
        }
        Some(stats)
    }

    /// Queues one packet from a talker into its jitter buffer. `arrival` is when it reached the
    /// server, which drives the jitter estimate.
    pub fn handle_audio(
        &mut self,
        id: ParticipantId,
        frame: AudioFrame<'_>,
        arrival: Instant,
    ) -> Result<InsertOutcome, EngineError> {
        let position = *self
            .index
            .get(&id)
            .ok_or(EngineError::UnknownParticipant(id))?;
        let participant = &mut self.participants[position];
        if !participant.mode.sends_audio() {
            return Err(EngineError::ListenOnly(id));
        }
        if participant.muted {
            participant.stats.frames_muted += 1;
            return Err(EngineError::Muted(id));
        }
        if participant.mode == Mode::Ptt {
            if !self.floor.may_talk(id) {
                participant.stats.frames_without_floor += 1;
                return Err(EngineError::NoFloor(id));
            }
            if frame.header.level.voice_activity() {
                self.floor.voice(id, arrival);
            }
        }
        let packet = ArrivingPacket {
            sequence: frame.header.sequence,
            timestamp: frame.header.timestamp,
            voice_activity: frame.header.level.voice_activity(),
            level_dbov: frame.header.level.level_dbov(),
            payload: frame.payload,
        };
        Ok(participant.jitter.insert(packet, arrival))
    }

    /// Changes a participant's mode without rejoining. A participant who stops sending audio
    /// (to `listen`) loses the floor and its own stream; one who starts gets an encoder.
    pub fn set_mode(&mut self, id: ParticipantId, mode: Mode) -> Result<(), EngineError> {
        let position = self.position(id)?;
        let participant = &mut self.participants[position];
        if participant.mode == mode {
            return Ok(());
        }
        if mode.sends_audio() && participant.own.is_none() {
            participant.own = Some(MixStream::new(&self.config)?);
            self.talkers += 1;
        }
        if !mode.sends_audio() && participant.own.take().is_some() {
            self.talkers -= 1;
            participant.uses_own = false;
            participant.needs_prime = false;
        }
        participant.mode = mode;
        if mode != Mode::Ptt
            && let Some(change) = self.floor.left(id)
        {
            self.apply_floor_change(change);
        }
        self.regate(position);
        Ok(())
    }

    /// Mutes or unmutes a participant; returns whether that changed anything. A muted
    /// participant's audio is dropped on arrival and it stops talking at once.
    pub fn set_muted(&mut self, id: ParticipantId, muted: bool) -> Result<bool, EngineError> {
        let position = self.position(id)?;
        let participant = &mut self.participants[position];
        if participant.muted == muted {
            return Ok(false);
        }
        participant.muted = muted;
        self.regate(position);
        Ok(true)
    }

    /// Sets a participant's input gain in dB (within +-[`MAX_GAIN_DB`]), applied to its decoded
    /// audio before mixing, e.g. to balance a loud and a quiet speaker.
    pub fn set_gain(&mut self, id: ParticipantId, gain_db: f32) -> Result<(), EngineError> {
        if gain_db.is_nan() || gain_db.abs() > MAX_GAIN_DB {
            return Err(EngineError::InvalidGain(gain_db));
        }
        let position = self.position(id)?;
        self.participants[position].gain = 10f32.powf(gain_db / 20.0);
        Ok(())
    }

    /// A push-to-talk participant asks for the floor; `preempt` takes it from another holder
    /// (moderators). Floor changes are reported as [`Event::Floor`].
    pub fn request_floor(
        &mut self,
        id: ParticipantId,
        preempt: bool,
        now: Instant,
    ) -> Result<FloorReply, EngineError> {
        let position = self.position(id)?;
        if self.participants[position].mode != Mode::Ptt {
            return Err(EngineError::NotPushToTalk(id));
        }
        let mut changes = std::mem::take(&mut self.floor_changes);
        let reply = self.floor.request(id, preempt, now, &mut changes);
        self.apply_floor_changes(&mut changes);
        self.floor_changes = changes;
        Ok(reply)
    }

    /// Gives the floor back; returns whether `id` held it.
    pub fn release_floor(&mut self, id: ParticipantId) -> Result<bool, EngineError> {
        self.position(id)?;
        let Some(change) = self.floor.release(id) else {
            return Ok(false);
        };
        self.apply_floor_change(change);
        Ok(true)
    }

    /// Who holds the floor (single-floor rooms).
    pub fn floor_holder(&self) -> Option<ParticipantId> {
        self.floor.holder()
    }

    /// The room's floor settings.
    pub fn floor_config(&self) -> &FloorConfig {
        self.floor.config()
    }

    /// A participant's mode: the one source of truth for it (the shell keeps no copy).
    pub fn mode(&self, id: ParticipantId) -> Option<Mode> {
        self.index.get(&id).map(|&i| self.participants[i].mode)
    }

    /// Whether a participant hears the shared stream (as last reported by
    /// [`Event::StreamSwitched`]); `None` if it is not in the room.
    pub fn hears_shared(&self, id: ParticipantId) -> Option<bool> {
        Some(self.participants[*self.index.get(&id)?].hears_shared)
    }

    /// Whether a participant is muted.
    pub fn is_muted(&self, id: ParticipantId) -> Option<bool> {
        self.index.get(&id).map(|&i| self.participants[i].muted)
    }

    /// How far behind live a late joiner is while it hears a transmission replayed (recorded
    /// audio still to play, silence included, before it speeds up); `None` when it hears the
    /// room live.
    pub fn replay_backlog(&self, id: ParticipantId) -> Option<Duration> {
        let position = *self.index.get(&id)?;
        let catchup = self.participants[position]
            .replay
            .as_ref()
            .filter(|c| c.live_ticks == 0)?;
        Some(self.config.frame.duration() * self.recordings.backlog(&catchup.player) as u32)
    }

    fn position(&self, id: ParticipantId) -> Result<usize, EngineError> {
        self.index
            .get(&id)
            .copied()
            .ok_or(EngineError::UnknownParticipant(id))
    }

    fn apply_floor_changes(&mut self, changes: &mut Vec<FloorChange>) {
        for change in changes.drain(..) {
            self.apply_floor_change(change);
        }
    }

    /// Reports a floor change and updates whether its participant may be heard.
    pub(super) fn apply_floor_change(&mut self, change: FloorChange) {
        let who = match change {
            FloorChange::Granted { to, .. } => to,
            FloorChange::Ended { from, .. } => {
                self.recordings.stop();
                from
            }
        };
        if let Some(&position) = self.index.get(&who) {
            self.regate(position);
        }
        self.events.push_back(Event::Floor(change));
    }

    /// Recomputes whether a participant may be heard (mute, mode, floor), and whether its
    /// playout is recorded (it holds a single floor).
    pub(super) fn regate(&mut self, position: usize) {
        let participant = &mut self.participants[position];
        // Listen mode gates too: a talker who switches to it is faded out and its jitter buffer
        // emptied, as when muted, so on switching back it starts a fresh play point at its
        // current delay instead of resuming the frozen one (stale audio, then a delay as long
        // as it listened).
        participant.gated = participant.muted
            || !participant.mode.sends_audio()
            || (participant.mode == Mode::Ptt && !self.floor.may_talk(participant.id));
        let on_air = self.floor.config().policy == FloorPolicy::Single
            && self.floor.holder() == Some(participant.id);
        if on_air != participant.capture.is_some() {
            participant.capture = on_air.then(|| {
                Capture::new(match participant.codec {
                    ClientCodec::Opus => MAX_OPUS_PACKET,
                    ClientCodec::Pcm(rate) => rate.frame_bytes(),
                })
            });
        }
        if participant.gated {
            participant.set_talking(false, &mut self.events);
        }
    }

    /// When [`Room::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.clock.deadline()
    }

    /// The next frame to send, if any; drain until `None` after every tick.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        while self.transmit_cursor < self.participants.len() {
            let i = self.transmit_cursor;
            self.transmit_cursor += 1;
            if let Some(header) = self.participants[i].pending.take() {
                let p = &self.participants[i];
                let payload = match (&p.pcm, p.stream()) {
                    (Some(link), _) => &link.payload[..],
                    (None, Some(own)) => own.payload(),
                    (None, None) => self.shared.payload(),
                };
                let stream = if p.replay.is_some() {
                    StreamKind::Replay
                } else if p.pcm.is_some() || p.stream().is_some() {
                    StreamKind::Own
                } else {
                    StreamKind::Shared
                };
                return Some(Transmit {
                    to: p.id,
                    header,
                    payload,
                    stream,
                });
            }
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters for one participant (a snapshot, merged with its jitter-buffer counters).
    pub fn participant_stats(&self, id: ParticipantId) -> Option<ParticipantStats> {
        let participant = &self.participants[*self.index.get(&id)?];
        Some(participant.snapshot())
    }

    /// Jitter-buffer state of a talker: (target delay, buffered frames).
    pub fn jitter_state(&self, id: ParticipantId) -> Option<(Duration, usize)> {
        let participant = &self.participants[*self.index.get(&id)?];
        Some((
            participant.jitter.target_delay(),
            participant.jitter.buffered_frames(),
        ))
    }

    /// Counters summed over current and past participants; they only ever grow.
    pub fn totals(&self) -> RoomTotals {
        let mut totals = self.departed.clone();
        totals.add(&self.shared_stats);
        for participant in &self.participants {
            totals.add(&participant.snapshot());
        }
        totals
    }

    /// Jitter-buffer target delays of the talkers currently in the room.
    pub fn jitter_delays(&self) -> impl Iterator<Item = Duration> + '_ {
        self.participants
            .iter()
            .filter(|p| p.mode.sends_audio() && !p.jitter.is_idle())
            .map(|p| p.jitter.target_delay())
    }

    /// Room counters.
    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    /// The duration of the room's frames and ticks.
    pub fn frame(&self) -> mixer_protocol::FrameSize {
        self.config.frame
    }

    /// Participants in the room.
    pub fn len(&self) -> usize {
        self.participants.len()
    }

    /// Whether the room has no participants.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use mixer_protocol::{AudioLevel, FRAME_SAMPLES, Flags};

    use super::*;
    use crate::engine::FRAME;
    use crate::engine::pcm::PcmRate;

    fn single_floor_room(t0: Instant) -> Room {
        let config = EngineConfig {
            floor: FloorConfig {
                policy: FloorPolicy::Single,
                ..FloorConfig::default()
            },
            ..EngineConfig::default()
        };
        Room::new(config, t0).expect("room")
    }

    fn ticks(room: &mut Room, now: &mut Instant, n: u32) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..n {
            *now += FRAME;
            room.handle_timeout(*now);
            while room.poll_transmit().is_some() {}
            while let Some(event) = room.poll_event() {
                events.push(event);
            }
        }
        events
    }

    #[test]
    fn only_a_join_during_a_single_floor_transmission_is_replayed() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = single_floor_room(t0);
        let (holder, first, second, third) = (
            ParticipantId(1),
            ParticipantId(2),
            ParticipantId(3),
            ParticipantId(4),
        );
        room.add_participant(holder, Mode::Ptt).expect("join");
        room.handle_timeout(now);
        room.add_participant(first, Mode::Listen).expect("join");
        assert_eq!(room.replay_backlog(first), None, "nothing on the air");
        room.request_floor(holder, false, now).expect("request");
        ticks(&mut room, &mut now, 10);
        room.add_participant(second, Mode::Ptt).expect("join");
        assert_eq!(room.replay_backlog(second), Some(FRAME * 10));
        // The transmission held only silence: the replay skips it and is live at once.
        let events = ticks(&mut room, &mut now, 2);
        assert!(events.contains(&Event::CaughtUp {
            participant: second
        }));
        assert_eq!(room.replay_backlog(second), None);
        room.release_floor(holder).expect("release");
        ticks(&mut room, &mut now, 10);
        room.add_participant(third, Mode::Listen).expect("join");
        assert_eq!(room.replay_backlog(third), None, "the floor is free");
        // Replays over and floor free: the recording is forgotten and the room is idle again.
        ticks(&mut room, &mut now, 10);
        assert_eq!(room.replays, 0);
        assert!(room.recordings.on_air().is_none());
    }

    #[test]
    fn open_rooms_record_nothing() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut room = Room::new(EngineConfig::default(), t0).expect("room");
        room.add_participant(ParticipantId(1), Mode::Ptt)
            .expect("join");
        room.request_floor(ParticipantId(1), false, now)
            .expect("request");
        ticks(&mut room, &mut now, 10);
        room.add_participant(ParticipantId(2), Mode::Listen)
            .expect("join");
        assert_eq!(room.replay_backlog(ParticipantId(2)), None);
        assert!(room.recordings.on_air().is_none());
    }

    /// A tone packet as a client would send it.
    fn tone_frame(
        encoder: &mut opus::Encoder,
        tick: u32,
        freq: f32,
        packet: &mut [u8],
    ) -> (AudioHeader, usize) {
        let pcm: Vec<f32> = (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (tick as usize * FRAME_SAMPLES + i) as f32 / 48_000.0;
                0.3 * (2.0 * std::f32::consts::PI * freq * t).sin()
            })
            .collect();
        let len = encoder.encode_float(&pcm, packet).expect("encode");
        let header = AudioHeader {
            flags: Flags::default(),
            sequence: tick as u16,
            timestamp: tick * FRAME_SAMPLES as u32,
            level: AudioLevel::new(true, 10),
        };
        (header, len)
    }

    /// Sends one tone packet from `id`, numbered `tick`.
    fn send_tone(
        room: &mut Room,
        id: ParticipantId,
        encoder: &mut opus::Encoder,
        tick: u32,
        freq: f32,
        now: Instant,
    ) {
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let (header, len) = tone_frame(encoder, tick, freq, &mut packet);
        let frame = AudioFrame {
            header,
            payload: &packet[..len],
        };
        room.handle_audio(id, frame, now).expect("audio");
    }

    fn opus_encoder() -> opus::Encoder {
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder")
    }

    /// Runs one tick at `now`; returns the tick's frames as (to, stream, header) and its
    /// events.
    fn tick_at(
        room: &mut Room,
        now: Instant,
    ) -> (Vec<(ParticipantId, StreamKind, AudioHeader)>, Vec<Event>) {
        room.handle_timeout(now);
        let mut frames = Vec::new();
        while let Some(tx) = room.poll_transmit() {
            frames.push((tx.to, tx.stream, tx.header));
        }
        (frames, std::iter::from_fn(|| room.poll_event()).collect())
    }

    #[test]
    fn a_late_joiner_who_talks_goes_live_at_once_and_catches_up_once() {
        let t0 = Instant::now();
        let mut room = single_floor_room(t0);
        let (holder, joiner) = (ParticipantId(1), ParticipantId(2));
        room.add_participant(holder, Mode::Ptt).expect("join");
        room.request_floor(holder, false, t0).expect("request");
        let (mut holder_voice, mut joiner_voice) = (opus_encoder(), opus_encoder());
        let mut caught_up = Vec::new();
        let mut last_sequence = None;
        let mut heard_own = 0;
        for tick in 0..400u32 {
            let now = t0 + FRAME * tick;
            // The holder talks for 6 s; 1 s into it, someone joins in talk mode and hears it
            // replayed; 0.4 s later it answers, over the holder, for 1 s.
            if tick < 300 {
                send_tone(&mut room, holder, &mut holder_voice, tick, 440.0, now);
            }
            if tick == 50 {
                room.add_participant(joiner, Mode::Talk).expect("join");
                assert!(room.replay_backlog(joiner).is_some(), "a replay");
            }
            if (70..120).contains(&tick) {
                send_tone(&mut room, joiner, &mut joiner_voice, tick, 660.0, now);
            }
            if tick == 300 {
                room.release_floor(holder).expect("release");
            }
            let (frames, events) = tick_at(&mut room, now);
            for event in events {
                if let Event::CaughtUp { participant } = event {
                    caught_up.push((participant, tick));
                }
            }
            for (to, stream, header) in frames.into_iter().filter(|f| f.0 == joiner) {
                // One continuous stream through the move from the replay to its own.
                if let Some(last) = last_sequence.replace(header.sequence) {
                    assert!(
                        header.sequence == u16::wrapping_add(last, 1) || header.flags.marker(),
                        "{to}'s stream jumped from {last} to {}",
                        header.sequence
                    );
                }
                if (80..120).contains(&tick) {
                    // Talking: it hears its own mix-minus of the room, live.
                    assert_eq!(stream, StreamKind::Own, "tick {tick}");
                    heard_own += 1;
                }
            }
            if tick >= 80 {
                assert_eq!(room.replay_backlog(joiner), None, "tick {tick}");
            }
        }
        // Its first words ended the replay (about 1.4 s of speech still to hear): caught up
        // then, once, and not again when the holder's turn ended.
        assert_eq!(caught_up.len(), 1, "{caught_up:?}");
        let (who, at) = caught_up[0];
        assert_eq!(who, joiner);
        assert!((70..80).contains(&at), "caught up at tick {at}");
        assert_eq!(heard_own, 40);
        assert_eq!(room.replays, 0);
    }

    #[test]
    fn a_late_joiner_granted_the_floor_goes_live_at_once() {
        let t0 = Instant::now();
        let mut room = single_floor_room(t0);
        let (holder, joiner) = (ParticipantId(1), ParticipantId(2));
        room.add_participant(holder, Mode::Ptt).expect("join");
        room.request_floor(holder, false, t0).expect("request");
        let mut voice = opus_encoder();
        let mut caught_up = Vec::new();
        for tick in 0..200u32 {
            let now = t0 + FRAME * tick;
            if tick < 100 {
                send_tone(&mut room, holder, &mut voice, tick, 440.0, now);
            }
            if tick == 50 {
                room.add_participant(joiner, Mode::Ptt).expect("join");
                assert!(room.replay_backlog(joiner).is_some(), "a replay");
            }
            if tick == 100 {
                // The holder lets go and the joiner, still a second behind, presses to talk.
                room.release_floor(holder).expect("release");
                room.request_floor(joiner, false, now).expect("request");
            }
            let (_, events) = tick_at(&mut room, now);
            for event in events {
                if let Event::CaughtUp { participant } = event {
                    caught_up.push((participant, tick));
                }
            }
        }
        assert_eq!(caught_up, [(joiner, 100)]);
        assert_eq!(room.replays, 0);
    }

    #[test]
    fn frames_marked_shared_are_the_same_frame() {
        let t0 = Instant::now();
        let mut room = single_floor_room(t0);
        let (holder, talker) = (ParticipantId(1), ParticipantId(2));
        room.add_participant(holder, Mode::Ptt).expect("join");
        room.add_participant(talker, Mode::Talk).expect("join");
        for id in 10..13 {
            room.add_participant(ParticipantId(id), Mode::Listen)
                .expect("join");
        }
        room.add_participant_with(
            ParticipantId(20),
            Mode::Listen,
            ClientCodec::Pcm(PcmRate::Hz16000),
        )
        .expect("join");
        room.request_floor(holder, false, t0).expect("request");
        let mut encoders = [holder, talker].map(|_| {
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                .expect("encoder")
        });
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let mut kinds = HashMap::new();
        let mut ticks_with_shared_frames = 0;
        let mut marked_shared = 0;
        for tick in 0..500u32 {
            let now = t0 + FRAME * tick;
            // Late joiners: during the transmission (replayed), and after it.
            match tick {
                60 => room.add_participant(ParticipantId(13), Mode::Listen),
                330 => room.add_participant(ParticipantId(14), Mode::Listen),
                _ => Ok(()),
            }
            .expect("join");
            if tick == 300 {
                room.release_floor(holder).expect("release");
            }
            // The holder talks until it releases the floor; the other talker in bursts.
            let sending = [
                (holder, tick < 300, 440.0),
                (talker, tick % 120 < 40, 660.0),
            ];
            for (encoder, (id, sends, freq)) in encoders.iter_mut().zip(sending) {
                if sends {
                    let (header, len) = tone_frame(encoder, tick, freq, &mut packet);
                    let frame = AudioFrame {
                        header,
                        payload: &packet[..len],
                    };
                    room.handle_audio(id, frame, now).expect("audio");
                }
            }
            room.handle_timeout(now);
            let mut shared: Vec<(AudioHeader, Vec<u8>)> = Vec::new();
            while let Some(tx) = room.poll_transmit() {
                *kinds.entry(tx.stream).or_insert(0) += 1;
                if tx.stream == StreamKind::Shared {
                    marked_shared += usize::from(tx.header.flags.marker());
                    shared.push((tx.header, tx.payload.to_vec()));
                }
            }
            while room.poll_event().is_some() {}
            if let Some(((first_header, first_payload), rest)) = shared.split_first() {
                ticks_with_shared_frames += usize::from(!rest.is_empty());
                let unmarked = |h: &AudioHeader| AudioHeader {
                    flags: h.flags.with_marker(false),
                    ..*h
                };
                for (header, payload) in rest {
                    assert_eq!(payload, first_payload, "tick {tick}");
                    assert_eq!(unmarked(header), unmarked(first_header), "tick {tick}");
                }
            }
        }
        // The test saw every kind of stream, and shared frames that differ in their marker.
        assert!(ticks_with_shared_frames > 100, "{ticks_with_shared_frames}");
        for kind in [StreamKind::Shared, StreamKind::Own, StreamKind::Replay] {
            assert!(kinds.get(&kind).copied().unwrap_or(0) > 10, "{kinds:?}");
        }
        assert!(marked_shared > 0);
    }
}
