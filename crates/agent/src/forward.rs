//! The door in front of a machine's engine on a host that edges elsewhere reach: the engine
//! listens on loopback only, and this forwarder on the host's address admits a connection only
//! when it opens with `COLO-KEY <key>\r\n`, the key every edge and agent of the cluster derives
//! from the cluster token (`colo_control::auth::machine_key`). Anyone else who reaches the host
//! gets a 403 and a closed connection, instead of the model around its API keys and limits.
//! After the preface, bytes are copied both ways untouched.

use colo_core::MACHINE_KEY_PREFACE;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to send its preface.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest preface line read.
const MAX_PREFACE: usize = 512;

/// A running forwarder; it stops when dropped.
pub(crate) struct Forwarder {
    task: tokio::task::JoinHandle<()>,
    /// Where edges reach the engine through it.
    pub(crate) addr: SocketAddr,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `bind` (a free port) and forwards admitted connections to `engine`.
pub(crate) async fn start(bind: IpAddr, engine: SocketAddr, key: String) -> std::io::Result<Forwarder> {
    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await?;
    let addr = listener.local_addr()?;
    let expected = format!("{MACHINE_KEY_PREFACE}{key}").into_bytes();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let expected = expected.clone();
            tokio::spawn(async move {
                if let Err(reason) = forward(stream, engine, &expected).await {
                    tracing::debug!(%peer, %reason, "a connection to a machine was refused or ended");
                }
            });
        }
    });
    Ok(Forwarder { task, addr })
}

async fn forward(mut client: TcpStream, engine: SocketAddr, expected: &[u8]) -> Result<(), String> {
    let _ = client.set_nodelay(true);
    let mut read = Vec::with_capacity(MAX_PREFACE);
    let line_end = tokio::time::timeout(PREFACE_TIMEOUT, async {
        let mut buf = [0u8; 512];
        loop {
            if let Some(at) = read.windows(2).position(|w| w == b"\r\n") {
                return Ok(at);
            }
            if read.len() >= MAX_PREFACE {
                return Err("no preface line".to_string());
            }
            let n = client.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before its preface".to_string());
            }
            read.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| "no preface in time".to_string())??;
    if !colo_core::same_secret(&read[..line_end], expected) {
        let body = r#"{"error":{"message":"machines are reached through colo's edges","type":"invalid_request_error","param":null,"code":"forbidden"}}"#;
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes()).await;
        return Err("a connection without the machine key".into());
    }
    let mut upstream = TcpStream::connect(engine)
        .await
        .map_err(|e| format!("connecting to the engine: {e}"))?;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(&read[line_end + 2..]).await.map_err(|e| e.to_string())?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
