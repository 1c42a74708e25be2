//! `/v1/embeddings`: OpenAI-compatible embeddings, as floats or base64, with the request's
//! validation (every way a body can be wrong named in its error).

use crate::state::{EngineState, Task};
use crate::textgen::{json_object, kind};
use crate::EngineError;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

/// Inputs per request at most, as OpenAI's embeddings API allows.
pub const MAX_INPUTS: usize = 2048;

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
    /// `"truncate": true`: inputs past the model's limit are cut to it instead of refused.
    truncate: bool,
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
    let truncate = match fields.get("truncate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(EngineError::bad(
                "truncate",
                format!("'truncate' must be a boolean, got {}", kind(other)),
            ))
        }
    };
    Ok(EmbeddingsRequest {
        model,
        inputs,
        encoding,
        truncate,
    })
}

/// Answers one embeddings request, or says what was wrong with it.
pub async fn handle(state: &EngineState, body: &[u8]) -> Response {
    match embed(state, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn embed(state: &EngineState, body: &[u8]) -> Result<Response, EngineError> {
    let Task::Embed(batcher) = state.task() else {
        return Err(EngineError::bad(
            "model",
            "this model generates text; use /v1/completions or /v1/chat/completions",
        ));
    };
    let active = batcher.begin();
    let embedder = batcher.embedder();
    let request = parse_request(body, embedder.dim)?;
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(request.inputs.len());
    for (i, text) in request.inputs.iter().enumerate() {
        let (tokens, cut) = embedder.tokenize_checked(text)?;
        if cut && !request.truncate {
            let at = if request.inputs.len() == 1 {
                "'input'".to_string()
            } else {
                format!("'input[{i}]'")
            };
            return Err(EngineError::bad(
                "input",
                format!(
                    "{at} is longer than the {} tokens this model takes; shorten it, or send \"truncate\": true to embed its first {0} tokens",
                    embedder.max_tokens
                ),
            ));
        }
        ids.push(tokens);
    }
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    let n_inputs = ids.len();
    let vectors = batcher.embed(ids, active).await?;
    state.metrics().inputs.inc_by(n_inputs as u64);
    state.metrics().prompt_tokens.inc_by(prompt_tokens as u64);

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
    let model = request.model.unwrap_or_else(|| state.served_name().to_string());
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
    use axum::http::StatusCode;

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
