//! A look-ahead peak limiter for each outgoing mix.
//!
//! Summing several loud talkers can exceed full scale. Clipping would add harsh distortion and
//! integer wrap-around (as in mixers that sum into i16) is worse, so every outgoing mix passes
//! through this limiter before it is encoded. It guarantees `|out| <= threshold` for every sample
//! while changing the gain smoothly:
//!
//! 1. each input sample `x[n]` needs gain `r[n] = min(1, threshold / |x[n]|)`;
//! 2. a sliding minimum over the next `L` samples (`L` = look-ahead) starts lowering the gain
//!    before a peak arrives;
//! 3. a moving average over `L` samples of that minimum turns the step into a ramp. Every value
//!    in the average window is a minimum over a window that contains the sample being output, so
//!    the averaged gain is still `<= r` at that sample: the guarantee survives the smoothing;
//! 4. the gain then returns to 1 no faster than the release time (a one-pole rise), which only
//!    ever makes the gain smaller, so the guarantee holds.
//!
//! The output is the input delayed by `L` samples (1 ms at 48 kHz). When a frame stays under the
//! threshold and the limiter is at rest, a fast path just applies the delay, so a quiet room pays
//! almost nothing for it. No allocation after construction.

/// Look-ahead in samples (1 ms at 48 kHz).
pub const LOOKAHEAD: usize = 48;
const WINDOW: usize = LOOKAHEAD + 1;

/// Limiter settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Peak ceiling as a linear amplitude (full scale = 1.0).
    pub threshold: f32,
    /// Time for the gain to recover most of the way (63 %) back to unity, in samples.
    pub release_samples: f32,
}

impl Default for LimiterConfig {
    /// -1 dBFS ceiling (headroom for the codec's own overshoot) and an 80 ms release.
    fn default() -> Self {
        LimiterConfig {
            threshold: 10f32.powf(-1.0 / 20.0),
            release_samples: 0.080 * 48_000.0,
        }
    }
}

/// Gain-reduction figures for one processed frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterReport {
    /// Smallest gain applied in the frame (1.0 = untouched).
    pub min_gain: f32,
}

/// Look-ahead peak limiter state for one output stream.
#[derive(Debug, Clone)]
pub struct Limiter {
    threshold: f32,
    release_coeff: f32,
    /// Input delayed by LOOKAHEAD samples (ring).
    delay: [f32; LOOKAHEAD],
    delay_pos: usize,
    /// Monotonic deque (ring of indices and values) for the sliding minimum of required gains.
    min_vals: [f32; WINDOW],
    min_idx: [u64; WINDOW],
    min_head: usize,
    min_len: usize,
    /// Ring of the last WINDOW sliding-minimum values and their running sum.
    avg_ring: [f32; WINDOW],
    avg_pos: usize,
    avg_sum: f32,
    /// Gain applied to the last output sample (after release smoothing).
    gain: f32,
    /// Samples processed so far (indexes the deque).
    n: u64,
    /// Samples since a required gain below 1 last entered; when it exceeds 2 * WINDOW and the gain
    /// is back at 1, every internal window holds 1.0 and the fast path is exact.
    since_reduction: u64,
}

impl Limiter {
    /// A limiter at rest (unity gain, silent delay line).
    pub fn new(config: LimiterConfig) -> Limiter {
        Limiter {
            threshold: config.threshold,
            release_coeff: (-1.0 / config.release_samples.max(1.0)).exp(),
            delay: [0.0; LOOKAHEAD],
            delay_pos: 0,
            min_vals: [1.0; WINDOW],
            min_idx: [0; WINDOW],
            min_head: 0,
            min_len: 0,
            avg_ring: [1.0; WINDOW],
            avg_pos: 0,
            avg_sum: WINDOW as f32,
            gain: 1.0,
            n: 0,
            since_reduction: u64::MAX / 2,
        }
    }

    /// Limits `frame` in place (the output is the input delayed by [`LOOKAHEAD`] samples).
    pub fn process(&mut self, frame: &mut [f32]) -> LimiterReport {
        // NaN must not pass for quiet (f32::max would skip it): it propagates and takes the
        // slow path, which turns non-finite samples into silence.
        let peak = frame.iter().fold(0.0f32, |m, s| {
            if s.is_nan() || s.abs() > m {
                s.abs()
            } else {
                m
            }
        });
        if peak <= self.threshold && self.at_rest() {
            self.delay_only(frame);
            return LimiterReport { min_gain: 1.0 };
        }
        let mut min_gain = 1.0f32;
        for sample in frame.iter_mut() {
            let x = if sample.is_finite() { *sample } else { 0.0 };
            let required = if x.abs() > self.threshold {
                self.threshold / x.abs()
            } else {
                1.0
            };
            if required < 1.0 {
                self.since_reduction = 0;
            } else {
                self.since_reduction = self.since_reduction.saturating_add(1);
            }
            let window_min = self.push_min(required);
            // Moving average of the window minimum over the last WINDOW samples.
            self.avg_sum += window_min - self.avg_ring[self.avg_pos];
            self.avg_ring[self.avg_pos] = window_min;
            self.avg_pos = (self.avg_pos + 1) % WINDOW;
            let smoothed = (self.avg_sum / WINDOW as f32).min(1.0);
            // Falling: follow at once (already a ramp). Rising: one-pole release.
            // The last 0.01 dB of the release snaps to the target, so the limiter comes fully to
            // rest instead of creeping towards unity for ever.
            self.gain = if smoothed < self.gain || smoothed - self.gain < 1e-3 {
                smoothed
            } else {
                smoothed - (smoothed - self.gain) * self.release_coeff
            };
            min_gain = min_gain.min(self.gain);
            let delayed = self.delay[self.delay_pos];
            self.delay[self.delay_pos] = x;
            self.delay_pos = (self.delay_pos + 1) % LOOKAHEAD;
            // The clamp only absorbs float rounding in the running sum; the gain already keeps
            // the delayed sample under the threshold.
            *sample = (delayed * self.gain).clamp(-self.threshold, self.threshold);
            self.n += 1;
        }
        if self.since_reduction > 2 * WINDOW as u64 && self.gain >= 1.0 {
            self.settle();
        }
        LimiterReport { min_gain }
    }

    /// Whether the limiter is at rest with a silent delay line: processing a frame of digital
    /// silence would output silence and leave the limiter exactly as it is. Lets the engine skip
    /// an idle room's tick.
    pub fn is_silent(&self) -> bool {
        self.at_rest() && self.delay.iter().all(|s| *s == 0.0)
    }

    fn at_rest(&self) -> bool {
        self.gain >= 1.0 && self.since_reduction > 2 * WINDOW as u64
    }

    /// Resets the gain computer to exactly "all ones", so float residue in the running sum cannot
    /// keep the limiter off its fast path.
    fn settle(&mut self) {
        self.gain = 1.0;
        self.min_len = 0;
        self.avg_ring = [1.0; WINDOW];
        self.avg_sum = WINDOW as f32;
    }

    /// Applies only the look-ahead delay, with block copies (the frame is known finite here).
    fn delay_only(&mut self, frame: &mut [f32]) {
        let n = frame.len();
        if n < LOOKAHEAD {
            for sample in frame.iter_mut() {
                std::mem::swap(sample, &mut self.delay[self.delay_pos]);
                self.delay_pos = (self.delay_pos + 1) % LOOKAHEAD;
            }
        } else {
            // Oldest delayed sample first, then shift the frame and keep its tail.
            self.delay.rotate_left(self.delay_pos);
            self.delay_pos = 0;
            let mut tail = [0.0f32; LOOKAHEAD];
            tail.copy_from_slice(&frame[n - LOOKAHEAD..]);
            frame.copy_within(..n - LOOKAHEAD, LOOKAHEAD);
            frame[..LOOKAHEAD].copy_from_slice(&self.delay);
            self.delay = tail;
        }
        self.n += n as u64;
    }

    /// Pushes `value` for sample `self.n` and returns the minimum over the last WINDOW samples.
    fn push_min(&mut self, value: f32) -> f32 {
        // Drop larger values from the back: they can never be the minimum again.
        while self.min_len > 0 {
            let back = (self.min_head + self.min_len - 1) % WINDOW;
            if self.min_vals[back] >= value {
                self.min_len -= 1;
            } else {
                break;
            }
        }
        // Drop the front if it slid out of the window.
        if self.min_len > 0 && self.min_idx[self.min_head] + WINDOW as u64 <= self.n {
            self.min_head = (self.min_head + 1) % WINDOW;
            self.min_len -= 1;
        }
        let slot = (self.min_head + self.min_len) % WINDOW;
        self.min_vals[slot] = value;
        self.min_idx[slot] = self.n;
        self.min_len += 1;
        self.min_vals[self.min_head]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, amp: f32, len: usize, phase0: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                amp * (2.0 * std::f32::consts::PI * freq * (i + phase0) as f32 / 48_000.0).sin()
            })
            .collect()
    }

    #[test]
    fn quiet_signal_passes_unchanged_but_delayed() {
        let mut limiter = Limiter::new(LimiterConfig::default());
        let input = sine(440.0, 0.5, 960 * 3, 0);
        let mut output = input.clone();
        for frame in output.chunks_mut(960) {
            let report = limiter.process(frame);
            assert_eq!(report.min_gain, 1.0);
        }
        for i in LOOKAHEAD..input.len() {
            assert_eq!(output[i], input[i - LOOKAHEAD]);
        }
    }

    #[test]
    fn loud_mix_never_exceeds_threshold_and_has_no_clicks() {
        let config = LimiterConfig::default();
        let mut limiter = Limiter::new(config);
        // Four loud tones summed: peaks near 2.4, far over full scale.
        let n = 960 * 50;
        let mut input = vec![0.0f32; n];
        for (f, a) in [(300.0, 0.7), (470.0, 0.6), (820.0, 0.6), (1150.0, 0.5)] {
            for (x, s) in input.iter_mut().zip(sine(f, a, n, 0)) {
                *x += s;
            }
        }
        let mut output = input.clone();
        let mut min_gain = 1.0f32;
        for frame in output.chunks_mut(960) {
            min_gain = min_gain.min(limiter.process(frame).min_gain);
        }
        let peak = output.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak <= config.threshold + 1e-6, "peak {peak}");
        assert!(
            min_gain < 0.5,
            "limiter should have worked hard, min gain {min_gain}"
        );
        // Smooth gain: the output never jumps more than the input's own steepest slope allows.
        let max_in_step = input
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        let max_out_step = output
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(
            max_out_step <= max_in_step * 1.1,
            "{max_out_step} vs {max_in_step}"
        );
    }

    #[test]
    fn single_spike_is_caught_by_lookahead() {
        let config = LimiterConfig::default();
        let mut limiter = Limiter::new(config);
        let mut frame = vec![0.1f32; 960];
        frame[500] = 4.0;
        limiter.process(&mut frame);
        let mut tail = vec![0.1f32; 960];
        limiter.process(&mut tail);
        let all: Vec<f32> = frame.iter().chain(&tail).copied().collect();
        let peak = all.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak <= config.threshold + 1e-6);
        // The spike comes out LOOKAHEAD samples later, limited to the threshold.
        assert!((all[500 + LOOKAHEAD] - config.threshold).abs() < 1e-3);
        // The gain ramps down before the spike rather than stepping.
        assert!(all[500 + LOOKAHEAD - 10] < 0.1 && all[500 + LOOKAHEAD - 10] > 0.0);
    }

    #[test]
    fn gain_recovers_after_release() {
        let config = LimiterConfig::default();
        let mut limiter = Limiter::new(config);
        let mut loud = sine(500.0, 2.0, 960, 0);
        limiter.process(&mut loud);
        // 1 s of a quiet tone (12 release time constants): by the end the gain is back at unity and the fast path is used.
        let mut last = LimiterReport { min_gain: 0.0 };
        for k in 0..50 {
            let mut quiet = sine(500.0, 0.3, 960, 960 * (k + 1));
            last = limiter.process(&mut quiet);
        }
        assert_eq!(last.min_gain, 1.0);
    }

    #[test]
    fn non_finite_input_becomes_silence() {
        let mut limiter = Limiter::new(LimiterConfig::default());
        let mut frame = vec![f32::NAN; 960];
        frame[10] = f32::INFINITY;
        limiter.process(&mut frame);
        let mut next = vec![0.0f32; 960];
        limiter.process(&mut next);
        assert!(
            frame
                .iter()
                .chain(&next)
                .all(|s| s.is_finite() && s.abs() <= 1.0)
        );
    }
}
