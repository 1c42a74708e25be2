//! colo sim: colo's own decision code (colo-policy's pick and hold, as the edge runs them)
//! against a simulated world in virtual time. A scenario (`scenario.rs`) names regions with
//! their callers' arrival rates and machines, a service time distribution and the edge's
//! routing limits; the event loop (`engine.rs`) runs it to a `Report` of waits and latencies
//! overall and per region, with streaming percentiles (`stats.rs`), deterministic for a seed
//! (`rng.rs`). `queueing.rs` holds the closed forms the tests check it against.

#![forbid(unsafe_code)]

mod engine;
pub mod queueing;
mod rng;
mod scenario;
mod stats;

pub use engine::{run, Outcome, RegionReport, Report};
pub use scenario::{Distribution, RegionSpec, Routing, Scenario, ScenarioError, Service};
pub use stats::Summary;
