//! Apps: a name callers use, the model it serves and how many machines it wants.

use crate::AppName;
use serde::{Deserialize, Serialize};

fn one_gpu() -> u32 {
    1
}

fn is_one_gpu(n: &u32) -> bool {
    *n == 1
}

/// An app as control records it after `colo deploy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// The name callers put in the OpenAI `model` field or the Host name.
    pub name: AppName,
    /// The model in the store that the app's machines serve.
    pub model: AppName,
    /// The model revision pinned by the deploy (the manifest's revision).
    pub revision: String,
    /// How many machines the app keeps.
    pub machines: u32,
    /// Milliseconds since the Unix epoch when the app was last deployed.
    pub deployed_at_ms: u64,
    /// Deploys of the app so far: 1 after the first, one more for each redeploy.
    #[serde(default)]
    pub version: u64,
    /// The GPU kind the planner chose (or the deploy named); `None`: any free device, which on
    /// a host without GPUs is a CPU slot.
    #[serde(default)]
    pub gpu: Option<GpuChoice>,
    /// Whole GPUs of one host each machine leases (tensor parallel); 1 for most models.
    #[serde(default = "one_gpu", skip_serializing_if = "is_one_gpu")]
    pub gpus_per_machine: u32,
    /// Requests in flight per machine past which edges prefer other machines; `None`: the
    /// edge's default.
    #[serde(default)]
    pub soft_limit: Option<u32>,
    /// Requests in flight per machine at which edges send it no more; `None`: the edge's default.
    #[serde(default)]
    pub hard_limit: Option<u32>,
    /// Seconds a machine may sit idle (nothing in flight) before the edge stops it; `None`:
    /// machines run until told otherwise.
    #[serde(default)]
    pub autostop_secs: Option<u64>,
    /// Machines kept started even when idle.
    #[serde(default)]
    pub min_running: u32,
    /// What autostop does to an idle machine: stop it (the default) or suspend it.
    #[serde(default, skip_serializing_if = "IdleAction::is_stop")]
    pub autostop_to: IdleAction,
    /// API keys that may call the app; none: the app is open to anyone who reaches the edge.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// BLAKE3 digests (hex) of the app's deploy tokens: each lets its holder deploy, inspect
    /// and destroy this app through control, and nothing else.
    #[serde(default)]
    pub deploy_tokens: Vec<String>,
    /// Machines wanted per region code; empty: `machines` spread over every host.
    #[serde(default)]
    pub regions: std::collections::BTreeMap<String, u32>,
    /// A command that runs the app's own engine instead of colo's, with `{port}` and
    /// `{model_dir}` filled in (bring your own vLLM, llama.cpp or any HTTP server).
    #[serde(default)]
    pub engine_cmd: Option<String>,
    /// Traffic per region that control places the app's machines for with the planner
    /// (`colo deploy --demand`), on the live hosts' GPUs; `None`: `machines` or `regions` decide.
    #[serde(default)]
    pub demand: Option<crate::Demand>,
    /// Where the placement put the machines at the deploy, and the demand it could not meet.
    #[serde(default)]
    pub placement: Option<crate::PlacementRecord>,
    /// The engine the app's machines run, by profile; `None`: colo's own (or `engine_cmd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::EngineSpec>,
    /// How edges choose among the app's machines; `None`: the edge's default (scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMode>,
    /// The weights of `RouteMode::Score`; `None`: the defaults ([`RouteWeights::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_weights: Option<RouteWeights>,
}

/// Weights of the terms `RouteMode::Score` adds up for each machine. The defaults: prefix 3,
/// KV 2, queue 2 (llm-d's weights for its prefix, KV-cache and queue scorers), RTT 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteWeights {
    /// Per share of the prompt's blocks the machine served lately (0 to 1).
    pub prefix: u16,
    /// Per share of the machine's KV cache free (0 to 1), as its engine last reported.
    pub kv: u16,
    /// Against each soft limit's worth of requests the machine holds (load over soft limit).
    pub queue: u16,
    /// Against each 100 ms of round trip from the edge to the machine's region.
    pub rtt: u16,
}

/// The largest weight `RouteWeights` takes.
pub const ROUTE_WEIGHT_MAX: u16 = 100;

// === impl RouteWeights ===

impl Default for RouteWeights {
    fn default() -> Self {
        RouteWeights {
            prefix: 3,
            kv: 2,
            queue: 2,
            rtt: 1,
        }
    }
}

impl RouteWeights {
    /// Reads `prefix=3,kv=2,queue=2,rtt=1`; keys left out keep their defaults. The error names
    /// the key and the limit.
    pub fn parse(text: &str) -> Result<RouteWeights, String> {
        let mut weights = RouteWeights::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=WEIGHT (keys: prefix, kv, queue, rtt)"))?;
            let value: u16 = value
                .trim()
                .parse()
                .ok()
                .filter(|v| *v <= ROUTE_WEIGHT_MAX)
                .ok_or_else(|| format!("{key}: {value:?} is not a whole number from 0 to {ROUTE_WEIGHT_MAX}"))?;
            match key.trim() {
                "prefix" => weights.prefix = value,
                "kv" => weights.kv = value,
                "queue" => weights.queue = value,
                "rtt" => weights.rtt = value,
                other => return Err(format!("{other:?} is not a weight (keys: prefix, kv, queue, rtt)")),
            }
        }
        Ok(weights)
    }

    /// The largest weight, for checks against [`ROUTE_WEIGHT_MAX`].
    pub fn max(&self) -> u16 {
        self.prefix.max(self.kv).max(self.queue).max(self.rtt)
    }
}

/// What autostop does to an idle machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleAction {
    /// Stop the engine: its device is free, and a wake is a cold start from cached weights.
    #[default]
    Stop,
    /// Suspend the engine: it keeps the model (and its device) and wakes in about a second.
    Suspend,
}

// === impl IdleAction ===

impl IdleAction {
    pub fn is_stop(&self) -> bool {
        *self == IdleAction::Stop
    }

    pub fn parse(s: &str) -> Option<IdleAction> {
        match s {
            "stop" => Some(IdleAction::Stop),
            "suspend" => Some(IdleAction::Suspend),
            _ => None,
        }
    }
}

/// How an edge chooses among an app's machines with room in the nearest region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteMode {
    /// The least loaded machine against those that served the prompt's start, on weighted
    /// terms of prefix match, KV headroom, load and RTT ([`RouteWeights`]).
    #[default]
    Score,
    /// The least loaded machine (under the soft limit first), closest on ties.
    LeastLoaded,
    /// The next machine with room, in turn.
    RoundRobin,
    /// The most loaded machine under the soft limit, then the least loaded over it; closest on
    /// ties, then always the same one. Fills one machine to its soft limit before the next, so
    /// that spare machines fall idle and autostop can stop them (least-loaded spreading keeps
    /// every machine a little busy, and none is ever idle long enough).
    Pack,
}

// === impl RouteMode ===

impl RouteMode {
    pub const ALL: [RouteMode; 4] = [RouteMode::Score, RouteMode::LeastLoaded, RouteMode::RoundRobin, RouteMode::Pack];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Score => "score",
            RouteMode::LeastLoaded => "least-loaded",
            RouteMode::RoundRobin => "round-robin",
            RouteMode::Pack => "pack",
        }
    }

    pub fn parse(s: &str) -> Option<RouteMode> {
        RouteMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// One API key of an app. Only the key's BLAKE3 digest is stored; the key itself is shown once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Short name for listing and revoking (`k-1a2b3c4d`).
    pub id: String,
    /// Hex BLAKE3 digest of the key.
    pub hash: String,
    /// Requests per second allowed (a bucket of one second's worth); `None`: unlimited.
    pub rps: Option<u32>,
    /// LLM tokens per minute allowed (prompt estimate plus max_tokens); `None`: unlimited.
    pub tokens_per_minute: Option<u32>,
}

/// A deploy's GPU choice and the planner's reason for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuChoice {
    /// Catalogue kind (`l40s`).
    pub kind: String,
    /// Weight format the plan assumed (`bf16`, `fp8`, `int8`, `int4`).
    pub quant: String,
    pub why: String,
}
