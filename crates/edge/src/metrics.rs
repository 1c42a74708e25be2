//! The edge's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub source: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub in_flight: Gauge,
    pub held: Gauge,
    pub upstream_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("colo_edge");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let in_flight = Gauge::default();
        let held = Gauge::default();
        let upstream_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("requests", "Requests answered, by app and status", requests.clone());
        registry.register(
            "errors",
            "Requests the edge answered with an error, by where it came from",
            errors.clone(),
        );
        registry.register("in_flight", "Requests being proxied", in_flight.clone());
        registry.register("held", "Requests waiting for a machine to start", held.clone());
        registry.register(
            "upstream_seconds",
            "Time to the machine's response headers",
            upstream_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            errors,
            in_flight,
            held,
            upstream_seconds,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}
