//! What each process takes: plain data (serde, unknown keys refused) with a `validate()` that
//! returns every problem at once, each naming its field. The checks more than one process needs
//! (per-machine limits, health interval, cache size, the edge's settings) are written once here.

mod daemons;
mod up;

pub use daemons::{AgentDaemonConfig, ControlConfig, EdgeDaemonConfig};
pub use up::UpConfig;

use crate::error::Problems;
use crate::tls::TlsFiles;
use colo_edge::{AdminCheck, EdgeConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Health checks may not come faster or slower than this, in seconds: faster would keep an
/// engine busy answering them, slower would leave a hung engine in the route table too long.
const HEALTH_INTERVAL_SECS: std::ops::RangeInclusive<f64> = 0.05..=60.0;
/// How long an engine may take from spawn to its first passing health check.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Between a machine being told to stop (edges route nothing more to it) and its engine being
/// signalled.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The longest any edge timeout may be set to: a day.
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The edge's default limits.
const LIMITS: colo_edge::Limits = colo_edge::Limits::DEFAULT;

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
    /// Seconds a request head may take from its first byte (then 408).
    pub head_timeout_secs: u64,
    /// Seconds a request body may go without bytes arriving (then 408).
    pub body_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub idle_timeout_secs: u64,
    /// Seconds a machine may take to start its answer (then 504).
    pub upstream_timeout_secs: u64,
    /// Client connections the edge holds at most (more: 503 and closed).
    pub max_connections: usize,
    /// Client connections one address may hold at most (more: 503 and closed).
    pub max_connections_per_addr: usize,
    /// Certificates the edge serves TLS with, the first also for names no other covers; when
    /// any is given the edge's address speaks HTTPS only (HTTP/1.1, and HTTP/2 through ALPN).
    pub tls: Vec<colo_edge::tls::CertFiles>,
}

/// The engine program each machine runs, and the arguments before the per-machine flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineProgram {
    /// The executable: the `colo` binary for colo's own engine.
    pub program: PathBuf,
    /// Its arguments before `--model-dir`, `--port` and the rest.
    pub args: Vec<String>,
    /// colo's own engine starts while its model is still being pulled and loads each tensor
    /// as its bytes land (other engines always start after the pull).
    pub load_while_pulling: bool,
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
        let timeouts = [
            ("edge.head_timeout_secs", self.head_timeout_secs),
            ("edge.body_timeout_secs", self.body_timeout_secs),
            ("edge.idle_timeout_secs", self.idle_timeout_secs),
            ("edge.upstream_timeout_secs", self.upstream_timeout_secs),
        ];
        for (field, secs) in timeouts {
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                problems.add(field, format!("{secs} is outside 1 to {MAX_TIMEOUT_SECS} seconds"));
            }
        }
        if self.max_connections == 0 || self.max_connections_per_addr == 0 {
            problems.add("edge.max_connections", "both caps must be at least 1");
        } else if self.max_connections_per_addr > self.max_connections {
            problems.add(
                "edge.max_connections_per_addr",
                format!(
                    "{} is more than the edge's cap of {}",
                    self.max_connections_per_addr, self.max_connections
                ),
            );
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
            limits: colo_edge::Limits {
                head_timeout: Duration::from_secs(self.head_timeout_secs),
                body_timeout: Duration::from_secs(self.body_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                upstream_head_timeout: Duration::from_secs(self.upstream_timeout_secs),
                max_connections: self.max_connections,
                max_connections_per_addr: self.max_connections_per_addr,
            },
            ..EdgeConfig::default()
        }
    }

    /// The edge's TLS, when certificates are given, watched for changes from now on.
    pub(crate) fn start_tls(&self) -> Result<Option<std::sync::Arc<colo_edge::tls::EdgeTls>>, crate::error::NodeError> {
        if self.tls.is_empty() {
            return Ok(None);
        }
        let tls = colo_edge::tls::EdgeTls::load(self.tls.clone())?;
        colo_edge::tls::EdgeTls::watch(&tls, colo_edge::tls::RELOAD_EVERY);
        Ok(Some(tls))
    }

    /// `https` when the edge serves TLS, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_empty() {
            "http"
        } else {
            "https"
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
            head_timeout_secs: LIMITS.head_timeout.as_secs(),
            body_timeout_secs: LIMITS.body_timeout.as_secs(),
            idle_timeout_secs: LIMITS.idle_timeout.as_secs(),
            upstream_timeout_secs: LIMITS.upstream_head_timeout.as_secs(),
            max_connections: LIMITS.max_connections,
            max_connections_per_addr: LIMITS.max_connections_per_addr,
            tls: Vec::new(),
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

    /// The config of the agent of host `host` in `region`, whose machines run this program
    /// with engines on `engine_host`, health-checked every `health_interval_secs`.
    pub(crate) fn agent_config(
        &self,
        host: String,
        region: String,
        data_dir: PathBuf,
        health_interval_secs: f64,
        engine_host: std::net::IpAddr,
        forward_key: Option<String>,
    ) -> colo_agent::AgentConfig {
        colo_agent::AgentConfig {
            host,
            region,
            data_dir,
            engine: colo_agent::EngineCommand {
                program: self.program.clone(),
                args: self.args.clone(),
                load_while_pulling: self.load_while_pulling,
            },
            start_timeout: START_TIMEOUT,
            stop_grace: STOP_GRACE,
            health_interval: Duration::from_secs_f64(health_interval_secs),
            engine_host,
            forward_key,
        }
    }
}

impl Default for EngineProgram {
    fn default() -> Self {
        EngineProgram {
            program: "colo".into(),
            args: vec!["engine".into(), "serve".into()],
            load_while_pulling: true,
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

/// A certificate needs its key, and a key its certificate.
fn check_tls(tls: &TlsFiles, problems: &mut Problems) {
    match (&tls.cert, &tls.key) {
        (Some(_), None) => problems.add("tls.key", "a certificate needs its key"),
        (None, Some(_)) => problems.add("tls.cert", "a key needs its certificate"),
        _ => {}
    }
}

fn gb_to_bytes(gb: Option<f64>) -> Option<u64> {
    // validate() refused negative and non-finite sizes; the cast saturates past u64::MAX.
    gb.map(|gb| (gb * 1e9) as u64)
}
