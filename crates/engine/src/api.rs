//! The engine's HTTP API: OpenAI-compatible embeddings or text generation (whichever the
//! model does), the model list, health and metrics.

use crate::api_gen::{self, TextModel};
use crate::batch::Batcher;
use crate::error::error_body;
use crate::metrics::{Metrics, StatusLabel};
use crate::textgen::{json_object, kind};
use crate::EngineError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// Inputs per request at most, as OpenAI's embeddings API allows.
pub const MAX_INPUTS: usize = 2048;

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

    pub fn served_name(&self) -> &str {
        &self.inner.served_name
    }
}

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
    let name = &state.inner.served_name;
    axum::Json(json!({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "colo"}]})).into_response()
}

async fn metrics(State(state): State<EngineState>) -> Response {
    let metrics = &state.inner.metrics;
    if let Task::Generate(model) = &state.inner.task {
        let stats = &model.generator.stats;
        metrics
            .gen_waiting
            .set(stats.waiting.load(std::sync::atomic::Ordering::Relaxed) as i64);
        metrics
            .gen_running
            .set(stats.running.load(std::sync::atomic::Ordering::Relaxed) as i64);
        metrics
            .kv_used_bytes
            .set(stats.kv_used_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64);
        metrics.kv_budget_bytes.set(model.generator.config.kv_budget_bytes as i64);
        metrics
            .generated_tokens
            .set(stats.generated_tokens.load(std::sync::atomic::Ordering::Relaxed) as i64);
    }
    ([("content-type", "text/plain; version=0.0.4")], metrics.encode()).into_response()
}

async fn generate(State(state): State<EngineState>, body: Bytes, chat: bool) -> Response {
    let response = async {
        match &state.inner.task {
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
    counted(&state.inner.metrics, response).await
}

/// Counts a request as in flight while `response` is produced, then by its status.
async fn counted(metrics: &Metrics, response: impl std::future::Future<Output = Response>) -> Response {
    metrics.in_flight.inc();
    let response = response.await;
    metrics.in_flight.dec();
    metrics
        .requests
        .get_or_create(&StatusLabel {
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[derive(Debug, PartialEq)]
enum Encoding {
    Float,
    Base64,
}

/// A validated embeddings request.
#[derive(Debug)]
struct EmbeddingsRequest {
    model: Option<String>,
    inputs: Vec<String>,
    encoding: Encoding,
}

fn parse_request(body: &[u8], dim: usize) -> Result<EmbeddingsRequest, EngineError> {
    let fields = json_object(body)?;
    let model = match fields.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(EngineError::bad("model", format!("'model' must be a string, got {}", kind(other)))),
    };
    let inputs = match fields.get("input") {
        None | Some(Value::Null) => return Err(EngineError::bad("input", "'input' is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(EngineError::bad("input", "'input' is an empty list; send at least one string"));
            }
            if items.len() > MAX_INPUTS {
                return Err(EngineError::bad(
                    "input",
                    format!("'input' has {} items; the limit is {MAX_INPUTS}", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(EngineError::bad(
                        "input",
                        format!("'input[{i}]' is token ids; this engine takes text, send strings"),
                    )),
                    other => Err(EngineError::bad(
                        "input",
                        format!("'input[{i}]' must be a string, got {}", kind(other)),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(EngineError::bad(
                "input",
                format!("'input' must be a string or a list of strings, got {}", kind(other)),
            ))
        }
    };
    if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
        let at = if inputs.len() == 1 {
            "'input'".to_string()
        } else {
            format!("'input[{i}]'")
        };
        return Err(EngineError::bad("input", format!("{at} is an empty string")));
    }
    let encoding = match fields.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(s)) if s == "float" => Encoding::Float,
        Some(Value::String(s)) if s == "base64" => Encoding::Base64,
        Some(other) => {
            return Err(EngineError::bad(
                "encoding_format",
                format!("'encoding_format' must be \"float\" or \"base64\", got {other}"),
            ))
        }
    };
    match fields.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(dim as u64) => {}
        Some(other) => {
            return Err(EngineError::bad(
                "dimensions",
                format!("this model's embeddings have {dim} dimensions; 'dimensions' was {other}"),
            ))
        }
    }
    Ok(EmbeddingsRequest { model, inputs, encoding })
}

async fn embeddings(State(state): State<EngineState>, body: Bytes) -> Response {
    counted(&state.inner.metrics, async {
        match embed(&state, &body).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    })
    .await
}

async fn embed(state: &EngineState, body: &[u8]) -> Result<Response, EngineError> {
    let Task::Embed(batcher) = &state.inner.task else {
        return Err(EngineError::bad(
            "model",
            "this model generates text; use /v1/completions or /v1/chat/completions",
        ));
    };
    let active = batcher.begin();
    let embedder = batcher.embedder();
    let request = parse_request(body, embedder.dim)?;
    let ids: Vec<Vec<u32>> = request
        .inputs
        .iter()
        .map(|text| embedder.tokenize(text))
        .collect::<Result<_, _>>()?;
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    let n_inputs = ids.len();
    let vectors = batcher.embed(ids, active).await?;
    state.inner.metrics.inputs.inc_by(n_inputs as u64);
    state.inner.metrics.prompt_tokens.inc_by(prompt_tokens as u64);

    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match request.encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let model = request.model.unwrap_or_else(|| state.inner.served_name.clone());
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(([("content-type", "application/json")], body.to_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_by_table() {
        let ok: &[&str] = &[
            r#"{"input":"hi"}"#,
            r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#,
            r#"{"input":"hi","dimensions":384,"user":"u"}"#,
        ];
        for body in ok {
            assert!(parse_request(body.as_bytes(), 384).is_ok(), "{body}");
        }
        let bad: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{}"#, "'input' is required"),
            (r#"{"input":""}"#, "empty string"),
            (r#"{"input":[]}"#, "empty list"),
            (r#"{"input":["a",""]}"#, "'input[1]' is an empty string"),
            (r#"{"input":5}"#, "got a number"),
            (r#"{"input":[[1,2]]}"#, "token ids"),
            (r#"{"input":["a",{}]}"#, "'input[1]' must be a string"),
            (r#"{"input":"a","model":3}"#, "'model' must be a string"),
            (r#"{"input":"a","encoding_format":"hex"}"#, "encoding_format"),
            (r#"{"input":"a","dimensions":12}"#, "384 dimensions"),
        ];
        for (body, needle) in bad {
            let err = parse_request(body.as_bytes(), 384).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
        let many = format!(r#"{{"input":[{}]}}"#, vec!["\"a\""; MAX_INPUTS + 1].join(","));
        assert!(parse_request(many.as_bytes(), 384)
            .unwrap_err()
            .to_string()
            .contains("limit is 2048"));
    }
}
