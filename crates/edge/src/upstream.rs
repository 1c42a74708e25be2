//! Connections from the edge to machines: HTTP/1.1, kept alive and reused. Each thread keeps
//! its own idle connections, so a request and the connection that carries it are driven by
//! the same thread, and taking or returning one is a thread-local push or pop, not a lock.
//!
//! A connection goes back to its thread's pool when the response body has been read to its
//! end; a response dropped half-read takes its connection with it (HTTP/1.1 cannot reuse it).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per machine address and thread at most; more are closed.
const IDLE_PER_ADDR: usize = 512;

/// Returns between sweeps of closed connections to machines that are gone.
const SWEEP_EVERY: u32 = 4096;

thread_local! {
    static IDLE: RefCell<HashMap<String, Vec<Sender>>> = RefCell::new(HashMap::new());
    static RETURNS: Cell<u32> = const { Cell::new(0) };
}

/// Why a request did not get a response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made: the request was not sent.
    Connect(String),
    /// The request may have reached the machine.
    Sent(hyper::Error),
}

/// A connection in use; `release` returns it to the pool of the thread that calls it.
pub(crate) struct Conn {
    sender: Sender,
    addr: String,
}

impl Conn {
    pub(crate) fn release(self) {
        let Conn { sender, addr } = self;
        if sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let sweep = RETURNS.with(|n| {
                n.set(n.get().wrapping_add(1));
                n.get() % SWEEP_EVERY == 0
            });
            if sweep {
                idle.retain(|_, senders| {
                    senders.retain(|s| !s.is_closed());
                    !senders.is_empty()
                });
            }
            let senders = idle.entry(addr).or_default();
            if senders.len() < IDLE_PER_ADDR {
                senders.push(sender);
            }
        });
    }
}

/// Sends `request` (origin-form URI, `Host` set) to the machine at `addr` on an idle
/// connection of this thread, or on a new one. A pooled connection that turns out closed
/// before the request went out is dropped and the next one tried, so a machine that closed
/// idle connections costs no failed request.
pub(crate) async fn send(
    addr: &str,
    mut request: hyper::Request<Full<Bytes>>,
    connect_timeout: Duration,
) -> Result<(hyper::Response<Incoming>, Conn), SendError> {
    while let Some(mut sender) = take_idle(addr) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok((
                    response,
                    Conn {
                        sender,
                        addr: addr.to_string(),
                    },
                ))
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(SendError::Sent(e.into_error())),
            },
        }
    }
    let mut sender = connect(addr, connect_timeout).await?;
    match sender.send_request(request).await {
        Ok(response) => Ok((
            response,
            Conn {
                sender,
                addr: addr.to_string(),
            },
        )),
        Err(e) => Err(SendError::Sent(e)),
    }
}

fn take_idle(addr: &str) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let senders = idle.get_mut(addr)?;
        // The most recently used first: the least likely to have been closed by the machine.
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    })
}

async fn connect(addr: &str, timeout: Duration) -> Result<Sender, SendError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(format!("connecting to {addr}: {e}"))),
        Err(_) => return Err(SendError::Connect(format!("connecting to {addr}: no answer in {timeout:?}"))),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(format!("starting HTTP/1.1 with {addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to a machine ended");
        }
    });
    Ok(sender)
}
