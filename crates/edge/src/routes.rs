//! The route table: for each app, the machines that can take requests now, and what the scaler
//! needs to know of the others. Rebuilt from the state store whenever it changes, and published
//! to request handlers through a watch channel.
//!
//! Each started machine's [`Endpoint`] carries its own load (the edge's in-flight count and the
//! engine's last report) inline, and the same `Arc<Endpoint>` is handed from one table to the
//! next while the machine's record is unchanged, so that a request reads the load of the
//! machines it looks at, each in one place, and nothing else.

use crate::load::Load;
use colo_core::{App, Machine, MachineState};
use colo_policy::{group_by_region, LoadReport, MachineView, Phase, PrefixKey, RegionId, RegionSpan};
use colo_state::StateStore;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
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
    /// Every machine of the app that is not destroyed, with its phase: what the scaler weighs.
    pub fleet: Vec<FleetMachine>,
    /// Regions with machines of the app that are not started (stopped or starting).
    pub dormant: Vec<RegionId>,
    /// The index in `machines` of each machine, by [`machine_key`].
    pub by_key: HashMap<u64, u32>,
    /// The app's own soft and hard limits, where its deploy set them.
    pub limits: Limits,
    /// API keys that may call the app; empty: open.
    pub keys: Vec<colo_core::ApiKey>,
    /// When idle machines are stopped.
    pub autostop: Autostop,
    /// How the pick chooses among the app's machines, where its deploy said.
    pub route: Option<colo_policy::RouteMode>,
    /// The weights of its score, where its deploy set them.
    pub weights: Option<colo_core::RouteWeights>,
    /// The engine the app's machines run, which says where their load comes from.
    pub engine: colo_core::EngineKind,
    /// The app brings its own engine command: colo knows nothing of what it supports.
    pub own_engine: bool,
    /// Machines of the app taken out of routing through the machines API (cordoned).
    pub cordoned: u32,
}

/// Per-machine request limits an app's deploy set; absent: the edge's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub soft: Option<u32>,
    pub hard: Option<u32>,
}

/// An app's autostop settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Autostop {
    /// Idle seconds after which a machine is stopped; absent: never.
    pub after_secs: Option<u64>,
    /// Machines kept started in each region whatever the load.
    pub min_running: u32,
    /// Whether an idle machine is stopped or suspended.
    pub to: colo_core::IdleAction,
}

/// A machine of an app as the scaler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetMachine {
    pub machine_id: String,
    pub region: String,
    /// Whether its host has run the app's model revision before, so the weights are in its
    /// cache (unless evicted since).
    pub cached: bool,
    pub phase: Phase,
    /// What waking it is expected to cost, ms (`colo_policy::expected_wake_ms` of its last start).
    pub wake_ms: u32,
    /// Why it failed, when its phase is `Failed`.
    pub error: Option<String>,
}

/// A started machine a request may be sent to. Laid out with what the pick reads (the load and
/// `since_ms`) in its first cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Endpoint {
    /// What the edge knows of the machine's load: not part of what makes two endpoints equal.
    pub load: Load,
    /// Wall-clock ms of the machine's last state change (when it started); 0: unknown.
    pub since_ms: u64,
    pub machine_id: String,
    pub addr: String,
    pub region: String,
    /// `addr` as the `Host` header of requests sent to it, made once.
    pub host_header: http::HeaderValue,
    /// The `colo-machine` and `colo-region` response headers, made once.
    pub machine_header: http::HeaderValue,
    pub region_header: http::HeaderValue,
    /// The phases of the machine's last start, as its agent recorded them.
    pub cold_start: Option<colo_core::ColdStart>,
    /// Its app's metric series for its answers, made at the first (see [`Endpoint::series`]).
    series: std::sync::OnceLock<crate::metrics::AnswerSeries>,
}

/// A stable handle for a machine, whatever its place in a route table (the affinity table and
/// `AppRoutes::by_key` use it).
pub fn machine_key(machine_id: &str) -> u64 {
    PrefixKey::of_bytes(machine_id.as_bytes(), usize::MAX).0
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
            load: Load::default(),
            series: std::sync::OnceLock::new(),
        })
    }

    /// The series that count the answers of this machine, which serves `app`. A request still
    /// under way when its app leaves the route table (and `Metrics::forget_app` drops the app's
    /// series) counts into these handles, no longer registered, rather than making the series
    /// again for an app that is gone.
    pub(crate) fn series(&self, metrics: &crate::metrics::Metrics, app: &str) -> &crate::metrics::AnswerSeries {
        self.series.get_or_init(|| metrics.answer_series(app, &self.region))
    }

    /// Whether autostop asked this machine to stop since it last started.
    pub(crate) fn stopping(&self) -> bool {
        self.load.stop_asked_ms.load(Ordering::SeqCst) > self.since_ms
    }
}

/// The pick reads a machine straight from its route-table entry: no copy, no lock.
impl MachineView for Endpoint {
    #[inline]
    fn healthy(&self) -> bool {
        // The route table holds started, healthy machines only; one autostop is stopping takes
        // nothing new.
        !self.stopping()
    }

    #[inline]
    fn in_flight(&self) -> u32 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    #[inline]
    fn report(&self) -> Option<LoadReport> {
        self.load.report()
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        // `load` is the edge's own running state, not what the state store says.
        self.machine_id == other.machine_id
            && self.addr == other.addr
            && self.region == other.region
            && self.since_ms == other.since_ms
            && self.cold_start == other.cold_start
    }
}

// === impl AppRoutes ===

impl AppRoutes {
    /// The index in `machines` of machine `id`, if it is routable.
    pub fn index_of(&self, machine_id: &str) -> Option<usize> {
        let idx = *self.by_key.get(&machine_key(machine_id))? as usize;
        // Two ids that share a key are told apart here.
        (self.machines.get(idx)?.machine_id == machine_id).then_some(idx)
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
                    limits: Limits {
                        soft: app.soft_limit,
                        hard: app.hard_limit,
                    },
                    keys: app.keys.clone(),
                    autostop: Autostop {
                        after_secs: app.autostop_secs,
                        min_running: app.min_running,
                        to: app.autostop_to,
                    },
                    route: app.route,
                    weights: app.route_weights,
                    engine: app.engine.as_ref().map_or(colo_core::EngineKind::Colo, |e| e.kind),
                    own_engine: app.engine_cmd.is_some(),
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
            if machine.cordoned {
                routes.cordoned += 1;
                continue;
            }
            let Some(phase) = phase_of(machine) else { continue };
            let cached = warm.contains(&(machine.host.as_str(), machine.revision.as_str()));
            routes.fleet.push(FleetMachine {
                machine_id: machine.id.clone(),
                region: machine.region.clone(),
                cached,
                phase,
                wake_ms: colo_policy::expected_wake_ms(phase, cached, machine.cold_start.as_ref()),
                error: (phase == Phase::Failed).then(|| machine.last_error.clone()).flatten(),
            });
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
                _ => {}
            }
        }
        table.index();
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
        table.index();
        table
    }

    /// Keeps the endpoints of `previous` whose machines are unchanged, so that their in-flight
    /// counts and engine reports go on; a machine whose record changed gets a new endpoint that
    /// starts from the old one's engine report and idle time (its in-flight count stays with the
    /// old endpoint, which the requests still under way release). Runs once per table change,
    /// not per request.
    pub fn adopt_endpoints(&mut self, previous: &RouteTable) {
        let old: HashMap<&str, &Arc<Endpoint>> = previous
            .apps
            .values()
            .flat_map(|routes| routes.machines.iter().map(|m| (m.machine_id.as_str(), m)))
            .collect();
        for routes in self.apps.values_mut() {
            for endpoint in &mut routes.machines {
                let Some(&before) = old.get(endpoint.machine_id.as_str()) else {
                    continue;
                };
                if **before == **endpoint {
                    *endpoint = before.clone();
                } else {
                    endpoint.load.carry_from(&before.load);
                }
            }
        }
    }

    /// Numbers the regions of all machines, groups each app's started machines by region, and
    /// indexes them.
    fn index(&mut self) {
        let mut regions: Vec<String> = self
            .apps
            .values()
            .flat_map(|r| {
                r.machines
                    .iter()
                    .map(|m| m.region.clone())
                    .chain(r.fleet.iter().map(|m| m.region.clone()))
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
            routes.by_key = routes
                .machines
                .iter()
                .enumerate()
                .map(|(idx, m)| (machine_key(&m.machine_id), idx as u32))
                .collect();
            let mut dormant: Vec<RegionId> = routes
                .fleet
                .iter()
                .filter(|m| matches!(m.phase, Phase::Stopped | Phase::Suspended | Phase::Starting))
                .map(|m| region_id(&m.region))
                .collect();
            dormant.sort();
            dormant.dedup();
            routes.dormant = dormant;
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

/// A machine record's phase as scaling sees it; `None` for a destroyed machine.
fn phase_of(machine: &Machine) -> Option<Phase> {
    Some(match machine.state {
        MachineState::Destroyed => return None,
        MachineState::Failed => Phase::Failed,
        MachineState::Stopping => Phase::Stopping,
        MachineState::Suspended if machine.desired == MachineState::Started => Phase::Starting,
        MachineState::Suspended => Phase::Suspended,
        MachineState::Started if machine.desired != MachineState::Started => Phase::Stopping,
        MachineState::Started => Phase::Started,
        // Meant to run but not started yet (created, starting, or about to be started).
        _ if machine.desired == MachineState::Started => Phase::Starting,
        MachineState::Starting => Phase::Starting,
        MachineState::Created | MachineState::Stopped => Phase::Stopped,
    })
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
                Ok(mut table) => {
                    tx.send_if_modified(|current| {
                        if **current == table {
                            return false;
                        }
                        table.adopt_endpoints(current);
                        *current = Arc::new(std::mem::take(&mut table));
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

#[cfg(test)]
mod tests;
