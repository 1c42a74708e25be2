//! Speed estimates: a roofline per decode step and per prefill.
//!
//! A decode step reads every weight once and every sequence's KV cache once, and does two
//! flops per weight per sequence plus the attention over the context; it takes the longer of
//! the memory time and the compute time (the bound), plus the tensor-parallel all-reduces.
//! Prefill is compute-bound. Efficiencies and link figures are rough; see docs/PLANNING.md.

use crate::config::{Arch, ModelFacts};
use crate::estimate::{kv_bytes_per_token_per_gpu, Settings};
use crate::quant::{Compute, Quant};
use colo_core::GpuKind;
use serde::Serialize;

/// Which resource a step waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Reading weights and KV cache from memory.
    Memory,
    /// Tensor-core arithmetic.
    Compute,
}

/// One decode step at a batch size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decode {
    pub batch: u64,
    /// Seconds per step (one new token for every sequence in the batch).
    pub step_s: f64,
    pub memory_s: f64,
    pub compute_s: f64,
    /// Tensor-parallel communication per step.
    pub comm_s: f64,
    pub bound: Bound,
    /// The batch at which compute time overtakes memory time; `None` if it never does
    /// (the KV reads grow as fast as the arithmetic).
    pub ridge_batch: Option<f64>,
}

// === impl Decode ===

impl Decode {
    pub fn tokens_per_s_per_sequence(&self) -> f64 {
        1.0 / self.step_s
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.batch as f64 / self.step_s
    }
}

/// Weights that take part in matrix products: all but the token-embedding lookup (and, for
/// encoders, the position table), with a tied head counted once as the output projection.
pub fn matmul_params(facts: &ModelFacts) -> f64 {
    let lookup = facts.vocab * facts.hidden;
    let params = facts.params as f64;
    match facts.arch {
        Arch::Encoder => params - (lookup + facts.max_position * facts.hidden) as f64,
        // An untied head is a second vocab × hidden matrix; the lookup one is not multiplied.
        _ if facts.embedding_params >= 2 * lookup => params - lookup as f64,
        _ => params,
    }
    .max(0.0)
}

/// Peak dense throughput in flop/s of one card for weights in `quant`.
pub fn peak_flops(gpu: &GpuKind, quant: Quant) -> f64 {
    let tera = match quant.compute(gpu.fp8_tflops.is_some(), gpu.int8_tops.is_some()) {
        Compute::Bf16 => gpu.bf16_tflops,
        Compute::Fp8 => gpu.fp8_tflops.unwrap_or(gpu.bf16_tflops),
        Compute::Int8 => gpu.int8_tops.unwrap_or(gpu.bf16_tflops),
    };
    tera * 1e12
}

/// Seconds of all-reduce for `tokens` tokens' activations: two per layer (after attention
/// and after the MLP), a ring moving 2(n-1)/n of the data, plus a fixed latency each.
fn comm_seconds(facts: &ModelFacts, gpu: &GpuKind, n_gpus: u32, tokens: f64, rounds: f64) -> f64 {
    let Some(link) = gpu.interconnect(n_gpus) else {
        return 0.0;
    };
    let n = f64::from(n_gpus);
    let bytes = tokens * facts.hidden as f64 * 2.0 * 2.0 * (n - 1.0) / n;
    let all_reduces = 2.0 * facts.layers as f64;
    all_reduces * (rounds * link.latency_us * 1e-6) + all_reduces * bytes / (link.gbs_per_direction * 1e9)
}

/// One decode step for `batch` sequences whose KV cache holds `context` tokens each.
pub fn decode(facts: &ModelFacts, quant: Quant, gpu: &GpuKind, n_gpus: u32, settings: &Settings, batch: u64, context: u64) -> Decode {
    let n = f64::from(n_gpus.max(1));
    let bandwidth = gpu.bandwidth_gbs * 1e9 * settings.bandwidth_efficiency;
    let flops = peak_flops(gpu, quant) * settings.compute_efficiency;
    let ctx = context as f64;
    // Per card: its share of the weights, and its share of every sequence's KV cache.
    let weights_s = quant.weights_bytes(facts) / n / bandwidth;
    let kv_s_per_seq = kv_bytes_per_token_per_gpu(facts, settings.kv_dtype, n_gpus) * ctx / bandwidth;
    let attention_flops = 4.0 * (facts.layers * facts.heads * facts.head_dim) as f64 * ctx;
    let compute_s_per_seq = (2.0 * matmul_params(facts) + attention_flops) / n / flops;
    let b = batch.max(1) as f64;
    let memory_s = weights_s + b * kv_s_per_seq;
    let compute_s = b * compute_s_per_seq;
    let comm_s = comm_seconds(facts, gpu, n_gpus, b, 1.0);
    let ridge_batch = (compute_s_per_seq > kv_s_per_seq).then(|| weights_s / (compute_s_per_seq - kv_s_per_seq));
    Decode {
        batch: batch.max(1),
        step_s: memory_s.max(compute_s) + comm_s,
        memory_s,
        compute_s,
        comm_s,
        bound: if compute_s > memory_s { Bound::Compute } else { Bound::Memory },
        ridge_batch,
    }
}

/// Seconds to prefill `sequences` prompts of `prompt` tokens each, in chunks of the prefill
/// budget: compute-bound, but never faster than reading the weights once per chunk.
pub fn prefill_seconds(
    facts: &ModelFacts,
    quant: Quant,
    gpu: &GpuKind,
    n_gpus: u32,
    settings: &Settings,
    sequences: u64,
    prompt: u64,
) -> f64 {
    let n = f64::from(n_gpus.max(1));
    let tokens = (sequences * prompt) as f64;
    if tokens <= 0.0 {
        return 0.0;
    }
    let chunks = (tokens / settings.prefill_chunk_for(gpu) as f64).ceil();
    let flops = peak_flops(gpu, quant) * settings.compute_efficiency;
    // Causal attention: each token attends to prompt/2 earlier tokens on average, 4 flops each.
    let attention = 2.0 * (facts.layers * facts.heads * facts.head_dim) as f64 * prompt as f64;
    let compute_s = tokens * (2.0 * matmul_params(facts) + attention) / n / flops;
    let weights_s = chunks * quant.weights_bytes(facts) / n / (gpu.bandwidth_gbs * 1e9 * settings.bandwidth_efficiency);
    compute_s.max(weights_s) + comm_seconds(facts, gpu, n_gpus, tokens, chunks)
}

#[cfg(test)]
mod tests;
