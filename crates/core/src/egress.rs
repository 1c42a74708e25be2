//! Egress prices: what a provider charges per GB of data leaving it (data/egress.csv, built
//! in). The simulator prices weights pulled across clouds and answers sent to callers with it.

use crate::csv::{self, CsvError};

const BUILTIN_CSV: &str = include_str!("../../../data/egress.csv");

/// One provider's internet egress price, first paid tier.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressPrice {
    pub provider: String,
    pub usd_per_gb: f64,
}

/// The egress price table.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressPrices {
    pub rows: Vec<EgressPrice>,
}

// === impl EgressPrices ===

impl EgressPrices {
    /// The prices in `data/egress.csv`, built into the binary.
    pub fn builtin() -> EgressPrices {
        EgressPrices::from_csv(BUILTIN_CSV).expect("data/egress.csv is valid (checked by colo-core's tests)")
    }

    pub fn from_csv(text: &str) -> Result<EgressPrices, CsvError> {
        let rows = csv::rows("egress.csv", text)?
            .iter()
            .map(|row| {
                Ok(EgressPrice {
                    provider: row.text("provider")?.to_string(),
                    usd_per_gb: row.opt_f64("usd_per_gb")?.unwrap_or(0.0),
                })
            })
            .collect::<Result<_, CsvError>>()?;
        Ok(EgressPrices { rows })
    }

    /// USD per GB leaving `provider`, if the table has it.
    pub fn usd_per_gb(&self, provider: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.provider == provider).map(|r| r.usd_per_gb)
    }

    /// The providers in the table, for error messages.
    pub fn providers(&self) -> Vec<&str> {
        self.rows.iter().map(|r| r.provider.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_reads() {
        let prices = EgressPrices::builtin();
        assert_eq!(prices.usd_per_gb("aws-s3"), Some(0.09));
        assert_eq!(prices.usd_per_gb("tigris"), Some(0.0));
        assert_eq!(prices.usd_per_gb("nowhere"), None);
        let bad = EgressPrices::from_csv("provider,usd_per_gb\naws,-1\n").unwrap_err();
        assert_eq!(bad.column, "usd_per_gb");
    }
}
