//! Model facts read from bytes: safetensors and GGUF headers, the manifest that the store keeps, and
//! config.json; and the planner's estimates built on them: quantized sizes, memory and speed.
//!
//! Nothing here opens files or sockets; callers hand in the bytes they read.

#![forbid(unsafe_code)]

pub mod config;
pub mod estimate;
pub mod gguf;
pub mod manifest;
pub mod quant;
pub mod safetensors;
pub mod speed;
pub mod synth;

pub use config::{Arch, ConfigError, FactsSource, FieldProblem, ModelFacts};
pub use estimate::{Memory, Settings};
pub use gguf::{GgmlType, Gguf, GgufError, GgufSummary, MetaValue};
pub use manifest::{chunk_count, FileEntry, Manifest, ManifestError, DEFAULT_CHUNK_SIZE};
pub use quant::{Compute, KvDtype, Quant};
pub use safetensors::{Dtype, HeaderSummary, SafetensorsError, MAX_HEADER_LEN};
pub use speed::{Bound, Decode};
