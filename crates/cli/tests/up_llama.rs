//! Real llama.cpp behind colo: `colo deploy --engine llama-server` runs llama.cpp's own
//! `llama-server` (built by scripts/build-llama-server, which scripts/test runs) on a GGUF file
//! converted from a `colo model synth` model, and colo's answers through the edge are the same
//! tokens llama-server gives when asked directly. The edge reads the engine's load off its
//! `/metrics`.

mod common;

use common::Colo;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// llama-server: `COLO_LLAMA_SERVER`, else the build scripts/build-llama-server keeps. Missing,
/// the test fails and says how to build it (CI builds it in scripts/test).
fn llama_server() -> PathBuf {
    let path = std::env::var_os("COLO_LLAMA_SERVER").map(PathBuf::from).unwrap_or_else(|| {
        let out = Command::new(common::repo_root().join("scripts/build-llama-server"))
            .arg("--print-only")
            .output()
            .expect("running scripts/build-llama-server --print-only");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default())
    });
    assert!(
        path.is_file(),
        "llama-server is not built ({}): run scripts/build-llama-server (scripts/test does), or set COLO_LLAMA_SERVER",
        path.display()
    );
    path
}

/// A synthesized Llama (random weights, its own tokenizer) as one f32 GGUF file in a directory.
fn gguf_model(colo: &Colo, dir: &Path) -> PathBuf {
    let model = dir.join("synth");
    colo.ok(&[
        "model",
        "synth",
        model.to_str().unwrap(),
        "--layers",
        "2",
        "--hidden",
        "128",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--vocab",
        "1000",
        "--context",
        "2048",
    ]);
    let out = dir.join("gguf");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("python3")
        .arg(common::repo_root().join("bench/to_gguf.py"))
        .arg(&model)
        .arg(out.join("synth-f32.gguf"))
        .args(["--outtype", "f32"])
        .status()
        .expect("python3 bench/to_gguf.py (needs the gguf and numpy packages; scripts/test installs them)");
    assert!(status.success(), "converting the synthesized model to GGUF failed");
    out
}

/// llama-server started directly on the same file, and its base URL.
fn direct(server: &Path, gguf: &Path, log: &Path) -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(server)
        .arg("-m")
        .arg(gguf)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--parallel",
            "2",
            "--threads",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting llama-server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::blocking::get(format!("{url}/health"))
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "llama-server did not come up on its own");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, url)
}

/// The text and completion token count of one greedy completion.
fn complete(client: &reqwest::blocking::Client, base: &str, model: &str, prompt: &str) -> (String, u64) {
    let body = serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "seed": 1});
    let r = client.post(format!("{base}/v1/completions")).json(&body).send().unwrap();
    assert_eq!(r.status(), 200, "{base}");
    let v: serde_json::Value = r.json().unwrap();
    (
        v["choices"][0]["text"].as_str().unwrap().to_string(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn llama_server_through_colo_answers_as_it_does_directly() {
    let server = llama_server();
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "2"]);
    let gguf_dir = gguf_model(&colo, dir.path());
    colo.ok(&["model", "push", gguf_dir.to_str().unwrap(), "--name", "synth-gguf"]);
    colo.ok(&[
        "deploy",
        "ll",
        "--model",
        "synth-gguf",
        "--engine",
        "llama-server",
        "--engine-bin",
        server.to_str().unwrap(),
        "--engine-args",
        "--parallel 2 --threads 1",
    ]);
    let (mut own, url) = direct(&server, &gguf_dir.join("synth-f32.gguf"), &dir.path().join("direct.log"));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for prompt in ["alpha bravo charlie", "the quick brown fox jumps", "one two three four five six"] {
        let through_colo = complete(&client, &colo.edge, "ll", prompt);
        let asked_directly = complete(&client, &url, "ll", prompt);
        assert_eq!(through_colo, asked_directly, "prompt {prompt:?}");
        assert_eq!(through_colo.1, 12, "twelve tokens asked, twelve given");
        assert!(!through_colo.0.is_empty(), "an answer with text");
    }
    // The edge reads llama-server's own metrics for its load.
    let machine = colo.machines().into_iter().find(|m| m["app"] == "ll").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let load: serde_json::Value = client
            .get(format!("{}/colo/load", colo.edge))
            .bearer_auth(colo.token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let mine = load["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == machine["id"])
            .cloned();
        if mine.as_ref().is_some_and(|m| m["report"]["source"] == "metrics") {
            assert_eq!(mine.unwrap()["engine"], "llama-server");
            break;
        }
        assert!(Instant::now() < deadline, "llama-server's /metrics never read: {load}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = own.kill();
    let _ = own.wait();
    colo.stop();
}
