//! Control: apps and deployments. A deploy records the app and its pinned model revision;
//! reconciliation then asks agents for the machines the app needs. Control never proxies
//! traffic.

pub mod api;
pub mod auth;

use colo_agent::Agent;
use colo_core::{App, AppName, MachineState};
use colo_state::StateStore;
use colo_store::Store;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("app {0:?} not found")]
    NoSuchApp(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] colo_store::StoreError),
    #[error(transparent)]
    State(#[from] colo_state::StateError),
    #[error(transparent)]
    Agent(#[from] colo_agent::AgentError),
}

/// Machines per app at most, to keep a typo from leasing a whole fleet.
pub const MAX_MACHINES_PER_APP: u32 = 64;

pub struct Control {
    state: Arc<dyn StateStore>,
    store: Store,
    agent: Arc<Agent>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// === impl Control ===

impl Control {
    pub fn new(state: Arc<dyn StateStore>, store: Store, agent: Arc<Agent>) -> Arc<Self> {
        Arc::new(Self { state, store, agent })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records `app` serving the latest revision of `model` on `machines` machines, then
    /// reconciles. Returns the app as recorded.
    pub async fn deploy(&self, app: &str, model: &str, machines: u32) -> Result<App, ControlError> {
        let name = AppName::new(app).map_err(|e| ControlError::Invalid {
            field: "app",
            reason: e.to_string(),
        })?;
        let model = AppName::new(model).map_err(|e| ControlError::Invalid {
            field: "model",
            reason: e.to_string(),
        })?;
        if !(1..=MAX_MACHINES_PER_APP).contains(&machines) {
            return Err(ControlError::Invalid {
                field: "machines",
                reason: format!("{machines} is outside 1 to {MAX_MACHINES_PER_APP}"),
            });
        }
        let manifest = self.store.manifest(model.as_str()).await?;
        let app = App {
            name,
            model,
            revision: manifest.revision,
            machines,
            deployed_at_ms: now_ms(),
        };
        self.state.put_app(&app).await?;
        self.reconcile(&app).await?;
        Ok(app)
    }

    /// Removes an app and destroys its machines.
    pub async fn destroy_app(&self, app: &str) -> Result<(), ControlError> {
        let name = AppName::new(app).map_err(|e| ControlError::Invalid {
            field: "app",
            reason: e.to_string(),
        })?;
        if !self.state.delete_app(&name).await? {
            return Err(ControlError::NoSuchApp(app.to_string()));
        }
        for machine in self.agent.machines().await? {
            if machine.app == name && machine.state != MachineState::Destroyed {
                self.agent.destroy(&machine.id).await?;
            }
        }
        Ok(())
    }

    /// Brings the app's machines in line with its record: machines of another revision are
    /// destroyed, missing ones created, surplus ones destroyed, stopped ones started.
    pub async fn reconcile(&self, app: &App) -> Result<(), ControlError> {
        let mut live = Vec::new();
        for machine in self.agent.machines().await? {
            if machine.app != app.name || machine.state == MachineState::Destroyed {
                continue;
            }
            if machine.revision != app.revision || machine.model != app.model {
                self.agent.destroy(&machine.id).await?;
            } else {
                live.push(machine);
            }
        }
        live.sort_by_key(|m| (m.state != MachineState::Started, m.id.clone()));
        let want = app.machines as usize;
        for surplus in live.iter().skip(want) {
            self.agent.destroy(&surplus.id).await?;
        }
        for machine in live.iter().take(want) {
            if machine.desired != MachineState::Started || machine.state == MachineState::Failed {
                self.agent.start(&machine.id).await?;
            }
        }
        for _ in live.len()..want {
            self.agent.create_machine(&app.name, &app.model, &app.revision).await?;
        }
        Ok(())
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
