//! A colo cluster of real processes for the daemon tests: s3s-fs, nats-server with JetStream,
//! `colo control`, and `colo agent`s and `colo edge`s, each either on loopback or inside a
//! network namespace (`Place`). Every process is killed when the `Cluster` drops.

use super::repo_root;
use colo_fault::{nats_server, s3s_fs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "colo-test";
pub const SECRET_KEY: &str = "colo-test-secret";
pub const LEASE_MS: u64 = 2000;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(ip: &str, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {ip}:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn binary(name: &str, cargo_bin: &str) -> PathBuf {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cargo/bin")
        .join(cargo_bin);
    if home.exists() {
        return home;
    }
    name.into()
}

/// Where an agent or edge runs: in this network namespace or in a named one, listening on `ip`.
#[derive(Clone, Debug)]
pub struct Place {
    pub netns: Option<String>,
    pub ip: String,
}

impl Place {
    pub fn loopback() -> Place {
        Place {
            netns: None,
            ip: "127.0.0.1".into(),
        }
    }

    /// The `colo` binary, run inside this place's namespace when it has one.
    fn colo(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_colo"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_colo")),
        }
    }
}

/// Every process of the cluster, killed when the test ends however it ends.
pub struct Cluster {
    pub dir: PathBuf,
    /// Where nats-server, s3s-fs and control listen (loopback, or the bridge that joins the
    /// regions' namespaces).
    pub host_ip: String,
    nats_port: u16,
    s3_port: u16,
    procs: BTreeMap<String, Child>,
    /// Certificate, key and CA (PEM files) when the daemons speak TLS to each other.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The NATS URL agents and edges started from now on are given, when not nats-server's
    /// own (a fault proxy in front of it).
    pub daemon_nats: Option<String>,
    /// More flags for edges started from now on.
    pub edge_flags: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    pub fn spawn(&mut self, name: &str, mut command: Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        command
            .env("AWS_ENDPOINT_URL", self.s3_url())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.insert(name.to_string(), child);
    }

    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.procs.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn nats_url(&self) -> String {
        format!("nats://{}:{}", self.host_ip, self.nats_port)
    }

    /// The NATS URL agents and edges get.
    fn daemons_nats(&self) -> String {
        self.daemon_nats.clone().unwrap_or_else(|| self.nats_url())
    }

    /// The port nats-server listens on.
    pub fn nats_port(&self) -> u16 {
        self.nats_port
    }

    fn s3_url(&self) -> String {
        format!("http://{}:{}", self.host_ip, self.s3_port)
    }

    /// Starts nats-server: on a port it picks itself the first time (no other test can take it
    /// in between), on the same port after a kill; returns once this process listens.
    pub fn start_nats(&mut self) {
        let ports_dir = self.dir.join("nats-ports");
        let mut command = Command::new(binary("nats-server", "nats-server"));
        command.args(["-js", "-a", &self.host_ip, "-sd"]).arg(self.dir.join("nats"));
        nats_server::with_port_args(&mut command, (self.nats_port != 0).then_some(self.nats_port), &ports_dir);
        self.spawn("nats", command);
        let child = self.procs.get_mut("nats").expect("just spawned");
        let port = nats_server::client_port(child, &ports_dir, Duration::from_secs(20));
        assert!(
            self.nats_port == 0 || self.nats_port == port,
            "nats-server restarted on {port}, not {}",
            self.nats_port
        );
        self.nats_port = port;
    }

    pub fn colo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_colo"));
        command.args(args);
        command
    }

    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--tls-cert/--tls-key/--tls-ca` for a daemon that serves TLS, `--tls-ca` for one that
    /// only calls others, when the cluster speaks TLS.
    fn tls_args(&self, serve: bool) -> Vec<String> {
        match &self.tls {
            Some((cert, key, ca)) if serve => vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--tls-ca".into(),
                ca.display().to_string(),
            ],
            Some((_, _, ca)) => vec!["--tls-ca".into(), ca.display().to_string()],
            None => Vec::new(),
        }
    }

    /// An agent on loopback with two CPU slots.
    pub fn start_agent(&mut self, name: &str, region: &str) {
        self.start_agent_at(name, region, &Place::loopback(), &["--cpu-slots", "2"]);
    }

    /// An agent at `place` (its API and its engines on `place.ip`), with `extra` flags.
    pub fn start_agent_at(&mut self, name: &str, region: &str, place: &Place, extra: &[&str]) {
        let (nats, data, token) = (self.daemons_nats(), self.data(name), self.data("control").join("api-token"));
        let tls = self.tls_args(true);
        let mut command = place.colo();
        command.args([
            "agent",
            "--nats",
            &nats,
            "--store",
            "s3://colo/models",
            "--region",
            region,
            "--name",
            name,
            "--addr",
            &format!("{}:0", place.ip),
            "--engine-host",
            &place.ip,
            "--token-file",
            token.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--health-interval",
            "0.5",
        ]);
        command.args(extra).args(tls);
        std::fs::create_dir_all(&data).unwrap();
        self.spawn(name, command);
    }

    /// An edge on loopback that adds 20 ms to requests to other regions.
    pub fn start_edge(&mut self, region: &str) -> String {
        self.start_edge_at(region, &Place::loopback(), 20)
    }

    /// An edge at `place` adding `inter_region_delay_ms` to requests to other regions; returns
    /// its URL.
    pub fn start_edge_at(&mut self, region: &str, place: &Place, inter_region_delay_ms: u64) -> String {
        let (nats, data, token) = (
            self.daemons_nats(),
            self.data(&format!("edge-{region}")),
            self.data("control").join("api-token"),
        );
        std::fs::create_dir_all(&data).unwrap();
        let _ = std::fs::remove_file(data.join("colo.json"));
        let tls = self.tls_args(false);
        let mut command = place.colo();
        command.args([
            "edge",
            "--nats",
            &nats,
            "--region",
            region,
            "--addr",
            &format!("{}:0", place.ip),
            "--token-file",
            token.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--inter-region-delay-ms",
            &inter_region_delay_ms.to_string(),
            "--workers",
            "1",
        ]);
        command.args(tls).args(&self.edge_flags);
        self.spawn(&format!("edge-{region}"), command);
        run_info(&data)["edge"].as_str().unwrap().to_string()
    }

    /// Runs the colo CLI against control.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        self.colo(args)
            .arg("--data-dir")
            .arg(self.data("control"))
            .env("AWS_ENDPOINT_URL", self.s3_url())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    }

    /// Runs the colo CLI against control; returns stdout, panicking with stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(out.status.success(), "colo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn machines(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["ps", "--json"])).unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until control lists `n` hosts that are not lost.
    pub fn wait_hosts(&self, api: &str, n: usize) {
        let token = std::fs::read_to_string(self.data("control").join("api-token")).unwrap();
        let http = reqwest::blocking::Client::new();
        wait_for(20, &format!("{n} agents registered"), || {
            let answer = http.get(format!("{api}/v1/hosts")).bearer_auth(token.trim()).send();
            let hosts: Vec<serde_json::Value> = answer.ok().and_then(|r| r.json().ok()).unwrap_or_default();
            hosts.iter().filter(|h| h["lost"] == false).count() == n
        });
    }
}

pub fn run_info(data: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(data.join("colo.json")) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "{} never wrote colo.json", data.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request for app `near` through an edge: (status, region that answered, machine).
pub fn answer(client: &reqwest::blocking::Client, edge: &str) -> (u16, String, String) {
    match client
        .post(format!("{edge}/v1/embeddings"))
        .body(r#"{"model":"near","input":"x"}"#)
        .send()
    {
        Ok(r) => {
            let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            (r.status().as_u16(), header("colo-region"), header("colo-machine"))
        }
        Err(e) => (0, e.to_string(), String::new()),
    }
}

/// One request through an edge: (status, region that answered).
pub fn call(client: &reqwest::blocking::Client, edge: &str) -> (u16, String) {
    let (status, region, _) = answer(client, edge);
    (status, region)
}

/// Steady traffic through both edges until stopped; counts answers and failures.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(edges: &[String]) -> Self {
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::default());
        let threads = edges
            .iter()
            .cloned()
            .map(|edge| {
                let (stop, ok, failed): (_, _, Arc<std::sync::Mutex<Vec<String>>>) = (stop.clone(), ok.clone(), Arc::clone(&failed));
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match call(&client, &edge) {
                            (200, _) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            (status, detail) => failed.lock().unwrap().push(format!("{edge}: {status} {detail}")),
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, threads }
    }

    /// Stops the traffic; returns (answered, failures).
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

pub fn live_of(machines: &[serde_json::Value], app: &str) -> Vec<serde_json::Value> {
    machines
        .iter()
        .filter(|m| m["app"] == app && m["state"] != "destroyed")
        .cloned()
        .collect()
}

pub fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(secs), "{what} within {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// Starts s3s-fs, nats-server and control on loopback (serving TLS when `tls` is given).
pub fn start_cluster(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> (Cluster, String) {
    start_cluster_at(dir, tls, "127.0.0.1")
}

/// Starts s3s-fs, nats-server and control listening on `host_ip`; returns control's API URL.
pub fn start_cluster_at(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>, host_ip: &str) -> (Cluster, String) {
    let mut cluster = Cluster {
        dir: dir.to_path_buf(),
        host_ip: host_ip.to_string(),
        nats_port: 0,
        s3_port: 0,
        procs: BTreeMap::new(),
        tls,
        daemon_nats: None,
        edge_flags: Vec::new(),
    };
    std::fs::create_dir_all(dir.join("s3/colo")).unwrap();
    let mut s3 = Command::new(binary("s3s-fs", "s3s-fs"));
    s3.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(dir.join("s3"));
    s3s_fs::with_port_args(&mut s3, host_ip);
    cluster.spawn("s3s-fs", s3);
    let child = cluster.procs.get_mut("s3s-fs").expect("just spawned");
    cluster.s3_port = s3s_fs::bound_port(child, &dir.join("s3s-fs.log"), Duration::from_secs(20));
    cluster.start_nats();

    let nats = cluster.nats_url();
    let control_dir = cluster.data("control");
    std::fs::create_dir_all(&control_dir).unwrap();
    let mut control = cluster.colo(&[
        "control",
        "--nats",
        &nats,
        "--store",
        "s3://colo/models",
        "--api-addr",
        &format!("{host_ip}:0"),
        "--data-dir",
        control_dir.to_str().unwrap(),
        "--reconcile-every",
        "2",
    ]);
    control.args(cluster.tls_args(true));
    cluster.spawn("control", control);
    let api = run_info(&control_dir)["api"].as_str().unwrap().to_string();
    (cluster, api)
}

/// The API address an agent registered (from its log line).
pub fn run_agent_addr(cluster: &Cluster, name: &str) -> String {
    let log = cluster.log(name);
    log.lines()
        .find_map(|l| l.trim().strip_prefix("api    "))
        .unwrap_or_else(|| panic!("no address in {name}'s log: {log}"))
        .trim()
        .to_string()
}

/// Synthesizes a tiny model (`seed` picks its weights, so its revision) in `dir` and pushes it
/// to the S3 store as `tiny`.
pub fn push_tiny(cluster: &Cluster, dir: &Path, seed: u32) {
    cluster.cli(&["model", "synth", dir.to_str().unwrap(), "--seed", &seed.to_string()]);
    cluster.cli(&[
        "model",
        "push",
        dir.to_str().unwrap(),
        "--name",
        "tiny",
        "--store",
        "s3://colo/models",
    ]);
}

/// The bring-your-own engine of the daemon tests (tests/py/upstream.py) as an `--engine-cmd`,
/// listening where the agent says (`{host}`).
pub fn upstream_engine(extra: &str) -> String {
    format!(
        "python3 {} --host {{host}} --port {{port}} {extra}",
        repo_root().join("tests/py/upstream.py").display()
    )
}
