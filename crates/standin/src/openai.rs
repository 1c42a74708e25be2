//! `POST /v1/completions` and `POST /v1/chat/completions`: request checks that name the field at
//! fault, and answers whole or streamed as server-sent events, in OpenAI's shapes.

use crate::config::{Config, Flavor};
use crate::engine::{Engine, Event, Sequence};
use crate::error::ApiError;
use crate::text::{from_ids, splitmix, tokenize, tokenize_chat, unit};
use axum::body::Body;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A checked generation request.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub tokens: Vec<u64>,
    pub max_tokens: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub seed: u64,
}

fn kind(value: &Value) -> &'static str {
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

fn boolean(fields: &Map<String, Value>, name: &'static str) -> Result<bool, ApiError> {
    match present(fields, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad(name, format!("'{name}' must be a boolean, got {}", kind(other)))),
    }
}

fn count(fields: &Map<String, Value>, name: &'static str) -> Result<Option<usize>, ApiError> {
    match present(fields, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Err(ApiError::bad(name, format!("'{name}' must be at least 1, got 0"))),
            Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            None => Err(ApiError::bad(name, format!("'{name}' must be a positive integer, got {v}"))),
        },
    }
}

fn prompt_tokens(value: Option<&Value>) -> Result<Vec<u64>, ApiError> {
    let bad = |m: String| ApiError::bad("prompt", m);
    match value {
        None => Err(bad("'prompt' is required".to_string())),
        Some(Value::String(text)) => Ok(tokenize(text)),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => prompt_tokens(items.first()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            let ids = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(format!("'prompt[{i}]' must be a token id, got {v}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(from_ids(&ids))
        }
        Some(other) => Err(bad(format!(
            "'prompt' must be a string, a list of one string or a list of token ids, got {}",
            kind(other)
        ))),
    }
}

fn chat_tokens(value: Option<&Value>) -> Result<Vec<u64>, ApiError> {
    let bad = |m: String| ApiError::bad("messages", m);
    let items = match value {
        None => return Err(bad("'messages' is required".to_string())),
        Some(Value::Array(items)) if items.is_empty() => return Err(bad("'messages' is empty; send at least one".to_string())),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("'messages' must be a list, got {}", kind(other)))),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(bad(format!(
                "'messages[{i}].role' must be system, developer, user, assistant or tool"
            )));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("'messages[{i}].content' parts must be {{\"type\":\"text\",\"text\":...}}")))?
                .join(" "),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            _ => return Err(bad(format!("'messages[{i}].content' must be a string or a list of text parts"))),
        };
        messages.push((role, content));
    }
    Ok(tokenize_chat(messages.iter().map(|(r, c)| (*r, c.as_str()))))
}

/// Checks a request body against the engine's limits.
pub fn parse(body: &[u8], chat: bool, config: &Config) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad("body", "the body must be a JSON object"));
    };
    match present(&fields, "model") {
        None => {}
        Some(Value::String(model)) if *model == config.served_name => {}
        Some(Value::String(model)) => return Err(ApiError::ModelNotFound { model: model.clone() }),
        Some(other) => return Err(ApiError::bad("model", format!("'model' must be a string, got {}", kind(other)))),
    }
    let (field, tokens) = if chat {
        ("messages", chat_tokens(fields.get("messages"))?)
    } else {
        ("prompt", prompt_tokens(present(&fields, "prompt"))?)
    };
    if tokens.is_empty() {
        return Err(ApiError::bad(
            field,
            format!("'{field}' has no tokens (the stand-in counts one per word)"),
        ));
    }
    if count(&fields, "n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "the stand-in answers one choice; 'n' must be 1"));
    }
    let max_tokens = match (chat, count(&fields, "max_completion_tokens")?) {
        (true, Some(n)) => n,
        _ => count(&fields, "max_tokens")?.unwrap_or(config.default_max_tokens),
    };
    let stream = boolean(&fields, "stream")?;
    let include_usage = match present(&fields, "stream_options") {
        None => false,
        Some(Value::Object(options)) if stream => boolean(options, "include_usage")
            .map_err(|_| ApiError::bad("stream_options", "'stream_options.include_usage' must be a boolean"))?,
        Some(Value::Object(_)) => return Err(ApiError::bad("stream_options", "'stream_options' needs 'stream': true")),
        Some(other) => {
            return Err(ApiError::bad(
                "stream_options",
                format!("'stream_options' must be an object, got {}", kind(other)),
            ))
        }
    };
    let seed = match present(&fields, "seed") {
        None => 0,
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .ok_or_else(|| ApiError::bad("seed", format!("'seed' must be an integer, got {v}")))?,
    };
    let total = tokens.len().saturating_add(max_tokens);
    if tokens.len() >= config.context {
        return Err(ApiError::bad(
            field,
            format!(
                "the prompt has {} tokens; this model's maximum context length is {} tokens",
                tokens.len(),
                config.context
            ),
        ));
    }
    if total > config.context {
        return Err(ApiError::bad(
            "max_tokens",
            format!(
                "this model's maximum context length is {} tokens; you requested {total} ({} in the prompt, {max_tokens} in the completion)",
                config.context,
                tokens.len()
            ),
        ));
    }
    if total > config.kv_tokens {
        return Err(ApiError::bad(
            "max_tokens",
            format!(
                "{total} tokens of prompt and completion can never fit this engine's KV cache of {} tokens",
                config.kv_tokens
            ),
        ));
    }
    Ok(Request {
        tokens,
        max_tokens,
        stream,
        include_usage,
        seed,
    })
}

/// Answers a generation request.
pub async fn generate(engine: Arc<Engine>, body: Bytes, chat: bool) -> Response {
    let arrival = Instant::now();
    let config = &engine.config;
    let request = match parse(&body, chat, config) {
        Ok(r) => r,
        Err(e) => return e.respond(config.flavor),
    };
    if let Err(e) = engine.gate().await {
        return e.respond(config.flavor);
    }
    let n = engine.arrive();
    let last = match config.die_after {
        Some(limit) if n > limit => {
            return ApiError::Internal("EngineDeadError: the engine died".to_string()).respond(config.flavor);
        }
        Some(limit) => n == limit,
        None => false,
    };
    let response = if unit(config.seed ^ splitmix(n)) < config.fail_rate {
        ApiError::Internal("injected failure (--fail-rate)".to_string()).respond(config.flavor)
    } else {
        let prompt_tokens = request.tokens.len();
        let shape = Shape {
            flavor: config.flavor,
            chat,
            id: format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, splitmix(n ^ config.seed)),
            created: now_secs(),
            model: config.served_name.clone(),
            prompt_tokens,
            max_tokens: request.max_tokens,
            include_usage: request.include_usage,
        };
        let stream = request.stream;
        let events = engine.start(
            Sequence {
                tokens: request.tokens,
                max_tokens: request.max_tokens,
                seed: request.seed,
            },
            arrival,
        );
        if stream {
            streamed(shape, events).into_response()
        } else {
            match whole(&shape, events).await {
                Ok(body) => axum::Json(body).into_response(),
                Err(e) => e.respond(config.flavor),
            }
        }
    };
    if last {
        // The last request the engine takes: it dies once this answer has been sent.
        let (parts, body) = response.into_parts();
        let body = body.into_data_stream().chain(DieOnDrop(Some(engine.clone())));
        return Response::from_parts(parts, Body::from_stream(body));
    }
    response
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What every chunk of one answer shares.
struct Shape {
    flavor: Flavor,
    chat: bool,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    max_tokens: usize,
    include_usage: bool,
}

impl Shape {
    fn usage(&self, completion: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion})
    }

    fn chunk(&self, choices: Value) -> String {
        self.chunk_with(choices, None)
    }

    fn chunk_with(&self, choices: Value, usage: Option<Value>) -> String {
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        let mut chunk = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk.to_string()
    }

    /// The chunks for output token `index`: on the first, a chat answer opens with its role.
    fn token_chunks(&self, index: usize, word: &str, out: &mut VecDeque<String>) {
        let text = if index == 0 { word.to_string() } else { format!(" {word}") };
        let finish = (index + 1 == self.max_tokens).then_some("length");
        if self.chat {
            if index == 0 {
                let role = json!({"role": "assistant", "content": ""});
                out.push_back(self.chunk(json!([{"index": 0, "delta": role, "logprobs": null, "finish_reason": null}])));
            }
            out.push_back(self.chunk(json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": finish}])));
        } else {
            out.push_back(self.chunk(json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}])));
        }
    }
}

/// The whole answer, once every token has come.
async fn whole(shape: &Shape, mut events: mpsc::UnboundedReceiver<Event>) -> Result<Value, ApiError> {
    let mut words = Vec::with_capacity(shape.max_tokens);
    loop {
        match events.recv().await {
            Some(Event::Token(word)) => words.push(word),
            Some(Event::Done) => break,
            Some(Event::Failed(reason)) => return Err(ApiError::Internal(reason)),
            None => return Err(ApiError::Internal("the sequence ended without an answer".to_string())),
        }
    }
    let text = words.join(" ");
    let choice = if shape.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"})
    };
    let object = if shape.chat { "chat.completion" } else { "text_completion" };
    Ok(
        json!({"id": shape.id, "object": object, "created": shape.created, "model": shape.model,
        "choices": [choice], "usage": shape.usage(words.len())}),
    )
}

/// What a streamed answer still has to send.
struct StreamState {
    shape: Shape,
    events: mpsc::UnboundedReceiver<Event>,
    queue: VecDeque<String>,
    sent: usize,
    done: bool,
}

impl StreamState {
    /// The end of a whole answer: the usage when asked for, then `[DONE]`.
    fn finish(&mut self) {
        if self.shape.include_usage {
            let usage = self.shape.usage(self.sent);
            self.queue.push_back(self.shape.chunk_with(json!([]), Some(usage)));
        }
        self.queue.push_back("[DONE]".to_string());
        self.done = true;
    }

    /// A failure mid-answer: an error event, then `[DONE]`.
    fn fail(&mut self, error: ApiError) {
        self.queue.push_back(error.body(self.shape.flavor).to_string());
        self.queue.push_back("[DONE]".to_string());
        self.done = true;
    }
}

/// The answer as server-sent events: a chunk per token, the usage when asked for, then `[DONE]`.
/// A failure mid-answer is an error event, so a client never takes a cut answer for a whole one.
fn streamed(shape: Shape, events: mpsc::UnboundedReceiver<Event>) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let state = StreamState {
        shape,
        events,
        queue: VecDeque::new(),
        sent: 0,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.queue.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), s));
            }
            if s.done {
                return None;
            }
            match s.events.recv().await {
                Some(Event::Token(word)) => {
                    s.shape.token_chunks(s.sent, word, &mut s.queue);
                    s.sent += 1;
                }
                Some(Event::Done) => s.finish(),
                Some(Event::Failed(reason)) => s.fail(ApiError::Internal(reason)),
                None => s.fail(ApiError::Internal("the sequence ended without an answer".to_string())),
            }
        }
    });
    Sse::new(stream)
}

/// The tail of the last answer an engine with `--die-after` gives: when the answer's body has been
/// sent (or dropped with its client), the engine dies.
struct DieOnDrop(Option<Arc<Engine>>);

impl Stream for DieOnDrop {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

impl Drop for DieOnDrop {
    fn drop(&mut self) {
        if let Some(engine) = self.0.take() {
            tracing::warn!("answered request {:?} of --die-after: dying", engine.config.die_after);
            engine.die();
        }
    }
}
