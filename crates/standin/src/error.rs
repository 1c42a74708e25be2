//! Errors: the stand-in's own (binding, serving) and the API's, with the one mapping of API errors
//! to HTTP statuses and to each flavour's error body.

use crate::config::Flavor;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// Why the stand-in could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("invalid command line: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("resolving --host {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("--host {host} resolves to no address")]
    NoAddress { host: String },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// An answer other than success to an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed; `param` names the field at fault.
    BadRequest { param: &'static str, message: String },
    /// The request names a model this engine does not serve.
    ModelNotFound { model: String },
    /// The endpoint does not exist in this configuration (as the real engine without the flag).
    NotFound(String),
    /// The endpoint exists but needs a flag the engine was not started with.
    NotImplemented(String),
    /// The engine is loading, asleep or otherwise unable to take the request now.
    Unavailable(String),
    /// The engine failed the request (injected failures, a dead engine, an aborted sequence).
    Internal(String),
}

impl ApiError {
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            param,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::ModelNotFound { model } => format!("The model `{model}` does not exist."),
            ApiError::NotFound(m) | ApiError::NotImplemented(m) | ApiError::Unavailable(m) | ApiError::Internal(m) => m.clone(),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { param, .. } => Some(param),
            ApiError::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// The error body in OpenAI's shape, `{"error":{"message","type","param","code"}}`, with the
    /// `type` names each engine uses (vLLM and SGLang name Python exception classes; llama-server
    /// uses OpenAI's own names) and the status as `code`, as all three do.
    pub fn body(&self, flavor: Flavor) -> serde_json::Value {
        let status = self.status();
        let kind = match (flavor, status.as_u16()) {
            (Flavor::Llama, 400) => "invalid_request_error",
            (Flavor::Llama, 404) => "not_found_error",
            (Flavor::Llama, 501) => "not_supported_error",
            (Flavor::Llama, 503) => "unavailable_error",
            (Flavor::Llama, _) => "server_error",
            (_, 400) => "BadRequestError",
            (_, 404) => "NotFoundError",
            (_, 501) => "NotImplementedError",
            (_, 503) => "ServiceUnavailableError",
            (_, _) => "InternalServerError",
        };
        serde_json::json!({"error": {"message": self.message(), "type": kind, "param": self.param(), "code": status.as_u16()}})
    }

    pub fn respond(&self, flavor: Flavor) -> Response {
        (self.status(), axum::Json(self.body(flavor))).into_response()
    }
}
