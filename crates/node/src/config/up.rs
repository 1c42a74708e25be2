//! `colo up`'s config: one host (or a fleet file's hosts and edges) in one process.

use super::{check_cache_gb, check_engine, check_health_interval, gb_to_bytes, required, EdgeSettings, EngineProgram};
use crate::error::Problems;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

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
    /// Caches of hosts outside this process (their peer API's base URL: another colo's
    /// `/v1/hosts/<name>`, or a `colo model pull --serve` address) that this process's hosts
    /// read model chunks from before the store.
    pub peers: Vec<String>,
    /// What each machine runs.
    pub engine: EngineProgram,
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
        for peer in &self.peers {
            if !(peer.starts_with("http://") || peer.starts_with("https://")) {
                problems.add("peers", format!("{peer:?} is not an http:// or https:// URL"));
            }
        }
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
            peers: Vec::new(),
            engine: EngineProgram::default(),
        }
    }
}
