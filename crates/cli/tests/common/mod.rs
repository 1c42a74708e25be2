//! Helpers for end-to-end tests: a real `colo up` process on loopback ports, the real CLI,
//! the demo model and its golden vectors.

#![allow(dead_code)]

pub mod cluster;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The demo model's directory: `COLO_MINILM_DIR`, or fetched by `scripts/fetch-minilm`.
pub fn minilm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("COLO_MINILM_DIR") {
        return dir.into();
    }
    let out = Command::new(repo_root().join("scripts/fetch-minilm"))
        .output()
        .expect("running scripts/fetch-minilm");
    assert!(
        out.status.success(),
        "scripts/fetch-minilm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().last().expect("a directory").into()
}

pub struct Golden {
    pub input: String,
    pub n_tokens: u64,
    pub embedding: Vec<f32>,
}

pub fn golden() -> Vec<Golden> {
    let text = std::fs::read_to_string(repo_root().join("testdata/golden/minilm.jsonl")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Golden {
                input: v["input"].as_str().unwrap().to_string(),
                n_tokens: v["n_tokens"].as_u64().unwrap(),
                embedding: floats(&v["embedding"]),
            }
        })
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A running `colo up`, stopped with SIGTERM when dropped.
/// The stand-in engine (crates/standin, `colo-standin`), built beside the `colo` binary by the
/// workspace build that runs the tests.
pub fn standin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_colo")).with_file_name("colo-standin");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release -p colo-standin` (scripts/test builds the workspace)",
        path.display()
    );
    path
}

pub struct Colo {
    pub data_dir: PathBuf,
    pub edge: String,
    /// Every edge by region (one, `local`, without a fleet file).
    pub edges: std::collections::BTreeMap<String, String>,
    child: Child,
}

impl Colo {
    pub fn up(data_dir: &Path) -> Self {
        Self::up_with(data_dir, &[])
    }

    /// `colo up` with more flags (`--fleet`, limits, intervals).
    pub fn up_with(data_dir: &Path, extra: &[&str]) -> Self {
        let _ = std::fs::remove_file(data_dir.join("colo.json"));
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("up.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_colo"))
            .args(["up", "--edge-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting colo up");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (edge, edges) = loop {
            if let Ok(bytes) = std::fs::read(data_dir.join("colo.json")) {
                let info: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let edges = serde_json::from_value(info["edges"].clone()).unwrap();
                break (info["edge"].as_str().unwrap().to_string(), edges);
            }
            assert!(
                Instant::now() < deadline,
                "colo up did not start: {}",
                std::fs::read_to_string(data_dir.join("up.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let colo = Self {
            data_dir: data_dir.to_path_buf(),
            edge,
            edges,
            child,
        };
        // An edge serving TLS is checked by its test, which knows the CA.
        if colo.edge.starts_with("http://") {
            let health = reqwest::blocking::get(format!("{}/health", colo.edge)).expect("edge health");
            assert_eq!(health.status(), 200);
        }
        colo
    }

    /// Runs a colo subcommand against this instance's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_colo"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            // Tables are whole into a pipe; a COLUMNS from the caller's shell would cut them.
            .env_remove("COLUMNS")
            .output()
            .expect("running colo")
    }

    /// Runs a colo subcommand that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "colo {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Pushes the demo model and deploys it as app `minilm`.
    pub fn deploy_minilm(&self) {
        let dir = minilm_dir();
        self.ok(&["model", "push", dir.to_str().unwrap(), "--name", "minilm"]);
        self.ok(&["deploy", "minilm", "--model", "minilm"]);
    }

    /// The API token of this colo: its edges' /metrics and /colo/* want it.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-token")).unwrap().trim().to_string()
    }

    pub fn machines(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the colo process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// Pushes a tiny synthesized model as `name` (for apps that bring their own engine).
    pub fn push_tiny(&self, name: &str) {
        let dir = self.data_dir.join(format!("synth-{name}"));
        self.ok(&["model", "synth", dir.to_str().unwrap()]);
        self.ok(&["model", "push", dir.to_str().unwrap(), "--name", name]);
    }

    /// `colo deploy APP --model MODEL --engine ENGINE` run by the stand-in engine with
    /// `--engine-args ARGS`, and `more` flags after.
    pub fn deploy_standin(&self, app: &str, model: &str, engine: &str, args: &str, more: &[&str]) -> String {
        let standin = standin();
        let mut argv = vec![
            "deploy",
            app,
            "--model",
            model,
            "--engine",
            engine,
            "--engine-bin",
            standin.to_str().unwrap(),
            "--engine-args",
            args,
        ];
        argv.extend_from_slice(more);
        self.ok(&argv)
    }

    /// Waits until `check` holds for the machines of `colo ps --json`; panics after `secs`.
    pub fn wait_machines(&self, secs: u64, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let machines = self.machines();
            if check(&machines) {
                return machines;
            }
            assert!(Instant::now() < deadline, "{what} within {secs}s; machines: {machines:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops colo with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("colo up did not exit within 20s of SIGTERM");
    }
}

impl Drop for Colo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
