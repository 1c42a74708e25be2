//! `colo up`: control, one agent and one edge in a single process.

use crate::client::{RunInfo, RUN_FILE};
use crate::Common;
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
    /// GB (10^9 bytes) the host's model cache may hold; unused models are evicted to make room.
    /// Unlimited when absent.
    #[arg(long)]
    cache_gb: Option<f64>,
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

    let devices = discover_devices(args.cpu_slots);
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let agent = Agent::new(
        AgentConfig {
            host,
            region: args.region.clone(),
            data_dir: data_dir.clone(),
            engine: EngineCommand {
                program: std::env::current_exe().context("finding the colo binary")?,
                args: vec!["engine".into(), "serve".into()],
            },
            start_timeout: Duration::from_secs(300),
            health_interval: Duration::from_secs(2),
        },
        state.clone(),
        store.clone(),
        HostCache::with_capacity(data_dir.join("cache"), args.cache_gb.map(|gb| (gb * 1e9) as u64)),
        devices,
    );
    let control = Control::new(state.clone(), store.clone(), agent.clone());

    let edge_listener = tokio::net::TcpListener::bind(args.edge_addr)
        .await
        .with_context(|| format!("binding the edge to {}", args.edge_addr))?;
    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", args.api_addr))?;
    let edge_addr = edge_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    agent.recover().await?;
    for app in control.apps().await? {
        if let Err(e) = control.reconcile(&app).await {
            tracing::warn!(app = %app.name, error = %e, "reconciling at start");
        }
    }

    let routes = colo_edge::follow_state(state.clone()).await;
    let edge = Edge::new(
        EdgeConfig {
            domain: args.domain.clone(),
            max_body: args.max_body,
            region: args.region.clone(),
            route: colo_policy::RouteParams {
                soft_limit: args.soft_limit,
                hard_limit: args.hard_limit,
                ..Default::default()
            },
            hold_timeout: Duration::from_secs(args.hold_timeout),
            ..EdgeConfig::default()
        },
        routes,
    );
    let edge = edge.with_machines(Arc::new(AgentMachines(agent.clone())));
    edge.spawn_autostop();
    let api = colo_control::api::router(control.clone())
        .merge(colo_agent::api::router(agent.clone()))
        .layer(axum::middleware::from_fn_with_state(Arc::new(token), auth::require_token));

    let run_info = RunInfo {
        api: format!("http://{api_addr}"),
        edge: format!("http://{edge_addr}"),
        store: store_url.clone(),
        pid: std::process::id(),
    };
    let run_path = data_dir.join(RUN_FILE);
    let tmp = data_dir.join(format!("{RUN_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&run_info)?)?;
    std::fs::rename(&tmp, &run_path)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let edge_server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(edge_listener.tap_io(no_delay), colo_edge::router(edge))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    };
    let api_server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(api_listener.tap_io(no_delay), api)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    };
    eprintln!(
        "colo is up\n  edge   http://{edge_addr}   (OpenAI API: /v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions)\n  api    http://{api_addr}\n  store  {store_url}\n  data   {}\n  devices {}",
        data_dir.display(),
        agent.devices().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );

    shutdown_signal().await;
    eprintln!("colo: stopping machines");
    agent.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(&run_path);
    // In-flight requests get a moment to finish; the servers do not hold shutdown hostage.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = edge_server.await;
        let _ = api_server.await;
    })
    .await;
    Ok(())
}

async fn shutdown_signal() {
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

/// Sends small writes (one SSE event, one token) at once instead of waiting to coalesce them
/// (Nagle), which with delayed ACKs stalls a stream by tens of milliseconds.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// The edge's handle on this process's agent: wake and stop machines without waiting.
struct AgentMachines(Arc<Agent>);

impl colo_edge::Machines for AgentMachines {
    fn start(&self, machine_id: &str) {
        let (agent, id) = (self.0.clone(), machine_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = agent.start(&id).await {
                tracing::warn!(machine = %id, error = %e, "waking a machine");
            }
        });
    }

    fn stop(&self, machine_id: &str) {
        let (agent, id) = (self.0.clone(), machine_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = agent.stop(&id).await {
                tracing::warn!(machine = %id, error = %e, "stopping an idle machine");
            }
        });
    }
}
