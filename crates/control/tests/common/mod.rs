//! What control's tests share: a tiny synthetic Llama pushed to a local store.

use colo_store::{no_progress, push_dir, PushOptions, Store};
use std::path::Path;

/// Pushes a two-layer synthetic Llama as model `tiny` to a store under `root`, with `context`
/// positions (placement plans for the model's own context).
pub async fn push_tiny(root: &Path, context: usize) -> Store {
    let model_dir = root.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let spec = colo_model::synth::SynthSpec {
        layers: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        intermediate: 0,
        context,
        seed: 1,
        dtype: "bf16".into(),
        tie_embeddings: false,
    };
    for (name, bytes) in colo_model::synth::synth_llama(&spec).unwrap() {
        std::fs::write(model_dir.join(name), bytes).unwrap();
    }
    let store = Store::open(root.join("store").to_str().unwrap()).unwrap();
    push_dir(&store, &model_dir, "tiny", &PushOptions::default(), no_progress())
        .await
        .unwrap();
    store
}

/// An agent in this process for host `name` in `region`, keeping its files under `data_dir`,
/// whose engine is a stand-in that exits at once (these tests check where machines go, not
/// that they serve).
pub fn stand_in_agent(
    name: &str,
    region: &str,
    data_dir: &Path,
    state: &std::sync::Arc<dyn colo_state::StateStore>,
    store: &Store,
    devices: Vec<colo_core::Device>,
) -> std::sync::Arc<colo_agent::Agent> {
    let config = colo_agent::AgentConfig {
        host: name.into(),
        region: region.into(),
        data_dir: data_dir.to_path_buf(),
        engine: colo_agent::EngineCommand {
            program: "/bin/false".into(),
            args: vec![],
            load_while_pulling: false,
        },
        start_timeout: std::time::Duration::from_secs(1),
        stop_grace: std::time::Duration::ZERO,
        health_interval: std::time::Duration::from_secs(1),
        engine_host: std::net::Ipv4Addr::LOCALHOST.into(),
        forward_key: None,
    };
    colo_agent::Agent::new(
        config,
        state.clone(),
        store.clone(),
        colo_store::HostCache::new(data_dir.join("cache")),
        devices,
    )
}
