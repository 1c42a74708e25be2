//! Streaming statistics: an exact mean and percentiles from a log-linear histogram (64 buckets
//! per power of two, under 1.6% relative error), so memory stays flat however many requests
//! are simulated.

use serde::Serialize;

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Values are kept in microseconds; up to 2^40 us (about 12 days).
const OCTAVES: usize = 40;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum_us: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; OCTAVES * SUB as usize + SUB as usize],
            n: 0,
            sum_us: 0.0,
        }
    }
}

/// Mean and percentiles, in ms.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Histogram {
    #[inline]
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros() as u64; // >= 6
        let shift = octave - 6;
        let sub = (us >> shift) - SUB; // 0..64
        ((octave - 5) * SUB + sub).min((OCTAVES as u64 + 1) * SUB - 1) as usize
    }

    /// The lowest value of bucket `i`, us.
    fn lower(i: usize) -> f64 {
        let i = i as u64;
        if i < SUB {
            return i as f64;
        }
        let octave = i / SUB + 5;
        let sub = i % SUB;
        ((SUB + sub) << (octave - 6)) as f64
    }

    /// Records a value in ms.
    #[inline]
    pub fn record(&mut self, ms: f64) {
        let us = (ms * 1000.0).max(0.0);
        self.n += 1;
        self.sum_us += us;
        self.counts[Self::index(us as u64)] += 1;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.sum_us += other.sum_us;
    }

    /// The value below which a fraction `q` of the records fall, ms (the middle of its bucket).
    fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (Self::lower(i), Self::lower(i + 1));
                return (lo + hi) / 2.0 / 1000.0;
            }
        }
        0.0
    }

    pub fn summary(&self) -> Summary {
        Summary {
            mean: if self.n == 0 { 0.0 } else { self.sum_us / self.n as f64 / 1000.0 },
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for i in 1..=100_000u64 {
            h.record(i as f64 / 100.0); // 0.01 .. 1000 ms, uniform
        }
        let s = h.summary();
        assert!((s.mean - 500.005).abs() < 1e-6, "{s:?}");
        for (got, want) in [(s.p50, 500.0), (s.p90, 900.0), (s.p99, 990.0)] {
            assert!((got - want).abs() / want < 0.02, "{got} vs {want}");
        }
        let mut zero = Histogram::default();
        zero.record(0.0);
        assert_eq!(zero.summary().p99, 0.0005);
    }

    #[test]
    fn buckets_are_ordered_and_contiguous() {
        let mut last = 0;
        for us in 0..1_000_000u64 {
            let i = Histogram::index(us);
            assert!(i >= last && i <= last + 1, "{us}: {i} after {last}");
            assert!(Histogram::lower(i) <= us as f64 && (us as f64) < Histogram::lower(i + 1), "{us}");
            last = i;
        }
    }
}
