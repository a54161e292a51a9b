//! [`SparseHistogram`]: a run's µs histograms in a form a JSON report can carry, so the reports
//! of several load generators can be merged into exact percentiles (see [`crate::merge`]).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::micros_histogram;

/// The non-empty buckets of a [`micros_histogram`] as `[value µs, count]` pairs, lowest first.
///
/// Percentiles cannot be merged (the p99 of two shards is not the mean or the max of their
/// p99s), but histograms can: this keeps every bucket a report's percentiles were computed
/// from. It is sparse because a run fills a few hundred of the histogram's ~1,900 buckets, and
/// serialized as a plain list of pairs to keep the JSON short and readable by any tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SparseHistogram(pub Vec<(u64, u64)>);

/// A [`SparseHistogram`] that does not fit a [`micros_histogram`] (a hand-edited or foreign
/// report: loadgen only writes values it recorded into one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the value {value} µs is outside the histogram's range (1 µs to 100 s)")]
pub struct OutOfRange {
    /// The value that does not fit.
    pub value: u64,
}

impl SparseHistogram {
    /// Samples held: the sum of the counts.
    pub fn len(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, &(_, count)| sum.saturating_add(count))
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The histogram it stands for, with [`micros_histogram`]'s settings. Each pair's value
    /// falls in the bucket it was read from, so the round trip gives back the same buckets and
    /// the same percentiles.
    pub fn to_histogram(&self) -> Result<Histogram<u64>, OutOfRange> {
        let mut histogram = micros_histogram();
        self.add_to(&mut histogram)?;
        Ok(histogram)
    }

    /// Adds its samples to `histogram` (one with [`micros_histogram`]'s settings).
    pub fn add_to(&self, histogram: &mut Histogram<u64>) -> Result<(), OutOfRange> {
        for &(value, count) in &self.0 {
            histogram
                .record_n(value, count)
                .map_err(|_| OutOfRange { value })?;
        }
        Ok(())
    }
}

impl From<&Histogram<u64>> for SparseHistogram {
    fn from(histogram: &Histogram<u64>) -> SparseHistogram {
        SparseHistogram(
            histogram
                .iter_recorded()
                .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    #[test]
    fn a_round_trip_through_json_keeps_every_bucket_and_percentile() {
        let mut original = micros_histogram();
        for micros in [1, 7, 950, 1_000, 1_003, 20_000, 20_150, 99_999_999] {
            original.record(micros).expect("in range");
        }
        original.record_n(45_000, 12).expect("in range");
        let sparse = SparseHistogram::from(&original);
        assert_eq!(sparse.len(), 20);
        let json = serde_json::to_string(&sparse).expect("serializes");
        assert!(json.starts_with("[[1,1],[7,1],"), "{json}");
        let back: SparseHistogram = serde_json::from_str(&json).expect("parses");
        let rebuilt = back.to_histogram().expect("fits");
        assert_eq!(rebuilt, original);
        assert_eq!(
            Percentiles::from_micros(&rebuilt),
            Percentiles::from_micros(&original)
        );
    }

    #[test]
    fn values_outside_the_range_are_an_error_not_a_panic() {
        let sparse = SparseHistogram(vec![(5, 1), (u64::MAX, 2)]);
        assert_eq!(sparse.to_histogram(), Err(OutOfRange { value: u64::MAX }));
        // Counts saturate rather than overflow.
        assert_eq!(SparseHistogram(vec![(1, u64::MAX), (2, 5)]).len(), u64::MAX);
    }
}
