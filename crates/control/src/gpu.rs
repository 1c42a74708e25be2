//! A deploy's GPU kind through the planner (`colo_policy::recommend` over the live hosts'
//! kinds), and the planner's facts of a pushed model revision, read from the store once.

use crate::{Control, ControlError};
use colo_core::{Catalogue, GpuChoice};
use colo_model::{ConfigError, Manifest, ModelFacts};
use colo_policy::{recommend, PlanRequest};

/// Why the planner's facts of a model revision could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// Its manifest or its config.json could not be read from the store, or they describe no
    /// model the planner knows.
    #[error(transparent)]
    Manifest(#[from] colo_store::StoreError),
    /// Its config.json or tensor summaries do not describe a model the planner knows.
    #[error(transparent)]
    Model(#[from] ConfigError),
}

/// Facts kept per `(model, revision)` at most; a long-lived control forgets them all now and
/// then, since each deploy may pin a new revision.
const FACTS_KEPT: usize = 256;

// === impl Control ===

impl Control {
    /// The GPU kind for a deploy of machines of `gpus` cards each: checked against the host's
    /// GPUs when named, else the planner's choice among them. `None` when the host has no GPU
    /// (CPU slots), or when the planner cannot read the model and no kind was named (any free
    /// device).
    pub(crate) async fn choose_gpu(&self, manifest: &Manifest, named: Option<&str>, gpus: u32) -> Result<Option<GpuChoice>, ControlError> {
        let invalid = |reason: String| ControlError::invalid("gpu", reason);
        let catalogue = Catalogue::builtin();
        let mut host_kinds: Vec<String> = self.hosts.live().await?.iter().flat_map(|h| h.gpu_kinds()).collect();
        host_kinds.sort();
        host_kinds.dedup();
        if let Some(kind) = named {
            if catalogue.kinds.iter().all(|k| k.kind != kind) {
                let known: Vec<&str> = catalogue.kinds.iter().map(|k| k.kind.as_str()).collect();
                return Err(invalid(format!("{kind:?} is not a GPU kind colo knows ({})", known.join(", "))));
            }
            if !host_kinds.iter().any(|k| k == kind) {
                let offered = if host_kinds.is_empty() {
                    "no GPU, only CPU slots".to_string()
                } else {
                    host_kinds.join(", ")
                };
                return Err(invalid(format!("no host has a GPU of kind {kind} (they have {offered})")));
            }
        }
        if host_kinds.is_empty() {
            if gpus > 1 {
                return Err(ControlError::invalid(
                    "gpus_per_machine",
                    format!("{gpus} GPUs per machine, and no host has a GPU (only CPU slots)"),
                ));
            }
            return Ok(None);
        }
        let facts = match self.model_facts(manifest).await {
            Ok(facts) => facts,
            Err(reason) if named.is_none() => {
                tracing::warn!(model = %manifest.name, %reason, "planner cannot read the model; any free device will do");
                return Ok(None);
            }
            Err(reason) => return Err(invalid(format!("the planner cannot read the model: {reason}"))),
        };
        // A machine leases `gpus` whole cards of one host: the planner considers that shape, at
        // the context `colo plan` assumes (the model's, at most 4096).
        let request = PlanRequest {
            gpus: named.map(|k| vec![k.to_string()]).unwrap_or_default(),
            n_gpus: vec![gpus],
            ..PlanRequest::at_context(facts.max_position.min(4096))
        };
        let choice = recommend(&facts, &catalogue, &request, &host_kinds).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(GpuChoice {
            kind: choice.gpu,
            quant: choice.quant.as_str().to_string(),
            why: choice.why,
        }))
    }

    /// The planner's facts for `model@revision`, from the store the first time.
    pub(crate) async fn facts_of(&self, model: &str, revision: &str) -> Result<ModelFacts, FactsError> {
        let key = (model.to_string(), revision.to_string());
        if let Some(facts) = self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(facts.clone());
        }
        let manifest = self.store.manifest_at(model, revision).await?;
        let facts = self.model_facts(&manifest).await?;
        let mut cached = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= FACTS_KEPT {
            cached.clear();
        }
        cached.insert(key, facts.clone());
        Ok(facts)
    }

    /// The planner's facts for a pushed model (the store reads them: a GGUF header, or a
    /// config.json with the manifest's exact tensor sizes).
    async fn model_facts(&self, manifest: &Manifest) -> Result<ModelFacts, FactsError> {
        Ok(self.store.model_facts(manifest).await?)
    }
}
