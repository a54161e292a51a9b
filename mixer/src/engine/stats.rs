//! Plain counters the shell copies into metrics, and the hook that times a tick's phases.

use super::config::LIMITER_DB_BUCKETS;
use super::jitter::JitterStats;

/// Plain counters for one participant; the shell copies them into metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    /// Jitter-buffer counters (received, late, lost, concealed, ...), copied at snapshot time.
    pub jitter: JitterStats,
    /// Packets that failed to decode.
    pub decode_errors: u64,
    /// Frames decoded (including concealment and merges).
    pub frames_decoded: u64,
    /// Silent packets played without decoding.
    pub frames_skipped: u64,
    /// Frames encoded and handed out.
    pub frames_out: u64,
    /// Frames replaced before the shell drained them.
    pub frames_overwritten: u64,
    /// Frames not sent because the mix had settled into silence (downlink DTX).
    pub frames_paused: u64,
    /// Output frames in which the limiter reduced the gain.
    pub frames_limited: u64,
    /// Limited frames by their deepest gain reduction, in whole dB (index 1 = up to 1 dB, ...,
    /// the last bucket = that much or more).
    pub limiter_reduction_db: [u64; LIMITER_DB_BUCKETS],
    /// Encoder failures.
    pub encode_errors: u64,
    /// Audio packets dropped because the participant was muted.
    pub frames_muted: u64,
    /// Audio packets dropped because a push-to-talk participant did not hold the floor.
    pub frames_without_floor: u64,
}

/// Plain counters for a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// Ticks run.
    pub ticks: u64,
    /// Ticks skipped by the catch-up policy.
    pub ticks_skipped: u64,
    /// Talkers that contributed audio, summed over ticks (divide by ticks for the average).
    pub contributions: u64,
    /// Opus encodes run (own streams, the shared stream and priming).
    pub encodes: u64,
    /// Encodes that primed a talker's encoder on moving off the shared stream.
    pub primes: u64,
    /// Talker frames decoded but left out of the mix by the talker cap.
    pub capped: u64,
}

/// The phases of one tick, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickPhase {
    /// Jitter buffers and Opus decoding (and concealment).
    Decode,
    /// Summing, mix-minus and the limiter.
    Mix,
    /// Opus encoding of every output.
    Encode,
    /// The tick is over.
    Done,
}

/// Told when each phase of a tick starts; the shell implements it with a clock to measure the
/// cost of decoding, mixing and encoding.
pub trait PhaseTimer {
    /// `phase` starts now.
    fn phase(&mut self, phase: TickPhase);
}

/// A [`PhaseTimer`] that measures nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTimer;

impl PhaseTimer for NoTimer {
    fn phase(&mut self, _phase: TickPhase) {}
}

/// Counters summed over everyone who was ever in a room, for the shell's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomTotals {
    /// Jitter-buffer counters, summed.
    pub jitter: JitterStats,
    /// Participant counters, summed (the `jitter` field inside stays zero; see above).
    pub participants: ParticipantStats,
}

impl RoomTotals {
    pub(super) fn add(&mut self, stats: &ParticipantStats) {
        let j = &mut self.jitter;
        let s = &stats.jitter;
        j.received += s.received;
        j.played += s.played;
        j.duplicates += s.duplicates;
        j.late += s.late;
        j.invalid += s.invalid;
        j.lost += s.lost;
        j.fec_recovered += s.fec_recovered;
        j.expanded += s.expanded;
        j.merged += s.merged;
        j.overflow_dropped += s.overflow_dropped;
        j.resets += s.resets;
        j.underruns += s.underruns;
        j.reordered += s.reordered;
        let p = &mut self.participants;
        p.decode_errors += stats.decode_errors;
        p.frames_decoded += stats.frames_decoded;
        p.frames_skipped += stats.frames_skipped;
        p.frames_out += stats.frames_out;
        p.frames_overwritten += stats.frames_overwritten;
        p.frames_paused += stats.frames_paused;
        p.frames_limited += stats.frames_limited;
        p.encode_errors += stats.encode_errors;
        p.frames_muted += stats.frames_muted;
        p.frames_without_floor += stats.frames_without_floor;
        for (total, n) in p
            .limiter_reduction_db
            .iter_mut()
            .zip(&stats.limiter_reduction_db)
        {
            *total += n;
        }
    }
}
