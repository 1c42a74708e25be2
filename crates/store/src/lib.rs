//! Model storage: the object store that holds pushed models, pushing a model directory into
//! it, and hydrating the host cache from it with verified, resumable, parallel ranged reads.

mod cache;
mod error;
mod hydrate;
mod push;
mod store;

pub use cache::HostCache;
pub use error::StoreError;
pub use hydrate::{hydrate, HydrateOptions};
pub use push::{push_dir, PushOptions, PushReport};
pub use store::Store;

/// Called with a number of bytes each time a push or pull makes progress.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// A progress callback that ignores progress.
pub fn no_progress() -> Progress {
    std::sync::Arc::new(|_| {})
}
