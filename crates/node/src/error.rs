//! Why a process could not be assembled: a config with problems (every one of them, each
//! naming its field), or a part that failed to open, bind or start.

use std::fmt;

/// One thing wrong with a config: the field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The config field, as its struct names it (`edge.limits`, `lease_ms`).
    pub field: &'static str,
    pub reason: String,
}

/// Every problem a config has, in the order they were found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config has problems; nothing was started.
    #[error("invalid settings: {0}")]
    Invalid(Problems),
    /// A file, directory or socket operation failed; `what` says which.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] colo_state::StateError),
    #[error(transparent)]
    Store(#[from] colo_store::StoreError),
    #[error(transparent)]
    Agent(#[from] colo_agent::AgentError),
    #[error(transparent)]
    Control(#[from] colo_control::ControlError),
    #[error(transparent)]
    Serve(#[from] colo_edge::serve::ServeError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    EdgeTls(#[from] colo_edge::tls::TlsError),
}

// === impl Problems ===

impl Problems {
    /// Records that `field` is wrong, and why.
    pub(crate) fn add(&mut self, field: &'static str, reason: impl Into<String>) {
        self.0.push(Problem {
            field,
            reason: reason.into(),
        });
    }

    /// `Ok` when nothing was found wrong.
    pub(crate) fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", problem.field, problem.reason)?;
        }
        Ok(())
    }
}

// === impl NodeError ===

impl NodeError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}

impl From<Problems> for NodeError {
    fn from(problems: Problems) -> Self {
        NodeError::Invalid(problems)
    }
}
