//! Mixing kernels: summing contributions and removing one participant's own contribution.
//!
//! These are the only per-sample loops on the mix path besides the limiter. They work on fixed
//! 960-sample f32 frames so the compiler can vectorise them; they never allocate.

/// Adds `source` into `bus`, sample by sample.
pub fn accumulate(bus: &mut [f32], source: &[f32]) {
    for (acc, sample) in bus.iter_mut().zip(source) {
        *acc += sample;
    }
}

/// Writes `bus - own` into `out`: the mix of everyone except the participant whose contribution
/// is `own` (mix-minus).
///
/// The subtraction is done in f32 on the same values that were summed, so the residue of `own`
/// left in `out` is at the level of f32 rounding (about -140 dB relative to the signal), far below
/// anything a listener or Opus can reproduce.
pub fn mix_minus(out: &mut [f32], bus: &[f32], own: &[f32]) {
    for ((o, b), s) in out.iter_mut().zip(bus).zip(own) {
        *o = b - s;
    }
}

/// Root-mean-square level of a frame, for the outgoing header's audio-level byte.
pub fn rms(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return 0.0;
    }
    let energy: f32 = frame.iter().map(|s| s * s).sum();
    (energy / frame.len() as f32).sqrt()
}

/// Cross-fades `from` into `to` over the whole frame, writing the result into `to`.
///
/// Used when the jitter buffer sheds 20 ms of delay: two consecutive decoded frames become one,
/// and a raised-cosine fade keeps the joint free of clicks.
pub fn crossfade_into(from: &[f32], to: &mut [f32]) {
    let n = to.len().min(from.len());
    if n == 0 {
        return;
    }
    let step = std::f32::consts::PI / n as f32;
    for (i, (t, f)) in to.iter_mut().zip(from).enumerate() {
        // w rises from 0 to 1: the output starts as `from` and ends as `to`.
        let w = 0.5 - 0.5 * (step * (i as f32 + 0.5)).cos();
        *t = *f * (1.0 - w) + *t * w;
    }
}

/// Fades a frame from full level to silence with a raised-cosine ramp.
pub fn fade_out(frame: &mut [f32]) {
    let step = std::f32::consts::PI / frame.len().max(1) as f32;
    for (i, sample) in frame.iter_mut().enumerate() {
        *sample *= 0.5 + 0.5 * (step * (i as f32 + 0.5)).cos();
    }
}

/// Fades a frame from silence to full level with a raised-cosine ramp.
pub fn fade_in(frame: &mut [f32]) {
    let step = std::f32::consts::PI / frame.len().max(1) as f32;
    for (i, sample) in frame.iter_mut().enumerate() {
        *sample *= 0.5 - 0.5 * (step * (i as f32 + 0.5)).cos();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_minus_removes_exactly_own_contribution() {
        let a: Vec<f32> = (0..960).map(|i| (i as f32 * 0.01).sin() * 0.3).collect();
        let b: Vec<f32> = (0..960).map(|i| (i as f32 * 0.037).cos() * 0.2).collect();
        let c: Vec<f32> = (0..960).map(|i| (i as f32 * 0.11).sin() * 0.4).collect();
        let mut bus = vec![0.0; 960];
        for s in [&a, &b, &c] {
            accumulate(&mut bus, s);
        }
        let mut out = vec![0.0; 960];
        mix_minus(&mut out, &bus, &b);
        let worst = out
            .iter()
            .zip(a.iter().zip(&c))
            .map(|(o, (x, y))| (o - (x + y)).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "residue {worst}");
    }

    #[test]
    fn rms_of_sine_is_amplitude_over_root_two() {
        let amp = 0.5;
        let sine: Vec<f32> = (0..960)
            .map(|i| amp * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48_000.0).sin())
            .collect();
        let got = rms(&sine);
        assert!((got - amp / 2f32.sqrt()).abs() < 1e-3, "rms {got}");
        assert_eq!(rms(&[]), 0.0);
    }

    #[test]
    fn fade_out_goes_from_full_to_silence() {
        let mut frame = vec![1.0f32; 960];
        fade_out(&mut frame);
        assert!(frame[0] > 0.99 && frame[959] < 0.01);
        assert!(frame.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn crossfade_starts_at_from_and_ends_at_to() {
        let from = vec![1.0f32; 960];
        let mut to = vec![-1.0f32; 960];
        crossfade_into(&from, &mut to);
        assert!(to[0] > 0.99);
        assert!(to[959] < -0.99);
        let max_step = to
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(max_step < 0.01, "fade has a jump of {max_step}");
    }
}
