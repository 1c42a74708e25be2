//! Reconciliation as a decision: which of an app's machines to keep, start, destroy or replace,
//! how many to create and where, and in what order. Control reads the live hosts' machines into
//! [`plan`] and carries out the [`Step`]s it returns; it decides nothing of this itself. Also
//! the judgements around a pass: the order in which hosts are asked for a new machine
//! ([`spread`]) and which hosts' leases have run out ([`lost_hosts`], [`live_hosts`]).
//!
//! The rollout rule lives in the steps: a machine of an older revision is only ever destroyed
//! by a [`Step::Replace`], after its replacement is started and healthy, or at the end of the
//! plan once every wanted machine exists.

use crate::placement::PlacedMachine;
use colo_core::{App, HostRecord, Machine, MachineState};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Where machines are wanted: each field narrows it, `None` meaning any. Per-region counts set
/// only the region; a placement's slot sets the region, the host and the GPU kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub region: Option<String>,
    pub host: Option<String>,
    /// Catalogue GPU kind (`l40s`) the machine's device must be.
    pub gpu: Option<String>,
}

/// How many machines an app wants in one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub slot: Slot,
    pub count: usize,
}

/// One machine on a live host as reconciliation reads it: its record and the catalogue GPU
/// kind of its device as its host names it (`None` for a CPU slot or a GPU the catalogue does
/// not know).
#[derive(Clone, Copy, Debug)]
pub struct Held<'a> {
    pub machine: &'a Machine,
    pub gpu: Option<&'a str>,
}

/// A machine a step acts on, and the host that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineRef {
    pub id: String,
    pub host: String,
}

/// One thing for control to do, in the order [`plan`] gives. A step that fails ends the pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Destroy the machine: surplus where it is, or of an older revision (or a place no longer
    /// wanted) with no replacement to wait for.
    Destroy(MachineRef),
    /// Start a kept machine that is not meant to run, or that failed.
    Start(MachineRef),
    /// Create one machine in the slot, on a host [`spread`] orders.
    Create(Slot),
    /// Create one machine in `slot`, wait until it is started and healthy, then destroy `old`.
    /// A new machine that is not healthy in time is destroyed and the pass stops with the old
    /// one still serving.
    Replace { slot: Slot, old: MachineRef },
}

/// A host a new machine may go to, as the spread rule weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room<'a> {
    pub host: &'a str,
    /// The app's machines on the host that are not destroyed.
    pub app_machines: usize,
    /// Devices no machine holds.
    pub free_devices: usize,
}

// === impl Slot ===

impl Slot {
    /// Whether a machine on `host` in `region` whose device is of kind `gpu` counts here.
    fn holds(&self, held: &Held) -> bool {
        self.allows(&held.machine.host, &held.machine.region) && self.gpu.as_deref().is_none_or(|g| Some(g) == held.gpu)
    }

    /// Whether a new machine may go on host `host` in `region`; whether the host has a device
    /// of the slot's GPU kind free is for its agent to say.
    pub fn allows(&self, host: &str, region: &str) -> bool {
        self.region.as_deref().is_none_or(|r| r == region) && self.host.as_deref().is_none_or(|h| h == host)
    }
}

impl fmt::Display for Slot {
    /// `region/host/gpu`, `*` for any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".into());
        write!(f, "{}/{}/{}", any(&self.region), any(&self.host), any(&self.gpu))
    }
}

// === impl Want ===

impl Want {
    /// `count` machines on any host.
    pub fn anywhere(count: usize) -> Vec<Want> {
        vec![Want {
            slot: Slot::default(),
            count,
        }]
    }

    /// Machines per region code, in the map's order.
    pub fn per_region(counts: &BTreeMap<String, u32>) -> Vec<Want> {
        counts
            .iter()
            .map(|(region, count)| Want {
                slot: Slot {
                    region: Some(region.clone()),
                    ..Slot::default()
                },
                count: *count as usize,
            })
            .collect()
    }

    /// The slots of a placement: machines counted per region, host and GPU kind, in that order.
    pub fn placed(machines: &[PlacedMachine]) -> Vec<Want> {
        let mut slots: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for m in machines {
            *slots.entry((&m.region, &m.host, &m.gpu)).or_default() += 1;
        }
        slots
            .into_iter()
            .map(|((region, host, gpu), count)| Want {
                slot: Slot {
                    region: Some(region.into()),
                    host: Some(host.into()),
                    gpu: Some(gpu.into()),
                },
                count,
            })
            .collect()
    }
}

// === impl MachineRef, Step ===

impl MachineRef {
    fn of(machine: &Machine) -> Self {
        MachineRef {
            id: machine.id.clone(),
            host: machine.host.clone(),
        }
    }
}

impl fmt::Display for MachineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.host)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Destroy(m) => write!(f, "destroy {m}"),
            Step::Start(m) => write!(f, "start {m}"),
            Step::Create(slot) => write!(f, "create {slot}"),
            Step::Replace { slot, old } => write!(f, "replace {old} in {slot}"),
        }
    }
}

/// Whether `held` runs what `app`'s record says: its model, revision and engine, on devices
/// of the app's GPU kind when it names one, as many as a machine of the app leases. A machine
/// that does not is replaced.
fn current(app: &App, held: &Held) -> bool {
    let m = held.machine;
    let right_kind = app.gpu.as_ref().is_none_or(|g| held.gpu == Some(g.kind.as_str()));
    let right_count = m.devices().count() == app.gpus_per_machine.max(1) as usize;
    m.revision == app.revision
        && m.model == app.model
        && m.engine_cmd == app.engine_cmd
        && m.engine == app.engine
        && right_kind
        && right_count
}

/// The steps that bring `app`'s machines among `machines` (every machine on the live hosts,
/// destroyed ones and other apps' included) in line with `wants`.
///
/// A machine that runs what the record says counts towards the first want whose slot holds it.
/// Each want keeps that many, started machines first, then those on hosts with the most of the
/// app's machines, then by id; the rest of them are destroyed as surplus, and a kept machine
/// not meant to run, or failed, is started. Each missing machine is created; when a machine of
/// an older revision (or one no want holds) is in the want's region, the new one replaces it,
/// oldest-read first. Old machines left over are destroyed last, once every want is met.
pub fn plan(app: &App, wants: &[Want], machines: &[Held]) -> Vec<Step> {
    let (mut kept, mut stale): (Vec<&Held>, Vec<&Held>) = machines
        .iter()
        .filter(|h| h.machine.app == app.name && h.machine.state != MachineState::Destroyed)
        .partition(|h| current(app, h));
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for h in &kept {
        *per_host.entry(&h.machine.host).or_default() += 1;
    }
    kept.sort_by_cached_key(|h| {
        let m = h.machine;
        (
            m.state != MachineState::Started,
            std::cmp::Reverse(per_host[m.host.as_str()]),
            m.id.clone(),
        )
    });
    // Machines no want holds (a region the app no longer lists, a host the placement moved
    // away from) go like old revisions: replaced where a want of their region needs one.
    let (held, gone): (Vec<&Held>, Vec<&Held>) = kept.into_iter().partition(|h| wants.iter().any(|w| w.slot.holds(h)));
    stale.extend(gone);
    let mut kept = held;
    let mut steps = Vec::new();
    for want in wants {
        let (mine, rest): (Vec<&Held>, Vec<&Held>) = kept.into_iter().partition(|h| want.slot.holds(h));
        kept = rest;
        // `mine` is in keeping order, so the surplus is the tail.
        let (keep, surplus) = mine.split_at(mine.len().min(want.count));
        steps.extend(surplus.iter().map(|h| Step::Destroy(MachineRef::of(h.machine))));
        for h in keep {
            let m = h.machine;
            // An app that autostops has its stopped machines woken by the edges' scalers when
            // requests come: control starting them would undo every autostop.
            let parked = app.autostop_secs.is_some() && matches!(m.state, MachineState::Stopped | MachineState::Suspended);
            if m.state == MachineState::Failed || (m.desired != MachineState::Started && !parked) {
                steps.push(Step::Start(MachineRef::of(m)));
            }
        }
        for _ in keep.len()..want.count {
            let slot = want.slot.clone();
            let replaces = stale
                .iter()
                .position(|h| want.slot.region.as_deref().is_none_or(|r| r == h.machine.region));
            steps.push(match replaces.map(|i| stale.remove(i)) {
                Some(old) => Step::Replace {
                    slot,
                    old: MachineRef::of(old.machine),
                },
                None => Step::Create(slot),
            });
        }
    }
    steps.extend(stale.iter().map(|h| Step::Destroy(MachineRef::of(h.machine))));
    steps
}

/// The order in which to ask hosts for a new machine, as indexes into `rooms`: the fewest of
/// the app's machines first, so that an app spreads over its hosts; then the most free
/// devices; then by name, so that the order is the same on every pass. A host with no free
/// device keeps its place; the caller does not ask it.
pub fn spread(rooms: &[Room]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rooms.len()).collect();
    order.sort_by_key(|&i| (rooms[i].app_machines, std::cmp::Reverse(rooms[i].free_devices), rooms[i].host));
    order
}

/// The hosts to mark lost at `now_ms`: not marked yet and with their lease run out, judged only
/// once the state store has been reachable since `reachable_since_ms` for longer than the
/// host's lease, so that heartbeats control could not see never condemn a host.
pub fn lost_hosts(hosts: &[HostRecord], now_ms: u64, reachable_since_ms: u64) -> Vec<&HostRecord> {
    hosts
        .iter()
        .filter(|h| !h.lost && h.expired(now_ms) && now_ms.saturating_sub(reachable_since_ms) > h.lease_ms)
        .collect()
}

/// The names of the hosts that may take work at `now_ms`, sorted: when this list changes,
/// control reconciles at once.
pub fn live_hosts(hosts: &[HostRecord], now_ms: u64) -> Vec<String> {
    let mut live: Vec<String> = hosts.iter().filter(|h| h.live(now_ms)).map(|h| h.name.clone()).collect();
    live.sort();
    live
}

#[cfg(test)]
mod tests;
