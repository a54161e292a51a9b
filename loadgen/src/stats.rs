//! The cheap per-frame measurements every receiver makes, and the shared live counters the
//! progress line reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use mixer_protocol::SAMPLE_RATE;

/// Counts frames lost from the server's sequence numbers (u16, wrapping).
///
/// The server sends over TCP, in order, so a gap means frames it dropped from this client's
/// queue. A sequence number at or behind the last one (a duplicate, or a jump back of more than
/// half the space) is counted separately and does not move the reference point.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u16>,
    /// Frames received.
    pub received: u64,
    /// Frames missing between received ones.
    pub lost: u64,
    /// Frames that arrived at or behind the highest sequence number seen.
    pub out_of_order: u64,
}

impl SeqTracker {
    /// Records a received sequence number; returns how many frames were missing before it.
    pub fn record(&mut self, sequence: u16) -> u16 {
        self.received += 1;
        let Some(last) = self.last else {
            self.last = Some(sequence);
            return 0;
        };
        let ahead = sequence.wrapping_sub(last);
        if ahead == 0 || ahead >= 0x8000 {
            self.out_of_order += 1;
            return 0;
        }
        self.last = Some(sequence);
        let missing = ahead - 1;
        self.lost += u64::from(missing);
        missing
    }

    /// Frames the server sent as far as the sequence numbers tell.
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

/// Counters every client adds to about once a second, read by the progress line.
#[derive(Debug)]
pub struct Live {
    /// Clients currently joined.
    pub connected: AtomicU64,
    /// Audio frames received in total.
    pub frames: AtomicU64,
    /// Frames lost (sequence gaps) in total.
    pub lost: AtomicU64,
    /// Failed joins, disconnects and server error messages.
    pub errors: AtomicU64,
    /// Jitter samples (µs) since the progress line last read them.
    pub jitter: Mutex<Histogram<u64>>,
    /// All jitter samples (µs) of the run, one per client per second after its warm-up.
    pub jitter_total: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            connected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            jitter: Mutex::new(micros_histogram()),
            jitter_total: Mutex::new(micros_histogram()),
        }
    }
}

impl Live {
    /// Adds one client's counts since its last flush, and its current jitter estimate once it
    /// is past its warm-up.
    pub fn flush(&self, frames: u64, lost: u64, jitter_ms: Option<f64>) {
        self.frames.fetch_add(frames, Ordering::Relaxed);
        self.lost.fetch_add(lost, Ordering::Relaxed);
        if let Some(ms) = jitter_ms {
            let micros = (ms * 1000.0).max(1.0) as u64;
            for histogram in [&self.jitter, &self.jitter_total] {
                if let Ok(mut histogram) = histogram.lock() {
                    let _ = histogram.record(micros);
                }
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
        for s in [65_533u16, 65_534, 65_535, 0, 1] {
            assert_eq!(seq.record(s), 0);
        }
        assert_eq!(seq.record(4), 2); // 2 and 3 missing
        assert_eq!(seq.record(65_535), 0); // far behind: out of order, not 65k lost
        assert_eq!(seq.record(4), 0); // duplicate
        assert_eq!(seq.record(5), 0);
        assert_eq!((seq.received, seq.lost, seq.out_of_order), (9, 2, 2));
        assert_eq!(seq.expected(), 9);
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
