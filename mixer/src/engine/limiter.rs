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
//!
//! # Implementation
//!
//! The work is done a block at a time, so that everything but the two recurrences vectorises:
//!
//! - the sliding minimum of step 2 is computed as `threshold / m`, where `m` is the largest `|x|`
//!   in the window (or 1 when `m <= threshold`). This is exact, not an approximation: division
//!   rounds correctly, so `threshold / m` never increases as `m` grows, and the smallest of the
//!   quotients is the quotient of the largest `m`. The window maxima are built branch-free from
//!   maxima over 4 and 16 samples;
//! - the moving average of step 3 keeps its running sum, updated in the same order as a
//!   sample-by-sample implementation, and the release of step 4 is the same expression, so the
//!   output is bit-identical to the straightforward per-sample form (the unit tests check it
//!   against one). The release is a serial recurrence (three dependent float operations per
//!   sample while the gain rises), and it is most of the cost of a limited frame.
//!
//! The scratch buffers for a block live on the stack (about 6 KB).

/// Look-ahead in samples (1 ms at 48 kHz).
pub const LOOKAHEAD: usize = 48;
const WINDOW: usize = LOOKAHEAD + 1;
/// Samples per block on the slow path (its scratch lives on the stack).
const BLOCK: usize = 480;

/// Limiter settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Peak ceiling as a linear amplitude (full scale = 1.0).
    pub threshold: f32,
    /// Time for the gain to recover most of the way (63 %) back to unity, in samples.
    pub release_samples: f32,
}

impl Default for LimiterConfig {
    /// -3 dBFS ceiling and an 80 ms release. The headroom is for the codec: at 48 kb/s a dense,
    /// heavily limited mix came back from Opus with peaks past full scale at -1 dBFS (60 tones,
    /// loadgen), and none at -3 dBFS in CELT-only mode. VOIP mode needs more, so the engine
    /// lowers the ceiling per encoder mode (`EngineConfig::stream_limiter`).
    fn default() -> Self {
        LimiterConfig {
            threshold: 10f32.powf(-3.0 / 20.0),
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
    /// The last LOOKAHEAD input samples, oldest first, non-finite ones already zeroed: the delay
    /// line, and the history the sliding minimum needs.
    delay: [f32; LOOKAHEAD],
    /// The last WINDOW sliding-minimum values, oldest first, and their running sum.
    mins: [f32; WINDOW],
    mins_sum: f32,
    /// Gain applied to the last output sample (after release smoothing).
    gain: f32,
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
            mins: [1.0; WINDOW],
            mins_sum: WINDOW as f32,
            gain: 1.0,
            since_reduction: u64::MAX / 2,
        }
    }

    /// Limits `frame` in place (the output is the input delayed by [`LOOKAHEAD`] samples).
    pub fn process(&mut self, frame: &mut [f32]) -> LimiterReport {
        if self.at_rest() && !exceeds(frame, self.threshold) {
            self.delay_only(frame);
            return LimiterReport { min_gain: 1.0 };
        }
        let mut scratch = Scratch {
            x: [0.0; WINDOW + BLOCK],
            max: [0.0; WINDOW + BLOCK],
            w: [0.0; WINDOW + BLOCK],
        };
        let mut min_gain = 1.0f32;
        for block in frame.chunks_mut(BLOCK) {
            min_gain = min_gain.min(self.limit_block(block, &mut scratch));
        }
        if self.at_rest() {
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
        self.mins = [1.0; WINDOW];
        self.mins_sum = WINDOW as f32;
    }

    /// The slow path for at most BLOCK samples; returns the smallest gain applied.
    fn limit_block(&mut self, frame: &mut [f32], scratch: &mut Scratch) -> f32 {
        let len = frame.len();
        let threshold = self.threshold;
        let x = &mut scratch.x[..WINDOW + len];
        let max = &mut scratch.max[..WINDOW + len];
        let w = &mut scratch.w[..WINDOW + len];

        // The input after its history (position 0 is never part of an output's window).
        x[1..WINDOW].copy_from_slice(&self.delay);
        for (x, s) in x[WINDOW..].iter_mut().zip(frame.iter()) {
            // Non-finite samples become silence; a bit mask rather than a branch vectorises.
            let bits = s.to_bits();
            let finite = (bits & 0x7fff_ffff) < 0x7f80_0000;
            *x = f32::from_bits(bits & u32::from(finite).wrapping_neg());
        }
        match last_exceeding(&x[WINDOW..], threshold) {
            Some(last) => self.since_reduction = (len - 1 - last) as u64,
            None => self.since_reduction = self.since_reduction.saturating_add(len as u64),
        }

        // Largest |x| over the WINDOW samples ending at each output, from maxima over 4 (into
        // `w`, as scratch) and over 16 (into `max`): four overlapping runs of 16 cover 49. Then
        // the window's required gain (steps 1 and 2).
        for (m, (((x0, x1), x2), x3)) in w[3..]
            .iter_mut()
            .zip(x[3..].iter().zip(&x[2..]).zip(&x[1..]).zip(x.iter()))
        {
            *m = max2(max2(x0.abs(), x1.abs()), max2(x2.abs(), x3.abs()));
        }
        for (m, (((m0, m4), m8), m12)) in max[15..]
            .iter_mut()
            .zip(w[15..].iter().zip(&w[11..]).zip(&w[7..]).zip(&w[3..]))
        {
            *m = max2(max2(*m0, *m4), max2(*m8, *m12));
        }
        w[..WINDOW].copy_from_slice(&self.mins);
        for (w, (((m0, m16), m32), m33)) in w[WINDOW..].iter_mut().zip(
            max[WINDOW..]
                .iter()
                .zip(&max[WINDOW - 16..])
                .zip(&max[WINDOW - 32..])
                .zip(&max[WINDOW - 33..]),
        ) {
            let peak = max2(max2(*m0, *m16), max2(*m32, *m33));
            *w = if peak > threshold {
                threshold / peak
            } else {
                1.0
            };
        }

        // Steps 3 and 4, sample by sample: the running sum and the release are recurrences.
        let coeff = self.release_coeff;
        let mut sum = self.mins_sum;
        let mut gain = self.gain;
        let mut min_gain = 1.0f32;
        for (out, (delayed, (new, old))) in frame
            .iter_mut()
            .zip(x[1..].iter().zip(w[WINDOW..].iter().zip(w.iter())))
        {
            sum += new - old;
            let smoothed = (sum / WINDOW as f32).min(1.0);
            // Falling: follow at once (already a ramp). Rising: one-pole release.
            // The last 0.01 dB of the release snaps to the target, so the limiter comes fully to
            // rest instead of creeping towards unity for ever.
            gain = if smoothed < gain || smoothed - gain < 1e-3 {
                smoothed
            } else {
                smoothed - (smoothed - gain) * coeff
            };
            min_gain = min_gain.min(gain);
            // The clamp only absorbs float rounding in the running sum; the gain already keeps
            // the delayed sample under the threshold.
            *out = (delayed * gain).clamp(-threshold, threshold);
        }
        self.mins_sum = sum;
        self.gain = gain;
        self.delay.copy_from_slice(&x[len + 1..]);
        self.mins.copy_from_slice(&w[len..]);
        min_gain
    }

    /// Applies only the look-ahead delay, with block copies (the frame is known finite here).
    fn delay_only(&mut self, frame: &mut [f32]) {
        let n = frame.len();
        if n < LOOKAHEAD {
            let mut line = [0.0f32; 2 * LOOKAHEAD];
            line[..LOOKAHEAD].copy_from_slice(&self.delay);
            line[LOOKAHEAD..LOOKAHEAD + n].copy_from_slice(frame);
            frame.copy_from_slice(&line[..n]);
            self.delay.copy_from_slice(&line[n..n + LOOKAHEAD]);
        } else {
            // Oldest delayed sample first, then shift the frame and keep its tail.
            let mut tail = [0.0f32; LOOKAHEAD];
            tail.copy_from_slice(&frame[n - LOOKAHEAD..]);
            frame.copy_within(..n - LOOKAHEAD, LOOKAHEAD);
            frame[..LOOKAHEAD].copy_from_slice(&self.delay);
            self.delay = tail;
        }
    }
}

/// Per-block working lines, indexed alike: position `WINDOW + i` is the block's sample `i`, the
/// positions before it hold history.
struct Scratch {
    /// Input (finite) after the delay line's LOOKAHEAD samples.
    x: [f32; WINDOW + BLOCK],
    /// Largest |x| over the 16 samples ending at each position.
    max: [f32; WINDOW + BLOCK],
    /// The previous WINDOW sliding minima, then the block's.
    w: [f32; WINDOW + BLOCK],
}

/// Whether any sample is over `threshold` or NaN (which must not pass for quiet: it takes the slow
/// path, which turns non-finite samples into silence). Branch-free, so it vectorises.
fn exceeds(frame: &[f32], threshold: f32) -> bool {
    frame
        .iter()
        .fold(false, |any, s| any | (s.abs() > threshold) | s.is_nan())
}

/// Index of the last sample with `|x| > threshold`, searched from the back by chunks that
/// vectorise.
fn last_exceeding(x: &[f32], threshold: f32) -> Option<usize> {
    let mut end = x.len();
    for chunk in x.rchunks(16) {
        let start = end - chunk.len();
        if chunk
            .iter()
            .fold(false, |any, x| any | (x.abs() > threshold))
        {
            return chunk
                .iter()
                .rposition(|x| x.abs() > threshold)
                .map(|i| start + i);
        }
        end = start;
    }
    None
}

/// Maximum of two numbers that are never NaN, as one instruction (`f32::max` also handles NaN).
#[inline(always)]
fn max2(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The limiter's math written sample by sample with whole histories, simple enough to be
    /// obviously right: the blocked implementation must match it bit for bit.
    struct Reference {
        threshold: f32,
        release_coeff: f32,
        /// Every input sample so far (non-finite ones zeroed), their required gains and the
        /// sliding minima of those.
        inputs: Vec<f32>,
        required: Vec<f32>,
        minima: Vec<f32>,
        sum: f32,
        gain: f32,
        since_reduction: u64,
    }

    impl Reference {
        fn new(config: LimiterConfig) -> Reference {
            Reference {
                threshold: config.threshold,
                release_coeff: (-1.0 / config.release_samples.max(1.0)).exp(),
                inputs: Vec::new(),
                required: Vec::new(),
                minima: Vec::new(),
                sum: WINDOW as f32,
                gain: 1.0,
                since_reduction: u64::MAX / 2,
            }
        }

        fn process(&mut self, frame: &mut [f32]) -> LimiterReport {
            let t = self.threshold;
            let mut min_gain = 1.0f32;
            for sample in frame.iter_mut() {
                let x = if sample.is_finite() { *sample } else { 0.0 };
                let r = if x.abs() > t { t / x.abs() } else { 1.0 };
                self.since_reduction = if r < 1.0 {
                    0
                } else {
                    self.since_reduction.saturating_add(1)
                };
                self.inputs.push(x);
                self.required.push(r);
                let n = self.required.len();
                // Before the first sample the limiter is at rest: gains of 1 everywhere.
                let window_min = self.required[n.saturating_sub(WINDOW)..]
                    .iter()
                    .fold(1.0f32, |m, r| m.min(*r));
                let leaving = if n > WINDOW {
                    self.minima[n - 1 - WINDOW]
                } else {
                    1.0
                };
                self.minima.push(window_min);
                self.sum += window_min - leaving;
                let smoothed = (self.sum / WINDOW as f32).min(1.0);
                self.gain = if smoothed < self.gain || smoothed - self.gain < 1e-3 {
                    smoothed
                } else {
                    smoothed - (smoothed - self.gain) * self.release_coeff
                };
                min_gain = min_gain.min(self.gain);
                let delayed = if n > LOOKAHEAD {
                    self.inputs[n - 1 - LOOKAHEAD]
                } else {
                    0.0
                };
                *sample = (delayed * self.gain).clamp(-t, t);
            }
            // The documented settling: back at rest, the running sum restarts from exactly 1s.
            if self.gain >= 1.0 && self.since_reduction > 2 * WINDOW as u64 {
                self.gain = 1.0;
                self.sum = WINDOW as f32;
                let n = self.minima.len();
                self.minima[n.saturating_sub(WINDOW)..].fill(1.0);
            }
            LimiterReport { min_gain }
        }
    }

    /// Runs `input` through both the limiter and the reference in chunks of `sizes` (cycled) and
    /// asserts identical output and reports, and the ceiling.
    fn assert_matches_reference(config: LimiterConfig, input: &[f32], sizes: &[usize]) {
        let mut limiter = Limiter::new(config);
        let mut reference = Reference::new(config);
        let mut output = input.to_vec();
        let mut expected = input.to_vec();
        let mut start = 0;
        for &size in sizes.iter().cycle() {
            if start >= input.len() {
                break;
            }
            if size == 0 {
                // An empty call must change nothing in either...
                let report = limiter.process(&mut []);
                let expected_report = reference.process(&mut []);
                assert_eq!(
                    report.min_gain.to_bits(),
                    expected_report.min_gain.to_bits()
                );
            }
            // ...and a zero size must not stall the loop (with sizes all 0 it never ended: the
            // proptest hung whenever it drew or shrank to such a case).
            let end = (start + size.max(1)).min(input.len());
            let report = limiter.process(&mut output[start..end]);
            let expected_report = reference.process(&mut expected[start..end]);
            assert_eq!(
                report.min_gain.to_bits(),
                expected_report.min_gain.to_bits(),
                "report for samples {start}..{end}"
            );
            start = end;
        }
        for (i, (out, want)) in output.iter().zip(&expected).enumerate() {
            assert!(
                out.to_bits() == want.to_bits(),
                "sample {i}: {out} vs reference {want}"
            );
            assert!(
                out.abs() <= config.threshold,
                "sample {i}: {out} over the ceiling"
            );
        }
    }

    /// Deterministic xorshift noise in `[-1, 1)`.
    struct Noise(u64);

    impl Noise {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn next(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

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

    #[test]
    fn matches_reference_on_noise_split_at_odd_sizes() {
        let config = LimiterConfig::default();
        let t = config.threshold;
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        // Noise whose level changes every few hundred samples, from silence to 12 dB over.
        let mut input = Vec::new();
        while input.len() < 200_000 {
            let level = [0.0, 0.1, 0.5, 0.95, 1.5, 4.0][(noise.next_u64() % 6) as usize];
            let run = 1 + (noise.next_u64() % 700) as usize;
            input.extend((0..run).map(|_| level * noise.next()));
        }
        // Edge values: non-finite, huge, tiny, exactly at and just over the ceiling.
        let edges = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE / 4.0,
            -0.0,
            t,
            -t,
            t.next_up(),
            -t.next_up(),
        ];
        for k in 0..2_000 {
            let i = (noise.next_u64() % input.len() as u64) as usize;
            input[i] = edges[k % edges.len()];
        }
        let sizes: Vec<usize> = (0..97)
            .map(|_| (noise.next_u64() % 1_100) as usize)
            .collect();
        assert_matches_reference(config, &input, &sizes);
        assert_matches_reference(config, &input, &[960]);
        assert_matches_reference(config, &input, &[1, 47, 48, 49, 0, 480, 481, 2_000]);
    }

    #[test]
    fn matches_reference_through_rest_and_back() {
        // Loud bursts between quiet stretches long enough to settle, so the fast path, the
        // settling and the way back out of rest are all exercised.
        let config = LimiterConfig {
            threshold: 0.5,
            release_samples: 300.0,
        };
        let mut input = Vec::new();
        for burst in 0..40 {
            let amp = if burst % 3 == 0 { 1.7 } else { 0.3 };
            input.extend(sine(
                230.0 + 17.0 * burst as f32,
                amp,
                960 * (1 + burst % 4),
                0,
            ));
        }
        assert_matches_reference(config, &input, &[960]);
        assert_matches_reference(config, &input, &[960, 13, 947, 2_500, 5]);
    }

    proptest! {
        // Shrinking thousands of samples is slow; a few hundred steps find a short enough case.
        #![proptest_config(ProptestConfig {
            cases: 256,
            max_shrink_iters: 400,
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_input_matches_reference(
            samples in prop::collection::vec(
                prop_oneof![
                    4 => -3.0f32..3.0,
                    1 => any::<f32>(),
                    1 => Just(0.0f32),
                ],
                0..3_000,
            ),
            sizes in prop::collection::vec(0usize..1_200, 1..8),
        ) {
            assert_matches_reference(LimiterConfig::default(), &samples, &sizes);
        }
    }
}
