//! Injected failures, an engine that dies after N requests (in this process and as the binary),
//! and 400s that name the field at fault.

mod common;

use colo_standin::Ended;
use common::{complete, get, post, refused, start, Process};
use serde_json::json;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn fail_rate_answers_that_fraction_with_500() {
    let s = start(&["--flavor", "vllm", "--load-ms", "0", "--fail-rate", "1", "--itl-ms", "0"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = complete(s.addr, "hello", 2).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "InternalServerError");
    assert_eq!(reply.json()["error"]["code"], 500);

    let s = start(&[
        "--flavor",
        "vllm",
        "--load-ms",
        "0",
        "--fail-rate",
        "0.3",
        "--seed",
        "7",
        "--itl-ms",
        "0",
        "--ttft-ms",
        "0",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut failed = 0;
    for _ in 0..200 {
        match complete(s.addr, "hello", 1).await.status {
            200 => {}
            500 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((35..=85).contains(&failed), "{failed} of 200 failed at a rate of 0.3");
    // The health of a failing engine is still fine: the failures are per request.
    assert_eq!(get(s.addr, "/health").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn die_after_answers_n_requests_then_health_503_then_exits() {
    let s = start(&[
        "--flavor",
        "vllm",
        "--load-ms",
        "0",
        "--die-after",
        "3",
        "--die-linger-ms",
        "1000",
        "--itl-ms",
        "10",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 0..3 {
        let reply = complete(s.addr, "hello", 3).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Dead, lingering: vLLM's health says 503, generation fails.
    let health = get(s.addr, "/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(complete(s.addr, "hello", 1).await.status, 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(refused(s.addr).await, "the server closed after its linger");
    let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
    assert!(matches!(ended, Ok(Ok(Ok(Ended::Died)))), "{ended:?}");
}

/// Death takes the requests in flight with it.
#[tokio::test(start_paused = true)]
async fn death_fails_the_requests_in_flight() {
    let s = start(&["--flavor", "sglang", "--load-ms", "0", "--die-after", "2", "--itl-ms", "100"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let addr = s.addr;
    let long = tokio::spawn(async move {
        post(
            addr,
            "/v1/completions",
            json!({"prompt": "long", "max_tokens": 100, "stream": true}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let short = complete(addr, "short", 2).await;
    assert_eq!(short.status, 200, "{}", short.body);
    let long = long.await.expect("client");
    let events = long.events();
    assert!(events.len() < 100, "the long answer was cut: {} events", events.len());
    assert!(events.iter().any(|e| e.contains("EngineDeadError")), "{events:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
    assert!(matches!(ended, Ok(Ok(Ok(Ended::Died)))), "{ended:?}");
}

/// The binary exits with status 1, as a crashed engine does, after answering its last request.
#[tokio::test]
async fn the_binary_exits_1_after_die_after() {
    let mut p = Process::start(&[
        "--flavor",
        "llama",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--load-ms",
        "0",
        "--die-after",
        "2",
        "--itl-ms",
        "1",
    ]);
    assert!(p.wait_healthy(Duration::from_secs(5)).await);
    for _ in 0..2 {
        let reply = complete(p.addr, "hello", 2).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["choices"][0]["text"].as_str().map(|t| t.split(' ').count()), Some(2));
    }
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1));
}

#[tokio::test(start_paused = true)]
async fn bad_requests_name_their_field() {
    let s = start(&["--flavor", "vllm", "--served-model-name", "m", "--load-ms", "0"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let cases = [
        ("/v1/completions", json!({}), 400, "prompt"),
        ("/v1/completions", json!({"prompt": ""}), 400, "prompt"),
        ("/v1/completions", json!({"prompt": 5}), 400, "prompt"),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": -1}), 400, "max_tokens"),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": 0}), 400, "max_tokens"),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": "ten"}), 400, "max_tokens"),
        ("/v1/completions", json!({"prompt": "hi", "stream": "yes"}), 400, "stream"),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream_options": {"include_usage": true}}),
            400,
            "stream_options",
        ),
        ("/v1/completions", json!({"prompt": "hi", "n": 2}), 400, "n"),
        ("/v1/completions", json!({"prompt": "hi", "model": "other"}), 404, "model"),
        ("/v1/completions", json!({"prompt": "hi", "model": 3}), 400, "model"),
        ("/v1/chat/completions", json!({"messages": []}), 400, "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 7}]}),
            400,
            "messages",
        ),
        ("/v1/chat/completions", json!({"prompt": "hi"}), 400, "messages"),
    ];
    for (path, body, status, param) in cases {
        let reply = post(s.addr, path, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param, "{body}: {}", reply.body);
        assert_eq!(error["code"], status, "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let not_json = common::call(s.addr, "POST", "/v1/completions", None).await.expect("call");
    assert_eq!((not_json.status, not_json.json()["error"]["param"].as_str()), (400, Some("body")));
    let unknown = get(s.addr, "/v2/nothing").await;
    assert_eq!(unknown.status, 404);
}
