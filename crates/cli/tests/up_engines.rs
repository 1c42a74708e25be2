//! Engine profiles end to end: `colo deploy --engine vllm|sglang|llama-server` starts the
//! engine on its machine with the profile's command line, knows when it is ready by its own
//! readiness contract, and routes by the load read off its metrics. vLLM, SGLang and
//! llama-server cannot run here, so these deploys run `colo-standin`, the stand-in written for
//! these tests (crates/standin), through `--engine-bin`; the profiles' command lines and
//! readiness rules are what is under test.

mod common;

use common::{standin, Colo};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A directory holding a small valid GGUF file, as a llama.cpp model directory would.
fn gguf_model(dir: &std::path::Path) -> PathBuf {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "token_embd.weight");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&64u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.resize(out.len().next_multiple_of(32) + 256, 0);
    let model = dir.join("gguf-model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("tiny-f32.gguf"), out).unwrap();
    model
}

fn complete(client: &reqwest::blocking::Client, edge: &str, app: &str, max_tokens: u32) -> reqwest::blocking::Response {
    client
        .post(format!("{edge}/v1/completions"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"model": app, "prompt": "the quick brown fox", "max_tokens": max_tokens}).to_string())
        .send()
        .expect("a request through the edge")
}

/// The edge's load record of `app`'s one machine.
fn load_of(client: &reqwest::blocking::Client, colo: &Colo, machine: &str) -> serde_json::Value {
    let edge = &colo.edge;
    let table: serde_json::Value = client
        .get(format!("{edge}/colo/load"))
        .bearer_auth(colo.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    table["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == machine)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn engine_profiles_start_when_ready_and_route_by_their_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "4"]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    colo.push_tiny("tiny");

    // vLLM refuses connections while it loads: the machine is started only once it answers.
    colo.deploy_standin(
        "vl",
        "tiny",
        "vllm",
        "--flavor vllm --load-ms 700 --ttft-ms 5 --itl-ms 40 --max-running 2",
        &[],
    );
    let machines = colo.machines();
    let vl = machines.iter().find(|m| m["app"] == "vl").unwrap();
    assert_eq!(vl["state"], "started");
    let engine_load = vl["cold_start"]["engine_load_ms"].as_u64().unwrap();
    assert!(engine_load >= 700, "started before the engine listened: {engine_load} ms");
    let r = complete(&client, &colo.edge, "vl", 3);
    assert_eq!(r.status(), 200);
    let id = r.headers()["colo-machine"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 3);

    // Six long requests against two running slots: the edge sees the engine's own queue.
    let busy: Vec<_> = (0..6)
        .map(|_| {
            let (client, edge) = (client.clone(), colo.edge.clone());
            std::thread::spawn(move || complete(&client, &edge, "vl", 25).status().as_u16())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let load = load_of(&client, &colo, &id);
        if load["report"]["waiting"].as_u64().unwrap_or(0) > 0 {
            break load;
        }
        assert!(Instant::now() < deadline, "no queue seen in the engine's metrics: {load}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(seen["report"]["source"], "metrics", "{seen}");
    assert_eq!(seen["engine"], "vllm");
    assert_eq!(seen["report"]["running"], 2, "{seen}");
    for handle in busy {
        assert_eq!(handle.join().unwrap(), 200);
    }

    // llama-server answers 503 while it loads, on a GGUF model.
    let model = gguf_model(dir.path());
    colo.ok(&["model", "push", model.to_str().unwrap(), "--name", "tiny-gguf"]);
    colo.deploy_standin("ll", "tiny-gguf", "llama-server", "--flavor llama --load-ms 300", &[]);
    let r = complete(&client, &colo.edge, "ll", 2);
    assert_eq!(r.status(), 200);
    let ll = r.headers()["colo-machine"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while load_of(&client, &colo, &ll)["report"]["source"] != "metrics" {
        assert!(Instant::now() < deadline, "llama-server's metrics never read");
        std::thread::sleep(Duration::from_millis(50));
    }
    colo.stop();
}

#[test]
fn wrong_engines_are_clear_errors_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "2"]);
    colo.push_tiny("tiny");
    let standin = standin();
    let fails = |args: &[&str]| {
        let out = colo.cli(args);
        assert!(!out.status.success(), "colo {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // An engine that is not installed names itself and the flag to set.
    let err = fails(&[
        "deploy",
        "nov",
        "--model",
        "tiny",
        "--engine",
        "vllm",
        "--engine-bin",
        "/nonexistent/vllm",
    ]);
    assert!(err.contains("/nonexistent/vllm") && err.contains("--engine-bin"), "{err}");

    // A model in the wrong format for the engine.
    let err = fails(&["deploy", "wrong", "--model", "tiny", "--engine", "llama-server"]);
    assert!(err.contains("llama-server serves a GGUF file"), "{err}");

    // An engine that exits while starting leaves the end of its log in the error and in ps.
    let err = fails(&[
        "deploy",
        "dies",
        "--model",
        "tiny",
        "--engine",
        "sglang",
        "--engine-bin",
        standin.to_str().unwrap(),
        "--engine-args",
        "--flavor sglang --no-such-flag",
        "--timeout",
        "60",
    ]);
    assert!(err.contains("no-such-flag"), "the engine's own complaint is in the error: {err}");
    assert!(err.contains("app dies was not deployed"), "a deploy is all or nothing: {err}");
    // The machine was destroyed with the app; its record keeps the reason.
    let machines: Vec<serde_json::Value> = serde_json::from_str(&colo.ok(&["ps", "--all", "--json"])).unwrap();
    let dies = machines.iter().find(|m| m["app"] == "dies").unwrap();
    assert_eq!(dies["state"], "destroyed");
    let last_error = dies["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("exited during start") && last_error.contains("no-such-flag"),
        "{last_error}"
    );
    colo.stop();
}

/// `--autostop SECS --autostop-to suspend`: an idle vLLM machine is put to sleep (its process and
/// card kept), wakes in the engine's wake time rather than its load time, and says so in
/// `colo-cold-start`; the engine's sleep endpoints cannot be reached through the edge.
#[test]
fn idle_machines_suspend_and_wake_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "2"]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    colo.push_tiny("tiny");
    colo.deploy_standin(
        "sv",
        "tiny",
        "vllm",
        "--flavor vllm --load-ms 1500 --wake-ms 30 --ttft-ms 5 --itl-ms 5",
        &["--autostop", "1", "--autostop-to", "suspend"],
    );
    let r = complete(&client, &colo.edge, "sv", 2);
    assert_eq!(r.status(), 200);

    // Idle for a second: suspended, not stopped, and the engine itself is asleep.
    let deadline = Instant::now() + Duration::from_secs(15);
    let machine = loop {
        let machines = colo.machines();
        let m = machines.iter().find(|m| m["app"] == "sv").unwrap().clone();
        if m["state"] == "suspended" {
            break m;
        }
        assert!(Instant::now() < deadline, "never suspended: {m}");
        assert_ne!(m["state"], "stopped", "stopped instead of suspended: {m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let addr = machine["addr"].as_str().expect("a suspended machine keeps its address");
    let asleep: serde_json::Value = client.get(format!("http://{addr}/is_sleeping")).send().unwrap().json().unwrap();
    assert_eq!(asleep["is_sleeping"], true, "{asleep}");

    // Clients cannot reach the sleep endpoints through the edge, by Host or by path tricks.
    for path in ["/wake_up", "/sleep?level=1", "/%73leep", "/v1/../is_sleeping", "/metrics"] {
        let r = client
            .post(format!("{}{path}", colo.edge))
            .header("host", "sv.localhost")
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body = r.text().unwrap();
        assert!(body.contains("control endpoint"), "{path}: {body}");
    }

    // A request wakes it: no reload, and the header says where the weights were.
    let began = Instant::now();
    let r = complete(&client, &colo.edge, "sv", 2);
    let took = began.elapsed();
    assert_eq!(r.status(), 200);
    let cold = r.headers()["colo-cold-start"].to_str().unwrap().to_string();
    assert!(cold.contains("weights=suspended") && cold.contains("hydrate=0"), "{cold}");
    assert!(
        took < Duration::from_millis(1500),
        "a wake from suspend took {took:?}, a whole load's time"
    );
    let machines = colo.machines();
    let m = machines.iter().find(|m| m["app"] == "sv").unwrap();
    assert_eq!(m["state"], "started");
    assert_eq!(m["id"], machine["id"], "the same machine woke");
    colo.stop();
}
