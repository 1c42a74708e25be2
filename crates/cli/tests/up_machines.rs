//! Machine lifecycle under `colo up`: an engine killed mid-request is restarted and in-flight
//! requests end cleanly; a restarted colo finds its machines again.

mod common;

use common::Colo;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn embed(client: &reqwest::blocking::Client, edge: &str) -> Result<u16, String> {
    let body = json!({"model": "minilm", "input": vec!["The quick brown fox jumps over the lazy dog."; 16]});
    match client.post(format!("{edge}/v1/embeddings")).json(&body).send() {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().map_err(|e| format!("status {status}, unreadable body: {e}"))?;
            if status != 200 && body["error"]["message"].as_str().is_none() {
                return Err(format!("status {status} without an OpenAI error body: {body}"));
            }
            Ok(status)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_killed_engine_fails_in_flight_requests_cleanly_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.deploy_minilm();
    let before = colo.machines().remove(0);
    let pid = before["pid"].as_u64().expect("a started machine has a pid") as i32;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Eight clients keep requests in flight while the engine is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, edge, stop) = (client.clone(), colo.edge.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = embed(&client, &edge);
                    outcomes.push((outcome, started.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: SIGKILL to the engine process colo reported.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "killing engine {pid}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut errors = 0;
    for worker in workers {
        for (outcome, took) in worker.join().unwrap() {
            match outcome {
                Ok(200) => {}
                Ok(status) => {
                    assert!(status == 502 || status == 503, "in-flight request ended with {status}");
                    errors += 1;
                }
                Err(e) => panic!("a request did not end with a clean HTTP answer: {e}"),
            }
            assert!(took < Duration::from_secs(5), "a request took {took:?}");
        }
    }
    println!("requests in flight at the kill that got a clean error: {errors}");

    // The next request succeeds, held until the agent has restarted the engine.
    assert_eq!(embed(&client, &colo.edge), Ok(200));
    let after = colo.machines().remove(0);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["state"], "started");
    assert!(after["restarts"].as_u64().unwrap() >= 1, "{after}");
    assert_ne!(after["pid"], before["pid"]);
    assert!(after["last_error"].as_str().unwrap().contains("signal"), "{after}");
    colo.stop();
}

#[test]
fn a_restarted_colo_finds_its_machines_again() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.deploy_minilm();
    let before = colo.machines().remove(0);
    colo.stop();

    let colo = Colo::up(dir.path());
    let client = reqwest::blocking::Client::new();
    assert_eq!(embed(&client, &colo.edge), Ok(200), "the app answers again without a new deploy");
    let machines = colo.machines();
    assert_eq!(machines.len(), 1, "the machine is reused, not duplicated: {machines:?}");
    assert_eq!(machines[0]["id"], before["id"]);
    assert_eq!(machines[0]["state"], "started");
    assert_eq!(
        machines[0]["hydration"]["bytes_fetched"], before["hydration"]["bytes_fetched"],
        "no second hydration record"
    );
    colo.stop();
}

#[test]
fn idle_machines_stop_and_the_next_request_wakes_them() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    let model = common::minilm_dir();
    colo.ok(&["model", "push", model.to_str().unwrap(), "--name", "minilm"]);
    colo.ok(&["deploy", "minilm", "--model", "minilm", "--autostop", "1"]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(embed(&client, &colo.edge), Ok(200));

    // Idle for a second: the edge stops it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let machines = colo.machines();
        if machines[0]["state"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "the idle machine was not stopped: {machines:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad requests are answered by the edge, naming the parameter, and wake nothing.
    let bad = [
        (json!({"model": "minilm"}), "input", "'input' is required"),
        (json!({"model": "minilm", "input": []}), "input", "empty list"),
        (
            json!({"model": "minilm", "input": "x", "encoding_format": "hex"}),
            "encoding_format",
            "\"float\" or \"base64\"",
        ),
        (json!({"model": "minilm", "input": [[1, 2]]}), "input", "not token ids"),
    ];
    for (body, param, part) in bad {
        let response = client.post(format!("{}/v1/embeddings", colo.edge)).json(&body).send().unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert!(response.headers().get("colo-cold-start").is_none(), "{body} woke a machine");
        let answer: Value = response.json().unwrap();
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(part), "{answer}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(colo.machines()[0]["state"], "stopped", "bad requests woke the machine");

    // A burst against the stopped app wakes it once and every request is answered.
    let started = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (client, edge) = (client.clone(), colo.edge.clone());
            std::thread::spawn(move || embed(&client, &edge))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), Ok(200));
    }
    println!("16 requests against a stopped machine answered in {:?}", started.elapsed());
    let machines = colo.machines();
    assert_eq!(machines.len(), 1, "woken, not duplicated: {machines:?}");
    assert_eq!(machines[0]["state"], "started");
    colo.stop();
}
