//! Money: US dollars as a checked, finite, non-negative amount.
//!
//! Prices enter colo from CSV files and operators' TOML, so a price is validated once, where it
//! is made, and every later sum or ratio can trust it is a real number.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("{value} is not a price: it must be a finite amount of at least zero dollars")]
    NotAPrice { value: f64 },
}

/// An amount in US dollars. Always finite and never negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Usd(f64);

// === impl Usd ===

impl Usd {
    pub const ZERO: Usd = Usd(0.0);

    pub fn new(value: f64) -> Result<Self, MoneyError> {
        if value.is_finite() && value >= 0.0 {
            Ok(Usd(value))
        } else {
            Err(MoneyError::NotAPrice { value })
        }
    }

    pub fn as_f64(self) -> f64 {
        self.0
    }

    /// This amount times a count of items (GPUs, hours).
    pub fn times(self, n: u32) -> Usd {
        Usd(self.0 * f64::from(n))
    }
}

impl TryFrom<f64> for Usd {
    type Error = MoneyError;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Usd::new(value)
    }
}

impl From<Usd> for f64 {
    fn from(usd: Usd) -> f64 {
        usd.0
    }
}

impl std::ops::Add for Usd {
    type Output = Usd;

    fn add(self, other: Usd) -> Usd {
        Usd(self.0 + other.0)
    }
}

impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Usd {
    /// Cents for amounts of a cent or more, four decimals below that (per-token prices).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 0.01 || self.0 == 0.0 {
            write!(f, "${:.2}", self.0)
        } else {
            write!(f, "${:.4}", self.0)
        }
    }
}

/// A price for people with at least three significant digits, so that a small per-token
/// price never reads as $0.000: `$7.52`, `$0.500`, `$0.0123`, `$0.000296`.
pub fn usd_figure(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return format!("${value:.2}");
    }
    if value >= 1.0 {
        return format!("${value:.2}");
    }
    // Digits after the point: up to the first significant one, plus two more.
    let decimals = (-value.log10()).floor() as usize + 3;
    format!("${value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_keep_three_significant_digits() {
        let cases = [
            (7.521, "$7.52"),
            (0.5, "$0.500"),
            (0.0123, "$0.0123"),
            (0.000296, "$0.000296"),
            (0.0000041, "$0.00000410"),
            (0.0, "$0.00"),
        ];
        for (value, shown) in cases {
            assert_eq!(usd_figure(value), shown, "{value}");
        }
    }

    #[test]
    fn prices_by_table() {
        let cases: [(f64, Option<&str>); 6] = [
            (1.25, Some("$1.25")),
            (0.0, Some("$0.00")),
            (0.0042, Some("$0.0042")),
            (-1.0, None),
            (f64::NAN, None),
            (f64::INFINITY, None),
        ];
        for (value, shown) in cases {
            let got = Usd::new(value).ok().map(|usd| usd.to_string());
            assert_eq!(got.as_deref(), shown, "{value}");
        }
        assert_eq!(Usd::new(1.5).unwrap().times(4).as_f64(), 6.0);
        assert!(serde_json::from_str::<Usd>("-2.0").is_err());
    }
}
