//! Server-sent events while a streaming request waits: the client gets its stream at once, with
//! `: waiting` comments until a machine answers, then the machine's events, or one error event.

use crate::edge::Edge;
use crate::error::error_event;
use crate::respond::{respond, Answered};
use crate::EdgeError;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;

/// A spawned request that is cancelled when the client goes away.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<Result<Answered, EdgeError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a spawned request's task came to: its answer, or an internal error if the task itself
/// failed (it panicked or the runtime is shutting down).
pub(crate) fn joined(result: Result<Result<Answered, EdgeError>, tokio::task::JoinError>) -> Result<Answered, EdgeError> {
    result.map_err(|e| EdgeError::Internal(format!("the request's task failed: {e}")))?
}

/// The response of a streaming request still waiting for a machine: `: waiting` comments every
/// keep-alive interval, then the machine's events as they come, or one error event if it
/// never answers.
pub(crate) fn held_stream(edge: Arc<Edge>, mut sending: AbortOnDrop) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(edge.config.sse_keepalive);
        let held_since = tokio::time::Instant::now() - edge.config.sse_keepalive;
        let answered = loop {
            tokio::select! {
                result = &mut sending.0 => break joined(result),
                _ = ticks.tick() => {
                    let comment = format!(": waiting for a machine ({:.1}s)\n\n", held_since.elapsed().as_secs_f64());
                    if tx.send(Ok(Bytes::from(comment))).await.is_err() {
                        return; // the client left; dropping `sending` cancels the request
                    }
                }
            }
        };
        match answered {
            Ok(answered) if answered.response.status().is_success() => {
                let mut body = respond(answered).into_body();
                while let Some(frame) = body.frame().await {
                    let Ok(Some(data)) = frame.map(|f| f.into_data().ok()) else { break };
                    if tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(answered) => {
                let status = answered.response.status();
                let bytes = answered
                    .response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = format!("the machine answered {status}: {}", String::from_utf8_lossy(&bytes));
                let _ = tx.send(Ok(error_event(&message, "upstream_error", None))).await;
            }
            Err(e) => {
                let _ = tx.send(Ok(error_event(&e.to_string(), "unavailable_error", None))).await;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
