//! Wake on demand and autostop for one app in one region, as a state machine.
//!
//! The edge (or the simulator) feeds it events with the time they happened and carries out the
//! actions it returns; between events it calls `handle(Tick, now)` at `next_deadline()`. It is
//! the one authority on starts, which is what keeps a burst from waking a herd:
//!
//! - Held requests need `ceil(held / soft_limit)` machines. Machines already starting (for less
//!   than `start_timeout_ms`) and machines that started less than `settle_ms` ago (the edge is
//!   still releasing held requests to them) count against that; the rest are started.
//! - A start prefers a machine whose host caches the model's weights, then the nearest (lowest
//!   RTT from this region), then the smallest id: the order `route::choose_wake` uses. Machines
//!   of other regions may be registered as non-local, so that they can be woken too.
//! - Local machines are kept at `min_machines_running` (started or starting).
//! - A local started machine idle (nothing in flight) for `idle_stop_ms` is stopped, longest
//!   idle first, never below the minimum and never while requests are held. Non-local machines
//!   are left to their own region's scaler.
//!
//! A machine counts as idle from the moment it starts until a `MachineBusy`, and again from the
//! `since_ms` of a `MachineIdle`.

use crate::route::starts_needed;
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
    /// A start not confirmed within this long no longer counts against the herd cap.
    pub start_timeout_ms: u64,
    /// For this long after a machine starts it is assumed to be taking held requests.
    pub settle_ms: u64,
}

/// Where a machine is in its lifecycle, as far as scaling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Started,
    Stopping,
    /// A start failed; the machine is not woken again until it is reported stopped.
    Failed,
}

/// A machine the scaler may wake, and (if local) stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineFacts {
    pub id: String,
    /// RTT from this scaler's region to the machine's region, ms.
    pub rtt_ms: u32,
    /// Whether its host already caches the model's weights.
    pub cached: bool,
    /// Whether the machine is in this scaler's region (only local machines are autostopped and
    /// count towards the minimum).
    pub local: bool,
    pub phase: Phase,
}

/// What happened, told to [`Scaler::handle`] with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleEvent {
    MachineAdded(MachineFacts),
    MachineRemoved {
        id: String,
    },
    /// A request joined the hold queue.
    RequestHeld,
    /// A request left the hold queue (sent to a machine, timed out, or the client left).
    RequestReleased,
    MachineStarted {
        id: String,
    },
    MachineStopped {
        id: String,
    },
    MachineFailed {
        id: String,
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
    /// Time passed; deadlines may have come.
    Tick,
}

/// What the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScaleAction {
    StartMachine(String),
    StopMachine(String),
}

/// The wake/stop state machine of one app in one region.
#[derive(Clone, Debug)]
pub struct Scaler {
    config: ScaleConfig,
    machines: BTreeMap<String, Entry>,
    held: u32,
    /// The latest `now` handled; deadlines at or before it are already acted on.
    last_now_ms: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    rtt_ms: u32,
    cached: bool,
    local: bool,
    phase: Phase,
    /// When the machine entered `phase`.
    phase_at_ms: u64,
    idle_since_ms: Option<u64>,
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
            last_now_ms: 0,
        }
    }

    /// Requests held now.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// The phase of machine `id`, if the scaler knows it.
    pub fn phase(&self, id: &str) -> Option<Phase> {
        self.machines.get(id).map(|m| m.phase)
    }

    /// Applies `event` at `now_ms` and returns what to do about the state that results.
    pub fn handle(&mut self, event: ScaleEvent, now_ms: u64) -> Vec<ScaleAction> {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        self.apply(event, now_ms);
        let mut actions = Vec::new();
        self.wake_for_held(now_ms, &mut actions);
        self.keep_minimum(now_ms, &mut actions);
        self.stop_idle(now_ms, &mut actions);
        actions
    }

    /// The next time at which `handle(Tick, t)` could act, if any: an idle machine's stop, a
    /// start that times out, a started machine that stops settling while requests are held.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut deadlines = Vec::new();
        let held = self.held > 0;
        let can_stop = !held && self.local_running() > self.config.min_machines_running;
        for m in self.machines.values() {
            match m.phase {
                Phase::Starting if held => deadlines.push(m.phase_at_ms.saturating_add(self.config.start_timeout_ms)),
                Phase::Started if held => deadlines.push(m.phase_at_ms.saturating_add(self.config.settle_ms)),
                Phase::Started if can_stop && m.local => {
                    if let (Some(idle), Some(after)) = (m.idle_since_ms, self.config.idle_stop_ms) {
                        deadlines.push(idle.saturating_add(after));
                    }
                }
                _ => {}
            }
        }
        deadlines.into_iter().filter(|&t| t > self.last_now_ms).min()
    }

    fn apply(&mut self, event: ScaleEvent, now_ms: u64) {
        match event {
            ScaleEvent::MachineAdded(facts) => {
                let idle_since_ms = (facts.phase == Phase::Started).then_some(now_ms);
                self.machines.insert(
                    facts.id,
                    Entry {
                        rtt_ms: facts.rtt_ms,
                        cached: facts.cached,
                        local: facts.local,
                        phase: facts.phase,
                        phase_at_ms: now_ms,
                        idle_since_ms,
                    },
                );
            }
            ScaleEvent::MachineRemoved { id } => {
                self.machines.remove(&id);
            }
            ScaleEvent::RequestHeld => self.held = self.held.saturating_add(1),
            ScaleEvent::RequestReleased => self.held = self.held.saturating_sub(1),
            ScaleEvent::MachineStarted { id } => self.enter(&id, Phase::Started, now_ms),
            ScaleEvent::MachineStopped { id } => self.enter(&id, Phase::Stopped, now_ms),
            ScaleEvent::MachineFailed { id } => self.enter(&id, Phase::Failed, now_ms),
            ScaleEvent::MachineIdle { id, since_ms } => {
                if let Some(m) = self.machines.get_mut(&id) {
                    m.idle_since_ms = Some(since_ms);
                }
            }
            ScaleEvent::MachineBusy { id } => {
                if let Some(m) = self.machines.get_mut(&id) {
                    m.idle_since_ms = None;
                }
            }
            ScaleEvent::Tick => {}
        }
    }

    fn enter(&mut self, id: &str, phase: Phase, now_ms: u64) {
        if let Some(m) = self.machines.get_mut(id) {
            m.phase = phase;
            m.phase_at_ms = now_ms;
            m.idle_since_ms = (phase == Phase::Started).then_some(now_ms);
        }
    }

    /// Starts machines for held requests, within the herd cap.
    fn wake_for_held(&mut self, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        if self.held == 0 {
            return;
        }
        let absorbing = self
            .machines
            .values()
            .filter(|m| match m.phase {
                Phase::Starting => now_ms < m.phase_at_ms.saturating_add(self.config.start_timeout_ms),
                Phase::Started => now_ms < m.phase_at_ms.saturating_add(self.config.settle_ms),
                _ => false,
            })
            .count() as u32;
        let needed = starts_needed(self.held, self.config.soft_limit, absorbing);
        self.start_best(needed as usize, false, now_ms, actions);
    }

    /// Starts local machines until the minimum runs.
    fn keep_minimum(&mut self, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        let deficit = self.config.min_machines_running.saturating_sub(self.local_running());
        self.start_best(deficit as usize, true, now_ms, actions);
    }

    /// Starts up to `n` stopped machines, best first (cached, nearest, smallest id).
    fn start_best(&mut self, n: usize, local_only: bool, now_ms: u64, actions: &mut Vec<ScaleAction>) {
        if n == 0 {
            return;
        }
        let mut wakeable: Vec<(bool, u32, &String)> = self
            .machines
            .iter()
            .filter(|(_, m)| m.phase == Phase::Stopped && (m.local || !local_only))
            .map(|(id, m)| (!m.cached, m.rtt_ms, id))
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
            actions.push(ScaleAction::StopMachine(id));
        }
    }

    /// Local machines started or starting.
    fn local_running(&self) -> u32 {
        self.machines
            .values()
            .filter(|m| m.local && matches!(m.phase, Phase::Started | Phase::Starting))
            .count() as u32
    }
}
