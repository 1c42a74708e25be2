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
    ([("content-type", "text/plain; version=0.0.4")], metrics.encode()).into_response()
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
