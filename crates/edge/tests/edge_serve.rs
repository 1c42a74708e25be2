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

/// An edge served as in production (`serve::spawn`) with short limits; its address.
fn limited_edge(upstream: &str, limits: colo_edge::Limits) -> (String, watch::Sender<bool>, watch::Sender<Arc<RouteTable>>) {
    let table = RouteTable::single("app", vec![Endpoint::new("m1", upstream, "local").unwrap()]);
    let (tx, rx) = watch::channel(Arc::new(table));
    let config = EdgeConfig {
        limits,
        ..EdgeConfig::default()
    };
    let edge = Edge::new(config, rx);
    let sockets = serve::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = sockets.addr().to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    serve::spawn(sockets, edge, stop_rx, Duration::from_secs(1)).unwrap();
    (addr, stop_tx, tx)
}

/// Reads until the server closes the connection (or 5 s pass); what it sent, and when it closed.
async fn read_to_close(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, Option<std::time::Instant>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), Some(std::time::Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// Slowloris and friends: a head trickled line by line, a body that stalls, an idle keep-alive
/// connection and a head the hyper fallback reads are each cut off at their limit, and a client
/// address past its connection cap is answered 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_cut_off_at_the_limits() {
    use tokio::io::AsyncWriteExt;
    let upstream = slow_upstream(Duration::ZERO).await;
    let limits = colo_edge::Limits {
        head_timeout: Duration::from_millis(600),
        body_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_millis(600),
        max_connections_per_addr: 4,
        ..colo_edge::Limits::default()
    };
    let (addr, _stop, _routes) = limited_edge(&upstream, limits);
    let connect = || tokio::net::TcpStream::connect(addr.clone());

    // A head trickled a header line every 100 ms for up to 5 s: 408 after 0.6 s.
    // (The edge drains what the client still sends for a moment after its 408, so that the
    // answer is not lost to a reset: the trickle's writes may go on succeeding meanwhile.)
    let (mut head_reader, mut head_writer) = connect().await.unwrap().into_split();
    let began = std::time::Instant::now();
    head_writer.write_all(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if head_writer.write_all(format!("x-{i}: y\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let (answer, closed) = read_to_close(&mut head_reader).await;
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed.unwrap().duration_since(began) < Duration::from_secs(2), "closed late");

    // A body that stops after 10 of its 100 bytes: 408 once it has been quiet for 0.6 s.
    let mut stalled = connect().await.unwrap();
    stalled
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"model\":")
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed.is_some());

    // A keep-alive connection left idle after a request: closed without a word.
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let began = std::time::Instant::now();
    let (answer, closed) = read_to_close(&mut idle).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.matches("HTTP/1.1").count() == 1,
        "{answer}"
    );
    let idle_for = closed.expect("an idle connection is closed").duration_since(began);
    assert!(
        idle_for >= Duration::from_millis(500) && idle_for < Duration::from_secs(2),
        "{idle_for:?}"
    );

    // A chunked upload goes to hyper, whose header timeout is the same.
    let mut hyper_head = connect().await.unwrap();
    hyper_head
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\ntransfer-encoding: chunked\r\nhost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_to_close(&mut hyper_head).await;
    assert!(closed.is_some(), "hyper keeps a head that never ends open");

    // Four connections held from one address: the fifth is refused at once with a 503.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect().await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect().await.unwrap();
    let (answer, closed) = read_to_close(&mut fifth).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
        "{answer}"
    );
    assert!(closed.is_some());
    drop(held);
}

/// A machine that does not start its answer within the upstream timeout: 504, not a wait
/// without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_does_not_answer_in_time_is_a_504() {
    let upstream = slow_upstream(Duration::from_secs(3)).await;
    let limits = colo_edge::Limits {
        upstream_head_timeout: Duration::from_millis(400),
        ..colo_edge::Limits::default()
    };
    let (addr, _stop, _routes) = limited_edge(&upstream, limits);
    let began = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/embeddings"))
        .body(r#"{"model":"app","input":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
}
