//! A tiny seeded PRNG (splitmix64) and the few distributions the scenario needs.
//!
//! Every random choice in a run (talk spurts, impairments) comes from one of these, seeded from
//! `--seed` and the client's index, so a run is reproducible and clients are independent.

/// splitmix64: 64 bits of state, passes BigCrush, and costs a few multiplications per draw.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (e.g. a client index) under the run's `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    /// A generator whose state is `seed` as given: the stream the mixer's seeded simulations
    /// were written against.
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`. It always draws, whatever `p`, so a stream does not shift
    /// when a probability is set to zero.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with the given mean (inverse-CDF method).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(7, 1).next_u64(), Rng::new(7, 2).next_u64());
        assert_ne!(Rng::new(7, 1).next_u64(), Rng::new(8, 1).next_u64());
    }

    #[test]
    fn unit_is_uniform_and_exponential_has_its_mean() {
        let mut rng = Rng::new(42, 0);
        let n = 100_000;
        let draws: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let below_tenth = draws.iter().filter(|x| **x < 0.1).count() as f64 / n as f64;
        assert!((below_tenth - 0.1).abs() < 0.01, "{below_tenth}");
        let exp_mean = (0..n).map(|_| rng.exponential(2.0)).sum::<f64>() / n as f64;
        assert!((exp_mean - 2.0).abs() < 0.05, "{exp_mean}");
        let hits = (0..n).filter(|_| rng.chance(0.25)).count() as f64 / n as f64;
        assert!((hits - 0.25).abs() < 0.01, "{hits}");
        assert!(!rng.chance(0.0));
    }
}
