//! `colo control` as a daemon: apps, deploys and reconciliation over NATS, reaching agents over
//! their HTTP APIs with the cluster token, which it creates in its data dir.

use crate::config::ControlConfig;
use crate::error::NodeError;
use crate::run_file::RunInfo;
use colo_control::{auth, Control};
use colo_state::StateStore;
use colo_store::Store;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running control daemon.
pub struct RunningControl {
    /// Base URL of its API (`https://` when it serves TLS).
    pub api_url: String,
    /// The cluster token's file, for agents and edges to be given.
    pub token_file: PathBuf,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    run_file: PathBuf,
}

/// Connects to NATS, starts the lease watch and serves control's API; returns once it listens.
pub async fn control(config: ControlConfig) -> Result<RunningControl, NodeError> {
    config.validate()?;
    let (nats, data_dir) = crate::nats::connect(&config.nats, &config.data_dir, "colo-control").await?;
    let store = Store::open(&config.store)?;
    auth::load_or_create_token(&data_dir).map_err(NodeError::io("creating the cluster token"))?;
    let token_file = data_dir.join(auth::TOKEN_FILE);
    let open_token = || auth::TokenFile::open(&token_file).map_err(NodeError::io(format!("reading {}", token_file.display())));
    let state: Arc<dyn StateStore> = nats.clone();
    let tls = config.tls.server()?;
    let control = Control::remote(state.clone(), store, Arc::new(open_token()?), config.tls.client()?);
    let reachable = {
        let nats = nats.clone();
        Arc::new(move || nats.connected()) as Arc<dyn Fn() -> bool + Send + Sync>
    };
    control.spawn_lease_watch(reachable, Duration::from_secs(config.reconcile_every_secs));
    let access = auth::Access {
        token: open_token()?,
        state,
    };
    // The edges are other processes: the dashboard shows what they publish.
    let board = Arc::new(colo_control::ui::TrafficBoard::default());
    {
        let board = board.clone();
        colo_edge::gossip::collect_traffic(Arc::new(crate::nats::NatsBus(nats.clone())), move |subject, figures| {
            board.note(subject, figures)
        });
    }
    let traffic: colo_control::ui::EdgeMetrics = Arc::new(move || board.read());
    let api = colo_control::api::router(control.clone())
        .merge(colo_control::api::machines_router(control.clone()))
        .merge(colo_control::ui::data_router(control, Some(traffic), data_dir.join("sims")))
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), auth::require_access))
        // The dashboard's pages hold no data: they load without the token and ask for it.
        .merge(colo_control::ui::assets_router());
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(NodeError::io(format!("binding control's API to {}", config.api_addr)))?;
    let api_addr = listener.local_addr().map_err(NodeError::io("reading the API's address"))?;
    let api_url = format!("{}://{api_addr}", config.tls.scheme());
    let run_file = RunInfo {
        api: api_url.clone(),
        tls_ca: config.tls.ca.as_ref().map(|p| p.display().to_string()),
        store: config.store.clone(),
        pid: std::process::id(),
        ..RunInfo::default()
    }
    .write(&data_dir)
    .map_err(NodeError::io("writing the run file"))?;
    let (stop, stop_rx) = watch::channel(false);
    let server = crate::api::spawn(listener, api, tls, stop_rx);
    Ok(RunningControl {
        api_url,
        token_file,
        stop,
        server,
        run_file,
    })
}

// === impl RunningControl ===

impl RunningControl {
    /// Stops the API (plain HTTP lets the requests in flight finish) and removes the run file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        crate::run_file::remove(&self.run_file);
    }
}
