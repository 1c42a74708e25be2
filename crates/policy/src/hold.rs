//! The hold queue's two decisions: may one more request wait, and has a waiting one waited too
//! long. Both answer with the `Retry-After` seconds the 503 should carry.

use serde::Deserialize;
use thiserror::Error;

/// Bounds of the queue of requests waiting for a machine, per app and region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldLimits {
    /// Requests that may wait at once; the next one is turned away.
    pub max_held: u32,
    /// How long a request may wait before it is turned away, in milliseconds.
    pub max_wait_ms: u64,
    /// The `Retry-After` a turned-away request is given, in seconds.
    pub retry_after_s: u32,
}

/// Why a request is not (or no longer) held.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("{held} requests already wait for a machine (the bound is {max_held}); retry in {retry_after_s}s")]
    QueueFull { held: u32, max_held: u32, retry_after_s: u32 },
    #[error("no machine had room within {waited_ms} ms; retry in {retry_after_s}s")]
    DeadlinePassed { waited_ms: u64, retry_after_s: u32 },
}

/// Admits one more request to a queue that holds `held` now; `Ok` carries its deadline.
pub fn admit_hold(held: u32, limits: &HoldLimits, now_ms: u64) -> Result<u64, HoldError> {
    if held >= limits.max_held {
        return Err(HoldError::QueueFull {
            held,
            max_held: limits.max_held,
            retry_after_s: limits.retry_after_s,
        });
    }
    Ok(now_ms.saturating_add(limits.max_wait_ms))
}

/// Whether a request held since `held_at_ms` may keep waiting at `now_ms`.
pub fn check_hold(held_at_ms: u64, limits: &HoldLimits, now_ms: u64) -> Result<(), HoldError> {
    let waited_ms = now_ms.saturating_sub(held_at_ms);
    if waited_ms >= limits.max_wait_ms {
        return Err(HoldError::DeadlinePassed {
            waited_ms,
            retry_after_s: limits.retry_after_s,
        });
    }
    Ok(())
}

// === impl HoldError ===

impl HoldError {
    /// Seconds for the `Retry-After` header.
    pub fn retry_after_s(&self) -> u32 {
        match self {
            HoldError::QueueFull { retry_after_s, .. } | HoldError::DeadlinePassed { retry_after_s, .. } => *retry_after_s,
        }
    }
}

// === impl HoldLimits ===

impl HoldLimits {
    /// Every problem with these settings, empty when they are usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_held == 0 {
            problems.push("max_held must be at least 1 (a request must be able to wait for a start)".to_string());
        }
        if self.max_wait_ms == 0 {
            problems.push("max_wait_ms must be positive".to_string());
        }
        if self.retry_after_s == 0 {
            problems.push("retry_after_s must be at least 1".to_string());
        }
        problems
    }
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            max_held: 1_000,
            max_wait_ms: 30_000,
            retry_after_s: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HoldLimits = HoldLimits {
        max_held: 3,
        max_wait_ms: 5_000,
        retry_after_s: 2,
    };

    #[test]
    fn admission_by_table() {
        let cases: Vec<(&str, u32, u64, Result<u64, HoldError>)> = vec![
            ("empty queue", 0, 1_000, Ok(6_000)),
            ("one below the bound", 2, 1_000, Ok(6_000)),
            (
                "at the bound",
                3,
                1_000,
                Err(HoldError::QueueFull {
                    held: 3,
                    max_held: 3,
                    retry_after_s: 2,
                }),
            ),
        ];
        for (what, held, now, expected) in cases {
            assert_eq!(admit_hold(held, &LIMITS, now), expected, "{what}");
        }
    }

    #[test]
    fn deadline_by_table() {
        let cases: Vec<(&str, u64, u64, Result<(), HoldError>)> = vec![
            ("fresh", 1_000, 1_000, Ok(())),
            ("just before", 1_000, 5_999, Ok(())),
            (
                "at the deadline",
                1_000,
                6_000,
                Err(HoldError::DeadlinePassed {
                    waited_ms: 5_000,
                    retry_after_s: 2,
                }),
            ),
            ("clock behind the hold", 9_000, 1_000, Ok(())),
        ];
        for (what, held_at, now, expected) in cases {
            assert_eq!(check_hold(held_at, &LIMITS, now), expected, "{what}");
        }
        assert_eq!(check_hold(0, &LIMITS, 10_000).map_err(|e| e.retry_after_s()), Err(2));
    }

    #[test]
    fn validate_lists_every_problem() {
        let bad = HoldLimits {
            max_held: 0,
            max_wait_ms: 0,
            retry_after_s: 0,
        };
        assert_eq!(bad.validate().len(), 3);
        assert!(HoldLimits::default().validate().is_empty());
    }
}
