//! colo's built-in inference engine: one model, one process, an OpenAI-compatible HTTP API.
//! It knows nothing of the platform beyond its own flags; the agent starts one per machine.

pub mod api;
mod api_embed;
mod api_gen;
pub mod batch;
pub mod bert;
pub mod blas;
mod chat;
pub mod cpu;
mod cpu_ops;
pub mod device;
mod encoder;
mod error;
pub mod generate;
pub mod landing;
pub mod llama;
mod metrics;
pub mod opbench;
pub mod panels;
mod state;
pub mod textgen;
mod workers;

pub use error::EngineError;

use axum::serve::ListenerExt;
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
    /// KV cache bytes that running generation sequences may hold together.
    pub kv_budget_bytes: usize,
    /// Generation requests that may wait for KV room before new ones get 503.
    pub max_waiting: usize,
    /// Weight files still being pulled, followed through the agent's feed (`--landing`).
    pub landing: Option<std::sync::Arc<landing::Landing>>,
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
    // What benchmarks record beside their numbers: the CPU and the kernel paths taken on it.
    tracing::info!(report = %cpu::report().line(), "cpu");
    let started = std::time::Instant::now();
    let metrics = metrics::Metrics::new();
    let task = {
        let (opts, metrics) = (opts.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || load_task(&opts, metrics))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??
    };
    tracing::info!(dir = %opts.model_dir.display(), secs = started.elapsed().as_secs_f64(), "model loaded");
    let app = api::router(state::EngineState::new(task, opts.served_name.clone(), metrics));
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| EngineError::Internal(format!("binding {}: {e}", opts.addr)))?;
    tracing::info!(addr = %opts.addr, "engine listening");
    axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
}

/// Loads the model and starts the thread that runs it: embeddings for BERT models, text
/// generation for Llama-family models; `config.json`'s `model_type` decides.
fn load_task(opts: &ServeOptions, metrics: metrics::Metrics) -> Result<state::Task, EngineError> {
    let config_path = opts.model_dir.join("config.json");
    let bytes = std::fs::read(&config_path).map_err(|e| EngineError::Load {
        file: config_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| EngineError::Load {
        file: config_path.display().to_string(),
        reason: e.to_string(),
    })?;
    if config.get("model_type").and_then(|v| v.as_str()) == Some("bert") {
        let embedder = bert::Embedder::load_from(&opts.model_dir, opts.landing.as_ref())?;
        let config = batch::BatchConfig {
            window: opts.batch_window,
            max_batch: opts.max_batch,
        };
        return Ok(state::Task::Embed(batch::Batcher::spawn(embedder, config, metrics)?));
    }
    let model = llama::Llama::load_from(&opts.model_dir, opts.landing.as_ref())?;
    let tokenizer_path = opts.model_dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| EngineError::Load {
        file: tokenizer_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let template = chat::ChatTemplate::load(&opts.model_dir)?;
    let (context, vocab) = (model.config.max_position, model.config.vocab);
    let config = generate::GenConfig {
        kv_budget_bytes: opts.kv_budget_bytes,
        max_waiting: opts.max_waiting,
    };
    let generator = generate::Generator::spawn(std::sync::Arc::new(model), config)?;
    Ok(state::Task::Generate(state::TextModel {
        generator,
        tokenizer: std::sync::Arc::new(tokenizer),
        template,
        context,
        vocab,
    }))
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

/// Sends small writes (one SSE event, one token) at once instead of waiting to coalesce them
/// (Nagle), which with delayed ACKs stalls a stream by tens of milliseconds.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}
