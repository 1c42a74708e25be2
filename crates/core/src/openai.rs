//! OpenAI request bodies checked before anything serves them: the types and ranges OpenAI's
//! API defines for `/v1/completions`, `/v1/chat/completions` and `/v1/embeddings`, and the
//! parameters an engine cannot honour (refused, never ignored). The edge runs `check` before it
//! holds a request or wakes a machine for it, so a bad request costs no cold start; colo's
//! engine runs `unsupported` on every request it parses.

use crate::EngineKind;
use serde_json::{Map, Value};

/// The OpenAI endpoints whose bodies colo checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
    Embeddings,
}

/// What is wrong with one parameter of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadParam {
    /// The parameter, as OpenAI's error bodies name it (`param`); `None` for the body itself.
    pub param: Option<String>,
    pub message: String,
    /// OpenAI's error code: `invalid_value`, `unsupported_parameter` or `invalid_json`.
    pub code: &'static str,
}

/// Stop strings per request at most, as OpenAI allows.
pub const MAX_STOPS: usize = 4;

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint of a request path, if it is one of these.
    pub fn of_path(path: &str) -> Option<Self> {
        match path {
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }
}

// === impl BadParam ===

impl BadParam {
    fn invalid(param: &str, message: String) -> Self {
        BadParam {
            param: Some(param.to_string()),
            message,
            code: "invalid_value",
        }
    }

    fn unsupported(param: &str, why: &str) -> Self {
        BadParam {
            param: Some(param.to_string()),
            message: format!("'{param}' is not supported by this model's engine: {why}"),
            code: "unsupported_parameter",
        }
    }
}

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks a request body for `endpoint`: a JSON object whose parameters have OpenAI's types and
/// ranges, and none that an engine of `engine` cannot honour (`None`: an engine colo knows
/// nothing of, which judges for itself).
pub fn check(endpoint: Endpoint, body: &[u8], engine: Option<EngineKind>) -> Result<(), BadParam> {
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => {
            return Err(BadParam {
                param: None,
                message: format!("the request body must be a JSON object, got {}", kind(&other)),
                code: "invalid_json",
            })
        }
        Err(e) => {
            return Err(BadParam {
                param: None,
                message: format!("the request body is not valid JSON: {e}"),
                code: "invalid_json",
            })
        }
    };
    match endpoint {
        Endpoint::Completions | Endpoint::Chat => generation(endpoint, &fields)?,
        Endpoint::Embeddings => embeddings(&fields)?,
    }
    match engine {
        Some(engine) => unsupported(endpoint, &fields, engine),
        None => Ok(()),
    }
}

/// The first parameter of `fields` that an engine of `engine` cannot honour, as an error
/// naming it. colo's engine has one choice per request, no tools, no logprobs, no penalties
/// or logit bias, and plain text output; the other engines colo runs support these.
pub fn unsupported(endpoint: Endpoint, fields: &Map<String, Value>, engine: EngineKind) -> Result<(), BadParam> {
    if engine != EngineKind::Colo {
        return Ok(());
    }
    let set = |name: &str| present(fields, name);
    let number = |name: &str| set(name).and_then(Value::as_f64);
    if endpoint == Endpoint::Embeddings {
        return match set("input") {
            Some(Value::Array(items)) if items.iter().any(|v| v.is_number() || v.is_array()) => {
                Err(BadParam::unsupported("input", "it takes text, not token ids; send strings"))
            }
            _ => Ok(()),
        };
    }
    let refused: &[(&str, bool, &str)] = &[
        (
            "n",
            number("n").is_some_and(|n| n != 1.0),
            "it returns one choice per request (n = 1)",
        ),
        (
            "best_of",
            number("best_of").is_some_and(|n| n != 1.0),
            "it returns one choice per request",
        ),
        (
            "tools",
            set("tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())),
            "it does not call tools",
        ),
        (
            "tool_choice",
            set("tool_choice").is_some_and(|c| c != "none"),
            "it does not call tools",
        ),
        ("functions", set("functions").is_some(), "it does not call functions"),
        (
            "function_call",
            set("function_call").is_some_and(|c| c != "none"),
            "it does not call functions",
        ),
        (
            "response_format",
            set("response_format").is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text")),
            "it writes plain text only (no JSON mode or schema)",
        ),
        (
            "logprobs",
            set("logprobs").is_some_and(|l| l != &Value::Bool(false) && l.as_f64() != Some(0.0)),
            "it does not return log probabilities",
        ),
        (
            "top_logprobs",
            number("top_logprobs").is_some_and(|n| n != 0.0),
            "it does not return log probabilities",
        ),
        (
            "logit_bias",
            set("logit_bias").and_then(Value::as_object).is_some_and(|m| !m.is_empty()),
            "it does not bias tokens",
        ),
        (
            "presence_penalty",
            number("presence_penalty").is_some_and(|p| p != 0.0),
            "it applies no penalties",
        ),
        (
            "frequency_penalty",
            number("frequency_penalty").is_some_and(|p| p != 0.0),
            "it applies no penalties",
        ),
        ("echo", set("echo") == Some(&Value::Bool(true)), "it does not echo the prompt"),
        (
            "suffix",
            set("suffix").and_then(Value::as_str).is_some_and(|s| !s.is_empty()),
            "it does not insert text",
        ),
        ("audio", set("audio").is_some(), "it writes text only"),
        ("prediction", set("prediction").is_some(), "it takes no predicted output"),
        (
            "modalities",
            set("modalities")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(|x| x != "text")),
            "it writes text only",
        ),
    ];
    match refused.iter().find(|(_, wrong, _)| *wrong) {
        Some((name, _, why)) => Err(BadParam::unsupported(name, why)),
        None => Ok(()),
    }
}

/// How a JSON value is described in error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn present<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| !v.is_null())
}

/// Checks that a present `name` is a number within `min..=max`.
fn number_in(fields: &Map<String, Value>, name: &str, min: f64, max: f64) -> Result<(), BadParam> {
    match present(fields, name) {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|v| (min..=max).contains(&v)) => Ok(()),
        Some(Value::Number(n)) => Err(BadParam::invalid(
            name,
            format!("'{name}' is {n}; it must be between {min} and {max}"),
        )),
        Some(other) => Err(BadParam::invalid(name, format!("'{name}' must be a number, got {}", kind(other)))),
    }
}

/// Checks that a present `name` is an integer within `min..=max`.
fn integer_in(fields: &Map<String, Value>, name: &str, min: i64, max: i64) -> Result<(), BadParam> {
    match present(fields, name) {
        None => Ok(()),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            Some(n) => Err(BadParam::invalid(name, format!("'{name}' is {n}; it must be from {min} to {max}"))),
            None => Err(BadParam::invalid(name, format!("'{name}' must be an integer, got {v}"))),
        },
    }
}

fn of_type(fields: &Map<String, Value>, name: &str, fits: fn(&Value) -> bool, what: &str) -> Result<(), BadParam> {
    match present(fields, name) {
        Some(v) if !fits(v) => Err(BadParam::invalid(name, format!("'{name}' must be {what}, got {}", kind(v)))),
        _ => Ok(()),
    }
}

fn is_token_ids(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|ids| !ids.is_empty() && ids.iter().all(|id| id.as_u64().is_some()))
}

/// Completions and chat completions.
fn generation(endpoint: Endpoint, fields: &Map<String, Value>) -> Result<(), BadParam> {
    of_type(fields, "model", Value::is_string, "a string")?;
    if endpoint == Endpoint::Chat {
        messages(fields)?;
        integer_in(fields, "max_completion_tokens", 1, i64::MAX)?;
        of_type(fields, "logprobs", Value::is_boolean, "a boolean")?;
        integer_in(fields, "top_logprobs", 0, 20)?;
        of_type(fields, "response_format", Value::is_object, "an object")?;
        of_type(fields, "tools", Value::is_array, "a list")?;
    } else {
        match present(fields, "prompt") {
            None => return Err(BadParam::invalid("prompt", "'prompt' is required".into())),
            Some(Value::String(_)) => {}
            Some(Value::Array(items)) if items.is_empty() => return Err(BadParam::invalid("prompt", "'prompt' is an empty list".into())),
            Some(p @ Value::Array(items)) if is_token_ids(p) || items.iter().all(|i| i.is_string() || is_token_ids(i)) => {}
            Some(other) => {
                return Err(BadParam::invalid(
                    "prompt",
                    format!("'prompt' must be a string, a list of strings or token ids, got {}", kind(other)),
                ))
            }
        }
        integer_in(fields, "logprobs", 0, 5)?;
        integer_in(fields, "best_of", 1, 20)?;
        of_type(fields, "echo", Value::is_boolean, "a boolean")?;
        of_type(fields, "suffix", Value::is_string, "a string")?;
    }
    integer_in(fields, "max_tokens", 1, i64::MAX)?;
    number_in(fields, "temperature", 0.0, 2.0)?;
    number_in(fields, "top_p", 0.0, 1.0)?;
    integer_in(fields, "n", 1, 128)?;
    number_in(fields, "presence_penalty", -2.0, 2.0)?;
    number_in(fields, "frequency_penalty", -2.0, 2.0)?;
    of_type(fields, "stream", Value::is_boolean, "a boolean")?;
    of_type(fields, "stream_options", Value::is_object, "an object")?;
    of_type(fields, "logit_bias", Value::is_object, "an object")?;
    of_type(fields, "user", Value::is_string, "a string")?;
    match present(fields, "seed") {
        Some(v) if v.as_i64().is_none() && v.as_u64().is_none() => {
            return Err(BadParam::invalid("seed", format!("'seed' must be an integer, got {v}")))
        }
        _ => {}
    }
    match present(fields, "stop") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(stops)) if stops.len() <= MAX_STOPS && stops.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(BadParam::invalid(
            "stop",
            format!("'stop' must be a string or a list of at most {MAX_STOPS} strings"),
        )),
    }
}

fn messages(fields: &Map<String, Value>) -> Result<(), BadParam> {
    let invalid = |message: String| Err(BadParam::invalid("messages", message));
    let items = match present(fields, "messages") {
        None => return invalid("'messages' is required".into()),
        Some(Value::Array(items)) if items.is_empty() => return invalid("'messages' is empty; send at least one message".into()),
        Some(Value::Array(items)) => items,
        Some(other) => return invalid(format!("'messages' must be a list, got {}", kind(other))),
    };
    for (i, message) in items.iter().enumerate() {
        match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant" | "tool" | "function") => {}
            Some(role) => {
                return invalid(format!(
                    "'messages[{i}].role' is {role:?}; use system, developer, user, assistant or tool"
                ))
            }
            None => return invalid(format!("'messages[{i}]' must be an object with a string 'role'")),
        }
    }
    Ok(())
}

fn embeddings(fields: &Map<String, Value>) -> Result<(), BadParam> {
    of_type(fields, "model", Value::is_string, "a string")?;
    match present(fields, "input") {
        None => return Err(BadParam::invalid("input", "'input' is required".into())),
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.is_empty() => return Err(BadParam::invalid("input", "'input' is an empty list".into())),
        Some(i @ Value::Array(items)) if is_token_ids(i) || items.iter().all(|x| x.is_string() || is_token_ids(x)) => {}
        Some(other) => {
            return Err(BadParam::invalid(
                "input",
                format!("'input' must be a string, a list of strings or token ids, got {}", kind(other)),
            ))
        }
    }
    match present(fields, "encoding_format") {
        None => {}
        Some(v) if v == "float" || v == "base64" => {}
        Some(other) => {
            return Err(BadParam::invalid(
                "encoding_format",
                format!("'encoding_format' must be \"float\" or \"base64\", got {other}"),
            ))
        }
    }
    integer_in(fields, "dimensions", 1, i64::MAX)?;
    of_type(fields, "truncate", Value::is_boolean, "a boolean")?;
    of_type(fields, "user", Value::is_string, "a string")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (endpoint, body, engine, the param named and a part of the message; None: accepted)
    type Case = (Endpoint, &'static str, Option<EngineKind>, Option<(&'static str, &'static str)>);

    #[test]
    fn requests_are_checked_by_table() {
        use Endpoint::*;
        let colo = Some(EngineKind::Colo);
        let vllm = Some(EngineKind::Vllm);
        let cases: Vec<Case> = vec![
            (
                Completions,
                r#"{"model":"m","prompt":"hi","max_tokens":4,"temperature":0.5,"stop":["a"],"seed":3}"#,
                colo,
                None,
            ),
            (Completions, r#"{"prompt":[1,2,3]}"#, colo, None),
            (
                Completions,
                r#"{"prompt":["one"],"logprobs":0,"n":1,"stream":true,"stream_options":{"include_usage":true}}"#,
                colo,
                None,
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3,"response_format":{"type":"text"}}"#,
                colo,
                None,
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[],"tool_choice":"none","logprobs":false}"#,
                colo,
                None,
            ),
            (
                Embeddings,
                r#"{"input":["a","b"],"encoding_format":"base64","dimensions":384}"#,
                colo,
                None,
            ),
            // Types and ranges, for every engine.
            (Completions, r#"[1,2]"#, vllm, Some(("", "must be a JSON object, got a list"))),
            (Completions, r#"{"prompt":"x""#, vllm, Some(("", "not valid JSON"))),
            (Completions, r#"{"max_tokens":3}"#, vllm, Some(("prompt", "'prompt' is required"))),
            (Completions, r#"{"prompt":{}}"#, vllm, Some(("prompt", "got an object"))),
            (
                Completions,
                r#"{"prompt":"x","max_tokens":-1}"#,
                vllm,
                Some(("max_tokens", "from 1 to")),
            ),
            (
                Completions,
                r#"{"prompt":"x","max_tokens":"5"}"#,
                vllm,
                Some(("max_tokens", "must be an integer")),
            ),
            (
                Completions,
                r#"{"prompt":"x","max_tokens":2.5}"#,
                vllm,
                Some(("max_tokens", "must be an integer")),
            ),
            (
                Completions,
                r#"{"prompt":"x","temperature":3}"#,
                vllm,
                Some(("temperature", "between 0 and 2")),
            ),
            (
                Completions,
                r#"{"prompt":"x","top_p":"high"}"#,
                vllm,
                Some(("top_p", "must be a number")),
            ),
            (Completions, r#"{"prompt":"x","n":0}"#, vllm, Some(("n", "from 1 to 128"))),
            (Completions, r#"{"prompt":"x","stream":"yes"}"#, vllm, Some(("stream", "a boolean"))),
            (
                Completions,
                r#"{"prompt":"x","stop":["a","b","c","d","e"]}"#,
                vllm,
                Some(("stop", "at most 4")),
            ),
            (Completions, r#"{"prompt":"x","seed":"7"}"#, vllm, Some(("seed", "an integer"))),
            (
                Completions,
                r#"{"prompt":"x","logprobs":9}"#,
                vllm,
                Some(("logprobs", "from 0 to 5")),
            ),
            (
                Completions,
                r#"{"prompt":"x","model":5}"#,
                vllm,
                Some(("model", "must be a string")),
            ),
            (Chat, r#"{"messages":[]}"#, vllm, Some(("messages", "empty"))),
            (Chat, r#"{"messages":"hi"}"#, vllm, Some(("messages", "must be a list"))),
            (
                Chat,
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                vllm,
                Some(("messages", "wizard")),
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}"#,
                vllm,
                Some(("max_completion_tokens", "from 1")),
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":30}"#,
                vllm,
                Some(("top_logprobs", "from 0 to 20")),
            ),
            (Embeddings, r#"{"model":"m"}"#, vllm, Some(("input", "'input' is required"))),
            (Embeddings, r#"{"input":[]}"#, vllm, Some(("input", "empty list"))),
            (
                Embeddings,
                r#"{"input":"a","encoding_format":"hex"}"#,
                vllm,
                Some(("encoding_format", "\"float\" or \"base64\"")),
            ),
            (Embeddings, r#"{"input":"a","dimensions":0}"#, vllm, Some(("dimensions", "from 1"))),
            // What vLLM supports and colo's engine does not.
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                vllm,
                None,
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                colo,
                Some(("tools", "does not call tools")),
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                colo,
                Some(("response_format", "plain text only")),
            ),
            (
                Chat,
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":2}"#,
                colo,
                Some(("logprobs", "log probabilities")),
            ),
            (
                Completions,
                r#"{"prompt":"x","logprobs":2}"#,
                colo,
                Some(("logprobs", "log probabilities")),
            ),
            (Completions, r#"{"prompt":"x","n":2}"#, colo, Some(("n", "n = 1"))),
            (
                Completions,
                r#"{"prompt":"x","presence_penalty":0.5}"#,
                colo,
                Some(("presence_penalty", "no penalties")),
            ),
            (
                Completions,
                r#"{"prompt":"x","logit_bias":{"50256":-100}}"#,
                colo,
                Some(("logit_bias", "does not bias")),
            ),
            (Completions, r#"{"prompt":"x","echo":true}"#, colo, Some(("echo", "echo"))),
            (Embeddings, r#"{"input":[[1,2],[3]]}"#, colo, Some(("input", "not token ids"))),
            (Embeddings, r#"{"input":[[1,2],[3]]}"#, vllm, None),
            // An engine colo does not know judges for itself.
            (Completions, r#"{"prompt":"x","n":2}"#, None, None),
        ];
        for (endpoint, body, engine, expected) in cases {
            let got = check(endpoint, body.as_bytes(), engine);
            match (got, expected) {
                (Ok(()), None) => {}
                (Err(bad), Some((param, part))) => {
                    assert_eq!(bad.param.as_deref().unwrap_or(""), param, "{body}: {bad:?}");
                    assert!(bad.message.contains(part), "{body}: {}", bad.message);
                }
                (got, expected) => panic!("{endpoint:?} {body} on {engine:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
