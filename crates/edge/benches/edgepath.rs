//! Cost of the edge's whole request path (`colo_edge::handle`: body, app, key check, pick, send
//! to the machine over loopback, response) for an app of 10, 1,000 and 10,000 started machines.
//!
//! Every machine's endpoint points at one small HTTP server on loopback, so the socket work is
//! the same at every size and what changes with the size is only what the edge does per
//! machine. Two fleets: every machine idle (a pick stops at the first idle machine), and every
//! machine busy but under its soft limit with a fresh engine report (a pick reads up to the
//! route's `scan_limit` machines). Sizes are measured in interleaved rounds; each line gives the
//! median wall ns per request (one request at a time, so mostly the loopback round trip and the
//! wake-ups of two threads) and the median CPU ns the edge's thread spent per request (the
//! edge's own work, whatever the scheduler does), and the last line is
//! `edgepath ns_10=.. ns_1k=.. ns_10k=..` of CPU ns for the busy fleet.
//!
//! `cargo bench -p colo-edge --bench edgepath` (EDGEPATH_ROUNDS, EDGEPATH_REQUESTS to change the
//! effort).

use axum::body::Body;
use colo_edge::routes::Endpoint;
use colo_edge::{handle, Edge, EdgeConfig, RouteTable};
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// A machine stand-in: answers every request with a short JSON body and keeps the connection.
fn spawn_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr").to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let app = axum::Router::new().fallback(|| async { ([("content-type", "application/json")], r#"{"ok":true}"#) });
            axum::serve(listener, app).await.expect("serve");
        });
    });
    addr
}

/// An edge over one app of `n` machines at `addr`, all idle or all busy.
fn edge_with(n: usize, addr: &str, busy: bool) -> Arc<Edge> {
    let machines: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint::new(&format!("m{i:05}"), addr, "local").expect("endpoint"))
        .collect();
    let table = RouteTable::single("app", machines);
    if busy {
        // Loads of 1..=8 under the default soft limit of 32: room everywhere, idle nowhere.
        for (i, m) in table.apps["app"].machines.iter().enumerate() {
            m.load.in_flight.store(1 + (i as u32 * 7) % 8, Ordering::Relaxed);
        }
    }
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(table));
    std::mem::forget(_tx);
    Edge::new(EdgeConfig::default(), rx)
}

/// CPU time this thread has used, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Median of the per-round ns per request.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn one_request(edge: &Arc<Edge>) {
    let request = http::Request::post("/v1/embeddings")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"model":"app","input":"the quick brown fox"}"#))
        .expect("request");
    let response = handle(edge.clone(), request).await;
    assert_eq!(response.status(), 200, "the stand-in machine answers");
    response.into_body().collect().await.expect("body");
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rounds = env("EDGEPATH_ROUNDS", 7);
    let requests = env("EDGEPATH_REQUESTS", 5_000);
    let addr = spawn_upstream();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut busy_line = Vec::new();
    for busy in [false, true] {
        let edges: Vec<Arc<Edge>> = runtime.block_on(async { SIZES.iter().map(|&n| edge_with(n, &addr, busy)).collect() });
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
        runtime.block_on(async {
            for edge in &edges {
                for _ in 0..200 {
                    one_request(edge).await; // warm the connection pool and caches
                }
            }
            for _ in 0..rounds {
                for (i, edge) in edges.iter().enumerate() {
                    let (started, cpu_started) = (Instant::now(), thread_cpu_ns());
                    for _ in 0..requests {
                        one_request(edge).await;
                    }
                    samples[i].push(started.elapsed().as_nanos() as f64 / requests as f64);
                    cpu[i].push((thread_cpu_ns() - cpu_started) as f64 / requests as f64);
                }
            }
        });
        let fleet = if busy { "busy" } else { "idle" };
        let medians: Vec<f64> = samples.into_iter().map(median).collect();
        let cpu_medians: Vec<f64> = cpu.into_iter().map(median).collect();
        for ((n, ns), cpu_ns) in SIZES.iter().zip(&medians).zip(&cpu_medians) {
            println!("edgepath fleet={fleet} machines={n} wall_ns_per_request={ns:.0} cpu_ns_per_request={cpu_ns:.0}");
        }
        if busy {
            busy_line = cpu_medians;
        }
    }
    println!(
        "edgepath ns_10={:.0} ns_1k={:.0} ns_10k={:.0}",
        busy_line[0], busy_line[1], busy_line[2]
    );
}
