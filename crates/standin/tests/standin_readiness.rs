//! Readiness per flavour, on a paused clock: vLLM refuses connections while loading, llama-server
//! and SGLang answer 503 while loading; then all answer 200. And the real binary's command line.

mod common;

use common::{get, post, refused, start, Process};
use serde_json::json;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn vllm_refuses_connections_while_loading_then_is_healthy() {
    let s = start(&[
        "--flavor",
        "vllm",
        "serve",
        "/models/m",
        "--served-model-name",
        "m",
        "--load-ms",
        "5000",
    ])
    .await;
    assert!(refused(s.addr).await, "vLLM must refuse connections while it loads");
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert!(refused(s.addr).await, "still loading at 4.9 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = get(s.addr, "/health").await;
    assert_eq!((health.status, health.body.as_str()), (200, ""));
    let models = get(s.addr, "/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], "m");
    assert_eq!(models["data"][0]["root"], "/models/m");
    assert_eq!(models["data"][0]["owned_by"], "vllm");
}

#[tokio::test(start_paused = true)]
async fn llama_answers_loading_model_503_then_ok() {
    let s = start(&["--flavor", "llama", "-m", "/m/tiny.gguf", "--alias", "tiny", "--load-ms", "3000"]).await;
    let health = get(s.addr, "/health").await;
    assert_eq!(health.status, 503);
    let body = health.json();
    assert_eq!(body["error"]["code"], 503);
    assert_eq!(body["error"]["message"], "Loading model");
    assert_eq!(body["error"]["type"], "unavailable_error");
    // Every endpoint answers the same while loading.
    let early = post(s.addr, "/v1/completions", json!({"prompt": "hi"})).await;
    assert_eq!(
        (early.status, early.json()["error"]["message"].as_str()),
        (503, Some("Loading model"))
    );
    tokio::time::sleep(Duration::from_millis(2999)).await;
    assert_eq!(get(s.addr, "/health").await.status, 503);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let health = get(s.addr, "/health").await;
    assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
    assert_eq!(get(s.addr, "/v1/health").await.status, 200);
    assert_eq!(get(s.addr, "/v1/models").await.json()["data"][0]["id"], "tiny");
}

#[tokio::test(start_paused = true)]
async fn sglang_health_and_health_generate_are_503_while_starting() {
    let s = start(&["--flavor", "sglang", "--model-path", "/models/q", "--load-ms", "2000"]).await;
    assert_eq!(get(s.addr, "/health").await.status, 503);
    assert_eq!(get(s.addr, "/health_generate").await.status, 503);
    assert_eq!(post(s.addr, "/v1/completions", json!({"prompt": "hi"})).await.status, 503);
    tokio::time::sleep(Duration::from_millis(2001)).await;
    assert_eq!(get(s.addr, "/health").await.status, 200);
    assert_eq!(get(s.addr, "/health_generate").await.status, 200);
    assert_eq!(get(s.addr, "/v1/models").await.json()["data"][0]["id"], "/models/q");
    assert_eq!(get(s.addr, "/get_model_info").await.json()["model_path"], "/models/q");
}

#[tokio::test(start_paused = true)]
async fn metrics_need_the_flag_where_the_real_engine_does() {
    let llama = start(&["--flavor", "llama", "--load-ms", "0"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = get(llama.addr, "/metrics").await;
    assert_eq!(reply.status, 501);
    assert!(reply.json()["error"]["message"].as_str().unwrap_or("").contains("--metrics"));
    let sglang = start(&["--flavor", "sglang", "--load-ms", "0"]).await;
    assert_eq!(get(sglang.addr, "/metrics").await.status, 404);
    let vllm = start(&["--flavor", "vllm", "--load-ms", "0"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(get(vllm.addr, "/metrics").await.status, 200);
    // Without dev mode vLLM has no sleep endpoints.
    assert_eq!(post(vllm.addr, "/sleep?level=1", json!({})).await.status, 404);
}

/// The binary itself, in real time: vLLM's `serve MODEL` shape, refused until loaded, then healthy.
#[tokio::test]
async fn the_binary_takes_vllms_command_line_and_becomes_ready() {
    let p = Process::start(&[
        "--flavor",
        "vllm",
        "serve",
        "/models/x",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--served-model-name",
        "x",
        "--tensor-parallel-size",
        "1",
        "--load-ms",
        "300",
    ]);
    assert!(refused(p.addr).await, "refused while loading");
    assert!(p.wait_healthy(Duration::from_secs(5)).await, "healthy within 5 s");
    assert_eq!(get(p.addr, "/v1/models").await.json()["data"][0]["id"], "x");
}

#[test]
fn the_binary_reports_every_bad_flag_at_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo-standin"))
        .args(["--flavor", "sglang", "--fail-rate", "3", "--metrics", "--port", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fail-rate") && err.contains("--metrics"), "{err}");
}
