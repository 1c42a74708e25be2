//! What a run comes to: waits, latencies and time to first token overall and per region, cold
//! starts, GPU-hours, egress and cost, and a timeline of the day.

use crate::stats::Summary;
use serde::Serialize;

/// What callers of a region (or of the world) saw.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Requests that arrived after the warm-up and were answered.
    pub requests: u64,
    /// Time held at the edge before a machine took the request.
    pub wait_ms: Summary,
    /// Arrival to last byte: wait, the RTT to the machine, service.
    pub latency_ms: Summary,
    /// Arrival to the first output token: wait, RTT, prefill and one decode step (without a
    /// token model, the whole answer).
    pub ttft_ms: Summary,
    /// Requests turned away (hold queue full or held too long).
    pub turned_away: u64,
    /// Output tokens of the requests answered.
    pub tokens: u64,
}

/// Cold starts of machines, after the warm-up, and where they read the weights from.
#[derive(Clone, Debug, Serialize)]
pub struct ColdStarts {
    pub count: u64,
    pub from_cache: u64,
    pub from_peer: u64,
    pub from_origin: u64,
    /// Stopped to started: reading the weights, then loading the engine.
    pub ms: Summary,
}

/// Bytes that left a provider and were paid for.
#[derive(Clone, Debug, Serialize)]
pub struct Egress {
    /// Weights read from a store in another cloud.
    pub weights_bytes: f64,
    /// Answers sent to callers.
    pub answer_bytes: f64,
}

/// Money, USD.
#[derive(Clone, Debug, Serialize)]
pub struct Costs {
    pub gpu_usd: f64,
    pub egress_usd: f64,
    pub total_usd: f64,
    /// Total over the output tokens answered, per million; absent without tokens.
    pub usd_per_million_tokens: Option<f64>,
}

impl Costs {
    pub fn new(gpu_usd: f64, egress_usd: f64, tokens: u64) -> Costs {
        let total_usd = gpu_usd + egress_usd;
        Costs {
            gpu_usd,
            egress_usd,
            total_usd,
            usd_per_million_tokens: (tokens > 0).then(|| total_usd / (tokens as f64 / 1e6)),
        }
    }
}

/// One region: its callers' outcome and its machines' work and cost.
#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    pub name: String,
    /// Machines started throughout.
    pub machines: u32,
    /// Machines started and stopped by the scaler.
    pub scalable: u32,
    /// The GPU kinds of its machines (comma-separated).
    pub gpu: Option<String>,
    /// Service time given over the machines' request slots (time on × hard limit).
    pub utilisation: f64,
    /// Machine time on (starting or started), after the warm-up.
    pub gpu_hours: f64,
    pub cold_starts: ColdStarts,
    pub egress_bytes: Egress,
    pub cost: Costs,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One point of the timeline: the state at the end of a bucket of simulated time.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Arrivals over the bucket, per second, all regions.
    pub arrivals_per_s: f64,
    /// Machines starting or started.
    pub machines_on: u32,
    /// Requests held at the edges.
    pub held: u64,
}

/// What a run came to.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Simulated seconds reported (after the warm-up).
    pub measured_s: f64,
    #[serde(flatten)]
    pub overall: Outcome,
    pub gpu_hours: f64,
    pub utilisation: f64,
    pub cold_starts: ColdStarts,
    pub egress_bytes: Egress,
    pub cost: Costs,
    pub regions: Vec<RegionReport>,
    pub timeline: Vec<Sample>,
    /// Busy-hour demand `[placement]` could not place, and why.
    pub unmet: Vec<colo_core::Unmet>,
    /// Requests simulated, the warm-up's included.
    pub simulated_requests: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}
