//! The edge's production accept path (`colo_edge::serve`) over real sockets: several workers
//! on one address, a drain that lets a request in flight finish while new connections are
//! refused, and a bind that names the address it could not take.

use axum::routing::post;
use colo_edge::routes::Endpoint;
use colo_edge::{serve, Edge, EdgeConfig, RouteTable};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// An upstream machine that answers `/v1/embeddings` after `delay`.
async fn slow_upstream(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(move || async move {
            tokio::time::sleep(delay).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

/// An edge whose table has one machine at `upstream`, and the sender of its table.
fn edge_in_front_of(upstream: &str) -> (Arc<Edge>, watch::Sender<Arc<RouteTable>>) {
    let table = RouteTable::single("app", vec![Endpoint::new("m1", upstream, "local").unwrap()]);
    let (tx, rx) = watch::channel(Arc::new(table));
    (Edge::new(EdgeConfig::default(), rx), tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_request_in_flight_and_refuses_new_connections() {
    let upstream = slow_upstream(Duration::from_millis(600)).await;
    let (edge, _routes) = edge_in_front_of(&upstream);
    let sockets = serve::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let url = format!("http://{}", sockets.addr());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = serve::spawn(sockets, edge, stop_rx, Duration::from_secs(5)).unwrap();

    let client = reqwest::Client::new();
    let health = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client
                .post(format!("{url}/v1/embeddings"))
                .body(r#"{"model":"app","input":"x"}"#)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();

    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "done"), "the drain cut the request in flight");
    tokio::time::timeout(Duration::from_secs(5), workers.finished())
        .await
        .expect("the workers never finished after their requests were done");
    let fresh = reqwest::Client::new().get(format!("{url}/health")).send().await;
    assert!(fresh.is_err(), "the edge still accepts after the stop");
}

#[tokio::test]
async fn zero_workers_means_one_per_core_on_one_port() {
    let sockets = serve::bind("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    assert_ne!(sockets.addr().port(), 0);
}

#[tokio::test]
async fn an_address_taken_without_reuseport_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = serve::bind(addr, 2).unwrap_err();
    assert!(matches!(error, serve::ServeError::Bind { addr: a, .. } if a == addr), "{error:?}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}
