//! Agent errors, mapped to HTTP statuses in `api`.

use colo_core::MachineState;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no machine {0:?} on this host")]
    NoSuchMachine(String),
    #[error("machine {0:?} is destroyed")]
    Destroyed(String),
    #[error("{kind} engine program {program:?} is not on host {host}: install it there, or name it with --engine-bin PATH")]
    EngineMissing {
        kind: colo_core::EngineKind,
        program: String,
        host: String,
    },
    #[error("host {host} has no free {} ({total} in all, each held by a machine that is started, starting or suspended; stopped machines hold none)", match (*wanted, kind.as_str()) { (1, "any") => "device".to_string(), (1, kind) => format!("{kind} device"), (n, "any") => format!("set of {n} GPUs of one kind"), (n, kind) => format!("set of {n} {kind} GPUs") })]
    NoFreeDevice {
        host: String,
        kind: String,
        wanted: usize,
        total: usize,
    },
    #[error("machine {id} did not reach {wanted} within {secs}s (it is {current})")]
    WaitTimeout {
        id: String,
        wanted: MachineState,
        current: MachineState,
        secs: f64,
    },
    #[error("machine {id} went {reached} instead of {wanted}: {}", error.as_deref().unwrap_or("no error recorded"))]
    WaitFailed {
        id: String,
        wanted: MachineState,
        reached: MachineState,
        error: Option<String>,
    },
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("machine {id} has no metadata key {key:?}")]
    NoMetadataKey { id: String, key: String },
    #[error(transparent)]
    State(#[from] colo_state::StateError),
    #[error(transparent)]
    Store(#[from] colo_store::StoreError),
}
