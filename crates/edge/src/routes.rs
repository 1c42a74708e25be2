//! The route table: for each app, the machines that can take requests now. Rebuilt from the
//! state store whenever it changes, and published to request handlers through a watch channel.

use colo_core::{App, Machine, MachineState};
use colo_state::StateStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    pub apps: BTreeMap<String, AppRoutes>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppRoutes {
    /// Started machines with an address, in id order.
    pub machines: Vec<Endpoint>,
    /// Machines of the app that are not started yet but are meant to be.
    pub pending: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub machine_id: String,
    pub addr: String,
    pub region: String,
}

// === impl RouteTable ===

impl RouteTable {
    pub fn build(apps: &[App], machines: &[Machine]) -> Self {
        let mut table = RouteTable::default();
        for app in apps {
            table.apps.insert(app.name.to_string(), AppRoutes::default());
        }
        for machine in machines {
            let Some(routes) = table.apps.get_mut(machine.app.as_str()) else {
                continue;
            };
            match (machine.state, &machine.addr) {
                (MachineState::Started, Some(addr)) => routes.machines.push(Endpoint {
                    machine_id: machine.id.clone(),
                    addr: addr.clone(),
                    region: machine.region.clone(),
                }),
                _ if machine.desired == MachineState::Started && machine.state != MachineState::Failed => routes.pending += 1,
                _ => {}
            }
        }
        for routes in table.apps.values_mut() {
            routes.machines.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
        }
        table
    }

    pub fn app_names(&self) -> Vec<&str> {
        self.apps.keys().map(String::as_str).collect()
    }
}

/// Keeps a route table in step with the state store. The last table stays in force if a read
/// fails, so the edge keeps serving what it knew.
pub async fn follow_state(state: Arc<dyn StateStore>) -> watch::Receiver<Arc<RouteTable>> {
    let initial = read(&*state).await.unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(initial));
    let mut changes = state.changes();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            match read(&*state).await {
                Ok(table) => {
                    tx.send_if_modified(|current| {
                        if **current == table {
                            return false;
                        }
                        *current = Arc::new(table);
                        true
                    });
                }
                Err(e) => tracing::warn!(error = %e, "reading state; keeping the last route table"),
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

async fn read(state: &dyn StateStore) -> Result<RouteTable, colo_state::StateError> {
    Ok(RouteTable::build(&state.apps().await?, &state.machines().await?))
}
