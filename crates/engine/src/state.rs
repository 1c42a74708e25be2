//! What the engine's HTTP handlers share: the loaded model (what it does) and the served
//! name and metrics. A leaf of the API modules, so the router, the embeddings handler and the
//! generation handler all depend on it and not on each other.

use crate::batch::Batcher;
use crate::chat::ChatTemplate;
use crate::generate::Generator;
use crate::metrics::Metrics;
use axum::http::HeaderValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// The state every handler gets; cheap to clone.
#[derive(Clone)]
pub struct EngineState {
    inner: Arc<Inner>,
}

/// What the loaded model does.
pub enum Task {
    Embed(Batcher),
    Generate(TextModel),
}

struct Inner {
    task: Task,
    served_name: String,
    metrics: Metrics,
}

// === impl EngineState ===

impl EngineState {
    pub fn new(task: Task, served_name: String, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                task,
                served_name,
                metrics,
            }),
        }
    }

    /// The name `/v1/models` reports and answers carry when the request names none.
    pub fn served_name(&self) -> &str {
        &self.inner.served_name
    }

    pub fn task(&self) -> &Task {
        &self.inner.task
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// A loaded generative model as the API sees it.
pub struct TextModel {
    pub generator: Generator,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// The model's context length in tokens.
    pub context: usize,
    pub vocab: usize,
}

// === impl TextModel ===

impl TextModel {
    /// `colo-load`: what the edge reads to weigh this machine.
    pub fn load_header(&self) -> HeaderValue {
        let s = &self.generator.stats;
        let value = format!(
            "running={};waiting={};kv_used_bytes={};kv_budget_bytes={}",
            s.running.load(Ordering::Relaxed),
            s.waiting.load(Ordering::Relaxed),
            s.kv_used_bytes.load(Ordering::Relaxed),
            self.generator.config.kv_budget_bytes
        );
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("unknown"))
    }
}
