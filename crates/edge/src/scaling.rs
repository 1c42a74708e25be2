//! The edge's driver of `colo_policy::Scaler`: one per app, fed with the route table's machines,
//! the held requests and each local machine's idle time, and ticked at its deadlines. The
//! scaler decides which machines to wake and which idle ones to stop; this module only turns
//! the world into its events and its actions into calls to the agents.

use crate::edge::{lock, AppScaler, Edge};
use crate::metrics::AppLabel;
use crate::routes::{AppRoutes, RouteTable};
use crate::EdgeError;
use colo_policy::{admit_hold, check_hold, HoldError, MachineFacts, Phase, ScaleAction, ScaleConfig, ScaleEvent, Scaler};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the edge tells the scalers which machines are idle, at the longest.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// A start the edge asked for counts against the herd cap for this long at most.
const START_TIMEOUT_MS: u64 = 120_000;

/// For this long after a machine started it is assumed to be taking held requests.
const SETTLE_MS: u64 = 2_000;

/// A request's place in its app's hold queue, given up when dropped (picked, timed out, or the
/// client left).
pub(crate) struct Held<'a> {
    edge: &'a Edge,
    app: String,
    /// The region the request is bound to, if any.
    region: Option<String>,
    /// When it joined the queue, on the edge's clock.
    pub(crate) since_ms: u64,
    /// When it must leave the queue.
    pub(crate) deadline: tokio::time::Instant,
}

// === impl Edge ===

impl Edge {
    /// The scaling settings of one app.
    fn scale_config(&self, routes: &AppRoutes) -> ScaleConfig {
        let autostop = routes.autostop.after_secs;
        ScaleConfig {
            soft_limit: routes.limits.soft.unwrap_or(self.config.route.soft_limit).max(1),
            idle_stop_ms: autostop.map(|secs| secs.saturating_mul(1000).max(1)),
            // The minimum is what autostop keeps; an app that never autostops is left alone.
            min_machines_running: if autostop.is_some() { routes.autostop.min_running } else { 0 },
            start_timeout_ms: START_TIMEOUT_MS,
            settle_ms: SETTLE_MS,
            idle_action: routes.autostop.to,
        }
    }

    /// Brings `app`'s scaler (made if missing) up to date with `table`, applies `event`, and
    /// carries out what it decides.
    pub(crate) fn scale(&self, app: &str, table: &Arc<RouteTable>, event: ScaleEvent) {
        let _ = self.with_scaler(app, table, |scaler, now| Ok::<_, ()>(scaler.handle(event, now)));
    }

    /// Runs `decide` on `app`'s scaler (made if missing, and first brought up to date with
    /// `table`) under the scalers' lock, and carries out the actions it returns: one lock for
    /// the decision and its bookkeeping, so that concurrent requests never count a start twice.
    fn with_scaler<E>(
        &self,
        app: &str,
        table: &Arc<RouteTable>,
        decide: impl FnOnce(&mut Scaler, u64) -> Result<Vec<ScaleAction>, E>,
    ) -> Result<(), E> {
        let Some(routes) = table.apps.get(app) else { return Ok(()) };
        let now = self.now_ms();
        let mut scalers = lock(&self.scalers);
        let entry = scalers.entry(app.to_string()).or_insert_with(|| AppScaler {
            scaler: Scaler::new(self.scale_config(routes)),
            table: Weak::new(),
        });
        let mut actions = self.sync(entry, table, routes, now);
        let decided = decide(&mut entry.scaler, now);
        if let Ok(more) = &decided {
            actions.extend(more.iter().cloned());
        }
        self.carry_out(app, &mut entry.scaler, routes, actions, now);
        decided.map(|_| ())
    }

    /// Tells a scaler about the machines of a table it has not seen yet.
    fn sync(&self, entry: &mut AppScaler, table: &Arc<RouteTable>, routes: &AppRoutes, now: u64) -> Vec<ScaleAction> {
        if Weak::ptr_eq(&entry.table, &Arc::downgrade(table)) {
            return Vec::new();
        }
        entry.table = Arc::downgrade(table);
        entry.scaler.set_config(self.scale_config(routes));
        // Machines changed: a start refused for want of a device may go through now.
        entry.scaler.forget_refusals();
        let rtt = self.rtt_row(table);
        let present: HashSet<&str> = routes.fleet.iter().map(|m| m.machine_id.as_str()).collect();
        let gone: Vec<String> = entry
            .scaler
            .machine_ids()
            .filter(|id| !present.contains(id))
            .map(str::to_string)
            .collect();
        for id in gone {
            entry.scaler.record(ScaleEvent::MachineRemoved { id }, now);
        }
        for m in &routes.fleet {
            let rtt_ms = table.region_id(&m.region).and_then(|r| rtt.get(usize::from(r.0)).copied());
            let facts = MachineFacts {
                id: m.machine_id.clone(),
                region: m.region.clone(),
                rtt_ms: rtt_ms.unwrap_or(colo_policy::UNKNOWN_RTT_MS),
                cached: m.cached,
                local: m.region == self.config.region,
                phase: m.phase,
                wake_ms: m.wake_ms,
            };
            entry.scaler.record(ScaleEvent::MachineAdded(facts), now);
        }
        entry.scaler.handle(ScaleEvent::Tick, now)
    }

    /// Carries out a scaler's actions: starts go to the agents; a stop first flags the machine
    /// so that no new request takes it, and is called off if one took it meanwhile.
    fn carry_out(&self, app: &str, scaler: &mut Scaler, routes: &AppRoutes, mut actions: Vec<ScaleAction>, now: u64) {
        let Some(machines) = self.machines.get() else { return };
        while let Some(action) = actions.pop() {
            match &action {
                ScaleAction::StartMachine(id) => {
                    tracing::info!(app, machine = %id, held = scaler.held(), "waking a stopped machine");
                    self.metrics.wakes.get_or_create(&AppLabel { app: app.to_string() }).inc();
                    let (edge, app, machine) = (self.me.clone(), app.to_string(), id.clone());
                    machines.start(
                        id,
                        Box::new(move |reason| {
                            if let Some(edge) = edge.upgrade() {
                                edge.start_refused(&app, machine, reason);
                            }
                        }),
                    );
                }
                ScaleAction::StopMachine(id) | ScaleAction::SuspendMachine(id) => {
                    let suspend = matches!(action, ScaleAction::SuspendMachine(_));
                    if let Some(endpoint) = routes.index_of(id).map(|idx| &routes.machines[idx]) {
                        // Flag first, then look: a request that took the machine meanwhile
                        // either sees the flag (and goes elsewhere) or is seen here.
                        let load = &endpoint.load;
                        load.stop_asked_ms.store(self.wall_now_ms().max(1), Ordering::SeqCst);
                        if load.in_flight.load(Ordering::SeqCst) > 0 {
                            load.stop_asked_ms.store(0, Ordering::SeqCst);
                            actions.extend(scaler.handle(ScaleEvent::StopAborted { id: id.clone() }, now));
                            continue;
                        }
                    }
                    if suspend {
                        tracing::info!(app, machine = %id, "autostop: idle, suspending");
                        machines.suspend(id);
                    } else {
                        tracing::info!(app, machine = %id, "autostop: idle");
                        machines.stop(id);
                    }
                }
            }
        }
    }

    /// One pass over every app: new tables synced, each local machine's idle time told, the
    /// scalers ticked. Returns the earliest deadline any scaler has, on the edge's clock.
    fn scale_pass(&self, table: &Arc<RouteTable>) -> Option<u64> {
        let now = self.now_ms();
        self.metrics.note_regions(&table.regions);
        let mut scalers = lock(&self.scalers);
        scalers.retain(|app, entry| {
            let keep = table.apps.contains_key(app) || entry.scaler.held() > 0;
            if !keep {
                // The app is gone: so are its per-app series, which would otherwise stay for
                // ever (one set per app ever deployed).
                let label = AppLabel { app: app.clone() };
                self.metrics.queue_depth.remove(&label);
                self.metrics.wakes.remove(&label);
                self.metrics.forget_app(app);
            }
            keep
        });
        for (app, routes) in &table.apps {
            let entry = scalers.entry(app.clone()).or_insert_with(|| AppScaler {
                scaler: Scaler::new(self.scale_config(routes)),
                table: Weak::new(),
            });
            let mut actions = self.sync(entry, table, routes, now);
            for m in routes.machines.iter().filter(|m| m.region == self.config.region) {
                let event = if m.load.in_flight.load(Ordering::SeqCst) > 0 {
                    ScaleEvent::MachineBusy { id: m.machine_id.clone() }
                } else {
                    ScaleEvent::MachineIdle {
                        id: m.machine_id.clone(),
                        since_ms: m.load.last_active_ms.load(Ordering::Relaxed),
                    }
                };
                entry.scaler.record(event, now);
            }
            actions.extend(entry.scaler.handle(ScaleEvent::Tick, now));
            self.carry_out(app, &mut entry.scaler, routes, actions, now);
        }
        scalers.values().filter_map(|entry| entry.scaler.next_deadline()).min()
    }

    /// Runs the scaling policy (wakes past their deadlines, autostop) for every app until the
    /// edge is dropped: at each scaler deadline, every `IDLE_CHECK`, and whenever the route
    /// table changes.
    pub fn spawn_scaling(self: &Arc<Self>) {
        let edge = Arc::downgrade(self);
        let mut routes = self.routes.clone();
        tokio::spawn(async move {
            loop {
                let Some(strong) = edge.upgrade() else { return };
                let table = routes.borrow_and_update().clone();
                let deadline = strong.scale_pass(&table);
                let next_check = tokio::time::Instant::now() + IDLE_CHECK;
                let wake_at = deadline.map_or(next_check, |ms| strong.instant_at(ms).min(next_check));
                drop(strong);
                tokio::select! {
                    changed = routes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(wake_at) => {}
                }
            }
        });
    }

    /// A start of `machine` was refused: its scaler wakes another machine if it can, and held
    /// requests look again (they are answered at once when nothing is left to wake).
    fn start_refused(&self, app: &str, machine: String, reason: String) {
        tracing::warn!(app, %machine, %reason, "a wake was refused");
        let table = self.routes.borrow().clone();
        self.scale(app, &table, ScaleEvent::StartRefused { id: machine, reason });
        self.released.notify_waiters();
    }

    /// When requests to `app` are held and none of its machines is running, starting or may be
    /// woken, the error that answers them at once, naming each machine and why.
    pub(crate) fn stuck(&self, app: &str, routes: &AppRoutes) -> Option<EdgeError> {
        let scalers = lock(&self.scalers);
        let stuck = scalers.get(app)?.scaler.stuck(self.now_ms());
        if stuck.is_empty() {
            return None;
        }
        let reasons: Vec<String> = stuck
            .iter()
            .map(|(id, refused)| {
                let failed = || routes.fleet.iter().find(|m| m.machine_id == *id).and_then(|m| m.error.as_deref());
                match refused {
                    Some(why) => format!("{id}: {why}"),
                    None => format!("{id} failed: {}", failed().unwrap_or("no reason recorded")),
                }
            })
            .collect();
        Some(EdgeError::CannotStart {
            app: app.to_string(),
            reasons: reasons.join("; "),
        })
    }

    /// Joins `app`'s hold queue (bound to `region` when the request may only go there), or
    /// refuses when it is full, as the policy decides.
    pub(crate) fn hold(&self, app: &str, region: Option<String>, table: &Arc<RouteTable>) -> Result<Held<'_>, EdgeError> {
        let limits = self.hold_limits();
        let mut admitted = None;
        self.with_scaler(app, table, |scaler, now| {
            let deadline_ms = admit_hold(scaler.held(), &limits, now)?;
            admitted = Some((now, deadline_ms));
            let event = match &region {
                Some(region) => ScaleEvent::RequestHeldIn { region: region.clone() },
                None => ScaleEvent::RequestHeld,
            };
            Ok(scaler.handle(event, now))
        })
        .map_err(|e| self.hold_error(app, e))?;
        // An app missing from the table has no queue to join; the caller has checked it is there.
        let (since_ms, deadline_ms) = admitted.unwrap_or_else(|| {
            let now = self.now_ms();
            (now, now.saturating_add(limits.max_wait_ms))
        });
        self.metrics.held.inc();
        self.metrics.queue_depth.get_or_create(&AppLabel { app: app.to_string() }).inc();
        Ok(Held {
            edge: self,
            app: app.to_string(),
            region,
            since_ms,
            deadline: self.instant_at(deadline_ms),
        })
    }

    /// Whether a held request may go on waiting, as the policy decides.
    pub(crate) fn still_held(&self, app: &str, held: &Held<'_>) -> Result<(), EdgeError> {
        check_hold(held.since_ms, &self.hold_limits(), self.now_ms()).map_err(|e| self.hold_error(app, e))
    }

    fn hold_error(&self, app: &str, error: HoldError) -> EdgeError {
        match error {
            HoldError::QueueFull { max_held, .. } => EdgeError::QueueFull {
                app: app.to_string(),
                limit: max_held,
            },
            HoldError::DeadlinePassed { .. } => self.no_machine(app),
        }
    }

    pub(crate) fn no_machine(&self, app: &str) -> EdgeError {
        EdgeError::NoMachine {
            app: app.to_string(),
            secs: self.config.hold_timeout.as_secs(),
        }
    }

    /// Machines of `app` the scaler believes are starting (for `/colo/routes`).
    pub(crate) fn starting(&self, app: &str) -> Option<u32> {
        lock(&self.scalers).get(app).map(|entry| entry.scaler.starting())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let event = match self.region.take() {
            Some(region) => ScaleEvent::RequestReleasedIn { region },
            None => ScaleEvent::RequestReleased,
        };
        let table = self.edge.routes.borrow().clone();
        if table.apps.contains_key(&self.app) {
            self.edge.scale(&self.app, &table, event);
        } else if let Some(entry) = lock(&self.edge.scalers).get_mut(&self.app) {
            // The app left the table while the request waited: only the count matters now.
            entry.scaler.record(event, self.edge.now_ms());
        }
        self.edge.metrics.held.dec();
        self.edge
            .metrics
            .queue_depth
            .get_or_create(&AppLabel { app: self.app.clone() })
            .dec();
    }
}

/// Phases the route summary counts.
pub(crate) fn count_phase(routes: &AppRoutes, phase: Phase) -> usize {
    routes.fleet.iter().filter(|m| m.phase == phase).count()
}
