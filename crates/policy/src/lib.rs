//! Pure decision code: which machine takes a request, which GPU a model should run on, and
//! where machines should go. No clock, no sockets, no files, no tokio: callers pass in the
//! facts (and, where it matters, `now` and a seed) and carry out the result.

#![forbid(unsafe_code)]

pub mod affinity;
pub mod autostop;
pub mod bucket;
pub mod hold;
pub mod placement;
pub mod plan;
pub mod route;
pub mod scale;

pub use affinity::{AffinityTable, PrefixKey};
pub use autostop::{idle_to_stop, Idle};
pub use bucket::TokenBucket;
pub use hold::{admit_hold, check_hold, HoldError, HoldLimits};
pub use placement::{place, Demand, EdgeSpec, Fleet, Host, PlacedMachine, Placement, PlacementError, RegionDemand, Unmet};
pub use plan::{plan, recommend, Plan, PlanError, PlanOption, PlanRequest, Recommendation};
pub use route::{
    choose_wake, effective_load, group_by_region, pick, starts_needed, AppView, Decision, LoadHeaderError, LoadReport, MachineLoad,
    MachineView, PickRequest, RegionId, RegionSpan, RejectReason, RouteParams, Steer, StoppedMachine,
};
pub use scale::{MachineFacts, Phase, ScaleAction, ScaleConfig, ScaleEvent, Scaler};
