//! Token buckets for per-key rate limits: requests per second and LLM tokens per minute.
//! Time is an argument (milliseconds on the caller's clock), so limits are testable exactly.

/// A bucket of `capacity` tokens refilled continuously at `refill_per_s`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(capacity: u32, refill_per_s: f64, now_ms: u64) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            per_ms: refill_per_s.max(0.0) / 1000.0,
            tokens: capacity,
            last_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if the bucket holds them; otherwise takes nothing and returns how many
    /// milliseconds until it will (a cost above the capacity is charged as the capacity, so a
    /// large request waits for a full bucket rather than forever).
    pub fn take(&mut self, cost: u32, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
        let cost = f64::from(cost).min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        if self.per_ms <= 0.0 {
            return Err(u64::MAX);
        }
        // The epsilon keeps float noise from adding a millisecond to an exact wait.
        Err(((cost - self.tokens) / self.per_ms - 1e-9).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;

    #[test]
    fn buckets_by_table() {
        // (capacity, refill per s, [(cost, at ms, expected)])
        type Step = (u32, u64, Result<(), u64>);
        let cases: Vec<(u32, f64, Vec<Step>)> = vec![
            (
                2,
                2.0,
                vec![(1, 0, Ok(())), (1, 0, Ok(())), (1, 0, Err(500)), (1, 499, Err(1)), (1, 500, Ok(()))],
            ),
            (60, 1.0, vec![(50, 0, Ok(())), (20, 0, Err(10_000)), (20, 10_000, Ok(()))]),
            (10, 10.0, vec![(100, 0, Ok(())), (1, 0, Err(100))]),
            (5, 0.0, vec![(5, 0, Ok(())), (1, 1_000_000, Err(u64::MAX))]),
        ];
        for (capacity, refill, steps) in cases {
            let mut bucket = TokenBucket::new(capacity, refill, 0);
            for (i, (cost, at, expected)) in steps.into_iter().enumerate() {
                assert_eq!(bucket.take(cost, at), expected, "capacity {capacity}, refill {refill}, step {i}");
            }
        }
    }
}
