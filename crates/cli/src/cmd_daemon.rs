//! `colo control | agent | edge`: the parts of `colo up` as separate daemons that share state
//! through NATS JetStream (`colo_state::Nats`) and weights through an S3-compatible store. The
//! same crates run inside; only where state lives and how agents are reached differ.

use crate::client::{RunInfo, RUN_FILE};
use crate::edge_workers;
use crate::tls::TlsArgs;
use anyhow::Context;
use axum::serve::ListenerExt;
use colo_agent::{declared_gpus, discover_devices, Agent, AgentConfig, EngineCommand};
use colo_control::{auth, Control};
use colo_edge::{Edge, EdgeConfig};
use colo_state::{Nats, NatsOptions, StateStore};
use colo_store::{HostCache, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Flags every daemon takes.
#[derive(clap::Args)]
pub struct DaemonCommon {
    /// NATS server with JetStream (`nats://127.0.0.1:4222`).
    #[arg(long, env = "COLO_NATS")]
    nats: String,
    /// This daemon's own files: logs, host cache, its token.
    #[arg(long, env = "COLO_DATA_DIR", default_value = ".colo")]
    data_dir: PathBuf,
}

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
    /// Apps are also reachable as <app>.<domain> through the Host header.
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value_t = 32)]
    soft_limit: u32,
    #[arg(long, default_value_t = 64)]
    hard_limit: u32,
    /// Seconds a request may wait for a machine.
    #[arg(long, default_value_t = 120)]
    hold_timeout: u64,
    /// Latency added to requests sent to other regions (simulating distance on one machine).
    #[arg(long, default_value_t = 0)]
    inter_region_delay_ms: u64,
    /// Threads serving the edge (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// On SIGTERM, seconds in-flight requests get to finish.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// CA that signed the agents' certificates, when they serve TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

async fn connect(common: &DaemonCommon, name: &str) -> anyhow::Result<Arc<Nats>> {
    std::fs::create_dir_all(&common.data_dir).with_context(|| format!("creating {}", common.data_dir.display()))?;
    let options = NatsOptions {
        client_name: Some(name.to_string()),
        ..NatsOptions::default()
    };
    let nats = Nats::connect(&common.nats, options).await?;
    Ok(Arc::new(nats))
}

fn write_run_info(data_dir: &Path, info: &RunInfo) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(RUN_FILE);
    let tmp = data_dir.join(format!("{RUN_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub async fn control(args: ControlArgs) -> anyhow::Result<()> {
    let nats = connect(&args.common, "colo-control").await?;
    let data_dir = args.common.data_dir.canonicalize()?;
    let store = Store::open(&args.store)?;
    auth::load_or_create_token(&data_dir).context("creating the cluster token")?;
    let token = Arc::new(auth::TokenFile::open(&data_dir.join(auth::TOKEN_FILE))?);
    let state: Arc<dyn StateStore> = nats.clone();
    let tls = args.tls.server()?;
    let control = Control::remote(state.clone(), store, token, args.tls.client()?);
    let reachable = {
        let nats = nats.clone();
        Arc::new(move || nats.connected()) as Arc<dyn Fn() -> bool + Send + Sync>
    };
    control.spawn_lease_watch(reachable, Duration::from_secs(args.reconcile_every));
    let api = colo_control::api::router(control.clone())
        .merge(colo_control::api::machines_router(control.clone()))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth::Access {
                token: auth::TokenFile::open(&data_dir.join(auth::TOKEN_FILE))?,
                state,
            }),
            auth::require_access,
        ));
    let listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding control's API to {}", args.api_addr))?;
    let api_addr = listener.local_addr()?;
    let run_path = write_run_info(
        &data_dir,
        &RunInfo {
            api: format!("{}://{api_addr}", args.tls.scheme()),
            tls_ca: args.tls.tls_ca.as_ref().map(|p| p.display().to_string()),
            edge: String::new(),
            edges: Default::default(),
            store: args.store.clone(),
            pid: std::process::id(),
        },
    )?;
    eprintln!(
        "colo control is up\n  api    {}://{api_addr}\n  nats   {}\n  store  {}\n  token  {}",
        args.tls.scheme(),
        args.common.nats,
        args.store,
        data_dir.join(auth::TOKEN_FILE).display()
    );
    serve_until_signal(listener, api, tls).await;
    let _ = std::fs::remove_file(run_path);
    Ok(())
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    if !(0.05..=60.0).contains(&args.health_interval) {
        anyhow::bail!(
            "--health-interval must be between 0.05 and 60 seconds (got {})",
            args.health_interval
        );
    }
    if args.lease_ms < 300 {
        anyhow::bail!("--lease-ms must be at least 300 (got {})", args.lease_ms);
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let devices = if args.gpus.is_empty() {
        discover_devices(args.cpu_slots)
    } else {
        declared_gpus(&colo_core::Catalogue::builtin(), &args.gpus).map_err(|e| anyhow::anyhow!("--gpus: {e}"))?
    };
    let nats = connect(&args.common, &format!("colo-agent-{name}")).await?;
    let data_dir = args.common.data_dir.canonicalize()?;
    let token = Arc::new(auth::TokenFile::open(&args.token_file).with_context(|| format!("reading {}", args.token_file.display()))?);
    let store = Store::open(&args.store)?;
    let state: Arc<dyn StateStore> = nats.clone();
    let agent = Agent::new(
        AgentConfig {
            host: name.clone(),
            region: args.region.clone(),
            data_dir: data_dir.clone(),
            engine: EngineCommand {
                program: std::env::current_exe().context("finding the colo binary")?,
                args: vec!["engine".into(), "serve".into()],
            },
            start_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(2),
            health_interval: Duration::from_secs_f64(args.health_interval),
            engine_host: args.engine_host,
        },
        state.clone(),
        store,
        HostCache::with_capacity(data_dir.join("cache"), args.cache_gb.map(|gb| (gb * 1e9) as u64)),
        devices,
    );
    let tls = args.tls.server()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding the agent's API to {}", args.addr))?;
    let addr = format!("{}://{}", args.tls.scheme(), listener.local_addr()?);
    agent.recover().await?;
    if let Some(s3_addr) = args.s3_addr {
        let bound = crate::cmd_up::serve_cache_s3(s3_addr, &agent, &token.current()).await?;
        eprintln!("  s3     http://{bound}  (bucket colo, access key colo, secret: the cluster token)");
    }
    agent.spawn_heartbeat(addr.clone(), Duration::from_millis(args.lease_ms));
    spawn_peer_refresh(agent.clone(), state, token.clone(), addr.clone(), args.tls.client()?);
    let api = colo_agent::api::router(vec![agent.clone()]).layer(axum::middleware::from_fn_with_state(token, auth::require_token));
    eprintln!(
        "colo agent {name} is up\n  api    {addr}\n  region {}\n  nats   {}\n  devices {}",
        args.region,
        args.common.nats,
        agent.devices().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );
    serve_until_signal(listener, api, tls).await;
    eprintln!("colo agent: stopping machines");
    agent.shutdown().await;
    Ok(())
}

/// Keeps the agent's peer list (the other live hosts of its region) in step with the host
/// records, every few seconds.
fn spawn_peer_refresh(
    agent: Arc<Agent>,
    state: Arc<dyn StateStore>,
    token: Arc<auth::TokenFile>,
    own_addr: String,
    client: reqwest::Client,
) {
    tokio::spawn(async move {
        loop {
            if let Ok(hosts) = state.hosts().await {
                let now = colo_core::unix_ms();
                let urls = hosts
                    .iter()
                    .filter(|h| h.region == agent.region() && h.addr != own_addr && h.live(now))
                    .map(|h| h.addr.clone())
                    .collect();
                agent.set_peers(colo_agent::PeerConfig {
                    urls,
                    token: Some(token.current()),
                    client: Some(client.clone()),
                });
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
}

pub async fn edge(args: EdgeArgs) -> anyhow::Result<()> {
    if args.soft_limit == 0 || args.hard_limit < args.soft_limit {
        anyhow::bail!("--soft-limit must be at least 1 and --hard-limit at least --soft-limit");
    }
    let nats = connect(&args.common, &format!("colo-edge-{}", args.region)).await?;
    let data_dir = args.common.data_dir.canonicalize()?;
    let token = Arc::new(auth::TokenFile::open(&args.token_file).with_context(|| format!("reading {}", args.token_file.display()))?);
    let state: Arc<dyn StateStore> = nats.clone();
    let routes = colo_edge::follow_state(state.clone()).await;
    let edge = Edge::new(
        EdgeConfig {
            domain: args.domain.clone(),
            region: args.region.clone(),
            route: colo_policy::RouteParams {
                soft_limit: args.soft_limit,
                hard_limit: args.hard_limit,
                ..Default::default()
            },
            hold_timeout: Duration::from_secs(args.hold_timeout),
            inter_region_delay: Duration::from_millis(args.inter_region_delay_ms),
            admin_token: Some({
                let token = token.clone();
                colo_edge::AdminCheck(Arc::new(move |presented: &str| auth::same(presented, &token.current())))
            }),
            ..EdgeConfig::default()
        },
        routes,
    );
    let edge = edge.with_machines(Arc::new(RemoteMachines {
        state,
        token,
        http: crate::tls::client(args.tls_ca.as_deref())?,
    }));
    edge.spawn_scaling();
    edge.spawn_rtt_probe();
    share_load_reports(edge.clone(), nats.clone(), args.region.clone());
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let sockets = edge_workers::bind(args.addr, workers).with_context(|| format!("binding the edge to {}", args.addr))?;
    let url = format!("http://{}", sockets.addr);
    let run_path = write_run_info(
        &data_dir,
        &RunInfo {
            api: String::new(),
            tls_ca: None,
            edge: url.clone(),
            edges: [(args.region.clone(), url.clone())].into_iter().collect(),
            store: String::new(),
            pid: std::process::id(),
        },
    )?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut done = edge_workers::serve(sockets, edge, stop_rx, Duration::from_secs(args.drain_timeout))?;
    eprintln!(
        "colo edge is up\n  edge   {url}   region {}\n  nats   {}",
        args.region, args.common.nats
    );
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(run_path);
    let _ = tokio::time::timeout(Duration::from_secs(args.drain_timeout), done.recv()).await;
    Ok(())
}

/// How often an edge relays the engine load reports it saw to the edges of other regions: at
/// most this many messages per second per edge, whatever the traffic.
const LOAD_SHARE_EVERY: Duration = Duration::from_millis(250);
/// Reports in one message at most.
const LOAD_SHARE_MAX: usize = 2000;

/// Publishes this edge's fresh engine reports on `colo.load.<region>` every `LOAD_SHARE_EVERY`,
/// and applies the reports other regions' edges publish, so that every edge weighs a machine's
/// load with what the machine told any edge. Both sides retry while NATS is away.
fn share_load_reports(edge: Arc<Edge>, nats: Arc<Nats>, region: String) {
    let subject = format!("colo.load.{region}");
    {
        let (edge, nats, subject) = (edge.clone(), nats.clone(), subject.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOAD_SHARE_EVERY).await;
                let reports = edge.fresh_reports(LOAD_SHARE_MAX);
                if reports.is_empty() {
                    continue;
                }
                if let Ok(payload) = serde_json::to_vec(&reports) {
                    let _ = nats.publish(&subject, payload.into()).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        use futures::StreamExt;
        loop {
            match nats.subscribe("colo.load.*").await {
                Ok(mut messages) => {
                    while let Some(message) = messages.next().await {
                        if message.subject == subject {
                            continue;
                        }
                        match serde_json::from_slice::<Vec<colo_edge::SharedLoad>>(&message.payload) {
                            Ok(reports) => reports.iter().for_each(|r| edge.apply_shared(r)),
                            Err(e) => tracing::debug!(subject = %message.subject, error = %e, "unreadable load report"),
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "subscribing to load reports"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// The edge's handle on remote agents: the machine's host record says where its agent is.
struct RemoteMachines {
    state: Arc<dyn StateStore>,
    token: Arc<auth::TokenFile>,
    http: reqwest::Client,
}

/// What the edge asks of a machine's agent.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Start,
    Stop,
}

impl RemoteMachines {
    /// Asks the machine's agent, in the background, to start or stop it; a failure is logged,
    /// since the edge's calls do not wait for an answer.
    fn act(&self, machine_id: &str, verb: Verb) {
        let (state, token, http, id) = (self.state.clone(), self.token.clone(), self.http.clone(), machine_id.to_string());
        tokio::spawn(async move {
            let machines = state.machines().await.unwrap_or_default();
            let Some(machine) = machines.iter().find(|m| m.id == id) else {
                return;
            };
            let hosts = state.hosts().await.unwrap_or_default();
            let Some(host) = hosts.iter().find(|h| h.name == machine.host) else {
                return tracing::warn!(machine = %id, host = %machine.host, "no record of the machine's host");
            };
            let agent = colo_agent::client::AgentClient::new(&host.addr, token.current(), http);
            let done = match verb {
                Verb::Start => agent.start(machine.app.as_str(), &id).await,
                Verb::Stop => agent.stop(machine.app.as_str(), &id).await,
            };
            if let Err(e) = done {
                tracing::warn!(machine = %id, error = %e, ?verb, "agent refused or unreachable");
            }
        });
    }
}

impl colo_edge::Machines for RemoteMachines {
    fn start(&self, machine_id: &str) {
        self.act(machine_id, Verb::Start);
    }

    fn stop(&self, machine_id: &str) {
        self.act(machine_id, Verb::Stop);
    }
}

async fn serve_until_signal(listener: tokio::net::TcpListener, app: axum::Router, tls: Option<Arc<rustls::ServerConfig>>) {
    if let Some(config) = tls {
        return crate::tls::serve(listener, app, config, shutdown_signal()).await;
    }
    let served = axum::serve(listener.tap_io(edge_workers::no_delay), app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "API server");
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
