//! RTT to other regions measured: a health check of one machine per remote region, timed every
//! few seconds and fed to the edge's `RttState`; the table `/colo/rtt` shows; and the delay a
//! fleet file adds between regions on one host.

use crate::edge::{lock, Edge};
use crate::metrics::RegionLabel;
use crate::routes::{Endpoint, RouteTable};
use crate::upstream;
use bytes::Bytes;
use colo_policy::RttSource;
use http::Method;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the edge times each remote region's machines.
const RTT_PROBE: Duration = Duration::from_secs(2);

/// How long one probe may take before it counts for nothing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

// === impl Edge ===

impl Edge {
    /// RTT in ms from this edge's region to each region of `table`, indexed by `RegionId`.
    pub(crate) fn rtt_row(&self, table: &Arc<RouteTable>) -> Arc<[u32]> {
        lock(&self.rtt).row(&self.config.region, &self.regions, table)
    }

    /// The RTT table as this edge uses it: (region, ms, measured or local).
    pub fn rtt_table(&self) -> Vec<(String, u32, bool)> {
        let table = self.routes.borrow().clone();
        let state = lock(&self.rtt);
        table
            .regions
            .iter()
            .zip(state.sources(&self.config.region, &self.regions, &table))
            .map(|(code, (ms, source))| (code.clone(), ms, matches!(source, RttSource::Local | RttSource::Measured)))
            .collect()
    }

    /// Extra delay this edge adds on the way to a machine in `region` (a fleet file's
    /// simulated distance between regions on one host).
    pub(crate) fn link_delay(&self, region: &str) -> Option<Duration> {
        (region != self.config.region && !self.config.inter_region_delay.is_zero()).then_some(self.config.inter_region_delay)
    }

    /// Times a health check of one machine per remote region every `RTT_PROBE` and feeds the
    /// estimator; runs until the edge is dropped.
    pub fn spawn_rtt_probe(self: &Arc<Self>) {
        let edge = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = edge.upgrade() else { return };
                strong.probe_once().await;
                drop(strong);
                tokio::time::sleep(RTT_PROBE).await;
            }
        });
    }

    async fn probe_once(&self) {
        let table = self.routes.borrow().clone();
        let mut targets: HashMap<&str, &Arc<Endpoint>> = HashMap::new();
        for routes in table.apps.values() {
            for m in &routes.machines {
                if m.region != self.config.region {
                    targets.entry(m.region.as_str()).or_insert(m);
                }
            }
        }
        lock(&self.rtt).retain_regions(&table);
        for (region, target) in targets {
            let Some(ms) = self.time_health_check(region, target).await else {
                continue;
            };
            let now = self.now_ms();
            let smoothed = lock(&self.rtt).observe(region, ms, now);
            self.metrics
                .rtt_ms
                .get_or_create(&RegionLabel {
                    region: region.to_string(),
                })
                .set(smoothed.round() as i64);
        }
    }

    /// Milliseconds a health check of `target` took, or `None` if it failed.
    async fn time_health_check(&self, region: &str, target: &Endpoint) -> Option<f64> {
        let wire = upstream::request(&Method::GET, "/health", &target.host_header, std::iter::empty(), &Bytes::new());
        let started = tokio::time::Instant::now();
        if let Some(delay) = self.link_delay(region) {
            tokio::time::sleep(delay).await;
        }
        let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
            let response = upstream::send(
                &target.addr,
                &wire,
                &Method::GET,
                self.config.connect_timeout,
                PROBE_TIMEOUT,
                self.config.machine_key.as_deref(),
                tokio::time::Instant::now(),
            )
            .await
            .ok()?;
            response.into_body().collect().await.ok()?;
            Some(())
        })
        .await;
        matches!(answered, Ok(Some(()))).then(|| started.elapsed().as_secs_f64() * 1000.0)
    }
}
