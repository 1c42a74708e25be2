//! What `colo sim` found, on the real edge: under a steady light load, least-loaded spreading
//! keeps every machine of an app a little busy, so autostop never stops one; `--route pack`
//! fills one machine to its soft limit first, the others fall idle, and autostop stops them
//! while traffic goes on (docs/THESIS.md). The engine is tests/py/upstream.py, a stand-in
//! written for the tests.

mod common;

use common::{repo_root, Colo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Two callers in a loop for `secs`, each request after the last: answers by machine id.
fn steady_load(edge: &str, app: &str, secs: u64) -> BTreeMap<String, usize> {
    let until = Instant::now() + Duration::from_secs(secs);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (edge, app) = (edge.to_string(), app.to_string());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut by_machine = BTreeMap::new();
                while Instant::now() < until {
                    let response = client
                        .post(format!("{edge}/v1/embeddings"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"model":"{app}","input":"x"}}"#))
                        .send()
                        .expect("a request through the edge");
                    assert_eq!(response.status(), 200);
                    let machine = response
                        .headers()
                        .get("colo-machine")
                        .map_or("-".into(), |v| v.to_str().unwrap().to_string());
                    *by_machine.entry(machine).or_insert(0) += 1;
                    std::thread::sleep(Duration::from_millis(30));
                }
                by_machine
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for caller in callers {
        for (machine, n) in caller.join().unwrap() {
            *all.entry(machine).or_insert(0) += n;
        }
    }
    all
}

fn started(colo: &Colo, app: &str) -> usize {
    colo.machines()
        .iter()
        .filter(|m| m["app"] == app && m["state"] == "started")
        .count()
}

#[test]
fn pack_routing_lets_autostop_stop_spare_machines_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "6"]);
    colo.push_tiny("tiny");
    let script = repo_root().join("tests/py/upstream.py");
    let cmd = format!("python3 {} --port {{port}} --delay-ms 20", script.display());
    for (app, route) in [("spread", "least-loaded"), ("packed", "pack")] {
        colo.ok(&[
            "deploy",
            app,
            "--model",
            "tiny",
            "--engine-cmd",
            &cmd,
            "--machines",
            "3",
            "--soft-limit",
            "4",
            "--hard-limit",
            "8",
            "--autostop",
            "2",
            "--route",
            route,
        ]);
    }
    colo.wait_machines(30, "all six machines started", |ms| {
        ms.iter().filter(|m| m["state"] == "started").count() == 6
    });

    // The same light load (two callers, at most two requests in flight) for 8 s on each app.
    let spread = steady_load(&colo.edge, "spread", 8);
    let spread_left = started(&colo, "spread");
    let packed = steady_load(&colo.edge, "packed", 8);
    let packed_left = started(&colo, "packed");
    println!("least-loaded: {spread:?}, {spread_left} machines still started; pack: {packed:?}, {packed_left} started");
    // Spreading: every machine served, none idle for 2 s, none stopped.
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert_eq!(spread_left, 3, "least-loaded spreading keeps every machine busy enough");
    // Packing: one machine took (nearly) everything; the idle ones were stopped under load.
    let top = packed.values().copied().max().unwrap_or(0);
    let total: usize = packed.values().sum();
    assert!(top * 100 >= total * 95, "{packed:?}");
    assert_eq!(packed_left, 1, "pack routing let autostop stop the spare machines");
    colo.stop();
}
