//! What each process takes: plain data (serde, unknown keys refused) with a `validate()` that
//! returns every problem at once, each naming its field. The checks more than one process needs
//! (per-machine limits, health interval, cache size, the edge's settings) are written once here.

use crate::error::Problems;
use crate::tls::TlsFiles;
use colo_edge::{AdminCheck, EdgeConfig};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Health checks may not come faster or slower than this, in seconds: faster would keep an
/// engine busy answering them, slower would leave a hung engine in the route table too long.
const HEALTH_INTERVAL_SECS: std::ops::RangeInclusive<f64> = 0.05..=60.0;
/// A host's lease shorter than this would expire between two heartbeats on a loaded machine.
const MIN_LEASE_MS: u64 = 300;

/// Settings of an edge that `colo up` and `colo edge` share; [`EdgeSettings::edge_config`] is
/// the one place an `EdgeConfig` is built from them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    /// Apps are also reachable as `<app>.<domain>` through the Host header.
    pub domain: String,
    /// Requests in flight per machine above which the edge prefers other machines.
    pub soft_limit: u32,
    /// Requests in flight per machine at which the edge sends it no more.
    pub hard_limit: u32,
    /// Seconds a request may wait for its app's machine to start.
    pub hold_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Requests held per app while machines start; more get 503 with Retry-After.
    pub max_held: u32,
    /// A held streaming request gets an SSE comment after this many ms, and again every as
    /// many, until its machine answers (0: never).
    pub sse_keepalive_ms: u64,
    /// On a drain, seconds the requests in flight get to finish.
    pub drain_timeout_secs: u64,
    /// Threads serving the edge, each with its own runtime and socket (0: one per core).
    pub workers: usize,
}

/// The engine program each machine runs, and the arguments before the per-machine flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineProgram {
    /// The executable: the `colo` binary for colo's own engine.
    pub program: PathBuf,
    /// Its arguments before `--model-dir`, `--port` and the rest.
    pub args: Vec<String>,
}

/// `colo up`: control, the agents and the edges in one process over the embedded state store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    /// Data directory (created if missing): state, host cache, local store, logs, run file.
    pub data_dir: PathBuf,
    /// Address of the edge (of a fleet's first edge), where OpenAI clients connect.
    pub edge_addr: SocketAddr,
    /// Address of the control and agent REST API (port 0 picks a free one).
    pub api_addr: SocketAddr,
    /// Model store: a directory, or `s3://bucket/prefix`; none: `<data dir>/store`.
    pub store: Option<String>,
    /// Region code of this host, without a fleet.
    pub region: String,
    /// CPU slots offered when the host has no NVIDIA GPU, without a fleet.
    pub cpu_slots: u32,
    /// Several hosts and regions on this one machine: its hosts, edges and inter-region delay.
    pub fleet: Option<colo_policy::Fleet>,
    /// Settings of every edge.
    pub edge: EdgeSettings,
    /// Seconds between health checks of each started engine.
    pub health_interval_secs: f64,
    /// Serve the (first) host's model cache as a read-only S3 endpoint here.
    pub s3_addr: Option<SocketAddr>,
    /// GB (10^9 bytes) each host's model cache may hold; none: unlimited.
    pub cache_gb: Option<f64>,
    /// What each machine runs.
    pub engine: EngineProgram,
}

/// `colo control`: apps, deploys and reconciliation over NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// NATS server with JetStream (`nats://127.0.0.1:4222`).
    pub nats: String,
    /// Control's own files: the cluster token and the run file (created if missing).
    pub data_dir: PathBuf,
    /// Model store: `s3://bucket/prefix` or a directory every host can read.
    pub store: String,
    /// Address of control's API.
    pub api_addr: SocketAddr,
    /// Seconds between reconciliations when nothing changes.
    pub reconcile_every_secs: u64,
    /// Certificate and key of the API, CA of the agents.
    pub tls: TlsFiles,
}

/// `colo agent`: one host's devices, machines and cache over NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentDaemonConfig {
    /// NATS server with JetStream.
    pub nats: String,
    /// The agent's own files: machine logs and the host cache (created if missing).
    pub data_dir: PathBuf,
    /// Model store: `s3://bucket/prefix` or a directory this host can read.
    pub store: String,
    /// Region code of this host.
    pub region: String,
    /// Host name, unique in the fleet; none: the system's host name.
    pub name: Option<String>,
    /// Address of this agent's API (machines, cache, peers).
    pub addr: SocketAddr,
    /// The cluster token's file (control's `api-token`).
    pub token_file: PathBuf,
    /// CPU slots offered when the host has no NVIDIA GPU.
    pub cpu_slots: u32,
    /// Milliseconds the host's record stays valid without a heartbeat.
    pub lease_ms: u64,
    /// Seconds between health checks of each started engine.
    pub health_interval_secs: f64,
    /// Address the host's engines listen on and edges reach them at.
    pub engine_host: IpAddr,
    /// GPUs to offer instead of discovering them: (catalogue kind, count).
    pub gpus: Vec<(String, u32)>,
    /// GB the host cache may hold; none: unlimited.
    pub cache_gb: Option<f64>,
    /// Serve the host cache as a read-only S3 endpoint here.
    pub s3_addr: Option<SocketAddr>,
    /// Certificate and key of the API, CA of the peers.
    pub tls: TlsFiles,
    /// What each machine runs.
    pub engine: EngineProgram,
}

/// `colo edge`: one region's edge over NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeDaemonConfig {
    /// NATS server with JetStream.
    pub nats: String,
    /// The edge's own files: its run file (created if missing).
    pub data_dir: PathBuf,
    /// Region code this edge serves.
    pub region: String,
    /// Address where clients connect.
    pub addr: SocketAddr,
    /// The cluster token's file: the edge wakes and stops machines with it and asks it of
    /// callers of its admin endpoints.
    pub token_file: PathBuf,
    /// The edge's settings.
    pub edge: EdgeSettings,
    /// Milliseconds added to requests sent to other regions (distance simulated on one machine).
    pub inter_region_delay_ms: u64,
    /// CA that signed the agents' certificates, when they serve TLS.
    pub tls_ca: Option<PathBuf>,
}

// === impl EdgeSettings ===

impl EdgeSettings {
    /// Adds every problem of these settings to `problems`.
    fn check(&self, problems: &mut Problems) {
        for reason in self.route().validate() {
            problems.add("edge.limits", reason);
        }
        if self.domain.is_empty() {
            problems.add("edge.domain", "must not be empty");
        }
    }

    /// Every problem with these settings.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        problems.into_result()
    }

    fn route(&self) -> colo_policy::RouteParams {
        colo_policy::RouteParams {
            soft_limit: self.soft_limit,
            hard_limit: self.hard_limit,
            ..Default::default()
        }
    }

    /// The config of an edge of `region` with these settings.
    pub fn edge_config(&self, region: &str, inter_region_delay: Duration, admin_token: Option<AdminCheck>) -> EdgeConfig {
        EdgeConfig {
            domain: self.domain.clone(),
            max_body: self.max_body,
            region: region.to_string(),
            route: self.route(),
            hold_timeout: Duration::from_secs(self.hold_timeout_secs),
            max_held: self.max_held,
            sse_keepalive: Duration::from_millis(self.sse_keepalive_ms),
            inter_region_delay,
            admin_token,
            ..EdgeConfig::default()
        }
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            domain: "localhost".into(),
            soft_limit: 32,
            hard_limit: 64,
            hold_timeout_secs: 120,
            max_body: 10 * 1024 * 1024,
            max_held: 4096,
            sse_keepalive_ms: 5000,
            drain_timeout_secs: 30,
            workers: 0,
        }
    }
}

// === impl EngineProgram ===

impl EngineProgram {
    /// The program of this very process, as `<it> engine serve`: the `colo` binary running
    /// colo's own engine.
    pub fn this_executable() -> std::io::Result<Self> {
        Ok(EngineProgram {
            program: std::env::current_exe()?,
            ..EngineProgram::default()
        })
    }

    pub(crate) fn command(&self) -> colo_agent::EngineCommand {
        colo_agent::EngineCommand {
            program: self.program.clone(),
            args: self.args.clone(),
        }
    }
}

impl Default for EngineProgram {
    fn default() -> Self {
        EngineProgram {
            program: "colo".into(),
            args: vec!["engine".into(), "serve".into()],
        }
    }
}

// === impl UpConfig ===

impl UpConfig {
    /// Every problem with this config.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        self.edge.check(&mut problems);
        check_health_interval(self.health_interval_secs, &mut problems);
        check_cache_gb(self.cache_gb, &mut problems);
        check_engine(&self.engine, &mut problems);
        required("region", &self.region, &mut problems);
        if let Some(fleet) = &self.fleet {
            for reason in fleet.validate_hosts(&colo_core::Catalogue::builtin(), &colo_core::Regions::builtin()) {
                problems.add("fleet", reason);
            }
        }
        problems.into_result()
    }

    /// The cache capacity in bytes.
    pub(crate) fn cache_bytes(&self) -> Option<u64> {
        gb_to_bytes(self.cache_gb)
    }
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            data_dir: ".colo".into(),
            edge_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080),
            api_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            store: None,
            region: "local".into(),
            cpu_slots: 4,
            fleet: None,
            edge: EdgeSettings::default(),
            health_interval_secs: 2.0,
            s3_addr: None,
            cache_gb: None,
            engine: EngineProgram::default(),
        }
    }
}

// === impl ControlConfig ===

impl ControlConfig {
    /// Every problem with this config.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        required("nats", &self.nats, &mut problems);
        required("store", &self.store, &mut problems);
        self.tls.check(&mut problems);
        problems.into_result()
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            nats: String::new(),
            data_dir: ".colo".into(),
            store: String::new(),
            api_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 7000),
            reconcile_every_secs: 10,
            tls: TlsFiles::default(),
        }
    }
}

// === impl AgentDaemonConfig ===

impl AgentDaemonConfig {
    /// Every problem with this config.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        required("nats", &self.nats, &mut problems);
        required("store", &self.store, &mut problems);
        required("region", &self.region, &mut problems);
        if self.name.as_deref().is_some_and(str::is_empty) {
            problems.add("name", "must not be empty when given");
        }
        if self.token_file.as_os_str().is_empty() {
            problems.add("token_file", "must not be empty");
        }
        if self.lease_ms < MIN_LEASE_MS {
            problems.add("lease_ms", format!("must be at least {MIN_LEASE_MS} (got {})", self.lease_ms));
        }
        check_health_interval(self.health_interval_secs, &mut problems);
        check_cache_gb(self.cache_gb, &mut problems);
        check_engine(&self.engine, &mut problems);
        if !self.gpus.is_empty() {
            if let Err(reason) = colo_agent::declared_gpus(&colo_core::Catalogue::builtin(), &self.gpus) {
                problems.add("gpus", reason);
            }
        }
        self.tls.check(&mut problems);
        problems.into_result()
    }

    /// The host's name: the configured one, or the system's.
    pub(crate) fn host_name(&self) -> String {
        self.name.clone().unwrap_or_else(crate::hostname)
    }

    /// The cache capacity in bytes.
    pub(crate) fn cache_bytes(&self) -> Option<u64> {
        gb_to_bytes(self.cache_gb)
    }
}

impl Default for AgentDaemonConfig {
    fn default() -> Self {
        AgentDaemonConfig {
            nats: String::new(),
            data_dir: ".colo".into(),
            store: String::new(),
            region: String::new(),
            name: None,
            addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 7001),
            token_file: PathBuf::new(),
            cpu_slots: 4,
            lease_ms: 6000,
            health_interval_secs: 2.0,
            engine_host: Ipv4Addr::LOCALHOST.into(),
            gpus: Vec::new(),
            cache_gb: None,
            s3_addr: None,
            tls: TlsFiles::default(),
            engine: EngineProgram::default(),
        }
    }
}

// === impl EdgeDaemonConfig ===

impl EdgeDaemonConfig {
    /// Every problem with this config.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        required("nats", &self.nats, &mut problems);
        required("region", &self.region, &mut problems);
        if self.token_file.as_os_str().is_empty() {
            problems.add("token_file", "must not be empty");
        }
        self.edge.check(&mut problems);
        problems.into_result()
    }
}

impl Default for EdgeDaemonConfig {
    fn default() -> Self {
        EdgeDaemonConfig {
            nats: String::new(),
            data_dir: ".colo".into(),
            region: String::new(),
            addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080),
            token_file: PathBuf::new(),
            edge: EdgeSettings::default(),
            inter_region_delay_ms: 0,
            tls_ca: None,
        }
    }
}

// === checks more than one config makes ===

fn required(field: &'static str, value: &str, problems: &mut Problems) {
    if value.trim().is_empty() {
        problems.add(field, "must not be empty");
    }
}

fn check_health_interval(secs: f64, problems: &mut Problems) {
    if !HEALTH_INTERVAL_SECS.contains(&secs) {
        problems.add(
            "health_interval_secs",
            format!(
                "must be between {} and {} seconds (got {secs})",
                HEALTH_INTERVAL_SECS.start(),
                HEALTH_INTERVAL_SECS.end()
            ),
        );
    }
}

fn check_cache_gb(gb: Option<f64>, problems: &mut Problems) {
    if let Some(gb) = gb.filter(|gb| !gb.is_finite() || *gb < 0.0) {
        problems.add("cache_gb", format!("must be a size of at least 0 GB (got {gb})"));
    }
}

fn check_engine(engine: &EngineProgram, problems: &mut Problems) {
    if engine.program.as_os_str().is_empty() {
        problems.add("engine.program", "must not be empty");
    }
}

fn gb_to_bytes(gb: Option<f64>) -> Option<u64> {
    // validate() refused negative and non-finite sizes; the cast saturates past u64::MAX.
    gb.map(|gb| (gb * 1e9) as u64)
}
