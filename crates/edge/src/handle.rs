//! The request path: the edge's own endpoints, or find the app, check its key, send the request
//! to a machine (holding it while one starts) and stream the answer back.

use crate::admin;
use crate::body::read_body;
use crate::edge::Edge;
use crate::metrics::{ErrorLabels, RequestLabels, NO_APP};
use crate::request::{app_from_host, is_engine_path, wrong_endpoint, RequestFacts};
use crate::respond::respond;
use crate::routes::Endpoint;
use crate::send::{send, Outgoing};
use crate::sse::{held_stream, joined, AbortOnDrop};
use crate::EdgeError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use std::sync::Arc;

/// The edge's whole HTTP surface: its own endpoints, and everything else proxied.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .fallback(|State(edge): State<Arc<Edge>>, request: Request| handle(edge, request))
        .with_state(edge)
}

/// Answers one request: the edge's own endpoints, or the app's machine's answer. What `router`
/// serves, for servers that drive connections themselves.
pub async fn handle(edge: Arc<Edge>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    handle_parts(&edge, parts, RequestBody::Stream(body)).await
}

/// A request's body: still to come (hyper's connections), or already read whole, within the
/// edge's body limit (its own HTTP/1.1 connections).
pub(crate) enum RequestBody {
    Stream(Body),
    Whole(Bytes),
}

/// [`handle`] for a request taken apart.
pub(crate) async fn handle_parts(edge: &Arc<Edge>, parts: Parts, body: RequestBody) -> Response {
    // Two Hosts (RFC 9112 says 400): a proxy in front may route by the other one.
    // The connection closes after the answer: what follows on it was framed by a request the
    // edge would not read.
    if parts.headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        let mut response = EdgeError::DuplicateHost.into_response();
        response
            .headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return response;
    }
    let host_app = app_from_host(&parts.headers, &parts.uri, &edge.config.domain);
    if host_app.is_none() {
        if let Some(response) = admin::answer(edge, &parts) {
            return response;
        }
    }
    let arrived = tokio::time::Instant::now();
    let (app, response) = match proxy(edge, host_app, parts, body, arrived).await {
        Ok((app, response, Some(endpoint))) if response.status() == http::StatusCode::OK => {
            // Most answers: counted through the handles the machine's endpoint keeps.
            let series = endpoint.series(&edge.metrics, &app);
            series.ok_seconds.observe(arrived.elapsed().as_secs_f64());
            series.ok_requests.inc();
            return response;
        }
        Ok((app, response, _)) => (app, response),
        Err((app, err)) => {
            if err.status().is_server_error() {
                tracing::warn!(app = %app, error = %err, "request failed");
            }
            // Labels name only apps that exist (`proxy` already gives `-` for the failures
            // before the app is known): a made-up name would add series for ever.
            let app = if matches!(err, EdgeError::UnknownApp { .. } | EdgeError::NotFound { .. }) {
                NO_APP.to_string()
            } else {
                app
            };
            edge.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    app: app.clone(),
                    source: err.source_label().into(),
                })
                .inc();
            (app, err.into_response())
        }
    };
    let region = response
        .headers()
        .get(crate::headers::COLO_REGION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(NO_APP)
        .to_string();
    let labels = RequestLabels {
        app,
        region,
        status: response.status().as_u16(),
    };
    edge.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(arrived.elapsed().as_secs_f64());
    edge.metrics.requests.get_or_create(&labels).inc();
    response
}

/// The app and its answer, with the endpoint of the machine that gave it when one did; or the
/// app (`-` before it is known) and why there is no answer.
type ProxyResult = Result<(String, Response, Option<Arc<Endpoint>>), (String, EdgeError)>;

async fn proxy(edge: &Arc<Edge>, host_app: Option<String>, parts: Parts, body: RequestBody, arrived: tokio::time::Instant) -> ProxyResult {
    let unknown = || NO_APP.to_string();
    if is_engine_path(parts.uri.path()) {
        let path = parts.uri.path().to_string();
        return Err((unknown(), EdgeError::EnginePath { path }));
    }
    let body = match body {
        RequestBody::Whole(body) if body.len() > edge.config.max_body => {
            let (size, limit) = (body.len() as u64, edge.config.max_body);
            return Err((unknown(), EdgeError::BodyTooLarge { size, limit }));
        }
        RequestBody::Whole(body) => body,
        RequestBody::Stream(body) => read_body(&parts.headers, body, edge.config.max_body, edge.config.limits.body_timeout)
            .await
            .map_err(|e| (unknown(), e))?,
    };
    let (app, facts) = match host_app {
        // The Host named the app: the body need not be JSON at all.
        Some(app) => (app, RequestFacts::parse(&body).unwrap_or_default()),
        // A body that names no app: the method or path may say why better than the body can.
        None => RequestFacts::app(&body, &edge.config.domain).map_err(|e| {
            let better = wrong_endpoint(&parts.method, parts.uri.path(), &edge.config.domain);
            (unknown(), better.unwrap_or(e))
        })?,
    };
    let is_llm = parts.uri.path().ends_with("completions");
    let table = edge.routes.borrow().clone();
    if let Err(e) = edge.authorize(&table, &app, &parts.headers, is_llm.then(|| facts.llm_tokens(body.len()))) {
        return Err((app, e));
    }
    let streaming = is_llm && facts.stream;
    let outgoing = Outgoing {
        arrived_ms: edge.wall_ms_at(arrived),
        arrived,
        llm: is_llm,
        prefix: if is_llm { facts.prefix(&app) } else { Vec::new() },
        app: app.clone(),
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: parts.headers,
        body,
    };
    if !streaming || edge.config.sse_keepalive.is_zero() {
        return answer(app, send(edge, &outgoing, Some(table)).await);
    }
    // A streaming client that has to wait for a machine gets its stream at once, with SSE
    // comments as keep-alives until the machine answers.
    let spawned = edge.clone();
    let mut sending = AbortOnDrop(tokio::spawn(async move { send(&spawned, &outgoing, Some(table)).await }));
    tokio::select! {
        result = &mut sending.0 => answer(app, joined(result)),
        _ = tokio::time::sleep(edge.config.sse_keepalive) => Ok((app, held_stream(edge.clone(), sending), None)),
    }
}

/// The client's answer to `app`'s request from what its machine sent, with that machine's
/// endpoint (whose handles count the answer).
fn answer(app: String, sent: Result<crate::respond::Answered, EdgeError>) -> ProxyResult {
    match sent {
        Ok(answered) => {
            let endpoint = answered.endpoint.clone();
            Ok((app, respond(answered), Some(endpoint)))
        }
        Err(e) => Err((app, e)),
    }
}
