//! The agent's Prometheus metrics, built from its machine records and its host cache at each
//! scrape: the phases of every machine's last cold start, where its bytes came from, and how
//! full the cache is.

use crate::Agent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    machine: String,
    app: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    machine: String,
    app: String,
    source: String,
}

/// The metrics text of these agents (the hosts of one process) now.
pub(crate) async fn encode(agents: &[std::sync::Arc<Agent>]) -> String {
    let mut registry = Registry::with_prefix("colo_agent");
    let phases = Family::<PhaseLabels, Gauge>::default();
    let sources = Family::<SourceLabels, Gauge>::default();
    let cache_bytes = Family::<HostLabel, Gauge>::default();
    let cache_capacity = Family::<HostLabel, Gauge>::default();
    let cache_models = Family::<HostLabel, Gauge>::default();
    let origin_bytes = Family::<HostLabel, Counter<u64>>::default();
    registry.register(
        "cold_start_milliseconds",
        "Phases of each machine's last start (queued, hydrate, engine_load, first_response)",
        phases.clone(),
    );
    registry.register(
        "cold_start_hydrate_bytes",
        "Bytes of each machine's last start, by where they came from (cache, peer, origin)",
        sources.clone(),
    );
    registry.register("cache_bytes", "Bytes held by the host cache", cache_bytes.clone());
    registry.register(
        "cache_capacity_bytes",
        "Capacity of the host cache (0: unlimited)",
        cache_capacity.clone(),
    );
    registry.register("cache_models", "Model revisions in the host cache", cache_models.clone());
    registry.register(
        "origin_read_bytes",
        "Bytes this agent's pulls read from the origin store",
        origin_bytes.clone(),
    );

    for agent in agents {
        for machine in agent.machines().await.unwrap_or_default() {
            let Some(cold) = &machine.cold_start else { continue };
            let (id, app) = (machine.id.clone(), machine.app.to_string());
            for (phase, ms) in [
                ("queued", cold.queued_ms),
                ("hydrate", cold.hydrate_ms),
                ("engine_load", cold.engine_load_ms),
                ("overlap", cold.overlap_ms),
                ("first_response", cold.first_response_ms),
            ] {
                let labels = PhaseLabels {
                    machine: id.clone(),
                    app: app.clone(),
                    phase: phase.into(),
                };
                phases.get_or_create(&labels).set(ms as i64);
            }
            for (source, bytes) in [
                ("cache", cold.bytes_from_cache),
                ("peer", cold.bytes_from_peer),
                ("origin", cold.bytes_from_origin),
            ] {
                let labels = SourceLabels {
                    machine: id.clone(),
                    app: app.clone(),
                    source: source.into(),
                };
                sources.get_or_create(&labels).set(bytes as i64);
            }
        }
        let host = HostLabel {
            host: agent.host().to_string(),
        };
        let cache = agent.cache().clone();
        if let Ok(Ok(entries)) = tokio::task::spawn_blocking(move || cache.entries()).await {
            cache_bytes
                .get_or_create(&host)
                .set(entries.iter().map(|e| e.bytes).sum::<u64>() as i64);
            cache_models.get_or_create(&host).set(entries.len() as i64);
        }
        cache_capacity
            .get_or_create(&host)
            .set(agent.cache().capacity().unwrap_or(0) as i64);
        origin_bytes.get_or_create(&host).inc_by(agent.store().bytes_read());
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
