//! Serving one edge from several threads, each with its own single-threaded runtime and its own
//! listening socket on the same address (SO_REUSEPORT, so the kernel spreads connections): a
//! request is read, proxied and answered on one thread, with no hand-offs between threads.

use anyhow::Context;
use colo_edge::Edge;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Sockets of one edge, all bound to one address.
pub struct EdgeSockets {
    listeners: Vec<std::net::TcpListener>,
    pub addr: SocketAddr,
}

/// Binds `workers` sockets to `addr` (a free port, when `addr` has port 0, shared by all).
pub fn bind(addr: SocketAddr, workers: usize) -> anyhow::Result<EdgeSockets> {
    let mut listeners = Vec::new();
    let mut bound = addr;
    for _ in 0..workers.max(1) {
        let socket = if bound.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bound).with_context(|| format!("binding {bound}"))?;
        let listener = socket.listen(4096)?;
        bound = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(EdgeSockets { listeners, addr: bound })
}

/// Serves `edge` on each socket from its own thread until `stop` turns true and the requests in
/// flight are done, or `drain` has passed since. The returned receiver closes when every
/// thread has finished.
pub fn serve(
    sockets: EdgeSockets,
    edge: Arc<Edge>,
    stop: watch::Receiver<bool>,
    drain: std::time::Duration,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::mpsc::channel::<()>(1);
    for (i, std_listener) in sockets.listeners.into_iter().enumerate() {
        let (edge, stop, done) = (edge.clone(), stop.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("colo-edge-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "starting an edge worker"),
                };
                runtime.block_on(async move {
                    let listener = match std_listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
                    {
                        Ok(l) => l,
                        Err(e) => return tracing::error!(error = %e, "edge worker socket"),
                    };
                    serve_http1(listener, edge.clone(), stop).await;
                    // The server stops accepting at once; requests it handed on (streaming
                    // bodies, held requests) live in this runtime's tasks, which must keep
                    // running until they are done.
                    let deadline = tokio::time::Instant::now() + drain;
                    while edge.busy() > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    // A response's last bytes may still sit in its connection's write buffer
                    // when its request stops counting as busy: let them go out.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    drop(done);
                });
            })
            .context("starting an edge worker thread")?;
    }
    Ok(done_rx)
}

/// Accepts HTTP/1.1 connections (clients of an OpenAI-style API speak it; HTTP/2 sniffing
/// would cost every request) until `stop` turns true. Connections in flight live on in their
/// own tasks, which close them once `stop` is true and their request is answered; the caller
/// waits for the edge's requests to finish.
async fn serve_http1(listener: tokio::net::TcpListener, edge: Arc<Edge>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(colo_edge::serve_connection(edge.clone(), stream, stop.clone()));
    }
}

/// The next connection. Failures to accept (out of file descriptors and the like) are logged
/// and retried after a moment: a server keeps serving through them.
pub async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends small writes (one SSE event, one token) at once instead of waiting to coalesce them
/// (Nagle), which with delayed ACKs stalls a stream by tens of milliseconds.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}
