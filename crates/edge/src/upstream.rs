//! Connections from the edge to machines: HTTP/1.1 spoken directly on the socket, kept alive
//! and reused. The request's own task writes the request and reads the answer, so a proxied
//! request costs no extra task, channel or header map on the way out.
//!
//! Each thread keeps its own idle connections: a request and the connection that carries it are
//! driven by the same thread, and taking or returning one is a thread-local push or pop, not a
//! lock. A connection goes back to its thread's pool when the response body has been read to
//! its end; a response dropped half-read takes its connection with it (HTTP/1.1 cannot reuse
//! it).

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Idle connections kept per machine address and thread at most; more are closed.
const IDLE_PER_ADDR: usize = 512;

/// Pooled connections idle longer than this are closed rather than reused: engines close idle
/// keep-alive connections after 5 s or more (uvicorn, which vLLM and SGLang run, and
/// llama-server's httplib), so a connection reused within this time was not closed by a
/// keep-alive timeout, and one that closes without answering means the machine failed, with
/// the request perhaps executed.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// Returns between sweeps of closed connections to machines that are gone.
const SWEEP_EVERY: u32 = 4096;

/// The largest response head a machine may send, and the most header lines in it.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Bodies up to this size go out in the same write as the request head.
const COPY_BODY: usize = 64 * 1024;

/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4096;

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Conn>, AddrHash>> = RefCell::new(HashMap::default());
    static RETURNS: Cell<u32> = const { Cell::new(0) };
}

/// The pool's hash of machine addresses: FNV, a few nanoseconds for a `host:port` (the default
/// SipHash guards against chosen keys, and these keys are the route table's).
type AddrHash = fnv::FnvBuildHasher;

/// Why a request did not get a response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made: the request was not sent.
    Connect(String),
    /// The request may have reached the machine.
    Sent(String),
    /// The machine took longer than the head timeout to start its answer.
    HeadTimeout,
}

/// An open connection to a machine and the bytes read from it but not yet used.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    addr: Arc<str>,
    /// The response-head timer, registered once per connection and moved only when it fires
    /// before the deadline of the exchange under way (see `exchange`).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When it was last put back in the pool.
    idle_since: tokio::time::Instant,
}

impl Conn {
    fn release(mut self) {
        self.idle_since = tokio::time::Instant::now();
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let sweep = RETURNS.with(|n| {
                n.set(n.get().wrapping_add(1));
                n.get() % SWEEP_EVERY == 0
            });
            if sweep {
                idle.retain(|_, conns| {
                    conns.retain(|c| !c.closed());
                    !conns.is_empty()
                });
            }
            let conns = idle.entry(self.addr.clone()).or_default();
            if conns.len() < IDLE_PER_ADDR {
                conns.push(self);
            }
        });
    }

    /// Whether the machine has closed this idle connection (or sent on it unasked). Asks the
    /// runtime what the socket last reported, so checking a live connection costs no syscall.
    fn closed(&self) -> bool {
        match self.stream.ready(Interest::READABLE).now_or_never() {
            None => false,
            Some(Ok(ready)) => ready.is_read_closed() || ready.is_error(),
            Some(Err(_)) => true,
        }
    }
}

/// A request to a machine as it goes on the wire: its head, with the body appended when the
/// body is small (one buffer, one write), else the body on its own.
pub(crate) struct Wire {
    bytes: Vec<u8>,
    body: Option<Bytes>,
}

/// A request to a machine: `Host` is the machine's, and `Content-Length` is always set from
/// the body.
pub(crate) fn request<'a>(
    method: &Method,
    path: &str,
    host: &HeaderValue,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body: &Bytes,
) -> Wire {
    let inline = body.len() <= COPY_BODY;
    let mut head = Vec::with_capacity(512 + if inline { body.len() } else { 0 });
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    if inline {
        head.extend_from_slice(body);
    }
    Wire {
        bytes: head,
        body: (!inline).then(|| body.clone()),
    }
}

/// Sends a request (from [`request`]) to the machine at `addr` on an idle connection of this
/// thread, or on a new one, and reads the response head.
///
/// A pooled connection that the machine closed while it sat idle is dropped and the next one
/// tried. One that the machine closes without a byte of answer is tried again on another
/// connection only for an idempotent request: pooled connections are reused only within
/// `POOL_IDLE`, well inside engines' keep-alive timeouts, so such a close means the machine
/// failed with the request perhaps executed, and a POST must not run twice.
/// A machine that sends no response head within `head_timeout` of the request is given up on
/// (`SendError::HeadTimeout`).
/// A new connection opens with `key` when given (the machine sits behind a forwarder).
/// `started` is when the caller began sending (now, give or take: one clock read serves both).
pub(crate) async fn send(
    addr: &str,
    wire: &Wire,
    method: &Method,
    connect_timeout: Duration,
    head_timeout: Duration,
    key: Option<&str>,
    started: tokio::time::Instant,
) -> Result<http::Response<Body>, SendError> {
    loop {
        let (mut conn, reused) = match take_idle(addr, started) {
            Some(conn) => (conn, true),
            None => (connect(addr, connect_timeout, key).await?, false),
        };
        // The head timeout counts from the request's start, or from the connection's when one
        // had to be made.
        let deadline = if reused { started } else { tokio::time::Instant::now() } + head_timeout;
        match exchange(&mut conn, wire, method, deadline).await {
            Ok((parts, framing, reusable)) => {
                let body = Body {
                    conn: Some(conn),
                    framing,
                    reusable,
                };
                return Ok(http::Response::from_parts(parts, body));
            }
            Err(Failure::Unanswered(_)) if reused && colo_policy::idempotent(method.as_str()) => continue,
            Err(Failure::Unanswered(reason) | Failure::Broken(reason)) => return Err(SendError::Sent(reason)),
            Err(Failure::TimedOut) => return Err(SendError::HeadTimeout),
        }
    }
}

enum Failure {
    /// The connection closed or failed before a byte of the answer arrived.
    Unanswered(String),
    /// Anything after: a broken or malformed answer.
    Broken(String),
    /// No response head within the head timeout.
    TimedOut,
}

async fn exchange(
    conn: &mut Conn,
    wire: &Wire,
    method: &Method,
    deadline: tokio::time::Instant,
) -> Result<(http::response::Parts, Framing, bool), Failure> {
    // The connection's timer is not moved unless it fires before this exchange's deadline.
    if conn.timer.deadline() > deadline {
        conn.timer.as_mut().reset(deadline);
    }
    let written = match (conn.stream.write_all(&wire.bytes).await, &wire.body) {
        (Ok(()), Some(body)) => conn.stream.write_all(body).await,
        (result, _) => result,
    };
    if let Err(e) = written {
        return Err(Failure::Unanswered(format!("writing the request: {e}")));
    }
    conn.buf.clear();
    loop {
        if let Some(answer) = parse_head(&mut conn.buf, method)? {
            return Ok(answer);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Failure::Broken(format!("the response head is over {MAX_HEAD} bytes")));
        }
        conn.buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            read = conn.stream.read_buf(&mut conn.buf) => read,
            _ = conn.timer.as_mut() => {
                if tokio::time::Instant::now() < deadline {
                    conn.timer.as_mut().reset(deadline);
                    continue;
                }
                return Err(Failure::TimedOut);
            }
        };
        match read {
            Ok(0) if conn.buf.is_empty() => return Err(Failure::Unanswered("the machine closed the connection without answering".into())),
            Ok(0) => {
                return Err(Failure::Broken(
                    "the machine closed the connection in the middle of the response head".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if conn.buf.is_empty() => return Err(Failure::Unanswered(format!("reading the response: {e}"))),
            Err(e) => return Err(Failure::Broken(format!("reading the response head: {e}"))),
        }
    }
}

/// The response head in `conn.buf`, once it is whole: its parts, how its body is framed, and
/// whether the connection can carry another request after it. Interim (1xx) answers are
/// skipped.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<(http::response::Parts, Framing, bool)>, Failure> {
    loop {
        // Where each header line lies in the buffer, so the head can be split off and its values
        // shared with the response rather than copied.
        let mut spans = [Span::default(); MAX_HEADERS];
        let (len, code, version, count) = {
            let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut lines) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(Failure::Broken(format!("malformed response head: {e}"))),
            };
            let base = buf.as_ptr();
            for (span, line) in spans.iter_mut().zip(parsed.headers.iter()) {
                *span = Span::of(base, line);
            }
            (len, parsed.code.unwrap_or(0), parsed.version, parsed.headers.len())
        };
        let status = StatusCode::from_u16(code).map_err(|_| Failure::Broken(format!("malformed status code {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failure::Broken(
                    "the machine switched protocols, which the edge does not relay".into(),
                ));
            }
            buf.advance(len);
            continue;
        }
        let version = if version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        // Headers the Connection header names: they describe this hop only, like the fixed
        // hop-by-hop list, and are dropped (after the loop: they may come before it).
        let mut nominated = Vec::new();
        let mut close = version == Version::HTTP_10;
        // Some(true): chunked is the final coding; Some(false): another coding is.
        let mut chunked: Option<bool> = None;
        let mut length: Option<u64> = None;
        for span in &spans[..count] {
            let raw_name = &head[span.name()];
            let name = HeaderName::from_bytes(raw_name)
                .map_err(|_| Failure::Broken(format!("malformed header name {:?}", String::from_utf8_lossy(raw_name))))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value()))
                .map_err(|_| Failure::Broken(format!("malformed value of header {name}")))?;
            if name == http::header::CONTENT_LENGTH {
                // Digits only (RFC 9112): Rust's parse would also take "+5".
                let digits = |v: &str| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
                let n = value
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|v| digits(v))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| Failure::Broken(format!("malformed content-length {value:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failure::Broken("conflicting content-length headers".into()));
                }
                length = Some(n);
            } else if name == http::header::TRANSFER_ENCODING {
                // The last coding of the last Transfer-Encoding line decides.
                chunked = Some(
                    value
                        .to_str()
                        .is_ok_and(|v| v.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))),
                );
            } else if name == http::header::CONNECTION {
                if crate::headers::has_token(value.as_bytes(), b"close") {
                    close = true;
                } else if crate::headers::has_token(value.as_bytes(), b"keep-alive") {
                    close = false;
                }
                crate::headers::nominated_by(&value, &mut nominated);
            }
            // What describes this connection is not passed on to the client.
            if !crate::headers::is_hop_by_hop(&name) {
                headers.append(name, value);
            }
        }
        for name in nominated {
            headers.remove(name);
        }
        let no_body = *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        // Transfer-Encoding overrides Content-Length; a coding other than chunked last means the
        // body ends when the connection does (RFC 9112 6.3).
        let framing = match (no_body, chunked, length) {
            (true, _, _) => Framing::Length(0),
            (false, Some(true), _) => Framing::Chunked(Chunk::Size),
            (false, None, Some(n)) => Framing::Length(n),
            (false, Some(false) | None, _) => {
                close = true;
                Framing::UntilClose
            }
        };
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let (parts, ()) = response.into_parts();
        return Ok(Some((parts, framing, !close)));
    }
}

/// Where a header line's name and value lie in the buffer its head was parsed from, so the
/// head can be split off the buffer and its values shared rather than copied.
#[derive(Clone, Copy, Default)]
pub(crate) struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The span of `line`, parsed from the buffer that starts at `base` (heads are small, so
    /// offsets fit in 32 bits).
    pub(crate) fn of(base: *const u8, line: &httparse::Header<'_>) -> Span {
        let offset = |p: *const u8| (p as usize - base as usize) as u32;
        let name = offset(line.name.as_ptr());
        let value = offset(line.value.as_ptr());
        Span {
            name: (name, name + line.name.len() as u32),
            value: (value, value + line.value.len() as u32),
        }
    }

    pub(crate) fn name(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    pub(crate) fn value(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

fn take_idle(addr: &str, now: tokio::time::Instant) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(addr)?;
        // The most recently used first: the least likely to have been closed by the machine.
        while let Some(conn) = conns.pop() {
            if now.saturating_duration_since(conn.idle_since) > POOL_IDLE {
                // Those under it are older still.
                conns.clear();
                return None;
            }
            if !conn.closed() {
                return Some(conn);
            }
        }
        None
    })
}

async fn connect(addr: &str, timeout: Duration, key: Option<&str>) -> Result<Conn, SendError> {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(format!("connecting to {addr}: {e}"))),
        Err(_) => return Err(SendError::Connect(format!("connecting to {addr}: no answer in {timeout:?}"))),
    };
    let _ = stream.set_nodelay(true);
    if let Some(key) = key {
        // The forwarder in front of the machine reads this line before anything else.
        let preface = format!("{}{key}\r\n", colo_core::MACHINE_KEY_PREFACE);
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut stream, preface.as_bytes()).await {
            return Err(SendError::Connect(format!("connecting to {addr}: {e}")));
        }
    }
    Ok(Conn {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        addr: Arc::from(addr),
        // Armed at the first exchange's deadline.
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(365 * 86_400))),
        idle_since: tokio::time::Instant::now(),
    })
}

/// What `parse_head` made of a machine's answer, for the fuzz target (`crate::fuzzing`):
/// `None` while more bytes are needed; the status, how the body is framed, whether the
/// connection may be reused, and how many bytes the head took.
pub(crate) fn parse_head_for_fuzzing(bytes: &[u8], head: bool) -> Result<Option<(u16, FuzzFraming, bool, usize)>, ()> {
    let mut buf = BytesMut::from(bytes);
    let method = if head { Method::HEAD } else { Method::GET };
    match parse_head(&mut buf, &method) {
        Ok(Some((parts, framing, reusable))) => {
            let framing = match framing {
                Framing::Length(n) => FuzzFraming::Length(n),
                Framing::Done => FuzzFraming::Length(0),
                Framing::Chunked(_) => FuzzFraming::Chunked,
                Framing::UntilClose => FuzzFraming::UntilClose,
            };
            Ok(Some((parts.status.as_u16(), framing, reusable, bytes.len() - buf.len())))
        }
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// How a response body ends, as the fuzz target compares it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FuzzFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked transfer coding, at this point of a chunk.
    Chunked(Chunk),
    /// The body ends when the machine closes the connection.
    UntilClose,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A machine's response body, read from its connection as the client takes it. Frames are
/// slices of the connection's read buffer; nothing is copied.
pub(crate) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
}

impl Body {
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                conn.release();
            }
        }
    }

    /// Reads more of the body into the buffer; `Ok(0)` when the machine closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            conn.buf.reserve(READ_CHUNK);
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// For a body of known length up to `limit` bytes: waits until all of it has arrived, so
    /// that the answer goes to the client whole or, when the machine fails before its end, is
    /// replaced by an error (a status already sent could not be). A body already whole (the
    /// usual case: an engine writes its answer at once) costs nothing here; any other body is
    /// left to stream.
    pub(crate) async fn read_whole(&mut self, limit: u64) -> io::Result<()> {
        let Framing::Length(left) = self.framing else { return Ok(()) };
        if left > limit {
            return Ok(());
        }
        std::future::poll_fn(|cx| loop {
            if self.buffered() as u64 >= left {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                self.conn = None;
                return Poll::Ready(Err(cut_short()));
            }
        })
        .await
    }

    /// Whether [`Body::read_whole`] has nothing to wait for.
    pub(crate) fn whole_or_streamed(&self, limit: u64) -> bool {
        match self.framing {
            Framing::Length(left) => left > limit || self.buffered() as u64 >= left,
            _ => true,
        }
    }

    fn buffered(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.buf.len())
    }

    fn take(&mut self, n: usize) -> Bytes {
        self.conn.as_mut().map(|c| c.buf.split_to(n).freeze()).unwrap_or_default()
    }

    /// The next CRLF-terminated line of a chunked body, without its CRLF, consumed from the
    /// buffer; `None` when more bytes are needed.
    fn line(&mut self) -> io::Result<Option<Bytes>> {
        let Some(conn) = self.conn.as_mut() else { return Ok(None) };
        match conn.buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                let line = conn.buf.split_to(end).freeze();
                conn.buf.advance(2);
                Ok(Some(line))
            }
            None if conn.buf.len() > MAX_LINE => Err(broken("a chunked body line is too long")),
            None => Ok(None),
        }
    }
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the machine closed the connection before the body's end",
    )
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let have = this.buffered();
                    if have > 0 {
                        let n = have.min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = this.take(n);
                        this.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.conn = None;
                        return Poll::Ready(Some(Err(cut_short())));
                    }
                }
                Framing::UntilClose => {
                    let have = this.buffered();
                    if have > 0 {
                        return Poll::Ready(Some(Ok(hyper::body::Frame::data(this.take(have)))));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(chunk) => {
                    let step = match chunk {
                        Chunk::Size => this.line()?.map(|line| {
                            let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                            let size = std::str::from_utf8(digits)
                                .ok()
                                .and_then(|d| u64::from_str_radix(d.trim(), 16).ok())
                                .ok_or_else(|| broken("malformed chunk size"))?;
                            this.framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                            Ok::<_, io::Error>(())
                        }),
                        Chunk::Data(left) => {
                            let have = this.buffered();
                            if have > 0 {
                                let n = have.min(usize::try_from(left).unwrap_or(usize::MAX));
                                let data = this.take(n);
                                let left = left - n as u64;
                                this.framing = Framing::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                                return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                            }
                            None
                        }
                        Chunk::DataEnd => this.line()?.map(|line| {
                            if !line.is_empty() {
                                return Err(broken("chunk data longer than its size"));
                            }
                            this.framing = Framing::Chunked(Chunk::Size);
                            Ok(())
                        }),
                        Chunk::Trailers => this.line()?.map(|line| {
                            if line.is_empty() {
                                this.finish();
                            }
                            Ok(())
                        }),
                    };
                    match step {
                        Some(result) => result?,
                        None => {
                            if ready!(this.poll_fill(cx))? == 0 {
                                this.conn = None;
                                return Poll::Ready(Some(Err(cut_short())));
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(n) => hyper::body::SizeHint::with_exact(n),
            Framing::Done => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
