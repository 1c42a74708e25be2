//! The edge's shared state: its settings, the route table it follows, the clock, and the
//! policy state that outlives one request (scalers, RTT, key buckets, prompt affinity).

use crate::machines::Machines;
use crate::metrics::Metrics;
use crate::routes::{AppRoutes, RouteTable};
use crate::rtt::RttState;
use crate::EdgeConfig;
use colo_core::Regions;
use colo_policy::{HoldLimits, KeyLimits, PrefixIndex, RetryPolicy, RouteParams, Scaler};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::{watch, Notify};

/// Prompt blocks the edge remembers, and for how long.
const PREFIX_ENTRIES: usize = 64 * 1024;
const PREFIX_TTL_MS: u64 = 10 * 60 * 1000;

/// The `Retry-After` of a 503 for a full queue or a hold that ran out, in seconds.
pub(crate) const HOLD_RETRY_AFTER_S: u32 = 5;

/// One app's scaler and the route table its machines were last read from.
pub(crate) struct AppScaler {
    pub(crate) scaler: Scaler,
    pub(crate) table: Weak<RouteTable>,
}

pub struct Edge {
    /// This edge, for the callbacks of the starts it asks for.
    pub(crate) me: Weak<Edge>,
    pub(crate) config: EdgeConfig,
    pub(crate) routes: watch::Receiver<Arc<RouteTable>>,
    /// Counts picks, so that ties go to a different machine each time.
    pub(crate) picks: AtomicU64,
    pub(crate) metrics: Metrics,
    pub(crate) regions: Regions,
    /// The origin of the edge's clock (`tokio::time`, so that tests can pause it).
    clock: tokio::time::Instant,
    /// Wall-clock ms at `clock`: a request's arrival in wall time without another clock read.
    clock_wall_ms: u64,
    /// Signalled whenever a request to any machine ends, so held requests look again.
    pub(crate) released: Arc<Notify>,
    /// Wakes and stops machines, where the process has agents to ask.
    pub(crate) machines: OnceLock<Arc<dyn Machines>>,
    /// Rate-limit buckets per API key (by the key's digest).
    pub(crate) keys: Mutex<HashMap<String, KeyLimits>>,
    /// Prompt block -> the machines that served it lately (by `machine_key`).
    pub(crate) prefixes: Mutex<PrefixIndex<u64>>,
    /// Each app's wake and autostop state machine, with its hold queue.
    pub(crate) scalers: Mutex<HashMap<String, AppScaler>>,
    /// Measured RTT per region and the row picks read.
    pub(crate) rtt: Mutex<RttState>,
    pub(crate) retry: RetryPolicy,
    /// Client connections held, in all and per address (`Limits`' caps).
    pub(crate) connections: Arc<crate::limits::Connections>,
}

// === impl Edge ===

impl Edge {
    pub fn new(config: EdgeConfig, routes: watch::Receiver<Arc<RouteTable>>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            routes,
            picks: AtomicU64::new(0),
            metrics: Metrics::new(),
            regions: Regions::builtin(),
            clock: tokio::time::Instant::now(),
            clock_wall_ms: colo_core::unix_ms(),
            released: Arc::new(Notify::new()),
            machines: OnceLock::new(),
            keys: Mutex::default(),
            prefixes: Mutex::new(PrefixIndex::new(PREFIX_ENTRIES, PREFIX_TTL_MS)),
            scalers: Mutex::default(),
            rtt: Mutex::default(),
            retry: RetryPolicy::default(),
            connections: Arc::default(),
        })
    }

    /// Lets the edge wake and stop machines (wake on demand, autostop).
    pub fn with_machines(self: Arc<Self>, machines: Arc<dyn Machines>) -> Arc<Self> {
        let _ = self.machines.set(machines);
        self
    }

    /// The edge's metrics in Prometheus' text format, as `/metrics` serves them (the dashboard of
    /// a `colo up` reads its in-process edges this way).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// What this edge has counted per app, summed from its metrics: what the dashboard shows
    /// (read in process by `colo up`, published over the bus by `colo edge`).
    pub fn traffic(&self) -> colo_policy::EdgeTraffic {
        colo_policy::traffic::summarize(&self.config.region, &self.metrics_text())
    }

    /// Requests this edge holds or is proxying (bodies still streaming included): what a
    /// drain waits for.
    pub fn busy(&self) -> i64 {
        self.metrics.in_flight.get() + self.metrics.held.get()
    }

    /// The edge's clock: milliseconds since it started, never 0.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(tokio::time::Instant::now())
    }

    /// `at` on the edge's clock.
    pub(crate) fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        at.saturating_duration_since(self.clock).as_millis() as u64 + 1
    }

    /// The instant at `ms` on the edge's clock.
    pub(crate) fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        self.clock + std::time::Duration::from_millis(ms.saturating_sub(1))
    }

    /// `at` in wall-clock ms since the Unix epoch.
    pub(crate) fn wall_ms_at(&self, at: tokio::time::Instant) -> u64 {
        self.clock_wall_ms + at.saturating_duration_since(self.clock).as_millis() as u64
    }

    /// The routing settings of one app: the edge's, with the app's own limits where it set them.
    pub(crate) fn route_params(&self, routes: &AppRoutes) -> RouteParams {
        RouteParams {
            soft_limit: routes.limits.soft.unwrap_or(self.config.route.soft_limit),
            hard_limit: routes.limits.hard.unwrap_or(self.config.route.hard_limit),
            mode: routes.route.unwrap_or(self.config.route.mode),
            weights: routes.weights.unwrap_or(self.config.route.weights),
            ..self.config.route
        }
    }

    /// The hold queue's bounds.
    pub(crate) fn hold_limits(&self) -> HoldLimits {
        HoldLimits {
            max_held: self.config.max_held,
            max_wait_ms: self.config.hold_timeout.as_millis() as u64,
            retry_after_s: HOLD_RETRY_AFTER_S,
        }
    }

    /// Wall-clock ms now, for marks compared with machine records (which other processes
    /// stamp with their wall clocks).
    pub(crate) fn wall_now_ms(&self) -> u64 {
        colo_core::unix_ms()
    }
}

/// Locks `mutex`, taking the data even if a thread panicked while holding it: every value kept
/// behind the edge's locks is valid after any single update.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
