//! Shared vocabulary of colo: names, machine lifecycle, apps, hosts and devices, the GPU
//! catalogue, regions and money. No I/O lives here.

#![forbid(unsafe_code)]

pub mod app;
mod csv;
pub mod demand;
pub mod egress;
pub mod engine;
pub mod gpu;
pub mod host;
pub mod machine;
pub mod money;
pub mod name;
pub mod openai;

/// Whether two secrets are equal, compared in time that does not depend on where they differ
/// (tokens, keys, the machine key).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a connection to a machine behind a forwarder opens with, followed by the machine key
/// and CRLF (colo-agent's forwarder checks it; colo-edge's upstream client sends it).
pub const MACHINE_KEY_PREFACE: &str = "COLO-KEY ";
pub mod region;

pub use app::{ApiKey, App, GpuChoice, IdleAction, RouteMode, RouteWeights, ROUTE_WEIGHT_MAX};
pub use csv::CsvError;
pub use demand::{Demand, PlacedSlot, PlacementRecord, RegionDemand, Unmet};
pub use egress::{EgressPrice, EgressPrices};
pub use engine::{gpus_problem, EngineKind, EngineSpec, MetricNames, Readiness};
pub use gpu::{Catalogue, CatalogueError, GpuKind, GpuSpec, Interconnect, Link, PriceBook, Prices};
pub use host::HostRecord;
pub use machine::{
    check_metadata, ColdStart, Device, HydrationReport, Machine, MachineState, StartPhase, StartProgress, METADATA_MAX_KEYS,
};
pub use money::{usd_figure, MoneyError, Usd};
pub use name::{AppName, NameError};
pub use region::{Region, Regions};

/// Milliseconds since the Unix epoch now: the wall clock records and leases are stamped with.
/// Policy code never calls it; it takes time as an argument.
// The one clock read in colo-core, allowed here (and in tests/tidy_purity.rs) because every
// daemon stamps records the same way; colo-policy never calls it, which that test checks.
#[allow(clippy::disallowed_methods)]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
