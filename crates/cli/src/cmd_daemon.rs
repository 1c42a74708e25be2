//! `colo control | agent | edge`: the parts of `colo up` as separate daemons that share state
//! through NATS JetStream and weights through an S3-compatible store. colo-node assembles each;
//! this parses the flags, prints what runs where, and waits for SIGTERM.

use crate::flags::{DaemonCommon, EdgeFlags, TlsArgs};
use anyhow::Context;
use colo_node::{AgentDaemonConfig, ControlConfig, EdgeDaemonConfig, EngineProgram};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ControlArgs {
    #[command(flatten)]
    common: DaemonCommon,
    /// Model store: s3://bucket/prefix (AWS_* variables) or a directory every host can read.
    #[arg(long)]
    store: String,
    /// Address of control's API.
    #[arg(long, default_value = "127.0.0.1:7000")]
    api_addr: SocketAddr,
    /// Seconds between reconciliations when nothing changes.
    #[arg(long, default_value_t = 10)]
    reconcile_every: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    common: DaemonCommon,
    /// Model store the host's cache hydrates from: s3://bucket/prefix (AWS_* variables) or a
    /// directory this host can read.
    #[arg(long)]
    store: String,
    /// Region code of this host.
    #[arg(long)]
    region: String,
    /// Host name, unique in the fleet (default: /etc/hostname).
    #[arg(long)]
    name: Option<String>,
    /// Address of this agent's API (machines, cache, peers).
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    /// The cluster token (control's api-token file).
    #[arg(long)]
    token_file: PathBuf,
    /// CPU slots offered when the host has no NVIDIA GPU.
    #[arg(long, default_value_t = 4)]
    cpu_slots: u32,
    /// Milliseconds the host's record stays valid without a heartbeat.
    #[arg(long, default_value_t = 6000)]
    lease_ms: u64,
    /// Seconds between health checks of each started engine.
    #[arg(long, default_value_t = 2.0)]
    health_interval: f64,
    /// Address the host's engines listen on and edges reach them at: 127.0.0.1 (the default)
    /// only when every edge runs on this host; otherwise an address of this host that the
    /// edges can reach. An `--engine-cmd` gets it as `{host}`.
    #[arg(long, default_value = "127.0.0.1")]
    engine_host: std::net::IpAddr,
    /// GPUs to offer instead of discovering them, as KIND=COUNT (repeat for more kinds; kinds
    /// as in `colo plan`): for hosts whose GPUs NVML cannot see, and for tests on machines
    /// without GPUs (engines are not told which card they hold).
    #[arg(long = "gpus", value_name = "KIND=COUNT", value_parser = crate::cmd_deploy::parse_count)]
    gpus: Vec<(String, u32)>,
    /// GB the host cache may hold (unlimited when absent).
    #[arg(long)]
    cache_gb: Option<f64>,
    /// Serve the host cache as a read-only S3 endpoint here (bucket `colo`, access key `colo`,
    /// the cluster token as secret), for engines that read weights from S3.
    #[arg(long)]
    s3_addr: Option<SocketAddr>,
    /// Start colo's engine only once its model is wholly pulled. By default it starts while
    /// the pull goes on and loads each tensor as soon as its bytes are verified.
    #[arg(long)]
    load_after_pull: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    common: DaemonCommon,
    /// Region code this edge serves.
    #[arg(long)]
    region: String,
    /// Address where clients connect.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The cluster token (control's api-token file): the edge uses it to wake and stop machines,
    /// and asks it of callers of its admin endpoints.
    #[arg(long)]
    token_file: PathBuf,
    #[command(flatten)]
    edge: EdgeFlags,
    /// Latency added to requests sent to other regions (simulating distance on one machine).
    #[arg(long, default_value_t = 0)]
    inter_region_delay_ms: u64,
    /// Threads serving the edge (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// CA that signed the agents' certificates, when they serve TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

pub async fn control(args: ControlArgs) -> anyhow::Result<()> {
    let config = ControlConfig {
        nats: args.common.nats,
        data_dir: args.common.data_dir,
        store: args.store,
        api_addr: args.api_addr,
        reconcile_every_secs: args.reconcile_every,
        tls: args.tls.files(),
    };
    let (nats, store) = (config.nats.clone(), config.store.clone());
    let running = colo_node::control(config).await.context("starting colo control")?;
    eprintln!(
        "colo control is up\n  api    {}\n  ui     {}/ui   (sign in with the token)\n  nats   {nats}\n  store  {store}\n  token  {}",
        running.api_url,
        running.api_url,
        running.token_file.display()
    );
    colo_node::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentDaemonConfig {
        nats: args.common.nats,
        data_dir: args.common.data_dir,
        store: args.store,
        region: args.region,
        name: args.name,
        addr: args.addr,
        token_file: args.token_file,
        cpu_slots: args.cpu_slots,
        lease_ms: args.lease_ms,
        health_interval_secs: args.health_interval,
        engine_host: args.engine_host,
        gpus: args.gpus,
        cache_gb: args.cache_gb,
        s3_addr: args.s3_addr,
        tls: args.tls.files(),
        engine: EngineProgram {
            load_while_pulling: !args.load_after_pull,
            ..EngineProgram::this_executable().context("finding the colo binary")?
        },
    };
    let (nats, region) = (config.nats.clone(), config.region.clone());
    let mut running = colo_node::agent(config).await.context("starting colo agent")?;
    if let Some(s3) = running.s3_addr {
        eprintln!("  s3     http://{s3}  (bucket colo, access key colo, secret: the cluster token)");
    }
    let devices: Vec<String> = running.agent().devices().iter().map(|d| d.to_string()).collect();
    eprintln!(
        "colo agent {} is up\n  api    {}\n  region {region}\n  nats   {nats}\n  devices {}",
        running.name,
        running.api_url,
        devices.join(", ")
    );
    colo_node::shutdown_signal().await;
    running.stop_api().await;
    eprintln!("colo agent: stopping machines");
    running.shutdown().await;
    Ok(())
}

pub async fn edge(args: EdgeArgs) -> anyhow::Result<()> {
    let config = EdgeDaemonConfig {
        nats: args.common.nats,
        data_dir: args.common.data_dir,
        region: args.region,
        addr: args.addr,
        token_file: args.token_file,
        edge: args.edge.settings(args.workers)?,
        inter_region_delay_ms: args.inter_region_delay_ms,
        tls_ca: args.tls_ca,
    };
    let nats = config.nats.clone();
    let running = colo_node::edge(config).await.context("starting colo edge")?;
    eprintln!(
        "colo edge is up\n  edge   {}://{}   region {}\n  nats   {nats}",
        running.scheme, running.addr, running.region
    );
    colo_node::shutdown_signal().await;
    running.drain().await;
    Ok(())
}
