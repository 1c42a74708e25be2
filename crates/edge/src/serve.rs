//! The edge's production accept path: one thread per worker, each with its own single-threaded
//! runtime and its own listening socket on the same address (SO_REUSEPORT, so the kernel spreads
//! connections). A request is read, proxied and answered on one thread, with no hand-offs
//! between threads. A drain stops accepting at once and waits for the edge's own in-flight and
//! held requests, not only for open connections.

use crate::edge::Edge;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long the accept loop waits after a failed accept (out of file descriptors and the like)
/// before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a draining worker looks whether the edge's requests are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// A response's last bytes may still sit in its connection's write buffer when its request
/// stops counting as busy; a drained worker gives them this long to go out.
const DRAIN_FLUSH: Duration = Duration::from_millis(100);
/// How long the 503 to a connection over a cap may take to write (and the client's request to
/// drain).
const REFUSE_WRITE: Duration = Duration::from_secs(1);
/// Connections the kernel queues per socket before the edge accepts them.
const BACKLOG: u32 = 4096;

/// Why the edge could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A worker's socket could not be created, bound or put into listening state.
    #[error("binding the edge to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another process listens on the address too: with SO_REUSEPORT the kernel would split
    /// connections between it and this edge.
    #[error("edge address {addr} is already served by {}; stop it, or choose another address", holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", "))]
    Held {
        addr: SocketAddr,
        holders: Vec<crate::holders::Holder>,
    },
    /// The thread of worker `worker` could not be started.
    #[error("starting edge worker thread {worker}")]
    Thread {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Listening sockets of one edge, all bound to one address.
#[derive(Debug)]
pub struct Sockets {
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
}

// === impl Sockets ===

impl Sockets {
    /// The address every socket listens on (the port the first one got, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds one socket per worker to `addr`: `workers` of them, or one per core when `workers` is
/// 0. With port 0 the first socket picks a free port and the others share it.
pub fn bind(addr: SocketAddr, workers: usize) -> Result<Sockets, ServeError> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut listeners = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers {
        let failed = |source| ServeError::Bind { addr: bound, source };
        let listener = bind_one(bound).map_err(failed)?;
        bound = listener.local_addr().map_err(failed)?;
        listeners.push(listener);
    }
    // A port the kernel chose is this edge's alone; a port asked for may be another's.
    if addr.port() != 0 {
        let holders = crate::holders::other_holders(bound, &listeners);
        if !holders.is_empty() {
            return Err(ServeError::Held { addr: bound, holders });
        }
    }
    Ok(Sockets { listeners, addr: bound })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// The worker threads serving one edge.
#[derive(Debug)]
pub struct Workers {
    /// Closes when the last worker has dropped its sender, that is when every worker is done.
    done: mpsc::Receiver<()>,
}

// === impl Workers ===

impl Workers {
    /// Returns once every worker has finished: `stop` turned true, and the edge's requests
    /// were done or the drain time had passed.
    pub async fn finished(&mut self) {
        while self.done.recv().await.is_some() {}
    }
}

/// Serves `edge` on each of `sockets` from its own thread until `stop` turns true and the
/// edge's requests in flight (held ones and streaming bodies included) are done, or `drain` has
/// passed since.
pub fn spawn(sockets: Sockets, edge: Arc<Edge>, stop: watch::Receiver<bool>, drain: Duration) -> Result<Workers, ServeError> {
    let (done_tx, done) = mpsc::channel::<()>(1);
    for (worker, listener) in sockets.listeners.into_iter().enumerate() {
        let (edge, stop, done_tx) = (edge.clone(), stop.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("colo-edge-{worker}"))
            .spawn(move || {
                run_worker(listener, edge, stop, drain);
                drop(done_tx);
            })
            .map_err(|source| ServeError::Thread { worker, source })?;
    }
    Ok(Workers { done })
}

/// One worker's life on its own thread: serve, then drain.
fn run_worker(listener: std::net::TcpListener, edge: Arc<Edge>, stop: watch::Receiver<bool>, drain: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return tracing::error!(error = %e, "starting an edge worker's runtime"),
    };
    runtime.block_on(async move {
        let listener = match listener.set_nonblocking(true).and_then(|()| TcpListener::from_std(listener)) {
            Ok(listener) => listener,
            Err(e) => return tracing::error!(error = %e, "edge worker socket"),
        };
        accept_until_stopped(&listener, &edge, stop).await;
        drop(listener);
        // The requests this worker accepted (streaming bodies, held requests) live in this
        // runtime's tasks, which must keep running until they are done.
        let deadline = tokio::time::Instant::now() + drain;
        while edge.busy() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        tokio::time::sleep(DRAIN_FLUSH).await;
    });
}

/// Accepts connections until `stop` turns true, each served by `serve_connection` in its own
/// task (HTTP/1.1 in the clear: clients of an OpenAI-style API speak it, and sniffing for
/// HTTP/2 would cost every request; over TLS, HTTP/2 too when the client offers it). Connections in flight live on; they close once `stop` is true and their
/// request is answered.
async fn accept_until_stopped(listener: &TcpListener, edge: &Arc<Edge>, mut stop: watch::Receiver<bool>) {
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = accept(listener) => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        // Small writes (one SSE event, one token) go out at once instead of waiting to be
        // coalesced (Nagle), which with delayed ACKs would stall a stream by tens of ms.
        let _ = stream.set_nodelay(true);
        match edge.connections.admit(peer.ip(), &edge.config.limits) {
            Ok(admitted) => {
                let (edge, stop) = (edge.clone(), stop.clone());
                tokio::spawn(async move {
                    match edge.config.tls.clone() {
                        None => crate::serve_connection(edge, stream, stop).await,
                        Some(tls) => crate::tls::serve(edge, tls, stream, stop).await,
                    }
                    drop(admitted);
                });
            }
            // Over a cap: said in a 503 and closed, without reading the request.
            Err(refused) => {
                tokio::spawn(async move {
                    crate::server::answer_and_close(&mut stream, &refused.response(), REFUSE_WRITE).await;
                });
            }
        }
    }
}

/// The next connection on `listener`. Failures to accept (out of file descriptors and the
/// like) are logged and retried after a moment: a server keeps serving through them.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
