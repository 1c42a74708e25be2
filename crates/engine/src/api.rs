//! The engine's HTTP router: OpenAI-compatible embeddings or text generation (whichever the
//! model does), the model list, health and metrics. Handlers live in `api_embed` and
//! `api_gen`; what they share is in `state`.

use crate::error::error_body;
use crate::metrics::counted;
use crate::state::{EngineState, Task};
use crate::{api_embed, api_gen, EngineError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn router(state: EngineState) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(|s, b| generate(s, b, false)))
        .route("/v1/chat/completions", post(|s, b| generate(s, b, true)))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_body(StatusCode::NOT_FOUND, "no such endpoint on this engine", None, "not_found") })
        .with_state(state)
}

async fn models(State(state): State<EngineState>) -> Response {
    let name = state.served_name();
    axum::Json(json!({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "colo"}]})).into_response()
}

async fn metrics(State(state): State<EngineState>) -> Response {
    let metrics = state.metrics();
    if let Task::Generate(model) = state.task() {
        let stats = &model.generator.stats;
        metrics.gen_waiting.set(stats.waiting.load(Ordering::Relaxed) as i64);
        metrics.gen_running.set(stats.running.load(Ordering::Relaxed) as i64);
        metrics.kv_used_bytes.set(stats.kv_used_bytes.load(Ordering::Relaxed) as i64);
        metrics.kv_budget_bytes.set(model.generator.config.kv_budget_bytes as i64);
        metrics.generated_tokens.set(stats.generated_tokens.load(Ordering::Relaxed) as i64);
    }
    let mut page = metrics.encode();
    if matches!(state.task(), Task::Generate(_)) {
        // Before OpenMetrics' closing `# EOF`, which nothing may follow.
        let end = page.rfind("# EOF").unwrap_or(page.len());
        page.insert_str(end, &vllm_names(metrics, state.served_name()));
    }
    ([("content-type", "text/plain; version=0.0.4")], page).into_response()
}

/// The generator's queue under vLLM's metric names, so that routers written for vLLM (llm-d,
/// the Gateway API inference extension) can read colo's engine too.
fn vllm_names(metrics: &crate::metrics::Metrics, served_name: &str) -> String {
    let label = served_name.replace('\\', "\\\\").replace('"', "\\\"");
    let budget = metrics.kv_budget_bytes.get();
    let kv = if budget > 0 {
        metrics.kv_used_bytes.get() as f64 / budget as f64
    } else {
        0.0
    };
    format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{label}\"}} {}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{label}\"}} {}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{label}\"}} {kv}\n",
        metrics.gen_running.get(),
        metrics.gen_waiting.get(),
    )
}

async fn embeddings(State(state): State<EngineState>, body: Bytes) -> Response {
    counted(state.metrics(), api_embed::handle(&state, &body)).await
}

async fn generate(State(state): State<EngineState>, body: Bytes, chat: bool) -> Response {
    let response = async {
        match state.task() {
            Task::Generate(model) => match api_gen::handle(&state, model, &body, chat).await {
                Ok(response) => response,
                Err(err) => {
                    let mut response = err.into_response();
                    response.headers_mut().insert("colo-load", model.load_header());
                    response
                }
            },
            Task::Embed(_) => EngineError::bad("model", "this model serves embeddings; use /v1/embeddings").into_response(),
        }
    };
    counted(state.metrics(), response).await
}
