//! The manifest of a pushed model: every file's size, a BLAKE3 digest per fixed-size chunk and
//! a summary of each safetensors header. Pulls verify every chunk against it.

use crate::safetensors::HeaderSummary;
use serde::{Deserialize, Serialize};

/// Chunk size used by `colo model push` unless told otherwise: large enough to keep request
/// overhead small, small enough that many chunks of one file travel in parallel.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest format {found} is not supported (this build reads {MANIFEST_FORMAT})")]
    Format { found: u32 },
    #[error("file {path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("chunk size {0} is out of range (64 KiB to 1 GiB)")]
    ChunkSize(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Model name in the store.
    pub name: String,
    /// Digest of the file list and chunk digests: two pushes of the same bytes share it.
    pub revision: String,
    /// Bytes per chunk (the last chunk of a file may be shorter).
    pub chunk_size: u64,
    pub files: Vec<FileEntry>,
    /// Milliseconds since the Unix epoch when the push finished.
    pub pushed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the model directory, with `/` separators.
    pub path: String,
    pub size: u64,
    /// Hex BLAKE3 digest of each chunk, in order.
    pub chunks: Vec<String>,
    /// Present for `.safetensors` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<HeaderSummary>,
    /// Present for `.gguf` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<crate::gguf::GgufSummary>,
}

/// How many chunks a file of `size` bytes has (an empty file has none).
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

/// Hex BLAKE3 digest of one chunk.
pub fn chunk_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

// === impl Manifest ===

impl Manifest {
    /// Builds a manifest, computing the revision from the files.
    pub fn new(name: &str, chunk_size: u64, mut files: Vec<FileEntry>, pushed_at_ms: u64) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut hasher = blake3::Hasher::new();
        hasher.update(&chunk_size.to_le_bytes());
        for file in &files {
            hasher.update(file.path.as_bytes());
            hasher.update(&[0]);
            hasher.update(&file.size.to_le_bytes());
            for chunk in &file.chunks {
                hasher.update(chunk.as_bytes());
            }
        }
        let revision = hasher.finalize().to_hex()[..16].to_string();
        Self {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            revision,
            chunk_size,
            files,
            pushed_at_ms,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A manifest is plain data: serialisation cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }

    /// Checks what a pull relies on: sane chunk size, safe relative paths, chunk lists that
    /// match the sizes.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        if !(64 * 1024..=1 << 30).contains(&self.chunk_size) {
            return Err(ManifestError::ChunkSize(self.chunk_size));
        }
        for file in &self.files {
            let bad = |reason: &str| ManifestError::File {
                path: file.path.clone(),
                reason: reason.to_string(),
            };
            let path_ok = !file.path.is_empty()
                && !file.path.starts_with('/')
                && !file.path.contains('\\')
                && file.path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
            if !path_ok {
                return Err(bad("path must be relative, without '.' or '..' parts"));
            }
            let expected = chunk_count(file.size, self.chunk_size);
            if file.chunks.len() as u64 != expected {
                return Err(bad(&format!(
                    "{} chunk digests for {} bytes; expected {expected}",
                    file.chunks.len(),
                    file.size
                )));
            }
            if file
                .chunks
                .iter()
                .any(|c| c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(bad("chunk digests must be 64 hex characters"));
            }
        }
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

// === impl FileEntry ===

impl FileEntry {
    /// Byte range `[start, end)` of chunk `idx`.
    pub fn chunk_range(&self, idx: u64, chunk_size: u64) -> (u64, u64) {
        let start = idx * chunk_size;
        (start, (start + chunk_size).min(self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64, chunk_size: u64) -> FileEntry {
        let n = chunk_count(size, chunk_size) as usize;
        FileEntry {
            path: path.into(),
            size,
            chunks: vec![chunk_digest(b"x"); n],
            safetensors: None,
            gguf: None,
        }
    }

    #[test]
    fn round_trip_and_revision() {
        let cs = DEFAULT_CHUNK_SIZE;
        let m = Manifest::new(
            "m",
            cs,
            vec![entry("b.json", 10, cs), entry("a/model.safetensors", cs * 2 + 1, cs)],
            1,
        );
        assert_eq!(m.files[0].path, "a/model.safetensors");
        assert_eq!(m.files[0].chunks.len(), 3);
        assert_eq!(m.files[0].chunk_range(2, cs), (2 * cs, 2 * cs + 1));
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        let later = Manifest::new("m", cs, m.files.clone(), 99);
        assert_eq!(later.revision, m.revision, "the revision depends on content, not time");
    }

    #[test]
    fn unsafe_paths_and_wrong_chunk_lists_are_refused() {
        let cs = DEFAULT_CHUNK_SIZE;
        for path in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
            let m = Manifest::new("m", cs, vec![entry(path, 1, cs)], 0);
            assert!(m.validate().is_err(), "{path:?} accepted");
        }
        let mut m = Manifest::new("m", cs, vec![entry("a", cs + 1, cs)], 0);
        m.files[0].chunks.pop();
        assert!(matches!(m.validate(), Err(ManifestError::File { .. })));
        assert!(Manifest::from_json(b"{}").is_err());
    }
}
