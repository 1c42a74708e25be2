//! The edge's side of client connections: HTTP/1.1, read and written directly on the socket for
//! the requests that make up nearly all of an inference API's traffic (a head and a body of
//! known length), and handed to hyper for everything else (chunked or very large uploads,
//! `Expect: 100-continue`, upgrades, HTTP/1.0, heads that do not parse), which then serves the
//! rest of that connection. Either way each request goes through [`crate::handle`].

use crate::edge::Edge;
use crate::handle::{handle, handle_parts, RequestBody};
use crate::headers::has_token;
use crate::upstream::Span;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::BodyExt;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// Request heads larger than this, or with more header lines, go to hyper (which answers 431).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
pub(crate) const MAX_HEADERS: usize = 64;

/// Request bodies up to this size are read here; larger ones are streamed by hyper.
const MAX_BODY: u64 = 1024 * 1024;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// Room made for a body at a time: never the whole declared length before its bytes come.
const BODY_CHUNK: usize = 64 * 1024;

/// The answer to a client too slow with its request (a head past `head_timeout`, a body that
/// stalled past `body_timeout`).
fn timed_out() -> Vec<u8> {
    let body = r#"{"error":{"message":"the request did not arrive in time","type":"invalid_request_error","param":null,"code":"timeout"}}"#;
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How long a last answer may take to write, and the client's remaining bytes to drain.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes drained from a client after its last answer at most.
const LINGER_BYTES: usize = 256 * 1024;

/// Writes a last answer and closes the connection, first reading (and dropping) what the client
/// still sends, for up to `within` in all: a socket closed with unread bytes is reset by the
/// kernel, and the reset can destroy the answer before the client reads it.
pub(crate) async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, answer: &[u8], within: std::time::Duration) {
    let _ = tokio::time::timeout(within, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves one client connection until the client closes it, an error ends it, or `stop` turns
/// true (the request in flight is finished first).
pub async fn serve_connection<S>(edge: Arc<Edge>, mut stream: S, stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Made once: waiting on it again between requests costs no new registration.
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    let limits = edge.config.limits.clone();
    // One timer per connection, registered once and moved as little as possible: it is moved
    // earlier only when a head arrives in pieces or a body has to be waited for (both rare),
    // and when it fires before the deadline that applies now (the connection was busy since),
    // it is moved to that deadline. Between requests nothing is re-registered.
    let timer = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(timer);
    loop {
        // The idle time counts from the end of the last request (or the connection's start).
        let last_active = tokio::time::Instant::now();
        let mut head_deadline = None;
        let request = loop {
            match parse_request(&mut buf, edge.config.max_body as u64) {
                Parsed::Request(request) => break request,
                Parsed::Elsewhere => return serve_with_hyper(edge, stream, buf.freeze(), stop).await,
                Parsed::Partial => {}
            }
            buf.reserve(READ_CHUNK);
            let idle = buf.is_empty();
            if !idle && head_deadline.is_none() {
                let deadline = tokio::time::Instant::now() + limits.head_timeout;
                head_deadline = Some(deadline);
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            let wait = tokio::select! {
                read = stream.read_buf(&mut buf) => Wait::Read(read),
                // Between requests a stopping edge closes the connection at once; mid-request
                // it waits for the rest of the request.
                _ = &mut stopping, if idle => return,
                _ = &mut timer => Wait::Fired,
            };
            match wait {
                Wait::Read(Ok(0) | Err(_)) => return,
                Wait::Read(Ok(_)) => {}
                Wait::Fired => {
                    let due = head_deadline.unwrap_or(last_active + limits.idle_timeout);
                    if tokio::time::Instant::now() < due {
                        timer.as_mut().reset(due);
                        continue;
                    }
                    // Idle too long: closed quietly. A head too slow: told so, then closed.
                    if !idle {
                        answer_and_close(&mut stream, &timed_out(), LINGER).await;
                    }
                    return;
                }
            }
        };
        let Incoming {
            parts,
            body_len,
            keep_alive,
        } = request;
        // Read only when the body must be waited for: most come with their head.
        let mut progress = None;
        while (buf.len() as u64) < body_len {
            let since = *progress.get_or_insert_with(tokio::time::Instant::now);
            buf.reserve((body_len as usize - buf.len()).clamp(READ_CHUNK, BODY_CHUNK));
            if timer.deadline() > since + limits.body_timeout {
                timer.as_mut().reset(since + limits.body_timeout);
            }
            let wait = tokio::select! {
                read = stream.read_buf(&mut buf) => Wait::Read(read),
                _ = &mut timer => Wait::Fired,
            };
            match wait {
                Wait::Read(Ok(0) | Err(_)) => return,
                Wait::Read(Ok(_)) => progress = Some(tokio::time::Instant::now()),
                Wait::Fired if tokio::time::Instant::now() < since + limits.body_timeout => {
                    timer.as_mut().reset(since + limits.body_timeout);
                }
                Wait::Fired => {
                    answer_and_close(&mut stream, &timed_out(), LINGER).await;
                    return;
                }
            }
        }
        let body = buf.split_to(body_len as usize).freeze();
        let head_only = parts.method == Method::HEAD;
        let response = handle_parts(&edge, parts, RequestBody::Whole(body)).await;
        // The edge's own answer may ask to close (it refused how the request was framed).
        let closing = response.headers().get(header::CONNECTION).is_some_and(|v| v == "close");
        let keep_alive = keep_alive && !closing && !*stop.borrow();
        match write_response(&mut stream, response, head_only, keep_alive).await {
            Ok(true) if keep_alive => {}
            _ => return,
        }
    }
}

/// What a wait on a client connection came to.
enum Wait {
    Read(io::Result<usize>),
    /// The connection's timer fired; whether a deadline has passed is for the waiter to see.
    Fired,
}

/// Resolves once `stop` turns true; never, when its sender is gone without saying so.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A request head read here, and how much body follows it.
struct Incoming {
    parts: http::request::Parts,
    body_len: u64,
    keep_alive: bool,
}

// A request is what nearly every parse returns; boxing it would cost an allocation per request
// to save a move of a few hundred bytes in the rare other cases.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Incoming),
    /// More bytes are needed.
    Partial,
    /// Hyper serves this connection from here on.
    Elsewhere,
}

/// The next request head in `buf`, consumed from it when it can be served here.
fn parse_request(buf: &mut BytesMut, max_body: u64) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, method, path, count) = {
        let mut parsed = httparse::Request::new(&mut []);
        let len = match parsed.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
            _ => return Parsed::Elsewhere,
        };
        if parsed.version != Some(1) {
            return Parsed::Elsewhere;
        }
        let base = buf.as_ptr();
        for (span, line) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = Span::of(base, line);
        }
        let Ok(method) = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()) else {
            return Parsed::Elsewhere;
        };
        let path = parsed.path.unwrap_or_default();
        let start = path.as_ptr() as usize - base as usize;
        let path = (start, start + path.len());
        (len, method, path, parsed.headers.len())
    };
    if method == Method::CONNECT {
        return Parsed::Elsewhere;
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut body_len: Option<u64> = None;
    let mut keep_alive = true;
    for span in &spans[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[span.name()]),
            HeaderValue::from_maybe_shared(head.slice(span.value())),
        ) else {
            return rewind(buf, head);
        };
        if name == header::CONTENT_LENGTH {
            // Digits only (RFC 9112): Rust's parse would also take "+44", which a proxy in
            // front may read otherwise. Anything else goes to hyper, which refuses it.
            let digits = |v: &str| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
            match value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| digits(v))
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) if body_len.is_none_or(|l| l == n) => body_len = Some(n),
                _ => return rewind(buf, head),
            }
        } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return rewind(buf, head);
        } else if name == header::CONNECTION {
            if has_token(value.as_bytes(), b"upgrade") {
                return rewind(buf, head);
            }
            if has_token(value.as_bytes(), b"close") {
                keep_alive = false;
            }
        }
        headers.append(name, value);
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY.min(max_body) {
        return rewind(buf, head);
    }
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(path.0..path.1)) else {
        return rewind(buf, head);
    };
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Parsed::Request(Incoming {
        parts,
        body_len,
        keep_alive,
    })
}

/// What `parse_request` made of a buffer, for the fuzz target (`crate::fuzzing`).
pub(crate) enum FuzzVerdict {
    Request { body_len: u64, keep_alive: bool, head_len: usize },
    Partial,
    Elsewhere,
}

/// `parse_request` with its verdict laid bare for the fuzz target.
pub(crate) fn parse_for_fuzzing(buf: &mut BytesMut, max_body: u64) -> FuzzVerdict {
    let before = buf.len();
    match parse_request(buf, max_body) {
        Parsed::Request(request) => FuzzVerdict::Request {
            body_len: request.body_len,
            keep_alive: request.keep_alive,
            head_len: before - buf.len(),
        },
        Parsed::Partial => FuzzVerdict::Partial,
        Parsed::Elsewhere => FuzzVerdict::Elsewhere,
    }
}

/// Puts a head taken from `buf` back in front of it, for hyper to read.
fn rewind(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Elsewhere
}

/// Appends `HTTP/1.1 <code> <reason>` and its line end; 200, nearly every answer, is one copy.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `response` on the connection: its head, then its body frame by frame as the frames
/// come, coalescing those already there into one write. Returns whether the connection can
/// carry another request.
async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: axum::response::Response,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = hyper::body::Body::size_hint(&body).exact();
    let chunked = exact.is_none() && !bodiless;
    let mut out = Vec::with_capacity(1024);
    status_line(&mut out, status);
    let mut dated = false;
    for (name, value) in parts.headers.iter() {
        dated |= name == header::DATE;
        // The body's framing is this server's to state, except that the answer to a HEAD
        // keeps the length the machine gave for the body it did not send.
        if (name == header::CONTENT_LENGTH && !head_only) || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // An answer without a Date (the edge's own, or a machine's that sent none) gets one here,
    // as HTTP asks of a recipient with a clock that forwards a response.
    if !dated {
        let _ = write!(out, "date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    }
    match exact {
        Some(n) if !head_only && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        // A body known to be empty ends on its first poll, which returns its machine's
        // connection to the pool.
        let _ = body.frame().now_or_never();
        stream.write_all(&out).await?;
        return Ok(true);
    }
    let mut sent: u64 = 0;
    loop {
        // Frames already there go out with what is pending; a write happens only when the body
        // has to be waited for, or has ended.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if chunked {
                    let _ = write!(out, "{:x}\r\n", data.len());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(&data);
                }
                if out.len() >= 64 * 1024 {
                    stream.write_all(&out).await?;
                    out.clear();
                }
            }
            Some(Err(e)) => {
                // The client cannot be told in-band: close, so a cut body never looks whole.
                if !out.is_empty() {
                    let _ = stream.write_all(&out).await;
                }
                tracing::debug!(error = %e, "response body failed; closing the connection");
                return Ok(false);
            }
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    Ok(exact.is_none_or(|n| n == sent))
}

/// Hands the connection to hyper, with the bytes already read from it in front.
async fn serve_with_hyper<S>(edge: Arc<Edge>, stream: S, read: Bytes, stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head_timeout = edge.config.limits.head_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let edge = edge.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(edge, request.map(Body::new)).await) }
    });
    let io = hyper_util::rt::TokioIo::new(Rewind { read, stream });
    // The same limits as the fast path: hyper's header timeout needs its timer.
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(stop) => {
            // Finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind<S> {
    read: Bytes,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
