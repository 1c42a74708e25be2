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
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors { path: String, source: SafetensorsError },
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
    #[error("{file}: chunk {chunk} came back with {got} bytes, expected {expected}")]
    ShortRead { file: String, chunk: u64, got: u64, expected: u64 },
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
