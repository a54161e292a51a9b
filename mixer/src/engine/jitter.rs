//! Adaptive jitter buffer for one talker: it stores arriving Opus packets and decides, once per
//! mix tick, what the caller decodes.
//!
//! The buffer is sans-IO and codec-free. It never reads the clock (every call that needs time takes
//! `now`), never touches the decoder, never allocates after [`JitterBuffer::new`] and never panics,
//! whatever the peer sends.
//!
//! # Drive contract
//!
//! - Call [`JitterBuffer::insert`] for every packet of the talker, with the time it reached the
//!   server. Arrival times drive the jitter estimate.
//! - Call [`JitterBuffer::pop`] exactly once per mix tick and decode what it returns (see
//!   [`Playout`]). The returned slices borrow the buffer until the next call.
//!
//! # Design (after libwebrtc NetEq's buffer-level control)
//!
//! - **Storage.** Packets are kept in a fixed ring of `capacity` slots indexed by their *extended*
//!   (unwrapped, 64-bit) sequence number modulo `capacity`. Every held packet lies in a window of
//!   `capacity` consecutive sequence numbers, so slots never collide.
//! - **Target delay.** Each packet's relative transit time (arrival minus media time) goes into a
//!   sliding window of `window` packets. The jitter is the 95th percentile of transit above the
//!   window's minimum, and the target is that jitter rounded up to whole frames plus
//!   `min_delay_frames`. The window forgets, so the target shrinks back a few seconds after a
//!   spike, which is the fix Janus needed for its "stuck delay" (janus-gateway PR #3353).
//! - **Idle and playing.** A talker starts idle. It starts playing when the buffer reaches the
//!   target (or its oldest packet has waited the target delay), which re-anchors the delay at every
//!   talk spurt, so DTX gaps never make it grow. An empty buffer is bridged by a few concealed
//!   frames (which absorbs a sender clock slower than ours), then the talker goes idle again.
//! - **Shedding delay.** When the backlog beyond the packet being played exceeds the target, two
//!   packets are merged into one frame. Quiet packets are merged early, loud ones only when the
//!   backlog is large. This absorbs a sender clock faster than ours and drains the burst after a
//!   TCP stall, so latency never grows without bound.

use std::time::{Duration, Instant};

/// Largest Opus packet (RFC 6716 section 3.4, R5) the buffer stores, in bytes.
pub const MAX_PAYLOAD: usize = 1275;

/// Media clock of the header timestamp, in Hz.
const SAMPLE_RATE_HZ: i128 = 48_000;
/// Largest accepted `capacity`: more would only waste memory (4096 frames are 82 s of audio) and
/// must stay far below 2^15 so sequence unwrapping stays unambiguous.
const MAX_CAPACITY: usize = 4096;
/// Largest accepted `window` (about 2.7 minutes of packets).
const MAX_WINDOW: usize = 8192;
/// Percentile of the transit spread taken as the jitter, as in NetEq (95th to 97th).
const JITTER_PERCENTILE: usize = 95;
/// A packet this quiet (in -dBov) or quieter, or without voice activity, may be merged away.
const QUIET_LEVEL_DBOV: u8 = 50;
/// Backlog above the target (in frames) tolerated before quiet packets are merged. The slack of
/// one frame is hysteresis: a single expand does not trigger a merge straight away.
const MERGE_SLACK_FRAMES: u64 = 1;
/// Backlog above the target (in frames) beyond which even loud packets are merged.
const MERGE_FORCE_FRAMES: u64 = 3;

/// Tuning knobs; [`Default`] gives the documented values.
///
/// [`JitterBuffer::new`] clamps out-of-range values instead of failing (see
/// [`JitterBuffer::config`] for the values in force).
#[derive(Clone, Debug)]
pub struct JitterConfig {
    /// Duration of one packet (default 20 ms). At least 1 µs.
    pub frame: Duration,
    /// Floor of the target playout delay, in frames (default 1).
    pub min_delay_frames: u32,
    /// Ceiling of the target playout delay, in frames (default 10, 200 ms). Raised to
    /// `min_delay_frames` and lowered to `capacity` if needed.
    pub max_delay_frames: u32,
    /// Packets held at most (default 64, 1.28 s). Clamped to `1..=4096`.
    pub capacity: usize,
    /// Consecutive concealed frames on an empty buffer before the talker goes idle (default 3).
    pub max_expand_frames: u32,
    /// Packets in the jitter-measurement window (default 128, about 2.5 s). Clamped to
    /// `1..=8192`.
    pub window: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            frame: Duration::from_millis(20),
            min_delay_frames: 1,
            max_delay_frames: 10,
            capacity: 64,
            max_expand_frames: 3,
            window: 128,
        }
    }
}

/// One packet handed to [`JitterBuffer::insert`]: the fields of the 9-byte wire header that the
/// buffer uses, plus the Opus payload.
#[derive(Clone, Copy, Debug)]
pub struct ArrivingPacket<'a> {
    /// Sequence number, +1 per packet sent, wrapping at 65535.
    pub sequence: u16,
    /// Media time of the first sample in 48 kHz samples, wrapping at 2^32.
    pub timestamp: u32,
    /// The sender's voice-activity flag.
    pub voice_activity: bool,
    /// Audio level in -dBov: 0 is loudest, 127 silence.
    pub level_dbov: u8,
    /// The Opus packet, 1 to [`MAX_PAYLOAD`] bytes.
    pub payload: &'a [u8],
}

/// What [`JitterBuffer::insert`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored.
    Accepted,
    /// Dropped: a packet with this sequence number is already stored.
    Duplicate,
    /// Dropped: its frame was already played or concealed, or it is too old to fit.
    Late,
    /// Dropped: the payload is empty or longer than [`MAX_PAYLOAD`].
    Invalid,
    /// Stored after a stream restart (a sequence jump) emptied the buffer.
    Reset,
    /// Stored, but the buffer was full, so the oldest frames were dropped or skipped.
    Overflow,
}

/// What the caller decodes this tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout<'a> {
    /// Idle: the participant is not talking, contributes nothing, and the caller skips decoding.
    Silence,
    /// Decode this packet normally.
    Packet(&'a [u8]),
    /// The frame is missing. With `None`, run Opus PLC (decode an empty packet). With `Some`,
    /// decode that *next* packet with `fec = true` to recover the lost frame from its in-band FEC;
    /// the next packet itself is still returned normally on a later tick.
    Conceal {
        /// The next packet, when it carries in-band FEC (LBRR) for the missing frame.
        fec_from: Option<&'a [u8]>,
    },
    /// Shed 20 ms of delay: decode both packets in order and cross-fade them into one frame.
    Merge(&'a [u8], &'a [u8]),
}

/// Counters, for metrics. They are cumulative: neither a detected restart nor
/// [`JitterBuffer::reset`] clears them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Every packet handed to `insert`, whatever its outcome.
    pub received: u64,
    /// Packets returned for normal decoding (a merge counts two).
    pub played: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped as late.
    pub late: u64,
    /// Packets dropped for an empty or oversized payload.
    pub invalid: u64,
    /// Concealed frames that consumed a sequence number, without FEC.
    pub lost: u64,
    /// Concealed frames that consumed a sequence number and were recovered from the next packet's
    /// in-band FEC.
    pub fec_recovered: u64,
    /// Concealed frames on an empty buffer (no sequence number consumed).
    pub expanded: u64,
    /// Merges (each sheds one frame of delay).
    pub merged: u64,
    /// Packets dropped because the buffer was full.
    pub overflow_dropped: u64,
    /// Stream restarts detected from a sequence jump.
    pub resets: u64,
    /// Transitions from playing to idle after the buffer stayed empty (talk spurt ends and stalls).
    pub underruns: u64,
}

/// Adaptive jitter buffer for one talker; see the [module docs](self) for the design.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// `config.frame` in µs, at least 1.
    frame_us: u64,
    slots: Box<[Slot]>,
    /// Occupied slots.
    held: usize,
    /// Set by the first packet of a stream; `None` before it and after a reset.
    anchor: Option<Anchor>,
    /// Highest extended sequence number accepted in this stream, the reference for unwrapping.
    /// Whenever `held > 0` it is held, so it is also the newest held packet. It only grows, even
    /// across restarts, so extended sequence numbers never repeat.
    seq_high: u64,
    /// The next frame to play; everything below it is late. `None` until the stream plays (or
    /// drops) its first frame.
    next: Option<u64>,
    playing: bool,
    /// Consecutive expands on an empty buffer.
    expands: u32,
    target_frames: u32,
    /// Ring of relative transit times, µs.
    transit: Box<[i64]>,
    transit_len: usize,
    transit_pos: usize,
    /// Preallocated scratch for the percentile selection.
    scratch: Box<[i64]>,
    stats: JitterStats,
}

/// One stored packet.
#[derive(Clone, Debug)]
struct Slot {
    /// Extended sequence number; meaningful only while `occupied`.
    ext: u64,
    occupied: bool,
    voice_activity: bool,
    level_dbov: u8,
    len: usize,
    arrival: Option<Instant>,
    data: [u8; MAX_PAYLOAD],
}

impl Slot {
    const EMPTY: Slot = Slot {
        ext: 0,
        occupied: false,
        voice_activity: false,
        level_dbov: 0,
        len: 0,
        arrival: None,
        data: [0; MAX_PAYLOAD],
    };

    fn payload(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or(&[])
    }

    fn is_quiet(&self) -> bool {
        !self.voice_activity || self.level_dbov >= QUIET_LEVEL_DBOV
    }
}

/// The reference point of a stream's transit measurements.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    /// Arrival time of the stream's first packet.
    origin: Instant,
    /// Extended timestamp of the stream's first packet.
    ts_origin: i64,
    /// Highest extended timestamp accepted, the reference for unwrapping timestamps.
    ts_high: i64,
}

impl JitterBuffer {
    /// Creates an idle, empty buffer. This is the only call that allocates: all slots (about
    /// `capacity` × 1.3 kB) and the measurement window.
    pub fn new(config: JitterConfig) -> Self {
        let config = sanitize(config);
        let frame_us = u64::try_from(config.frame.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        JitterBuffer {
            slots: vec![Slot::EMPTY; config.capacity].into_boxed_slice(),
            transit: vec![0; config.window].into_boxed_slice(),
            scratch: vec![0; config.window].into_boxed_slice(),
            frame_us,
            held: 0,
            anchor: None,
            seq_high: 0,
            next: None,
            playing: false,
            expands: 0,
            target_frames: config.min_delay_frames,
            transit_len: 0,
            transit_pos: 0,
            stats: JitterStats::default(),
            config,
        }
    }

    /// Offers one arriving packet; `now` is its arrival time.
    pub fn insert(&mut self, packet: ArrivingPacket<'_>, now: Instant) -> InsertOutcome {
        self.stats.received += 1;
        if packet.payload.is_empty() || packet.payload.len() > MAX_PAYLOAD {
            self.stats.invalid += 1;
            return InsertOutcome::Invalid;
        }
        if self.anchor.is_none() {
            self.start_stream(&packet, now);
            return InsertOutcome::Accepted;
        }

        let ext = self.unwrap_sequence(packet.sequence);
        let cap = self.capacity();
        // Distances are measured from the play point or, before anything played, from the oldest
        // held packet.
        let reference = self
            .next
            .or_else(|| self.lowest_held())
            .unwrap_or(self.seq_high);
        if ext >= reference {
            // More than a buffer ahead: no network reorders that much, so the sender restarted
            // (a new random sequence number lands here with probability ~1/2).
            if ext - reference > cap {
                return self.restart(&packet, now);
            }
        } else {
            // Far behind the play point is a restart too; otherwise a new stream that happened to
            // start just below the old one would be dropped as late for up to 2^15 packets.
            if reference - ext > cap {
                return self.restart(&packet, now);
            }
            if self.next.is_some() {
                // A late packet is still measured: it is exactly the evidence that the target is
                // too low. (Under TCP it only happens after an idle re-anchor or an overflow.)
                self.measure(packet.timestamp, now, false);
                self.stats.late += 1;
                return InsertOutcome::Late;
            }
        }
        // Before the first play a packet older than everything held is welcome, if the window of
        // `capacity` sequence numbers ending at the newest one still covers it.
        if self.seq_high.saturating_sub(ext) >= cap {
            self.measure(packet.timestamp, now, false);
            self.stats.late += 1;
            return InsertOutcome::Late;
        }
        if self.held_at(ext).is_some() {
            self.stats.duplicates += 1;
            return InsertOutcome::Duplicate;
        }

        let outcome = if self.make_room(ext) {
            InsertOutcome::Overflow
        } else {
            InsertOutcome::Accepted
        };
        self.store(&packet, ext, now);
        self.measure(packet.timestamp, now, true);
        outcome
    }

    /// Decides what the caller decodes this tick. Call it exactly once per mix tick.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        if !self.playing {
            if !self.ready_to_start(now) {
                return Playout::Silence;
            }
            // Start from the oldest packet: losses while idle are forgotten, and the delay is
            // re-anchored at the target for this talk spurt.
            self.next = self.lowest_held();
            self.playing = true;
            self.expands = 0;
        }
        let Some(next) = self.next else {
            // Unreachable (playing implies a play point); fall back to idle rather than panic.
            self.playing = false;
            return Playout::Silence;
        };

        if let Some(index) = self.held_at(next) {
            self.expands = 0;
            // Frames queued behind this packet, holes included: a hole costs a frame too.
            let beyond = self.seq_high.saturating_sub(next);
            let excess = beyond.saturating_sub(u64::from(self.target_frames));
            // Cross-fading two frames into one loses 20 ms of signal, so it waits for two quiet
            // packets unless the backlog is large (after a stall or a burst).
            if excess > MERGE_SLACK_FRAMES
                && let Some(second) = self.held_at(next + 1)
                && ((self.slots[index].is_quiet() && self.slots[second].is_quiet())
                    || excess > MERGE_FORCE_FRAMES)
            {
                self.release(index);
                self.release(second);
                self.next = Some(next + 2);
                self.stats.merged += 1;
                self.stats.played += 2;
                return Playout::Merge(self.slots[index].payload(), self.slots[second].payload());
            }
            // The slot's bytes stay intact until a later insert, which the borrow rules out.
            self.release(index);
            self.next = Some(next + 1);
            self.stats.played += 1;
            return Playout::Packet(self.slots[index].payload());
        }

        if self.held > 0 {
            // A later packet is here, so this frame is lost (or later than the whole buffer).
            self.expands = 0;
            self.next = Some(next + 1);
            if let Some(index) = self.held_at(next + 1)
                && opus_has_lbrr(self.slots[index].payload())
            {
                self.stats.fec_recovered += 1;
                return Playout::Conceal {
                    fec_from: Some(self.slots[index].payload()),
                };
            }
            self.stats.lost += 1;
            return Playout::Conceal { fec_from: None };
        }

        // Empty buffer: conceal without consuming the sequence number, so a late packet still
        // plays next tick. This is how a sender whose clock runs slower than ours is absorbed.
        if self.expands < self.config.max_expand_frames {
            self.expands += 1;
            self.stats.expanded += 1;
            return Playout::Conceal { fec_from: None };
        }
        // The talk spurt is over (or the link stalled): go idle; the next packet re-anchors.
        self.playing = false;
        self.expands = 0;
        self.stats.underruns += 1;
        Playout::Silence
    }

    /// The current adaptive target playout delay.
    pub fn target_delay(&self) -> Duration {
        self.config
            .frame
            .checked_mul(self.target_frames)
            .unwrap_or(Duration::MAX)
    }

    /// The current target playout delay in frames.
    pub fn target_frames(&self) -> u32 {
        self.target_frames
    }

    /// Frames of audio queued: from the play point (or, when idle, the oldest held packet) to the
    /// newest held packet, holes included, because a missing frame still costs one frame of
    /// playout. Never more than the capacity.
    pub fn buffered_frames(&self) -> usize {
        if self.held == 0 {
            return 0;
        }
        let start = if self.playing {
            self.next
        } else {
            self.lowest_held()
        };
        let span = start.map_or(0, |start| {
            self.seq_high.saturating_sub(start).saturating_add(1)
        });
        usize::try_from(span).unwrap_or(usize::MAX)
    }

    /// Packets held (`buffered_frames` without the holes).
    pub fn held_packets(&self) -> usize {
        self.held
    }

    /// Whether the talker is idle: `pop` returns [`Playout::Silence`] until enough is buffered.
    pub fn is_idle(&self) -> bool {
        !self.playing
    }

    /// Cumulative counters.
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// The configuration in force, after clamping.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Extended (unwrapped) sequence number of the next frame to play, if the stream has played.
    /// Its low 16 bits are the wire sequence number.
    pub fn next_sequence(&self) -> Option<u64> {
        self.next
    }

    /// Forgets the stream: drops every packet and the jitter history and goes idle, as if
    /// freshly created. Counters are kept. Use it when the talker reconnects.
    pub fn reset(&mut self) {
        self.clear_stream();
    }

    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot_index(&self, ext: u64) -> usize {
        // The remainder is below the slot count, which is a usize.
        (ext % self.capacity()) as usize
    }

    /// The slot holding `ext`, if it is held.
    fn held_at(&self, ext: u64) -> Option<usize> {
        let index = self.slot_index(ext);
        let slot = &self.slots[index];
        (slot.occupied && slot.ext == ext).then_some(index)
    }

    fn lowest_held(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|slot| slot.occupied)
            .map(|slot| slot.ext)
            .min()
    }

    fn release(&mut self, index: usize) {
        self.slots[index].occupied = false;
        self.held -= 1;
    }

    /// The extended sequence number nearest to the highest one seen. Every extended number keeps
    /// the wire number in its low 16 bits.
    fn unwrap_sequence(&self, sequence: u16) -> u64 {
        // Truncation intended: the low 16 bits are the wire number of `seq_high`.
        let delta = sequence.wrapping_sub(self.seq_high as u16) as i16;
        self.seq_high.saturating_add_signed(i64::from(delta))
    }

    /// Whether an idle talker has enough buffered to start a talk spurt.
    fn ready_to_start(&self, now: Instant) -> bool {
        if self.held == 0 {
            return false;
        }
        if self.buffered_frames() >= self.target_frames as usize {
            return true;
        }
        // A short spurt (or a trickle) must not wait forever for a level it never reaches.
        let oldest = self
            .slots
            .iter()
            .filter(|s| s.occupied)
            .filter_map(|s| s.arrival)
            .min();
        oldest.is_some_and(|oldest| now.saturating_duration_since(oldest) >= self.target_delay())
    }

    /// Frees room so that `ext` fits in the window of `capacity` sequence numbers ending at the
    /// newest held packet. Returns whether frames had to be dropped or skipped.
    fn make_room(&mut self, ext: u64) -> bool {
        let new_low = (ext + 1).saturating_sub(self.capacity());
        let mut dropped = false;
        for index in 0..self.slots.len() {
            if self.slots[index].occupied && self.slots[index].ext < new_low {
                self.release(index);
                self.stats.overflow_dropped += 1;
                dropped = true;
            }
        }
        // Move the play point with the window. Skipping missing frames of a playing stream also
        // costs audio, so it reports an overflow too; sliding an idle talker's floor is free.
        if let Some(next) = self.next
            && next < new_low
        {
            dropped |= self.playing;
            self.next = Some(new_low);
        }
        dropped
    }

    fn store(&mut self, packet: &ArrivingPacket<'_>, ext: u64, now: Instant) {
        let index = self.slot_index(ext);
        let slot = &mut self.slots[index];
        let len = packet.payload.len().min(MAX_PAYLOAD);
        slot.data[..len].copy_from_slice(&packet.payload[..len]);
        slot.len = len;
        slot.ext = ext;
        slot.voice_activity = packet.voice_activity;
        slot.level_dbov = packet.level_dbov;
        slot.arrival = Some(now);
        if !slot.occupied {
            slot.occupied = true;
            self.held += 1;
        }
        self.seq_high = self.seq_high.max(ext);
    }

    /// Drops the stream, keeping the counters and the sequence epoch.
    fn clear_stream(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.occupied = false;
        }
        self.held = 0;
        self.anchor = None;
        self.next = None;
        self.playing = false;
        self.expands = 0;
        self.transit_len = 0;
        self.transit_pos = 0;
        self.target_frames = self.config.min_delay_frames;
    }

    /// Drops the old stream and starts the new one with this packet.
    fn restart(&mut self, packet: &ArrivingPacket<'_>, now: Instant) -> InsertOutcome {
        self.stats.resets += 1;
        self.clear_stream();
        self.start_stream(packet, now);
        InsertOutcome::Reset
    }

    /// Anchors a new stream on its first packet. Its transit history starts afresh, because a
    /// restarted sender's timestamps bear no relation to the old ones.
    fn start_stream(&mut self, packet: &ArrivingPacket<'_>, now: Instant) {
        // A new 2^16 epoch above everything seen keeps extended numbers increasing across
        // restarts and keeps the wire number in the low 16 bits.
        let ext = ((self.seq_high >> 16).saturating_add(1) << 16) | u64::from(packet.sequence);
        let ts = i64::from(packet.timestamp);
        self.anchor = Some(Anchor {
            origin: now,
            ts_origin: ts,
            ts_high: ts,
        });
        self.store(packet, ext, now);
        self.measure(packet.timestamp, now, true);
    }

    /// Records the relative transit time of one packet and updates the target.
    fn measure(&mut self, timestamp: u32, now: Instant, accepted: bool) {
        let Some(anchor) = self.anchor.as_mut() else {
            return;
        };
        // Truncation intended: the low 32 bits are the wire timestamp of `ts_high`.
        let delta = timestamp.wrapping_sub(anchor.ts_high as u32) as i32;
        let ts = anchor.ts_high.saturating_add(i64::from(delta));
        if accepted {
            anchor.ts_high = anchor.ts_high.max(ts);
        }
        let media_us = i128::from(ts.saturating_sub(anchor.ts_origin)) * 1_000_000 / SAMPLE_RATE_HZ;
        let arrival_us = match now.checked_duration_since(anchor.origin) {
            Some(after) => i128::try_from(after.as_micros()).unwrap_or(i128::MAX),
            None => {
                -i128::try_from(anchor.origin.duration_since(now).as_micros()).unwrap_or(i128::MAX)
            }
        };
        let transit = arrival_us.saturating_sub(media_us);
        let transit =
            i64::try_from(transit).unwrap_or(if transit < 0 { i64::MIN } else { i64::MAX });

        self.transit[self.transit_pos] = transit;
        self.transit_pos = (self.transit_pos + 1) % self.transit.len();
        self.transit_len = (self.transit_len + 1).min(self.transit.len());
        self.update_target();
    }

    /// Target = ceil(p95 of transit above the window minimum / frame) + floor, clamped.
    fn update_target(&mut self) {
        let n = self.transit_len;
        let (min_frames, max_frames) = (self.config.min_delay_frames, self.config.max_delay_frames);
        if n == 0 {
            self.target_frames = min_frames;
            return;
        }
        let values = &mut self.scratch[..n];
        values.copy_from_slice(&self.transit[..n]);
        let floor = values.iter().copied().min().unwrap_or(0);
        for value in values.iter_mut() {
            *value = value.saturating_sub(floor);
        }
        // Nearest-rank percentile: with 128 packets this is the 122nd smallest, so the 6 worst
        // packets of the window are ignored (they are concealed rather than waited for).
        let rank = (n * JITTER_PERCENTILE).div_ceil(100).max(1) - 1;
        let (_, jitter_us, _) = values.select_nth_unstable(rank);
        let jitter_us = u64::try_from(*jitter_us).unwrap_or(0);
        let frames = u32::try_from(jitter_us.div_ceil(self.frame_us)).unwrap_or(u32::MAX);
        self.target_frames = frames
            .saturating_add(min_frames)
            .clamp(min_frames, max_frames);
    }
}

/// Clamps every knob into a range the buffer can work with.
fn sanitize(mut config: JitterConfig) -> JitterConfig {
    config.frame = config.frame.max(Duration::from_micros(1));
    config.capacity = config.capacity.clamp(1, MAX_CAPACITY);
    config.window = config.window.clamp(1, MAX_WINDOW);
    let capacity = u32::try_from(config.capacity).unwrap_or(u32::MAX);
    config.min_delay_frames = config.min_delay_frames.min(capacity);
    config.max_delay_frames = config
        .max_delay_frames
        .clamp(config.min_delay_frames, capacity);
    config
}

/// True if a 20 ms mono SILK or hybrid Opus packet carries in-band FEC (LBRR) data for the
/// previous frame.
///
/// RFC 6716 section 3.1: the TOC byte's configuration (`toc >> 3`) is SILK-only for 0..=11
/// (frame size 10/20/40/60 ms by `config % 4`), hybrid for 12..=15 (10 ms for 12 and 14, 20 ms for
/// 13 and 15) and CELT-only for 16..=31, which never has LBRR. Bit 2 is stereo and bits 0-1 the
/// frame count code. Only the simple case is recognised (one 20 ms mono frame, code 0); every
/// other packet answers `false`.
///
/// RFC 6716 section 4.2.3: a 20 ms mono SILK frame opens with its VAD flag then its LBRR flag,
/// both coded with probability 1/2, so they are the two most significant bits of the first byte
/// after the TOC. libopus's `opus_packet_has_lbrr` reads the same bit.
pub fn opus_has_lbrr(packet: &[u8]) -> bool {
    let [toc, first, ..] = packet else {
        return false;
    };
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let frame_count_code = toc & 0x03;
    if stereo || frame_count_code != 0 {
        return false;
    }
    let silk_20ms = match config {
        0..=11 => config % 4 == 1,
        13 | 15 => true,
        _ => false,
    };
    silk_20ms && (first >> 6) & 1 == 1
}
