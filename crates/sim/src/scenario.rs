//! The scenario file (`colo sim SCENARIO.toml`): the world to simulate. Unknown keys are
//! refused, and `validate` names every wrong field at once.

use serde::Deserialize;

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random draw: the same seed gives the same report.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated seconds of arrivals.
    pub duration_s: f64,
    /// Requests arriving before this many seconds are simulated but not reported.
    #[serde(default)]
    pub warmup_s: f64,
    /// The regions: each an edge with its callers, and machines.
    #[serde(rename = "region")]
    pub regions: Vec<RegionSpec>,
    /// How long a machine takes to serve a request.
    pub service: Service,
    #[serde(default)]
    pub routing: Routing,
}

fn default_seed() -> u64 {
    1
}

/// One region: its edge, its callers' arrivals, and its machines.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Region code; codes of data/regions.csv get RTTs from their distance.
    pub name: String,
    /// Machines always started here.
    #[serde(default)]
    pub machines: u32,
    /// Requests per second arriving at this region's edge (Poisson).
    #[serde(default)]
    pub arrival_rate: f64,
}

/// Service time distribution.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub distribution: Distribution,
    /// Mean service time, ms.
    pub mean_ms: f64,
    /// Lognormal only: the standard deviation of the logarithm.
    #[serde(default)]
    pub sigma: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Exponential,
    Fixed,
    Lognormal,
}

/// The edge's routing settings (colo-policy's `RouteParams` and `HoldLimits`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Requests in flight per machine at which it gets no more; the rest wait at the edge.
    pub hard_limit: u32,
    /// Requests in flight above which other machines are preferred (default: the hard limit).
    pub soft_limit: Option<u32>,
    /// Requests an edge holds at most; more are turned away.
    pub max_held: u32,
    /// Longest a request may be held, ms; then it is turned away.
    pub max_wait_ms: u64,
    /// RTT between regions not in data/regions.csv, and within a region, ms.
    pub default_rtt_ms: f64,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            hard_limit: 64,
            soft_limit: None,
            max_held: u32::MAX,
            max_wait_ms: u64::MAX,
            default_rtt_ms: 0.0,
        }
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading the scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Scenario {
    /// Parses and validates scenario TOML.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Every problem with the scenario, each naming its field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, why: String| problems.push(format!("{field}: {why}"));
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            problem("duration_s", format!("{} must be a positive number of seconds", self.duration_s));
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0 && self.warmup_s < self.duration_s) {
            problem("warmup_s", format!("{} must be at least 0 and less than duration_s", self.warmup_s));
        }
        if self.regions.is_empty() {
            problem("region", "at least one [[region]] is needed".into());
        }
        if self.regions.len() > u16::MAX as usize {
            problem("region", format!("{} regions; at most {}", self.regions.len(), u16::MAX));
        }
        let mut names = std::collections::HashSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            if region.name.is_empty() || !names.insert(region.name.as_str()) {
                problem(&format!("region[{i}].name"), format!("{:?} is empty or named twice", region.name));
            }
            if !(region.arrival_rate.is_finite() && region.arrival_rate >= 0.0) {
                problem(
                    &format!("region[{i}].arrival_rate"),
                    format!("{} must be at least 0", region.arrival_rate),
                );
            }
        }
        if self.regions.iter().all(|r| r.machines == 0) {
            problem("region.machines", "no region has a machine".into());
        }
        if self.regions.iter().all(|r| r.arrival_rate == 0.0) {
            problem("region.arrival_rate", "no region has arrivals".into());
        }
        if !(self.service.mean_ms.is_finite() && self.service.mean_ms > 0.0) {
            problem("service.mean_ms", format!("{} must be positive", self.service.mean_ms));
        }
        match (self.service.distribution, self.service.sigma) {
            (Distribution::Lognormal, None) => problem("service.sigma", "a lognormal needs sigma".into()),
            (Distribution::Lognormal, Some(s)) if !(s.is_finite() && s >= 0.0) => {
                problem("service.sigma", format!("{s} must be at least 0"))
            }
            (Distribution::Exponential | Distribution::Fixed, Some(_)) => problem("service.sigma", "only a lognormal takes sigma".into()),
            _ => {}
        }
        let routing = &self.routing;
        if routing.hard_limit == 0 {
            problem("routing.hard_limit", "must be at least 1".into());
        }
        if routing.soft_limit.is_some_and(|s| s == 0 || s > routing.hard_limit) {
            problem("routing.soft_limit", format!("must be 1 to hard_limit ({})", routing.hard_limit));
        }
        if !(routing.default_rtt_ms.is_finite() && routing.default_rtt_ms >= 0.0) {
            problem("routing.default_rtt_ms", format!("{} must be at least 0", routing.default_rtt_ms));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ScenarioError::Invalid(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_keys_parse() {
        let text = r#"
            seed = 1
            duration_s = 50000
            warmup_s = 1000
            [[region]]
            name = "ord"
            machines = 3
            arrival_rate = 2.4
            [service]
            distribution = "exponential"
            mean_ms = 1000
            [routing]
            hard_limit = 1
        "#;
        let scenario = Scenario::from_toml(text).unwrap();
        assert_eq!(scenario.regions[0].machines, 3);
        assert_eq!(scenario.routing.hard_limit, 1);
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = r#"
            duration_s = -1
            [[region]]
            name = "ord"
            arrival_rate = -2
            [service]
            distribution = "lognormal"
            mean_ms = 0
            [routing]
            hard_limit = 0
        "#;
        let error = Scenario::from_toml(text).unwrap_err().to_string();
        for field in [
            "duration_s",
            "region[0].arrival_rate",
            "region.machines",
            "service.mean_ms",
            "service.sigma",
            "routing.hard_limit",
        ] {
            assert!(error.contains(field), "{field} not named in: {error}");
        }
        let unknown = Scenario::from_toml("duration_s = 1\nspeed = 3\n").unwrap_err().to_string();
        assert!(unknown.contains("speed"), "{unknown}");
    }
}
