//! The lease watch: marks hosts lost as `colo_policy::reconcile::lost_hosts` judges their
//! leases, and reconciles every app when the live hosts change.

use crate::{now_ms, Control};
use colo_core::HostRecord;
use colo_policy::reconcile::{live_hosts, lost_hosts};
use std::sync::Arc;
use std::time::Duration;

/// How often the watch reads the hosts.
const WATCH_EVERY: Duration = Duration::from_millis(500);

// === impl Control ===

impl Control {
    /// Marks hosts whose lease ran out as lost (their machines leave every route table) and
    /// reconciles whenever the set of live hosts changes, and every `every` besides. Leases
    /// are judged only after the state store has been reachable for a whole lease, so that
    /// control's own outage never condemns hosts whose heartbeats it could not see.
    pub fn spawn_lease_watch(self: &Arc<Self>, reachable: Arc<dyn Fn() -> bool + Send + Sync>, every: Duration) {
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut reachable_since: Option<u64> = None;
            let mut live_before: Vec<String> = Vec::new();
            let mut last_pass = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let Some(control) = control.upgrade() else { return };
                let now = now_ms();
                if !reachable() {
                    reachable_since = None;
                    continue;
                }
                let since = *reachable_since.get_or_insert(now);
                let Ok(hosts) = control.state.hosts().await else { continue };
                for host in lost_hosts(&hosts, now, since) {
                    tracing::warn!(host = %host.name, region = %host.region, "lease ran out; host lost");
                    let lost = HostRecord {
                        lost: true,
                        ..host.clone()
                    };
                    if let Err(e) = control.state.put_host(&lost).await {
                        tracing::warn!(host = %host.name, error = %e, "marking a host lost");
                    }
                }
                let live = live_hosts(&hosts, now);
                if live != live_before || last_pass.elapsed() >= every {
                    if live != live_before {
                        tracing::info!(?live, "live hosts changed; reconciling");
                    }
                    control.reconcile_all().await;
                    live_before = live;
                    last_pass = tokio::time::Instant::now();
                }
            }
        });
    }
}
