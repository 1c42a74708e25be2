//! Control: apps and deployments. A deploy records the app and its pinned model revision;
//! reconciliation then asks agents for the machines the app needs, carrying out the steps
//! `colo_policy::reconcile` decides. Control never proxies traffic.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
mod deploy;
mod error;
mod gpu;
pub mod hosts;
mod keys;
mod lease;
pub mod placement;
mod reconcile;
mod secret;
pub mod ui;

pub use deploy::{DeployOptions, MAX_MACHINES_PER_APP};
pub use error::{ControlError, NotHealthy, Problem, Problems};
pub use hosts::{HostHandle, Hosts};

use colo_agent::Agent;
use colo_core::{App, AppName, Machine};
use colo_model::ModelFacts;
use colo_state::StateStore;
use colo_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Control {
    pub(crate) state: Arc<dyn StateStore>,
    store: Store,
    hosts: Hosts,
    /// One reconciliation at a time: a rollout waits for machines, and a second pass meanwhile
    /// would count them twice.
    reconciling: tokio::sync::Mutex<()>,
    /// How long a new machine of a rollout may take to become healthy.
    pub rollout_timeout: std::time::Duration,
    /// The planner's facts per `(model, revision)`, read once from the store: placement
    /// needs them on every reconcile pass of an app with a demand.
    facts: Mutex<HashMap<(String, String), ModelFacts>>,
    /// The demand each app's last placement left unmet, to log it when it changes.
    unmet: Mutex<HashMap<AppName, Vec<String>>>,
}

pub(crate) use colo_core::unix_ms as now_ms;

// === impl Control ===

impl Control {
    /// Control over agents in this process (`colo up`).
    pub fn new(state: Arc<dyn StateStore>, store: Store, agents: Vec<Arc<Agent>>) -> Arc<Self> {
        Self::with_hosts(state, store, Hosts::Local(agents))
    }

    /// Control over the agents registered in the shared state, reached with `http` and the
    /// cluster token.
    pub fn remote(state: Arc<dyn StateStore>, store: Store, token: Arc<auth::TokenFile>, http: reqwest::Client) -> Arc<Self> {
        Self::with_hosts(state.clone(), store, Hosts::remote(state, token, http))
    }

    fn with_hosts(state: Arc<dyn StateStore>, store: Store, hosts: Hosts) -> Arc<Self> {
        Arc::new(Self {
            state,
            store,
            hosts,
            reconciling: tokio::sync::Mutex::new(()),
            rollout_timeout: std::time::Duration::from_secs(300),
            facts: Mutex::default(),
            unmet: Mutex::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The host named `host` among `hosts`, which runs machine `machine`.
    fn host_of<'a>(hosts: &'a [Arc<dyn HostHandle>], machine: &str, host: &str) -> Result<&'a Arc<dyn HostHandle>, ControlError> {
        hosts
            .iter()
            .find(|h| h.name() == host)
            .ok_or_else(|| ControlError::MachineHostGone {
                machine: machine.to_string(),
                host: host.to_string(),
            })
    }

    /// Every machine on `hosts`.
    async fn machines_on(hosts: &[Arc<dyn HostHandle>]) -> Result<Vec<Machine>, ControlError> {
        let mut all = Vec::new();
        for host in hosts {
            all.extend(host.machines().await?);
        }
        Ok(all)
    }

    /// The machines of the hosts control drives (for tests and `colo ps`).
    pub async fn agent_machines(&self) -> Vec<colo_core::Machine> {
        match self.hosts.live().await {
            Ok(hosts) => Self::machines_on(&hosts).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn apps(&self) -> Result<Vec<App>, ControlError> {
        Ok(self.state.apps().await?)
    }

    pub async fn app(&self, name: &str) -> Result<App, ControlError> {
        let parsed = AppName::new(name).map_err(|_| ControlError::NoSuchApp(name.to_string()))?;
        self.state
            .app(&parsed)
            .await?
            .ok_or_else(|| ControlError::NoSuchApp(name.to_string()))
    }
}
