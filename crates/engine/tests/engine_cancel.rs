//! A request whose client goes away leaves the engine's in-flight gauge: hyper drops the
//! handler's future, and the gauge is held by a guard rather than decremented after an await
//! that never returns.

use colo_model::synth::{synth_llama, SynthSpec};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A model tiny enough to load at once with a context long enough that a request for all of
/// it is still generating when the test hangs up.
fn write_model(dir: &std::path::Path) {
    let spec = SynthSpec {
        layers: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 1,
        vocab: 400,
        intermediate: 0,
        context: 16384,
        seed: 3,
        dtype: "f32".into(),
        tie_embeddings: true,
    };
    for (name, bytes) in synth_llama(&spec).unwrap() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// One series of the engine's `/metrics`, named as the text format writes it (labels and
/// all), or `None` when the engine does not answer or has no such series.
async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_for(addr: SocketAddr, series: &str, what: &str, ok: impl Fn(Option<f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = metric(addr, series).await;
        if ok(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {series} is {value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_by_its_client_leaves_the_in_flight_gauge() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let opts = colo_engine::ServeOptions {
        model_dir: dir.path().to_path_buf(),
        addr,
        served_name: "tiny".into(),
        batch_window: Duration::from_millis(1),
        max_batch: 8,
        kv_budget_bytes: 64 << 20,
        max_waiting: 8,
        landing: None,
    };
    let server = tokio::spawn(colo_engine::serve(opts));
    wait_for(addr, "colo_engine_in_flight", "the engine serves", |v| v == Some(0.0)).await;

    // A whole (not streamed) answer: its handler runs until the last token, so hanging up
    // mid-generation is what drops it.
    let body = r#"{"prompt":[5,6,7],"max_tokens":16000,"ignore_eos":true,"temperature":0}"#;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    wait_for(addr, "colo_engine_in_flight", "the request is in flight", |v| v == Some(1.0)).await;
    // Routers written for vLLM read the same queue under vLLM's names.
    let running = "vllm:num_requests_running{model_name=\"tiny\"}";
    wait_for(addr, running, "the sequence shows under vLLM's name", |v| v == Some(1.0)).await;
    let kv = metric(addr, "vllm:kv_cache_usage_perc{model_name=\"tiny\"}").await;
    assert!(kv.is_some_and(|kv| kv > 0.0 && kv <= 1.0), "KV use {kv:?}");
    drop(client);

    wait_for(addr, "colo_engine_in_flight", "the cancelled request left the gauge", |v| {
        v == Some(0.0)
    })
    .await;
    // It left because it was cancelled, not because it was answered first.
    for status in [200, 400, 500, 503] {
        let series = format!("colo_engine_requests_total{{status=\"{status}\"}}");
        assert_eq!(metric(addr, &series).await, None, "{series}");
    }
    server.abort();
}
