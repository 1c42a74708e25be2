//! Edge errors: where each came from, and the one mapping to OpenAI-style HTTP bodies.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("request body is {size} bytes; the limit is {limit} bytes")]
    BodyTooLarge { size: u64, limit: usize },
    #[error("reading the request body: {0}")]
    BodyRead(String),
    #[error("request body is not valid JSON ({reason}); the edge needs its \"model\" field to route it, or a Host of <app>.{domain}")]
    BadJson { reason: String, domain: String },
    #[error("request has no \"model\" field naming the app; set it, or send Host: <app>.{domain}")]
    NoModel { domain: String },
    #[error("app {app:?} not found; apps: {}", if apps.is_empty() { "(none deployed)".to_string() } else { apps.join(", ") })]
    UnknownApp { app: String, apps: Vec<String> },
    #[error("every machine of app {app:?} ({machines}) is cordoned out of routing; uncordon one through the machines API")]
    Cordoned { app: String, machines: u32 },
    #[error("no machine of app {app:?} had room within {secs}s")]
    NoMachine { app: String, secs: u64 },
    #[error("no machine of app {app:?} can start now: {reasons}")]
    CannotStart { app: String, reasons: String },
    #[error("app {app:?} already has {limit} requests waiting for a machine; try again shortly")]
    QueueFull { app: String, limit: u32 },
    #[error("a valid API key is required: send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("app {app:?} not found; this key is for: {}", keys_apps.join(", "))]
    NotFound { app: String, keys_apps: Vec<String> },
    #[error("rate limit of {limit} {what} reached for this key; retry in {retry_after_s}s")]
    RateLimited {
        what: &'static str,
        limit: u32,
        retry_after_s: u64,
    },
    #[error("no machine in region {region:?} for this request; regions with machines: {}", regions.join(", "))]
    NoRegion { region: String, regions: Vec<String> },
    #[error("machine {machine} at {addr} failed: {reason}")]
    Upstream { machine: String, addr: String, reason: String },
    #[error("machine {machine} did not start its answer within {secs}s")]
    UpstreamTimeout { machine: String, secs: f64 },
    #[error("{path} is the engine's own control endpoint; the edge does not pass it on")]
    EnginePath { path: String },
    #[error("{path} takes {allow} only")]
    MethodNotAllowed { path: String, allow: &'static str },
    #[error("no endpoint {path}: the edge serves POST /v1/chat/completions, /v1/completions and /v1/embeddings, GET /v1/models, and any path of an app named in the Host (<app>.{domain})")]
    UnknownEndpoint { path: String, domain: String },
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// Checked before a request is held or wakes a machine.
    #[error("{0}")]
    BadParam(colo_core::openai::BadParam),
    #[error("this endpoint needs the cluster token")]
    AdminToken,
    #[error("the edge failed: {0}")]
    Internal(String),
}

impl EdgeError {
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::BodyRead(_)
            | EdgeError::BadJson { .. }
            | EdgeError::NoModel { .. }
            | EdgeError::DuplicateHost
            | EdgeError::BadParam(_) => StatusCode::BAD_REQUEST,
            EdgeError::UnknownApp { .. }
            | EdgeError::NotFound { .. }
            | EdgeError::EnginePath { .. }
            | EdgeError::UnknownEndpoint { .. } => StatusCode::NOT_FOUND,
            EdgeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            EdgeError::Unauthorized | EdgeError::AdminToken => StatusCode::UNAUTHORIZED,
            EdgeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::NoMachine { .. }
            | EdgeError::CannotStart { .. }
            | EdgeError::QueueFull { .. }
            | EdgeError::NoRegion { .. }
            | EdgeError::Cordoned { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            EdgeError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            EdgeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            EdgeError::BodyTooLarge { .. } => "body_too_large",
            EdgeError::BodyRead(_) => "body_read_failed",
            EdgeError::BadJson { .. } => "invalid_json",
            EdgeError::NoModel { .. } => "missing_model",
            EdgeError::DuplicateHost => "duplicate_host",
            EdgeError::BadParam(bad) => bad.code,
            EdgeError::UnknownApp { .. } | EdgeError::NotFound { .. } => "model_not_found",
            EdgeError::Unauthorized => "invalid_api_key",
            EdgeError::RateLimited { .. } => "rate_limit_exceeded",
            EdgeError::NoMachine { .. } => "no_machine_available",
            EdgeError::CannotStart { .. } => "no_machine_can_start",
            EdgeError::Cordoned { .. } => "machines_cordoned",
            EdgeError::QueueFull { .. } => "queue_full",
            EdgeError::NoRegion { .. } => "no_machine_in_region",
            EdgeError::Upstream { .. } => "upstream_failed",
            EdgeError::UpstreamTimeout { .. } => "upstream_timeout",
            EdgeError::EnginePath { .. } | EdgeError::UnknownEndpoint { .. } => "unknown_endpoint",
            EdgeError::MethodNotAllowed { .. } => "method_not_allowed",
            EdgeError::AdminToken => "unauthorized",
            EdgeError::Internal(_) => "internal_error",
        }
    }

    /// Where the failure came from, for metrics and logs.
    pub fn source_label(&self) -> &'static str {
        match self {
            EdgeError::Upstream { .. } | EdgeError::UpstreamTimeout { .. } => "upstream",
            EdgeError::Internal(_) => "internal",
            EdgeError::NoMachine { .. }
            | EdgeError::CannotStart { .. }
            | EdgeError::QueueFull { .. }
            | EdgeError::NoRegion { .. }
            | EdgeError::Cordoned { .. } => "capacity",
            _ => "client",
        }
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = match (status.as_u16(), &self) {
            // OpenAI names the limit that was reached.
            (429, EdgeError::RateLimited { what, .. }) if what.contains("token") => "tokens",
            (429, _) => "requests",
            (400..=499, _) => "invalid_request_error",
            (502 | 504, _) => "upstream_error",
            (500, _) => "internal_error",
            _ => "unavailable_error",
        };
        let param = match &self {
            EdgeError::BadParam(bad) => bad.param.as_deref(),
            _ => None,
        };
        let body = serde_json::json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": self.code()}});
        let mut response = (status, [("content-type", "application/json")], body.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
        }
        if let EdgeError::MethodNotAllowed { allow, .. } = &self {
            response.headers_mut().insert("allow", HeaderValue::from_static(allow));
        }
        if let EdgeError::RateLimited { retry_after_s, .. } = &self {
            if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}

/// One SSE `data:` event carrying an OpenAI-style error, for a stream already under way.
pub(crate) fn error_event(message: &str, kind: &str, code: Option<&str>) -> bytes::Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    bytes::Bytes::from(format!("data: {body}\n\n"))
}
