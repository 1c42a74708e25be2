//! The edge as a network, over real sockets: a fleet file puts two regions on this machine
//! (with a simulated distance between them), apps bring their own engine (a small Python
//! server, `tests/py/upstream.py`), and the tests watch where requests go, how stopped
//! machines wake for a burst, how held streams are kept alive, and how SIGTERM drains.

mod common;

use common::{repo_root, Colo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One test of this file at a time: each loads both cores (a thousand-request burst, two
/// thousand streams) and checks health, timing or wake counts that a neighbour's load skews: a
/// Python engine starved of CPU misses a health check, and the edge rightly wakes another machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn upstream_cmd(delay_ms: u64, events: u32) -> String {
    let script = repo_root().join("tests/py/upstream.py");
    format!(
        "python3 {} --port {{port}} --delay-ms {delay_ms} --events {events}",
        script.display()
    )
}

/// The region that answered one request, and its status.
fn call(client: &reqwest::blocking::Client, edge: &str, app: &str) -> (u16, String) {
    let response = client
        .post(format!("{edge}/v1/embeddings"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"model":"{app}","input":"x"}}"#))
        .send()
        .expect("request through the edge");
    let region = response
        .headers()
        .get("colo-region")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    (response.status().as_u16(), region)
}

/// Sends `n` requests at once; counts answers by region.
fn burst(edge: &str, app: &str, n: usize) -> BTreeMap<String, usize> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (edge, app) = (edge.to_string(), app.to_string());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let (status, region) = call(&client, &edge, &app);
                assert_eq!(status, 200, "a request of the burst failed");
                region
            })
        })
        .collect();
    let mut regions = BTreeMap::new();
    for handle in handles {
        *regions.entry(handle.join().unwrap()).or_default() += 1;
    }
    regions
}

fn machine_in<'a>(machines: &'a [serde_json::Value], app: &str, region: &str) -> &'a serde_json::Value {
    machines
        .iter()
        .find(|m| m["app"] == app && m["region"] == region && m["state"] != "destroyed")
        .unwrap_or_else(|| panic!("no {app} machine in {region}: {machines:#?}"))
}

fn signal(pid: u64, sig: i32) {
    // SAFETY: signalling an engine process this test's colo spawned.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[test]
fn requests_stay_in_their_region_until_it_is_full_and_leave_a_dead_machine() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        r#"
inter_region_delay_ms = 30

[[hosts]]
name = "ord-1"
region = "ord"
cpu_slots = 2

[[hosts]]
name = "ord-2"
region = "ord"
cpu_slots = 1

[[hosts]]
name = "ams-1"
region = "ams"
cpu_slots = 2

[[edges]]
region = "ord"

[[edges]]
region = "ams"
"#,
    )
    .unwrap();
    let health_interval = 0.5;
    let colo = Colo::up_with(
        &dir.path().join("data"),
        &[
            "--fleet",
            fleet.to_str().unwrap(),
            "--health-interval",
            &health_interval.to_string(),
        ],
    );
    assert_eq!(colo.edges.keys().collect::<Vec<_>>(), ["ams", "ord"], "one edge per region");
    let (ord, ams) = (colo.edges["ord"].clone(), colo.edges["ams"].clone());
    colo.push_tiny("tiny");
    let cmd = upstream_cmd(400, 3);
    colo.ok(&[
        "deploy",
        "near",
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
        "2",
    ]);

    // ord-2 has no machine of the app yet: prefetching for the region fills its cache from
    // its neighbour ord-1, not from the store.
    let warmed: serde_json::Value = serde_json::from_str(&colo.ok(&["cache", "prefetch", "tiny", "--region", "ord", "--json"])).unwrap();
    let warmed = warmed.as_array().unwrap();
    assert_eq!(warmed.len(), 2, "both ord hosts: {warmed:?}");
    let ord2 = warmed.iter().find(|w| w["host"] == "ord-2").unwrap();
    let total = ord2["report"]["bytes_total"].as_u64().unwrap();
    assert_eq!(ord2["report"]["bytes_from_peer"].as_u64(), Some(total), "{ord2}");
    assert_eq!(ord2["report"]["bytes_from_origin"].as_u64(), Some(0), "{ord2}");

    // One at a time, each edge keeps its callers in its own region.
    let client = reqwest::blocking::Client::new();
    for (edge, region) in [(&ord, "ord"), (&ams, "ams")] {
        for _ in 0..3 {
            assert_eq!(call(&client, edge, "near"), (200, region.to_string()));
        }
    }
    // Four at once at ord: two fill ord's machine to its hard limit, two spill to ams.
    let spread = burst(&ord, "near", 4);
    assert_eq!(spread, BTreeMap::from([("ams".to_string(), 2), ("ord".to_string(), 2)]));

    // The edge measures the distance it is configured to simulate.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rtt_ams = loop {
        let table: serde_json::Value = client
            .get(format!("{ord}/colo/rtt"))
            .bearer_auth(colo.token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let row = table["regions"].as_array().unwrap().iter().find(|r| r["region"] == "ams").cloned();
        if let Some(row) = row.filter(|r| r["measured"] == true) {
            break row["rtt_ms"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no measured RTT to ams: {table}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("ord edge: measured RTT to ams {rtt_ams} ms (30 ms configured)");
    assert!((30..200).contains(&rtt_ams), "measured RTT to ams: {rtt_ams} ms");

    // A hung engine (SIGSTOP) leaves the route table within one health interval (plus the
    // check's own timeout of one interval): ord's callers go to ams meanwhile.
    let machines = colo.machines();
    let hung = machine_in(&machines, "near", "ord");
    let (hung_id, hung_pid) = (hung["id"].as_str().unwrap().to_string(), hung["pid"].as_u64().unwrap());
    let stopped_at = Instant::now();
    signal(hung_pid, libc::SIGSTOP);
    colo.wait_machines(10, "the hung machine marked unhealthy", |ms| {
        ms.iter().any(|m| m["id"] == hung_id.as_str() && m["healthy"] == false)
    });
    let noticed = stopped_at.elapsed();
    println!("hung engine left the route table after {noticed:?} (health interval {health_interval}s)");
    assert!(
        noticed < Duration::from_secs_f64(health_interval * 2.0 + 1.0),
        "unhealthy machine noticed after {noticed:?}"
    );
    for _ in 0..3 {
        assert_eq!(call(&client, &ord, "near"), (200, "ams".to_string()), "ord's machine is hung");
    }
    signal(hung_pid, libc::SIGCONT);

    // Killed outright, the machine's engine is restarted; requests meanwhile still succeed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let machines = colo.machines();
        let m = machine_in(&machines, "near", "ord");
        if m["state"] == "started" && m["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "ord's machine did not come back: {m:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Killed outright, the engine leaves the table at once and is restarted; within one health
    // interval requests succeed again (one sent in the very instant of the kill may have
    // reached the dying engine: a POST is not resent, so it gets a 502 naming the machine).
    let machines = colo.machines();
    let killed = machine_in(&machines, "near", "ord");
    let killed_id = killed["id"].as_str().unwrap().to_string();
    signal(killed["pid"].as_u64().unwrap(), libc::SIGKILL);
    let killed_at = Instant::now();
    let recovered = loop {
        let (status, _) = call(&client, &ord, "near");
        if status == 200 {
            break killed_at.elapsed();
        }
        assert_eq!(status, 502, "only a request racing the kill may fail");
        assert!(killed_at.elapsed() < Duration::from_secs(5), "requests still fail after the kill");
    };
    println!("after kill -9 of {killed_id}: requests succeed again after {recovered:?}");
    assert!(recovered < Duration::from_secs_f64(health_interval + 0.5));
    for _ in 0..3 {
        assert_eq!(call(&client, &ord, "near").0, 200);
    }
    colo.stop();
}

#[test]
fn stopped_machines_wake_for_a_burst_held_streams_get_keepalives_and_sigterm_drains() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "4", "--sse-keepalive-ms", "50"]);
    colo.push_tiny("tiny");
    let cmd = upstream_cmd(300, 3);
    colo.ok(&[
        "deploy",
        "nap",
        "--model",
        "tiny",
        "--engine-cmd",
        &cmd,
        "--machines",
        "4",
        "--soft-limit",
        "500",
        "--hard-limit",
        "1000",
        "--autostop",
        "1",
    ]);
    let all_stopped = |ms: &[serde_json::Value]| ms.iter().filter(|m| m["app"] == "nap" && m["state"] == "stopped").count() == 4;
    colo.wait_machines(30, "every nap machine autostopped", all_stopped);

    // One request against stopped machines is answered once one of them starts, and says
    // what the wait was made of.
    let client = reqwest::blocking::Client::new();
    let started = Instant::now();
    let woke = client
        .post(format!("{}/v1/embeddings", colo.edge))
        .body(r#"{"model":"nap","input":"x"}"#)
        .send()
        .unwrap();
    assert_eq!(woke.status(), 200);
    let cold = woke.headers().get("colo-cold-start").map(|v| v.to_str().unwrap().to_string());
    println!(
        "a request to a stopped app answered in {:?}; colo-cold-start: {cold:?}",
        started.elapsed()
    );
    let cold = cold.expect("the request that woke a machine carries colo-cold-start");
    assert!(cold.contains("engine_load=") && cold.ends_with("weights=cache"), "{cold}");
    colo.wait_machines(30, "every nap machine autostopped again", all_stopped);

    // A thousand at once need ceil(1000 / 500) = 2 machines at most; all are answered.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let machines_used = runtime.block_on(async {
        let client = reqwest::Client::new();
        let requests = (0..1000).map(|_| {
            let client = client.clone();
            let url = format!("{}/v1/embeddings", colo.edge);
            async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"model":"nap","input":"x"}"#)
                    .send()
                    .await
                    .expect("a burst request");
                assert_eq!(response.status(), 200, "a burst request failed");
                response.headers()["colo-machine"].to_str().unwrap().to_string()
            }
        });
        let machines: std::collections::BTreeSet<String> = futures::future::join_all(requests).await.into_iter().collect();
        machines
    });
    let metrics = client
        .get(format!("{}/metrics", colo.edge))
        .bearer_auth(colo.token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let wakes: u64 = metrics
        .lines()
        .find(|l| l.starts_with("colo_edge_wakes_total{app=\"nap\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    println!("1000 requests against 4 stopped machines: served by {machines_used:?}; wakes in all {wakes}");
    assert!((1..=2).contains(&machines_used.len()), "the burst woke {machines_used:?}");
    assert!(
        wakes <= 3,
        "one wake for the first request and at most two for the burst; got {wakes}"
    );

    // A held streaming request gets its stream at once, with comments until the machine answers.
    colo.wait_machines(30, "every nap machine autostopped after the burst", all_stopped);
    let body = client
        .post(format!("{}/v1/completions", colo.edge))
        .header("content-type", "application/json")
        .body(r#"{"model":"nap","prompt":"x","stream":true}"#)
        .send()
        .unwrap();
    assert_eq!(body.status(), 200);
    let text = body.text().unwrap();
    assert!(text.starts_with(": waiting for a machine"), "no keep-alive first: {text:?}");
    assert!(
        text.contains(r#""event": 2"#) && text.ends_with("data: [DONE]\n\n"),
        "stream incomplete: {text:?}"
    );

    // SIGTERM lets a request in flight finish before the machines stop.
    let edge = colo.edge.clone();
    let in_flight = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let response = client
            .post(format!("{edge}/v1/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"nap","prompt":"x","stream":true}"#)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap_or_default())
    });
    std::thread::sleep(Duration::from_millis(600));
    let (edge, log) = (colo.edge.clone(), colo.data_dir.join("up.log"));
    colo.stop();
    let (status, text) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the drained stream was cut: {text:?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(
        reqwest::blocking::get(format!("{edge}/health")).is_err(),
        "the edge still accepts after SIGTERM"
    );
}

#[test]
fn two_thousand_streams_at_once_with_bounded_memory() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &[]);
    colo.push_tiny("tiny");
    // Four events 500 ms apart: each stream stays open about two seconds.
    let cmd = upstream_cmd(500, 4);
    colo.ok(&[
        "deploy",
        "sse",
        "--model",
        "tiny",
        "--engine-cmd",
        &cmd,
        "--soft-limit",
        "4000",
        "--hard-limit",
        "4000",
    ]);
    let before = colo.rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), colo.pid());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                peak.fetch_max(kib * 1024, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let complete = runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let streams = (0..2000).map(|_| {
            let client = client.clone();
            let url = format!("{}/v1/completions", colo.edge);
            async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"model":"sse","prompt":"x","stream":true}"#)
                    .send()
                    .await
                    .expect("opening a stream");
                assert_eq!(response.status(), 200);
                response.text().await.is_ok_and(|t| t.ends_with("data: [DONE]\n\n"))
            }
        });
        futures::future::join_all(streams).await.into_iter().filter(|ok| *ok).count()
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "2000 concurrent SSE streams: {complete} complete in {:?}; colo resident memory {} MiB before, {} MiB at peak",
        started.elapsed(),
        before >> 20,
        peak >> 20
    );
    assert_eq!(complete, 2000, "every stream ends with [DONE]");
    assert!(
        peak.saturating_sub(before) < 256 << 20,
        "2000 streams grew colo by {} MiB",
        (peak - before) >> 20
    );
    colo.stop();
}
