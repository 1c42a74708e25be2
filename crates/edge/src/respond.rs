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
use http::{header, HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    /// For completions: counts the answer's tokens and times its first one.
    pub meter: Option<TokenMeter>,
    /// The app's count of bytes answered to callers.
    pub egress: Counter,
}

/// The client's response to an answered request.
pub(crate) fn respond(answered: Answered) -> Response {
    let Answered {
        woke,
        endpoint,
        guard,
        response,
        meter,
        egress,
    } = answered;
    // (The hop-by-hop headers were left out when the machine's head was read.)
    let (mut parts, incoming) = response.into_parts();
    // The engine's load report is for edges, not callers: it shows the machine's queue.
    parts.headers.remove(COLO_LOAD);
    if let Some(cold) = woke {
        // The request that woke a machine says what the wait was made of.
        let value = format!(
            "queued={};hydrate={};engine_load={};overlap={};first_response={};weights={}",
            cold.queued_ms,
            cold.hydrate_ms,
            cold.engine_load_ms,
            cold.overlap_ms,
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
        meter,
        egress: Egress { counter: egress, bytes: 0 },
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
    meter: Option<TokenMeter>,
    egress: Egress,
}

/// Bytes passed on to the caller, added to the app's counter once, when the body ends or is
/// dropped.
struct Egress {
    counter: Counter,
    bytes: u64,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.counter.inc_by(self.bytes);
    }
}

/// The longest `"completion_tokens": N` (with room for spaces) that a body's frame boundary
/// may cut in two: this much of one frame is kept to be searched with the next.
const USAGE_TAIL: usize = 48;

/// Counts the tokens of one completion's answer as it passes, and times its first: for a stream
/// of events, each event that carries text is a token (engines send one per event) unless a
/// usage report says how many there were; for a whole answer, its usage's `completion_tokens`.
/// The count is added when the body ends or is dropped.
pub(crate) struct TokenMeter {
    arrived: tokio::time::Instant,
    /// Taken when the first text event is seen.
    first_token: Option<Histogram>,
    tokens: Counter,
    events: u64,
    usage: Option<u64>,
    /// The end of the last frame of a whole answer, searched again with the next frame.
    tail: Vec<u8>,
}

impl TokenMeter {
    pub(crate) fn new(arrived: tokio::time::Instant, first_token: Histogram, tokens: Counter) -> Self {
        Self {
            arrived,
            first_token: Some(first_token),
            tokens,
            events: 0,
            usage: None,
            tail: Vec::new(),
        }
    }

    /// Whole server-sent events, as they go to the client.
    fn events(&mut self, bytes: &[u8]) {
        for line in bytes.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else { continue };
            if let Some(n) = completion_tokens(data) {
                self.usage = Some(n);
            }
            if carries_text(data) {
                self.events += 1;
                if let Some(histogram) = self.first_token.take() {
                    histogram.observe(self.arrived.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// A frame of a whole (not streamed) answer: searched itself, and where it meets the frames
    /// before it (only the ends are copied, however large the frame).
    fn body(&mut self, bytes: &[u8]) {
        let seam = self.tail.len();
        self.tail.extend_from_slice(&bytes[..bytes.len().min(USAGE_TAIL)]);
        let found = completion_tokens(bytes).or_else(|| completion_tokens(&self.tail).filter(|_| seam > 0));
        if let Some(n) = found {
            self.usage = Some(n);
        }
        if bytes.len() >= USAGE_TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - USAGE_TAIL..]);
        } else {
            let keep = self.tail.len().min(USAGE_TAIL);
            self.tail.drain(..self.tail.len() - keep);
        }
    }
}

impl Drop for TokenMeter {
    fn drop(&mut self) {
        self.tokens.inc_by(self.usage.unwrap_or(self.events));
    }
}

/// Where the value starts when `bytes[i..]` is a colon between optional spaces (what follows a
/// JSON key); `None` when it is not.
fn value_at(bytes: &[u8], mut i: usize) -> Option<usize> {
    let skip = |mut i: usize| {
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    i = skip(i);
    (bytes.get(i) == Some(&b':')).then(|| skip(i + 1))
}

/// Where the value of the last `"key":` in `bytes` starts.
fn after_key(bytes: &[u8], key: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while let Some(at) = memchr::memmem::rfind(&bytes[..end], key) {
        if let Some(i) = value_at(bytes, at + key.len()) {
            return Some(i);
        }
        end = at;
    }
    None
}

/// The last `"completion_tokens": N` in `bytes`, if whole.
pub(crate) fn completion_tokens(bytes: &[u8]) -> Option<u64> {
    let start = after_key(bytes, b"\"completion_tokens\"")?;
    let digits = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    // Digits running to the end may continue in the next frame.
    if digits == 0 || start + digits == bytes.len() {
        return None;
    }
    std::str::from_utf8(&bytes[start..start + digits]).ok()?.parse().ok()
}

/// Whether an event's data carries generated text: a non-empty `content`, `text` or
/// `reasoning_content` string (a chunk that only opens the message or reports usage does not).
pub(crate) fn carries_text(data: &[u8]) -> bool {
    [&b"\"content\""[..], b"\"text\"", b"\"reasoning_content\""]
        .iter()
        .any(|key| text_after(data, key))
}

/// Whether some `"key": "` in `data` opens a non-empty string.
fn text_after(data: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = memchr::memmem::find(&data[from..], key) {
        from += at + key.len();
        if value_at(data, from).is_some_and(|i| data.get(i) == Some(&b'"') && data.get(i + 1).is_some_and(|&b| b != b'"')) {
            return true;
        }
    }
    false
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
                        Some(events) => {
                            if let Some(meter) = &mut self.meter {
                                meter.events(&events);
                            }
                            self.egress.bytes += events.len() as u64;
                            Poll::Ready(Some(Ok(hyper::body::Frame::data(events))))
                        }
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
                        false => {
                            let rest = self.partial.split().freeze();
                            if let Some(meter) = &mut self.meter {
                                meter.events(&rest);
                            }
                            self.egress.bytes += rest.len() as u64;
                            Poll::Ready(Some(Ok(hyper::body::Frame::data(rest))))
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.egress.bytes += data.len() as u64;
                        if let Some(meter) = &mut self.meter {
                            meter.body(data);
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
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
    fn usage_and_text_events_are_found_in_engines_answers() {
        assert_eq!(
            completion_tokens(br#"{"usage":{"prompt_tokens":5,"completion_tokens":17,"total_tokens":22}}"#),
            Some(17)
        );
        assert_eq!(completion_tokens(br#"{"usage": {"completion_tokens" : 3 }}"#), Some(3));
        // Digits at the very end may go on in the next frame; a key without a colon is no key.
        assert_eq!(completion_tokens(br#""completion_tokens":12"#), None);
        assert_eq!(completion_tokens(br#"{"completion_tokens" 4,"x":1}"#), None);
        assert_eq!(completion_tokens(br#"{"x":"completion_tokens"}"#), None);
        // vLLM's and OpenAI's first chunk opens the message with empty content: not a token.
        assert!(!carries_text(br#" {"choices":[{"delta":{"role":"assistant","content":""}}]}"#));
        assert!(carries_text(br#" {"choices":[{"delta":{"content":"Hi"}}]}"#));
        assert!(carries_text(br#" {"choices":[{"text": " the","index":0}]}"#));
        assert!(carries_text(br#" {"choices":[{"delta":{"reasoning_content":"hm"}}]}"#));
        assert!(!carries_text(b" [DONE]"));
        assert!(!carries_text(br#" {"choices":[],"usage":{"completion_tokens":2}}"#));
    }

    #[tokio::test]
    async fn a_meter_counts_text_events_or_the_usage_and_times_the_first() {
        let tokens = Counter::default();
        let first = Histogram::new([0.5, 10.0].into_iter());
        let mut meter = TokenMeter::new(tokio::time::Instant::now(), first.clone(), tokens.clone());
        meter.events(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        meter.events(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n");
        meter.events(b"data: [DONE]\n\n");
        drop(meter);
        assert_eq!(tokens.get(), 2, "two events carried text");
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("ttft", "", first);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ttft_count 1"), "{text}");

        // A usage report wins over counting events; a whole answer's usage is found across frames.
        let mut meter = TokenMeter::new(tokio::time::Instant::now(), Histogram::new([1.0].into_iter()), tokens.clone());
        meter.events(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":40}}\n\n",
        );
        drop(meter);
        assert_eq!(tokens.get(), 42);
        let mut meter = TokenMeter::new(tokio::time::Instant::now(), Histogram::new([1.0].into_iter()), tokens.clone());
        meter.body(br#"{"choices":[{"message":{"content":"hello"}}],"usage":{"completion_to"#);
        meter.body(br#"kens":1"#);
        meter.body(br#"5}}"#);
        drop(meter);
        assert_eq!(tokens.get(), 57);
    }
}
