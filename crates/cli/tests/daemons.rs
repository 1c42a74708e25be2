//! colo past one machine, all real processes on loopback: a nats-server with JetStream, an
//! S3-compatible server (s3s-fs), one `colo control`, two `colo agent`s in two regions and two
//! `colo edge`s. Distance between regions is simulated by the edges (`--inter-region-delay-ms`);
//! no network namespaces are used.
//!
//! One test walks the whole story, because starting the cluster is the slow part: auth of every
//! API, locality, an agent killed and replaced then back again, NATS down for 30 s under
//! traffic, and a rolling deploy under traffic.

mod common;

use common::repo_root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "colo-test";
const SECRET_KEY: &str = "colo-test-secret";
const LEASE_MS: u64 = 2000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn binary(name: &str, cargo_bin: &str) -> PathBuf {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cargo/bin")
        .join(cargo_bin);
    if home.exists() {
        return home;
    }
    name.into()
}

/// Every process of the cluster, killed when the test ends however it ends.
struct Cluster {
    dir: PathBuf,
    nats_port: u16,
    s3_port: u16,
    procs: BTreeMap<String, Child>,
    /// Certificate, key and CA (PEM files) when the daemons speak TLS to each other.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
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
    fn spawn(&mut self, name: &str, mut command: Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        command
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.insert(name.to_string(), child);
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.procs.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    fn start_nats(&mut self) {
        let mut command = Command::new(binary("nats-server", "nats-server"));
        command.args(["-js", "-a", "127.0.0.1", "-p", &self.nats_port.to_string(), "-sd"]);
        command.arg(self.dir.join("nats"));
        self.spawn("nats", command);
        wait_port(self.nats_port, "nats-server");
    }

    fn colo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_colo"));
        command.args(args);
        command
    }

    fn data(&self, name: &str) -> PathBuf {
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

    fn start_agent(&mut self, name: &str, region: &str) {
        let (nats, data, token) = (self.nats_url(), self.data(name), self.data("control").join("api-token"));
        let tls = self.tls_args(true);
        let mut command = self.colo(&[
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
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--cpu-slots",
            "2",
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--health-interval",
            "0.5",
        ]);
        command.args(tls);
        std::fs::create_dir_all(&data).unwrap();
        self.spawn(name, command);
    }

    fn start_edge(&mut self, region: &str) -> String {
        let (nats, data, token) = (
            self.nats_url(),
            self.data(&format!("edge-{region}")),
            self.data("control").join("api-token"),
        );
        std::fs::create_dir_all(&data).unwrap();
        let _ = std::fs::remove_file(data.join("colo.json"));
        let tls = self.tls_args(false);
        let mut command = self.colo(&[
            "edge",
            "--nats",
            &nats,
            "--region",
            region,
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--inter-region-delay-ms",
            "20",
            "--workers",
            "1",
        ]);
        command.args(tls);
        self.spawn(&format!("edge-{region}"), command);
        run_info(&data)["edge"].as_str().unwrap().to_string()
    }

    /// Runs the colo CLI against control; returns stdout, panicking with stderr on failure.
    fn cli(&self, args: &[&str]) -> String {
        let out = self
            .colo(args)
            .arg("--data-dir")
            .arg(self.data("control"))
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(out.status.success(), "colo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn machines(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["ps", "--json"])).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn run_info(data: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(data.join("colo.json")) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "{} never wrote colo.json", data.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request through an edge: (status, region that answered).
fn call(client: &reqwest::blocking::Client, edge: &str) -> (u16, String) {
    match client
        .post(format!("{edge}/v1/embeddings"))
        .body(r#"{"model":"near","input":"x"}"#)
        .send()
    {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("colo-region")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Steady traffic through both edges until stopped; counts answers and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(edges: &[String]) -> Self {
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
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

fn live_of(machines: &[serde_json::Value], app: &str) -> Vec<serde_json::Value> {
    machines
        .iter()
        .filter(|m| m["app"] == app && m["state"] != "destroyed")
        .cloned()
        .collect()
}

fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(secs), "{what} within {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// Starts s3s-fs, nats-server and control (serving TLS when `tls` is given).
fn start_cluster(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> (Cluster, String) {
    let mut cluster = Cluster {
        dir: dir.to_path_buf(),
        nats_port: free_port(),
        s3_port: free_port(),
        procs: BTreeMap::new(),
        tls,
    };
    std::fs::create_dir_all(dir.join("s3/colo")).unwrap();
    let mut s3 = Command::new(binary("s3s-fs", "s3s-fs"));
    s3.args([
        "--host",
        "127.0.0.1",
        "--port",
        &cluster.s3_port.to_string(),
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
    ])
    .arg(dir.join("s3"));
    cluster.spawn("s3s-fs", s3);
    wait_port(cluster.s3_port, "s3s-fs");
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
        "127.0.0.1:0",
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

#[test]
fn control_agents_and_edges_as_daemons_over_nats_and_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, api) = start_cluster(tmp.path(), None);
    let control_dir = cluster.data("control");
    cluster.start_agent("ord-1", "ord");
    cluster.start_agent("ams-1", "ams");
    let ord = cluster.start_edge("ord");
    let ams = cluster.start_edge("ams");
    let token = std::fs::read_to_string(control_dir.join("api-token")).unwrap();

    // Agents register with a heartbeat.
    let http = reqwest::blocking::Client::new();
    wait_for(20, "both agents registered", || {
        let answer = http.get(format!("{api}/v1/hosts")).bearer_auth(token.trim()).send();
        let hosts: Vec<serde_json::Value> = answer.ok().and_then(|r| r.json().ok()).unwrap_or_default();
        hosts.iter().filter(|h| h["lost"] == false).count() == 2
    });

    // The model goes to the S3 store; the app brings its own engine (a small Python server).
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let engine = format!(
        "python3 {} --port {{port}} --delay-ms 100",
        repo_root().join("tests/py/upstream.py").display()
    );
    deploy_near(&cluster, &engine);
    let machines = live_of(&cluster.machines(), "near");
    let hosts: Vec<&str> = machines.iter().map(|m| m["host"].as_str().unwrap()).collect();
    assert_eq!(machines.len(), 2, "{machines:#?}");
    assert!(
        hosts.contains(&"ord-1") && hosts.contains(&"ams-1"),
        "spread over both hosts: {hosts:?}"
    );

    // Locality: each edge sends its callers to its own region's machine.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for (edge, region) in [(&ord, "ord"), (&ams, "ams")] {
        for _ in 0..3 {
            assert_eq!(call(&client, edge), (200, region.to_string()), "through the {region} edge");
        }
    }

    // Engine load reports travel between regions: after ams's machine answered the ams edge,
    // the ord edge holds a relayed report for it (edges publish at most 4 times a second).
    let ams_machine = machines.iter().find(|m| m["host"] == "ams-1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let relayed = wait_for(10, "the ams machine's load relayed to the ord edge", || {
        call(&client, &ams);
        let table: serde_json::Value = http
            .get(format!("{ord}/colo/load"))
            .bearer_auth(token.trim())
            .send()
            .unwrap()
            .json()
            .unwrap();
        table["machines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["machine"] == ams_machine.as_str() && m["report"]["relayed"] == true)
    });
    println!("load report of an ams machine reached the ord edge within {relayed:?}");

    // Auth: every daemon API refuses callers without the cluster token; an app's deploy token
    // reaches its own app only.
    let agent_api = |name: &str| run_agent_addr(&cluster, name);
    for url in [
        format!("{api}/v1/apps"),
        format!("{}/v1/apps/near/machines", agent_api("ord-1")),
        format!("{ord}/metrics"),
    ] {
        assert_eq!(http.get(&url).send().unwrap().status(), 401, "{url} without a token");
        assert_eq!(
            http.get(&url).bearer_auth("wrong").send().unwrap().status(),
            401,
            "{url} with a wrong token"
        );
        assert_eq!(
            http.get(&url).bearer_auth(&token).send().unwrap().status(),
            200,
            "{url} with the cluster token"
        );
    }
    cluster.cli(&[
        "deploy",
        "other",
        "--model",
        "tiny",
        "--machines",
        "1",
        "--engine-cmd",
        &engine,
        "--detach",
    ]);
    let deploy_token = cluster.cli(&["token", "create", "near"]).trim().to_string();
    let near = http.get(format!("{api}/v1/apps/near")).bearer_auth(&deploy_token).send().unwrap();
    assert_eq!(near.status(), 200, "a deploy token reads its own app");
    let other = http.get(format!("{api}/v1/apps/other")).bearer_auth(&deploy_token).send().unwrap();
    assert_eq!(other.status(), 404, "another app is not found with near's deploy token");
    let destroy_other = http
        .delete(format!("{api}/v1/apps/other"))
        .bearer_auth(&deploy_token)
        .send()
        .unwrap();
    assert_eq!(destroy_other.status(), 404);
    let deploy_other = http
        .post(format!("{api}/v1/apps"))
        .bearer_auth(&deploy_token)
        .json(&serde_json::json!({"name": "other", "model": "tiny"}))
        .send()
        .unwrap();
    assert_eq!(deploy_other.status(), 404, "near's deploy token cannot deploy other");
    assert_eq!(
        http.get(format!("{api}/v1/machines"))
            .bearer_auth(&deploy_token)
            .send()
            .unwrap()
            .status(),
        403
    );
    let agent_with_deploy_token = http
        .get(format!("{}/v1/apps/near/machines", agent_api("ord-1")))
        .bearer_auth(&deploy_token)
        .send()
        .unwrap();
    assert_eq!(agent_with_deploy_token.status(), 401, "agents take the cluster token only");
    cluster.cli(&["destroy", "other"]);

    // Kill -9 the ord agent (its engines die with it): within the lease its machine leaves
    // both edges' tables, ord's callers go to ams, and control replaces the machine on ams.
    cluster.kill("ord-1");
    let killed = Instant::now();
    let mut served_by_ams = 0;
    let gone = wait_for(20, "ord's callers served from ams", || {
        let (status, region) = call(&client, &ord);
        served_by_ams = if status == 200 && region == "ams" { served_by_ams + 1 } else { 0 };
        served_by_ams >= 3
    });
    println!("agent killed: its machine left the ord edge's table after {gone:?} (lease {LEASE_MS} ms)");
    wait_for(60, "a replacement machine on ams-1", || {
        let machines = cluster.machines();
        live_of(&machines, "near")
            .iter()
            .filter(|m| m["host"] == "ams-1" && m["state"] == "started")
            .count()
            == 2
    });
    println!("replacement started {:?} after the kill", killed.elapsed());

    // The agent comes back: its old machine is reconciled away, not kept as a third.
    cluster.start_agent("ord-1", "ord");
    wait_for(60, "two machines of near again, none duplicated", || {
        let machines = cluster.machines();
        let live = live_of(&machines, "near");
        live.len() == 2 && live.iter().all(|m| m["state"] == "started")
    });

    // NATS down for 30 s under steady traffic: the edges answer from their last table.
    let count = |cluster: &Cluster| {
        let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
        let machines = live_of(&cluster.machines(), "near");
        let versions: Vec<u64> = apps.iter().map(|a| a["app"]["version"].as_u64().unwrap_or(0)).collect();
        (apps.len(), machines.len(), versions)
    };
    let before = count(&cluster);
    let traffic = Traffic::start(&[ord.clone(), ams.clone()]);
    std::thread::sleep(Duration::from_secs(1));
    cluster.kill("nats");
    std::thread::sleep(Duration::from_secs(30));
    cluster.start_nats();
    std::thread::sleep(Duration::from_secs(2 * LEASE_MS / 1000 + 3));
    let (answered, failed) = traffic.finish();
    println!("NATS down 30 s: {answered} requests answered, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "requests failed while NATS was down: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(answered > 100, "too little traffic to show anything: {answered}");
    let after = wait_for(30, "state converged after NATS came back", || count(&cluster) == before);
    println!("state converged {after:?} after NATS returned: {before:?}");

    // A new model revision rolls machine by machine under traffic: nothing fails.
    push_tiny(&cluster, &tmp.path().join("tiny2"), 7);
    let traffic = Traffic::start(&[ord.clone(), ams.clone()]);
    let rolled = Instant::now();
    deploy_near(&cluster, &engine);
    std::thread::sleep(Duration::from_secs(3));
    let (answered, failed) = traffic.finish();
    println!(
        "rolling deploy in {:?}: {answered} requests answered, {} failed",
        rolled.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the rollout: {:?}",
        &failed[..failed.len().min(5)]
    );
    let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
    let near = apps.iter().find(|a| a["app"]["name"] == "near").expect("near in colo apps");
    assert_eq!(near["app"]["version"], 2, "the second deploy of near: {near}");
    let revision = near["app"]["revision"].clone();
    let live = live_of(&cluster.machines(), "near");
    assert_eq!(live.len(), 2);
    assert!(
        live.iter().all(|m| m["revision"] == revision),
        "every machine on the new revision: {live:#?}"
    );

    // A rollout whose new machine cannot start stops with an error; the app keeps its version,
    // revision and machines, and keeps answering.
    push_tiny(&cluster, &tmp.path().join("tiny3"), 9);
    let broken = cluster
        .colo(&[
            "deploy",
            "near",
            "--model",
            "tiny",
            "--machines",
            "2",
            "--engine-cmd",
            "false {port}",
            "--timeout",
            "120",
        ])
        .arg("--data-dir")
        .arg(cluster.data("control"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        !broken.status.success() && stderr.contains("rollout"),
        "a broken rollout must fail: {stderr}"
    );
    let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
    let near = apps.iter().find(|a| a["app"]["name"] == "near").unwrap();
    assert_eq!(near["app"]["version"], 2, "the failed rollout left the version: {near}");
    assert_eq!(near["app"]["revision"], revision, "and the revision");
    // The failed machine is destroyed by its agent a moment after the rollout gives up.
    wait_for(30, "only the two old-revision machines left", || {
        let live = live_of(&cluster.machines(), "near");
        live.len() == 2 && live.iter().all(|m| m["revision"] == revision && m["state"] == "started")
    });
    for edge in [&ord, &ams] {
        assert_eq!(call(&client, edge).0, 200, "still answering after the failed rollout");
    }

    // Rotating the cluster token: the old one is refused at once, the new one works, and the
    // daemons that read the file keep calling each other.
    let old_token = token.trim().to_string();
    cluster.cli(&["token", "rotate"]);
    let new_token = std::fs::read_to_string(control_dir.join("api-token")).unwrap();
    assert_ne!(old_token, new_token.trim());
    assert_eq!(
        http.get(format!("{api}/v1/apps")).bearer_auth(&old_token).send().unwrap().status(),
        401
    );
    assert_eq!(
        http.get(format!("{api}/v1/apps"))
            .bearer_auth(new_token.trim())
            .send()
            .unwrap()
            .status(),
        200
    );
    cluster.cli(&["destroy", "near"]);
    wait_for(30, "near's machines destroyed through the agents", || {
        live_of(&cluster.machines(), "near").is_empty()
    });
}

/// The API address an agent registered (from its log line).
fn run_agent_addr(cluster: &Cluster, name: &str) -> String {
    let log = cluster.log(name);
    log.lines()
        .find_map(|l| l.trim().strip_prefix("api    "))
        .unwrap_or_else(|| panic!("no address in {name}'s log: {log}"))
        .trim()
        .to_string()
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with the openssl CLI.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca = "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=colo-test-ca";
    run(&ca.split(' ').collect::<Vec<_>>());
    run(&"req -newkey rsa:2048 -nodes -keyout host.key -out host.csr -subj /CN=127.0.0.1"
        .split(' ')
        .collect::<Vec<_>>());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign = "x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out host.pem -days 2 -extfile ext.cnf";
    run(&sign.split(' ').collect::<Vec<_>>());
    (dir.join("host.pem"), dir.join("host.key"), dir.join("ca.pem"))
}

#[test]
fn daemons_speak_tls_to_each_other_when_given_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certificates(tmp.path());
    let (mut cluster, api) = start_cluster(tmp.path(), Some(certs.clone()));
    assert!(api.starts_with("https://"), "control serves HTTPS: {api}");
    cluster.start_agent("ord-1", "ord");
    let edge = cluster.start_edge("ord");
    wait_for(20, "the agent up", || cluster.log("ord-1").contains("is up"));
    let agent = run_agent_addr(&cluster, "ord-1");
    assert!(agent.starts_with("https://"), "the agent serves HTTPS: {agent}");

    // Deploy through control (the CLI trusts the CA named in control's colo.json), which
    // creates the machine on the agent over HTTPS; the edge wakes and reaches it.
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let engine = format!("python3 {} --port {{port}}", repo_root().join("tests/py/upstream.py").display());
    cluster.cli(&["deploy", "near", "--model", "tiny", "--engine-cmd", &engine, "--timeout", "120"]);
    let client = reqwest::blocking::Client::new();
    assert_eq!(call(&client, &edge), (200, "ord".to_string()));

    // Plain HTTP is refused, and HTTPS without trusting the CA fails the handshake.
    let token = std::fs::read_to_string(cluster.data("control").join("api-token")).unwrap();
    for url in [&api, &agent] {
        let plain = url.replacen("https://", "http://", 1);
        let answer = client.get(format!("{plain}/v1/apps")).bearer_auth(token.trim()).send();
        assert!(
            answer.is_err() || !answer.unwrap().status().is_success(),
            "{plain} answered plain HTTP"
        );
        let untrusted = client.get(format!("{url}/v1/apps")).bearer_auth(token.trim()).send();
        assert!(untrusted.is_err(), "{url} was trusted without the CA");
    }
    let pem = std::fs::read(&certs.2).unwrap();
    let trusting = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let apps = trusting.get(format!("{api}/v1/apps")).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(apps.status(), 200);
}

/// Deploys app `near` (two machines of model `tiny` with `engine`) and waits for it.
fn deploy_near(cluster: &Cluster, engine: &str) {
    cluster.cli(&[
        "deploy",
        "near",
        "--model",
        "tiny",
        "--machines",
        "2",
        "--engine-cmd",
        engine,
        "--timeout",
        "120",
    ]);
}

/// Synthesizes a tiny model (`seed` picks its weights, so its revision) in `dir` and pushes it
/// to the S3 store as `tiny`.
fn push_tiny(cluster: &Cluster, dir: &Path, seed: u32) {
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
