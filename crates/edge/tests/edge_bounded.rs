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
