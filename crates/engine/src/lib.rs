//! colo's built-in inference engine: one model, one process, an OpenAI-compatible HTTP API.
//! It knows nothing of the platform beyond its own flags; the agent starts one per machine.

pub mod api;
pub mod batch;
pub mod bert;
pub mod llama;
mod encoder;
mod error;
mod metrics;

pub use error::EngineError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `colo engine serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model_dir: PathBuf,
    pub addr: SocketAddr,
    /// Name reported by `/v1/models` and in responses when the request names none.
    pub served_name: String,
    /// How long the batcher waits for more requests once one has arrived.
    pub batch_window: Duration,
    /// Sequences per forward pass at most.
    pub max_batch: usize,
}

/// Keeps freed memory in the process instead of returning it to the kernel after every
/// forward pass: activations are large, short-lived blocks, and mapping them afresh each time
/// costs page faults and page clearing on every batch.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only tunes glibc's allocator thresholds; it is called before the
    // engine allocates its working set and has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
    }
}

/// Loads the model, then serves until SIGTERM or ctrl-c.
pub async fn serve(opts: ServeOptions) -> Result<(), EngineError> {
    keep_freed_memory();
    let started = std::time::Instant::now();
    let embedder = {
        let dir = opts.model_dir.clone();
        tokio::task::spawn_blocking(move || bert::Embedder::load(&dir))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??
    };
    tracing::info!(dir = %opts.model_dir.display(), secs = started.elapsed().as_secs_f64(), "model loaded");
    let metrics = metrics::Metrics::new();
    let batcher = batch::Batcher::spawn(embedder, batch::BatchConfig { window: opts.batch_window, max_batch: opts.max_batch }, metrics.clone());
    let app = api::router(api::EngineState::new(batcher, opts.served_name.clone(), metrics));
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| EngineError::Internal(format!("binding {}: {e}", opts.addr)))?;
    tracing::info!(addr = %opts.addr, "engine listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
