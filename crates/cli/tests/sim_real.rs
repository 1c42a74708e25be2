//! The simulator against real processes (issue 18, item 4): the same small world, two regions
//! with one machine each and Poisson callers at both edges, run on `colo up --fleet` (real
//! edges, real sockets, an engine with a fixed service time: tests/py/upstream.py, a stand-in
//! written for the tests) and in `colo sim`; the latency percentiles agree within 10%.
//!
//! The simulator is given what was measured on the real system when idle: the engine's service
//! time as the edge sees it, and the extra time of a request sent to the other region. What
//! it has to predict is what load does: waits at the edge, requests spilling to the far region.

mod common;

use colo_sim::{run, Scenario};
use common::{repo_root, Colo};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICE_MS: u64 = 50;
const DELAY_MS: u64 = 30;
/// Callers per second at the ord and ams edges, and for how long.
const ORD_RATE: f64 = 6.0;
const AMS_RATE: f64 = 3.0;
const SECONDS: f64 = 90.0;

/// One request through `edge`, its latency in ms (panics on a failure: none is expected).
fn call(client: &reqwest::blocking::Client, edge: &str, force: Option<&str>) -> f64 {
    let started = Instant::now();
    let mut request = client
        .post(format!("{edge}/v1/embeddings"))
        .header("content-type", "application/json")
        .body(r#"{"model":"twin","input":"x"}"#);
    if let Some(region) = force {
        request = request.header("colo-force-region", region);
    }
    let response = request.send().expect("a request through the edge");
    assert_eq!(response.status(), 200, "{:?}", response.text());
    let _ = response.bytes();
    started.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Open-loop Poisson arrivals at `rate` per second for `seconds` at `edge`, each request on a
/// thread of its own; the latencies.
fn poisson(edge: String, rate: f64, seconds: f64, seed: u64) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let mut x = seed;
        let mut uniform = move || {
            // SplitMix64: a seeded source is all this needs.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let start = Instant::now();
        let mut at = 0.0;
        let mut threads = Vec::new();
        loop {
            at += -(1.0 - uniform()).ln() / rate;
            if at >= seconds {
                break;
            }
            let due = start + Duration::from_secs_f64(at);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (client, edge, latencies) = (client.clone(), edge.clone(), latencies.clone());
            threads.push(std::thread::spawn(move || {
                let ms = call(&client, &edge, None);
                latencies.lock().unwrap().push(ms);
            }));
        }
        for t in threads {
            t.join().expect("a caller thread");
        }
        Arc::try_unwrap(latencies).unwrap().into_inner().unwrap()
    })
}

#[test]
fn the_simulator_predicts_latency_under_load_within_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            r#"
inter_region_delay_ms = {DELAY_MS}
[[hosts]]
name = "ord-1"
region = "ord"
cpu_slots = 1
[[hosts]]
name = "ams-1"
region = "ams"
cpu_slots = 1
[[edges]]
region = "ord"
[[edges]]
region = "ams"
"#
        ),
    )
    .unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--fleet", fleet.to_str().unwrap()]);
    let (ord, ams) = (colo.edges["ord"].clone(), colo.edges["ams"].clone());
    colo.push_tiny("tiny");
    let script = repo_root().join("tests/py/upstream.py");
    // The load header as colo's engine sends it: the others still running, not the request
    // being answered (else every machine looks full for a second after each answer).
    let cmd = format!(
        "python3 {} --port {{port}} --delay-ms {SERVICE_MS} --load-without-self",
        script.display()
    );
    colo.ok(&[
        "deploy",
        "twin",
        "--model",
        "tiny",
        "--engine-cmd",
        &cmd,
        "--region",
        "ord=1",
        "--region",
        "ams=1",
        "--soft-limit",
        "1",
        "--hard-limit",
        "1",
    ]);

    // Idle, one at a time: the service time as the edge sees it, and what the other region adds.
    let client = reqwest::blocking::Client::new();
    for _ in 0..10 {
        call(&client, &ord, None);
    }
    let local = median((0..40).map(|_| call(&client, &ord, None)).collect());
    let remote = median((0..40).map(|_| call(&client, &ord, Some("ams"))).collect());
    let extra = (remote - local).max(0.0);
    println!("idle: {local:.1} ms in the region, {remote:.1} ms to the other ({extra:.1} ms more)");
    assert!(local >= SERVICE_MS as f64 && local < SERVICE_MS as f64 + 15.0, "{local}");
    assert!(extra >= DELAY_MS as f64 * 0.8, "{extra}");

    // Under load: both edges at once.
    let ord_calls = poisson(ord.clone(), ORD_RATE, SECONDS, 1);
    let ams_calls = poisson(ams.clone(), AMS_RATE, SECONDS, 2);
    let mut real: Vec<f64> = ord_calls.join().unwrap();
    real.extend(ams_calls.join().unwrap());
    let n = real.len();
    let (real_p50, real_p90) = (percentile(&mut real, 0.5), percentile(&mut real, 0.9));

    let scenario = Scenario::from_toml(&format!(
        r#"
        seed = 1
        duration_s = 200000
        warmup_s = 100
        [[region]]
        name = "ord"
        machines = 1
        arrival_rate = {ORD_RATE}
        [[region]]
        name = "ams"
        machines = 1
        arrival_rate = {AMS_RATE}
        [[rtt]]
        a = "ord"
        b = "ams"
        ms = {extra}
        [service]
        distribution = "fixed"
        mean_ms = {local}
        [routing]
        hard_limit = 1
        "#
    ))
    .unwrap();
    let report = run(&scenario, &mut |_| {});
    let (sim_p50, sim_p90) = (report.overall.latency_ms.p50, report.overall.latency_ms.p90);
    println!(
        "{n} real requests: p50 {real_p50:.1} ms, p90 {real_p90:.1} ms; simulated ({} requests): p50 {sim_p50:.1} ms, p90 {sim_p90:.1} ms",
        report.overall.requests
    );
    assert!(n as f64 > (ORD_RATE + AMS_RATE) * SECONDS * 0.85, "{n} requests");
    for (what, real, sim) in [("p50", real_p50, sim_p50), ("p90", real_p90, sim_p90)] {
        let error = (sim - real).abs() / real;
        assert!(
            error < 0.10,
            "{what}: simulated {sim:.1} ms against {real:.1} ms real ({:.1}% apart)",
            error * 100.0
        );
    }
    // Load made a difference the simulator had to predict: the p90 is well past the idle time.
    assert!(real_p90 > local * 1.2, "p90 {real_p90} vs idle {local}");
    colo.stop();
}
