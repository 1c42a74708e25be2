//! Token buckets for per-key rate limits: requests per second and LLM tokens per minute, and
//! what one request costs. Time is an argument (milliseconds on the caller's clock), so limits
//! are testable exactly.

use thiserror::Error;

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

/// One API key's limits and their buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyLimits {
    rps: Option<(u32, TokenBucket)>,
    tokens_per_minute: Option<(u32, TokenBucket)>,
}

/// A request over one of its key's limits.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("rate limit of {limit} {what} reached for this key; retry in {retry_after_s}s")]
pub struct RateLimited {
    /// `requests per second` or `tokens per minute`.
    pub what: &'static str,
    pub limit: u32,
    /// Whole seconds until the request would fit, at least 1.
    pub retry_after_s: u64,
}

// === impl KeyLimits ===

impl KeyLimits {
    /// Full buckets at `now_ms` for a key with these limits (absent: unlimited).
    pub fn new(rps: Option<u32>, tokens_per_minute: Option<u32>, now_ms: u64) -> Self {
        KeyLimits {
            rps: rps.map(|rps| (rps, TokenBucket::new(rps, f64::from(rps), now_ms))),
            tokens_per_minute: tokens_per_minute.map(|tpm| (tpm, TokenBucket::new(tpm, f64::from(tpm) / 60.0, now_ms))),
        }
    }

    /// Charges one request, and `llm_tokens` against the per-minute budget when it is an LLM
    /// call. The request is charged even if its tokens then do not fit.
    pub fn charge(&mut self, llm_tokens: Option<u32>, now_ms: u64) -> Result<(), RateLimited> {
        let limited = |what, limit: u32, wait_ms: u64| RateLimited {
            what,
            limit,
            retry_after_s: wait_ms.div_ceil(1000).max(1),
        };
        if let Some((limit, bucket)) = &mut self.rps {
            bucket
                .take(1, now_ms)
                .map_err(|wait| limited("requests per second", *limit, wait))?;
        }
        if let (Some(tokens), Some((limit, bucket))) = (llm_tokens, &mut self.tokens_per_minute) {
            bucket
                .take(tokens, now_ms)
                .map_err(|wait| limited("tokens per minute", *limit, wait))?;
        }
        Ok(())
    }
}

/// Tokens an LLM request may use, for the per-minute budget: about one per 4 bytes of body,
/// plus its `max_tokens` (256 when unset).
pub fn llm_token_cost(body_len: usize, max_tokens: Option<u64>) -> u32 {
    let cost = (body_len as u64 / 4).saturating_add(max_tokens.unwrap_or(256));
    cost.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::{llm_token_cost, KeyLimits, RateLimited, TokenBucket};

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

    #[test]
    fn keys_by_table() {
        let limited = |what, limit, retry_after_s| {
            Err(RateLimited {
                what,
                limit,
                retry_after_s,
            })
        };
        // (rps, tokens per minute, [(llm tokens, at ms, expected)])
        type Step = (Option<u32>, u64, Result<(), RateLimited>);
        let cases: Vec<(Option<u32>, Option<u32>, Vec<Step>)> = vec![
            (None, None, vec![(Some(1_000_000), 0, Ok(())), (None, 0, Ok(()))]),
            (
                Some(1),
                None,
                vec![
                    (None, 0, Ok(())),
                    (None, 10, limited("requests per second", 1, 1)),
                    (None, 1_000, Ok(())),
                ],
            ),
            (
                None,
                Some(60),
                vec![
                    (Some(50), 0, Ok(())),
                    (None, 0, Ok(())),
                    (Some(20), 0, limited("tokens per minute", 60, 10)),
                ],
            ),
            (
                Some(2),
                Some(60),
                vec![
                    (Some(60), 0, Ok(())),
                    (Some(1), 0, limited("tokens per minute", 60, 1)),
                    (Some(1), 0, limited("requests per second", 2, 1)),
                ],
            ),
        ];
        for (rps, tpm, steps) in cases {
            let mut key = KeyLimits::new(rps, tpm, 0);
            for (i, (tokens, at, expected)) in steps.into_iter().enumerate() {
                assert_eq!(key.charge(tokens, at), expected, "rps {rps:?}, tpm {tpm:?}, step {i}");
            }
        }
    }

    #[test]
    fn token_costs() {
        assert_eq!(llm_token_cost(400, Some(10)), 110);
        assert_eq!(llm_token_cost(3, None), 256);
        assert_eq!(llm_token_cost(usize::MAX, Some(u64::MAX)), u32::MAX);
    }
}
