//! Control's errors, classified where they happen; `api.rs` maps each to its HTTP status.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("app {0:?} not found")]
    NoSuchApp(String),
    /// The request is wrong; every problem found, each naming its field.
    #[error("{0}")]
    Invalid(Problems),
    #[error(transparent)]
    Store(#[from] colo_store::StoreError),
    #[error(transparent)]
    State(#[from] colo_state::StateError),
    /// An agent in this process refused.
    #[error(transparent)]
    Agent(#[from] colo_agent::AgentError),
    /// A remote host's agent could not be reached or refused.
    #[error("host {host} at {source}")]
    AgentCall {
        host: String,
        #[source]
        source: colo_agent::client::ClientError,
    },
    #[error("machine {machine} runs on host {host:?}, which is not live")]
    MachineHostGone { machine: String, host: String },
    #[error("host {host} is not live")]
    HostGone { host: String },
    #[error("host {host} has no free device")]
    HostFull { host: String },
    #[error("host {host} has no machine {machine}")]
    NoSuchMachine { host: String, machine: String },
    #[error("rollout of app {app:?} to revision {revision} stopped: {reason}; the previous version keeps serving")]
    Rollout { app: String, revision: String, reason: NotHealthy },
    #[error("no machine of app {app:?} can be placed for its demand: {reason}")]
    Unplaced { app: String, reason: String },
    /// A deploy failed and was undone: a new app is not recorded; a redeployed one keeps its
    /// previous version.
    #[error("{}: {cause}", match kept { Some(v) => format!("app {app:?} keeps version {v}, its previous deploy"), None => format!("app {app:?} was not deployed (nothing is recorded)") })]
    NotDeployed {
        app: String,
        kept: Option<u64>,
        cause: Box<ControlError>,
    },
}

/// One thing wrong with a request: the field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub reason: String,
}

/// Every problem a request has, in the order they were found; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

/// Why a new machine of a rollout did not become healthy.
#[derive(Debug, thiserror::Error)]
pub enum NotHealthy {
    #[error("new machine {machine} failed: {}", error.as_deref().unwrap_or("no reason recorded"))]
    Failed { machine: String, error: Option<String> },
    #[error("new machine {machine} was destroyed")]
    Destroyed { machine: String },
    #[error("new machine {machine} not healthy within {timeout:?}")]
    Timeout { machine: String, timeout: std::time::Duration },
    /// Its record could not be read.
    #[error("{0}")]
    State(#[from] colo_state::StateError),
}

// === impl ControlError ===

impl ControlError {
    /// A request with one problem.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ControlError::Invalid(Problems(vec![Problem {
            field,
            reason: reason.into(),
        }]))
    }
}

// === impl Problem, Problems ===

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl fmt::Display for Problems {
    /// `field: reason`, joined by `; `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
