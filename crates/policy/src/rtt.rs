//! Round-trip times between an edge's region and the others: smoothed from timed probes where
//! the edge has measured them, estimated from geography where it has not.

use std::collections::BTreeMap;

/// Weight of a new sample in the smoothed RTT (an exponentially weighted moving average).
const SAMPLE_WEIGHT: f64 = 0.3;

/// What a region's RTT is known from, when the row is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RttSource {
    /// The edge's own region.
    Local,
    /// Smoothed from probes.
    Measured,
    /// The great-circle estimate.
    Estimated,
    /// Neither measured nor on the region list: counted as far away.
    Unknown,
}

/// Smoothed RTTs per region, fed with probe samples and the time they were taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RttEstimator {
    /// Region code -> (smoothed ms, when the last sample came).
    smoothed: BTreeMap<String, (f64, u64)>,
}

/// The RTT counted for a region that is neither measured nor on the region list, ms.
pub const UNKNOWN_RTT_MS: u32 = 1_000;

// === impl RttEstimator ===

impl RttEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one probe's round trip to `region` and returns the new smoothed value.
    pub fn observe(&mut self, region: &str, sample_ms: f64, now_ms: u64) -> f64 {
        let sample_ms = if sample_ms.is_finite() {
            sample_ms.max(0.0)
        } else {
            f64::from(UNKNOWN_RTT_MS)
        };
        let smoothed = match self.smoothed.get(region) {
            Some(&(old, _)) => old * (1.0 - SAMPLE_WEIGHT) + sample_ms * SAMPLE_WEIGHT,
            None => sample_ms,
        };
        self.smoothed.insert(region.to_string(), (smoothed, now_ms));
        smoothed
    }

    /// The smoothed RTT to `region`, if it was measured.
    pub fn measured(&self, region: &str) -> Option<f64> {
        self.smoothed.get(region).map(|&(ms, _)| ms)
    }

    /// Forgets regions `keep` says no longer matter (no machine there any more).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.smoothed.retain(|region, _| keep(region));
    }

    /// The RTT in whole ms (at least 1 between regions) from `here` to each of `regions`, and
    /// what it is known from: 0 within the region, else the measured value, else `estimate`,
    /// else [`UNKNOWN_RTT_MS`].
    pub fn row(&self, here: &str, regions: &[String], estimate: impl Fn(&str, &str) -> Option<f64>) -> Vec<(u32, RttSource)> {
        regions
            .iter()
            .map(|code| {
                if code == here {
                    (0, RttSource::Local)
                } else if let Some(ms) = self.measured(code) {
                    (ms.round().max(1.0) as u32, RttSource::Measured)
                } else if let Some(ms) = estimate(here, code) {
                    (ms.round() as u32, RttSource::Estimated)
                } else {
                    (UNKNOWN_RTT_MS, RttSource::Unknown)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_by_table() {
        // (samples, smoothed after the last)
        let cases: Vec<(Vec<f64>, f64)> = vec![
            (vec![40.0], 40.0),
            (vec![40.0, 80.0], 52.0),
            (vec![40.0, 80.0, 80.0], 60.4),
            (vec![10.0, f64::NAN], 307.0),
            (vec![10.0, -5.0], 7.0),
        ];
        for (samples, expected) in cases {
            let mut rtt = RttEstimator::new();
            let mut last = 0.0;
            for (at, sample) in samples.iter().enumerate() {
                last = rtt.observe("ams", *sample, at as u64);
            }
            assert!((last - expected).abs() < 1e-9, "{samples:?}: {last} != {expected}");
        }
    }

    #[test]
    fn row_prefers_measured_then_estimated() {
        let mut rtt = RttEstimator::new();
        rtt.observe("fra", 0.2, 1);
        rtt.observe("iad", 91.4, 1);
        let regions: Vec<String> = ["ams", "fra", "iad", "syd", "zzz"].iter().map(|s| s.to_string()).collect();
        let estimate = |_: &str, there: &str| (there == "syd").then_some(290.6);
        let row = rtt.row("ams", &regions, estimate);
        assert_eq!(
            row,
            vec![
                (0, RttSource::Local),
                (1, RttSource::Measured),
                (91, RttSource::Measured),
                (291, RttSource::Estimated),
                (UNKNOWN_RTT_MS, RttSource::Unknown),
            ]
        );
        rtt.retain(|region| region != "iad");
        assert_eq!(rtt.measured("iad"), None);
        assert_eq!(rtt.measured("fra"), Some(0.2));
    }
}
