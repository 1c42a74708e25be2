//! Request smuggling and desynchronisation, as an attacker would try them against the edge on
//! a raw socket (RFC 9112's framing rules): each payload gets the status it should, and the
//! machine behind the edge never sees a request the client did not send as a request of its
//! own. Every payload hides `GET /smuggled` where a parser that frames the body differently from
//! a proxy in front would read it as a second request.

use axum::body::Bytes;
use axum::extract::Request;
use colo_edge::routes::Endpoint;
use colo_edge::{serve_connection, Edge, EdgeConfig, RouteTable};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

type Seen = Arc<Mutex<Vec<String>>>;

/// A machine that records the method and path of every request it receives.
async fn recording_machine() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |request: Request| {
        let record = record.clone();
        async move {
            let line = format!("{} {}", request.method(), request.uri().path());
            let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
            record.lock().unwrap().push(line);
            Bytes::from_static(b"ok")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn start_edge(machine: &str) -> (String, watch::Sender<Arc<RouteTable>>) {
    let table = RouteTable::single("app", vec![Endpoint::new("m1", machine, "local").unwrap()]);
    let (tx, rx) = watch::channel(Arc::new(table));
    let edge = Edge::new(EdgeConfig::default(), rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let _stop_tx = stop_tx;
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(edge.clone(), stream, stop_rx.clone()));
        }
    });
    (addr, tx)
}

/// Sends `payload` on a fresh connection and reads until the edge closes it or a second of
/// quiet; returns the status of each response, in order.
async fn exchange(edge: &str, payload: &[u8]) -> Vec<u16> {
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    stream.write_all(payload).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1000), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app.localhost\r\n\r\n";

fn embed() -> String {
    r#"{"model":"app","input":"x"}"#.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_desync_payloads_are_refused_and_never_reach_the_machine() {
    let (machine, seen) = recording_machine().await;
    let (edge, _routes) = start_edge(&machine).await;
    let body = embed();
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    // (name, payload, the first response's status, what the machine must have seen). With both
    // a length and chunked coding, the edge (hyper's parser) reads the body as chunked, drops
    // the length and closes the connection after answering, as RFC 9112 (6.1) allows: the
    // machine gets one request with the chunked body, never the hidden one.
    let cases: Vec<(&str, String, u16, Vec<&str>)> = vec![
        (
            "CL.TE: a length that covers the hidden request, chunked that ends before it",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
            200,
            vec!["POST /v1/embeddings"],
        ),
        (
            "TE.CL: chunked that covers the hidden request, a length that ends before it",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
                chunk(SMUGGLED)
            ),
            200,
            vec!["POST /v1/embeddings"],
        ),
        (
            "TE.TE: an obfuscated second coding",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            400,
            vec![],
        ),
        (
            "a coding other than chunked last",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            400,
            vec![],
        ),
        (
            "two lengths that differ",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {}\r\nContent-Length: 0\r\n\r\n{body}{SMUGGLED}",
                body.len()
            ),
            400,
            vec![],
        ),
        (
            "a signed length",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: +{}\r\n\r\n{body}{SMUGGLED}", body.len()),
            400,
            vec![],
        ),
        (
            "a chunk size past 64 bits",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n{SMUGGLED}"),
            400,
            vec![],
        ),
        (
            "a chunk extension of 64 KiB",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n1b;{}\r\n{body}\r\n0\r\n\r\n{SMUGGLED}",
                "x".repeat(64 * 1024)
            ),
            400,
            vec![],
        ),
        (
            "obs-fold: a header continued on the next line",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nX-A: b\r\n c\r\nContent-Length: {}\r\n\r\n{body}{SMUGGLED}", body.len()),
            400,
            vec![],
        ),
        (
            "a NUL in a header value",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nX-A: b\0c\r\nContent-Length: {}\r\n\r\n{body}{SMUGGLED}", body.len()),
            400,
            vec![],
        ),
        (
            "a bare CR in a header value",
            format!("POST /v1/embeddings HTTP/1.1\r\nHost: app.localhost\r\nX-A: b\rc\r\nContent-Length: {}\r\n\r\n{body}{SMUGGLED}", body.len()),
            400,
            vec![],
        ),
        (
            "two Hosts, then a request the client did send",
            format!("GET /v1/x HTTP/1.1\r\nHost: app.localhost\r\nHost: other.localhost\r\n\r\n{SMUGGLED}"),
            400,
            vec![],
        ),
        (
            "absolute form: the target's authority names the app, not the Host",
            "GET http://app.localhost/absolute HTTP/1.1\r\nHost: other.localhost\r\n\r\n".to_string(),
            200,
            vec!["GET /absolute"],
        ),
        (
            "a well-formed pipeline: both requests reach the machine, in order",
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}{SMUGGLED}",
                body.len()
            ),
            200,
            vec!["POST /v1/embeddings", "GET /smuggled"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, payload, status, machine_saw) in cases {
        seen.lock().unwrap().clear();
        let statuses = exchange(&edge, payload.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let saw = seen.lock().unwrap().clone();
        if statuses.first() != Some(&status) || saw != machine_saw {
            wrong.push(format!(
                "{name}: statuses {statuses:?} (want {status} first), machine saw {saw:?} (want {machine_saw:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
