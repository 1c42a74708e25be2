//! Errors of the store: each names the model, file or object it concerns.

use colo_model::{ManifestError, SafetensorsError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object {path}: {source}")]
    Object { path: String, source: object_store::Error },
    #[error("model {name:?} is not in the store (no manifest at {path})")]
    NotFound { name: String, path: String },
    #[error("revision {prefix:?} of model {name:?} could be any of {}; give more of it", matches.join(", "))]
    AmbiguousRevision {
        name: String,
        prefix: String,
        matches: Vec<String>,
    },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors { path: String, source: SafetensorsError },
    #[error("{path}: not a valid GGUF file: {source}")]
    Gguf { path: String, source: colo_model::GgufError },
    #[error("model {model}: {source}")]
    Facts { model: String, source: colo_model::ConfigError },
    #[error("model directory {dir}: {reason}")]
    BadDir { dir: String, reason: String },
    #[error("manifest of model {name:?}: {source}")]
    Manifest { name: String, source: ManifestError },
    #[error("{file}: chunk {chunk} (bytes {start}..{end}) has digest {actual}, the manifest says {expected}; refusing it")]
    Digest {
        file: String,
        chunk: u64,
        start: u64,
        end: u64,
        expected: String,
        actual: String,
    },
    #[error("{file}: the range at byte {start} came back with {got} bytes, expected {expected}")]
    ShortRead { file: String, start: u64, got: u64, expected: u64 },
    #[error("{path}: no byte from the store for {secs} s")]
    Stalled { path: String, secs: f64 },
    #[error("host cache cannot take model {model} ({}): it holds at most {}", crate::fmt_bytes(*bytes), crate::fmt_bytes(*capacity))]
    CacheTooSmall { model: String, bytes: u64, capacity: u64 },
    #[error(
        "host cache is full of models in use: model {model} needs {} more, the cache holds {} of {} and what is in use cannot be evicted ({in_use}); stop machines that use those models or raise the cache capacity",
        crate::fmt_bytes(*needed), crate::fmt_bytes(*used), crate::fmt_bytes(*capacity)
    )]
    CacheFull {
        model: String,
        needed: u64,
        capacity: u64,
        used: u64,
        in_use: String,
    },
    #[error("model {name}{} is not in the host cache", revision.as_ref().map(|r| format!("@{r}")).unwrap_or_default())]
    NotCached { name: String, revision: Option<String> },
    #[error("model {name}@{revision} is in use ({pins} machines{}); stop them first", if *pulling { ", and a pull is running" } else { "" })]
    InUse {
        name: String,
        revision: String,
        pins: usize,
        pulling: bool,
    },
    /// A failure of a pull that several callers share.
    #[error("{0}")]
    Shared(std::sync::Arc<StoreError>),
    #[error("internal: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn object(path: impl std::fmt::Display, source: object_store::Error) -> Self {
        StoreError::Object {
            path: path.to_string(),
            source,
        }
    }
}
