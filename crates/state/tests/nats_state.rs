//! The `Nats` state store against a real nats-server with JetStream: round trips, propagation
//! between clients, fail static while the server is down, resync after it returns, and scale.
//!
//! Each test starts its own server, on a loopback port the server picks itself, with its own
//! store dir. Without a `nats-server` binary (on PATH, at /usr/sbin, or named by `NATS_SERVER`)
//! they fail and say how to install one: a test that cannot run has not passed.

use colo_core::{App, AppName, Device, HostRecord, Machine, MachineState};
use colo_fault::nats_server;
use colo_state::{Nats, NatsOptions, StateError, StateStore};
use futures::StreamExt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::{sleep, timeout};

// === nats-server ===

fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
}

/// Returns the binary, or fails the test saying how to get one.
fn require_server(test: &str) -> PathBuf {
    server_binary().unwrap_or_else(|| {
        panic!(
            "{test} needs nats-server (JetStream) and found none on PATH or at /usr/sbin: install it \
             (`apt-get install nats-server`, as scripts/test does) or name it with NATS_SERVER=/path"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A nats-server child process with JetStream, killed when dropped.
struct Server {
    binary: PathBuf,
    /// The port it picked at its first start; a restart listens on the same one.
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(binary: &Path, dir: &Path) -> Self {
        let mut server = Server {
            binary: binary.to_path_buf(),
            port: 0,
            dir: dir.to_path_buf(),
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store dir) and waits until this process
    /// listens: its own ports file, not just anything answering on the port (another test's
    /// server could, and this test would go on talking to it).
    fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let ports_dir = self.dir.join("ports");
        let mut command = Command::new(&self.binary);
        command.args(["-js", "-a", "127.0.0.1", "-sd"]).arg(self.dir.join("store"));
        nats_server::with_port_args(&mut command, (self.port != 0).then_some(self.port), &ports_dir);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        // Held before the wait, so that a wait that fails still kills it (`Drop`).
        let child = self.child.insert(child);
        let port = nats_server::client_port(child, &ports_dir, Duration::from_secs(10));
        assert!(self.port == 0 || self.port == port, "restarted on {port}, not {}", self.port);
        self.port = port;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the connection stays open but nothing answers.
    /// Returns once every thread of the server is stopped or running again (a signal is
    /// delivered a moment after `kill` returns).
    fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("server running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
        assert!(!frozen || !thread_states(&pid).is_empty(), "nats-server (pid {pid}) is gone");
        let deadline = Instant::now() + Duration::from_secs(5);
        while thread_states(&pid).iter().any(|&state| (state == 'T') != frozen) {
            assert!(Instant::now() < deadline, "nats-server's threads not all {signal} within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: no goodbye to the clients, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL nats-server");
            child.wait().expect("reap nats-server");
        }
    }
}

/// The state letter (`R`, `S`, `T`, ...) of each thread of process `pid`, from /proc; none
/// when the process is gone.
fn thread_states(pid: &str) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        // The state follows the command name, which is in parentheses and may hold spaces.
        .filter_map(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process still dies of SIGKILL; the SIGCONT only keeps its state tidy.
            self.freeze(false);
        }
        self.kill();
    }
}

// === records and helpers ===

fn options() -> NatsOptions {
    NatsOptions {
        write_timeout: Duration::from_secs(1),
        ..NatsOptions::default()
    }
}

/// Connects, retrying while a just-restarted server brings JetStream up (at most 15 s).
async fn connect(url: &str) -> Nats {
    connect_with(url, options()).await
}

async fn connect_with(url: &str, options: NatsOptions) -> Nats {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Nats::connect(url, options.clone()).await {
            Ok(nats) => return nats,
            Err(e) if Instant::now() < deadline => {
                println!("connect to {url}: {e}; retrying");
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect to {url}: {e}"),
        }
    }
}

fn name(s: &str) -> AppName {
    AppName::new(s).unwrap()
}

fn app(app: &str) -> App {
    App {
        name: name(app),
        model: name("tiny"),
        revision: "r1".into(),
        machines: 1,
        deployed_at_ms: 1,
        version: 1,
        gpus_per_machine: 1,
        gpu: None,
        soft_limit: None,
        hard_limit: None,
        keys: Vec::new(),
        autostop_secs: None,
        min_running: 0,
        autostop_to: Default::default(),
        route_weights: None,
        regions: Default::default(),
        deploy_tokens: Vec::new(),
        engine_cmd: None,
        demand: None,
        placement: None,
        route: None,
        engine: None,
    }
}

fn machine(id: &str, updated_at_ms: u64) -> Machine {
    Machine {
        state: MachineState::Started,
        addr: Some("127.0.0.1:9000".into()),
        updated_at_ms,
        ..Machine::new(
            id.into(),
            name("a1"),
            name("tiny"),
            "r1".into(),
            Device::Cpu { slot: 0 },
            "h1".into(),
            "fra".into(),
        )
    }
}

fn host(host: &str) -> HostRecord {
    HostRecord {
        name: host.into(),
        region: "fra".into(),
        addr: "http://127.0.0.1:7070".into(),
        devices: vec![Device::Cpu { slot: 0 }, Device::Cpu { slot: 1 }],
        cached_models: vec!["tiny@r1".into()],
        heartbeat_ms: 1_000,
        lease_ms: 5_000,
        lost: false,
    }
}

/// What a test waits for in a store's copy.
enum Expect<'a> {
    Counts(usize, usize, usize),
    MachineAt(&'a str, u64),
    /// The state after the restart test's changes: a3 and m-0 and h2 gone, a4 and m-5 and h3 there.
    AfterRestart,
}

impl Expect<'_> {
    async fn holds(&self, store: &impl StateStore) -> bool {
        match *self {
            Expect::Counts(apps, machines, hosts) => counts(store).await == (apps, machines, hosts),
            Expect::MachineAt(id, at) => store.machines().await.unwrap().iter().any(|m| m.id == id && m.updated_at_ms == at),
            Expect::AfterRestart => {
                let apps: Vec<String> = store.apps().await.unwrap().into_iter().map(|a| a.name.to_string()).collect();
                let machines: Vec<String> = store.machines().await.unwrap().into_iter().map(|m| m.id).collect();
                let hosts: Vec<String> = store.hosts().await.unwrap().into_iter().map(|h| h.name).collect();
                apps == ["a1", "a2", "a4"] && machines == ["m-1", "m-2", "m-3", "m-4", "m-5"] && hosts == ["h1", "h3"]
            }
        }
    }
}

/// Waits on `store.changes()` (at most `limit`) until `expect` holds.
async fn wait_until(store: &impl StateStore, limit: Duration, what: &str, expect: Expect<'_>) {
    let mut changes = store.changes();
    let deadline = Instant::now() + limit;
    loop {
        changes.borrow_and_update();
        if expect.holds(store).await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within {limit:?}");
        // Either a change or a re-check every 100 ms; the deadline above ends the loop.
        let _ = timeout(Duration::from_millis(100), changes.changed()).await;
    }
}

async fn counts(store: &impl StateStore) -> (usize, usize, usize) {
    (
        store.apps().await.unwrap().len(),
        store.machines().await.unwrap().len(),
        store.hosts().await.unwrap().len(),
    )
}

async fn wait_connected(store: &Nats, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.connected() {
        assert!(Instant::now() < deadline, "{who} did not reconnect within 15 s");
        sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_machines_and_hosts_round_trip() {
    let binary = require_server("apps_machines_and_hosts_round_trip");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&binary, dir.path());
    let a = connect(&server.url()).await;
    assert!(a.connected());
    assert_eq!(counts(&a).await, (0, 0, 0));

    a.put_app(&app("a1")).await.unwrap();
    a.put_app(&app("chat.v2")).await.unwrap();
    a.put_machine(&machine("m-1", 1)).await.unwrap();
    a.put_machine(&machine("m-2", 2)).await.unwrap();
    a.put_host(&host("h1")).await.unwrap();
    // A name that KV keys do not allow as it is.
    a.put_host(&host("gpu box.fra/1=*")).await.unwrap();

    // A writer reads its own writes at once.
    assert_eq!(a.app(&name("chat.v2")).await.unwrap(), Some(app("chat.v2")));
    assert_eq!(counts(&a).await, (2, 2, 2));
    assert!(a.hosts().await.unwrap().contains(&host("gpu box.fra/1=*")));

    // A client that connects later starts from the same state.
    let b = connect(&server.url()).await;
    assert_eq!(b.apps().await.unwrap(), a.apps().await.unwrap());
    assert_eq!(b.machines().await.unwrap(), vec![machine("m-1", 1), machine("m-2", 2)]);
    assert_eq!(b.hosts().await.unwrap(), a.hosts().await.unwrap());

    // Overwrites replace.
    a.put_machine(&machine("m-1", 10)).await.unwrap();
    wait_until(&b, Duration::from_secs(2), "an overwrite at b", Expect::MachineAt("m-1", 10)).await;

    assert!(a.delete_app(&name("chat.v2")).await.unwrap());
    assert!(!a.delete_app(&name("chat.v2")).await.unwrap());
    a.delete_machine("m-2").await.unwrap();
    assert!(a.delete_host("gpu box.fra/1=*").await.unwrap());
    assert!(!a.delete_host("never-there").await.unwrap());
    assert_eq!(counts(&a).await, (1, 1, 1));
    wait_until(&b, Duration::from_secs(2), "deletions at b", Expect::Counts(1, 1, 1)).await;
    assert_eq!(b.app(&name("chat.v2")).await.unwrap(), None);

    // Plain subjects, for load reports.
    let mut reports = b.subscribe("colo.load.>").await.unwrap();
    a.publish("colo.load.fra.m-1", "inflight=3".into()).await.unwrap();
    let got = timeout(Duration::from_secs(2), reports.next())
        .await
        .expect("a load report within 2 s")
        .unwrap();
    assert_eq!(got.subject, "colo.load.fra.m-1");
    assert_eq!(&got.payload[..], b"inflight=3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_another_client_within_milliseconds() {
    let binary = require_server("writes_reach_another_client_within_milliseconds");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&binary, dir.path());
    let a = connect(&server.url()).await;
    let b = connect(&server.url()).await;

    let mut seen = Vec::new();
    for i in 0..200u64 {
        let id = format!("m-{}", i % 20);
        let started = Instant::now();
        a.put_machine(&machine(&id, i)).await.unwrap();
        wait_until(&b, Duration::from_secs(1), "a's write at b", Expect::MachineAt(&id, i)).await;
        seen.push(started.elapsed());
    }
    seen.sort();
    let (p50, p99) = (percentile(&seen, 0.50), percentile(&seen, 0.99));
    println!(
        "nats propagation over 200 writes (put at a until visible at b): p50={:.2} ms p99={:.2} ms max={:.2} ms",
        ms(p50),
        ms(p99),
        ms(seen[seen.len() - 1])
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?} should be well under a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_last_state_while_down_and_resyncs_after_restart() {
    let binary = require_server("serves_last_state_while_down_and_resyncs_after_restart");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&binary, dir.path());
    // a comes back late (it retries every 5 s), so that it misses changes made after the server
    // is back and must resync to see them; b comes back at once (every 500 ms).
    let slow = NatsOptions {
        reconnect_delay: Duration::from_secs(5),
        ..options()
    };
    let a = connect_with(&server.url(), slow).await;
    let b = connect(&server.url()).await;
    for app_name in ["a1", "a2", "a3"] {
        a.put_app(&app(app_name)).await.unwrap();
    }
    for i in 0..5 {
        a.put_machine(&machine(&format!("m-{i}"), i)).await.unwrap();
    }
    a.put_host(&host("h1")).await.unwrap();
    a.put_host(&host("h2")).await.unwrap();
    let before = counts(&a).await;
    assert_eq!(before, (3, 5, 2));
    wait_until(&b, Duration::from_secs(2), "the initial state at b", Expect::Counts(3, 5, 2)).await;
    let machines_before = b.machines().await.unwrap();

    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.connected() || b.connected() {
        assert!(Instant::now() < deadline, "the clients did not notice the dead server within 5 s");
        sleep(Duration::from_millis(10)).await;
    }

    // Fail static: reads answer from the last known state.
    assert_eq!(counts(&a).await, before);
    assert_eq!(b.machines().await.unwrap(), machines_before);
    // Writes fail fast and say that it is NATS.
    for attempt in 0..3 {
        let started = Instant::now();
        let err = a.put_machine(&machine("m-new", 99)).await.unwrap_err();
        let took = started.elapsed();
        println!("a write while NATS is down failed after {:.3} ms: {err}", ms(took));
        assert!(matches!(err, StateError::NatsUnreachable { .. }), "attempt {attempt}: {err:?}");
        assert!(err.to_string().contains("NATS"), "{err}");
        assert!(took < Duration::from_millis(1_500), "the write took {took:?} to fail");
    }
    assert!(a.publish("colo.load.x", "1".into()).await.is_err());
    assert_eq!(counts(&a).await, before, "a failed write must not show in the copy");

    let changes_a = *a.changes().borrow();
    server.restart();
    // Another client, connected after the restart, changes the state while a is still away: one
    // deletion and one addition in each bucket, so the counts stay the same.
    let c = connect(&server.url()).await;
    let changed_at = Instant::now();
    assert!(c.delete_app(&name("a3")).await.unwrap());
    c.put_app(&app("a4")).await.unwrap();
    c.delete_machine("m-0").await.unwrap();
    c.put_machine(&machine("m-5", 5)).await.unwrap();
    assert!(c.delete_host("h2").await.unwrap());
    c.put_host(&host("h3")).await.unwrap();
    assert!(
        !a.connected(),
        "a reconnected before the changes were made; the test needs it still away (its retry is 5 s)"
    );
    assert_eq!(counts(&a).await, before);
    assert!(
        a.machines().await.unwrap().iter().any(|m| m.id == "m-0"),
        "a still serves its last known state"
    );

    for (who, store) in [("a", &a), ("b", &b)] {
        wait_connected(store, who).await;
        // Every bucket resyncs on its own; wait for all three.
        wait_until(
            store,
            Duration::from_secs(10),
            "the changes made after the restart",
            Expect::AfterRestart,
        )
        .await;
        assert!(store.reconnects() >= 1, "{who} should have counted a reconnect");
    }
    println!(
        "a and b converged {:.0} ms after the other client's changes",
        ms(changed_at.elapsed())
    );
    assert!(*a.changes().borrow() > changes_a, "the resync must bump changes()");
    assert_eq!(counts(&a).await, before);
    assert_eq!(counts(&b).await, before);

    // Writes work again and reach the others.
    a.put_machine(&machine("m-6", 6)).await.unwrap();
    wait_until(
        &c,
        Duration::from_secs(2),
        "a's write at c after the restart",
        Expect::MachineAt("m-6", 6),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_machines_reach_another_client() {
    let binary = require_server("ten_thousand_machines_reach_another_client");
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&binary, dir.path());
    let a = Arc::new(connect(&server.url()).await);
    let b = connect(&server.url()).await;

    let started = Instant::now();
    // 64 writes in flight, as many agents writing at once would be.
    let failures = futures::stream::iter(0..N)
        .map(|i| {
            let a = a.clone();
            async move { a.put_machine(&machine(&format!("m-{i:05}"), i as u64)).await }
        })
        .buffer_unordered(64)
        .filter(|w| std::future::ready(w.is_err()))
        .count()
        .await;
    let written = started.elapsed();
    assert_eq!(failures, 0, "every write succeeds");
    wait_until(&b, Duration::from_secs(30), "10,000 machines at b", Expect::Counts(0, N, 0)).await;
    let at_b = started.elapsed();

    let fresh = Instant::now();
    let c = connect(&server.url()).await;
    let snapshot = fresh.elapsed();
    assert_eq!(c.machines().await.unwrap().len(), N);
    println!(
        "nats scale: {N} machine writes from one client in {:.0} ms ({:.0}/s); all at a second client {:.0} ms after the first write; a new client's full copy in {:.0} ms",
        ms(written),
        N as f64 / written.as_secs_f64(),
        ms(at_b),
        ms(snapshot)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_frozen_server_fail_within_the_timeout() {
    let binary = require_server("writes_to_a_frozen_server_fail_within_the_timeout");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&binary, dir.path());
    let a = connect(&server.url()).await;
    a.put_machine(&machine("m-1", 1)).await.unwrap();

    // A hung server keeps its TCP connection: the client still thinks it is connected, so only
    // the write timeout (1 s here) stands between a write and a hang.
    server.freeze(true);
    let started = Instant::now();
    let err = a.put_machine(&machine("m-2", 2)).await.unwrap_err();
    let took = started.elapsed();
    println!("a write to a frozen NATS failed after {:.0} ms: {err}", ms(took));
    assert!(matches!(err, StateError::NatsUnreachable { .. }), "{err:?}");
    assert!(took < Duration::from_millis(2_500), "the write took {took:?} to fail");
    assert_eq!(
        a.machines().await.unwrap(),
        vec![machine("m-1", 1)],
        "reads answer while the server is frozen"
    );

    server.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.put_machine(&machine("m-3", 3)).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes did not work again within 10 s of SIGCONT: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
    wait_until(&a, Duration::from_secs(5), "the write after the thaw", Expect::MachineAt("m-3", 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_no_server_fails_fast_and_names_nats() {
    // No server needed: nothing listens on this port.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = match Nats::connect(&url, options()).await {
        Ok(_) => panic!("connected to {url}, where nothing listens"),
        Err(e) => e,
    };
    println!("connect to nothing failed after {:.1} ms: {err}", ms(started.elapsed()));
    assert!(matches!(err, StateError::NatsUnreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(11), "bounded by connect_timeout");
}
