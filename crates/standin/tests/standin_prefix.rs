//! The prefix cache: a repeated prompt's first token comes sooner by exactly the prefill of the
//! tokens it found cached, the counters say so, and least recently used blocks make way.

mod common;

use common::{complete, metric, metrics, post, start, words};
use serde_json::json;
use std::time::Duration;

/// ttft 10 ms, 1 ms per uncached prompt token, blocks of 16.
const TIMING: [&str; 10] = [
    "--load-ms",
    "0",
    "--ttft-ms",
    "10",
    "--prefill-us-per-token",
    "1000",
    "--itl-ms",
    "5",
    "--prefix-block-tokens",
    "16",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(start_paused = true)]
async fn a_repeated_prompt_skips_its_cached_prefill() {
    let mut args = vec!["--flavor", "vllm", "--served-model-name", "m"];
    args.extend(TIMING);
    let s = start(&args).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let prompt = words("p", 200);

    // Cold: 10 ms + 200 uncached tokens.
    let first = complete(s.addr, &prompt, 1).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!((ms(first.total) - 210.0).abs() < 0.5, "cold {:?}", first.total);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:prefix_cache_queries_total"), Some(200.0));
    assert_eq!(metric(&text, "vllm:prefix_cache_hits_total"), Some(0.0));

    // Warm: the 12 full blocks before the last token hit (192 tokens); 8 are computed.
    let second = complete(s.addr, &prompt, 1).await;
    assert!((ms(second.total) - 18.0).abs() < 0.5, "warm {:?}", second.total);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:prefix_cache_queries_total"), Some(400.0));
    assert_eq!(metric(&text, "vllm:prefix_cache_hits_total"), Some(192.0));

    // Streamed, the first event comes at the same time to first token.
    let streamed = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 3, "stream": true}),
    )
    .await;
    assert!(
        (ms(streamed.first_byte) - 18.0).abs() < 0.5,
        "streamed first byte {:?}",
        streamed.first_byte
    );

    // A shared first half: its 6 full blocks (96 tokens) hit, the other 104 tokens are computed.
    let half = format!("{} {}", words("p", 100), words("q", 100));
    let third = complete(s.addr, &half, 1).await;
    assert!((ms(third.total) - 114.0).abs() < 0.5, "half {:?}", third.total);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:prefix_cache_hits_total"), Some(192.0 * 2.0 + 96.0));

    // Another model name would chain different hashes: nothing to test over HTTP, but the same
    // prompt as token ids is a different token sequence, so it misses.
    let ids: Vec<u32> = (0..200).collect();
    let by_ids = post(s.addr, "/v1/completions", json!({"prompt": ids, "max_tokens": 1})).await;
    assert!((ms(by_ids.total) - 210.0).abs() < 0.5, "ids {:?}", by_ids.total);
}

#[tokio::test(start_paused = true)]
async fn least_recently_used_blocks_are_evicted() {
    let mut args = vec!["--flavor", "vllm", "--prefix-cache-blocks", "12"];
    args.extend(TIMING);
    let s = start(&args).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (a, b) = (words("a", 200), words("b", 200));
    complete(s.addr, &a, 1).await;
    assert!((ms(complete(s.addr, &a, 1).await.total) - 18.0).abs() < 0.5, "a is cached");
    // b's 12 blocks fill the cache and push all of a's out.
    complete(s.addr, &b, 1).await;
    let again = complete(s.addr, &a, 1).await;
    assert!((ms(again.total) - 210.0).abs() < 0.5, "a was evicted: {:?}", again.total);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_cache_never_hits() {
    let mut args = vec!["--flavor", "vllm", "--prefix-cache-blocks", "0"];
    args.extend(TIMING);
    let s = start(&args).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let prompt = words("x", 100);
    complete(s.addr, &prompt, 1).await;
    assert!((ms(complete(s.addr, &prompt, 1).await.total) - 110.0).abs() < 0.5);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "vllm:prefix_cache_hits_total"), Some(0.0));
    assert!(text.contains("enable_prefix_caching=\"False\""), "{text}");
}

/// Chats sharing a system prompt share its blocks; SGLang reports the hit rate.
#[tokio::test(start_paused = true)]
async fn chats_share_their_system_prompt_and_sglang_reports_the_hit_rate() {
    let mut args = vec!["--flavor", "sglang", "--enable-metrics"];
    args.extend(TIMING);
    let s = start(&args).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let system = words("sys", 159);
    let chat = |question: &str| json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}], "max_tokens": 1});
    // 1 role token + 159 words = 160 tokens = 10 blocks, then the user's turn.
    let first = post(s.addr, "/v1/chat/completions", chat("what is a river")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["usage"]["prompt_tokens"], 165);
    assert!((ms(first.total) - 175.0).abs() < 0.5, "cold {:?}", first.total);
    let second = post(s.addr, "/v1/chat/completions", chat("name three winter birds")).await;
    assert_eq!(second.json()["usage"]["prompt_tokens"], 165);
    // 160 tokens hit; 5 computed.
    assert!((ms(second.total) - 15.0).abs() < 0.5, "warm {:?}", second.total);
    let text = metrics(s.addr).await;
    assert_eq!(metric(&text, "sglang:cache_hit_rate"), Some(160.0 / 330.0), "{text}");
}
