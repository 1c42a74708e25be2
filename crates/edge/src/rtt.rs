//! The RTT row the pick reads: from this edge's region to each region of a route table, from
//! the smoothed probes of `colo_policy::RttEstimator`, else the great-circle estimate; made once
//! per table and measurement rather than per request. The probes themselves are `probe.rs`'s.

use crate::routes::RouteTable;
use colo_core::Regions;
use colo_policy::{RttEstimator, RttSource};
use std::sync::{Arc, Weak};

/// The estimator and the row it last produced.
#[derive(Default)]
pub(crate) struct RttState {
    estimator: RttEstimator,
    /// Bumped by every measurement, so that a cached row knows it is stale.
    version: u64,
    row: Option<CachedRow>,
}

struct CachedRow {
    /// The table the row is for (held weakly: the allocation cannot be reused while this lives).
    table: Weak<RouteTable>,
    version: u64,
    row: Arc<[u32]>,
}

// === impl RttState ===

impl RttState {
    /// RTT in ms from `here` to each region of `table`, indexed by `RegionId`.
    pub(crate) fn row(&mut self, here: &str, regions: &Regions, table: &Arc<RouteTable>) -> Arc<[u32]> {
        if let Some(cached) = &self.row {
            if cached.version == self.version && Weak::ptr_eq(&cached.table, &Arc::downgrade(table)) {
                return cached.row.clone();
            }
        }
        let row: Arc<[u32]> = self.sources(here, regions, table).into_iter().map(|(ms, _)| ms).collect();
        self.row = Some(CachedRow {
            table: Arc::downgrade(table),
            version: self.version,
            row: row.clone(),
        });
        row
    }

    /// Each region's RTT and what it is known from.
    pub(crate) fn sources(&self, here: &str, regions: &Regions, table: &RouteTable) -> Vec<(u32, RttSource)> {
        self.estimator.row(here, &table.regions, |here, there| regions.rtt_ms(here, there))
    }

    /// Takes one probe's round trip and returns the new smoothed value.
    pub(crate) fn observe(&mut self, region: &str, ms: f64, now_ms: u64) -> f64 {
        self.version += 1;
        self.estimator.observe(region, ms, now_ms)
    }

    /// Forgets regions no longer in `table`.
    pub(crate) fn retain_regions(&mut self, table: &RouteTable) {
        self.estimator.retain(|region| table.regions.iter().any(|r| r == region));
    }
}
