//! Shared vocabulary of colo: names, machine lifecycle, apps and devices. No I/O lives here.

pub mod app;
pub mod machine;
pub mod name;

pub use app::App;
pub use machine::{Device, HydrationReport, Machine, MachineState};
pub use name::{AppName, NameError};
