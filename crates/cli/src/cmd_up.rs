//! `colo up`: control, one agent and one edge in a single process.

use crate::client::{RunInfo, RUN_FILE};
use crate::{edge_workers, Common};
use anyhow::Context;
use axum::serve::ListenerExt;
use colo_agent::{discover_devices, Agent, AgentConfig, EngineCommand};
use colo_control::{auth, Control};
use colo_edge::{Edge, EdgeConfig};
use colo_state::{Embedded, StateStore};
use colo_store::{HostCache, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// On SIGTERM, seconds in-flight requests get to finish before machines are stopped.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Threads serving each edge, each with its own runtime and socket (0: one per core).
    #[arg(long, default_value_t = 0)]
    edge_workers: usize,
    /// Seconds between health checks of each started engine.
    #[arg(long, default_value_t = 2.0)]
    health_interval: f64,
    /// Several hosts and regions on this one machine: a fleet.toml with [[hosts]] (name,
    /// region, cpu_slots), optional [[edges]] (region, addr) and inter_region_delay_ms.
    #[arg(long)]
    fleet: Option<std::path::PathBuf>,
    /// Serve the (first) host's model cache as a read-only S3 endpoint here: bucket `colo`,
    /// keys `<model>/<revision or latest>/<file>`, access key `colo`, the API token as secret.
    #[arg(long)]
    s3_addr: Option<SocketAddr>,
    /// GB (10^9 bytes) each host's model cache may hold; unused models are evicted to make room.
    /// Unlimited when absent.
    #[arg(long)]
    cache_gb: Option<f64>,
}

/// One host this process runs an agent for.
struct HostPlan {
    name: String,
    region: String,
    /// Machine logs go under it, the host cache in `cache/` beside them.
    dir: std::path::PathBuf,
    devices: Vec<colo_core::Device>,
}

/// The hosts and edges of a run: one of each, or a fleet file's.
fn layout(args: &UpArgs, data_dir: &std::path::Path) -> anyhow::Result<(Vec<HostPlan>, Vec<(String, SocketAddr)>, Duration)> {
    let Some(path) = &args.fleet else {
        let name = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let host = HostPlan {
            name,
            region: args.region.clone(),
            dir: data_dir.to_path_buf(),
            devices: discover_devices(args.cpu_slots),
        };
        return Ok((vec![host], vec![(args.region.clone(), args.edge_addr)], Duration::ZERO));
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let fleet: colo_policy::Fleet = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let problems = fleet.validate_hosts(&colo_core::Catalogue::builtin(), &colo_core::Regions::builtin());
    if !problems.is_empty() {
        anyhow::bail!("{}: {}", path.display(), problems.join("; "));
    }
    let hosts = fleet
        .hosts
        .iter()
        .map(|h| HostPlan {
            name: h.name.clone(),
            region: h.region.clone(),
            dir: data_dir.join("hosts").join(&h.name),
            devices: (0..h.cpu_slots.unwrap_or(2)).map(|slot| colo_core::Device::Cpu { slot }).collect(),
        })
        .collect::<Vec<_>>();
    let mut edges = Vec::new();
    let any_port = SocketAddr::new(args.edge_addr.ip(), 0);
    if fleet.edges.is_empty() {
        let mut regions: Vec<&str> = hosts.iter().map(|h| h.region.as_str()).collect();
        regions.dedup();
        for (i, region) in regions.into_iter().enumerate() {
            edges.push((region.to_string(), if i == 0 { args.edge_addr } else { any_port }));
        }
    } else {
        for edge in &fleet.edges {
            // validate_hosts checked that addresses parse.
            let addr = edge.addr.as_deref().map_or(Ok(any_port), str::parse)?;
            edges.push((edge.region.clone(), addr));
        }
    }
    Ok((hosts, edges, Duration::from_millis(fleet.inter_region_delay_ms)))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.soft_limit == 0 || args.hard_limit < args.soft_limit {
        anyhow::bail!(
            "--soft-limit must be at least 1 and --hard-limit at least --soft-limit (got {} and {})",
            args.soft_limit,
            args.hard_limit
        );
    }
    let data_dir = &args.common.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let store_url = args.store.clone().unwrap_or_else(|| data_dir.join("store").display().to_string());
    let store = Store::open(&store_url)?;
    let state: Arc<dyn StateStore> = Arc::new(Embedded::open(&data_dir.join("state.redb"))?);
    let token = auth::load_or_create_token(&data_dir).context("creating the API token")?;

    let (hosts, edge_plans, inter_region_delay) = layout(&args, &data_dir)?;
    if !(0.05..=60.0).contains(&args.health_interval) {
        anyhow::bail!(
            "--health-interval must be between 0.05 and 60 seconds (got {})",
            args.health_interval
        );
    }
    let program = std::env::current_exe().context("finding the colo binary")?;
    let agents: Vec<Arc<Agent>> = hosts
        .into_iter()
        .map(|host| {
            let cache = HostCache::with_capacity(host.dir.join("cache"), args.cache_gb.map(|gb| (gb * 1e9) as u64));
            Agent::new(
                AgentConfig {
                    host: host.name,
                    region: host.region,
                    data_dir: host.dir,
                    engine: EngineCommand {
                        program: program.clone(),
                        args: vec!["engine".into(), "serve".into()],
                    },
                    start_timeout: Duration::from_secs(300),
                    stop_grace: Duration::from_secs(2),
                    health_interval: Duration::from_secs_f64(args.health_interval),
                    engine_host: std::net::Ipv4Addr::LOCALHOST.into(),
                },
                state.clone(),
                store.clone(),
                cache,
                host.devices,
            )
        })
        .collect();
    let control = Control::new(state.clone(), store.clone(), agents.clone());

    let workers = match args.edge_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut edge_listeners = Vec::new();
    for (region, addr) in &edge_plans {
        let sockets = edge_workers::bind(*addr, workers).with_context(|| format!("binding the {region} edge to {addr}"))?;
        edge_listeners.push((region.clone(), sockets));
    }
    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", args.api_addr))?;
    let api_addr = api_listener.local_addr()?;

    // Hosts of one region pull from each other's caches before the store; with a fleet file
    // they all answer on this process's API, each under /v1/hosts/<name>.
    for agent in &agents {
        let urls = agents
            .iter()
            .filter(|peer| peer.region() == agent.region() && peer.host() != agent.host())
            .map(|peer| format!("http://{api_addr}/v1/hosts/{}", peer.host()))
            .collect();
        agent.set_peers(colo_agent::PeerConfig {
            urls,
            token: Some(token.clone()),
            client: None,
        });
    }
    for agent in &agents {
        agent.recover().await?;
    }
    let s3_line = match args.s3_addr {
        Some(addr) => format!(
            "\n  s3     http://{}  (bucket colo, access key colo, secret: the api-token)",
            serve_cache_s3(addr, &agents[0], &token).await?
        ),
        None => String::new(),
    };
    for app in control.apps().await? {
        if let Err(e) = control.reconcile(&app).await {
            tracing::warn!(app = %app.name, error = %e, "reconciling at start");
        }
    }

    let routes = colo_edge::follow_state(state.clone()).await;
    let mut edges = Vec::new();
    for (region, listener) in edge_listeners {
        let edge = Edge::new(
            EdgeConfig {
                domain: args.domain.clone(),
                max_body: args.max_body,
                region: region.clone(),
                route: colo_policy::RouteParams {
                    soft_limit: args.soft_limit,
                    hard_limit: args.hard_limit,
                    ..Default::default()
                },
                hold_timeout: Duration::from_secs(args.hold_timeout),
                max_held: args.max_held,
                sse_keepalive: Duration::from_millis(args.sse_keepalive_ms),
                inter_region_delay,
                ..EdgeConfig::default()
            },
            routes.clone(),
        );
        let edge = edge.with_machines(Arc::new(AgentMachines(agents.clone())));
        // Each edge stops the idle machines of its own region.
        edge.spawn_scaling();
        edge.spawn_rtt_probe();
        edges.push((region, listener, edge));
    }
    let api = colo_control::api::router(control.clone())
        .merge(colo_agent::api::router(agents.clone()))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth::Access {
                token: auth::TokenFile::open(&data_dir.join(auth::TOKEN_FILE))?,
                state: state.clone(),
            }),
            auth::require_access,
        ));

    let edge_urls: Vec<(String, String)> = edges
        .iter()
        .map(|(region, sockets, _)| (region.clone(), format!("http://{}", sockets.addr)))
        .collect();
    let run_info = RunInfo {
        api: format!("http://{api_addr}"),
        edge: edge_urls[0].1.clone(),
        edges: edge_urls.iter().cloned().collect(),
        store: store_url.clone(),
        pid: std::process::id(),
        tls_ca: None,
    };
    let run_path = data_dir.join(RUN_FILE);
    let tmp = data_dir.join(format!("{RUN_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&run_info)?)?;
    std::fs::rename(&tmp, &run_path)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut edge_servers = Vec::new();
    for (_, sockets, edge) in edges {
        edge_servers.push(edge_workers::serve(
            sockets,
            edge,
            stop_rx.clone(),
            Duration::from_secs(args.drain_timeout),
        )?);
    }
    let api_server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(api_listener.tap_io(edge_workers::no_delay), api)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    };
    let edge_lines: Vec<String> = edge_urls
        .iter()
        .map(|(region, url)| format!("  edge   {url}   region {region}"))
        .collect();
    let devices: Vec<String> = agents
        .iter()
        .map(|a| {
            let list = a.devices().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            format!("{} ({}): {list}", a.host(), a.region())
        })
        .collect();
    eprintln!(
        "colo is up\n{}   (OpenAI API: /v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions)\n  api    http://{api_addr}\n  store  {store_url}\n  data   {}\n  hosts  {}{s3_line}",
        edge_lines.join("\n"),
        data_dir.display(),
        devices.join("; ")
    );

    crate::cmd_daemon::shutdown_signal().await;
    // Drain: the edges stop accepting and in-flight requests get up to the drain timeout to
    // finish on machines that still run; only then are the machines stopped.
    eprintln!("colo: draining (up to {}s)", args.drain_timeout);
    let drain_started = std::time::Instant::now();
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(&run_path);
    let drained = tokio::time::timeout(Duration::from_secs(args.drain_timeout), async {
        for mut server in edge_servers {
            // Closes when the edge's last worker has finished.
            let _ = server.recv().await;
        }
    })
    .await;
    match drained {
        Ok(()) => eprintln!("colo: drained in {:.2}s", drain_started.elapsed().as_secs_f64()),
        Err(_) => eprintln!("colo: drain timeout passed with requests still in flight"),
    }
    eprintln!("colo: stopping machines");
    for agent in &agents {
        agent.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), api_server).await;
    Ok(())
}

/// The edges' handle on this process's agents: wake and stop machines without waiting.
struct AgentMachines(Vec<Arc<Agent>>);

impl AgentMachines {
    fn act(&self, machine_id: &str, start: bool) {
        let (agents, id) = (self.0.clone(), machine_id.to_string());
        tokio::spawn(async move {
            for agent in agents {
                if agent.machine(&id).await.is_err() {
                    continue;
                }
                let done = if start { agent.start(&id).await } else { agent.stop(&id).await };
                if let Err(e) = done {
                    tracing::warn!(machine = %id, error = %e, start, "waking or stopping a machine");
                }
                return;
            }
        });
    }
}

impl colo_edge::Machines for AgentMachines {
    fn start(&self, machine_id: &str) {
        self.act(machine_id, true);
    }

    fn stop(&self, machine_id: &str) {
        self.act(machine_id, false);
    }
}

/// Serves `agent`'s host cache as a read-only S3 endpoint on `addr`; returns where it listens.
pub(crate) async fn serve_cache_s3(addr: SocketAddr, agent: &Agent, secret: &str) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the S3 endpoint to {addr}"))?;
    let bound = listener.local_addr()?;
    let config = colo_store::S3Config {
        bucket: "colo".into(),
        access_key: "colo".into(),
        secret_key: secret.to_string(),
    };
    let (cache, store) = (agent.cache().clone(), agent.store().clone());
    tokio::spawn(async move {
        if let Err(e) = colo_store::serve_s3(listener, cache, store, colo_store::HydrateOptions::default(), config).await {
            tracing::error!(error = %e, "S3 endpoint stopped");
        }
    });
    Ok(bound)
}
