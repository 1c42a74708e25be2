//! Text generation through `colo up`'s edge: golden greedy tokens alone and batched, the
//! openai client streaming chat, seeds, stop strings, SSE timing, disconnects and bad input.

mod common;

use common::Colo;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

fn golden_model() -> std::path::PathBuf {
    common::repo_root().join("testdata/golden/tiny-llama")
}

fn golden_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(golden_model().join("greedy.jsonl")).unwrap();
    text.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn deploy(colo: &Colo, dir: &std::path::Path, name: &str) {
    colo.ok(&["model", "push", dir.to_str().unwrap(), "--name", name]);
    colo.ok(&["deploy", name, "--model", name]);
}

fn post(edge: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{edge}{path}"))
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

#[test]
fn greedy_tokens_match_transformers_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    deploy(&colo, &golden_model(), "tiny");
    let cases = golden_cases();
    let request = |case: &Value| {
        json!({"model": "tiny", "prompt": case["prompt_ids"], "max_tokens": 24, "temperature": 0,
               "ignore_eos": true, "return_token_ids": true})
    };
    for case in &cases {
        let (status, body) = post(&colo.edge, "/v1/completions", &request(case));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["token_ids"], case["greedy_ids"], "alone: {}", case["prompt"]);
        assert_eq!(body["usage"]["completion_tokens"], 24);
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }
    // All prompts at once: they share decoding steps in one batch.
    let handles: Vec<_> = cases
        .iter()
        .map(|case| {
            let (edge, body) = (colo.edge.clone(), request(case));
            std::thread::spawn(move || post(&edge, "/v1/completions", &body))
        })
        .collect();
    for (case, handle) in cases.iter().zip(handles) {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["choices"][0]["token_ids"], case["greedy_ids"], "batched: {}", case["prompt"]);
    }
    // Text prompts go through the tokenizer the same way transformers did.
    let (_, body) = post(
        &colo.edge,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": cases[0]["prompt"], "max_tokens": 24,
        "temperature": 0, "ignore_eos": true, "return_token_ids": true}),
    );
    assert_eq!(body["choices"][0]["prompt_token_ids"], cases[0]["prompt_ids"]);
    assert_eq!(body["choices"][0]["token_ids"], cases[0]["greedy_ids"]);
    colo.stop();
}

#[test]
fn chat_seeds_stops_and_the_openai_client() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    deploy(&colo, &golden_model(), "tiny");
    let chat = |seed: u64| {
        post(
            &colo.edge,
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "Where do weights live?"}],
            "max_tokens": 12, "temperature": 1.0, "seed": seed, "ignore_eos": true}),
        )
    };
    let (status, a) = chat(7);
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        chat(7).1["choices"][0]["message"]["content"],
        a["choices"][0]["message"]["content"],
        "same seed, same text"
    );
    let differs = (8..12).any(|seed| chat(seed).1["choices"][0]["message"]["content"] != a["choices"][0]["message"]["content"]);
    assert!(differs, "other seeds should give other text");

    // A stop string cuts the text before it and finishes with "stop".
    let greedy = json!({"model": "tiny", "prompt": "The edge sends", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let full = post(&colo.edge, "/v1/completions", &greedy).1["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut with_stop = greedy.clone();
    with_stop["stop"] = json!([stop]);
    let (_, body) = post(&colo.edge, "/v1/completions", &with_stop);
    let cut = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(cut, &full[..full.find(&stop).unwrap()], "stop {stop:?}");

    let out = std::process::Command::new("python3")
        .arg(common::repo_root().join("tests/py/openai_chat.py"))
        .arg(format!("{}/v1", colo.edge))
        .arg("tiny")
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "openai client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["stream_text"], result["whole_text"],
        "streamed and whole answers agree for one seed"
    );
    assert_eq!(result["stream_finish"], "length");
    assert_eq!(result["stream_usage"]["completion_tokens"], 10);
    assert!(result["chunks"].as_u64().unwrap() >= 2);
    for param in ["tools", "response_format", "logprobs"] {
        let refused = &result["refused"][param];
        assert_eq!(refused["param"], param, "{param} must be refused with a 400 naming it: {refused}");
        assert_eq!(refused["code"], "unsupported_parameter", "{refused}");
    }
    colo.stop();
}

/// Reads SSE `data:` lines from a raw socket, recording when each arrived.
fn sse_events(addr: &str, body: &Value, read_events: Option<usize>) -> Vec<(Duration, String)> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let payload = body.to_string();
    write!(stream, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}", payload.len()).unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut events = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            events.push((started.elapsed(), data.to_string()));
            if read_events.is_some_and(|n| events.len() >= n) {
                return events;
            }
        }
        line.clear();
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    events
}

fn engine_metric(colo: &Colo, name: &str) -> f64 {
    let machines = colo.machines();
    let addr = machines.iter().find(|m| m["app"] == "big").unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let text = reqwest::blocking::get(format!("http://{addr}/metrics")).unwrap().text().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn streams_arrive_as_generated_and_disconnects_free_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("big-model");
    let colo = Colo::up(&dir.path().join("data"));
    colo.ok(&[
        "model",
        "synth",
        "--layers",
        "6",
        "--hidden",
        "384",
        "--heads",
        "6",
        "--kv-heads",
        "2",
        "--vocab",
        "2000",
        "--seed",
        "5",
        model.to_str().unwrap(),
    ]);
    deploy(&colo, &model, "big");
    let edge_addr = colo.edge.trim_start_matches("http://").to_string();

    // Each event reaches the client when it is generated, not when the answer is complete.
    let body = json!({"model": "big", "prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": true, "stream": true});
    let events = sse_events(&edge_addr, &body, None);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(events.len(), 202, "200 tokens, a final chunk and [DONE]");
    let first = events[0].0;
    let last = events[events.len() - 1].0;
    println!("SSE through the edge: first event at {first:?}, last at {last:?}");
    assert!(
        last > Duration::from_millis(100),
        "generation too fast to judge streaming ({last:?})"
    );
    assert!(first < last / 4, "first event at {first:?} of {last:?}: the stream was buffered");
    let mid = events[100].0;
    assert!(mid > first && mid < last, "events should be spread over the generation");

    // A client that goes away frees its sequence and KV cache within a step or so.
    let long = json!({"model": "big", "prompt": "hello", "max_tokens": 1500, "temperature": 0, "ignore_eos": true, "stream": true});
    let got = sse_events(&edge_addr, &long, Some(3));
    assert_eq!(got.len(), 3);
    assert!(engine_metric(&colo, "colo_engine_kv_used_bytes") > 0.0 || engine_metric(&colo, "colo_engine_running") == 0.0);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (running, kv) = (
            engine_metric(&colo, "colo_engine_running"),
            engine_metric(&colo, "colo_engine_kv_used_bytes"),
        );
        if running == 0.0 && kv == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "after the disconnect: running {running}, kv {kv}");
        std::thread::sleep(Duration::from_millis(20));
    }
    colo.stop();
}

#[test]
fn bad_generation_requests_get_clear_errors_and_abandoned_streams_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(&dir.path().join("data"));
    deploy(&colo, &golden_model(), "tiny");
    let no_template = dir.path().join("no-template");
    std::fs::create_dir_all(&no_template).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(golden_model().join(f), no_template.join(f)).unwrap();
    }
    deploy(&colo, &no_template, "plain");

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "max_tokens": -1}),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "max_tokens": 100000}),
            400,
            "context of 256 tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "temperature": 9}),
            400,
            "between 0 and 2",
        ),
        ("/v1/completions", json!({"model": "tiny", "prompt": ""}), 400, "no tokens"),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": [100000]}),
            400,
            "outside the vocabulary",
        ),
        ("/v1/completions", json!({"model": "tiny", "prompt": "x", "n": 3}), 400, "n = 1"),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": vec![5; 300]}),
            400,
            "context is 256",
        ),
        ("/v1/chat/completions", json!({"model": "tiny", "messages": []}), 400, "empty"),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "king", "content": "x"}]}),
            400,
            "king",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "plain", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "no chat_template",
        ),
        ("/v1/embeddings", json!({"model": "tiny", "input": "x"}), 400, "generates text"),
    ];
    for (path, body, status, needle) in cases {
        let (got, error) = post(&colo.edge, path, &body);
        assert_eq!(got, status, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap_or_default().contains(needle),
            "{body}: {error}"
        );
    }

    // A thousand streams opened at once and abandoned after their first event.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<u16> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let (client, url) = (client.clone(), format!("{}/v1/completions", colo.edge));
                tokio::spawn(async move {
                    let body =
                        json!({"model": "tiny", "prompt": format!("stream {i}"), "max_tokens": 200, "ignore_eos": true, "stream": true});
                    let mut response = client.post(url).json(&body).send().await.unwrap();
                    let status = response.status().as_u16();
                    let _ = response.chunk().await;
                    status
                })
            })
            .collect();
        futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    let (status, body) = post(
        &colo.edge,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "still there?", "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{body}");
    let machine = colo.machines().into_iter().find(|m| m["app"] == "tiny").unwrap();
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", machine["pid"]))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "engine resident memory after 1000 abandoned streams: {} MiB ({} accepted)",
        rss_kb / 1024,
        statuses.iter().filter(|s| **s == 200).count()
    );
    assert!(rss_kb < 2 * 1024 * 1024, "engine RSS {rss_kb} kB");
    colo.stop();
}
