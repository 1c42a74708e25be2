//! `colo up`: control, one agent and one edge in a single process (or a fleet file's hosts and
//! edges), in the foreground until SIGTERM. colo-node assembles it; this parses the flags and
//! prints what runs where.

use crate::flags::EdgeFlags;
use crate::Common;
use anyhow::Context;
use colo_node::{EngineProgram, Running, UpConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    common: Common,
    /// Address of the edge, where OpenAI clients connect.
    #[arg(long, default_value = "127.0.0.1:8080")]
    edge_addr: SocketAddr,
    /// Address of the control and agent REST API (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    api_addr: SocketAddr,
    /// Model store: a directory, or s3://bucket/prefix. Default: <data dir>/store.
    #[arg(long)]
    store: Option<String>,
    /// Region code of this host.
    #[arg(long, default_value = "local")]
    region: String,
    /// CPU slots offered when the host has no NVIDIA GPU.
    #[arg(long, default_value_t = 4)]
    cpu_slots: u32,
    #[command(flatten)]
    edge: EdgeFlags,
    /// Threads serving each edge, each with its own runtime and socket (0: one per core).
    #[arg(long, default_value_t = 0)]
    edge_workers: usize,
    /// Seconds between health checks of each started engine.
    #[arg(long, default_value_t = 2.0)]
    health_interval: f64,
    /// Several hosts and regions on this one machine: a fleet.toml with [[hosts]] (name,
    /// region, cpu_slots), optional [[edges]] (region, addr) and inter_region_delay_ms.
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// Serve the (first) host's model cache as a read-only S3 endpoint here: bucket `colo`,
    /// keys `<model>/<revision or latest>/<file>`, access key `colo`, the API token as secret.
    #[arg(long)]
    s3_addr: Option<SocketAddr>,
    /// GB (10^9 bytes) each host's model cache may hold; unused models are evicted to make room.
    /// Unlimited when absent.
    #[arg(long)]
    cache_gb: Option<f64>,
    /// Another host's cache to read model chunks from before the store: its peer API's base
    /// URL (another colo's `/v1/hosts/<name>` or a `colo model pull --serve` address). Repeat
    /// for more.
    #[arg(long = "peer", value_name = "URL")]
    peers: Vec<String>,
    /// Start colo's engine only once its model is wholly pulled. By default it starts while
    /// the pull goes on and loads each tensor as soon as its bytes are verified.
    #[arg(long)]
    load_after_pull: bool,
}

impl UpArgs {
    fn config(self) -> anyhow::Result<UpConfig> {
        let fleet = match &self.fleet {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Some(toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)
            }
            None => None,
        };
        Ok(UpConfig {
            data_dir: self.common.data_dir,
            edge_addr: self.edge_addr,
            api_addr: self.api_addr,
            store: self.store,
            region: self.region,
            cpu_slots: self.cpu_slots,
            fleet,
            edge: self.edge.settings(self.edge_workers)?,
            health_interval_secs: self.health_interval,
            s3_addr: self.s3_addr,
            cache_gb: self.cache_gb,
            peers: self.peers,
            engine: EngineProgram {
                load_while_pulling: !self.load_after_pull,
                ..EngineProgram::this_executable().context("finding the colo binary")?
            },
        })
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let json = args.common.json;
    let config = args.config()?;
    let drain_secs = config.edge.drain_timeout_secs;
    let mut running = colo_node::up(config).await.context("starting colo up")?;
    if json {
        // One line on stdout for a script that starts colo: where everything is.
        println!("{}", serde_json::to_string(&banner_json(&running))?);
    } else {
        eprintln!("{}", banner(&running));
    }

    colo_node::shutdown_signal().await;
    // Drain: the edges stop accepting and in-flight requests get up to the drain timeout to
    // finish on machines that still run; only then are the machines stopped.
    eprintln!("colo: draining (up to {drain_secs}s)");
    let drain = running.drain().await;
    if drain.complete {
        eprintln!("colo: drained in {:.2}s", drain.took.as_secs_f64());
    } else {
        eprintln!("colo: drain timeout passed with requests still in flight");
    }
    eprintln!("colo: stopping machines");
    running.shutdown().await;
    eprintln!("colo: stopped");
    Ok(())
}

/// The banner's facts for scripts (`colo up --json`).
fn banner_json(running: &Running) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = running
        .agents()
        .iter()
        .map(|a| {
            let devices: Vec<String> = a.devices().iter().map(|d| d.to_string()).collect();
            serde_json::json!({"host": a.host(), "region": a.region(), "devices": devices})
        })
        .collect();
    let edges: std::collections::BTreeMap<&String, String> = running
        .edges
        .iter()
        .map(|(region, addr)| (region, format!("{}://{addr}", running.edge_scheme)))
        .collect();
    serde_json::json!({
        "edges": edges,
        "api": format!("http://{}", running.api_addr),
        "store": running.store_url,
        "data_dir": running.data_dir,
        "s3": running.s3_addr.map(|addr| format!("http://{addr}")),
        "hosts": hosts,
        "pid": std::process::id(),
    })
}

/// What runs where: every edge, the API, the store, the data dir, each host's devices, and the
/// S3 endpoint when there is one.
fn banner(running: &Running) -> String {
    let edges: Vec<String> = running
        .edges
        .iter()
        .map(|(region, addr)| format!("  edge   {}://{addr}   region {region}", running.edge_scheme))
        .collect();
    let hosts: Vec<String> = running
        .agents()
        .iter()
        .map(|a| {
            let devices = a.devices().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            format!("{} ({}): {devices}", a.host(), a.region())
        })
        .collect();
    let s3 = match running.s3_addr {
        Some(addr) => format!("\n  s3     http://{addr}  (bucket colo, access key colo, secret: the api-token)"),
        None => String::new(),
    };
    format!(
        "colo is up\n{}   (OpenAI API: /v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions)\n  api    http://{}\n  ui     http://{}/ui   (sign in with the token in {})\n  store  {}\n  data   {}\n  hosts  {}{s3}",
        edges.join("\n"),
        running.api_addr,
        running.api_addr,
        running.data_dir.join("api-token").display(),
        running.store_url,
        running.data_dir.display(),
        hosts.join("; ")
    )
}
