//! Placement across hosts for an app deployed with a demand (`colo deploy --demand`): the live
//! hosts' GPUs, less those other apps' machines hold, become the planner's `Fleet`, and
//! `colo_policy::place` says which host takes which machine. Plain functions over data, and
//! `Control::place`, which reads the hosts into them for the deploy and reconcile passes.

use crate::{Control, ControlError, HostHandle};
use colo_core::{AppName, Catalogue, Demand, Device, Machine, MachineState, PlacedSlot, PlacementRecord, Regions};
use colo_model::ModelFacts;
use colo_policy::{place, Fleet, Host, Placement, PlanRequest};
use std::collections::BTreeMap;
use std::sync::Arc;

/// RTT limit between callers and the machines serving them when the demand sets none (the
/// default of `colo plan --rtt-ms`).
pub const DEFAULT_RTT_LIMIT_MS: f64 = 50.0;

/// One live host as placement sees it: its devices, each with its catalogue GPU kind (`None`
/// for CPU slots and GPUs the catalogue does not know).
pub struct HostGpus<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub devices: Vec<(Device, Option<String>)>,
}

/// What each machine of an app leases: `gpus` whole cards of one host, of kind `gpu` when the
/// deploy named one.
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    pub gpu: Option<&'a str>,
    pub gpus: u32,
}

/// Why no machine of an app could be placed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Unplaced {
    /// The demand, or the planner's request built from it, is wrong: a 400.
    #[error("{0}")]
    Invalid(String),
    /// The demand is fine but the live hosts cannot take any of it.
    #[error("{0}")]
    NoCapacity(String),
}

/// The fleet `app` may be placed on: every live host in a known region with its free GPUs by
/// kind, a GPU being free unless a machine of another app holds it (the app's own machines
/// give theirs back, since placement decides them anew). Hosts that already run the app come
/// first, so that where two hosts would do equally well the placement keeps machines where
/// they are. Returns the fleet and the hosts left out, with why.
pub fn fleet_for(app: &AppName, hosts: &[HostGpus], machines: &[Machine], regions: &Regions) -> (Fleet, Vec<String>) {
    let mut left_out = Vec::new();
    let mut ranked: Vec<(usize, Host)> = Vec::new();
    for host in hosts {
        if regions.get(host.region).is_none() {
            left_out.push(format!("{} (region {:?} is not in the RTT table)", host.name, host.region));
            continue;
        }
        let on_host = machines
            .iter()
            .filter(|m| m.host == host.name && m.state != MachineState::Destroyed);
        let (own, others): (Vec<&Machine>, Vec<&Machine>) = on_host.partition(|m| &m.app == app);
        let mut gpus: BTreeMap<String, u32> = BTreeMap::new();
        for (device, kind) in &host.devices {
            let Some(kind) = kind else { continue };
            // A kind all taken stays listed at 0, so that unmet demand reads "ran out".
            let free = gpus.entry(kind.clone()).or_default();
            if others.iter().all(|m| !m.holds_device() || !m.uses(device)) {
                *free += 1;
            }
        }
        let host = Host {
            name: host.name.to_string(),
            region: host.region.to_string(),
            gpus,
            cpu_slots: None,
        };
        ranked.push((own.len(), host));
    }
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.name.cmp(&b.1.name)));
    let fleet = Fleet {
        hosts: ranked.into_iter().map(|(_, h)| h).collect(),
        edges: Vec::new(),
        inter_region_delay_ms: 0,
    };
    (fleet, left_out)
}

/// Places `demand` on `fleet`, each machine of `shape`. A placement that puts no machine
/// anywhere is an error that gives each region's reason.
pub fn place_demand(facts: &ModelFacts, demand: &Demand, shape: Shape, fleet: &Fleet, regions: &Regions) -> Result<Placement, Unplaced> {
    if fleet.hosts.iter().all(|h| h.gpus.values().all(|n| *n == 0)) {
        let hosts: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
        let hosts = if hosts.is_empty() { "none".to_string() } else { hosts.join(", ") };
        return Err(Unplaced::NoCapacity(if fleet.hosts.iter().any(|h| !h.gpus.is_empty()) {
            format!("every GPU of the live hosts ({hosts}) is taken by other apps")
        } else {
            format!(
                "no live host has a GPU (hosts: {hosts}); a host without GPUs offers only CPU slots, which placement \
                 does not use (declare GPUs with `colo agent --gpus KIND=COUNT`)"
            )
        }));
    }
    // The context `colo plan` assumes (the model's, at most 4096), or more if the demand's
    // sequences are longer.
    let longest = demand.regions.iter().map(|d| d.prompt_tokens + d.output_tokens).max().unwrap_or(0);
    let template = PlanRequest {
        gpus: shape.gpu.map(|k| vec![k.to_string()]).unwrap_or_default(),
        n_gpus: vec![shape.gpus.max(1)],
        ..PlanRequest::at_context(facts.max_position.min(4096).max(longest))
    };
    let placement = place(
        facts,
        &Catalogue::builtin(),
        regions,
        fleet,
        demand,
        &template,
        DEFAULT_RTT_LIMIT_MS,
    )
    .map_err(|e| Unplaced::Invalid(e.to_string()))?;
    if placement.machines.is_empty() {
        let reasons: Vec<String> = placement
            .unmet
            .iter()
            .map(|u| format!("{} {:.2} req/s: {}", u.region, u.requests_per_s, u.reason))
            .collect();
        return Err(Unplaced::NoCapacity(reasons.join("; ")));
    }
    Ok(placement)
}

/// What the app record keeps of a placement.
pub fn record(placement: &Placement) -> PlacementRecord {
    PlacementRecord {
        machines: placement
            .machines
            .iter()
            .map(|m| PlacedSlot {
                host: m.host.clone(),
                region: m.region.clone(),
                gpu: m.gpu.clone(),
                n_gpus: m.n_gpus,
                quant: m.quant.as_str().to_string(),
            })
            .collect(),
        unmet: placement.unmet.clone(),
    }
}

// === impl Control ===

impl Control {
    /// Places `demand` for `app` (serving `model@revision`) on the live `hosts`: their GPUs,
    /// less those other apps' machines hold. No machine placed anywhere is an error.
    pub(crate) async fn place(
        &self,
        app: &AppName,
        model: &str,
        revision: &str,
        demand: &Demand,
        shape: Shape<'_>,
        hosts: &[Arc<dyn HostHandle>],
    ) -> Result<Placement, ControlError> {
        let invalid = |reason: String| ControlError::invalid("demand", reason);
        let facts = self
            .facts_of(model, revision)
            .await
            .map_err(|reason| invalid(format!("the planner cannot read model {model}@{revision}: {reason}")))?;
        let machines = Self::machines_on(hosts).await?;
        let views: Vec<HostGpus> = hosts
            .iter()
            .map(|h| HostGpus {
                name: h.name(),
                region: h.region(),
                devices: h
                    .devices()
                    .into_iter()
                    .map(|d| {
                        let kind = h.device_kind(&d);
                        (d, kind)
                    })
                    .collect(),
            })
            .collect();
        let regions = Regions::builtin();
        let (fleet, left_out) = fleet_for(app, &views, &machines, &regions);
        if !left_out.is_empty() {
            tracing::debug!(%app, ?left_out, "hosts placement cannot use");
        }
        place_demand(&facts, demand, shape, &fleet, &regions).map_err(|e| match e {
            Unplaced::Invalid(reason) => invalid(reason),
            Unplaced::NoCapacity(reason) => ControlError::Unplaced {
                app: app.to_string(),
                reason,
            },
        })
    }
}

#[cfg(test)]
mod tests;
