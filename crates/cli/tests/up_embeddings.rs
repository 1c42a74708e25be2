//! `colo up` end to end over real sockets: push the demo model, deploy it, and call it through
//! the edge with plain HTTP and with the official `openai` Python client.

mod common;

use base64::Engine as _;
use common::{golden, max_abs_diff, Colo};
use serde_json::{json, Value};

#[test]
fn serves_minilm_through_the_edge_matching_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.deploy_minilm();
    let cases = golden();
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/v1/embeddings", colo.edge);

    // All inputs in one request. The last is past the model's 256 tokens: truncated, as
    // sentence-transformers does, because the request asks for it.
    let inputs: Vec<&str> = cases.iter().map(|c| c.input.as_str()).collect();
    let response = client
        .post(&url)
        .json(&json!({"model": "minilm", "input": inputs, "truncate": true}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["usage"]["prompt_tokens"], cases.iter().map(|c| c.n_tokens).sum::<u64>());
    let mut worst = 0.0f32;
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(body["data"][i]["index"], i);
        let diff = max_abs_diff(&common::floats(&body["data"][i]["embedding"]), &case.embedding);
        assert!(diff < 1e-4, "{:?}: max abs difference {diff}", case.input);
        worst = worst.max(diff);
    }

    // One input per request, all at once, so the engine batches them together; base64 encoding.
    let handles: Vec<_> = cases
        .iter()
        .map(|case| {
            let (client, url, input) = (client.clone(), url.clone(), case.input.clone());
            std::thread::spawn(move || {
                let body = json!({"model": "minilm", "input": input, "encoding_format": "base64", "truncate": true});
                client.post(url).json(&body).send().unwrap().json::<Value>().unwrap()
            })
        })
        .collect();
    for (case, handle) in cases.iter().zip(handles) {
        let body = handle.join().unwrap();
        let b64 = body["data"][0]["embedding"].as_str().expect("base64 string");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let vector: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let diff = max_abs_diff(&vector, &case.embedding);
        assert!(diff < 1e-4, "concurrent {:?}: max abs difference {diff}", case.input);
        worst = worst.max(diff);
        assert_eq!(body["usage"]["prompt_tokens"], case.n_tokens);
    }
    println!(
        "minilm through the edge: {} inputs, max abs difference {worst:.2e} (limit 1e-4)",
        cases.len()
    );

    // The Host name routes too, without a model field.
    let edge_port = colo.edge.rsplit(':').next().unwrap();
    let response = client
        .post(&url)
        .header("host", format!("minilm.localhost:{edge_port}"))
        .json(&json!({"input": "A man is eating food."}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // The official openai client (its default asks for base64 and decodes it).
    let out = std::process::Command::new("python3")
        .arg(common::repo_root().join("tests/py/openai_embeddings.py"))
        .arg(format!("{}/v1", colo.edge))
        .arg("minilm")
        .args(&inputs[..3])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "openai client failed (pip install openai): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (case, got) in cases.iter().zip(result["embeddings"].as_array().unwrap()) {
        let diff = max_abs_diff(&common::floats(got), &case.embedding);
        assert!(diff < 1e-4, "openai client {:?}: max abs difference {diff}", case.input);
    }
    assert_eq!(result["models"], json!(["minilm"]));
    assert_eq!(result["missing"]["status"], 404);
    println!("openai {} client: {} embeddings match", result["openai_version"], 3);

    // With a key, the app answers only requests that carry it.
    let key = colo.ok(&["keys", "create", "minilm", "--rps", "100"]).trim().to_string();
    let status = |bearer: Option<&str>| {
        let mut request = client.post(&url).json(&json!({"model": "minilm", "input": "x"}));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        request.send().unwrap().status().as_u16()
    };
    // Edges learn of the key through the state watch; give it a moment.
    let settle = |want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while status(None) != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    settle(401);
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("colo-wrong")), 401, "a wrong key is answered as a missing one");
    assert_eq!(status(Some(&key)), 200);
    let keys: Value = serde_json::from_str(&colo.ok(&["keys", "ls", "minilm", "--json"])).unwrap();
    colo.ok(&["keys", "revoke", "minilm", keys[0]["id"].as_str().unwrap()]);
    settle(200);
    assert_eq!(status(None), 200, "an app without keys is open again");

    // ps and apps report the machine, with its hydration.
    let machines = colo.machines();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0]["state"], "started");
    assert_eq!(machines[0]["hydration"]["bytes_total"], machines[0]["hydration"]["bytes_fetched"]);
    let apps: Value = serde_json::from_str(&colo.ok(&["apps", "--json"])).unwrap();
    assert_eq!(apps[0]["app"]["name"], "minilm");
    assert_eq!(apps[0]["machines_started"], 1);
    assert!(colo.ok(&["ps"]).contains("started"));
    colo.stop();
}

#[test]
fn bad_requests_and_bad_models_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.deploy_minilm();
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/v1/embeddings", colo.edge);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"model\":".into(), 400, "not valid JSON"),
        (r#"{"model":"minilm"}"#.into(), 400, "'input' is required"),
        (r#"{"model":"minilm","input":""}"#.into(), 400, "empty string"),
        (r#"{"model":"minilm","input":[]}"#.into(), 400, "empty list"),
        (r#"{"model":"minilm","input":42}"#.into(), 400, "got a number"),
        (r#"{"model":"minilm","input":[1,2,3]}"#.into(), 400, "token ids"),
        (
            r#"{"model":"minilm","input":"x","encoding_format":"int8"}"#.into(),
            400,
            "encoding_format",
        ),
        (r#"{"model":"minilm","input":"x","dimensions":7}"#.into(), 400, "384 dimensions"),
        (r#"{"model":"gpt-4","input":"x"}"#.into(), 404, "apps: minilm"),
        (
            format!(r#"{{"model":"minilm","input":"{}"}}"#, "x".repeat(11 * 1024 * 1024)),
            413,
            "limit is 10485760",
        ),
    ];
    for (body, status, needle) in cases {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{}", &body[..body.len().min(80)]);
        let error: Value = response.json().unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{}: {error}", &body[..body.len().min(80)]);
        assert!(error["error"]["type"].is_string());
    }
    // An input past the model's 256 tokens is refused as OpenAI refuses it, naming the input
    // and the way out; asked to, it is truncated as sentence-transformers does.
    let long = "word ".repeat(5000);
    let response = client
        .post(&url)
        .json(&json!({"model": "minilm", "input": ["short", long]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'input[1]' is longer than the 256 tokens") && message.contains("\"truncate\": true"),
        "{message}"
    );
    let response: Value = client
        .post(&url)
        .json(&json!({"model": "minilm", "input": long, "truncate": true}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(response["usage"]["prompt_tokens"], 256);

    // The CLI refuses bad models and names with the reason.
    let bad_dir = dir.path().join("bad-model");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join("config.json"), "{}").unwrap();
    let mut st = 1_000_000u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    std::fs::write(bad_dir.join("model.safetensors"), st).unwrap();
    let out = colo.cli(&["model", "push", bad_dir.to_str().unwrap(), "--name", "bad"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("model.safetensors") && stderr.contains("past the end"), "{stderr}");

    let out = colo.cli(&["deploy", "other", "--model", "not-pushed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the store"));
    let out = colo.cli(&["deploy", "other", "--model", "minilm", "--gpu", "a10"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no host has a GPU of kind a10"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = colo.cli(&["deploy", "other", "--model", "minilm", "--gpu", "tpu9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GPU kind colo knows"));
    let out = colo.cli(&["deploy", "other", "--model", "minilm", "--soft-limit", "4", "--hard-limit", "2"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hard at least soft"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = colo.cli(&["deploy", "Bad_Name", "--model", "minilm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app: name \"Bad_Name\""));
    colo.stop();
}
