//! `/v1/completions` and `/v1/chat/completions`: OpenAI-compatible text generation, whole or
//! streamed as server-sent events, with stop strings applied to the decoded text.

use crate::generate::{FinishReason, GenEvent, GenRequest, Sampling};
use crate::state::{EngineState, TextModel};
use crate::textgen::{parse, GenParams, Prompt};
use crate::EngineError;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

/// Turns generated ids into text as they come, holding back what could still change: an
/// incomplete UTF-8 sequence, or the start of a stop string.
struct TextStream {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    emitted: usize,
    stops: Vec<String>,
    text: String,
}

// === impl TextStream ===

impl TextStream {
    fn new(tokenizer: Arc<Tokenizer>, stops: Vec<String>) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
            stops,
            text: String::new(),
        }
    }

    /// Adds a token; returns the text now safe to send and whether a stop string was hit.
    fn push(&mut self, id: u32) -> Result<(String, bool), EngineError> {
        self.ids.push(id);
        self.text = self
            .tokenizer
            .decode(&self.ids, true)
            .map_err(|e| EngineError::Inference(format!("decoding: {e}")))?;
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let search_from = floor_boundary(&self.text, self.emitted.saturating_sub(longest_stop));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| p + search_from))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.emitted.min(at)..at].to_string();
            self.emitted = at;
            self.text.truncate(at);
            return Ok((out, true));
        }
        let mut safe = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            safe -= '\u{FFFD}'.len_utf8();
        }
        if longest_stop > 1 {
            safe = safe.saturating_sub(longest_stop - 1);
        }
        let safe = floor_boundary(&self.text, safe.max(self.emitted));
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        Ok((out, false))
    }

    /// The text held back so far, at the end of generation.
    fn flush(&mut self) -> String {
        let out = self.text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

struct Prepared {
    params: GenParams,
    prompt: Vec<u32>,
    max_tokens: usize,
    events: mpsc::UnboundedReceiver<GenEvent>,
}

/// Validates and tokenizes a request and queues it with the scheduler.
fn prepare(model: &TextModel, body: &[u8], chat: bool) -> Result<Prepared, EngineError> {
    let params = parse(body, chat)?;
    let prompt = match &params.prompt {
        Prompt::Text(text) => {
            let encode = |special| {
                model
                    .tokenizer
                    .encode(text.as_str(), special)
                    .map_err(|e| EngineError::bad("prompt", format!("tokenizing: {e}")))
            };
            // Special tokens alone (a BOS for an empty string) are no prompt.
            if text.is_empty() || encode(false)?.get_ids().is_empty() {
                return Err(EngineError::bad("prompt", "the prompt tokenizes to no tokens"));
            }
            encode(true)?.get_ids().to_vec()
        }
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Chat(messages) => {
            let template = model.template.as_ref().ok_or_else(|| {
                EngineError::bad(
                    "messages",
                    "this model has no chat_template in tokenizer_config.json; use /v1/completions with a prompt",
                )
            })?;
            let text = template.render(messages)?;
            model
                .tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| EngineError::bad("messages", format!("tokenizing: {e}")))?
                .get_ids()
                .to_vec()
        }
    };
    let field = if chat { "messages" } else { "prompt" };
    if prompt.is_empty() {
        return Err(EngineError::bad(field, "the prompt tokenizes to no tokens"));
    }
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= model.vocab) {
        return Err(EngineError::bad(
            field,
            format!("token id {bad} is outside the vocabulary of {} tokens", model.vocab),
        ));
    }
    let room = model.context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(EngineError::bad(
            field,
            format!(
                "the prompt has {} tokens; the model's context is {} tokens",
                prompt.len(),
                model.context
            ),
        ));
    }
    let max_tokens = params.max_tokens.unwrap_or(if chat { room } else { 16.min(room) });
    if prompt.len() + max_tokens > model.context {
        return Err(EngineError::bad(
            "max_tokens",
            format!(
                "the prompt has {} tokens and max_tokens is {max_tokens}: {} in all, over the model's context of {} tokens",
                prompt.len(),
                prompt.len() + max_tokens,
                model.context
            ),
        ));
    }
    let need = model.generator.kv_bytes_for(prompt.len() + max_tokens);
    if need > model.generator.config.kv_budget_bytes {
        return Err(EngineError::bad(
            "max_tokens",
            format!(
                "{} prompt and {max_tokens} new tokens need {need} bytes of KV cache; this engine's budget is {} bytes",
                prompt.len(),
                model.generator.config.kv_budget_bytes
            ),
        ));
    }
    let (tx, events) = mpsc::unbounded_channel();
    let sampling = Sampling {
        temperature: params.temperature,
        top_p: params.top_p,
        seed: params.seed.unwrap_or_else(rand::random),
    };
    model.generator.submit(GenRequest {
        prompt: prompt.clone(),
        max_tokens,
        sampling,
        ignore_eos: params.ignore_eos,
        events: tx,
    })?;
    Ok(Prepared {
        params,
        prompt,
        max_tokens,
        events,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn handle(state: &EngineState, model: &TextModel, body: &[u8], chat: bool) -> Result<Response, EngineError> {
    let prepared = prepare(model, body, chat)?;
    let name = prepared.params.model.clone().unwrap_or_else(|| state.served_name().to_string());
    let id = format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let mut response = if prepared.params.stream {
        stream_response(model, prepared, chat, id, name).into_response()
    } else {
        whole_response(model, prepared, chat, id, name).await?.into_response()
    };
    response.headers_mut().insert("colo-load", model.load_header());
    Ok(response)
}

async fn whole_response(model: &TextModel, mut p: Prepared, chat: bool, id: String, name: String) -> Result<Response, EngineError> {
    let mut text = TextStream::new(model.tokenizer.clone(), p.params.stop.clone());
    let mut out = String::new();
    let mut reason = FinishReason::Length;
    while let Some(event) = p.events.recv().await {
        match event {
            GenEvent::Token(token) => {
                let (piece, stopped) = text.push(token)?;
                out.push_str(&piece);
                if stopped {
                    reason = FinishReason::Stop;
                    break;
                }
            }
            GenEvent::Finished(r) => {
                reason = r;
                out.push_str(&text.flush());
                break;
            }
            GenEvent::Failed(e) => return Err(EngineError::Inference(e)),
        }
    }
    let usage =
        json!({"prompt_tokens": p.prompt.len(), "completion_tokens": text.ids.len(), "total_tokens": p.prompt.len() + text.ids.len()});
    let mut choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": reason.as_str(), "logprobs": null})
    } else {
        json!({"index": 0, "text": out, "finish_reason": reason.as_str(), "logprobs": null})
    };
    if p.params.return_token_ids {
        choice["token_ids"] = json!(text.ids);
        choice["prompt_token_ids"] = json!(p.prompt);
    }
    let object = if chat { "chat.completion" } else { "text_completion" };
    let body = json!({"id": id, "object": object, "created": now_secs(), "model": name, "choices": [choice], "usage": usage});
    Ok(([("content-type", "application/json")], body.to_string()).into_response())
}

/// What the SSE stream still has to do.
struct StreamState {
    events: mpsc::UnboundedReceiver<GenEvent>,
    text: TextStream,
    queue: VecDeque<Event>,
    chat: bool,
    id: String,
    name: String,
    created: u64,
    prompt_tokens: usize,
    include_usage: bool,
    return_token_ids: bool,
    done: bool,
}

impl StreamState {
    fn chunk(&self, choices: Value) -> Event {
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        let body = json!({"id": self.id, "object": object, "created": self.created, "model": self.name, "choices": choices});
        Event::default().data(body.to_string())
    }

    fn delta(&self, text: &str, token: Option<u32>, finish: Option<FinishReason>) -> Event {
        let finish = finish.map(FinishReason::as_str);
        let mut choice = if self.chat {
            let delta = if finish.is_some() && text.is_empty() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(token.map(|t| vec![t]).unwrap_or_default());
        }
        self.chunk(json!([choice]))
    }

    fn finish(&mut self, reason: FinishReason, tail: &str) {
        self.queue.push_back(self.delta(tail, None, Some(reason)));
        if self.include_usage {
            let n = self.text.ids.len();
            let body = json!({"id": self.id, "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
                "created": self.created, "model": self.name, "choices": [],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}});
            self.queue.push_back(Event::default().data(body.to_string()));
        }
        self.queue.push_back(Event::default().data("[DONE]"));
        self.done = true;
        // Dropping the receiver tells the scheduler this sequence is over (a stop string hit).
        self.events.close();
    }
}

fn stream_response(
    model: &TextModel,
    p: Prepared,
    chat: bool,
    id: String,
    name: String,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let _ = p.max_tokens;
    let mut state = StreamState {
        text: TextStream::new(model.tokenizer.clone(), p.params.stop.clone()),
        events: p.events,
        queue: VecDeque::new(),
        chat,
        id,
        name,
        created: now_secs(),
        prompt_tokens: p.prompt.len(),
        include_usage: p.params.include_usage,
        return_token_ids: p.params.return_token_ids,
        done: false,
    };
    if chat {
        let first =
            state.chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}]));
        state.queue.push_back(first);
    }
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            match state.events.recv().await {
                Some(GenEvent::Token(token)) => match state.text.push(token) {
                    Ok((piece, true)) => state.finish(FinishReason::Stop, &piece),
                    Ok((piece, false)) => {
                        let event = state.delta(&piece, Some(token), None);
                        state.queue.push_back(event);
                    }
                    Err(e) => fail(&mut state, &e.to_string()),
                },
                Some(GenEvent::Finished(reason)) => {
                    let tail = state.text.flush();
                    state.finish(reason, &tail);
                }
                Some(GenEvent::Failed(e)) => fail(&mut state, &e),
                None => fail(&mut state, "the scheduler dropped the request"),
            }
        }
    });
    Sse::new(stream)
}

/// An error in the middle of a stream: an error event, so the client never mistakes a cut
/// for a finished answer.
fn fail(state: &mut StreamState, message: &str) {
    let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": "generation_failed"}});
    state.queue.push_back(Event::default().data(body.to_string()));
    state.done = true;
}
