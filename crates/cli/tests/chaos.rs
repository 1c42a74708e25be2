//! Chaos (issue 16, item 7): steady traffic, streaming and not, through an edge daemon while
//! engines, an agent and NATS are killed and restarted at random and the hosts are cut off from
//! NATS (`colo-fault`'s proxy between them), for `COLO_CHAOS_SECS` (90 by default). A ledger of
//! every request shows each answered exactly once, with a 2xx or a clear error; every stream
//! complete or ended with an error event; and no request executed twice by the engines (each
//! engine appends the prompt of every request it starts to a shared file).

mod common;

use colo_fault::{Fault, FaultProxy};
use common::cluster::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one request came to.
#[derive(Debug, Clone)]
enum Outcome {
    /// A 2xx with a whole JSON body.
    Ok,
    /// A stream that ended with `[DONE]`.
    StreamDone,
    /// A stream that ended with an error event.
    StreamError,
    /// An error status with an OpenAI-style error body (status, code or type).
    Error(u16, String),
    /// Anything else: no answer, a body that is no clear error, a stream cut silently.
    Broken(String),
}

fn one_request(client: &reqwest::blocking::Client, edge: &str, id: &str, stream: bool) -> Outcome {
    let body = serde_json::json!({"model": "chaos", "prompt": id, "max_tokens": 3, "stream": stream});
    let response = match client.post(format!("{edge}/v1/completions")).json(&body).send() {
        Ok(response) => response,
        Err(e) => return Outcome::Broken(format!("no answer: {e}")),
    };
    let status = response.status().as_u16();
    let text = match response.text() {
        Ok(text) => text,
        Err(e) => return Outcome::Broken(format!("{status}, body cut: {e}")),
    };
    if !(200..300).contains(&status) {
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let error = &error["error"];
        return match (error["message"].as_str(), error["code"].as_str().or(error["type"].as_str())) {
            (Some(message), Some(code)) if !message.is_empty() => Outcome::Error(status, code.to_string()),
            _ => Outcome::Broken(format!("{status} without a clear error: {text}")),
        };
    }
    if !stream {
        return match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Broken(format!("{status} with a body that is not JSON: {text}")),
        };
    }
    let events: Vec<&str> = text.split("\n\n").map(str::trim).filter(|e| e.starts_with("data:")).collect();
    match events.last() {
        Some(&"data: [DONE]") => Outcome::StreamDone,
        Some(last) if last.starts_with("data: {\"error\"") => Outcome::StreamError,
        _ => Outcome::Broken(format!("a stream that ended without [DONE] or an error event: {text:?}")),
    }
}

/// The pids of the engines of this test (their command line names its ledger).
fn engine_pids(ledger: &std::path::Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("upstream.py") && cmdline.contains(ledger.to_str().unwrap()) {
            pids.push(pid);
        }
    }
    pids
}

/// A small xorshift, seeded: the chaos is the same for a seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn chaos_loses_no_request_and_runs_none_twice() {
    let secs: u64 = std::env::var("COLO_CHAOS_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(90);
    let seed: u64 = std::env::var("COLO_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, _api) = start_cluster(tmp.path(), None);
    // The hosts and the edge reach NATS through a fault proxy; control reaches it directly.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let nats_addr = format!("127.0.0.1:{}", cluster.nats_port()).parse().unwrap();
    let proxy = runtime.block_on(FaultProxy::start(nats_addr)).unwrap();
    cluster.daemon_nats = Some(format!("nats://{}", proxy.addr()));
    cluster.edge_flags = ["--hold-timeout", "20"].map(String::from).to_vec();
    cluster.start_agent("ord-1", "ord");
    cluster.start_agent("ord-2", "ord");
    let edge = cluster.start_edge("ord");
    cluster.wait_hosts(&_api, 2);
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let ledger = tmp.path().join("executed.txt");
    let engine = upstream_engine(&format!("--events 3 --delay-ms 30 --ledger {}", ledger.display()));
    cluster.cli(&[
        "deploy",
        "chaos",
        "--model",
        "tiny",
        "--machines",
        "3",
        "--engine-cmd",
        &engine,
        "--timeout",
        "120",
    ]);

    // Steady traffic: four clients, every other request a stream, each with its own id.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, Outcome>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, outcomes, edge) = (stop.clone(), outcomes.clone(), edge.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("c{c}-{n}");
                    let outcome = one_request(&client, &edge, &id, n % 2 == 0);
                    let earlier = outcomes.lock().unwrap().insert(id.clone(), outcome);
                    assert!(earlier.is_none(), "{id} answered twice");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    // The chaos: every 2 to 5 s, one of these at random.
    let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut done: BTreeMap<&str, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(2000 + dice.roll(3000)));
        let action = match dice.roll(4) {
            0 => {
                let pids = engine_pids(&ledger);
                if let Some(&pid) = pids.get(dice.roll(pids.len().max(1) as u64) as usize) {
                    // SAFETY: signalling a process this test's agents started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                "engine killed"
            }
            1 => {
                cluster.kill("ord-2");
                std::thread::sleep(Duration::from_millis(1000 + dice.roll(3000)));
                cluster.start_agent("ord-2", "ord");
                "agent killed and restarted"
            }
            2 => {
                cluster.kill("nats");
                std::thread::sleep(Duration::from_millis(1000 + dice.roll(4000)));
                cluster.start_nats();
                "nats killed and restarted"
            }
            _ => {
                proxy.set(Fault::Cut);
                std::thread::sleep(Duration::from_millis(1000 + dice.roll(4000)));
                proxy.set(Fault::Pass);
                "hosts cut off from nats"
            }
        };
        *done.entry(action).or_insert(0) += 1;
    }
    // Calm again: the app must serve again within a minute.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let healed = wait_for(90, "the app serving again after the chaos", || {
        matches!(one_request(&client, &edge, "after-0", false), Outcome::Ok)
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in outcomes.values() {
        let key = match outcome {
            Outcome::Error(status, code) => format!("{status} {code}"),
            Outcome::Broken(_) => "broken".into(),
            other => format!("{other:?}"),
        };
        *tally.entry(key).or_insert(0) += 1;
    }
    let executed = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: BTreeMap<&str, u32> = BTreeMap::new();
    for id in executed.lines() {
        *runs.entry(id).or_insert(0) += 1;
    }
    println!(
        "chaos for {secs} s (seed {seed}): {done:?}; {} requests: {tally:?}; {} executions; serving again {healed:?} after",
        outcomes.len(),
        runs.values().sum::<u32>()
    );
    let broken: Vec<(&String, &String)> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            Outcome::Broken(why) => Some((id, why)),
            _ => None,
        })
        .take(5)
        .collect();
    assert!(broken.is_empty(), "requests without a 2xx or a clear error: {broken:?}");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "requests executed more than once: {twice:?}");
    let unknown: Vec<_> = runs
        .keys()
        .filter(|id| !outcomes.contains_key(**id) && !id.starts_with("after-"))
        .take(5)
        .collect();
    assert!(unknown.is_empty(), "engines executed requests no client sent: {unknown:?}");
    let ok = tally.get("Ok").copied().unwrap_or(0) + tally.get("StreamDone").copied().unwrap_or(0);
    assert!(ok * 2 > outcomes.len(), "fewer than half answered with a 2xx: {tally:?}");
    assert!(done.len() >= 3, "too little chaos to show anything: {done:?}");
}
