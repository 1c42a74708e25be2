//! What the edge knows of each machine's load between requests: its own in-flight count, the
//! engine's last `colo-load` report (from its own answers, or relayed by edges elsewhere), and
//! the autostop flag. One [`Load`] per machine lives in its route-table [`Endpoint`].
//!
//! The counters are atomics read and written without a lock; the pick reads them through
//! `MachineView` straight from the endpoints of the pools it looks at.

use colo_policy::LoadReport;
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
    pub(crate) report_relayed: AtomicBool,
    /// Whether the last report was read off the engine's metrics page rather than its answer.
    pub(crate) report_scraped: AtomicBool,
    /// Edge clock (ms) of the last report; 0: none yet.
    pub(crate) report_at_ms: AtomicU64,
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
    pub(crate) fn report(&self) -> Option<LoadReport> {
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

    pub(crate) fn store(&self, report: LoadReport, relayed: bool) {
        self.report_running.store(report.running, Ordering::Relaxed);
        self.report_waiting.store(report.waiting, Ordering::Relaxed);
        self.report_kv.store(report.kv_permille.map_or(NO_KV, u32::from), Ordering::Relaxed);
        self.report_at_ms.store(report.at_ms, Ordering::Relaxed);
        self.report_relayed.store(relayed, Ordering::Relaxed);
    }
}
