//! Regions (airport-style codes with coordinates) and the round-trip time between them.
//!
//! The RTT estimate: light in fibre covers about 200 km per millisecond and real routes run
//! about 2.1 times the great-circle distance, so RTT ≈ 2 × 2.1 × km / 200 ms.

use crate::csv::{self, CsvError};
use serde::Serialize;

const BUILTIN_CSV: &str = include_str!("../../../data/regions.csv");

const EARTH_RADIUS_KM: f64 = 6371.0;

/// One region colo knows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Region {
    pub code: String,
    pub city: String,
    pub lat: f64,
    pub lon: f64,
}

/// All regions colo knows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Regions {
    pub regions: Vec<Region>,
}

// === impl Regions ===

impl Regions {
    /// The regions in `data/regions.csv`, built into the binary.
    pub fn builtin() -> Regions {
        // The table is part of the source tree and checked by the tests below.
        Regions::from_csv(BUILTIN_CSV).expect("data/regions.csv is valid (checked by colo-core's tests)")
    }

    pub fn from_csv(text: &str) -> Result<Regions, CsvError> {
        let mut regions = Vec::new();
        for row in csv::rows("regions.csv", text)? {
            let coordinate = |column: &str, limit: f64| -> Result<f64, CsvError> {
                let text = row.text(column)?;
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && v.abs() <= limit => Ok(v),
                    _ => Err(CsvError {
                        table: "regions.csv",
                        line: row.line,
                        column: column.into(),
                        reason: format!("{text:?} is not a coordinate within ±{limit}"),
                    }),
                }
            };
            regions.push(Region {
                code: row.text("code")?.to_string(),
                city: row.text("city")?.to_string(),
                lat: coordinate("lat", 90.0)?,
                lon: coordinate("lon", 180.0)?,
            });
        }
        Ok(Regions { regions })
    }

    pub fn get(&self, code: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.code == code)
    }

    /// Estimated round-trip time in milliseconds, `None` if either code is unknown.
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<f64> {
        Some(rtt_ms(self.get(a)?, self.get(b)?))
    }
}

/// Great-circle distance in km (haversine).
pub fn distance_km(a: &Region, b: &Region) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Estimated round-trip time in milliseconds between two regions.
pub fn rtt_ms(a: &Region, b: &Region) -> f64 {
    2.0 * 2.1 * distance_km(a, b) / 200.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_by_table() {
        let regions = Regions::builtin();
        // Expected: the same formula computed independently (Python, haversine) from data/regions.csv.
        let cases = [
            ("ams", "ams", 0.0),
            ("ams", "fra", 7.7),
            ("iad", "ord", 19.9),
            ("lhr", "syd", 357.4),
        ];
        for (a, b, expected) in cases {
            let got = regions.rtt_ms(a, b).unwrap();
            assert!((got - expected).abs() < 0.5, "{a}-{b}: {got:.1} ms, expected {expected}");
            assert_eq!(regions.rtt_ms(a, b), regions.rtt_ms(b, a));
        }
        assert_eq!(regions.rtt_ms("ams", "xxx"), None);
        assert!(regions.regions.len() >= 30);
    }
}
