//! Model facts read from bytes: safetensors headers and the manifest that the store keeps.
//!
//! Nothing here opens files or sockets; callers hand in the bytes they read.

pub mod manifest;
pub mod safetensors;
pub mod synth;

pub use manifest::{chunk_count, FileEntry, Manifest, ManifestError, DEFAULT_CHUNK_SIZE};
pub use safetensors::{Dtype, HeaderSummary, SafetensorsError, MAX_HEADER_LEN};
