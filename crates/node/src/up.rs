//! `colo up`: control, one agent per host and one edge per region in this process, over the
//! embedded state store (a redb file in the data dir). The edges and the API listen before
//! anything is announced; a drain stops the edges accepting and lets the requests in flight
//! finish on machines that still run, and only then are the machines stopped.

mod layout;

use crate::config::UpConfig;
use crate::error::NodeError;
use crate::machines::AgentMachines;
use crate::run_file::RunInfo;
use colo_agent::Agent;
use colo_control::{auth, Control};
use colo_edge::{serve, Edge};
use colo_state::{Embedded, StateStore};
use colo_store::{HostCache, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the API gets to finish its requests once the machines are stopped.
const API_GRACE: Duration = Duration::from_secs(2);

/// A running `colo up`.
pub struct Running {
    /// Where the control and agent API listens.
    pub api_addr: SocketAddr,
    /// Each edge's region and address, the first one at the configured `edge_addr`.
    pub edges: Vec<(String, SocketAddr)>,
    /// `https` when the edges serve TLS, else `http`.
    pub edge_scheme: &'static str,
    /// Where the first host's cache is served over S3, when asked for.
    pub s3_addr: Option<SocketAddr>,
    /// The model store's URL.
    pub store_url: String,
    /// The data dir, resolved.
    pub data_dir: PathBuf,
    agents: Vec<Arc<Agent>>,
    stop: watch::Sender<bool>,
    edge_workers: Vec<serve::Workers>,
    api_server: JoinHandle<()>,
    run_file: PathBuf,
    drain_timeout: Duration,
}

/// How a drain went.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    /// Whether every request in flight finished within the drain timeout.
    pub complete: bool,
    /// How long the drain took.
    pub took: Duration,
}

/// Starts everything `config` describes and returns once it serves; the run file is written
/// last, so a command that finds it finds everything serving.
pub async fn up(config: UpConfig) -> Result<Running, NodeError> {
    config.validate()?;
    // Certificates that do not load stop the start before anything runs.
    let tls = config.edge.start_tls()?;
    std::fs::create_dir_all(&config.data_dir).map_err(NodeError::io(format!("creating data dir {}", config.data_dir.display())))?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .map_err(NodeError::io(format!("resolving data dir {}", config.data_dir.display())))?;
    let store_url = config.store.clone().unwrap_or_else(|| data_dir.join("store").display().to_string());
    let store = Store::open(&store_url)?;
    let state: Arc<dyn StateStore> = Arc::new(Embedded::open(&data_dir.join("state.redb"))?);
    let token = auth::load_or_create_token(&data_dir).map_err(NodeError::io("creating the API token"))?;

    let layout = layout::plan(&config, &data_dir);
    let agents = start_agents(&config, layout.hosts, &state, &store);
    let control = Control::new(state.clone(), store.clone(), agents.clone());

    let mut edge_sockets = Vec::new();
    for (region, addr) in layout.edges {
        edge_sockets.push((region, serve::bind(addr, config.edge.workers)?));
    }
    let api_listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(NodeError::io(format!("binding the API to {}", config.api_addr)))?;
    let api_addr = api_listener.local_addr().map_err(NodeError::io("reading the API's address"))?;

    // Hosts of one region pull from each other's caches before the store.
    crate::peers::set_in_process(&agents, api_addr, &token, &config.peers);
    for agent in &agents {
        agent.recover().await?;
    }
    let s3_addr = match (config.s3_addr, agents.first()) {
        (Some(addr), Some(first)) => Some(crate::s3::serve_cache(addr, first, &token).await?),
        _ => None,
    };
    for app in control.apps().await? {
        if let Err(e) = control.reconcile(&app).await {
            tracing::warn!(app = %app.name, error = %e, "reconciling at start");
        }
    }

    let routes = colo_edge::follow_state(state.clone()).await;
    let machines: Arc<dyn colo_edge::Machines> = Arc::new(AgentMachines(agents.clone()));
    // The edge's /metrics and /colo/* want the API token, as `colo edge`'s want the cluster
    // token: an edge on a public address must not show its routes and load to anyone.
    let admin = {
        let token_path = data_dir.join(auth::TOKEN_FILE);
        let token = auth::TokenFile::open(&token_path).map_err(NodeError::io(format!("reading {}", token_path.display())))?;
        colo_edge::AdminCheck(Arc::new(move |presented: &str| auth::same(presented, &token.current())))
    };
    let (stop, stop_rx) = watch::channel(false);
    let drain_timeout = config.edge.drain_timeout();
    let mut edges = Vec::new();
    let mut edge_handles = Vec::new();
    let mut edge_workers = Vec::new();
    for (region, sockets) in edge_sockets {
        let mut edge_config = config.edge.edge_config(&region, layout.inter_region_delay, Some(admin.clone()));
        edge_config.tls = tls.clone();
        let edge = Edge::new(edge_config, routes.clone()).with_machines(machines.clone());
        // Each edge stops the idle machines of its own region.
        edge.spawn_scaling();
        edge.spawn_rtt_probe();
        edge.spawn_load_scrape();
        edges.push((region, sockets.addr()));
        edge_handles.push(edge.clone());
        edge_workers.push(serve::spawn(sockets, edge, stop_rx.clone(), drain_timeout)?);
    }
    // The dashboard's traffic figures: this process's edges' counters.
    let traffic: colo_control::ui::EdgeMetrics = Arc::new(move || edge_handles.iter().map(|e| e.traffic()).collect());
    let api = api_router(control, &agents, &data_dir, state, Some(traffic))?;
    let api_server = crate::api::spawn(api_listener, api, None, stop_rx);

    let scheme = config.edge.scheme();
    let run_file = RunInfo {
        api: format!("http://{api_addr}"),
        edge: edges.first().map(|(_, addr)| format!("{scheme}://{addr}")).unwrap_or_default(),
        edges: edges
            .iter()
            .map(|(region, addr)| (region.clone(), format!("{scheme}://{addr}")))
            .collect(),
        store: store_url.clone(),
        pid: std::process::id(),
        tls_ca: None,
    }
    .write(&data_dir)
    .map_err(NodeError::io("writing the run file"))?;
    Ok(Running {
        api_addr,
        edges,
        edge_scheme: scheme,
        s3_addr,
        store_url,
        data_dir,
        agents,
        stop,
        edge_workers,
        api_server,
        run_file,
        drain_timeout,
    })
}

/// Control's and the agents' API, for holders of the API token or an app's deploy token.
fn api_router(
    control: Arc<Control>,
    agents: &[Arc<Agent>],
    data_dir: &std::path::Path,
    state: Arc<dyn StateStore>,
    traffic: Option<colo_control::ui::EdgeMetrics>,
) -> Result<axum::Router, NodeError> {
    let token_path = data_dir.join(auth::TOKEN_FILE);
    let access = auth::Access {
        token: auth::TokenFile::open(&token_path).map_err(NodeError::io(format!("reading {}", token_path.display())))?,
        state,
    };
    Ok(colo_control::api::router(control.clone())
        .merge(colo_control::ui::data_router(control, traffic, data_dir.join("sims")))
        .merge(colo_agent::api::router(agents.to_vec()))
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), auth::require_access))
        // The dashboard's pages hold no data: they load without the token and ask for it.
        .merge(colo_control::ui::assets_router()))
}

/// One agent per planned host, each with its own cache, all running `config.engine`.
fn start_agents(config: &UpConfig, hosts: Vec<layout::HostPlan>, state: &Arc<dyn StateStore>, store: &Store) -> Vec<Arc<Agent>> {
    hosts
        .into_iter()
        .map(|host| {
            let cache = HostCache::with_capacity(host.dir.join("cache"), config.cache_bytes());
            let agent_config = config.engine.agent_config(
                host.name,
                host.region,
                host.dir,
                config.health_interval_secs,
                std::net::Ipv4Addr::LOCALHOST.into(),
                // Every edge is in this process, engines on loopback: no forwarder.
                None,
            );
            Agent::new(agent_config, state.clone(), store.clone(), cache, host.devices)
        })
        .collect()
}

// === impl Running ===

impl Running {
    /// The agents of this process, one per host.
    pub fn agents(&self) -> &[Arc<Agent>] {
        &self.agents
    }

    /// The drain timeout the edges were given.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Stops the edges and the API accepting, removes the run file, and waits until the edges'
    /// requests in flight have finished, or the drain timeout has passed. Machines keep running.
    pub async fn drain(&mut self) -> Drain {
        let started = tokio::time::Instant::now();
        let _ = self.stop.send(true);
        crate::run_file::remove(&self.run_file);
        let mut workers = std::mem::take(&mut self.edge_workers);
        let drained = tokio::time::timeout(self.drain_timeout, async {
            for edge in &mut workers {
                edge.finished().await;
            }
        })
        .await;
        Drain {
            complete: drained.is_ok(),
            took: started.elapsed(),
        }
    }

    /// Drains (unless that was done), stops every machine, and gives the API a moment to finish.
    pub async fn shutdown(mut self) {
        if !*self.stop.borrow() {
            self.drain().await;
        }
        for agent in &self.agents {
            agent.shutdown().await;
        }
        let _ = tokio::time::timeout(API_GRACE, self.api_server).await;
    }
}
