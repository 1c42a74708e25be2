//! Metric names per flavour, and their values moving with load: running, waiting, KV usage.

mod common;

use common::{complete, metric, metrics, start, words};
use std::time::Duration;

/// Eight requests at once with two places: two run, six wait; then all finish.
#[tokio::test(start_paused = true)]
async fn vllm_running_and_waiting_follow_the_load() {
    let s = start(&[
        "--flavor",
        "vllm",
        "--served-model-name",
        "m",
        "--load-ms",
        "0",
        "--max-running",
        "2",
        "--kv-tokens",
        "1000",
        "--ttft-ms",
        "100",
        "--itl-ms",
        "100",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let addr = s.addr;
    let clients: Vec<_> = (0..8)
        .map(|i| tokio::spawn(async move { complete(addr, &words(&format!("r{i}-"), 40), 10).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "vllm:num_requests_running"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "vllm:num_requests_waiting"), Some(6.0), "{text}");
    // Two sequences of 40 + 10 tokens in a budget of 1000.
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), Some(0.1), "{text}");
    assert!(
        text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\n"),
        "{text}"
    );
    for client in clients {
        let reply = client.await.expect("client");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "vllm:num_requests_running"), Some(0.0));
    assert_eq!(metric(&text, "vllm:num_requests_waiting"), Some(0.0));
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), Some(0.0));
    assert_eq!(metric(&text, "vllm:prompt_tokens_total"), Some(320.0));
    assert_eq!(metric(&text, "vllm:generation_tokens_total"), Some(80.0));
    assert_eq!(metric(&text, "vllm:request_success_total"), Some(8.0));
    assert_eq!(metric(&text, "vllm:time_to_first_token_seconds_count"), Some(8.0));
    assert!(text.contains("# TYPE vllm:prefix_cache_hits counter\n"), "{text}");
    assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram\n"), "{text}");
    // A pair runs 1.002 s (100 ms + 40 uncached tokens × 50 µs of prefill, then 9 × 100 ms of
    // decode), and the pairs behind it wait: first tokens at 0.102, 1.104, 2.106 and 3.108 s.
    let sum = metric(&text, "vllm:time_to_first_token_seconds_sum").unwrap_or(0.0);
    assert!((sum - (2.0 * (0.102 + 1.104 + 2.106 + 3.108))).abs() < 1e-6, "sum {sum}");
}

/// The KV budget holds sequences back even with places free.
#[tokio::test(start_paused = true)]
async fn the_kv_budget_admits_only_what_fits() {
    let s = start(&[
        "--flavor",
        "sglang",
        "--enable-metrics",
        "--load-ms",
        "0",
        "--max-running",
        "8",
        "--kv-tokens",
        "250",
        "--itl-ms",
        "50",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let addr = s.addr;
    // Each holds 90 + 10 = 100 tokens: two fit in 250, the other two wait.
    let clients: Vec<_> = (0..4)
        .map(|i| tokio::spawn(async move { complete(addr, &words(&format!("k{i}-"), 90), 10).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "sglang:num_running_reqs"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "sglang:num_queue_reqs"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "sglang:num_used_tokens"), Some(200.0), "{text}");
    assert_eq!(metric(&text, "sglang:token_usage"), Some(0.8), "{text}");
    assert!(text.contains("model_name=\"standin\""), "{text}");
    for client in clients {
        assert_eq!(client.await.expect("client").status, 200);
    }
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "sglang:num_running_reqs"), Some(0.0));
    assert_eq!(metric(&text, "sglang:prompt_tokens_total"), Some(360.0));
    assert_eq!(metric(&text, "sglang:generation_tokens_total"), Some(40.0));
    assert_eq!(metric(&text, "sglang:time_to_first_token_seconds_count"), Some(4.0));
}

#[tokio::test(start_paused = true)]
async fn llama_processing_and_deferred_follow_the_load() {
    let s = start(&["--flavor", "llama", "--metrics", "--load-ms", "0", "-np", "1", "--itl-ms", "100"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let addr = s.addr;
    let clients: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { complete(addr, &words(&format!("l{i}-"), 20), 5).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let text = metrics(addr).await;
    assert!(text.contains("\nllamacpp:requests_processing 1\n"), "{text}");
    assert_eq!(metric(&text, "llamacpp:requests_deferred"), Some(2.0), "{text}");
    for client in clients {
        assert_eq!(client.await.expect("client").status, 200);
    }
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "llamacpp:requests_processing"), Some(0.0));
    assert_eq!(metric(&text, "llamacpp:prompt_tokens_total"), Some(60.0));
    assert_eq!(metric(&text, "llamacpp:tokens_predicted_total"), Some(15.0));
    assert!(text.contains("# TYPE llamacpp:prompt_tokens_total counter\n"), "{text}");
}

/// A request that could never fit is refused at once, naming the field.
#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_kv_budget_or_context_is_a_400() {
    let s = start(&["--flavor", "vllm", "--load-ms", "0", "--kv-tokens", "100", "--context", "80"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = complete(s.addr, &words("w", 70), 20).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "max_tokens");
    let reply = complete(s.addr, &words("w", 90), 5).await;
    assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (400, Some("prompt")));
    let s = start(&["--flavor", "vllm", "--load-ms", "0", "--kv-tokens", "50"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = complete(s.addr, &words("w", 45), 10).await;
    assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (400, Some("max_tokens")));
    assert!(reply.json()["error"]["message"].as_str().unwrap_or("").contains("KV"));
}

/// A client that goes away mid-answer gives its place back.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_frees_its_place() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&["--flavor", "vllm", "--load-ms", "0", "--max-running", "1", "--itl-ms", "100"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let body = r#"{"prompt": "go on", "max_tokens": 1000, "stream": true}"#;
    let mut socket = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut buf = [0u8; 1024];
    assert!(socket.read(&mut buf).await.expect("read") > 0);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:num_requests_running"), Some(1.0), "{text}");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:num_requests_running"), Some(0.0), "{text}");
    assert_eq!(complete(s.addr, "next", 2).await.status, 200);
}
