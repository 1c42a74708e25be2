//! What a node reads from the system it runs on: the host's name and the signal to stop.

/// The system's host name (`/etc/hostname`), or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Returns when the process is asked to stop: SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // Without a SIGTERM handler, Ctrl-C is still a way to stop.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
