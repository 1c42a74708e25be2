//! `colo agent` as a daemon: one host's devices, machines and cache over NATS. It registers
//! the host with heartbeats, follows the live hosts of its region as cache peers, and serves
//! the machines API (and, when asked, its cache over S3) to holders of the cluster token.

use crate::config::AgentDaemonConfig;
use crate::error::NodeError;
use colo_agent::Agent;
use colo_control::auth;
use colo_state::StateStore;
use colo_store::{HostCache, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running agent daemon.
pub struct RunningAgent {
    /// The host's name.
    pub name: String,
    /// Base URL of its API, as its host record gives it.
    pub api_url: String,
    /// Where its cache is served over S3, when asked for.
    pub s3_addr: Option<SocketAddr>,
    agent: Arc<Agent>,
    stop: watch::Sender<bool>,
    /// Taken when the API has been stopped.
    server: Option<JoinHandle<()>>,
}

/// Opens the host's devices and cache, re-runs the machines meant to run, and serves; returns
/// once the API listens and the heartbeat runs.
pub async fn agent(config: AgentDaemonConfig) -> Result<RunningAgent, NodeError> {
    config.validate()?;
    let name = config.host_name();
    let devices = devices(&config)?;
    let (nats, data_dir) = crate::nats::connect(&config.nats, &config.data_dir, &format!("colo-agent-{name}")).await?;
    let token = auth::TokenFile::open(&config.token_file).map_err(NodeError::io(format!("reading {}", config.token_file.display())))?;
    let token = Arc::new(token);
    let store = Store::open(&config.store)?;
    let state: Arc<dyn StateStore> = nats;
    let agent_config = config.engine.agent_config(
        name.clone(),
        config.region.clone(),
        data_dir.clone(),
        config.health_interval_secs,
        config.engine_host,
        // Engines on loopback behind a forwarder that only edges get through.
        Some(auth::machine_key(&token.current())),
    );
    let cache = HostCache::with_capacity(data_dir.join("cache"), config.cache_bytes());
    let agent = Agent::new(agent_config, state.clone(), store, cache, devices);
    let tls = config.tls.server()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(NodeError::io(format!("binding the agent's API to {}", config.addr)))?;
    let addr = listener.local_addr().map_err(NodeError::io("reading the API's address"))?;
    let api_url = format!("{}://{addr}", config.tls.scheme());
    agent.recover().await?;
    let s3_addr = match config.s3_addr {
        Some(addr) => Some(crate::s3::serve_cache(addr, &agent, &token.current()).await?),
        None => None,
    };
    agent.spawn_heartbeat(api_url.clone(), Duration::from_millis(config.lease_ms));
    crate::peers::spawn_refresh(agent.clone(), state, token.clone(), api_url.clone(), config.tls.client()?);
    let api = colo_agent::api::router(vec![agent.clone()]).layer(axum::middleware::from_fn_with_state(token, auth::require_token));
    let (stop, stop_rx) = watch::channel(false);
    let server = crate::api::spawn(listener, api, tls, stop_rx);
    Ok(RunningAgent {
        name,
        api_url,
        s3_addr,
        agent,
        stop,
        server: Some(server),
    })
}

/// The GPUs the config declares, or else what the host has (NVIDIA GPUs, or CPU slots).
fn devices(config: &AgentDaemonConfig) -> Result<Vec<colo_core::Device>, NodeError> {
    if config.gpus.is_empty() {
        return Ok(colo_agent::discover_devices(config.cpu_slots));
    }
    colo_agent::declared_gpus(&colo_core::Catalogue::builtin(), &config.gpus).map_err(|reason| {
        let mut problems = crate::Problems::default();
        problems.add("gpus", reason);
        NodeError::Invalid(problems)
    })
}

// === impl RunningAgent ===

impl RunningAgent {
    /// The host's agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// Stops the API and waits for it to finish; the machines keep running.
    pub async fn stop_api(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Stops the API (unless that was done) and then every machine of the host.
    pub async fn shutdown(mut self) {
        self.stop_api().await;
        self.agent.shutdown().await;
    }
}
