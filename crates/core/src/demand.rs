//! Demand: the traffic each region sends (demand.toml, `colo plan --demand`, `colo deploy
//! --demand`), and the record of where the planner placed an app's machines for it. The
//! placement itself is `colo_policy::place`; these are the facts it reads and leaves behind,
//! kept here so an `App` can carry them.

use crate::Regions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// demand.toml: the traffic each region sends.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    /// Longest acceptable RTT between a caller's region and the machine serving it, in ms.
    pub rtt_limit_ms: Option<f64>,
    /// Traffic per region.
    #[serde(default)]
    pub regions: Vec<RegionDemand>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDemand {
    /// Region code of the callers.
    pub region: String,
    /// Requests per second at the busy hour.
    pub requests_per_s: f64,
    /// Typical prompt length in tokens.
    pub prompt_tokens: u64,
    /// Typical output length in tokens.
    pub output_tokens: u64,
}

/// Demand that no placement meets, and why.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Unmet {
    pub region: String,
    pub requests_per_s: f64,
    pub reason: String,
}

/// One machine a placement put on a host: `n_gpus` cards of `gpu`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct PlacedSlot {
    pub host: String,
    pub region: String,
    /// Catalogue GPU kind (`l40s`).
    pub gpu: String,
    pub n_gpus: u32,
    /// Weight format the plan assumed (`bf16`, `fp8`, `int8`, `int4`).
    pub quant: String,
}

/// Where the planner placed an app's machines at its last deploy, and what it could not place.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PlacementRecord {
    pub machines: Vec<PlacedSlot>,
    /// Demand no live host within reach could take, with the reason; empty when all was placed.
    #[serde(default)]
    pub unmet: Vec<Unmet>,
}

// === impl Demand ===

impl Demand {
    /// Every problem, each naming its field (`regions[0].requests_per_s`).
    pub fn validate(&self, regions: &Regions) -> Vec<String> {
        let mut problems = Vec::new();
        if self.regions.is_empty() {
            problems.push("demand.regions: no demand; add at least one [[regions]] table".into());
        }
        if let Some(rtt) = self.rtt_limit_ms {
            if !(rtt.is_finite() && rtt > 0.0) {
                problems.push(format!("demand.rtt_limit_ms: {rtt} must be above zero"));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, d) in self.regions.iter().enumerate() {
            let at = format!("demand.regions[{i}]");
            if regions.get(&d.region).is_none() {
                problems.push(format!("{at}.region: unknown region {:?}", d.region));
            } else if !seen.insert(d.region.as_str()) {
                problems.push(format!("{at}.region: {:?} appears twice", d.region));
            }
            if !(d.requests_per_s.is_finite() && d.requests_per_s > 0.0) {
                problems.push(format!("{at}.requests_per_s: {} must be above zero", d.requests_per_s));
            }
            for (field, v) in [("prompt_tokens", d.prompt_tokens), ("output_tokens", d.output_tokens)] {
                if v == 0 {
                    problems.push(format!("{at}.{field}: must be at least 1"));
                }
            }
        }
        problems
    }
}
