//! The scenario file (`colo sim SCENARIO.toml`): the world to simulate. Unknown keys are
//! refused, and `validate` names every wrong field at once.

use crate::roofline::Roofline;
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
    /// How arrival rates change over the day (flat unless a curve is given).
    #[serde(default)]
    pub arrivals: Arrivals,
    /// GPU kind (data/gpus.csv) of regions that name none: for the roofline and for cost.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Price book of GPU-hours: `fly-2024` (default), `fly-2024-before` or `ref`.
    #[serde(default = "default_prices")]
    pub prices: String,
    /// The model served, for the roofline and for the bytes a cold start moves.
    #[serde(default)]
    pub model: Option<ModelSpec>,
    /// Prompt and output lengths of requests.
    #[serde(default)]
    pub tokens: Option<Tokens>,
    /// Scale to zero: machines that start when requests wait and stop when idle.
    #[serde(default)]
    pub scaling: Option<Scaling>,
    /// Where weights come from on a cold start.
    #[serde(default)]
    pub storage: Option<Storage>,
    /// RTTs between two regions, both ways, over data/regions.csv's.
    #[serde(default, rename = "rtt")]
    pub rtts: Vec<RttSpec>,
    /// Machines placed by colo-policy's `place` on these hosts, for the callers' busy hour.
    #[serde(default)]
    pub placement: Option<PlacementSpec>,
}

/// Hosts with free GPUs, on which colo-policy's placement puts the machines the callers' busy
/// hour needs (one card each), within an RTT of them, cheapest first.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Longest RTT between callers and the machine serving them, ms.
    pub rtt_limit_ms: f64,
    /// Share of a machine's throughput the placement plans to use.
    #[serde(default = "default_target_utilisation")]
    pub target_utilisation: f64,
    /// The hosts: `{ name = "ord-1", region = "ord", gpus = { l40s = 4 } }`.
    #[serde(rename = "host")]
    pub hosts: Vec<colo_policy::Host>,
}

fn default_target_utilisation() -> f64 {
    0.5
}

/// The RTT between two of the scenario's regions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttSpec {
    pub a: String,
    pub b: String,
    pub ms: f64,
}

fn default_prices() -> String {
    "fly-2024".into()
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
    /// Requests per second arriving at this region's edge (Poisson); with a daily curve, the
    /// mean over the day.
    #[serde(default)]
    pub arrival_rate: f64,
    /// Machines here that are started when requests wait and stopped when idle ([scaling]).
    #[serde(default)]
    pub scalable: u32,
    /// GPU kind of this region's machines (default: the scenario's `gpu`).
    #[serde(default)]
    pub gpu: Option<String>,
    /// Price of one of this region's machines per hour, USD (default: the price book's).
    #[serde(default)]
    pub usd_per_hour: Option<f64>,
    /// The cloud these machines run in: weights from a store in another cloud pay its egress.
    #[serde(default = "default_cloud")]
    pub cloud: String,
    /// Row of data/egress.csv that prices answers leaving this region's machines (none: free).
    #[serde(default)]
    pub egress: Option<String>,
    /// Whether this region's hosts hold the weights from the start.
    #[serde(default)]
    pub cached: bool,
}

fn default_cloud() -> String {
    "colo".into()
}

/// Service time distribution.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub distribution: Distribution,
    /// Mean service time, ms (not for the roofline, which derives it).
    #[serde(default)]
    pub mean_ms: Option<f64>,
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
    /// Prefill and decode times from the planner's roofline for the model on the machine's
    /// GPU, at the batch the request joins.
    Roofline,
}

/// How arrival rates vary through the day.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Arrivals {
    pub curve: Curve,
    /// The busiest hour's rate over the quietest's.
    pub peak_to_trough: f64,
    /// Local solar hour (from the region's longitude) of the busiest moment.
    pub peak_hour: f64,
}

impl Arrivals {
    /// The daily cosine's amplitude relative to the mean rate: 0 when flat, and
    /// (k - 1) / (k + 1) for a peak k times the trough.
    pub fn amplitude(&self) -> f64 {
        match self.curve {
            Curve::Flat => 0.0,
            Curve::Diurnal => (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0),
        }
    }
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals {
            curve: Curve::Flat,
            peak_to_trough: 3.0,
            peak_hour: 14.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// The same rate all day.
    Flat,
    /// A cosine over 24 hours of local time; simulated time 0 is midnight UTC.
    Diurnal,
}

/// The model served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model colo knows the config.json of (see `MODELS`).
    pub name: String,
    /// Weight format: bf16, fp8, int8 or int4.
    #[serde(default = "default_quant")]
    pub quant: String,
}

fn default_quant() -> String {
    "bf16".into()
}

/// Models the simulator knows: their published config.json files, kept in testdata/.
pub const MODELS: [(&str, &str); 5] = [
    ("llama-3.1-8b", include_str!("../../../testdata/configs/llama-3.1-8b/config.json")),
    ("llama-3.1-70b", include_str!("../../../testdata/configs/llama-3.1-70b/config.json")),
    (
        "mistral-7b-v0.1",
        include_str!("../../../testdata/configs/mistral-7b-v0.1/config.json"),
    ),
    ("qwen2.5-0.5b", include_str!("../../../testdata/configs/qwen2.5-0.5b/config.json")),
    (
        "tinyllama-1.1b",
        include_str!("../../../testdata/configs/tinyllama-1.1b/config.json"),
    ),
];

/// Prompt and output lengths: lognormal with these means (sigma 0: always the mean).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub prompt_mean: f64,
    #[serde(default)]
    pub prompt_sigma: f64,
    pub output_mean: f64,
    #[serde(default)]
    pub output_sigma: f64,
    /// Bytes on the wire per output token (a streamed chunk is about 150 to 250 bytes of
    /// JSON), for the egress of answers.
    #[serde(default = "default_bytes_per_token")]
    pub bytes_per_output_token: f64,
}

fn default_bytes_per_token() -> f64 {
    200.0
}

/// Scale to zero, decided by colo-policy's `Scaler` per region.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// A scalable machine idle this long is stopped (absent: never).
    #[serde(default)]
    pub autostop_s: Option<f64>,
    /// Scalable machines kept started in each region.
    #[serde(default)]
    pub min_running: u32,
    /// Loading the engine once the weights are on the host, seconds.
    #[serde(default = "default_engine_load_s")]
    pub engine_load_s: f64,
}

fn default_engine_load_s() -> f64 {
    10.0
}

/// The store the weights come from, and the rates a cold start reads them at.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The store's region; absent: every region has a store of its own (co-located).
    #[serde(default)]
    pub region: Option<String>,
    /// The store's cloud: hosts in another cloud pay its egress for the weights.
    #[serde(default = "default_cloud")]
    pub cloud: String,
    /// Row of data/egress.csv that prices weights leaving the store's cloud (none: free).
    #[serde(default)]
    pub egress: Option<String>,
    /// Store to host in the store's region, Gbit/s.
    #[serde(default = "default_origin_gbps")]
    pub origin_gbps: f64,
    /// Store to host in another region, Gbit/s (default: origin_gbps).
    #[serde(default)]
    pub remote_gbps: Option<f64>,
    /// From a host of the same region that holds the weights, Gbit/s (0: no peer reads).
    #[serde(default)]
    pub peer_gbps: f64,
    /// From the host's own cache (disk), Gbit/s.
    #[serde(default = "default_cache_gbps")]
    pub cache_gbps: f64,
    /// Whether a host keeps the weights after a start (default true).
    #[serde(default = "default_true")]
    pub cache: bool,
}

fn default_origin_gbps() -> f64 {
    1.0
}

fn default_cache_gbps() -> f64 {
    16.0
}

fn default_true() -> bool {
    true
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
    /// How the edge chooses among machines with room: score (the default), least-loaded,
    /// round-robin or pack.
    pub mode: colo_core::RouteMode,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            hard_limit: 64,
            soft_limit: None,
            max_held: u32::MAX,
            max_wait_ms: u64::MAX,
            default_rtt_ms: 0.0,
            mode: colo_core::RouteMode::Score,
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

    /// The config.json and weight format of the scenario's model, when it names a known one.
    pub fn model_config(&self) -> Option<(&'static str, colo_model::Quant)> {
        let model = self.model.as_ref()?;
        let config = MODELS.iter().find(|(name, _)| *name == model.name)?.1;
        let quant = colo_model::Quant::parse(&model.quant).filter(|q| *q != colo_model::Quant::Gguf)?;
        Some((config, quant))
    }

    /// The busy-hour rate of a region's callers: its mean rate at the daily curve's peak.
    pub fn peak_rate(&self, region: &RegionSpec) -> f64 {
        region.arrival_rate * (1.0 + self.arrivals.amplitude())
    }

    /// Whether a host keeps the weights after a start (no `[storage]`: nothing to read).
    pub fn hosts_keep_weights(&self) -> bool {
        self.storage.as_ref().is_none_or(|s| s.cache)
    }

    /// The machines `[placement]` puts on its hosts, by colo-policy's `place`: one card each,
    /// in the scenario's weight format and price book, for every region's busy-hour rate.
    pub fn place(&self) -> Result<colo_policy::Placement, String> {
        let spec = self.placement.as_ref().ok_or("no [placement]")?;
        let (config, quant) = self.model_config().ok_or("no known [model]")?;
        let tokens = self.tokens.as_ref().ok_or("no [tokens]")?;
        let facts = colo_model::ModelFacts::from_config(config.as_bytes()).map_err(|e| e.to_string())?;
        let prices = colo_core::PriceBook::parse_name(&self.prices).ok_or("unknown price book")?;
        let (prompt, output) = (tokens.prompt_mean.ceil().max(1.0) as u64, tokens.output_mean.ceil().max(1.0) as u64);
        let template = colo_policy::PlanRequest {
            context: prompt + output,
            concurrency: u64::from(self.routing.hard_limit.max(1)),
            quants: vec![quant],
            n_gpus: vec![1],
            prices,
            target_utilisation: spec.target_utilisation.clamp(1e-6, 1.0),
            ..colo_policy::PlanRequest::default()
        };
        let demand = colo_core::Demand {
            rtt_limit_ms: Some(spec.rtt_limit_ms),
            regions: self
                .regions
                .iter()
                .filter(|r| r.arrival_rate > 0.0)
                .map(|r| colo_core::RegionDemand {
                    region: r.name.clone(),
                    requests_per_s: self.peak_rate(r),
                    prompt_tokens: prompt,
                    output_tokens: output,
                })
                .collect(),
        };
        let fleet = colo_policy::Fleet {
            hosts: spec.hosts.clone(),
            edges: Vec::new(),
            inter_region_delay_ms: 0,
        };
        let catalogue = colo_core::Catalogue::builtin();
        let regions = colo_core::Regions::builtin();
        let placement =
            colo_policy::place(&facts, &catalogue, &regions, &fleet, &demand, &template, spec.rtt_limit_ms).map_err(|e| e.to_string())?;
        for m in &placement.machines {
            if !self.regions.iter().any(|r| r.name == m.region) {
                return Err(format!("host {} is in {}, which is not a region of the scenario", m.host, m.region));
            }
        }
        Ok(placement)
    }

    /// Every problem with the scenario, each naming its field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, why: String| problems.push(format!("{field}: {why}"));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.duration_s) {
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
        let catalogue = colo_core::Catalogue::builtin();
        let egress = colo_core::EgressPrices::builtin();
        let book = colo_core::PriceBook::parse_name(&self.prices).filter(|b| *b != colo_core::PriceBook::Own);
        if book.is_none() {
            problem("prices", format!("{:?} is not fly-2024, fly-2024-before or ref", self.prices));
        }
        let known_egress = |name: &str| egress.usd_per_gb(name).is_some();
        let egress_list = egress.providers().join(", ");
        let mut names = std::collections::HashSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            let field = |key: &str| format!("region[{i}].{key}");
            if region.name.is_empty() || !names.insert(region.name.as_str()) {
                problem(&field("name"), format!("{:?} is empty or named twice", region.name));
            }
            if !(region.arrival_rate.is_finite() && region.arrival_rate >= 0.0) {
                problem(&field("arrival_rate"), format!("{} must be at least 0", region.arrival_rate));
            }
            if region.scalable > 0 && self.scaling.is_none() {
                problem(&field("scalable"), "scalable machines need a [scaling] table".into());
            }
            if u64::from(region.machines) + u64::from(region.scalable) > 1_000_000 {
                problem(&field("machines"), "more than a million machines in one region".into());
            }
            let gpu = region.gpu.as_ref().or(self.gpu.as_ref());
            match (gpu, region.usd_per_hour) {
                (_, Some(p)) if !(p.is_finite() && p >= 0.0) => problem(&field("usd_per_hour"), format!("{p} must be at least 0")),
                (Some(kind), price) => match catalogue.get(kind) {
                    Err(e) => problem(&field("gpu"), e.to_string()),
                    Ok(k) => {
                        if price.is_none() && book.as_ref().is_some_and(|b| k.price(b).is_none()) {
                            problem(
                                &field("usd_per_hour"),
                                format!("the {} price book has no price for {kind}; give one", self.prices),
                            );
                        }
                    }
                },
                (None, _) => {}
            }
            if let Some(name) = &region.egress {
                if !known_egress(name) {
                    problem(&field("egress"), format!("{name:?} is not in data/egress.csv ({egress_list})"));
                }
            }
        }
        let machines = |r: &RegionSpec| r.machines + r.scalable;
        if self.regions.iter().all(|r| machines(r) == 0) && self.placement.is_none() {
            problem("region.machines", "no region has a machine (nor a [placement])".into());
        }
        if self.regions.iter().all(|r| r.arrival_rate == 0.0) {
            problem("region.arrival_rate", "no region has arrivals".into());
        }
        let arrivals = &self.arrivals;
        if !(arrivals.peak_to_trough.is_finite() && arrivals.peak_to_trough >= 1.0) {
            problem("arrivals.peak_to_trough", format!("{} must be at least 1", arrivals.peak_to_trough));
        }
        if !(arrivals.peak_hour.is_finite() && (0.0..24.0).contains(&arrivals.peak_hour)) {
            problem("arrivals.peak_hour", format!("{} must be from 0 to 24", arrivals.peak_hour));
        }
        let service = &self.service;
        let roofline = service.distribution == Distribution::Roofline;
        match (roofline, service.mean_ms) {
            (true, Some(_)) => problem("service.mean_ms", "the roofline derives service times; leave mean_ms out".into()),
            (false, None) => problem("service.mean_ms", "a mean service time is needed".into()),
            (false, Some(mean)) if !positive(mean) => problem("service.mean_ms", format!("{mean} must be positive")),
            _ => {}
        }
        match (service.distribution, service.sigma) {
            (Distribution::Lognormal, None) => problem("service.sigma", "a lognormal needs sigma".into()),
            (Distribution::Lognormal, Some(s)) if !(s.is_finite() && s >= 0.0) => {
                problem("service.sigma", format!("{s} must be at least 0"))
            }
            (Distribution::Lognormal, Some(_)) => {}
            (_, Some(_)) => problem("service.sigma", "only a lognormal takes sigma".into()),
            _ => {}
        }
        if roofline {
            if self.model.is_none() {
                problem("model", "the roofline needs a [model]".into());
            }
            if self.tokens.is_none() {
                problem("tokens", "the roofline needs [tokens]".into());
            }
            let mut checked = std::collections::HashSet::new();
            for (i, region) in self.regions.iter().enumerate() {
                if machines(region) == 0 {
                    continue;
                }
                let Some(kind) = region.gpu.as_ref().or(self.gpu.as_ref()) else {
                    problem(
                        &format!("region[{i}].gpu"),
                        "the roofline needs a GPU kind here (or a top-level gpu)".into(),
                    );
                    continue;
                };
                let (Ok(gpu), Some((config, quant)), Some(tokens)) = (catalogue.get(kind), self.model_config(), &self.tokens) else {
                    continue;
                };
                if checked.insert(kind.clone()) {
                    let hard = self.routing.hard_limit.max(1);
                    if let Err(why) = Roofline::new(config, quant, gpu, hard, tokens.prompt_mean, tokens.output_mean) {
                        problem(&format!("region[{i}].gpu"), format!("{why} (routing.hard_limit is the batch)"));
                    }
                }
            }
        }
        if let Some(model) = &self.model {
            if !MODELS.iter().any(|(name, _)| *name == model.name) {
                let known: Vec<&str> = MODELS.iter().map(|(n, _)| *n).collect();
                problem("model.name", format!("{:?} is not one of {}", model.name, known.join(", ")));
            }
            match colo_model::Quant::parse(&model.quant) {
                Some(colo_model::Quant::Gguf) | None => problem("model.quant", format!("{:?} is not bf16, fp8, int8 or int4", model.quant)),
                Some(_) => {}
            }
        }
        if let Some(tokens) = &self.tokens {
            for (key, v) in [("prompt_mean", tokens.prompt_mean), ("output_mean", tokens.output_mean)] {
                if !(v.is_finite() && (1.0..=1e6).contains(&v)) {
                    problem(&format!("tokens.{key}"), format!("{v} must be from 1 to a million"));
                }
            }
            for (key, v) in [("prompt_sigma", tokens.prompt_sigma), ("output_sigma", tokens.output_sigma)] {
                if !(v.is_finite() && (0.0..=3.0).contains(&v)) {
                    problem(&format!("tokens.{key}"), format!("{v} must be from 0 to 3"));
                }
            }
            if !(tokens.bytes_per_output_token.is_finite() && tokens.bytes_per_output_token >= 0.0) {
                problem("tokens.bytes_per_output_token", "must be at least 0".into());
            }
        }
        if let Some(scaling) = &self.scaling {
            if scaling.autostop_s.is_some_and(|s| !positive(s)) {
                problem(
                    "scaling.autostop_s",
                    "must be a positive number of seconds (leave it out to never stop)".into(),
                );
            }
            if !(scaling.engine_load_s.is_finite() && scaling.engine_load_s >= 0.0) {
                problem("scaling.engine_load_s", format!("{} must be at least 0", scaling.engine_load_s));
            }
            if self.regions.iter().all(|r| r.scalable == 0) && self.placement.is_none() {
                problem("scaling", "no region has scalable machines (nor a [placement])".into());
            }
        }
        if let Some(storage) = &self.storage {
            if self.model.is_none() {
                problem("storage", "cold starts move the model's weights: a [model] is needed".into());
            }
            if let Some(region) = &storage.region {
                if !self.regions.iter().any(|r| &r.name == region) && colo_core::Regions::builtin().get(region).is_none() {
                    problem(
                        "storage.region",
                        format!("{region:?} is neither a scenario region nor in data/regions.csv"),
                    );
                }
            }
            if let Some(name) = &storage.egress {
                if !known_egress(name) {
                    problem("storage.egress", format!("{name:?} is not in data/egress.csv ({egress_list})"));
                }
            }
            let rates = [
                ("origin_gbps", Some(storage.origin_gbps)),
                ("remote_gbps", storage.remote_gbps),
                ("cache_gbps", Some(storage.cache_gbps)),
            ];
            for (key, v) in rates {
                if v.is_some_and(|v| !positive(v)) {
                    problem(&format!("storage.{key}"), "must be a positive rate in Gbit/s".into());
                }
            }
            if !(storage.peer_gbps.is_finite() && storage.peer_gbps >= 0.0) {
                problem("storage.peer_gbps", "must be at least 0 (0: no peer reads)".into());
            }
        }
        if self.scaling.is_some() && self.storage.is_none() {
            problem(
                "storage",
                "scaling needs [storage]: a cold start reads the weights from somewhere".into(),
            );
        }
        for (i, rtt) in self.rtts.iter().enumerate() {
            for (key, name) in [("a", &rtt.a), ("b", &rtt.b)] {
                if !self.regions.iter().any(|r| &r.name == name) {
                    problem(&format!("rtt[{i}].{key}"), format!("{name:?} is not a region of the scenario"));
                }
            }
            if !(rtt.ms.is_finite() && rtt.ms >= 0.0) {
                problem(&format!("rtt[{i}].ms"), format!("{} must be at least 0", rtt.ms));
            }
        }
        if let Some(spec) = &self.placement {
            match (self.model_config(), &self.tokens) {
                (Some(_), Some(_)) => {
                    if let Err(e) = self.place() {
                        problem("placement", e);
                    }
                }
                _ => problem("placement", "placing machines needs a [model] and [tokens]".into()),
            }
            if !(spec.target_utilisation.is_finite() && spec.target_utilisation > 0.0 && spec.target_utilisation <= 1.0) {
                problem(
                    "placement.target_utilisation",
                    format!("{} must be above 0 and at most 1", spec.target_utilisation),
                );
            }
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
