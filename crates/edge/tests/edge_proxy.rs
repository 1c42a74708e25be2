//! The edge over real sockets, in front of small upstream servers started here: streaming
//! without buffering, fast 502s, holding requests for a starting machine, and bad requests.

use axum::body::Body;
use axum::routing::{get, post};
use colo_edge::routes::Endpoint;
use colo_edge::{router, serve_connection, Edge, EdgeConfig, RouteTable};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

/// An upstream that answers `/v1/embeddings` with its name after `delay`, and streams
/// `/stream` in two parts 500 ms apart.
async fn upstream(name: &'static str, delay: Duration) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/embeddings",
            post(move |body: String| async move {
                tokio::time::sleep(delay).await;
                format!("{name}:{}", body.len())
            }),
        )
        .route(
            "/v1/completions",
            post(move |body: String| async move {
                tokio::time::sleep(delay).await;
                format!("{name}:{}", body.len())
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let stream = futures::stream::unfold(0, |i| async move {
                    match i {
                        0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("data: first\n\n")), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            Some((Ok(bytes::Bytes::from("data: second\n\n")), 2))
                        }
                        _ => None,
                    }
                });
                Body::from_stream(stream)
            }),
        );
    serve(app).await
}

fn table(app: &str, addrs: &[(&str, &str)]) -> Arc<RouteTable> {
    table_in(app, &addrs.iter().map(|(id, addr)| (*id, *addr, "local")).collect::<Vec<_>>())
}

/// A table of machines in named regions: (id, address, region).
fn table_in(app: &str, machines: &[(&str, &str, &str)]) -> Arc<RouteTable> {
    let endpoints = machines
        .iter()
        .map(|(id, addr, region)| Endpoint::new(id, addr, region).unwrap())
        .collect();
    Arc::new(RouteTable::single(app, endpoints))
}

/// An edge serving its connections as `colo up` and `colo edge` do ([`serve_connection`]).
async fn start_edge(config: EdgeConfig, initial: Arc<RouteTable>) -> (String, watch::Sender<Arc<RouteTable>>) {
    let (tx, rx) = watch::channel(initial);
    let edge = Edge::new(config, rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let _stop_tx = stop_tx;
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(edge.clone(), stream, stop_rx.clone()));
        }
    });
    (format!("http://{addr}"), tx)
}

/// The same edge behind axum's server ([`router`]), for embedding the edge in another service.
async fn start_edge_router(config: EdgeConfig, initial: Arc<RouteTable>) -> (String, watch::Sender<Arc<RouteTable>>) {
    let (tx, rx) = watch::channel(initial);
    let addr = serve(router(Edge::new(config, rx))).await;
    (format!("http://{addr}"), tx)
}

/// POSTs an embeddings request for app `app` to the edge.
async fn post_embed(client: &reqwest::Client, edge: &str) -> reqwest::Response {
    client
        .post(format!("{edge}/v1/embeddings"))
        .body(embed_body("app"))
        .send()
        .await
        .unwrap()
}

fn embed_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","input":"hello"}}"#)
}

#[tokio::test]
async fn streams_each_part_as_it_arrives() {
    let up = upstream("a", Duration::ZERO).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut response = client
        .get(format!("{edge}/stream"))
        .header("host", "app.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: first\n\n");
    let second = response.chunk().await.unwrap().unwrap();
    let second_at = started.elapsed();
    assert_eq!(&second[..], b"data: second\n\n");
    assert!(
        first_at < Duration::from_millis(300),
        "first part took {first_at:?}: the edge buffered it"
    );
    assert!(
        second_at >= Duration::from_millis(450),
        "second part came at {second_at:?}, before the upstream sent it"
    );
}

#[tokio::test]
async fn a_dead_upstream_is_a_fast_502() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m-dead", &dead)])).await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{edge}/v1/embeddings"))
        .body(embed_body("app"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("m-dead"), "{message}");
    assert!(took < Duration::from_millis(500), "502 took {took:?}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let up = upstream("a", Duration::ZERO).await;
    let config = EdgeConfig {
        max_body: 1024,
        ..EdgeConfig::default()
    };
    let (edge, _tx) = start_edge(config, table("app", &[("m1", &up)])).await;
    let client = reqwest::Client::new();
    let url = format!("{edge}/v1/embeddings");

    let r = client.post(&url).body(embed_body("nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("apps: app"), "{body}");

    let r = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client.post(&url).body(r#"{"input":"x"}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r: serde_json::Value = r.json().await.unwrap();
    assert_eq!(r["error"]["code"], "missing_model");

    let big = format!(r#"{{"model":"app","input":"{}"}}"#, "x".repeat(2048));
    let r = client.post(&url).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413, "declared length over the limit");
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = client.post(&url).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 413, "chunked body over the limit");

    let r = client.post(&url).body(embed_body("app")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["colo-machine"], "m1");
}

#[tokio::test]
async fn requests_wait_for_a_starting_machine_or_get_503() {
    let up = upstream("a", Duration::ZERO).await;
    let config = EdgeConfig {
        hold_timeout: Duration::from_secs(5),
        ..EdgeConfig::default()
    };
    let (edge, tx) = start_edge(config, table("app", &[])).await;
    let client = reqwest::Client::new();
    let held = tokio::spawn({
        let (client, url) = (client.clone(), format!("{edge}/v1/embeddings"));
        async move { client.post(url).body(embed_body("app")).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the request should wait while no machine is started");
    tx.send(table("app", &[("m1", &up)])).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("released promptly")
        .unwrap();
    assert_eq!(response.status(), 200);

    let config = EdgeConfig {
        hold_timeout: Duration::from_millis(200),
        ..EdgeConfig::default()
    };
    let (edge, _tx) = start_edge(config, table("app", &[])).await;
    let r = post_embed(&client, &edge).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn concurrent_requests_spread_over_machines() {
    let a = upstream("a", Duration::from_millis(200)).await;
    let b = upstream("b", Duration::from_millis(200)).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("ma", &a), ("mb", &b)])).await;
    let client = reqwest::Client::new();
    let requests = (0..8).map(|_| {
        let (client, url) = (client.clone(), format!("{edge}/v1/embeddings"));
        tokio::spawn(async move { client.post(url).body(embed_body("app")).send().await.unwrap().text().await.unwrap() })
    });
    // Spawn all eight before awaiting any, so that they are in flight together.
    let requests: Vec<_> = requests.collect();
    let mut on_a = 0;
    for r in requests {
        if r.await.unwrap().starts_with("a:") {
            on_a += 1;
        }
    }
    assert_eq!(on_a, 4, "least in-flight should split 8 concurrent requests 4/4");
}

/// Sends three requests to `app` at once; all must succeed. Returns how long they took.
async fn three_at_once(edge: &str) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{edge}/v1/embeddings"));
            tokio::spawn(async move { client.post(url).body(embed_body("app")).send().await.unwrap().status() })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    started.elapsed()
}

#[tokio::test]
async fn the_hard_limit_holds_requests_until_a_slot_frees() {
    let up = upstream("a", Duration::from_millis(200)).await;
    let route = colo_policy::RouteParams {
        soft_limit: 1,
        hard_limit: 1,
        ..Default::default()
    };
    let (edge, _tx) = start_edge(
        EdgeConfig {
            route,
            ..EdgeConfig::default()
        },
        table("app", &[("m1", &up)]),
    )
    .await;
    let took = three_at_once(&edge).await;
    assert!(
        took >= Duration::from_millis(590),
        "3 requests at a hard limit of 1 must run one after another, took {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "held requests were not released promptly: {took:?}"
    );
}

#[tokio::test]
async fn requests_stay_in_the_edge_region_until_it_is_full_and_follow_steering() {
    let ams = upstream("ams", Duration::from_millis(300)).await;
    let syd = upstream("syd", Duration::from_millis(300)).await;
    let route = colo_policy::RouteParams {
        soft_limit: 2,
        hard_limit: 2,
        ..Default::default()
    };
    let config = EdgeConfig {
        region: "ams".into(),
        route,
        ..EdgeConfig::default()
    };
    let (edge, _tx) = start_edge(config, table_in("app", &[("m-ams", &ams, "ams"), ("m-syd", &syd, "syd")])).await;
    let client = reqwest::Client::new();
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let (client, url) = (client.clone(), format!("{edge}/v1/embeddings"));
        tokio::spawn(async move {
            let mut request = client.post(url).body(embed_body("app"));
            for (k, v) in headers {
                request = request.header(k, v);
            }
            request.send().await.unwrap().text().await.unwrap()
        })
    };
    // Two fit the local machine's hard limit; the next two spill to the far region.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(send(vec![]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut served = Vec::new();
    for a in answers {
        served.push(a.await.unwrap().split(':').next().unwrap().to_string());
    }
    assert_eq!(served, ["ams", "ams", "syd", "syd"]);
    // Steering: forced to Sydney although Amsterdam is idle; an unknown forced region is a 503.
    assert!(send(vec![("colo-force-region", "syd")]).await.unwrap().starts_with("syd:"));
    assert!(send(vec![("colo-prefer-region", "syd")]).await.unwrap().starts_with("syd:"));
    let r = client
        .post(format!("{edge}/v1/embeddings"))
        .header("colo-force-region", "fra")
        .body(embed_body("app"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("regions with machines: ams, syd"));
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_machine() {
    let alive = upstream("alive", Duration::ZERO).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m-alive", &alive), ("m-dead", &dead)])).await;
    let client = reqwest::Client::new();
    for _ in 0..10 {
        let r = post_embed(&client, &edge).await;
        assert_eq!(r.status(), 200, "every request reaches the live machine");
        assert_eq!(r.headers()["colo-machine"], "m-alive");
    }
}

#[tokio::test]
async fn an_upstream_dying_mid_stream_ends_with_an_error_event() {
    let app = axum::Router::new().route(
        "/v1/completions",
        post(|| async {
            let stream = futures::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("data: {\"text\":\"a\"}\n\n")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("engine killed")), 2))
                    }
                    _ => None,
                }
            });
            ([("content-type", "text/event-stream")], Body::from_stream(stream))
        }),
    );
    let up = serve(app).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m-dying", &up)])).await;
    let body = reqwest::Client::new()
        .post(format!("{edge}/v1/completions"))
        .body(r#"{"model":"app","prompt":"x","stream":true}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .expect("the client gets a complete body, ending in an error event");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{body}");
    assert!(events[1].starts_with("data: {\"error\""), "{body}");
    assert!(events[1].contains("m-dying"), "{body}");
}

#[tokio::test]
async fn an_apps_own_limits_override_the_edges() {
    let up = upstream("a", Duration::from_millis(200)).await;
    let mut table = RouteTable::single("app", vec![Endpoint::new("m1", &up, "local").unwrap()]);
    table.apps.get_mut("app").unwrap().limits = colo_edge::routes::Limits {
        soft: Some(1),
        hard: Some(1),
    };
    let (edge, _tx) = start_edge(EdgeConfig::default(), Arc::new(table)).await;
    let took = three_at_once(&edge).await;
    assert!(
        took >= Duration::from_millis(590),
        "the app's hard limit of 1 must serialise its requests, took {took:?}"
    );
}

#[tokio::test]
async fn prompts_with_a_shared_prefix_go_to_the_same_machine() {
    let a = upstream("a", Duration::ZERO).await;
    let b = upstream("b", Duration::ZERO).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("ma", &a), ("mb", &b)])).await;
    let client = reqwest::Client::new();
    let system = "You are a careful assistant. ".repeat(30);
    let mut served = std::collections::HashSet::new();
    for i in 0..8 {
        let body = serde_json::json!({"model": "app", "prompt": format!("{system} question {i}")}).to_string();
        let r = client.post(format!("{edge}/v1/completions")).body(body).send().await.unwrap();
        served.insert(r.headers()["colo-machine"].to_str().unwrap().to_string());
    }
    assert_eq!(served.len(), 1, "one long shared prefix, one machine: {served:?}");
    // Without a shared prefix, idle machines share the work.
    let mut spread = std::collections::HashSet::new();
    for i in 0..16 {
        let body = serde_json::json!({"model": "app", "prompt": format!("short {i}")}).to_string();
        let r = client.post(format!("{edge}/v1/completions")).body(body).send().await.unwrap();
        spread.insert(r.headers()["colo-machine"].to_str().unwrap().to_string());
    }
    assert_eq!(spread.len(), 2, "different prompts should reach both machines");
}

fn key(id: &str, secret: &str, rps: Option<u32>, tokens_per_minute: Option<u32>) -> colo_core::ApiKey {
    colo_core::ApiKey {
        id: id.into(),
        hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
        rps,
        tokens_per_minute,
    }
}

#[tokio::test]
async fn api_keys_guard_apps_and_rate_limit_them() {
    let up = upstream("a", Duration::ZERO).await;
    let endpoint = |id: &str| Endpoint::new(id, &up, "local").unwrap();
    let mut table = RouteTable::single("alpha", vec![endpoint("m1")]);
    table.apps.insert("beta".into(), table.apps["alpha"].clone());
    table.apps.insert("gamma".into(), table.apps["alpha"].clone());
    table.apps.get_mut("alpha").unwrap().keys = vec![key("k-a", "secret-a", Some(2), None)];
    table.apps.get_mut("beta").unwrap().keys = vec![key("k-b", "secret-b", None, None)];
    table.apps.get_mut("gamma").unwrap().keys = vec![key("k-g", "secret-g", None, Some(300))];
    let (edge, _tx) = start_edge(EdgeConfig::default(), Arc::new(table)).await;
    let client = reqwest::Client::new();
    let send = |path: &str, app: &str, bearer: Option<&str>, extra: &str| {
        let mut request = client
            .post(format!("{edge}{path}"))
            .body(format!(r#"{{"model":"{app}","input":"x"{extra}}}"#));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        request.send()
    };

    // No key, another app's key, a key of no app: the same 401, naming no app.
    for (app, bearer) in [("alpha", None), ("alpha", Some("secret-b")), ("alpha", Some("guess"))] {
        let r = send("/v1/embeddings", app, bearer, "").await.unwrap();
        assert_eq!(r.status(), 401, "{app} with {bearer:?}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("alpha") && !text.contains("beta") && !text.contains("gamma") && !text.contains("nope"),
            "{text}"
        );
    }
    // A key of no app and a name that is no app: 404, listing the open apps (none here).
    let r = send("/v1/embeddings", "nope", Some("guess"), "").await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("alpha") && !text.contains("beta") && !text.contains("gamma"),
        "{text}"
    );
    // A valid key and a name that is no app: 404 naming the key's own app only.
    let r = send("/v1/embeddings", "nope", Some("secret-a"), "").await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("alpha") && !text.contains("beta") && !text.contains("gamma"),
        "{text}"
    );
    // Two requests per second for alpha's key; the third waits.
    for _ in 0..2 {
        assert_eq!(send("/v1/embeddings", "alpha", Some("secret-a"), "").await.unwrap().status(), 200);
    }
    let r = send("/v1/embeddings", "alpha", Some("secret-a"), "").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(send("/v1/embeddings", "beta", Some("secret-b"), "").await.unwrap().status(), 200);
    // 300 tokens a minute: one request that may use 200 fits, the next does not.
    assert_eq!(
        send("/v1/completions", "gamma", Some("secret-g"), r#","max_tokens":200"#)
            .await
            .unwrap()
            .status(),
        200
    );
    let r = send("/v1/completions", "gamma", Some("secret-g"), r#","max_tokens":200"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("tokens per minute"));
}

#[tokio::test]
async fn apps_with_keys_are_not_listed_to_strangers() {
    let up = upstream("a", Duration::ZERO).await;
    let mut table = RouteTable::single("open", vec![Endpoint::new("m1", &up, "local").unwrap()]);
    table.apps.insert("secret".into(), table.apps["open"].clone());
    table.apps.get_mut("secret").unwrap().keys = vec![key("k-s", "s3cret", None, None)];
    let (edge, _tx) = start_edge(EdgeConfig::default(), Arc::new(table)).await;
    let client = reqwest::Client::new();
    let text = client
        .post(format!("{edge}/v1/embeddings"))
        .body(embed_body("nope"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("apps: open") && !text.contains("secret"), "{text}");
    let models = client.get(format!("{edge}/v1/models")).send().await.unwrap().text().await.unwrap();
    assert!(models.contains("open") && !models.contains("secret"), "{models}");
    // With its key, the app is listed and described; without, it does not exist.
    let models = client
        .get(format!("{edge}/v1/models"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(models.contains("\"open\"") && models.contains("\"secret\""), "{models}");
    let one = |id: &str, key: Option<&str>| {
        let mut request = client.get(format!("{edge}/v1/models/{id}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let r = one("secret", Some("s3cret")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], "secret");
    assert_eq!(one("open", None).await.unwrap().status(), 200);
    let r = one("secret", None).await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("apps: open") && !text.contains("apps: open, secret"), "{text}");
    assert_eq!(one("nope", Some("s3cret")).await.unwrap().status(), 404);
}

#[tokio::test]
async fn wrong_methods_get_405_and_wrong_paths_404_not_invalid_json() {
    let up = upstream("a", Duration::ZERO).await;
    let table = RouteTable::single("open", vec![Endpoint::new("m1", &up, "local").unwrap()]);
    let (edge, _tx) = start_edge(EdgeConfig::default(), Arc::new(table)).await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{edge}/v1/completions")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = client.delete(format!("{edge}/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let r = client.get(format!("{edge}/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("/v1/chat/completions") && !text.contains("JSON"), "{text}");
    // A POST endpoint with a bad body is still the body's fault; a good one is routed.
    let r = client.post(format!("{edge}/v1/embeddings")).body("{").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{edge}/v1/embeddings"))
        .body(embed_body("open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// An upstream that accepts connections, reads the request and hangs up without answering:
/// the request was sent, so only an idempotent one may go elsewhere.
async fn hangs_up() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                drop(socket);
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_failure_after_sending_is_retried_only_for_idempotent_methods() {
    let alive = upstream("alive", Duration::ZERO).await;
    let hangs = hangs_up().await;
    // Affinity off and one machine each: the rotating tie-break sends some requests to the
    // machine that hangs up first.
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m-alive", &alive), ("m-hangs", &hangs)])).await;
    let client = reqwest::Client::new();
    let (mut get_ok, mut post_failed) = (0, 0);
    for _ in 0..10 {
        let r = client
            .get(format!("{edge}/stream"))
            .header("host", "app.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a GET is resent to the live machine");
        assert_eq!(r.headers()["colo-machine"], "m-alive");
        get_ok += 1;
        let r = post_embed(&client, &edge).await;
        match r.status().as_u16() {
            200 => assert_eq!(r.headers()["colo-machine"], "m-alive"),
            502 => {
                post_failed += 1;
                let body = r.text().await.unwrap();
                assert!(body.contains("m-hangs"), "the 502 names the machine: {body}");
            }
            other => panic!("POST answered {other}"),
        }
    }
    assert_eq!(get_ok, 10);
    assert!(post_failed > 0, "some POSTs reached the machine that hangs up and were not resent");
}

/// An upstream that answers every request with `colo-replay: <value>` and counts them.
async fn replays(value: &'static str, hits: Arc<std::sync::atomic::AtomicUsize>) -> String {
    let app = axum::Router::new().fallback(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ([("colo-replay", value)], "replay me")
        }
    });
    serve(app).await
}

#[tokio::test]
async fn colo_replay_resends_the_request_where_it_says_at_most_ten_times() {
    let target = upstream("target", Duration::ZERO).await;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let to_target = replays("instance=m-target", hits.clone()).await;
    let to_region = replays("region=ams", hits.clone()).await;
    let machines = [("m-first", to_target.as_str(), "ord"), ("m-target", target.as_str(), "ord")];
    let config = EdgeConfig {
        region: "ord".into(),
        ..EdgeConfig::default()
    };
    let (edge, tx) = start_edge(config.clone(), table_in("app", &machines)).await;
    let client = reqwest::Client::new();
    let body = r#"{"model":"app","input":"a body the replay must carry"}"#;
    for _ in 0..4 {
        let r = client.post(format!("{edge}/v1/embeddings")).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["colo-machine"], "m-target");
        assert_eq!(
            r.text().await.unwrap(),
            format!("target:{}", body.len()),
            "the body was resent whole"
        );
    }

    // region=ams: the request goes to ams even though the edge is in ord.
    tx.send(table_in(
        "app",
        &[("m-ord", to_region.as_str(), "ord"), ("m-ams", target.as_str(), "ams")],
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = client
        .post(format!("{edge}/v1/embeddings"))
        .header("colo-prefer-region", "ord")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["colo-region"], "ams");

    // A machine that always replays to itself is given up on after ten resends.
    let looping_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let looping = replays("instance=m-loop", looping_hits.clone()).await;
    tx.send(table_in("app", &[("m-loop", looping.as_str(), "ord")])).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = client.post(format!("{edge}/v1/embeddings")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("more than 10 times"));
    assert_eq!(
        looping_hits.load(std::sync::atomic::Ordering::SeqCst),
        11,
        "the first send and ten replays"
    );

    // A malformed header is an upstream error, not a loop or a panic.
    let bad = replays("somewhere=else", Arc::default()).await;
    tx.send(table_in("app", &[("m-bad", bad.as_str(), "ord")])).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = client.post(format!("{edge}/v1/embeddings")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("bad colo-replay header"));
}

#[tokio::test]
async fn a_full_hold_queue_answers_503_at_once() {
    let config = EdgeConfig {
        hold_timeout: Duration::from_secs(10),
        max_held: 2,
        ..EdgeConfig::default()
    };
    let (edge, _tx) = start_edge(config, table("app", &[])).await;
    let client = reqwest::Client::new();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{edge}/v1/embeddings"));
            tokio::spawn(async move { client.post(url).body(embed_body("app")).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = post_embed(&client, &edge).await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the third request was not turned away at once"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("already has 2 requests waiting"));
    for w in waiting {
        w.abort();
    }
}

/// A bare HTTP/1.1 upstream that counts the connections it accepts and answers every request
/// with `ok`; it closes a connection that stays idle for `idle_close`.
async fn counting_upstream(idle_close: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(idle_close, socket.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle too long, or the edge hung up
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..head_end + length);
                    if socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_to_machines_are_kept_and_reused() {
    let (up, accepted) = counting_upstream(Duration::from_secs(30)).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let r = post_embed(&client, &edge).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // Sequential requests from one runtime thread: at most one connection per worker thread
    // of the test runtime, never one per request.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "50 sequential requests opened {n} connections to the machine");
}

#[tokio::test]
async fn a_machine_closing_idle_connections_fails_no_request() {
    // The machine drops connections idle for 50 ms; the edge must notice and open new ones
    // instead of sending a POST (not retried after sending) down a dead connection.
    let (up, accepted) = counting_upstream(Duration::from_millis(50)).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = post_embed(&client, &edge).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 5, "each request after an idle close needs a new connection; saw {n}");
}

/// Sends `raw` on a new connection to the edge and reads until the edge closes it.
async fn raw_exchange(edge: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(edge.trim_start_matches("http://")).await.unwrap();
    socket.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut out))
        .await
        .expect("the edge did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn two_hosts_and_signed_lengths_are_refused() {
    let up = upstream("a", Duration::ZERO).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let cases = [
        ("two Hosts", "host: app.localhost\r\nhost: other.localhost\r\ncontent-length: 2\r\n"),
        ("a signed length", "host: app.localhost\r\ncontent-length: +2\r\n"),
        ("a length with a space inside", "host: app.localhost\r\ncontent-length: 1 2\r\n"),
    ];
    for (what, headers) in cases {
        let raw = format!("POST /v1/embeddings HTTP/1.1\r\n{headers}connection: close\r\n\r\n{{}}");
        let answer = raw_exchange(&edge, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    // The same request, written right, is served.
    let raw = "POST /v1/embeddings HTTP/1.1\r\nhost: app.localhost\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    let answer = raw_exchange(&edge, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = upstream("a", Duration::ZERO).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let one = |body: &str, last: bool| {
        format!(
            "POST /v1/embeddings HTTP/1.1\r\nhost: app.localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if last { "connection: close\r\n" } else { "" }
        )
    };
    let raw = format!("{}{}{}", one("x", false), one("yy", false), one("zzz", true));
    let answer = raw_exchange(&edge, raw.as_bytes()).await;
    let bodies: Vec<&str> = answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| {
            assert!(r.starts_with("200 "), "{r}");
            r.rsplit("\r\n\r\n").next().unwrap()
        })
        .collect();
    assert_eq!(bodies, ["a:1", "a:2", "a:3"], "{answer}");
    assert!(answer.to_ascii_lowercase().contains("colo-machine: m1"), "{answer}");
}

#[tokio::test]
async fn requests_the_edge_does_not_read_itself_are_served_by_hyper() {
    let up = upstream("a", Duration::ZERO).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    // An upload of unknown length (chunked).
    let chunks = futures::stream::iter(["ab", "cde"].map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s))));
    let response = reqwest::Client::new()
        .post(format!("{edge}/v1/embeddings"))
        .header("host", "app.localhost")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "a:5");
    // HTTP/1.0.
    let answer = raw_exchange(
        &edge,
        b"POST /v1/embeddings HTTP/1.0\r\nhost: app.localhost\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("a:4"), "{answer}");
    // A head that does not parse gets hyper's 400, not a hang.
    let answer = raw_exchange(&edge, b"NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A body over the edge's limit is still refused with 413 and the limit.
    let config = EdgeConfig {
        max_body: 1000,
        ..EdgeConfig::default()
    };
    let (small, _tx) = start_edge(config, table("app", &[("m1", &up)])).await;
    let response = reqwest::Client::new()
        .post(format!("{small}/v1/embeddings"))
        .header("host", "app.localhost")
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.text().await.unwrap().contains("1000"));
}

#[tokio::test]
async fn the_router_serves_the_same_edge() {
    let up = upstream("a", Duration::ZERO).await;
    let (edge, _tx) = start_edge_router(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let response = post_embed(&reqwest::Client::new(), &edge).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "a:31");
}

#[tokio::test]
async fn a_head_request_gets_the_machines_length_and_no_body() {
    let (up, _) = counting_upstream(Duration::from_secs(30)).await;
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[("m1", &up)])).await;
    let answer = raw_exchange(
        &edge,
        b"HEAD /v1/embeddings HTTP/1.1\r\nhost: app.localhost\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(head.to_ascii_lowercase().contains("content-length: 2"), "{answer}");
    assert_eq!(body, "", "a HEAD answer carries no body");
}

#[tokio::test]
async fn the_edges_own_answers_are_dated() {
    let (edge, _tx) = start_edge(EdgeConfig::default(), table("app", &[])).await;
    let answer = raw_exchange(&edge, b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\r\ndate: "), "{answer}");
}
