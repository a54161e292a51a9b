//! The cheap per-frame measurements every receiver makes, and the shared live counters the
//! timeline's sampler reads (for the report's charts and the progress line).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use mixer_protocol::SAMPLE_RATE;

/// Counts frames lost, and frames paused in silence, from the server's sequence numbers (u16,
/// wrapping).
///
/// The server sends over TCP, in order. Its sequence numbers follow the room's mix clock, so they
/// jump over every tick it did not send this client. A gap ending in a frame with the marker bit
/// is a pause in silence (downlink DTX), counted in `paused`; a gap ending in an unmarked frame
/// means frames the server dropped from this client's queue, counted in `lost`. An unmarked
/// sequence number at or behind the last one (a duplicate, or a jump back of more than half the
/// space) is counted separately and does not move the reference point. A marked frame can only
/// resume a pause, so any step forward to it, however long (up to 65,535 frames, 21 minutes), is
/// a pause.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u16>,
    /// Frames received.
    pub received: u64,
    /// Frames missing between received ones, the next one unmarked: dropped by the server.
    pub lost: u64,
    /// Frames not sent because this client's mix was silent: gaps ending in a marked frame.
    pub paused: u64,
    /// Frames that arrived at or behind the highest sequence number seen.
    pub out_of_order: u64,
}

impl SeqTracker {
    /// A new stream starts (a new connection, at another node, say): its first frame is not
    /// compared with the old stream's last. The counts go on.
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// Records a received frame; returns how far its sequence number is ahead of the previous
    /// frame's (1 when consecutive), or `None` for the first frame and frames out of order.
    pub fn record(&mut self, sequence: u16, marker: bool) -> Option<u16> {
        self.received += 1;
        let Some(last) = self.last else {
            self.last = Some(sequence);
            return None;
        };
        let ahead = sequence.wrapping_sub(last);
        if ahead == 0 || (ahead >= 0x8000 && !marker) {
            self.out_of_order += 1;
            return None;
        }
        self.last = Some(sequence);
        let missing = u64::from(ahead - 1);
        if marker {
            self.paused += missing;
        } else {
            self.lost += missing;
        }
        Some(ahead)
    }

    /// Frames the server sent as far as the sequence numbers tell (paused frames were not sent).
    pub fn expected(&self) -> u64 {
        self.received - self.out_of_order + self.lost
    }
}

/// RFC 3550 §6.4.1 interarrival jitter, in 48 kHz timestamp units.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Jitter {
    previous: Option<(f64, u32)>,
    /// The running estimate J, in samples.
    pub jitter: f64,
}

impl Jitter {
    /// Records a frame with media `timestamp` arriving at `arrival` seconds.
    pub fn record(&mut self, arrival: f64, timestamp: u32) {
        let arrival_units = arrival * f64::from(SAMPLE_RATE);
        if let Some((previous_arrival, previous_timestamp)) = self.previous {
            let sent = f64::from(timestamp.wrapping_sub(previous_timestamp) as i32);
            let d = (arrival_units - previous_arrival) - sent;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.previous = Some((arrival_units, timestamp));
    }

    /// The estimate in milliseconds.
    pub fn millis(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(SAMPLE_RATE)
    }
}

/// A histogram of microseconds up to 100 s, two significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("static bounds are valid")
}

/// Frame counts of one client since its last flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames received.
    pub received: u64,
    /// Frames lost.
    pub lost: u64,
    /// Frames paused in silence.
    pub paused: u64,
}

impl FrameCounts {
    /// The counts of `seq` so far.
    pub fn of(seq: &SeqTracker) -> FrameCounts {
        FrameCounts {
            received: seq.received,
            lost: seq.lost,
            paused: seq.paused,
        }
    }

    /// The counts added since `earlier`.
    pub fn since(self, earlier: FrameCounts) -> FrameCounts {
        FrameCounts {
            received: self.received - earlier.received,
            lost: self.lost - earlier.lost,
            paused: self.paused - earlier.paused,
        }
    }
}

/// Counters every client adds to about once a second, read by [`crate::timeline::run_sampler`].
#[derive(Debug)]
pub struct Live {
    /// Clients currently joined.
    pub connected: AtomicU64,
    /// Audio frames received in total.
    pub frames: AtomicU64,
    /// Frames lost (sequence gaps) in total.
    pub lost: AtomicU64,
    /// Frames paused in silence (marked sequence gaps) in total.
    pub paused: AtomicU64,
    /// Failed joins, disconnects, dropped connections and server error messages.
    pub errors: AtomicU64,
    /// Sessions that broke mid-run (a redirect, or a dropped connection) and were rejoined or
    /// are being rejoined.
    pub reconnections: AtomicU64,
    /// Jitter samples (µs) since the sampler last read (and reset) them. (The run's jitter
    /// percentiles come from each client's own samples, so that each group has its own.)
    pub jitter: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            connected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnections: AtomicU64::new(0),
            jitter: Mutex::new(micros_histogram()),
        }
    }
}

impl Live {
    /// Adds one client's counts since its last flush, and its current jitter estimate once it
    /// is past its warm-up.
    pub fn flush(&self, counts: FrameCounts, jitter_ms: Option<f64>) {
        self.frames.fetch_add(counts.received, Ordering::Relaxed);
        self.lost.fetch_add(counts.lost, Ordering::Relaxed);
        self.paused.fetch_add(counts.paused, Ordering::Relaxed);
        if let Some(ms) = jitter_ms {
            let micros = (ms * 1000.0).max(1.0) as u64;
            if let Ok(mut histogram) = self.jitter.lock() {
                let _ = histogram.record(micros);
            }
        }
    }

    /// Counts an error.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_across_the_wrap() {
        let mut seq = SeqTracker::default();
        assert_eq!(seq.record(65_533, true), None); // the first frame is marked
        for s in [65_534u16, 65_535, 0, 1] {
            assert_eq!(seq.record(s, false), Some(1));
        }
        assert_eq!(seq.record(4, false), Some(3)); // 2 and 3 lost
        assert_eq!(seq.record(65_535, false), None); // far behind: out of order, not 65k lost
        assert_eq!(seq.record(4, false), None); // duplicate
        assert_eq!(seq.record(5, false), Some(1));
        assert_eq!(
            (seq.received, seq.lost, seq.paused, seq.out_of_order),
            (9, 2, 0, 2)
        );
        assert_eq!(seq.expected(), 9);
    }

    #[test]
    fn a_gap_ending_in_a_marked_frame_is_a_pause_and_an_unmarked_one_is_loss() {
        let mut seq = SeqTracker::default();
        seq.record(100, true);
        seq.record(101, false);
        // Silence: 102..=149 not sent, 150 resumes with the marker.
        assert_eq!(seq.record(150, true), Some(49));
        assert_eq!((seq.lost, seq.paused), (0, 48));
        // Loss: 152 and 153 dropped from the queue, 154 unmarked.
        seq.record(151, false);
        assert_eq!(seq.record(154, false), Some(3));
        assert_eq!((seq.lost, seq.paused), (2, 48));
        // A marked frame right after the previous one: a pause of no frames (stream restart).
        assert_eq!(seq.record(155, true), Some(1));
        assert_eq!((seq.received, seq.lost, seq.paused), (6, 2, 48));
        // Paused frames were never sent: not expected.
        assert_eq!(seq.expected(), 8);
    }

    #[test]
    fn pauses_count_across_the_wrap_and_a_marked_frame_is_never_behind() {
        let mut seq = SeqTracker::default();
        seq.record(65_530, true);
        // 65,531..=65,535 and 0..=9 paused (15 frames), 10 resumes.
        assert_eq!(seq.record(10, true), Some(16));
        assert_eq!((seq.lost, seq.paused, seq.out_of_order), (0, 15, 0));
        // A pause longer than half the sequence space (40,000 ticks, 13 minutes) is still a
        // pause: only an unmarked frame can be behind.
        assert_eq!(seq.record(40_010, true), Some(40_000));
        assert_eq!(seq.paused, 15 + 39_999);
        assert_eq!(seq.record(40_010, true), None); // a duplicate is still a duplicate
        assert_eq!(seq.record(40_000, false), None); // behind
        assert_eq!((seq.lost, seq.out_of_order), (0, 2));
    }

    #[test]
    fn jitter_is_zero_for_a_steady_stream_and_tracks_alternating_delay() {
        let mut steady = Jitter::default();
        for k in 0..100u32 {
            steady.record(
                f64::from(k) * 0.02,
                k.wrapping_mul(960).wrapping_add(u32::MAX - 1000),
            );
        }
        assert!(steady.millis() < 1e-6, "{}", steady.millis());
        // Every other frame 4 ms late: |D| is 4 ms on every frame, so J converges to 4 ms.
        let mut bumpy = Jitter::default();
        for k in 0..400u32 {
            let late = if k % 2 == 1 { 0.004 } else { 0.0 };
            bumpy.record(f64::from(k) * 0.02 + late, k * 960);
        }
        assert!((bumpy.millis() - 4.0).abs() < 0.01, "{}", bumpy.millis());
    }
}
