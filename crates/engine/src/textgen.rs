//! Request parsing and the response shapes of `/v1/completions` and `/v1/chat/completions`.

use crate::chat::Message;
use crate::EngineError;
use colo_core::openai::Endpoint;
use serde_json::{Map, Value};

/// Stop strings per request at most, as OpenAI allows.
pub const MAX_STOPS: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<Message>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub return_token_ids: bool,
}

/// How a JSON value is described in error messages: the same words as the edge's checks.
pub(crate) use colo_core::openai::kind;

fn present<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| !v.is_null())
}

fn boolean(fields: &Map<String, Value>, name: &str) -> Result<bool, EngineError> {
    match present(fields, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(EngineError::bad(name, format!("'{name}' must be a boolean, got {}", kind(other)))),
    }
}

fn number(fields: &Map<String, Value>, name: &str, min: f64, max: f64, default: f64) -> Result<f32, EngineError> {
    match present(fields, name) {
        None => Ok(default as f32),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if !(min..=max).contains(&v) {
                return Err(EngineError::bad(
                    name,
                    format!("'{name}' is {v}; it must be between {min} and {max}"),
                ));
            }
            Ok(v as f32)
        }
        Some(other) => Err(EngineError::bad(name, format!("'{name}' must be a number, got {}", kind(other)))),
    }
}

fn token_ids(value: &Value, name: &str) -> Result<Vec<u32>, EngineError> {
    let items = value
        .as_array()
        .ok_or_else(|| EngineError::bad(name, format!("'{name}' must be a list of token ids")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as u32)
                .ok_or_else(|| EngineError::bad(name, format!("'{name}[{i}]' must be a non-negative token id, got {v}")))
        })
        .collect()
}

fn messages(value: &Value) -> Result<Vec<Message>, EngineError> {
    let items = value
        .as_array()
        .ok_or_else(|| EngineError::bad("messages", format!("'messages' must be a list, got {}", kind(value))))?;
    if items.is_empty() {
        return Err(EngineError::bad("messages", "'messages' is empty; send at least one message"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| EngineError::bad("messages", format!("'messages[{i}].role' must be a string")))?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(EngineError::bad(
                    "messages",
                    format!("'messages[{i}].role' is {role:?}; use system, developer, user, assistant or tool"),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Content parts: the text parts, joined.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(text)) => Ok(text.to_string()),
                            _ => Err(EngineError::bad(
                                "messages",
                                format!("'messages[{i}].content' parts must be {{\"type\":\"text\",\"text\":...}}"),
                            )),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                Some(Value::Null) | None if role == "assistant" => String::new(),
                _ => {
                    return Err(EngineError::bad(
                        "messages",
                        format!("'messages[{i}].content' must be a string or a list of text parts"),
                    ))
                }
            };
            Ok(Message {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

/// A request body as a JSON object, or the 400 that says why it is not one.
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, EngineError> {
    let invalid = |message: String| EngineError::BadRequest {
        message,
        param: None,
        code: "invalid_json",
    };
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(invalid("request body must be a JSON object".into())),
        Err(e) => Err(invalid(format!("request body is not valid JSON: {e}"))),
    }
}

/// Parses a completions (`chat` false) or chat completions request body.
pub fn parse(body: &[u8], chat: bool) -> Result<GenParams, EngineError> {
    let fields = json_object(body)?;
    // What this engine cannot do is refused, never ignored.
    let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
    colo_core::openai::unsupported(endpoint, &fields, colo_core::EngineKind::Colo).map_err(|bad| EngineError::BadRequest {
        message: bad.message,
        param: bad.param,
        code: bad.code,
    })?;
    let model = match present(&fields, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(EngineError::bad("model", format!("'model' must be a string, got {}", kind(other)))),
    };
    let prompt = if chat {
        Prompt::Chat(messages(
            present(&fields, "messages").ok_or_else(|| EngineError::bad("messages", "'messages' is required"))?,
        )?)
    } else {
        match present(&fields, "prompt") {
            None => return Err(EngineError::bad("prompt", "'prompt' is required")),
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
                Prompt::Ids(token_ids(&Value::Array(items.clone()), "prompt")?)
            }
            Some(Value::Array(items)) if items.len() == 1 => match &items[0] {
                Value::String(s) => Prompt::Text(s.clone()),
                ids @ Value::Array(_) => Prompt::Ids(token_ids(ids, "prompt[0]")?),
                other => {
                    return Err(EngineError::bad(
                        "prompt",
                        format!("'prompt[0]' must be a string or token ids, got {}", kind(other)),
                    ))
                }
            },
            Some(Value::Array(items)) if items.is_empty() => return Err(EngineError::bad("prompt", "'prompt' is an empty list")),
            Some(Value::Array(_)) => return Err(EngineError::bad("prompt", "'prompt' holds several prompts; send one per request")),
            Some(other) => {
                return Err(EngineError::bad(
                    "prompt",
                    format!("'prompt' must be a string or token ids, got {}", kind(other)),
                ))
            }
        }
    };
    let max_field = if chat && present(&fields, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match present(&fields, max_field) {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(n as usize),
            _ => {
                return Err(EngineError::bad(
                    max_field,
                    format!("'{max_field}' must be a positive integer, got {v}"),
                ))
            }
        },
    };
    match present(&fields, "n") {
        None => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(EngineError::bad(
                "n",
                format!("'n' is {v}; this engine returns one choice per request (n = 1)"),
            ))
        }
    }
    let stop = match present(&fields, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(String::from)
                    .ok_or_else(|| EngineError::bad("stop", "'stop' must be a string or a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(EngineError::bad(
                "stop",
                format!("'stop' must be a string or a list of strings, got {}", kind(other)),
            ))
        }
    };
    if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
        return Err(EngineError::bad("stop", format!("'stop' takes 1 to {MAX_STOPS} non-empty strings")));
    }
    let seed = match present(&fields, "seed") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .map(|n| n as u64)
                .ok_or_else(|| EngineError::bad("seed", format!("'seed' must be an integer, got {v}")))?,
        ),
    };
    let stream = boolean(&fields, "stream")?;
    let include_usage = match present(&fields, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        Some(other) => {
            return Err(EngineError::bad(
                "stream_options",
                format!("'stream_options' must be an object, got {}", kind(other)),
            ))
        }
    };
    Ok(GenParams {
        model,
        prompt,
        max_tokens,
        temperature: number(&fields, "temperature", 0.0, 2.0, 1.0)?,
        top_p: number(&fields, "top_p", 0.0, 1.0, 1.0)?.max(f32::MIN_POSITIVE),
        seed,
        stop,
        stream,
        include_usage,
        ignore_eos: boolean(&fields, "ignore_eos")?,
        return_token_ids: boolean(&fields, "return_token_ids")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_name_the_field() {
        let ok = parse(br#"{"prompt":[1,2,3],"max_tokens":5,"temperature":0,"stop":"x","seed":4,"stream":true,"stream_options":{"include_usage":true}}"#, false).unwrap();
        assert_eq!(ok.prompt, Prompt::Ids(vec![1, 2, 3]));
        assert_eq!(
            (ok.max_tokens, ok.temperature, ok.seed, ok.include_usage),
            (Some(5), 0.0, Some(4), true)
        );
        assert_eq!(ok.stop, vec!["x".to_string()]);
        let chat = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":3}"#,
            true,
        )
        .unwrap();
        assert_eq!(chat.max_tokens, Some(3));

        let bad: &[(&str, bool, &str)] = &[
            ("{", false, "not valid JSON"),
            (r#"{"prompt":"x","max_tokens":0}"#, false, "'max_tokens' must be a positive integer"),
            (r#"{"prompt":"x","max_tokens":-3}"#, false, "'max_tokens'"),
            (r#"{"prompt":"x","max_tokens":"5"}"#, false, "'max_tokens'"),
            (r#"{"prompt":"x","temperature":3}"#, false, "between 0 and 2"),
            (r#"{"prompt":"x","top_p":1.5}"#, false, "'top_p'"),
            (r#"{"prompt":"x","n":2}"#, false, "n = 1"),
            (r#"{"prompt":"x","logprobs":2}"#, false, "'logprobs' is not supported"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                true,
                "'response_format' is not supported",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                true,
                "'tools'",
            ),
            (r#"{"prompt":"x","stop":["a","b","c","d","e"]}"#, false, "'stop'"),
            (r#"{"prompt":[-1]}"#, false, "non-negative token id"),
            (r#"{"prompt":["a","b"]}"#, false, "several prompts"),
            (r#"{"prompt":5}"#, false, "got a number"),
            (r#"{}"#, false, "'prompt' is required"),
            (r#"{"messages":[]}"#, true, "empty"),
            (r#"{"messages":[{"role":"wizard","content":"x"}]}"#, true, "wizard"),
            (r#"{"messages":[{"role":"user"}]}"#, true, "content"),
            (r#"{"messages":"hi"}"#, true, "must be a list"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                true,
                "'stream' must be a boolean",
            ),
        ];
        for (body, chat, needle) in bad {
            let err = parse(body.as_bytes(), *chat).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
