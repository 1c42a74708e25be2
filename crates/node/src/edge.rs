//! `colo edge` as a daemon: one region's edge over NATS. It follows the state's route table,
//! wakes and stops machines through their agents' APIs, shares engine load reports with the
//! other regions' edges over NATS, and asks the cluster token of callers of its admin endpoints.

use crate::config::EdgeDaemonConfig;
use crate::error::NodeError;
use crate::machines::RemoteMachines;
use crate::nats::NatsBus;
use crate::run_file::RunInfo;
use colo_control::auth;
use colo_edge::{serve, AdminCheck, Edge};
use colo_state::StateStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A running edge daemon.
pub struct RunningEdge {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The region it serves.
    pub region: String,
    /// `https` when it serves TLS, else `http`.
    pub scheme: &'static str,
    stop: watch::Sender<bool>,
    workers: serve::Workers,
    run_file: PathBuf,
    drain_timeout: Duration,
}

/// Connects to NATS, builds the edge and serves it; returns once it listens.
pub async fn edge(config: EdgeDaemonConfig) -> Result<RunningEdge, NodeError> {
    config.validate()?;
    let tls = config.edge.start_tls()?;
    let client_name = format!("colo-edge-{}", config.region);
    let (nats, data_dir) = crate::nats::connect(&config.nats, &config.data_dir, &client_name).await?;
    let token = auth::TokenFile::open(&config.token_file).map_err(NodeError::io(format!("reading {}", config.token_file.display())))?;
    let token = Arc::new(token);
    let state: Arc<dyn StateStore> = nats.clone();
    let routes = colo_edge::follow_state(state.clone()).await;
    let admin = {
        let token = token.clone();
        AdminCheck(Arc::new(move |presented: &str| auth::same(presented, &token.current())))
    };
    let inter_region_delay = Duration::from_millis(config.inter_region_delay_ms);
    let mut edge_config = config.edge.edge_config(&config.region, inter_region_delay, Some(admin));
    // The agents' forwarders admit connections that open with the machine key.
    edge_config.machine_key = Some(auth::machine_key(&token.current()));
    edge_config.tls = tls;
    let machines = RemoteMachines {
        state,
        token,
        http: crate::tls::client(config.tls_ca.as_deref())?,
    };
    let edge = Edge::new(edge_config, routes).with_machines(Arc::new(machines));
    edge.spawn_scaling();
    edge.spawn_rtt_probe();
    edge.spawn_load_scrape();
    let bus = Arc::new(NatsBus(nats));
    colo_edge::gossip::share_load(edge.clone(), bus.clone(), &config.region);
    // The dashboard's traffic figures; the id tells this edge from others of its region.
    let id = format!("{:08x}", rand::random::<u32>());
    colo_edge::gossip::share_traffic(edge.clone(), bus, &config.region, &id);

    let sockets = serve::bind(config.addr, config.edge.workers)?;
    let addr = sockets.addr();
    let url = format!("{}://{addr}", config.edge.scheme());
    let run_file = RunInfo {
        edge: url.clone(),
        edges: [(config.region.clone(), url)].into_iter().collect(),
        pid: std::process::id(),
        ..RunInfo::default()
    }
    .write(&data_dir)
    .map_err(NodeError::io("writing the run file"))?;
    let (stop, stop_rx) = watch::channel(false);
    let drain_timeout = config.edge.drain_timeout();
    let workers = serve::spawn(sockets, edge, stop_rx, drain_timeout)?;
    Ok(RunningEdge {
        addr,
        region: config.region,
        scheme: config.edge.scheme(),
        stop,
        workers,
        run_file,
        drain_timeout,
    })
}

// === impl RunningEdge ===

impl RunningEdge {
    /// Stops accepting, removes the run file, and waits until the requests in flight have
    /// finished or the drain timeout has passed; returns whether they all finished.
    pub async fn drain(mut self) -> bool {
        let _ = self.stop.send(true);
        crate::run_file::remove(&self.run_file);
        tokio::time::timeout(self.drain_timeout, self.workers.finished()).await.is_ok()
    }
}
