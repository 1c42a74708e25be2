//! What the edge does with engines' load reports: keeps those its machines' answers carry,
//! relays the fresh ones to edges elsewhere and takes theirs, shows them at `/colo/load`, and
//! counts each cold start a request waited for once.

use crate::edge::Edge;
use crate::headers::COLO_LOAD;
use crate::load::{Load, SharedLoad};
use crate::routes::Endpoint;
use colo_policy::LoadReport;
use http::HeaderMap;
use std::sync::atomic::Ordering;

// === impl Edge ===

impl Edge {
    /// Keeps the engine's `colo-load` report of a response for later picks.
    pub(crate) fn record_report(&self, load: &Load, headers: &HeaderMap) {
        let Some(value) = headers.get(COLO_LOAD).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Ok(report) = LoadReport::parse(value, self.now_ms()) {
            load.store(report, false);
            load.report_scraped.store(false, Ordering::Relaxed);
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
            .flat_map(|routes| routes.machines.iter().map(move |m| (routes.engine, m)))
            .map(|(engine, m)| {
                // Where the report came from: the engine's answers, its metrics page, or an edge
                // in another region that had it from one of those.
                let source = if m.load.report_relayed.load(Ordering::Relaxed) {
                    "relayed"
                } else if m.load.report_scraped.load(Ordering::Relaxed) {
                    "metrics"
                } else {
                    "colo-load"
                };
                serde_json::json!({
                    "machine": m.machine_id,
                    "engine": engine.as_str(),
                    "in_flight": m.load.in_flight.load(Ordering::Relaxed),
                    "report": m.load.report().map(|r| serde_json::json!({
                        "running": r.running,
                        "waiting": r.waiting,
                        "kv_used": r.kv_permille.map(|p| f64::from(p) / 1000.0),
                        "age_ms": now.saturating_sub(r.at_ms),
                        "relayed": m.load.report_relayed.load(Ordering::Relaxed),
                        "source": source,
                    })),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["machine"].as_str().cmp(&b["machine"].as_str()));
        rows
    }

    /// Counts one machine start's phases in the cold-start histograms, once per start.
    pub(crate) fn observe_cold_start(&self, endpoint: &Endpoint, cold: &colo_core::ColdStart) {
        if endpoint.load.cold_start_seen.swap(cold.requested_at_ms, Ordering::Relaxed) == cold.requested_at_ms {
            return;
        }
        for (phase, ms) in [
            ("queued", cold.queued_ms),
            ("hydrate", cold.hydrate_ms),
            ("engine_load", cold.engine_load_ms),
            ("overlap", cold.overlap_ms),
            ("first_response", cold.first_response_ms),
        ] {
            let labels = crate::metrics::PhaseLabel { phase: phase.into() };
            self.metrics.cold_start_seconds.get_or_create(&labels).observe(ms as f64 / 1000.0);
        }
    }
}
