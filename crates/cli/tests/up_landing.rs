//! colo's engine loads weights as they land (issue 17): on a cold start from an origin store
//! that answers slowly (s3s-fs behind a fault proxy that holds back every piece of data), the
//! engine is spawned while the pull goes on, its load overlaps most of the pull, and the model
//! answers exactly as it does when it later starts from the complete host cache.

mod common;

use colo_fault::{s3s_fs, Fault, FaultProxy};
use common::cluster::binary;
use common::Colo;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn greedy(edge: &str) -> Vec<String> {
    let client = reqwest::blocking::Client::new();
    ["The landing", "Bytes arrive in order"]
        .iter()
        .map(|prompt| {
            let body = json!({"model": "lander", "prompt": prompt, "max_tokens": 12, "temperature": 0.0});
            let answer: Value = client
                .post(format!("{edge}/v1/completions"))
                .json(&body)
                .send()
                .unwrap()
                .json()
                .unwrap();
            answer["choices"][0]["text"]
                .as_str()
                .unwrap_or_else(|| panic!("no text: {answer}"))
                .to_string()
        })
        .collect()
}

fn started(colo: &Colo) -> Value {
    colo.wait_machines(120, "the machine started", |m| m.iter().any(|m| m["state"] == "started"))
        .into_iter()
        .find(|m| m["state"] == "started")
        .unwrap()
}

#[test]
fn a_cold_start_loads_weights_while_they_land_and_answers_as_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The origin: s3s-fs, reached through a fault proxy.
    std::fs::create_dir_all(dir.path().join("s3/colo")).unwrap();
    let s3_log = dir.path().join("s3s-fs.log");
    let log = std::fs::File::create(&s3_log).unwrap();
    let mut s3 = Command::new(binary("s3s-fs", "s3s-fs"));
    s3s_fs::with_port_args(&mut s3, "127.0.0.1");
    let mut s3 = s3
        .args(["--access-key", "lander", "--secret-key", "lander-secret"])
        .arg(dir.path().join("s3"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("s3s-fs (cargo install s3s-fs; scripts/test does)");
    let s3_port = s3s_fs::bound_port(&mut s3, &s3_log, Duration::from_secs(20));
    let proxy = runtime.block_on(FaultProxy::start(([127, 0, 0, 1], s3_port).into())).unwrap();
    // SAFETY: set before any thread of this test reads the environment; the colo processes
    // started below inherit it.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr()));
        std::env::set_var("AWS_ACCESS_KEY_ID", "lander");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "lander-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
    }

    let colo = Colo::up_with(&dir.path().join("colo"), &["--store", "s3://colo/models"]);
    // A model of 15 chunks (about 58 MB of f32 weights).
    let model = dir.path().join("model");
    colo.ok(&[
        "model",
        "synth",
        model.to_str().unwrap(),
        "--layers",
        "4",
        "--hidden",
        "512",
        "--heads",
        "8",
        "--kv-heads",
        "4",
        "--vocab",
        "2000",
        "--intermediate",
        "1536",
        "--seed",
        "17",
    ]);
    colo.ok(&["model", "push", model.to_str().unwrap(), "--name", "lander"]);

    // Every piece of data the origin sends now waits: the pull takes seconds.
    proxy.set(Fault::Delay(Duration::from_millis(25)));
    colo.ok(&["deploy", "lander", "--model", "lander"]);
    let machine = started(&colo);
    let cold = &machine["cold_start"];
    eprintln!("cold start while landing: {cold}");
    let total = machine["hydration"]["bytes_total"].as_u64().unwrap();
    assert!(total > 50_000_000, "{machine}");
    assert_eq!(cold["bytes_from_origin"].as_u64(), Some(total), "{cold}");
    let (hydrate, overlap) = (cold["hydrate_ms"].as_u64().unwrap(), cold["overlap_ms"].as_u64().unwrap());
    assert!(hydrate >= 1000, "the slowed pull took a while: {cold}");
    assert!(overlap * 2 >= hydrate, "the engine loaded alongside most of the pull: {cold}");
    let first = cold["first_response_ms"].as_u64().unwrap();
    let load = cold["engine_load_ms"].as_u64().unwrap();
    assert!(first + 50 < hydrate + load, "the first answer came before the phases' sum: {cold}");
    let id = machine["id"].as_str().unwrap();
    let log = std::fs::read_to_string(dir.path().join("colo/machines").join(id).join("engine.log")).unwrap();
    assert!(log.contains("loading weights as they land"), "{log}");
    let landed = greedy(&colo.edge);
    proxy.set(Fault::Pass);

    // The same model started again from the complete cache (memory-mapped, after no pull)
    // answers the same greedy tokens.
    colo.ok(&["destroy", "lander"]);
    colo.wait_machines(30, "the machine gone", |m| m.is_empty());
    colo.ok(&["deploy", "lander", "--model", "lander"]);
    let machine = started(&colo);
    assert_eq!(machine["cold_start"]["bytes_from_cache"].as_u64(), Some(total), "{machine}");
    assert_eq!(machine["cold_start"]["overlap_ms"].as_u64(), Some(0), "{machine}");
    assert_eq!(greedy(&colo.edge), landed, "loaded as it landed vs from the cache");

    // A pull that fails while the engine loads: the engine is told why and gives up, and the
    // start fails with the store's answer, not a hang or a half-loaded model.
    colo.ok(&["destroy", "lander"]);
    colo.wait_machines(30, "the machine gone", |m| m.is_empty());
    common::cluster::wait_for(30, "the model unpinned and evicted", || {
        colo.cli(&["cache", "evict", "lander"]).status.success()
    });
    proxy.set(Fault::Delay(Duration::from_millis(25)));
    colo.ok(&["deploy", "lander", "--model", "lander", "--detach"]);
    let machines_dir = dir.path().join("colo/machines");
    let loading = || {
        std::fs::read_dir(&machines_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| d.file_name() != std::ffi::OsStr::new(id))
            .map(|d| d.path().join("engine.log"))
            .find(|log| std::fs::read_to_string(log).is_ok_and(|l| l.contains("loading weights as they land")))
    };
    common::cluster::wait_for(60, "the new engine loading as the weights land", || loading().is_some());
    // Open connections are reset; new ones are refused by the store.
    proxy.set(Fault::Cut);
    std::thread::sleep(Duration::from_millis(200));
    proxy.set(Fault::Answer(bytes::Bytes::from_static(
        b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )));
    let failed = colo.wait_machines(120, "the start failed", |m| {
        m.iter()
            .any(|m| m["last_error"].as_str().is_some_and(|e| e.contains("hydrating lander")))
    });
    let engine_log = std::fs::read_to_string(loading().unwrap()).unwrap();
    assert!(engine_log.contains("the pull failed"), "the engine was told: {engine_log}");
    assert!(failed.iter().all(|m| m["state"] != "started"), "{failed:#?}");
    proxy.set(Fault::Pass);

    colo.stop();
    let _ = s3.kill();
    let _ = s3.wait();
}
