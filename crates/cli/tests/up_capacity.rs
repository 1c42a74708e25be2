//! Capacity under `colo up` (issue 15, items 2 and 3): a machine scaled to zero gives its
//! device back, a deploy that finds no device is not recorded, a wake that finds none is
//! answered at once with why (503, not a wait to the hold timeout), and an app whose engine
//! fails answers its held requests with the engine's error.

mod common;

use common::Colo;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One completion to `app`: the status, the body, and how long it took.
fn complete(edge: &str, app: &str) -> (u16, Value, Duration) {
    let began = Instant::now();
    let response = client()
        .post(format!("{edge}/v1/completions"))
        .json(&json!({"model": app, "prompt": "hello", "max_tokens": 2}))
        .send()
        .expect("the edge answers");
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap_or(Value::Null);
    (status, body, began.elapsed())
}

fn state_of(machines: &[Value], app: &str) -> Vec<String> {
    machines
        .iter()
        .filter(|m| m["app"] == app)
        .map(|m| m["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn apps(colo: &Colo) -> Vec<String> {
    let apps: Vec<Value> = serde_json::from_str(&colo.ok(&["apps", "--json"])).unwrap();
    apps.iter().map(|a| a["app"]["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn stopped_machines_free_their_device_and_capacity_errors_come_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(dir.path(), &["--cpu-slots", "2"]);
    colo.push_tiny("tiny");
    colo.ok(&["deploy", "idle", "--model", "tiny", "--autostop", "1"]);
    colo.ok(&["deploy", "busy", "--model", "tiny"]);

    // Both slots are held: a third app is refused, and nothing of it is recorded.
    let out = colo.cli(&["deploy", "extra", "--model", "tiny"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a deploy with no device free must fail");
    assert!(
        stderr.contains("was not deployed (nothing is recorded)") && stderr.contains("no free device"),
        "{stderr}"
    );
    assert!(!apps(&colo).contains(&"extra".to_string()), "a failed deploy leaves no app behind");
    assert!(
        !colo.machines().iter().any(|m| m["app"] == "extra" && m["state"] != "destroyed"),
        "nor a machine"
    );

    // Scaled to zero, `idle` holds no device: `extra` now fits, and `colo ps` shows no device.
    colo.wait_machines(30, "idle stopped by autostop", |ms| state_of(ms, "idle") == ["stopped"]);
    let apps_table = colo.ok(&["apps"]);
    let idle_app = apps_table.lines().find(|l| l.contains("idle")).unwrap();
    assert!(
        idle_app.contains("0/1 started, scaled to zero") && idle_app.contains("stop after 1s idle"),
        "colo apps says an autostopped app is scaled to zero: {idle_app}"
    );
    let table = colo.ok(&["ps"]);
    let idle_row = table.lines().find(|l| l.contains("idle")).unwrap();
    assert!(!idle_row.contains("cpu"), "a stopped machine shows no device: {idle_row}");
    colo.ok(&["deploy", "extra", "--model", "tiny"]);

    // Now nothing is free to wake `idle` on: the request is answered at once, with why.
    let (status, body, took) = complete(&colo.edge, "idle");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_machine_can_start", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no free device"), "{message}");
    assert!(took < Duration::from_secs(10), "answered in {took:?}, not at the hold timeout");

    // A device freed (once the destroyed engine has stopped): the edge's route table shows it,
    // and the next request wakes `idle` on it.
    colo.ok(&["destroy", "extra"]);
    let freed = Instant::now();
    colo.wait_machines(30, "extra's machine gone", |ms| state_of(ms, "extra").is_empty());
    eprintln!("extra's engine stopped in {:?}", freed.elapsed());
    // Within 3 s, before the refusal would age out (5 s): the table change clears it.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (status, body) = loop {
        let (status, body, _) = complete(&colo.edge, "idle");
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&colo.machines(), "idle"), ["started"]);
    colo.stop();
}

#[test]
fn an_engine_that_fails_is_not_deployed_and_its_held_requests_hear_why() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.push_tiny("tiny");
    let broken = "echo 'cannot open the weights: boom' >&2; exit 3 # {port}";

    // Waited for, the failed start undoes the deploy and says what the engine said.
    let out = colo.cli(&["deploy", "broken", "--model", "tiny", "--engine-cmd", broken]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("was not deployed") && stderr.contains("boom"), "{stderr}");
    assert!(!apps(&colo).contains(&"broken".to_string()));

    // Detached, the app stays with its failed machine, and a request gets the reason at once.
    colo.ok(&["deploy", "broken", "--model", "tiny", "--engine-cmd", broken, "--detach"]);
    colo.wait_machines(30, "the broken machine failed", |ms| state_of(ms, "broken") == ["failed"]);
    let (status, body, took) = complete(&colo.edge, "broken");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_machine_can_start", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("boom"), "{body}");
    assert!(took < Duration::from_secs(10), "answered in {took:?}");
    colo.stop();
}
