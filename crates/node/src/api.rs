//! Serving a process's REST API (control's, the agents', or both in `colo up`) until its stop
//! watch turns true: plain HTTP through axum, or HTTPS when the daemon has a certificate.

use axum::serve::ListenerExt;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Serves `app` on `listener` in a task until `stop` turns true. Plain HTTP finishes the
/// requests in flight first; TLS stops accepting and lets connections end on their own.
pub(crate) fn spawn(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Some(config) = tls {
            return crate::tls::serve(listener, app, config, stopped).await;
        }
        let served = axum::serve(listener.tap_io(no_delay), app).with_graceful_shutdown(stopped).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "API server");
        }
    })
}

/// Sends small writes (one SSE event, one token) at once instead of waiting to coalesce them
/// (Nagle), which with delayed ACKs stalls a stream by tens of milliseconds.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}
