//! The route table: for each app, the machines that can take requests now. Rebuilt from the
//! state store whenever it changes, and published to request handlers through a watch channel.

use colo_core::{App, Machine, MachineState};
use colo_policy::{group_by_region, RegionId, RegionSpan};
use colo_state::StateStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    pub apps: BTreeMap<String, AppRoutes>,
    /// Region codes of every machine in the table; a region's index is its `RegionId`.
    pub regions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppRoutes {
    /// Started machines with an address, grouped by region, in id order within one (shared:
    /// each request holds the one it was sent to).
    pub machines: Vec<Arc<Endpoint>>,
    /// Where each region's machines lie in `machines`.
    pub spans: Vec<RegionSpan>,
    /// Machines of the app that are not started yet but are meant to be.
    pub pending: usize,
    /// The app's own soft and hard limits, where its deploy set them.
    pub limits: (Option<u32>, Option<u32>),
    /// API keys that may call the app; empty: open.
    pub keys: Vec<colo_core::ApiKey>,
    /// Stopped machines the edge may wake when requests wait.
    pub stopped: Vec<Sleeper>,
    /// Idle seconds after which the edge stops a machine, and the machines it keeps started.
    pub autostop: (Option<u64>, u32),
}

/// A stopped machine, with what the wake choice weighs.
#[derive(Clone, Debug, PartialEq)]
pub struct Sleeper {
    pub machine_id: String,
    pub region: String,
    /// Whether its host has run the app's model revision before, so the weights are in its
    /// cache (unless evicted since).
    pub cached: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub machine_id: String,
    pub addr: String,
    pub region: String,
    /// `addr` as the `Host` header of requests sent to it, made once.
    pub host_header: http::HeaderValue,
    /// The `colo-machine` and `colo-region` response headers, made once.
    pub machine_header: http::HeaderValue,
    pub region_header: http::HeaderValue,
    /// Wall-clock ms of the machine's last state change (when it started); 0: unknown.
    pub since_ms: u64,
    /// The phases of the machine's last start, as its agent recorded them.
    pub cold_start: Option<colo_core::ColdStart>,
}

// === impl Endpoint ===

impl Endpoint {
    /// An endpoint for a started machine; `None` when the address or names cannot be used in
    /// a URI or a header.
    pub fn new(machine_id: &str, addr: &str, region: &str) -> Option<Endpoint> {
        Some(Endpoint {
            machine_id: machine_id.to_string(),
            addr: addr.to_string(),
            region: region.to_string(),
            host_header: addr.parse::<http::uri::Authority>().ok()?.as_str().parse().ok()?,
            machine_header: http::HeaderValue::from_str(machine_id).ok()?,
            region_header: http::HeaderValue::from_str(region).ok()?,
            since_ms: 0,
            cold_start: None,
        })
    }
}

// === impl RouteTable ===

impl RouteTable {
    pub fn build(apps: &[App], machines: &[Machine]) -> Self {
        Self::build_with_hosts(apps, machines, &[])
    }

    /// The table, leaving out machines whose host control marked lost (its lease ran out).
    /// The edge does not judge leases itself: after an outage of the state store every
    /// heartbeat it holds looks old, and it must keep serving. Machines of hosts with no record
    /// (one-process colo) count.
    pub fn build_with_hosts(apps: &[App], machines: &[Machine], hosts: &[colo_core::HostRecord]) -> Self {
        let gone: std::collections::HashSet<&str> = hosts.iter().filter(|h| h.lost).map(|h| h.name.as_str()).collect();
        let machines: Vec<&Machine> = machines.iter().filter(|m| !gone.contains(m.host.as_str())).collect();
        let mut table = RouteTable::default();
        for app in apps {
            table.apps.insert(
                app.name.to_string(),
                AppRoutes {
                    limits: (app.soft_limit, app.hard_limit),
                    keys: app.keys.clone(),
                    autostop: (app.autostop_secs, app.min_running),
                    ..Default::default()
                },
            );
        }
        // Hosts that have run a revision hold its weights.
        let warm: std::collections::HashSet<(&str, &str)> = machines
            .iter()
            .copied()
            .filter(|m| m.hydration.is_some() || matches!(m.state, MachineState::Started | MachineState::Stopping | MachineState::Stopped))
            .map(|m| (m.host.as_str(), m.revision.as_str()))
            .collect();
        for machine in machines {
            let Some(routes) = table.apps.get_mut(machine.app.as_str()) else {
                continue;
            };
            match (machine.state, &machine.addr) {
                // Unhealthy, or told to stop (it drains for a grace period): no new requests.
                (MachineState::Started, Some(_)) if !machine.healthy || machine.desired != MachineState::Started => {}
                (MachineState::Started, Some(addr)) => match Endpoint::new(&machine.id, addr, &machine.region) {
                    Some(endpoint) => routes.machines.push(Arc::new(Endpoint {
                        since_ms: machine.updated_at_ms,
                        cold_start: machine.cold_start.clone(),
                        ..endpoint
                    })),
                    None => tracing::warn!(machine = %machine.id, addr, "machine address is not host:port; not routed"),
                },
                _ if machine.desired == MachineState::Started && machine.state != MachineState::Failed => routes.pending += 1,
                (MachineState::Stopped, _) => routes.stopped.push(Sleeper {
                    machine_id: machine.id.clone(),
                    region: machine.region.clone(),
                    cached: warm.contains(&(machine.host.as_str(), machine.revision.as_str())),
                }),
                _ => {}
            }
        }
        table.index_regions();
        table
    }

    /// A table of one app with these started machines (tests and tools).
    pub fn single(app: &str, machines: Vec<Endpoint>) -> Self {
        let mut table = RouteTable::default();
        table.apps.insert(
            app.to_string(),
            AppRoutes {
                machines: machines.into_iter().map(Arc::new).collect(),
                ..Default::default()
            },
        );
        table.index_regions();
        table
    }

    /// Numbers the regions of all machines (started or stopped) and groups each app's started
    /// machines by region.
    fn index_regions(&mut self) {
        let mut regions: Vec<String> = self
            .apps
            .values()
            .flat_map(|r| {
                r.machines
                    .iter()
                    .map(|m| m.region.clone())
                    .chain(r.stopped.iter().map(|m| m.region.clone()))
            })
            .collect();
        regions.sort();
        regions.dedup();
        let region_id = |code: &str| RegionId(regions.iter().position(|r| r == code).unwrap_or(0) as u16);
        for routes in self.apps.values_mut() {
            routes
                .machines
                .sort_by(|a, b| (&a.region, &a.machine_id).cmp(&(&b.region, &b.machine_id)));
            routes.spans = group_by_region(&mut routes.machines, |m| region_id(&m.region));
        }
        self.regions = regions;
    }

    pub fn region_id(&self, code: &str) -> Option<RegionId> {
        self.regions.iter().position(|r| r == code).map(|i| RegionId(i as u16))
    }

    /// Names of the apps anyone may call (those without API keys): what an error or the model
    /// list may show without revealing keyed tenants.
    pub fn app_names(&self) -> Vec<&str> {
        self.apps
            .iter()
            .filter(|(_, routes)| routes.keys.is_empty())
            .map(|(name, _)| name.as_str())
            .collect()
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
    Ok(RouteTable::build_with_hosts(
        &state.apps().await?,
        &state.machines().await?,
        &state.hosts().await?,
    ))
}
