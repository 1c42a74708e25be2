//! Choosing a pull's concurrency and range size from the throughput it measures.
//!
//! The tuner climbs one knob at a time: it doubles the ranged reads in flight while each step
//! buys at least `GAIN` more throughput, then does the same with the chunks per range, and
//! settles on the best it saw. It starts where pulls measured best both from an S3 server
//! sharing the host's two cores and from one reading at disk speed (8 reads of 64 MiB), and a
//! step must pay for itself clearly to be kept: every extra read in flight costs CPU on both
//! ends. Time is an argument, so tests drive it with a table.

use std::time::Duration;

/// A step must raise throughput by this factor to be kept (runs of one setting on a shared
/// host vary by several percent).
const GAIN: f64 = 1.15;
/// Concurrency the tuner starts from and its bounds.
const START_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: usize = 64;
/// Chunks per ranged read to start from and at most (with 4 MiB chunks: 64 MiB, so only
/// smaller chunks or a given smaller range leave the tuner room to grow ranges).
/// Bodies are written as they arrive, so a long range delays no chunk and saves requests (on
/// an S3 server sharing the host's cores, fewer requests leave it more CPU). A 64 MiB read at
/// eight in flight stays inside the store client's request timeout (`crate::store`, 120 s)
/// down to about 4.5 MB/s in all.
const START_RANGE_CHUNKS: u64 = 16;
const MAX_RANGE_CHUNKS: u64 = 16;
/// A measurement window closes after this many completed ranges (and at least one per read in
/// flight) and at least `WINDOW_MIN`.
const WINDOW_RANGES: u32 = 8;
const WINDOW_MIN: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Knob {
    Concurrency,
    RangeChunks,
    Settled,
}

#[derive(Debug)]
pub(crate) struct Tuner {
    concurrency: usize,
    range_chunks: u64,
    knob: Knob,
    /// Whether the range size was given (and so is never tuned).
    range_fixed: bool,
    /// Best (throughput, concurrency, range chunks) seen.
    best: Option<(f64, usize, u64)>,
    window_start: Duration,
    window_bytes: u64,
    window_ranges: u32,
    /// The first window after a change still carries ranges started under the old setting;
    /// it is thrown away.
    warming: bool,
}

// === impl Tuner ===

impl Tuner {
    /// A tuner for the knobs not given; given ones stay fixed.
    pub(crate) fn new(concurrency: Option<usize>, range_chunks: Option<u64>, now: Duration) -> Self {
        let knob = match (concurrency, range_chunks) {
            (None, _) => Knob::Concurrency,
            (Some(_), None) => Knob::RangeChunks,
            (Some(_), Some(_)) => Knob::Settled,
        };
        Self {
            concurrency: concurrency.unwrap_or(START_CONCURRENCY).max(1),
            range_chunks: range_chunks.unwrap_or(START_RANGE_CHUNKS).max(1),
            knob,
            range_fixed: range_chunks.is_some(),
            best: None,
            window_start: now,
            window_bytes: 0,
            window_ranges: 0,
            warming: true,
        }
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub(crate) fn range_chunks(&self) -> u64 {
        self.range_chunks
    }

    /// Records one completed range of `bytes` at `now` (time since the pull began).
    pub(crate) fn record(&mut self, bytes: u64, now: Duration) {
        if self.knob == Knob::Settled {
            return;
        }
        self.window_bytes += bytes;
        self.window_ranges += 1;
        let elapsed = now.saturating_sub(self.window_start);
        if self.window_ranges < WINDOW_RANGES.max(self.concurrency as u32) || elapsed < WINDOW_MIN {
            return;
        }
        let throughput = self.window_bytes as f64 / elapsed.as_secs_f64();
        self.window_start = now;
        self.window_bytes = 0;
        self.window_ranges = 0;
        if std::mem::take(&mut self.warming) {
            return;
        }
        self.step(throughput);
    }

    fn step(&mut self, throughput: f64) {
        let improved = match self.best {
            None => true,
            Some((best, ..)) => throughput >= best * GAIN,
        };
        if improved {
            self.best = Some((throughput, self.concurrency, self.range_chunks));
        }
        match self.knob {
            Knob::Concurrency if improved && self.concurrency < MAX_CONCURRENCY => {
                self.concurrency = (self.concurrency * 2).min(MAX_CONCURRENCY);
            }
            Knob::Concurrency => {
                self.take_best();
                self.knob = if self.range_fixed { Knob::Settled } else { Knob::RangeChunks };
                if self.knob == Knob::RangeChunks {
                    self.range_chunks = (self.range_chunks * 2).min(MAX_RANGE_CHUNKS);
                }
            }
            Knob::RangeChunks if improved && self.range_chunks < MAX_RANGE_CHUNKS => {
                self.range_chunks *= 2;
            }
            Knob::RangeChunks => {
                self.take_best();
                self.knob = Knob::Settled;
            }
            Knob::Settled => {}
        }
        self.warming = true;
    }

    fn take_best(&mut self) {
        if let Some((_, concurrency, range_chunks)) = self.best {
            self.concurrency = concurrency;
            self.range_chunks = range_chunks;
        }
    }

    #[cfg(test)]
    pub(crate) fn settled(&self) -> bool {
        self.knob == Knob::Settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a tuner against a model of throughput (bytes/s) as a function of the knobs and
    /// returns where it settles.
    fn settle(model: impl Fn(usize, u64) -> f64, conc: Option<usize>, range: Option<u64>) -> (usize, u64) {
        let mut now = Duration::ZERO;
        let mut tuner = Tuner::new(conc, range, now);
        for _ in 0..1_000_000 {
            if tuner.settled() {
                break;
            }
            let bytes = 4 << 20;
            let rate = model(tuner.concurrency(), tuner.range_chunks());
            now += Duration::from_secs_f64(bytes as f64 / rate);
            tuner.record(bytes, now);
        }
        assert!(tuner.settled(), "the tuner never settled");
        (tuner.concurrency(), tuner.range_chunks())
    }

    /// (knee of concurrency, gain of larger ranges, fixed concurrency, fixed range chunks) ->
    /// where it settles (concurrency, range chunks).
    type KneeCase = (usize, bool, Option<usize>, Option<u64>, (usize, u64));

    #[test]
    fn settles_at_the_knee() {
        let cases: &[KneeCase] = &[
            // Throughput grows until 16 in flight: one step up from 8, ranges already longest.
            (16, false, None, None, (16, 16)),
            // Until 32: two steps.
            (32, false, None, None, (32, 16)),
            // A link that saturates early: nothing to gain past where the tuner starts.
            (8, false, None, None, (8, 16)),
            // A given range is kept while concurrency is tuned.
            (8, true, None, Some(1), (8, 1)),
            // Far-away store: everything helps up to the maximum.
            (1024, true, None, None, (64, 16)),
            // Fixed knobs are never moved.
            (1024, true, Some(3), Some(2), (3, 2)),
            (1024, true, Some(4), None, (4, 16)),
        ];
        for &(knee, ranges_help, conc, range, expected) in cases {
            let model = |c: usize, r: u64| {
                let base = c.min(knee) as f64 * 100e6;
                if ranges_help {
                    base * (1.0 + 0.3 * r as f64)
                } else {
                    base
                }
            };
            assert_eq!(settle(model, conc, range), expected, "knee {knee}, ranges help {ranges_help}");
        }
    }

    #[test]
    fn noise_below_the_gain_does_not_climb() {
        // 3% better per doubling is noise: stay where it started.
        let model = |c: usize, _r: u64| 1e9 * (1.0 + 0.03 * (c as f64).log2());
        assert_eq!(settle(model, None, None), (START_CONCURRENCY, START_RANGE_CHUNKS));
    }
}
