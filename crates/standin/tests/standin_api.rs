//! OpenAI's API shapes: whole and streamed completions and chats, usage, reproducible answers.

mod common;

use common::{post, start};
use serde_json::{json, Value};
use std::time::Duration;

async fn ready(flavor: &str) -> common::Standin {
    let s = start(&["--flavor", flavor, "--served-model-name", "m", "--load-ms", "0", "--seed", "3"]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    s
}

#[tokio::test(start_paused = true)]
async fn a_completion_is_reproducible_whole_or_streamed() {
    let s = ready("vllm").await;
    let body = json!({"model": "m", "prompt": "tell me about rivers", "max_tokens": 7});
    let whole = post(s.addr, "/v1/completions", body.clone()).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let answer = whole.json();
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["model"], "m");
    let text = answer["choices"][0]["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(text.split(' ').count(), 7, "{text}");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11})
    );
    assert_eq!(
        post(s.addr, "/v1/completions", body.clone()).await.json()["choices"][0]["text"],
        text.as_str()
    );

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let streamed = post(s.addr, "/v1/completions", streaming).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.content_type.starts_with("text/event-stream"), "{}", streamed.content_type);
    let events = streamed.events();
    assert_eq!(events.len(), 7 + 2, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..8].iter().map(|e| serde_json::from_str(e).expect("chunk")).collect();
    let joined: String = chunks[..7]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 7);
    assert_eq!(chunks[7]["choices"], json!([]));

    // Another request seed, another answer (the list has 32 words; 7 equal draws are unlikely).
    let mut seeded = body;
    seeded["seed"] = json!(99);
    assert_ne!(
        post(s.addr, "/v1/completions", seeded).await.json()["choices"][0]["text"],
        text.as_str()
    );
}

#[tokio::test(start_paused = true)]
async fn a_chat_answers_whole_and_streamed() {
    for flavor in ["vllm", "sglang", "llama"] {
        let s = ready(flavor).await;
        let messages =
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]);
        let whole = post(
            s.addr,
            "/v1/chat/completions",
            json!({"messages": messages, "max_completion_tokens": 3}),
        )
        .await;
        assert_eq!(whole.status, 200, "{flavor}: {}", whole.body);
        let answer = whole.json();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
        assert_eq!(content.split(' ').count(), 3);
        // Two role tokens and four words.
        assert_eq!(answer["usage"]["prompt_tokens"], 6);

        let streamed = post(
            s.addr,
            "/v1/chat/completions",
            json!({"messages": messages, "max_tokens": 3, "stream": true}),
        )
        .await;
        let events = streamed.events();
        // The role, three tokens, [DONE]: no usage unless asked for.
        assert_eq!(events.len(), 5, "{flavor}: {events:?}");
        let chunks: Vec<Value> = events[..4].iter().map(|e| serde_json::from_str(e).expect("chunk")).collect();
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let joined: String = chunks[1..]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(joined, content, "{flavor}");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    }
}

#[tokio::test(start_paused = true)]
async fn answers_take_their_time() {
    let s = start(&[
        "--flavor",
        "vllm",
        "--load-ms",
        "0",
        "--ttft-ms",
        "40",
        "--prefill-us-per-token",
        "0",
        "--itl-ms",
        "25",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reply = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "one two", "max_tokens": 5, "stream": true}),
    )
    .await;
    assert_eq!(reply.first_byte, Duration::from_millis(40));
    assert_eq!(reply.total, Duration::from_millis(40 + 4 * 25));
}
