//! Service times from the planner's roofline (colo-model's `speed`): a request's prefill, and
//! its output tokens decoded at the batch it joins on the machine's GPU. The same figures
//! `colo plan` prints; see docs/PLANNING.md for what they leave out.

use colo_core::GpuKind;
use colo_model::{speed, ModelFacts, Quant, Settings};
use colo_policy::{plan, PlanRequest};

/// One model in one weight format on one GPU kind (one card).
#[derive(Clone, Debug)]
pub struct Roofline {
    facts: ModelFacts,
    quant: Quant,
    gpu: GpuKind,
    settings: Settings,
    /// Decode seconds per step at batch 1, 2, ... up to the hard limit, at the typical context.
    step_s: Vec<f64>,
}

// === impl Roofline ===

impl Roofline {
    /// Checks that `batch` sequences of `prompt + output` tokens fit the card (as `colo plan`
    /// decides it) and precomputes the decode step at every batch up to `batch`. The error
    /// says why it does not fit.
    pub fn new(config_json: &str, quant: Quant, gpu: &GpuKind, batch: u32, prompt: f64, output: f64) -> Result<Roofline, String> {
        let facts = ModelFacts::from_config(config_json.as_bytes()).map_err(|e| e.to_string())?;
        let settings = Settings::default();
        let request = PlanRequest {
            context: (prompt + output).ceil().max(1.0) as u64,
            concurrency: u64::from(batch),
            prompt_tokens: prompt.ceil().max(1.0) as u64,
            output_tokens: output.ceil().max(1.0) as u64,
            quants: vec![quant],
            gpus: vec![gpu.kind.clone()],
            n_gpus: vec![1],
            ..PlanRequest::default()
        };
        let catalogue = colo_core::Catalogue { kinds: vec![gpu.clone()] };
        let planned = plan(&facts, &catalogue, &request).map_err(|e| e.to_string())?;
        let option = planned.options.first().ok_or("the planner gave no option")?;
        if let Some(why) = &option.why_not {
            return Err(format!("{} in {quant:?} on one {}: {why}", facts.model_type, gpu.kind));
        }
        let context = (prompt + output / 2.0).round() as u64;
        let step_s = (1..=u64::from(batch))
            .map(|b| speed::decode(&facts, quant, gpu, 1, &settings, b, context).step_s)
            .collect();
        Ok(Roofline {
            facts,
            quant,
            gpu: gpu.clone(),
            settings,
            step_s,
        })
    }

    /// Prefill of one prompt of `prompt` tokens, seconds.
    pub fn prefill_s(&self, prompt: u64) -> f64 {
        speed::prefill_seconds(&self.facts, self.quant, &self.gpu, 1, &self.settings, 1, prompt)
    }

    /// One decode step with `batch` sequences in flight, seconds.
    pub fn step_s(&self, batch: u32) -> f64 {
        let i = (batch.max(1) as usize - 1).min(self.step_s.len() - 1);
        self.step_s[i]
    }

    /// Bytes of the weights in this format: what a cold start moves.
    pub fn weights_bytes(&self) -> f64 {
        self.quant.weights_bytes(&self.facts)
    }
}

/// The bytes of the weights of `config_json` in `quant`, for scenarios without a roofline.
pub fn weights_bytes(config_json: &str, quant: Quant) -> Result<f64, String> {
    let facts = ModelFacts::from_config(config_json.as_bytes()).map_err(|e| e.to_string())?;
    Ok(quant.weights_bytes(&facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_8B: &str = include_str!("../../../testdata/configs/llama-3.1-8b/config.json");

    #[test]
    fn an_8b_model_on_an_l40s_decodes_at_a_memory_bound_rate() {
        let catalogue = colo_core::Catalogue::builtin();
        let l40s = catalogue.get("l40s").unwrap();
        let r = Roofline::new(LLAMA_8B, Quant::Bf16, l40s, 16, 512.0, 256.0).unwrap();
        // 16 GB of weights at 80% of 864 GB/s: about 23 ms a step at batch 1.
        let one = r.step_s(1);
        assert!((0.020..0.027).contains(&one), "{one}");
        // Batching costs little per step while memory-bound.
        assert!(r.step_s(16) < one * 1.5, "{} vs {one}", r.step_s(16));
        assert!(r.step_s(40) == r.step_s(16));
        assert!(r.prefill_s(512) > 0.0 && r.prefill_s(2048) > r.prefill_s(512));
        assert!((r.weights_bytes() / 1e9 - 16.06).abs() < 0.1, "{}", r.weights_bytes());
        let a10 = catalogue.get("a10").unwrap();
        let err = Roofline::new(LLAMA_8B, Quant::Bf16, a10, 256, 4096.0, 4096.0).unwrap_err();
        assert!(err.contains("a10"), "{err}");
    }
}
