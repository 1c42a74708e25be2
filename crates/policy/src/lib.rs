//! Pure decision code: which machine takes a request, when machines wake and stop, how often a
//! request may be sent again, which GPU a model should run on, where machines should go, and
//! which machines control creates, replaces and destroys. No clock, no sockets, no files, no
//! tokio: callers pass in the facts (and, where it matters, `now` and a seed) and carry out the
//! result.

#![forbid(unsafe_code)]

pub mod bucket;
pub mod hold;
pub mod metrics;
pub mod placement;
pub mod plan;
pub mod prefix;
pub mod reconcile;
pub mod retry;
pub mod route;
pub mod rtt;
pub mod scale;
pub mod traffic;

pub use bucket::{llm_token_cost, KeyLimits, RateLimited, TokenBucket};
pub use hold::{admit_hold, check_hold, HoldError, HoldLimits};
pub use metrics::{read_metrics, sample, MetricsError, Sample, Scraped};
pub use placement::{place, Demand, EdgeSpec, Fleet, Host, PlacedMachine, Placement, PlacementError, RegionDemand, Unmet};
pub use plan::{plan, recommend, Plan, PlanError, PlanOption, PlanRequest, Recommendation};
pub use prefix::{PrefixIndex, PrefixKey};
pub use reconcile::{live_hosts, lost_hosts, spread, Held, MachineRef, Room, Slot, Step, Want};
pub use retry::{idempotent, Attempts, GiveUp, Replay, ReplayHeaderError, RetryPolicy, SendFailure};
pub use route::{
    effective_load, group_by_region, permille, pick, starts_needed, AppView, Decision, LoadHeaderError, LoadReport, MachineLoad,
    MachineView, PickRequest, RegionId, RegionSpan, RejectReason, RouteMode, RouteParams, ScoreWeights, Steer,
};
pub use rtt::{RttEstimator, RttSource, UNKNOWN_RTT_MS};
pub use scale::{expected_wake_ms, IdleAction, MachineFacts, Phase, ScaleAction, ScaleConfig, ScaleEvent, Scaler};
pub use traffic::{AppTraffic, EdgeTraffic, Flow};
