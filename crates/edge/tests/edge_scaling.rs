//! The edge driving its scalers, in virtual time (tokio's paused clock): which machines held
//! requests wake, when held requests give up, and when idle machines are stopped. Requests go
//! through `colo_edge::handle` directly; no machine ever answers, so no socket is needed.

use axum::body::Body;
use colo_core::{App, AppName, Device, Machine, MachineState};
use colo_edge::{handle, Edge, EdgeConfig, Machines, Refused, RouteTable};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The agents as the edge sees them: every start and stop it asks for, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl Machines for Recorded {
    fn start(&self, machine_id: &str, _refused: Refused) {
        self.0.lock().unwrap().push(format!("start {machine_id}"));
    }
    fn stop(&self, machine_id: &str) {
        self.0.lock().unwrap().push(format!("stop {machine_id}"));
    }
    fn suspend(&self, machine_id: &str) {
        self.0.lock().unwrap().push(format!("suspend {machine_id}"));
    }
}

impl Recorded {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn app(soft_limit: u32, autostop_secs: Option<u64>) -> App {
    serde_json::from_value(serde_json::json!({
        "name": "app", "model": "m", "revision": "r1", "machines": 1, "deployed_at_ms": 0,
        "soft_limit": soft_limit, "hard_limit": soft_limit * 2, "autostop_secs": autostop_secs,
    }))
    .unwrap()
}

/// A machine of "app" in `region`, on a host of its own that has run it before (and so caches
/// its weights) when `ran` is set; a stopped machine that never ran is only created.
fn machine(id: &str, region: &str, state: MachineState, ran: bool) -> Machine {
    let name = AppName::new("app").unwrap();
    let mut m = Machine::new(
        id.into(),
        name.clone(),
        name,
        "r1".into(),
        Device::Cpu { slot: 0 },
        format!("host-{id}"),
        region.into(),
    );
    m.state = if state == MachineState::Stopped && !ran {
        MachineState::Created
    } else {
        state
    };
    m.desired = state;
    if state == MachineState::Started {
        m.addr = Some("127.0.0.1:9".into());
    }
    m
}

fn edge(table: RouteTable, hold_timeout: Duration) -> (Arc<Edge>, Arc<Recorded>, watch::Sender<Arc<RouteTable>>) {
    let (tx, rx) = watch::channel(Arc::new(table));
    let config = EdgeConfig {
        region: "ord".into(),
        hold_timeout,
        ..EdgeConfig::default()
    };
    let recorded = Arc::new(Recorded::default());
    let edge = Edge::new(config, rx).with_machines(recorded.clone());
    edge.spawn_scaling();
    (edge, recorded, tx)
}

fn request(headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut builder = http::Request::post("/v1/embeddings").header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(r#"{"model":"app","input":"x"}"#)).unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn held_requests_wake_one_machine_per_soft_limit_and_give_up_at_the_deadline() {
    use MachineState::Stopped;
    let machines = [
        machine("m1", "ord", Stopped, false),
        machine("m2", "ord", Stopped, true),
        machine("m3", "ams", Stopped, true),
        machine("m4", "ord", Stopped, false),
        machine("m5", "ord", Stopped, false),
    ];
    let (edge, recorded, _tx) = edge(RouteTable::build(&[app(2, None)], &machines), Duration::from_secs(30));
    let held: Vec<_> = (0..5).map(|_| tokio::spawn(handle(edge.clone(), request(&[])))).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // ceil(5 / 2) = 3 machines: the cached ones first (the local one, then ams), then by id.
    assert_eq!(recorded.take(), vec!["start m2", "start m3", "start m1"]);
    assert_eq!(edge.busy(), 5, "all five wait");
    let started = tokio::time::Instant::now();
    for response in held {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
    }
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(29_900)..Duration::from_millis(30_100)).contains(&waited),
        "answered at the hold deadline, in virtual time: {waited:?}"
    );
    assert_eq!(edge.busy(), 0);
    // The starts were never confirmed; after the start timeout a new request wakes again, the
    // machines whose starts went nowhere last.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let again = tokio::spawn(handle(edge.clone(), request(&[])));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(recorded.take(), vec!["start m4"]);
    drop(again);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_forced_to_a_region_wakes_a_machine_there() {
    use MachineState::Stopped;
    let machines = [machine("m-ord", "ord", Stopped, true), machine("m-syd", "syd", Stopped, false)];
    let (edge, recorded, _tx) = edge(RouteTable::build(&[app(8, None)], &machines), Duration::from_secs(5));
    let held = tokio::spawn(handle(edge.clone(), request(&[("colo-force-region", "syd")])));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(recorded.take(), vec!["start m-syd"]);
    assert_eq!(held.await.unwrap().status(), 503);
    // A region with no machine at all is refused at once.
    let response = handle(edge.clone(), request(&[("colo-force-region", "fra")])).await;
    assert_eq!(response.status(), 503);
    assert!(recorded.take().is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn idle_machines_stop_after_the_autostop_time_but_not_while_busy() {
    use MachineState::Started;
    let machines = [
        machine("m-busy", "ord", Started, true),
        machine("m-idle", "ord", Started, true),
        machine("m-ams", "ams", Started, true),
    ];
    let table = RouteTable::build(&[app(8, Some(10))], &machines);
    let busy = table.apps["app"]
        .machines
        .iter()
        .find(|m| m.machine_id == "m-busy")
        .unwrap()
        .clone();
    busy.load.in_flight.store(1, std::sync::atomic::Ordering::SeqCst);
    let (_edge, recorded, tx) = edge(table, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(recorded.take().is_empty(), "nothing idle for 10 s yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Machines of other regions are left to their own region's edge.
    assert_eq!(recorded.take(), vec!["stop m-idle"]);
    busy.load.in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(recorded.take().is_empty(), "idle only since its request ended");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(recorded.take(), vec!["stop m-busy"]);
    // A machine stopped and woken again counts its idle time from the new start.
    let machines = [machine("m-idle", "ord", MachineState::Stopped, true)];
    tx.send(Arc::new(RouteTable::build(&[app(8, Some(10))], &machines))).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let machines = [machine("m-idle", "ord", Started, true)];
    tx.send(Arc::new(RouteTable::build(&[app(8, Some(10))], &machines))).unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(recorded.take().is_empty(), "just woken");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(recorded.take(), vec!["stop m-idle"]);
}

/// An app that leaves the route table takes its per-app series (queue depth, wakes, requests
/// and their latency) out of /metrics: junk deploys and destroys must not grow the page for ever.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_app_that_leaves_takes_its_scaling_series_with_it() {
    let machines = [machine("m1", "ord", MachineState::Stopped, true)];
    let (edge, recorded, tx) = edge(RouteTable::build(&[app(2, None)], &machines), Duration::from_secs(1));
    let response = handle(edge.clone(), request(&[])).await;
    assert_eq!(response.status(), 503, "no machine ever starts here");
    assert_eq!(recorded.take(), vec!["start m1"]);
    let page = |edge: &Arc<Edge>| {
        let edge = edge.clone();
        async move {
            let response = handle(edge, http::Request::get("/metrics").body(Body::empty()).unwrap()).await;
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let before = page(&edge).await;
    assert!(before.contains("colo_edge_wakes_total{app=\"app\"}"), "{before}");
    assert!(before.contains("colo_edge_queue_depth{app=\"app\"}"), "{before}");
    assert!(before.contains("colo_edge_requests_total{app=\"app\""), "{before}");
    assert!(before.contains("colo_edge_request_seconds_count{app=\"app\""), "{before}");
    tx.send(Arc::new(RouteTable::default())).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = page(&edge).await;
    assert!(!after.contains("colo_edge_wakes_total{app=\"app\"}"), "{after}");
    assert!(!after.contains("colo_edge_queue_depth{app=\"app\"}"), "{after}");
    assert!(!after.contains("app=\"app\""), "a series of the app that left stayed: {after}");
}
