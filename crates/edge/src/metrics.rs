//! The edge's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    /// Region of the machine that answered; `-` when none did.
    pub region: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The app asked for; [`NO_APP`] when it was not found (or not yet known).
    pub app: String,
    /// One of [`ERROR_SOURCES`].
    pub source: String,
}

/// Where the edge's own error answers come from (`EdgeError::source_label`).
pub const ERROR_SOURCES: [&str; 4] = ["client", "capacity", "upstream", "internal"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `queued`, `hydrate`, `engine_load` or `first_response`.
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `connect` (never sent) or `after_send` (an idempotent request sent again).
    pub kind: String,
}

/// The app label of requests whose app is not in the route table: junk names a client sends
/// must not each make their own metric series.
pub(crate) const NO_APP: &str = "-";

/// Latency buckets from 1 ms to about 65 s.
#[derive(Clone)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram, LatencyBuckets>,
    pub errors: Family<ErrorLabels, Counter>,
    /// Time from a streamed completion's arrival to its first event that carries text.
    pub first_token_seconds: Family<AppLabel, Histogram, LatencyBuckets>,
    /// Tokens generated for callers, by app.
    pub output_tokens: Family<AppLabel, Counter>,
    /// Bytes of machines' answers passed on to callers (bodies), by app: the edge's egress.
    pub response_bytes: Family<AppLabel, Counter>,
    pub in_flight: Gauge,
    pub held: Gauge,
    /// Client connections held, set when the page is read.
    pub connections: Gauge,
    pub queue_depth: Family<AppLabel, Gauge>,
    pub wakes: Family<AppLabel, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub replays: Counter,
    pub rtt_ms: Family<RegionLabel, Gauge>,
    pub cold_start_seconds: Family<PhaseLabel, Histogram, LatencyBuckets>,
    pub upstream_seconds: Histogram,
    /// Every region a route table has named: the `region` labels a request series may carry.
    regions_seen: Arc<Mutex<BTreeSet<String>>>,
}

/// One app's series for the answers of one region's machines: the request count and latency
/// of answers with status 200 (nearly all), and the app's egress. Kept on each route-table
/// endpoint once made (`Endpoint::series`), so that an answered request counts itself without
/// building, hashing and looking up its labels.
#[derive(Debug)]
pub struct AnswerSeries {
    pub ok_requests: Counter,
    pub ok_seconds: Histogram,
    pub egress: Counter,
}

impl Metrics {
    /// The handles on `app`'s series for answers from `region` (made when missing).
    pub fn answer_series(&self, app: &str, region: &str) -> AnswerSeries {
        let labels = RequestLabels {
            app: app.to_string(),
            region: region.to_string(),
            status: 200,
        };
        AnswerSeries {
            ok_requests: self.requests.get_or_create(&labels).clone(),
            ok_seconds: self.request_seconds.get_or_create(&labels).clone(),
            egress: self.response_bytes.get_or_create(&AppLabel { app: app.to_string() }).clone(),
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("colo_edge");
        let metrics = Self {
            registry: Arc::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(LatencyBuckets),
            errors: Family::default(),
            first_token_seconds: Family::new_with_constructor(LatencyBuckets),
            output_tokens: Family::default(),
            response_bytes: Family::default(),
            in_flight: Gauge::default(),
            held: Gauge::default(),
            connections: Gauge::default(),
            queue_depth: Family::default(),
            wakes: Family::default(),
            retries: Family::default(),
            replays: Counter::default(),
            rtt_ms: Family::default(),
            cold_start_seconds: Family::new_with_constructor(LatencyBuckets),
            upstream_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            regions_seen: Arc::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by app, machine region and status",
            metrics.requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from a request's arrival to its response head, by app, machine region and status",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "errors",
            "Requests the edge answered with an error, by app and where it came from",
            metrics.errors.clone(),
        );
        registry.register(
            "first_token_seconds",
            "Time from a streamed completion's arrival to its first generated text, by app",
            metrics.first_token_seconds.clone(),
        );
        registry.register(
            "output_tokens",
            "Tokens generated for callers, by app (a stream's text events, or an answer's usage)",
            metrics.output_tokens.clone(),
        );
        registry.register(
            "response_bytes",
            "Bytes of machines' answers passed on to callers, by app",
            metrics.response_bytes.clone(),
        );
        registry.register("in_flight", "Requests being proxied", metrics.in_flight.clone());
        registry.register("held", "Requests waiting for a machine with room", metrics.held.clone());
        registry.register(
            "connections",
            "Client connections the edge holds (its cap and each address's are the --max-connections flags)",
            metrics.connections.clone(),
        );
        registry.register("queue_depth", "Requests held, by app", metrics.queue_depth.clone());
        registry.register("wakes", "Stopped machines this edge asked to start, by app", metrics.wakes.clone());
        registry.register(
            "retries",
            "Requests sent again to another machine, by kind",
            metrics.retries.clone(),
        );
        registry.register(
            "replays",
            "Requests resent because of a colo-replay answer",
            metrics.replays.clone(),
        );
        registry.register("rtt_ms", "Measured RTT to each remote region", metrics.rtt_ms.clone());
        registry.register(
            "cold_start_seconds",
            "Phases of the machine starts that requests at this edge waited for",
            metrics.cold_start_seconds.clone(),
        );
        registry.register(
            "upstream_seconds",
            "Time to the machine's response headers",
            metrics.upstream_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Remembers the regions of a route table (once per table, not per request).
    pub fn note_regions(&self, regions: &[String]) {
        let mut seen = self.regions_seen.lock().unwrap_or_else(|e| e.into_inner());
        for region in regions {
            if !seen.contains(region) {
                seen.insert(region.clone());
            }
        }
    }

    /// Drops every request series of `app`, which has left the route table: otherwise each app
    /// ever deployed would keep its series until the edge restarts. Series are found by their
    /// possible labels (each region seen, `-`, each status), so requests pay nothing for it.
    pub fn forget_app(&self, app: &str) {
        let regions: Vec<String> = {
            let seen = self.regions_seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter().cloned().chain([NO_APP.to_string()]).collect()
        };
        let mut labels = RequestLabels {
            app: app.to_string(),
            region: String::new(),
            status: 0,
        };
        let label = AppLabel { app: app.to_string() };
        self.first_token_seconds.remove(&label);
        self.output_tokens.remove(&label);
        self.response_bytes.remove(&label);
        for source in ERROR_SOURCES {
            self.errors.remove(&ErrorLabels {
                app: app.to_string(),
                source: source.to_string(),
            });
        }
        for region in regions {
            labels.region = region;
            for status in 100..=599 {
                labels.status = status;
                self.requests.remove(&labels);
                self.request_seconds.remove(&labels);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}
