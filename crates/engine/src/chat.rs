//! Chat formatting: the model's own `chat_template` from tokenizer_config.json, rendered
//! with minijinja the way transformers renders it.

use crate::EngineError;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A special token in tokenizer_config.json is a string or `{"content": ...}`.
fn token_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

// === impl ChatTemplate ===

impl ChatTemplate {
    /// Reads the template from `tokenizer_config.json`; `Ok(None)` when the model has none.
    pub fn load(dir: &Path) -> Result<Option<Self>, EngineError> {
        let path = dir.join("tokenizer_config.json");
        let load = |reason: String| EngineError::Load {
            file: path.display().to_string(),
            reason,
        };
        let config: Value = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| load(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(load(e.to_string())),
        };
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(String::from)
                .ok_or_else(|| load("chat_template list has no \"default\" entry".into()))?,
            _ => return Ok(None),
        };
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source)
            .map_err(|e| load(format!("chat_template: {e}")))?;
        Ok(Some(Self {
            env,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
        }))
    }

    pub fn render(&self, messages: &[Message]) -> Result<String, EngineError> {
        let template = self.env.get_template("chat").map_err(|e| EngineError::Internal(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| EngineError::bad("messages", format!("the model's chat template refused these messages: {e}")))
    }
}
