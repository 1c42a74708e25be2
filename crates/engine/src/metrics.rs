//! The engine's Prometheus metrics.

use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<StatusLabel, Counter>,
    pub inputs: Counter,
    pub prompt_tokens: Counter,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    pub batch_size: Histogram,
    pub gen_waiting: Gauge,
    pub gen_running: Gauge,
    pub kv_used_bytes: Gauge,
    pub kv_budget_bytes: Gauge,
    pub generated_tokens: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("colo_engine");
        let requests = Family::<StatusLabel, Counter>::default();
        let inputs = Counter::default();
        let prompt_tokens = Counter::default();
        let in_flight = Gauge::default();
        let queue_depth = Gauge::default();
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register("requests", "HTTP requests answered, by status", requests.clone());
        registry.register("inputs", "Inputs embedded", inputs.clone());
        registry.register("prompt_tokens", "Tokens of embedded inputs", prompt_tokens.clone());
        registry.register("in_flight", "Requests being served", in_flight.clone());
        registry.register("queue_depth", "Requests waiting for the compute thread", queue_depth.clone());
        registry.register("batch_size", "Sequences per forward pass", batch_size.clone());
        let (gen_waiting, gen_running, kv_used_bytes, kv_budget_bytes, generated_tokens) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register("waiting", "Generation requests waiting for KV cache room", gen_waiting.clone());
        registry.register("running", "Sequences in the running batch", gen_running.clone());
        registry.register("kv_used_bytes", "KV cache bytes held by running sequences", kv_used_bytes.clone());
        registry.register("kv_budget_bytes", "KV cache bytes the engine may use", kv_budget_bytes.clone());
        registry.register("generated_tokens", "Tokens generated since start", generated_tokens.clone());
        Self {
            registry: Arc::new(registry),
            requests,
            inputs,
            prompt_tokens,
            in_flight,
            queue_depth,
            batch_size,
            gen_waiting,
            gen_running,
            kv_used_bytes,
            kv_budget_bytes,
            generated_tokens,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// Counts a request as in flight while `response` is produced, then by its status. The count
/// is held by a guard, so a request whose future is dropped (the client went away and hyper
/// cancelled the handler) leaves the gauge too; it is not counted by status, having none.
pub async fn counted(metrics: &Metrics, response: impl Future<Output = Response>) -> Response {
    let _in_flight = InFlight::enter(&metrics.in_flight);
    let response = response.await;
    metrics
        .requests
        .get_or_create(&StatusLabel {
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// One request in the in-flight gauge, for as long as it lives.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancelled_request_leaves_the_in_flight_gauge() {
        let metrics = Metrics::new();
        let task = {
            let metrics = metrics.clone();
            tokio::spawn(async move { counted(&metrics, std::future::pending()).await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while metrics.in_flight.get() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the request is counted in flight");
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(metrics.in_flight.get(), 0);

        let answered = counted(&metrics, async { Response::default() }).await;
        assert_eq!(answered.status(), 200);
        assert_eq!(metrics.in_flight.get(), 0);
        assert_eq!(metrics.requests.get_or_create(&StatusLabel { status: 200 }).get(), 1);
    }
}
