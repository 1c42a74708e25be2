//! Pure decision code: which machine takes a request, which GPU a model should run on, and
//! where machines should go. No clock, no sockets, no files, no tokio: callers pass in the
//! facts (and, where it matters, `now` and a seed) and carry out the result.

pub mod pick;
pub mod placement;
pub mod plan;

pub use pick::{pick_machine, Candidate};
pub use placement::{place, Demand, Fleet, Host, PlacedMachine, Placement, PlacementError, RegionDemand, Unmet};
pub use plan::{plan, recommend, Plan, PlanError, PlanOption, PlanRequest, Recommendation};
