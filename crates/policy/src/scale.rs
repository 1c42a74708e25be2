//! Wake on demand and autostop for one app, seen from one region, as a state machine.
//!
//! The edge (or the simulator) feeds it events with the time they happened and carries out the
//! actions it returns; between events it calls `handle(Tick, now)` at `next_deadline()`. It is
//! the one authority on starts and idle stops, which is what keeps a burst from waking a herd:
//!
//! - Held requests need `ceil(held / soft_limit)` machines. Machines already starting (for less
//!   than `start_timeout_ms`) and machines that started less than `settle_ms` ago (the edge is
//!   still releasing held requests to them) count against that; the rest are started. Requests
//!   held for one region only (a forced region) are counted for that region first, and only
//!   that region's machines are woken for them.
//! - A start prefers a machine whose last start did not fail or time out, then one whose host
//!   caches the model's weights, then the nearest (lowest RTT from this region), then the
//!   smallest id. Machines of other regions may be registered as non-local, so that they can be
//!   woken too.
//! - A start the machine's host refuses at once (`StartRefused`: no device free, say) puts the
//!   machine back as it was and keeps it from being woken for `REFUSED_RETRY_MS` (or until
//!   `forget_refusals`, when the world changed), so another
//!   machine is woken instead. When requests are held and no machine is running, starting, or
//!   may be woken (each refused lately or failed), the app is `stuck`: the edge answers its held
//!   requests at once with the reasons instead of letting them wait out the hold.
//! - A start not confirmed within `start_timeout_ms` stops counting against the herd cap, and
//!   the machine may be woken again (after the others); a stop not confirmed within that time
//!   leaves the machine started again.
//! - Local machines are kept at `min_machines_running` (started or starting).
//! - A local started machine idle (nothing in flight) for `idle_stop_ms` is stopped (or
//!   suspended, when `idle_action` says so), longest idle first, never below the minimum and
//!   never while requests are held. Non-local machines are left to their own region's scaler.
//! - A suspended machine wakes in about a second, a stopped one only after a cold start: among
//!   machines to wake, suspended ones come first.
//!
//! A machine counts as idle from the moment it starts until a `MachineBusy`, and again from the
//! `since_ms` of a `MachineIdle` (never from before it started or was last reported busy).
//!
//! The world's view and the scaler's belief are kept apart: `MachineAdded` may be sent again
//! with a machine's current facts whenever they change (the edge sends them on every route
//! table change), and its phase is applied only when it differs from the phase last reported,
//! so that a machine the scaler just asked to start is not taken back to `Stopped` by a report
//! made before the start was seen.

use crate::route::starts_needed;
pub use colo_core::IdleAction;
use serde::Deserialize;
use std::collections::BTreeMap;

#[cfg(test)]
mod tests;

/// Scaling settings of one app in one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleConfig {
    /// Held requests one started machine is expected to absorb: the app's soft limit.
    pub soft_limit: u32,
    /// Stop a local machine after this long with nothing in flight; absent: never autostop.
    pub idle_stop_ms: Option<u64>,
    /// Local machines kept started or starting whatever the load.
    pub min_machines_running: u32,
    /// A start (or stop) not confirmed within this long no longer counts as under way.
    pub start_timeout_ms: u64,
    /// For this long after a machine starts it is assumed to be taking held requests.
    pub settle_ms: u64,
    /// What happens to a machine idle for `idle_stop_ms`.
    #[serde(default)]
    pub idle_action: IdleAction,
}

/// Where a machine is in its lifecycle, as far as scaling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Started,
    /// Asked to stop or suspend, not yet confirmed.
    Stopping,
    /// The engine keeps its model but serves nothing; it wakes faster than a stopped one.
    Suspended,
    /// A start failed; the machine is not woken again until it is reported stopped.
    Failed,
}

/// A machine the scaler may wake, and (if local) stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineFacts {
    pub id: String,
    /// The machine's region code: requests held for one region wake only its machines.
    pub region: String,
    /// RTT from this scaler's region to the machine's region, ms.
    pub rtt_ms: u32,
    /// Whether its host already caches the model's weights.
    pub cached: bool,
    /// Whether the machine is in this scaler's region (only local machines are autostopped and
    /// count towards the minimum).
    pub local: bool,
    pub phase: Phase,
    /// What waking it is expected to cost, ms ([`expected_wake_ms`]): stopped and suspended
    /// machines are woken cheapest first, counting the RTT to their region.
    pub wake_ms: u32,
}

/// How long a machine whose start was refused is not woken again: its host said no, and asking
/// again at once would get the same answer.
pub const REFUSED_RETRY_MS: u64 = 5_000;

/// A suspended engine's wake when none was measured: about a second (vLLM's level-1 wake).
pub const DEFAULT_SUSPENDED_WAKE_MS: u32 = 1_000;
/// A stopped engine's load from cached weights when none was measured.
pub const DEFAULT_ENGINE_LOAD_MS: u32 = 10_000;
/// Hydrating weights the host does not cache, when no hydration was measured.
pub const DEFAULT_HYDRATE_MS: u32 = 30_000;

/// The expected cost of waking a machine in `phase`, ms: a suspended machine costs its last
/// wake from suspend; a stopped one its last engine load, plus its last hydration less the
/// part the load overlapped (or the default) when its host does not cache the weights. `last` is the machine's last start as
/// recorded; what was not measured takes the defaults above. Started machines cost nothing.
pub fn expected_wake_ms(phase: Phase, cached: bool, last: Option<&colo_core::ColdStart>) -> u32 {
    let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    match phase {
        Phase::Suspended => last
            .filter(|c| c.from_suspended)
            .map_or(DEFAULT_SUSPENDED_WAKE_MS, |c| ms(c.engine_load_ms)),
        Phase::Stopped | Phase::Failed | Phase::Stopping => {
            let cold = last.filter(|c| !c.from_suspended);
            let load = cold.map_or(DEFAULT_ENGINE_LOAD_MS, |c| ms(c.engine_load_ms));
            // A load that ran alongside the hydration counts once.
            let hydrate = match (cached, cold.filter(|c| c.hydrate_ms > 0)) {
                (true, _) => 0,
                (false, Some(c)) => ms(c.hydrate_ms).saturating_sub(ms(c.overlap_ms)),
                (false, None) => DEFAULT_HYDRATE_MS,
            };
            load.saturating_add(hydrate)
        }
        Phase::Starting | Phase::Started => 0,
    }
}

/// What happened, told to [`Scaler::handle`] with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleEvent {
    /// A machine appeared, or what is known of it changed (see the module documentation for
    /// how its phase is applied).
    MachineAdded(MachineFacts),
    MachineRemoved {
        id: String,
    },
    /// A request joined the hold queue.
    RequestHeld,
    /// A request left the hold queue (sent to a machine, timed out, or the client left).
    RequestReleased,
    /// A request that may only go to `region` joined the hold queue.
    RequestHeldIn {
        region: String,
    },
    /// A request held for `region` left the hold queue.
    RequestReleasedIn {
        region: String,
    },
    MachineStarted {
        id: String,
    },
    MachineStopped {
        id: String,
    },
    MachineFailed {
        id: String,
    },
    /// The machine's host refused a start the scaler asked for, saying why (no device free).
    StartRefused {
        id: String,
        reason: String,
    },
    /// The machine has had nothing in flight since `since_ms`.
    MachineIdle {
        id: String,
        since_ms: u64,
    },
    /// The machine has a request in flight.
    MachineBusy {
        id: String,
    },
    /// A stop the scaler asked for was not carried out (a request took the machine meanwhile).
    StopAborted {
        id: String,
    },
    /// Time passed; deadlines may have come.
    Tick,
}

/// What the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScaleAction {
    /// Start a stopped machine, or wake a suspended one.
    StartMachine(String),
    StopMachine(String),
    SuspendMachine(String),
}

/// The wake/stop state machine of one app, seen from one region.
#[derive(Clone, Debug)]
pub struct Scaler {
    config: ScaleConfig,
    machines: BTreeMap<String, Entry>,
    /// Requests held, in all (those for one region included).
    held: u32,
    /// Requests held for one region only, by region.
    held_in: BTreeMap<String, u32>,
    /// The latest `now` handled; deadlines at or before it are already acted on.
    last_now_ms: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    region: String,
    rtt_ms: u32,
    cached: bool,
    wake_ms: u32,
    local: bool,
    /// What the scaler believes: the phase last reported, or what its own actions lead to.
    phase: Phase,
    /// The phase the world last reported.
    reported: Phase,
    /// When the machine entered `phase`.
    phase_at_ms: u64,
    idle_since_ms: Option<u64>,
    /// When the machine was last reported busy: an idle report cannot reach back past it.
    busy_at_ms: u64,
    /// Its last start failed or timed out: woken only after machines without that mark.
    start_failed: bool,
    /// The last refused start: when, and the host's reason.
    refused: Option<(u64, String)>,
}

// === impl Entry ===

impl Entry {
    /// Stopped or suspended, and not refused a start in the last `REFUSED_RETRY_MS`.
    fn wakeable(&self, now_ms: u64) -> bool {
        matches!(self.phase, Phase::Stopped | Phase::Suspended)
            && self
                .refused
                .as_ref()
                .is_none_or(|(at, _)| now_ms >= at.saturating_add(REFUSED_RETRY_MS))
    }
}

// === impl ScaleConfig ===

impl ScaleConfig {
    /// Every problem with these settings, empty when they are usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.soft_limit == 0 {
            problems.push("soft_limit must be at least 1".to_string());
        }
        if self.start_timeout_ms == 0 {
            problems.push("start_timeout_ms must be positive".to_string());
        }
        if self.idle_stop_ms == Some(0) {
            problems.push("idle_stop_ms must be positive (leave it out to never autostop)".to_string());
        }
        problems
    }
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            soft_limit: 8,
            idle_stop_ms: Some(300_000),
            min_machines_running: 0,
            start_timeout_ms: 120_000,
            settle_ms: 2_000,
            idle_action: IdleAction::Stop,
        }
    }
}

// === impl Scaler ===

impl Scaler {
    pub fn new(config: ScaleConfig) -> Self {
        Scaler {
            config,
            machines: BTreeMap::new(),
            held: 0,
            held_in: BTreeMap::new(),
            last_now_ms: 0,
        }
    }

    pub fn config(&self) -> &ScaleConfig {
        &self.config
    }

    /// Takes new settings (an app redeployed with other limits); they apply from the next event.
    pub fn set_config(&mut self, config: ScaleConfig) {
        self.config = config;
    }

    /// Requests held now.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// The phase of machine `id`, if the scaler knows it.
    pub fn phase(&self, id: &str) -> Option<Phase> {
        self.machines.get(id).map(|m| m.phase)
    }

    /// The ids of the machines the scaler knows, in order.
    pub fn machine_ids(&self) -> impl Iterator<Item = &str> {
        self.machines.keys().map(String::as_str)
    }

    /// Machines believed to be starting: what a held request can expect to come.
    pub fn starting(&self) -> u32 {
        self.machines.values().filter(|m| m.phase == Phase::Starting).count() as u32
    }

    /// Applies `event` at `now_ms` and returns what to do about the state that results.
    pub fn handle(&mut self, event: ScaleEvent, now_ms: u64) -> Vec<ScaleAction> {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        self.apply(event, now_ms);
        self.expire(now_ms);
        let mut actions = Vec::new();
        self.wake_for_held(now_ms, &mut actions);
        self.keep_minimum(now_ms, &mut actions);
        self.stop_idle(now_ms, &mut actions);
        actions
    }

    /// Applies `event` at `now_ms` without deciding anything: for a batch of facts (every
    /// machine's idle time, a new route table) that one `handle(Tick, now)` then acts on.
    pub fn record(&mut self, event: ScaleEvent, now_ms: u64) {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        self.apply(event, now_ms);
    }

    /// The next time at which `handle(Tick, t)` could act, if any: an idle machine's stop, a
    /// start that times out while requests are held, a started machine that stops settling
    /// while requests are held. (A stop that is never confirmed is undone at the next event.)
    pub fn next_deadline(&self) -> Option<u64> {
        let held = self.held > 0;
        let can_stop = !held && self.local_running() > self.config.min_machines_running;
        let timeout = self.config.start_timeout_ms;
        self.machines
            .values()
            .filter_map(|m| match m.phase {
                Phase::Starting if held => Some(m.phase_at_ms.saturating_add(timeout)),
                Phase::Started if held => Some(m.phase_at_ms.saturating_add(self.config.settle_ms)),
                Phase::Stopped | Phase::Suspended if held => m.refused.as_ref().map(|(at, _)| at.saturating_add(REFUSED_RETRY_MS)),
                Phase::Started if can_stop && m.local => m
                    .idle_since_ms
                    .zip(self.config.idle_stop_ms)
                    .map(|(idle, after)| idle.saturating_add(after)),
                _ => None,
            })
            .filter(|&t| t > self.last_now_ms)
            .min()
    }

    fn apply(&mut self, event: ScaleEvent, now_ms: u64) {
        match event {
            ScaleEvent::MachineAdded(facts) => self.upsert(facts, now_ms),
            ScaleEvent::MachineRemoved { id } => {
                self.machines.remove(&id);
            }
            ScaleEvent::RequestHeld => self.held = self.held.saturating_add(1),
            ScaleEvent::RequestReleased => self.held = self.held.saturating_sub(1),
            ScaleEvent::RequestHeldIn { region } => {
                self.held = self.held.saturating_add(1);
                *self.held_in.entry(region).or_default() += 1;
            }
            ScaleEvent::RequestReleasedIn { region } => {
                self.held = self.held.saturating_sub(1);
                if let Some(n) = self.held_in.get_mut(&region) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.held_in.remove(&region);
                    }
                }
            }
            ScaleEvent::MachineStarted { id } => self.report(&id, Phase::Started, now_ms),
            ScaleEvent::MachineStopped { id } => self.report(&id, Phase::Stopped, now_ms),
            ScaleEvent::MachineFailed { id } => self.report(&id, Phase::Failed, now_ms),
            ScaleEvent::StartRefused { id, reason } => {
                if let Some(m) = self.machines.get_mut(&id) {
                    if m.phase == Phase::Starting {
                        m.phase = m.reported;
                        m.phase_at_ms = now_ms;
                    }
                    m.start_failed = true;
                    m.refused = Some((now_ms, reason));
                }
            }
            ScaleEvent::MachineIdle { id, since_ms } => {
                if let Some(m) = self.machines.get_mut(&id) {
                    // Idle time counts from the start, and from the last time the machine was
                    // seen busy, at the earliest: a stale report (about the machine's previous
                    // run, or from a caller that lost track) must not stop a machine early.
                    let started_at = if m.phase == Phase::Started { m.phase_at_ms } else { 0 };
                    m.idle_since_ms = Some(since_ms.max(started_at).max(m.busy_at_ms));
                }
            }
            ScaleEvent::MachineBusy { id } => {
                if let Some(m) = self.machines.get_mut(&id) {
                    m.idle_since_ms = None;
                    m.busy_at_ms = m.busy_at_ms.max(now_ms);
                }
            }
            ScaleEvent::StopAborted { id } => {
                if let Some(m) = self.machines.get_mut(&id).filter(|m| m.phase == Phase::Stopping) {
                    m.phase = Phase::Started;
                    m.phase_at_ms = now_ms;
                    m.idle_since_ms = None;
                }
            }
            ScaleEvent::Tick => {}
        }
    }

    fn upsert(&mut self, facts: MachineFacts, now_ms: u64) {
        let MachineFacts {
            id,
            region,
            rtt_ms,
            cached,
            local,
            phase,
            wake_ms,
        } = facts;
        match self.machines.get_mut(&id) {
            Some(m) => {
                (m.region, m.rtt_ms, m.cached, m.local, m.wake_ms) = (region, rtt_ms, cached, local, wake_ms);
                if m.reported != phase {
                    self.report(&id, phase, now_ms);
                }
            }
            None => {
                let idle_since_ms = (phase == Phase::Started).then_some(now_ms);
                self.machines.insert(
                    id,
                    Entry {
                        region,
                        rtt_ms,
                        cached,
                        wake_ms,
                        local,
                        phase,
                        reported: phase,
                        phase_at_ms: now_ms,
                        idle_since_ms,
                        busy_at_ms: 0,
                        start_failed: false,
                        refused: None,
                    },
                );
            }
        }
    }

    /// The world says machine `id` is in `phase` now.
    fn report(&mut self, id: &str, phase: Phase, now_ms: u64) {
        if let Some(m) = self.machines.get_mut(id) {
            m.reported = phase;
            match phase {
                Phase::Failed => m.start_failed = true,
                Phase::Started => {
                    m.start_failed = false;
                    m.refused = None;
                }
                _ => {}
            }
            m.phase = phase;
            m.phase_at_ms = now_ms;
            m.idle_since_ms = (phase == Phase::Started).then_some(now_ms);
        }
    }

    /// Starts and stops that were never confirmed fall back to what the world last reported.
    fn expire(&mut self, now_ms: u64) {
        let timeout = self.config.start_timeout_ms;
        for m in self.machines.values_mut() {
            let overdue = now_ms >= m.phase_at_ms.saturating_add(timeout);
            match m.phase {
                Phase::Starting if overdue && matches!(m.reported, Phase::Stopped | Phase::Suspended) => {
                    m.phase = m.reported;
                    m.phase_at_ms = now_ms;
                    m.start_failed = true;
                }
                Phase::Stopping if overdue && m.reported == Phase::Started => {
                    m.phase = Phase::Started;
                    m.phase_at_ms = now_ms;
                    m.idle_since_ms = Some(now_ms);
                }
                _ => {}
            }
        }
    }

    /// Whether machine `m` is expected to take held requests soon: starting, or just started.
    fn absorbing(&self, m: &Entry, now_ms: u64) -> bool {
        match m.phase {
            Phase::Starting => now_ms < m.phase_at_ms.saturating_add(self.config.start_timeout_ms),
            Phase::Started => now_ms < m.phase_at_ms.saturating_add(self.config.settle_ms),
            _ => false,
        }
    }

    /// Starts machines for held requests, within the herd cap: first for requests that may
    /// only go to one region, then for the whole queue.
    fn wake_for_held(&mut self, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        if self.held == 0 {
            return;
        }
        let regions: Vec<(String, u32)> = self.held_in.iter().map(|(r, n)| (r.clone(), *n)).collect();
        for (region, held) in regions {
            let absorbing = self
                .machines
                .values()
                .filter(|m| m.region == region && self.absorbing(m, now_ms))
                .count() as u32;
            let needed = starts_needed(held, self.config.soft_limit, absorbing);
            self.start_best(needed as usize, |m| m.region == region, now_ms, actions);
        }
        // Requests bound to a region with no machine at all cannot be helped by waking one
        // elsewhere; the rest share every machine that is coming.
        let stranded: u32 = self
            .held_in
            .iter()
            .filter(|(region, _)| !self.machines.values().any(|m| &m.region == *region))
            .map(|(_, n)| *n)
            .sum();
        let absorbing = self.machines.values().filter(|m| self.absorbing(m, now_ms)).count() as u32;
        let needed = starts_needed(self.held.saturating_sub(stranded), self.config.soft_limit, absorbing);
        self.start_best(needed as usize, |_| true, now_ms, actions);
    }

    /// Starts local machines until the minimum runs.
    fn keep_minimum(&mut self, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        let deficit = self.config.min_machines_running.saturating_sub(self.local_running());
        self.start_best(deficit as usize, |m| m.local, now_ms, actions);
    }

    /// Starts up to `n` stopped or suspended machines that `eligible` allows, best first: no
    /// failed start, then the least expected wake cost plus RTT (so a suspended machine before
    /// a stopped one, cached weights before a hydration, near before far), then the smallest id.
    fn start_best(&mut self, n: usize, eligible: impl Fn(&Entry) -> bool, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        if n == 0 {
            return;
        }
        let mut wakeable: Vec<(bool, u32, &String)> = self
            .machines
            .iter()
            .filter(|(_, m)| m.wakeable(now_ms) && eligible(m))
            .map(|(id, m)| (m.start_failed, m.wake_ms.saturating_add(m.rtt_ms), id))
            .collect();
        wakeable.sort();
        let chosen: Vec<String> = wakeable.into_iter().take(n).map(|(_, _, id)| id.clone()).collect();
        for id in chosen {
            if let Some(m) = self.machines.get_mut(&id) {
                m.phase = Phase::Starting;
                m.phase_at_ms = now_ms;
                m.idle_since_ms = None;
            }
            actions.push(ScaleAction::StartMachine(id));
        }
    }

    /// Stops local machines idle past `idle_stop_ms`, longest idle first, down to the minimum.
    fn stop_idle(&mut self, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        let Some(idle_stop_ms) = self.config.idle_stop_ms else {
            return;
        };
        if self.held > 0 {
            return;
        }
        let mut idle: Vec<(u64, String)> = self
            .machines
            .iter()
            .filter(|(_, m)| m.local && m.phase == Phase::Started)
            .filter_map(|(id, m)| m.idle_since_ms.map(|since| (since, id.clone())))
            .filter(|(since, _)| now_ms >= since.saturating_add(idle_stop_ms))
            .collect();
        idle.sort();
        let stoppable = self.local_running().saturating_sub(self.config.min_machines_running) as usize;
        for (_, id) in idle.into_iter().take(stoppable) {
            if let Some(m) = self.machines.get_mut(&id) {
                m.phase = Phase::Stopping;
                m.phase_at_ms = now_ms;
                m.idle_since_ms = None;
            }
            actions.push(match self.config.idle_action {
                IdleAction::Stop => ScaleAction::StopMachine(id),
                IdleAction::Suspend => ScaleAction::SuspendMachine(id),
            });
        }
    }

    /// Local machines started or starting.
    /// Lets machines that were refused a start be woken again at once: the world changed (a
    /// machine somewhere stopped or went away), so a device may be free now.
    pub fn forget_refusals(&mut self) {
        for m in self.machines.values_mut() {
            m.refused = None;
        }
    }

    /// When requests are held and none of the app's machines is running, starting or may be
    /// woken (each was refused a start lately, or failed), why: each such machine with its
    /// reason (`None` for a failed one: its record says why). Empty when the held requests may
    /// still be served, or the app has no machines at all (a deploy may be making them).
    pub fn stuck(&self, now_ms: u64) -> Vec<(&str, Option<&str>)> {
        if self.held == 0 {
            return Vec::new();
        }
        let hopeful = self.machines.values().any(|m| match m.phase {
            Phase::Starting | Phase::Started | Phase::Stopping => true,
            Phase::Stopped | Phase::Suspended => m.wakeable(now_ms),
            Phase::Failed => false,
        });
        if hopeful {
            return Vec::new();
        }
        self.machines
            .iter()
            .map(|(id, m)| (id.as_str(), m.refused.as_ref().map(|(_, why)| why.as_str())))
            .collect()
    }

    fn local_running(&self) -> u32 {
        self.machines
            .values()
            .filter(|m| m.local && matches!(m.phase, Phase::Started | Phase::Starting))
            .count() as u32
    }
}
