//! Test helpers: start a stand-in on a loopback port (in this process, so tokio's paused clock
//! drives it, or as the real binary), and a small HTTP client over real sockets.

#![allow(dead_code)]

use bytes::Bytes;
use colo_standin::{Config, Ended, StandinError};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A stand-in running in this process.
pub struct Standin {
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<Ended, StandinError>>,
}

/// Starts a stand-in with `args` on a free loopback port.
pub async fn start(args: &[&str]) -> Standin {
    let mut all = vec!["--host", "127.0.0.1", "--port", "0"];
    all.extend_from_slice(args);
    let config = Config::from_args(all).expect("test command line");
    let bound = colo_standin::bind(config).await.expect("bind");
    let addr = bound.local_addr();
    Standin {
        addr,
        task: tokio::spawn(bound.run()),
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// Time from sending the request to the first body bytes, and to the end.
    pub first_byte: Duration,
    pub total: Duration,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_string()))
            .collect()
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One request on a fresh connection.
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Reply> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io)?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(Value::to_string).unwrap_or_default())))
        .map_err(io)?;
    let sent = Instant::now();
    let response = sender.send_request(request).await.map_err(io)?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(io)?.into_data() {
            if !data.is_empty() && first_byte.is_none() {
                first_byte = Some(sent.elapsed());
            }
            bytes.extend_from_slice(&data);
        }
    }
    let total = sent.elapsed();
    Ok(Reply {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        first_byte: first_byte.unwrap_or(total),
        total,
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, None).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    call(addr, "POST", path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Whether a connection to `addr` is refused (nothing listens there).
pub async fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// A prompt of `n` words (so `n` tokens), all distinct, starting with `tag`'s words.
pub fn words(tag: &str, n: usize) -> String {
    (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ")
}

/// A whole (not streamed) completion.
pub async fn complete(addr: SocketAddr, prompt: &str, max_tokens: usize) -> Reply {
    post(
        addr,
        "/v1/completions",
        serde_json::json!({"prompt": prompt, "max_tokens": max_tokens}),
    )
    .await
}

/// The value of the first sample of `name` (exactly that name, any labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn metrics(addr: SocketAddr) -> String {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// The real binary, started with `args`; its address comes from the line it prints on stdout.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Process {
    pub fn start(args: &[&str]) -> Process {
        Process::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_colo-standin"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn colo-standin");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read the bound line");
        let addr = line
            .trim()
            .strip_prefix("colo-standin bound http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Process { child, addr }
    }

    /// Waits (real time, bounded) until `/health` answers 200.
    pub async fn wait_healthy(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(reply) = call(self.addr, "GET", "/health", None).await {
                if reply.status == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Waits (real time, bounded) for the process to exit; its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
