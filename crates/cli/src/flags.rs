//! Flags more than one command takes, and how they become colo-node's settings: the edge's
//! (`colo up` and `colo edge`), the TLS files of the daemons, and what every daemon needs.

use colo_node::{EdgeSettings, TlsFiles};
use std::path::PathBuf;

/// The edge's flags, the same for `colo up` and `colo edge`.
#[derive(clap::Args, Clone, Debug)]
pub struct EdgeFlags {
    /// Apps are also reachable as <app>.<domain> through the Host header.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Seconds a request may wait for its app's machine to start.
    #[arg(long, default_value_t = 120)]
    hold_timeout: u64,
    /// Requests in flight per machine above which the edge prefers other machines.
    #[arg(long, default_value_t = 32)]
    soft_limit: u32,
    /// Requests in flight per machine at which the edge sends it no more (they wait or go elsewhere).
    #[arg(long, default_value_t = 64)]
    hard_limit: u32,
    /// Largest request body the edge accepts, in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_body: usize,
    /// Requests an edge holds per app while machines start; more get 503 with Retry-After.
    #[arg(long, default_value_t = 4096)]
    max_held: u32,
    /// A held streaming request gets an SSE comment after this many ms, and again every as
    /// many, until its machine answers (0: never).
    #[arg(long, default_value_t = 5000)]
    sse_keepalive_ms: u64,
    /// On SIGTERM, seconds in-flight requests get to finish (before machines are stopped, in
    /// `colo up`).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Seconds a client may take to send a request head, from its first byte (then 408).
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.head_timeout.as_secs())]
    head_timeout: u64,
    /// Seconds a request body may go without bytes arriving (then 408).
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.body_timeout.as_secs())]
    body_timeout: u64,
    /// Seconds an idle keep-alive client connection stays open.
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Seconds a machine may take to start its answer (a non-streaming generation answers
    /// when done; then 504).
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.upstream_head_timeout.as_secs())]
    upstream_timeout: u64,
    /// Client connections the edge holds at most; more are answered 503 and closed.
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.max_connections)]
    max_connections: usize,
    /// Client connections one address may hold at most; more are answered 503 and closed.
    #[arg(long, default_value_t = colo_node::EdgeLimits::DEFAULT.max_connections_per_addr)]
    max_connections_per_addr: usize,
    /// PEM certificate chain the edge serves TLS with; repeat with --tls-key for one certificate
    /// per app host name (picked by SNI; the first also answers names no other covers). With
    /// any, the edge's address speaks HTTPS only, HTTP/2 included; files are reloaded when
    /// they change.
    #[arg(long = "tls-cert", value_name = "PEM")]
    tls_certs: Vec<PathBuf>,
    /// PEM private key of the --tls-cert at the same position.
    #[arg(long = "tls-key", value_name = "PEM")]
    tls_keys: Vec<PathBuf>,
}

impl EdgeFlags {
    /// The edge's settings, served by `workers` threads (0: one per core).
    pub fn settings(&self, workers: usize) -> anyhow::Result<EdgeSettings> {
        if self.tls_certs.len() != self.tls_keys.len() {
            anyhow::bail!(
                "--tls-cert and --tls-key go in pairs: {} certificates and {} keys given",
                self.tls_certs.len(),
                self.tls_keys.len()
            );
        }
        let tls = (self.tls_certs.iter().zip(&self.tls_keys))
            .map(|(cert, key)| colo_node::EdgeCertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect();
        Ok(EdgeSettings {
            domain: self.domain.clone(),
            soft_limit: self.soft_limit,
            hard_limit: self.hard_limit,
            hold_timeout_secs: self.hold_timeout,
            max_body: self.max_body,
            max_held: self.max_held,
            sse_keepalive_ms: self.sse_keepalive_ms,
            drain_timeout_secs: self.drain_timeout,
            workers,
            head_timeout_secs: self.head_timeout,
            body_timeout_secs: self.body_timeout,
            idle_timeout_secs: self.idle_timeout,
            upstream_timeout_secs: self.upstream_timeout,
            max_connections: self.max_connections,
            max_connections_per_addr: self.max_connections_per_addr,
            tls,
        })
    }
}

/// Flags every daemon takes.
#[derive(clap::Args)]
pub struct DaemonCommon {
    /// NATS server with JetStream (`nats://127.0.0.1:4222`).
    #[arg(long, env = "COLO_NATS")]
    pub nats: String,
    /// This daemon's own files: logs, host cache, its token.
    #[arg(long, env = "COLO_DATA_DIR", default_value = ".colo")]
    pub data_dir: PathBuf,
}

/// TLS flags of a daemon.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain this daemon's API presents; with --tls-key, the API speaks HTTPS only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed the other daemons' certificates, trusted when calling them.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
        }
    }
}
