//! The client's response: the machine's head with hop-by-hop headers dropped and colo's added,
//! and its body passed through frame by frame, counted in flight until it ends.

use crate::edge::Edge;
use crate::error::error_event;
use crate::headers::{COLO_COLD_START, COLO_LOAD, COLO_MACHINE, COLO_REGION};
use crate::routes::Endpoint;
use crate::upstream;
use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::gauge::Gauge;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// What came back from a machine: the response head and body, still counted in flight.
pub(crate) struct Answered {
    /// The machine's cold start, when it started for this request.
    pub woke: Option<colo_core::ColdStart>,
    pub endpoint: Arc<Endpoint>,
    pub guard: InFlight,
    pub response: http::Response<upstream::Body>,
}

/// The client's response to an answered request.
pub(crate) fn respond(answered: Answered) -> Response {
    let Answered {
        woke,
        endpoint,
        guard,
        response,
    } = answered;
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The engine's load report is for edges, not callers: it shows the machine's queue.
    parts.headers.remove(COLO_LOAD);
    if let Some(cold) = woke {
        // The request that woke a machine says what the wait was made of.
        let value = format!(
            "queued={};hydrate={};engine_load={};first_response={};weights={}",
            cold.queued_ms,
            cold.hydrate_ms,
            cold.engine_load_ms,
            cold.first_response_ms,
            cold.source()
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(COLO_COLD_START, value);
        }
    }
    parts.headers.insert(COLO_MACHINE, endpoint.machine_header.clone());
    parts.headers.insert(COLO_REGION, endpoint.region_header.clone());
    let is_sse = is_event_stream(&parts.headers);
    let body = Body::new(Tracked {
        inner: incoming,
        _guard: guard,
        sse_machine: is_sse.then(|| endpoint.machine_id.clone()),
        partial: BytesMut::new(),
        done: false,
    });
    Response::from_parts(parts, body)
}

/// Whether a response is a stream of server-sent events.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Headers that describe one connection rather than the message (RFC 9110's fixed list); a
/// message's `Connection` header may name more (see [`nominated`]).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-authenticate" | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    )
}

/// The headers a message's `Connection` header names as hop-by-hop, beyond the fixed list.
pub(crate) fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect()
}

/// Drops the headers that describe one connection rather than the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut names: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    names.extend(nominated(headers));
    for name in names {
        headers.remove(name);
    }
}

/// Counts a request as in flight to its machine until the response body is done or dropped,
/// then wakes held requests: a machine at its hard limit may have room again.
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
    /// The edge's in-flight gauge.
    gauge: Gauge,
    released: Arc<Notify>,
    /// When the request ended will be stamped on the edge's clock, which starts here.
    clock: tokio::time::Instant,
}

// === impl InFlight ===

impl InFlight {
    pub(crate) fn new(endpoint: Arc<Endpoint>, edge: &Edge) -> Self {
        // A machine with requests in flight is busy whatever its last-active stamp says; the
        // stamp is set when the request ends.
        endpoint.load.in_flight.fetch_add(1, Ordering::SeqCst);
        edge.metrics.in_flight.inc();
        Self {
            endpoint,
            gauge: edge.metrics.in_flight.clone(),
            released: edge.released.clone(),
            clock: edge.instant_at(1),
        }
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let load = &self.endpoint.load;
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now_ms = tokio::time::Instant::now().saturating_duration_since(self.clock).as_millis() as u64 + 1;
        load.last_active_ms.store(now_ms, Ordering::Relaxed);
        self.gauge.dec();
        self.released.notify_waiters();
    }
}

/// A stream's bytes held back without an event's end this long are passed on anyway: the
/// machine is not sending events.
const MAX_PARTIAL_EVENT: usize = 1024 * 1024;

/// A response body that holds its request's in-flight count until it ends. Frames pass
/// through as they arrive, except that a stream of server-sent events is passed on in whole
/// events: the bytes after the last blank line wait for the rest of their event (engines write
/// an event at a time, so this holds back only what a TCP read split), so that an error event
/// after a machine's failure is never glued to half an event.
struct Tracked<B> {
    inner: B,
    _guard: InFlight,
    /// For server-sent events: the machine that the error event names if the stream breaks.
    sse_machine: Option<String>,
    /// For server-sent events: what came after the last whole event.
    partial: BytesMut,
    /// Set once the stream has ended, cleanly or with an error event.
    done: bool,
}

/// The offset just past the last blank line (`\n\n` or `\n\r\n`) in `bytes`: the end of its
/// last whole event.
fn events_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes.windows(3).rposition(|w| w == b"\n\r\n").map(|i| i + 3);
    lf.max(crlf)
}

impl<B> Tracked<B> {
    /// The whole events `data` completes, if any; the rest waits in `partial`.
    fn whole_events(&mut self, data: Bytes) -> Option<Bytes> {
        if self.partial.is_empty() && (data.ends_with(b"\n\n") || data.ends_with(b"\n\r\n")) {
            return Some(data);
        }
        self.partial.extend_from_slice(&data);
        let end = match events_end(&self.partial) {
            Some(end) => end,
            None if self.partial.len() > MAX_PARTIAL_EVENT => self.partial.len(),
            None => return None,
        };
        Some(self.partial.split_to(end).freeze())
    }
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if self.sse_machine.is_some() => match frame.into_data() {
                    Ok(data) => match self.whole_events(data) {
                        Some(events) => Poll::Ready(Some(Ok(hyper::body::Frame::data(events)))),
                        None => continue,
                    },
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                // A stream whose machine died mid-way ends with an error event the client can
                // see, never with a silent cut that looks like a finished answer; half an event
                // it had sent is dropped, so the error event stands alone.
                Poll::Ready(Some(Err(e))) if self.sse_machine.is_some() => {
                    self.done = true;
                    self.partial.clear();
                    let machine = self.sse_machine.take().unwrap_or_default();
                    let message = format!("machine {machine} failed mid-stream: {e}");
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(error_event(
                        &message,
                        "upstream_error",
                        Some("upstream_failed"),
                    )))))
                }
                Poll::Ready(None) => {
                    self.done = true;
                    // A machine that ended cleanly without a last blank line: its bytes go as
                    // they are.
                    match self.partial.is_empty() {
                        true => Poll::Ready(None),
                        false => Poll::Ready(Some(Ok(hyper::body::Frame::data(self.partial.split().freeze())))),
                    }
                }
                other => other,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_after_the_last_blank_line() {
        let cases: [(&[u8], Option<usize>); 6] = [
            (b"data: a\n\n", Some(9)),
            (b"data: a\n\ndata: b", Some(9)),
            (b"data: a\r\n\r\ndata: b\r\n", Some(11)),
            (b"data: a\n", None),
            (b"", None),
            (b"data: a\n\ndata: b\n\ndata: c\n", Some(18)),
        ];
        for (bytes, want) in cases {
            assert_eq!(events_end(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-session, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-session", "abc"),
            ("content-type", "text/plain"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["content-type"]);
    }
}
