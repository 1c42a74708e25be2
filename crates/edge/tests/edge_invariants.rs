//! Invariants of the request path that code can check: a request's cost does not grow with the
//! size of its app. Measured by what it allocates, which is exact and does not depend on the
//! machine's speed: the old path built a view of every machine of the app for each request.

use axum::body::Body;
use colo_edge::routes::Endpoint;
use colo_edge::{handle, Edge, EdgeConfig, RouteTable};
use http_body_util::BodyExt;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The system allocator, counting bytes asked for on threads that count (the edge's, not the
/// stand-in machine's).
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTS.with(|counts| counts.get()) {
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A stand-in machine on its own thread, answering every request.
fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(|| async { r#"{"ok":true}"# });
            axum::serve(listener, app).await.unwrap()
        })
    });
    addr
}

fn edge_of(n: usize, addr: &str, busy: bool) -> Arc<Edge> {
    let machines = (0..n).map(|i| Endpoint::new(&format!("m{i:05}"), addr, "local").unwrap()).collect();
    let table = RouteTable::single("app", machines);
    if busy {
        for (i, m) in table.apps["app"].machines.iter().enumerate() {
            m.load.in_flight.store(1 + (i as u32) % 8, Ordering::Relaxed);
        }
    }
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(table));
    std::mem::forget(tx);
    Edge::new(EdgeConfig::default(), rx)
}

/// Median bytes allocated by one whole request (handle and body read).
async fn bytes_per_request(edge: &Arc<Edge>) -> u64 {
    let mut samples = Vec::new();
    for i in 0..60 {
        let request = http::Request::post("/v1/completions")
            .body(Body::from(r#"{"model":"app","prompt":"the same prompt each time","max_tokens":4}"#))
            .unwrap();
        let before = ALLOCATED.load(Ordering::Relaxed);
        let response = handle(edge.clone(), request).await;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        // The first requests open pooled connections; count the steady state.
        if i >= 20 {
            samples.push(ALLOCATED.load(Ordering::Relaxed) - before);
        }
    }
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "current_thread")]
async fn a_requests_allocations_do_not_grow_with_its_apps_size() {
    let addr = upstream();
    COUNTS.with(|counts| counts.set(true));
    for busy in [false, true] {
        let small = bytes_per_request(&edge_of(10, &addr, busy)).await;
        let large = bytes_per_request(&edge_of(20_000, &addr, busy)).await;
        println!("busy={busy}: {small} bytes per request with 10 machines, {large} with 20,000");
        // 20,000 machines would cost at least 20,000 * 8 bytes if the path copied the list.
        assert!(
            large <= small + 1024,
            "busy={busy}: a request to an app of 20,000 machines allocated {large} bytes, one of 10 machines {small}"
        );
    }
}
