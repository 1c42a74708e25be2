//! Process assembly: what `colo up` and the daemons (`colo control`, `colo agent`, `colo edge`)
//! wire together from the other crates. Each entry point takes a plain config, checks it whole
//! (`validate()` names every wrong field at once), opens state and storage, starts its parts,
//! writes the run file where one belongs, and returns a handle with the addresses it serves on
//! and a way to drain and shut down. Nothing here decides policy or parses flags: the binary
//! parses flags into these configs and prints what the handles report.

mod agent;
mod api;
mod config;
mod control;
mod edge;
mod error;
mod machines;
mod nats;
mod peers;
mod process;
mod run_file;
mod s3;
pub mod tls;
mod up;

pub use agent::{agent, RunningAgent};
pub use colo_edge::tls::CertFiles as EdgeCertFiles;
pub use colo_edge::Limits as EdgeLimits;
pub use config::{AgentDaemonConfig, ControlConfig, EdgeDaemonConfig, EdgeSettings, EngineProgram, UpConfig};
pub use control::{control, RunningControl};
pub use edge::{edge, RunningEdge};
pub use error::{NodeError, Problem, Problems};
pub use machines::{AgentMachines, RemoteMachines};
pub use nats::NatsBus;
pub use process::{hostname, shutdown_signal};
pub use run_file::{RunInfo, RUN_FILE};
pub use tls::TlsFiles;
pub use up::{up, Drain, Running};
