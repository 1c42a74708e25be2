//! Faults between the edge and its machines (issue 16, item 7), put there by `colo-fault`'s
//! proxy: each request is answered once, with a 2xx or a clear error (a whole answer cut short
//! is a 502, not a 200 with half a body); a stream either completes or ends with an error event;
//! and a request the machine may have executed (POST) is never sent to a machine again.

use axum::response::IntoResponse;
use axum::routing::post;
use colo_edge::routes::Endpoint;
use colo_edge::{serve, Edge, EdgeConfig, RouteTable};
use colo_fault::{Fault, FaultProxy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How many times each request id (the prompt) reached a machine.
type Ledger = Arc<Mutex<HashMap<String, u32>>>;

/// A machine that records each request's prompt, then answers a long JSON body, or for a
/// stream ten events 20 ms apart and `[DONE]`.
async fn machine(name: &'static str, ledger: Ledger) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/completions",
        post(move |body: String| {
            let ledger = ledger.clone();
            async move {
                let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                let id = request["prompt"].as_str().unwrap().to_string();
                *ledger.lock().unwrap().entry(id.clone()).or_insert(0) += 1;
                if request["stream"] == true {
                    let events = futures::stream::iter(0..11).then(move |i| {
                        let id = id.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let line = if i < 10 {
                                format!("data: {{\"id\":\"{id}\",\"event\":{i},\"machine\":\"{name}\"}}\n\n")
                            } else {
                                "data: [DONE]\n\n".to_string()
                            };
                            Ok::<_, std::convert::Infallible>(line)
                        }
                    });
                    ([("content-type", "text/event-stream")], axum::body::Body::from_stream(events)).into_response()
                } else {
                    let text = "x".repeat(4000);
                    axum::Json(serde_json::json!({"id": id, "machine": name, "text": text})).into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

use futures::StreamExt;

/// Sets `fault` on the connections the edge makes from now on: a cut first closes those it
/// keeps pooled (a per-connection fault acts on new connections only).
async fn on_new_connections(proxy: &FaultProxy, fault: Fault) {
    proxy.set(Fault::Cut);
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.set(fault);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// An edge served as in production in front of `machines` (id, address), with a 1 s head
/// timeout for machines; its URL.
fn edge(machines: &[(&str, std::net::SocketAddr)]) -> (String, watch::Sender<Arc<RouteTable>>, watch::Sender<bool>) {
    let endpoints = machines
        .iter()
        .map(|(id, addr)| Endpoint::new(id, &addr.to_string(), "local").unwrap())
        .collect();
    let (routes, rx) = watch::channel(Arc::new(RouteTable::single("app", endpoints)));
    let config = EdgeConfig {
        limits: colo_edge::Limits {
            upstream_head_timeout: Duration::from_secs(1),
            ..colo_edge::Limits::default()
        },
        ..EdgeConfig::default()
    };
    let edge = Edge::new(config, rx);
    let sockets = serve::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let url = format!("http://{}", sockets.addr());
    let (stop, stop_rx) = watch::channel(false);
    serve::spawn(sockets, edge, stop_rx, Duration::from_secs(1)).unwrap();
    (url, routes, stop)
}

/// What the client got: the status (0: no answer), the body as far as it came, and whether
/// the body ended cleanly.
async fn call(url: &str, id: &str, stream: bool) -> (u16, String, bool) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let body = serde_json::json!({"model": "app", "prompt": id, "max_tokens": 4, "stream": stream});
    let response = match client.post(format!("{url}/v1/completions")).json(&body).send().await {
        Ok(response) => response,
        Err(e) => return (0, e.to_string(), false),
    };
    let status = response.status().as_u16();
    let mut text = String::new();
    let mut frames = response.bytes_stream();
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => return (status, text, false),
        }
    }
    (status, text, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_edge_and_machine_lose_nothing_and_execute_nothing_twice() {
    let ledger: Ledger = Arc::default();
    let proxy = FaultProxy::start(machine("m1", ledger.clone()).await).await.unwrap();
    let (url, _routes, _stop) = edge(&[("m1", proxy.addr())]);
    let executed = |id: &str| ledger.lock().unwrap().get(id).copied().unwrap_or(0);

    // Delay: answered, later.
    proxy.set(Fault::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    let (status, body, whole) = call(&url, "delay", false).await;
    assert!(status == 200 && whole && body.contains("\"machine\":\"m1\""), "{status} {body}");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

    // The machine executed the request but its answer was lost: a clear 502, and the request is
    // not sent again (a POST may not be executed twice).
    on_new_connections(&proxy, Fault::LoseAnswer).await;
    let (status, body, _) = call(&url, "lost", false).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("\"error\"") && body.contains("m1"),
        "a clear error naming the machine: {body}"
    );
    assert_eq!(executed("lost"), 1, "executed once, never resent");

    // The answer's body is cut off: the edge reads a whole answer before its status goes out,
    // so the client gets a clear 502 rather than a 200 cut short.
    on_new_connections(&proxy, Fault::Truncate(700)).await;
    let (status, body, whole) = call(&url, "cut", false).await;
    assert!(status == 502 && whole, "{status} {whole} {body}");
    assert!(body.contains("part way through its answer") && body.contains("m1"), "{body}");
    assert_eq!(executed("cut"), 1);

    // A stream cut part way ends with an error event, not a silent end.
    on_new_connections(&proxy, Fault::Truncate(600)).await;
    let (status, body, _) = call(&url, "cut-stream", true).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"event\":0"), "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("data: {\"error\""),
        "the stream must end with an error event: {body}"
    );
    assert_eq!(executed("cut-stream"), 1);

    // A machine that stalls before answering: 504 at the machine head timeout, once.
    proxy.set(Fault::Stall);
    let started = Instant::now();
    let (status, body, _) = call(&url, "stalled", false).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    proxy.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(executed("stalled") <= 1);

    // All clear again: a stream completes.
    let (status, body, whole) = call(&url, "after", true).await;
    assert!(status == 200 && whole && body.contains("[DONE]"), "{status} {body}");
    assert!(proxy.faulted() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_cut_off_is_routed_around_before_anything_is_sent() {
    let ledger: Ledger = Arc::default();
    let cut = FaultProxy::start(machine("m1", ledger.clone()).await).await.unwrap();
    let healthy = machine("m2", ledger.clone()).await;
    let (url, _routes, _stop) = edge(&[("m1", cut.addr()), ("m2", healthy)]);
    cut.set(Fault::Cut);
    for i in 0..10 {
        let id = format!("r{i}");
        let (status, body, whole) = call(&url, &id, i % 2 == 0).await;
        assert!(
            status == 200 && whole && body.contains("\"machine\":\"m2\""),
            "{i}: {status} {body}"
        );
        assert_eq!(ledger.lock().unwrap()[&id], 1);
    }
}
