//! Sleep and wake per flavour: vLLM's development endpoints, SGLang's memory release, and
//! llama-server's idle sleep. Sleeping drops the prefix cache; waking takes its time.

mod common;

use common::{complete, get, post, start, words, Process};
use serde_json::json;
use std::time::Duration;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const VLLM_SLEEPY: [&str; 16] = [
    "--flavor",
    "vllm",
    "--enable-sleep-mode",
    "--server-dev-mode",
    "--load-ms",
    "1000",
    "--wake-ms",
    "300",
    "--ttft-ms",
    "10",
    "--prefill-us-per-token",
    "1000",
    "--itl-ms",
    "100",
    "--prefix-block-tokens",
    "16",
];

#[tokio::test(start_paused = true)]
async fn vllm_sleeps_fails_requests_and_wakes_without_its_cache() {
    let s = start(&VLLM_SLEEPY).await;
    tokio::time::sleep(Duration::from_millis(1001)).await;
    let prompt = words("p", 100);
    assert!((ms(complete(s.addr, &prompt, 1).await.total) - 110.0).abs() < 0.5);
    assert!((ms(complete(s.addr, &prompt, 1).await.total) - 14.0).abs() < 0.5, "cached");
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": false}));

    assert_eq!(post(s.addr, "/sleep?level=1", json!({})).await.status, 200);
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": true}));
    let refused = complete(s.addr, &prompt, 1).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(get(s.addr, "/health").await.status, 200, "an asleep engine is healthy");

    let wake = post(s.addr, "/wake_up", json!({})).await;
    assert_eq!(wake.status, 200);
    assert!((ms(wake.total) - 300.0).abs() < 0.5, "level 1 wakes in --wake-ms: {:?}", wake.total);
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": false}));
    let after = complete(s.addr, &prompt, 1).await;
    assert!(
        (ms(after.total) - 110.0).abs() < 0.5,
        "the prefix cache was dropped: {:?}",
        after.total
    );

    // Level 2 discarded the weights: waking reads them again (--load-ms more).
    assert_eq!(post(s.addr, "/sleep?level=2", json!({})).await.status, 200);
    let wake = post(s.addr, "/wake_up", json!({})).await;
    assert!((ms(wake.total) - 1300.0).abs() < 0.5, "level 2: {:?}", wake.total);

    // Woken by parts: weights first, and it sleeps on until the KV cache wakes too.
    assert_eq!(post(s.addr, "/sleep?level=2", json!({})).await.status, 200);
    let weights = post(s.addr, "/wake_up?tags=weights", json!({})).await;
    assert!((ms(weights.total) - 1300.0).abs() < 0.5);
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": true}));
    assert_eq!(
        post(s.addr, "/collective_rpc", json!({"method": "reload_weights"})).await.status,
        200
    );
    assert_eq!(post(s.addr, "/wake_up?tags=kv_cache", json!({})).await.status, 200);
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": false}));
    assert_eq!(post(s.addr, "/reset_prefix_cache", json!({})).await.status, 200);
    assert_eq!(complete(s.addr, &prompt, 1).await.status, 200);

    let bad = post(s.addr, "/sleep?level=3", json!({})).await;
    assert_eq!((bad.status, bad.json()["error"]["param"].as_str()), (400, Some("level")));
}

#[tokio::test(start_paused = true)]
async fn vllm_sleep_aborts_requests_in_flight() {
    let s = start(&VLLM_SLEEPY).await;
    tokio::time::sleep(Duration::from_millis(1001)).await;
    let addr = s.addr;
    let whole = tokio::spawn(async move { complete(addr, "a long answer", 50).await });
    let streamed =
        tokio::spawn(async move { post(addr, "/v1/completions", json!({"prompt": "b", "max_tokens": 50, "stream": true})).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(post(addr, "/sleep?level=1", json!({})).await.status, 200);
    let whole = whole.await.expect("client");
    assert_eq!(whole.status, 500, "{}", whole.body);
    let streamed = streamed.await.expect("client");
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events[events.len() - 2].contains("\"error\""), "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn vllm_sleep_needs_sleep_mode_and_dev_mode() {
    let s = start(&["--flavor", "vllm", "--server-dev-mode", "--load-ms", "0"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = post(s.addr, "/sleep?level=1", json!({})).await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("--enable-sleep-mode"), "{}", reply.body);
    assert_eq!(get(s.addr, "/is_sleeping").await.json(), json!({"is_sleeping": false}));
}

/// The real server's switch is the environment variable; the binary takes it.
#[tokio::test]
async fn the_binary_takes_dev_mode_from_the_environment() {
    let args = [
        "--flavor",
        "vllm",
        "--enable-sleep-mode",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--load-ms",
        "0",
    ];
    let with = Process::start_with_env(&args, &[("VLLM_SERVER_DEV_MODE", "1")]);
    let without = Process::start_with_env(&args, &[("VLLM_SERVER_DEV_MODE", "0")]);
    for p in [&with, &without] {
        assert!(p.wait_healthy(Duration::from_secs(5)).await, "healthy within 5 s");
    }
    assert_eq!(post(with.addr, "/sleep?level=1", json!({})).await.status, 200);
    assert_eq!(get(with.addr, "/is_sleeping").await.json(), json!({"is_sleeping": true}));
    assert_eq!(post(without.addr, "/sleep?level=1", json!({})).await.status, 404);
}

#[tokio::test(start_paused = true)]
async fn sglang_releases_and_resumes_memory() {
    let s = start(&[
        "--flavor",
        "sglang",
        "--load-ms",
        "0",
        "--wake-ms",
        "400",
        "--ttft-ms",
        "10",
        "--prefill-us-per-token",
        "1000",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let prompt = words("s", 100);
    complete(s.addr, &prompt, 1).await;
    assert!((ms(complete(s.addr, &prompt, 1).await.total) - 14.0).abs() < 0.5, "cached");

    // Not while a request runs.
    let addr = s.addr;
    let busy = tokio::spawn(async move { complete(addr, "busy", 5).await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(post(s.addr, "/release_memory_occupation", json!({})).await.status, 400);
    assert_eq!(busy.await.expect("client").status, 200);

    assert_eq!(post(s.addr, "/release_memory_occupation", json!({})).await.status, 200);
    assert_eq!(complete(s.addr, &prompt, 1).await.status, 503);
    assert_eq!(get(s.addr, "/health").await.status, 200);
    let resume = post(s.addr, "/resume_memory_occupation", json!({})).await;
    assert_eq!(resume.status, 200);
    assert!((ms(resume.total) - 400.0).abs() < 0.5, "resume takes --wake-ms: {:?}", resume.total);
    let after = complete(s.addr, &prompt, 1).await;
    assert!(
        (ms(after.total) - 110.0).abs() < 0.5,
        "released memory took the cache: {:?}",
        after.total
    );
}

#[tokio::test(start_paused = true)]
async fn llama_sleeps_when_idle_and_the_next_request_reloads() {
    let s = start(&[
        "--flavor",
        "llama",
        "--metrics",
        "--load-ms",
        "2000",
        "--sleep-idle-seconds",
        "5",
        "--ttft-ms",
        "10",
        "--prefill-us-per-token",
        "500",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(2001)).await;
    assert_eq!(get(s.addr, "/props").await.json()["is_sleeping"], false);
    let first = complete(s.addr, "hello there", 1).await;
    assert_eq!(first.total, Duration::from_millis(11), "10 ms + 2 tokens × 0.5 ms");

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(get(s.addr, "/props").await.json()["is_sleeping"], false, "4 s idle of 5");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(s.addr, "/props").await.json()["is_sleeping"], true, "5 s idle");
    // Neither health nor props nor metrics wakes it.
    assert_eq!(get(s.addr, "/health").await.status, 200);
    assert_eq!(get(s.addr, "/metrics").await.status, 200);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(get(s.addr, "/props").await.json()["is_sleeping"], true);

    // The next request reloads the model (--load-ms) and is answered.
    let woken = complete(s.addr, "hello there", 1).await;
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert_eq!(woken.total, Duration::from_millis(2011), "reload + time to first token");
    assert_eq!(get(s.addr, "/props").await.json()["is_sleeping"], false);
}
