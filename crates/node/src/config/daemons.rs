//! The daemons' configs: `colo control`, `colo agent` and `colo edge`, each over NATS.

use super::{check_cache_gb, check_engine, check_health_interval, check_tls, gb_to_bytes, required, EdgeSettings, EngineProgram};
use crate::error::Problems;
use crate::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// A host's lease shorter than this would expire between two heartbeats on a loaded machine.
const MIN_LEASE_MS: u64 = 300;

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

// === impl ControlConfig ===

impl ControlConfig {
    /// Every problem with this config.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        required("nats", &self.nats, &mut problems);
        required("store", &self.store, &mut problems);
        check_tls(&self.tls, &mut problems);
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
        check_tls(&self.tls, &mut problems);
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
