//! colo sim: colo's own decision code (colo-policy's pick, hold and scaler, as the edge runs
//! them) against a simulated world in virtual time. A scenario (`scenario.rs`) names regions
//! with their callers' arrivals (flat or a daily curve) and machines (always on, or scaled to
//! zero), a service time distribution or the planner's roofline for a model on a GPU kind
//! (`roofline.rs`), where the weights are stored, and the edge's routing limits; the event loop
//! (`engine.rs`) runs it to a `Report` (`report.rs`) of waits, latencies, time to first token,
//! cold starts, GPU-hours, egress and cost, overall and per region, with streaming percentiles
//! (`stats.rs`), deterministic for a seed (`rng.rs`). `queueing.rs` holds the closed forms the
//! tests check it against; `plot.rs` draws a report as SVG.

#![forbid(unsafe_code)]

mod engine;
pub mod plot;
pub mod queueing;
mod report;
mod rng;
mod roofline;
mod scenario;
mod stats;

pub use engine::run;
pub use report::{ColdStarts, Costs, Egress, Outcome, RegionReport, Report, Sample};
pub use roofline::Roofline;
pub use scenario::{
    Arrivals, Curve, Distribution, ModelSpec, RegionSpec, Routing, RttSpec, Scaling, Scenario, ScenarioError, Service, Storage, Tokens,
    MODELS,
};
pub use stats::Summary;
