//! Placement: how many machines of which GPU shape go on which hosts, so that every region's
//! demand is served from within an RTT limit at the lowest $/hour; whole GPUs only.
//!
//! A greedy heuristic, not an optimiser: regions with the fewest reachable hosts go first; a
//! region first uses spare capacity of machines already placed within reach, then adds
//! machines, taking the cheapest machine that covers what is left, or, when none covers it,
//! the cheapest per request/s. What cannot be met is reported with the reason.

use crate::plan::{plan, PlanError, PlanOption, PlanRequest};
pub use colo_core::{Demand, RegionDemand, Unmet};

use colo_core::{Catalogue, Regions};
use colo_model::{ModelFacts, Quant};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("invalid fleet or demand: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// fleet.toml: the hosts an operator has and their free GPUs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Every host that may take machines.
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// Edges `colo up --fleet` runs, one per entry; none: one per region of the hosts.
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
    /// Latency `colo up --fleet` adds to each request an edge sends to another region (one
    /// host standing in for several cities).
    #[serde(default)]
    pub inter_region_delay_ms: u64,
}

/// An edge of a fleet run on one host.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Region code the edge serves.
    pub region: String,
    /// `ip:port` it listens on; a free port when absent.
    pub addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name, unique in the fleet.
    pub name: String,
    /// Region code (data/regions.csv).
    pub region: String,
    /// Free GPUs by kind, e.g. `{ l40s = 4 }`.
    #[serde(default)]
    pub gpus: BTreeMap<String, u32>,
    /// CPU slots the host offers under `colo up --fleet` (default 2).
    pub cpu_slots: Option<u32>,
}

/// One placed machine: `n_gpus` cards of `gpu` on `host`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlacedMachine {
    pub host: String,
    pub region: String,
    pub gpu: String,
    pub n_gpus: u32,
    pub quant: Quant,
    pub usd_per_hour: f64,
    /// Requests/s it serves, by caller region.
    pub serves: BTreeMap<String, f64>,
    /// Share of its capacity in use.
    pub load: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Placement {
    pub machines: Vec<PlacedMachine>,
    pub usd_per_hour: f64,
    pub unmet: Vec<Unmet>,
}

// === impl Fleet ===

impl Fleet {
    /// Every problem for placement, each naming its field (`hosts[2].region`): those of
    /// [`Fleet::validate_hosts`], and a fleet with no free GPU.
    pub fn validate(&self, catalogue: &Catalogue, regions: &Regions) -> Vec<String> {
        let mut problems = self.validate_hosts(catalogue, regions);
        if !self.hosts.is_empty() && self.hosts.iter().all(|h| h.gpus.values().all(|n| *n == 0)) {
            problems.push("fleet.hosts: no host has a free GPU".into());
        }
        problems
    }

    /// Every problem with the hosts and edges themselves (what `colo up --fleet` needs).
    pub fn validate_hosts(&self, catalogue: &Catalogue, regions: &Regions) -> Vec<String> {
        let mut problems = Vec::new();
        if self.hosts.is_empty() {
            problems.push("fleet.hosts: the fleet is empty; add at least one [[hosts]] table".into());
        }
        let mut names = BTreeSet::new();
        for (i, edge) in self.edges.iter().enumerate() {
            if !self.hosts.iter().any(|h| h.region == edge.region) && regions.get(&edge.region).is_none() {
                problems.push(format!("fleet.edges[{i}].region: unknown region {:?}", edge.region));
            }
            if let Some(addr) = &edge.addr {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    problems.push(format!("fleet.edges[{i}].addr: {addr:?} is not ip:port"));
                }
            }
        }
        if self.inter_region_delay_ms > 10_000 {
            problems.push(format!(
                "fleet.inter_region_delay_ms: {} is above 10000",
                self.inter_region_delay_ms
            ));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if host.cpu_slots.is_some_and(|n| !(1..=64).contains(&n)) {
                problems.push(format!(
                    "fleet.hosts[{i}].cpu_slots: {} is outside 1 to 64",
                    host.cpu_slots.unwrap_or(0)
                ));
            }
            let at = format!("fleet.hosts[{i}]");
            if host.name.trim().is_empty() {
                problems.push(format!("{at}.name: empty"));
            } else if !names.insert(host.name.as_str()) {
                problems.push(format!("{at}.name: {:?} appears twice", host.name));
            }
            if regions.get(&host.region).is_none() {
                problems.push(format!("{at}.region: unknown region {:?}", host.region));
            }
            for kind in host.gpus.keys() {
                if catalogue.get(kind).is_err() {
                    problems.push(format!("{at}.gpus.{kind}: unknown GPU kind"));
                }
            }
        }
        problems
    }
}

/// A shape that fits, with its capacity for one region's traffic.
struct Shape {
    gpu: String,
    n_gpus: u32,
    quant: Quant,
    usd_per_hour: f64,
    /// Requests/s at the target utilisation, for the region's token lengths.
    capacity: f64,
}

/// Places machines for `demand` on `fleet`. `template` gives everything but the token lengths
/// (weight formats, prices, context, utilisation); `rtt_limit_ms` applies where the demand
/// file sets none.
pub fn place(
    facts: &ModelFacts,
    catalogue: &Catalogue,
    regions: &Regions,
    fleet: &Fleet,
    demand: &Demand,
    template: &PlanRequest,
    rtt_limit_ms: f64,
) -> Result<Placement, PlacementError> {
    let mut problems = fleet.validate(catalogue, regions);
    problems.extend(demand.validate(regions));
    if !(rtt_limit_ms.is_finite() && rtt_limit_ms > 0.0) {
        problems.push(format!("rtt_limit_ms: {rtt_limit_ms} must be above zero"));
    }
    if !problems.is_empty() {
        return Err(PlacementError::Invalid { problems });
    }
    let rtt_limit = demand.rtt_limit_ms.unwrap_or(rtt_limit_ms);
    let rtt = |a: &str, b: &str| regions.rtt_ms(a, b).unwrap_or(f64::INFINITY);

    // Shapes per demand region, in the weight format the plan recommends for that traffic.
    let mut shapes: BTreeMap<&str, Vec<Shape>> = BTreeMap::new();
    for d in &demand.regions {
        let request = PlanRequest {
            prompt_tokens: d.prompt_tokens,
            output_tokens: d.output_tokens,
            ..template.clone()
        };
        let plan = plan(facts, catalogue, &request)?;
        let quant = plan.recommended.as_ref().map(|o| o.quant);
        let fitting = plan.options.iter().filter(|o| o.fits && Some(o.quant) == quant);
        let list = fitting.filter_map(|o: &PlanOption| {
            let usd_per_hour = o.usd_per_hour?;
            let capacity = o.tokens_per_s / d.output_tokens as f64 * request.target_utilisation;
            (capacity > 0.0).then(|| Shape {
                gpu: o.gpu.clone(),
                n_gpus: o.n_gpus,
                quant: o.quant,
                usd_per_hour,
                capacity,
            })
        });
        shapes.insert(d.region.as_str(), list.collect());
    }

    let mut free: Vec<BTreeMap<String, u32>> = fleet.hosts.iter().map(|h| h.gpus.clone()).collect();
    let mut machines: Vec<(usize, PlacedMachine)> = Vec::new();
    let mut unmet = Vec::new();
    let reach = |d: &RegionDemand| fleet.hosts.iter().filter(|h| rtt(&h.region, &d.region) <= rtt_limit).count();
    let mut order: Vec<&RegionDemand> = demand.regions.iter().collect();
    order.sort_by(|a, b| {
        reach(a)
            .cmp(&reach(b))
            .then(b.requests_per_s.total_cmp(&a.requests_per_s))
            .then(a.region.cmp(&b.region))
    });

    for d in order {
        let shapes = &shapes[d.region.as_str()];
        let capacity_of = |m: &PlacedMachine| shapes.iter().find(|s| s.gpu == m.gpu && s.n_gpus == m.n_gpus).map(|s| s.capacity);
        let mut left = d.requests_per_s;
        // Spare capacity of machines already placed within reach.
        for (_, m) in machines.iter_mut().filter(|(_, m)| rtt(&m.region, &d.region) <= rtt_limit) {
            let Some(capacity) = capacity_of(m) else {
                continue;
            };
            let take = (capacity * (1.0 - m.load)).min(left);
            if take > 1e-9 {
                m.load += take / capacity;
                *m.serves.entry(d.region.clone()).or_default() += take;
                left -= take;
            }
        }
        while left > 1e-9 {
            let mut candidates = Vec::new();
            for (host_idx, host) in fleet.hosts.iter().enumerate() {
                let host_rtt = rtt(&host.region, &d.region);
                if host_rtt > rtt_limit {
                    continue;
                }
                for (shape_idx, shape) in shapes.iter().enumerate() {
                    if free[host_idx].get(&shape.gpu).copied().unwrap_or(0) >= shape.n_gpus {
                        candidates.push((host_idx, shape_idx, host_rtt));
                    }
                }
            }
            let covering = candidates.iter().filter(|(_, s, _)| shapes[*s].capacity >= left);
            let cheapest = covering
                .min_by(|a, b| {
                    shapes[a.1]
                        .usd_per_hour
                        .total_cmp(&shapes[b.1].usd_per_hour)
                        .then(a.2.total_cmp(&b.2))
                })
                .or_else(|| {
                    let per_rps = |s: usize| shapes[s].usd_per_hour / shapes[s].capacity;
                    candidates
                        .iter()
                        .min_by(|a, b| per_rps(a.1).total_cmp(&per_rps(b.1)).then(a.2.total_cmp(&b.2)))
                })
                .copied();
            let Some((host_idx, shape_idx, _)) = cheapest else {
                let reason = why_unmet(d, fleet, shapes, regions, rtt_limit, left);
                unmet.push(Unmet {
                    region: d.region.clone(),
                    requests_per_s: left,
                    reason,
                });
                break;
            };
            let (host, shape) = (&fleet.hosts[host_idx], &shapes[shape_idx]);
            if let Some(n) = free[host_idx].get_mut(&shape.gpu) {
                *n -= shape.n_gpus;
            }
            let take = shape.capacity.min(left);
            machines.push((
                host_idx,
                PlacedMachine {
                    host: host.name.clone(),
                    region: host.region.clone(),
                    gpu: shape.gpu.clone(),
                    n_gpus: shape.n_gpus,
                    quant: shape.quant,
                    usd_per_hour: shape.usd_per_hour,
                    serves: [(d.region.clone(), take)].into_iter().collect(),
                    load: take / shape.capacity,
                },
            ));
            left -= take;
        }
    }
    let machines: Vec<PlacedMachine> = machines.into_iter().map(|(_, m)| m).collect();
    Ok(Placement {
        usd_per_hour: machines.iter().map(|m| m.usd_per_hour).sum(),
        machines,
        unmet,
    })
}

/// Why a region's remaining demand cannot be placed: no host in reach, nothing in reach that
/// holds the model, or the GPUs in reach ran out.
fn why_unmet(d: &RegionDemand, fleet: &Fleet, shapes: &[Shape], regions: &Regions, rtt_limit: f64, left: f64) -> String {
    let rtt = |a: &str| regions.rtt_ms(a, &d.region).unwrap_or(f64::INFINITY);
    let in_reach: Vec<&Host> = fleet.hosts.iter().filter(|h| rtt(&h.region) <= rtt_limit).collect();
    if in_reach.is_empty() {
        let nearest = fleet.hosts.iter().min_by(|a, b| rtt(&a.region).total_cmp(&rtt(&b.region)));
        return match nearest {
            Some(h) => format!(
                "no host within {rtt_limit:.0} ms of {} (nearest: {} in {} at {:.0} ms)",
                d.region,
                h.name,
                h.region,
                rtt(&h.region)
            ),
            None => "the fleet has no hosts".into(),
        };
    }
    let kinds: BTreeSet<&str> = in_reach.iter().flat_map(|h| h.gpus.keys().map(String::as_str)).collect();
    if !shapes.iter().any(|s| kinds.contains(s.gpu.as_str())) {
        let kinds: Vec<&str> = kinds.into_iter().collect();
        return format!("no GPU kind within reach ({}) holds the model with a price", kinds.join(", "));
    }
    format!(
        "the free GPUs within {rtt_limit:.0} ms of {} ran out with {left:.2} requests/s left",
        d.region
    )
}

#[cfg(test)]
mod tests;
