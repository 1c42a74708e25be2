//! Engine errors and their one mapping to OpenAI-style HTTP error bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{file}: {reason}")]
    Load { file: String, reason: String },
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("the engine is overloaded: {0}")]
    Overloaded(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        EngineError::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
            code: "invalid_value",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            EngineError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            EngineError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Load { .. } | EngineError::Inference(_) | EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Inference(e.to_string())
    }
}

/// The body OpenAI's API returns on errors: `{"error":{"message","type","param","code"}}`.
pub fn error_body(status: StatusCode, message: &str, param: Option<&str>, code: &str) -> Response {
    let kind = match status.as_u16() {
        400..=499 => "invalid_request_error",
        503 => "overloaded_error",
        _ => "server_error",
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (param, code) = match &self {
            EngineError::BadRequest { param, code, .. } => (param.clone(), *code),
            EngineError::Overloaded(_) => (None, "overloaded"),
            _ => (None, "internal_error"),
        };
        error_body(status, &self.to_string(), param.as_deref(), code)
    }
}
