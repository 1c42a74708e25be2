//! What the edge knows of each machine's load between requests: its own in-flight count, the
//! engine's last `colo-load` report (from its own answers, or relayed by edges elsewhere), and
//! the autostop flag. One [`Load`] per machine lives in its route-table [`Endpoint`].
//!
//! The counters are atomics read and written without a lock; the pick reads them through
//! `MachineView` straight from the endpoints of the pools it looks at.

use crate::edge::Edge;
use crate::headers::COLO_LOAD;
use crate::routes::Endpoint;
use colo_policy::{LoadReport, MachineView};
use http::HeaderMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Counters of one machine, shared by every request that reads or changes them. The fields the
/// pick reads come first (see `Endpoint`'s layout).
#[derive(Debug, Default)]
#[repr(C)]
pub struct Load {
    /// Requests this edge has sent the machine and not yet seen answered.
    pub in_flight: AtomicU32,
    report_running: AtomicU32,
    report_waiting: AtomicU32,
    /// KV use in thousandths; `NO_KV` when the report did not say.
    report_kv: AtomicU32,
    /// Whether the last report came from another edge (relayed), not from the engine's own
    /// answer to this edge.
    report_relayed: AtomicBool,
    /// Edge clock (ms) of the last report; 0: none yet.
    report_at_ms: AtomicU64,
    /// Edge clock (ms) when the machine last finished a request; 0: never.
    pub(crate) last_active_ms: AtomicU64,
    /// Wall-clock ms when autostop asked for the machine to stop; 0: never. A machine asked to
    /// stop gets no new requests until its record changes after that moment (it restarted).
    pub(crate) stop_asked_ms: AtomicU64,
    /// `requested_at_ms` of the start last counted in the cold-start metrics.
    pub(crate) cold_start_seen: AtomicU64,
}

/// One engine load report as edges relay them to each other.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedLoad {
    pub machine: String,
    pub running: u32,
    pub waiting: u32,
    /// KV use in thousandths, when the engine reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_permille: Option<u16>,
    /// How old the report was when it was sent.
    pub age_ms: u64,
}

/// `report_kv` when the engine did not report its KV use.
const NO_KV: u32 = u32::MAX;

// === impl Load ===

impl Load {
    fn report(&self) -> Option<LoadReport> {
        let at_ms = self.report_at_ms.load(Ordering::Relaxed);
        (at_ms > 0).then(|| LoadReport {
            running: self.report_running.load(Ordering::Relaxed),
            waiting: self.report_waiting.load(Ordering::Relaxed),
            kv_permille: u16::try_from(self.report_kv.load(Ordering::Relaxed)).ok(),
            at_ms,
        })
    }

    /// Takes over what `old` knew of the same machine, except its in-flight count.
    pub(crate) fn carry_from(&self, old: &Load) {
        if let Some(report) = old.report() {
            self.store(report, old.report_relayed.load(Ordering::Relaxed));
        }
        for (to, from) in [
            (&self.last_active_ms, &old.last_active_ms),
            (&self.stop_asked_ms, &old.stop_asked_ms),
            (&self.cold_start_seen, &old.cold_start_seen),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn store(&self, report: LoadReport, relayed: bool) {
        self.report_running.store(report.running, Ordering::Relaxed);
        self.report_waiting.store(report.waiting, Ordering::Relaxed);
        self.report_kv.store(report.kv_permille.map_or(NO_KV, u32::from), Ordering::Relaxed);
        self.report_at_ms.store(report.at_ms, Ordering::Relaxed);
        self.report_relayed.store(relayed, Ordering::Relaxed);
    }
}

// === impl Endpoint ===

impl Endpoint {
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

// === impl Edge ===

impl Edge {
    /// Keeps the engine's `colo-load` report of a response for later picks.
    pub(crate) fn record_report(&self, load: &Load, headers: &HeaderMap) {
        let Some(value) = headers.get(COLO_LOAD).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Ok(report) = LoadReport::parse(value, self.now_ms()) {
            load.store(report, false);
        }
    }

    /// The engine load reports this edge received itself that are still fresh, at most
    /// `limit`: what it shares with edges in other regions.
    pub fn fresh_reports(&self, limit: usize) -> Vec<SharedLoad> {
        let now = self.now_ms();
        let table = self.routes.borrow().clone();
        table
            .apps
            .values()
            .flat_map(|routes| routes.machines.iter())
            .filter_map(|m| {
                let report = m.load.report()?;
                let age = now.saturating_sub(report.at_ms);
                let own = !m.load.report_relayed.load(Ordering::Relaxed);
                (own && age <= self.config.route.report_fresh_ms).then(|| SharedLoad {
                    machine: m.machine_id.clone(),
                    running: report.running,
                    waiting: report.waiting,
                    kv_permille: report.kv_permille,
                    age_ms: age,
                })
            })
            .take(limit)
            .collect()
    }

    /// Takes a report another edge relayed, unless this edge holds a fresher one. Reports of
    /// machines not in this edge's table are dropped: they would only take memory.
    pub fn apply_shared(&self, report: &SharedLoad) {
        let table = self.routes.borrow().clone();
        let Some(endpoint) = table
            .apps
            .values()
            .find_map(|routes| routes.index_of(&report.machine).map(|idx| &routes.machines[idx]))
        else {
            return;
        };
        let at_ms = self.now_ms().saturating_sub(report.age_ms).max(1);
        if endpoint.load.report_at_ms.load(Ordering::Relaxed) >= at_ms {
            return;
        }
        let relayed = LoadReport {
            running: report.running,
            waiting: report.waiting,
            kv_permille: report.kv_permille,
            at_ms,
        };
        endpoint.load.store(relayed, true);
    }

    /// Every routable machine's load as this edge sees it (for `/colo/load`).
    pub(crate) fn load_table(&self) -> Vec<serde_json::Value> {
        let now = self.now_ms();
        let table = self.routes.borrow().clone();
        let mut rows: Vec<serde_json::Value> = table
            .apps
            .values()
            .flat_map(|routes| routes.machines.iter())
            .map(|m| {
                serde_json::json!({
                    "machine": m.machine_id,
                    "in_flight": m.load.in_flight.load(Ordering::Relaxed),
                    "report": m.load.report().map(|r| serde_json::json!({
                        "running": r.running,
                        "waiting": r.waiting,
                        "kv_used": r.kv_permille.map(|p| f64::from(p) / 1000.0),
                        "age_ms": now.saturating_sub(r.at_ms),
                        "relayed": m.load.report_relayed.load(Ordering::Relaxed),
                    })),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["machine"].as_str().cmp(&b["machine"].as_str()));
        rows
    }
}

impl Edge {
    /// Counts one machine start's phases in the cold-start histograms, once per start.
    pub(crate) fn observe_cold_start(&self, endpoint: &Endpoint, cold: &colo_core::ColdStart) {
        if endpoint.load.cold_start_seen.swap(cold.requested_at_ms, Ordering::Relaxed) == cold.requested_at_ms {
            return;
        }
        for (phase, ms) in [
            ("queued", cold.queued_ms),
            ("hydrate", cold.hydrate_ms),
            ("engine_load", cold.engine_load_ms),
            ("first_response", cold.first_response_ms),
        ] {
            let labels = crate::metrics::PhaseLabel { phase: phase.into() };
            self.metrics.cold_start_seconds.get_or_create(&labels).observe(ms as f64 / 1000.0);
        }
    }
}
