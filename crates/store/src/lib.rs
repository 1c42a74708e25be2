//! Model storage: the object store that holds pushed models, pushing a model directory into
//! it, hydrating the host cache from peers and the store with verified, resumable, parallel
//! ranged reads, the cache's capacity and eviction, and serving the cache to peers and,
//! read-only, over S3.

mod cache;
mod error;
mod hydrate;
mod peer;
mod push;
mod s3;
mod store;

pub use cache::{hydrate, CacheEntry, HostCache, PinGuard, Pull};
pub use error::StoreError;
pub use hydrate::HydrateOptions;
pub use peer::{peer_router, serve_peers, PeerChunks, PeerFile, PeerFileChunks, PeerModel, PEER_PREFIX};
pub use push::{gguf_header, push_dir, PushOptions, PushReport};
pub use s3::{serve_s3, S3Config};
pub use store::Store;

/// Called with a number of bytes each time a push or pull makes progress.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// A progress callback that ignores progress.
pub fn no_progress() -> Progress {
    std::sync::Arc::new(|_| {})
}

/// Bytes for people: `1.5 GB` (powers of 1000).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
