//! The edge's memory stays bounded whatever names clients make up: request metrics are
//! labelled only by apps that exist (a `-` bucket for the rest), so tens of thousands of junk
//! model names, Host names and bad requests add no series to `/metrics`.

use axum::body::Body;
use colo_edge::routes::Endpoint;
use colo_edge::{handle, Edge, EdgeConfig, RouteTable};
use std::sync::Arc;
use tokio::sync::watch;

fn edge() -> (Arc<Edge>, watch::Sender<Arc<RouteTable>>) {
    // The machine's address refuses connections: requests to the real app fail fast with 502.
    let table = RouteTable::single("app", vec![Endpoint::new("m1", "127.0.0.1:9", "local").unwrap()]);
    let (tx, rx) = watch::channel(Arc::new(table));
    let config = EdgeConfig {
        max_body: 256,
        ..EdgeConfig::default()
    };
    (Edge::new(config, rx), tx)
}

/// One junk request of kind `i % 6`, naming `name`.
fn junk(i: usize, name: &str) -> http::Request<Body> {
    let post = |path: &str, body: String| {
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    match i % 6 {
        0 => post("/v1/embeddings", format!(r#"{{"model":"{name}","input":"x"}}"#)),
        1 => post("/v1/chat/completions", format!(r#"{{"model":"{name}","messages":5}}"#)),
        2 => http::Request::get("/v1/anything")
            .header("host", format!("{name}.localhost"))
            .body(Body::empty())
            .unwrap(),
        3 => http::Request::delete("/v1/completions")
            .header("host", format!("{name}.localhost"))
            .body(Body::empty())
            .unwrap(),
        // Over the body limit, to an app named only in the Host: refused before any lookup.
        4 => http::Request::post("/v1/embeddings")
            .header("host", format!("{name}.localhost"))
            .body(Body::from("x".repeat(1024)))
            .unwrap(),
        _ => http::Request::get(format!("/v1/models/{name}")).body(Body::empty()).unwrap(),
    }
}

async fn metrics_page(edge: &Arc<Edge>) -> String {
    let response = handle(edge.clone(), http::Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn junk_names_add_no_metric_series() {
    let (edge, _tx) = edge();
    // Every kind once, so that the `-` series and the real app's exist before measuring.
    for i in 0..6 {
        handle(edge.clone(), junk(i, &format!("warm{i}"))).await;
        handle(edge.clone(), junk(i, "app")).await;
    }
    let before = metrics_page(&edge).await;
    let series = |page: &str| page.lines().filter(|l| !l.starts_with('#')).count();
    for i in 0..20_000 {
        let name = format!("junk{i:05}x{}", i * 7919 % 10007);
        let response = handle(edge.clone(), junk(i, &name)).await;
        assert!(response.status().is_client_error(), "{i}: {}", response.status());
    }
    let after = metrics_page(&edge).await;
    assert!(!after.contains("junk"), "a junk name became a label");
    assert_eq!(series(&after), series(&before), "series were added:\n{after}");
    // Only counter digits grow.
    assert!(
        after.len() < before.len() + 2_000,
        "{} bytes before, {} after",
        before.len(),
        after.len()
    );
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A machine that answers every request at once, on raw sockets (fast enough not to be what
/// the test waits on).
async fn quick_machine() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    // Every complete request (head plus its content-length) gets one answer.
                    loop {
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut request = httparse::Request::new(&mut headers);
                        let Ok(httparse::Status::Complete(head)) = request.parse(&buf) else {
                            break;
                        };
                        let len: usize = request
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                            .unwrap_or(0);
                        if buf.len() < head + len {
                            break;
                        }
                        buf.drain(..head + len);
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
                    }
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `count` requests over one keep-alive connection in pipelined batches; each names a
/// random model (one in ten the real app, with a random prompt). Returns the statuses seen.
fn blast(addr: std::net::SocketAddr, count: usize, seed: u64) -> std::collections::BTreeMap<u16, usize> {
    use std::io::{Read, Write};
    const BATCH: usize = 64;
    let mut statuses = std::collections::BTreeMap::new();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut state = seed | 1;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(BATCH * 200);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < count {
        let batch = BATCH.min(count - sent);
        out.clear();
        for _ in 0..batch {
            let r = random();
            let body = if r % 10 == 0 {
                format!(r#"{{"model":"app","prompt":"p{:x}","max_tokens":1}}"#, random())
            } else {
                format!(r#"{{"model":"m{:016x}","input":"x"}}"#, random())
            };
            let path = if r % 10 == 0 { "/v1/completions" } else { "/v1/embeddings" };
            write!(
                out,
                "POST {path} HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        stream.write_all(&out).unwrap();
        let mut answered = 0;
        while answered < batch {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let len: usize = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                        .expect("every answer here has a length");
                    if buf.len() >= head + len {
                        *statuses.entry(response.code.unwrap()).or_insert(0) += 1;
                        buf.drain(..head + len);
                        answered += 1;
                        continue;
                    }
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => panic!("the edge's answer does not parse: {e}"),
            }
            let n = stream.read(&mut chunk).expect("the edge stopped answering");
            assert!(n > 0, "the edge closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
        sent += batch;
    }
    statuses
}

/// Issue 16, item 4: a million requests with random model names (and one in ten random prompts
/// to the real app, which fill the prefix index) through the production accept path over
/// real sockets: the process's memory and the /metrics page stay flat from the first tenth to
/// the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_random_names_leave_memory_and_metrics_flat() {
    let total: usize = std::env::var("COLO_BOUNDED_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let machine = quick_machine().await;
    let table = RouteTable::single("app", vec![Endpoint::new("m1", &machine, "local").unwrap()]);
    let (_routes, rx) = watch::channel(Arc::new(table));
    let edge = Edge::new(EdgeConfig::default(), rx);
    let sockets = colo_edge::serve::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = sockets.addr();
    let (_stop, stop_rx) = watch::channel(false);
    colo_edge::serve::spawn(sockets, edge.clone(), stop_rx, std::time::Duration::from_secs(1)).unwrap();

    const CLIENTS: usize = 4;
    let run = |count: usize, round: u64| async move {
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            clients.push(tokio::task::spawn_blocking(move || {
                blast(addr, count / CLIENTS, round * 1000 + c as u64 + 1)
            }));
        }
        let mut statuses = std::collections::BTreeMap::new();
        for client in clients {
            for (status, n) in client.await.unwrap() {
                *statuses.entry(status).or_insert(0) += n;
            }
        }
        statuses
    };
    let started = std::time::Instant::now();
    let warm = run(total / 10, 1).await;
    let (rss_warm, page_warm) = (rss_kib(), metrics_page(&edge).await);
    let rest = run(total - total / 10, 2).await;
    let (rss_end, page_end) = (rss_kib(), metrics_page(&edge).await);
    let series = |page: &str| page.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!(
        "{total} requests in {:.1} s; statuses {warm:?} then {rest:?}; RSS {rss_warm} KiB after a tenth, {rss_end} KiB at the end; /metrics {} then {} bytes, {} then {} series",
        started.elapsed().as_secs_f64(),
        page_warm.len(),
        page_end.len(),
        series(&page_warm),
        series(&page_end)
    );
    let answered: usize = warm.values().chain(rest.values()).sum();
    assert_eq!(answered, total / CLIENTS * CLIENTS, "every request is answered");
    assert_eq!(rest.keys().collect::<Vec<_>>(), vec![&200, &404], "{rest:?}");
    assert!(
        !page_end.contains("m0") && !page_end.contains("m1f"),
        "a random name became a label"
    );
    assert_eq!(series(&page_end), series(&page_warm), "series were added");
    assert!(
        page_end.len() < page_warm.len() + 1_000,
        "/metrics grew: {} to {} bytes",
        page_warm.len(),
        page_end.len()
    );
    assert!(rss_end < rss_warm + 16 * 1024, "memory grew from {rss_warm} KiB to {rss_end} KiB");
}
