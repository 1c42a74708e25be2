//! Load from engines that do not send `colo-load` with their answers (vLLM, SGLang,
//! llama-server): the edge reads each local machine's Prometheus `/metrics` every 200 ms and
//! maps it, by the app's engine profile, to the same load record the pick reads
//! (`colo_policy::read_metrics`). Machines of other regions are scraped by their own region's
//! edge, whose reports reach this one by gossip.

use crate::edge::Edge;
use crate::routes::Endpoint;
use crate::upstream;
use bytes::Bytes;
use colo_core::MetricNames;
use http::Method;
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the edge reads each engine's metrics.
const SCRAPE_EVERY: Duration = Duration::from_millis(200);

/// How long one read may take; a slower engine keeps its last report, which ages out.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest metrics page read (vLLM's, with its histograms, is tens of KB).
const MAX_PAGE: usize = 4 * 1024 * 1024;

// === impl Edge ===

impl Edge {
    /// Reads the load of this region's machines that report no `colo-load`, every 200 ms, until
    /// the edge is dropped.
    pub fn spawn_load_scrape(self: &Arc<Self>) {
        let edge = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = edge.upgrade() else { return };
                strong.scrape_once().await;
                drop(strong);
                tokio::time::sleep(SCRAPE_EVERY).await;
            }
        });
    }

    async fn scrape_once(&self) {
        let table = self.routes.borrow().clone();
        let targets: Vec<(&Arc<Endpoint>, MetricNames)> = table
            .apps
            .values()
            .filter_map(|routes| Some((routes, routes.engine.metrics()?)))
            .flat_map(|(routes, names)| {
                routes
                    .machines
                    .iter()
                    .filter(|m| m.region == self.config.region)
                    .map(move |m| (m, names))
            })
            .collect();
        futures::future::join_all(targets.into_iter().map(|(endpoint, names)| async move {
            if let Err(reason) = self.scrape(endpoint, &names).await {
                tracing::debug!(machine = %endpoint.machine_id, %reason, "reading the engine's metrics");
            }
        }))
        .await;
    }

    /// Reads one machine's metrics into its load record.
    async fn scrape(&self, endpoint: &Endpoint, names: &MetricNames) -> Result<(), String> {
        let wire = upstream::request(&Method::GET, "/metrics", &endpoint.host_header, std::iter::empty(), &Bytes::new());
        let page = tokio::time::timeout(SCRAPE_TIMEOUT, async {
            let response = upstream::send(
                &endpoint.addr,
                &wire,
                &Method::GET,
                self.config.connect_timeout,
                SCRAPE_TIMEOUT,
                self.config.machine_key.as_deref(),
                tokio::time::Instant::now(),
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
            if !response.status().is_success() {
                return Err(format!("/metrics answered {}", response.status()));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_PAGE);
            body.collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
        let text = std::str::from_utf8(&page).map_err(|_| "the metrics page is not UTF-8".to_string())?;
        let scraped = colo_policy::read_metrics(names, text, self.now_ms()).map_err(|e| e.to_string())?;
        endpoint.load.store(scraped.report, false);
        endpoint.load.report_scraped.store(true, Ordering::Relaxed);
        Ok(())
    }
}
