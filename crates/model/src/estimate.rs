//! Memory estimates: what one model takes on `n_gpus` cards of one kind, and how much KV cache
//! is left, the way vLLM budgets it.
//!
//! vLLM takes `gpu_memory_utilization` (0.9) of each card's memory, subtracts the weights and
//! the peak of one profiling forward pass over its prefill budget (activations plus runtime
//! buffers), and gives the rest to the KV cache. We do the same with estimates in place of the
//! profile; `docs/PLANNING.md` shows the formulas and where they are rough.

use crate::config::{Arch, ModelFacts};
use crate::quant::{KvDtype, Quant};
use colo_core::GpuKind;
use serde::Serialize;

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Memory that is neither weights nor activations on every card: CUDA graphs, cuBLAS
/// workspaces, allocator slack.
pub const RUNTIME_BYTES: f64 = 0.5 * GIB;

/// Extra memory per card once cards talk to each other (NCCL buffers).
pub const TP_RUNTIME_BYTES: f64 = 0.5 * GIB;

/// Bytes held per token of the prefill budget per unit of width (see `activation_bytes`):
/// fp32, calibrated on the one published profile we check against (Llama-3.1-8B on an H100).
pub const ACTIVATION_BYTES_PER_ELEMENT: f64 = 4.0;

/// Planning knobs, defaulted as vLLM defaults them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Share of each card's memory the engine may use (vLLM `gpu_memory_utilization`).
    pub mem_util: f64,
    pub kv_dtype: KvDtype,
    /// Tokens in one prefill chunk (vLLM `max_num_batched_tokens`); `None`: 8192 on cards of
    /// 70 GiB or more and 2048 below, as vLLM's OpenAI server sets it.
    pub prefill_chunk: Option<u64>,
    /// Most sequences in one batch (vLLM `max_num_seqs`).
    pub max_seqs: u64,
    /// Share of datasheet bandwidth that decoding reaches.
    pub bandwidth_efficiency: f64,
    /// Share of datasheet tensor throughput that large matrix products reach.
    pub compute_efficiency: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mem_util: 0.9,
            kv_dtype: KvDtype::Bf16,
            prefill_chunk: None,
            max_seqs: 256,
            bandwidth_efficiency: 0.8,
            compute_efficiency: 0.5,
        }
    }
}

// === impl Settings ===

impl Settings {
    /// Every problem with the knobs, each naming the field.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let shares = [
            ("mem_util", self.mem_util),
            ("bandwidth_efficiency", self.bandwidth_efficiency),
            ("compute_efficiency", self.compute_efficiency),
        ];
        for (field, value) in shares {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                problems.push(format!("{field}: {value} must be above 0 and at most 1"));
            }
        }
        if self.prefill_chunk == Some(0) {
            problems.push("prefill_chunk: must be at least 1 token".into());
        }
        if self.max_seqs == 0 {
            problems.push("max_seqs: must be at least 1".into());
        }
        problems
    }

    pub fn prefill_chunk_for(&self, gpu: &GpuKind) -> u64 {
        self.prefill_chunk
            .unwrap_or(if gpu.usable_bytes() >= 70.0 * GIB { 8192 } else { 2048 })
    }
}

/// Where the memory of each card goes, and the KV cache that is left.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    /// Bytes the engine may use per card: `mem_util` × usable memory.
    pub budget_per_gpu: f64,
    pub weights_per_gpu: f64,
    pub activation_per_gpu: f64,
    pub runtime_per_gpu: f64,
    /// KV cache bytes left over all cards; negative when the rest does not fit.
    pub kv_budget_bytes: f64,
    /// KV bytes one token takes over all cards (KV heads are copied when there are fewer
    /// of them than cards).
    pub kv_bytes_per_token: f64,
    /// Tokens of KV cache that fit (zero when nothing is left, or for encoders).
    pub kv_capacity_tokens: u64,
}

/// Activation peak of one forward pass over a prefill chunk on one of `n_gpus` cards: the
/// residual stream (full width on every card), the gate-and-up projection and the logits
/// (split over the cards), at `ACTIVATION_BYTES_PER_ELEMENT` per element.
pub fn activation_bytes(facts: &ModelFacts, chunk_tokens: u64, n_gpus: u32) -> f64 {
    let logits = if facts.arch == Arch::Encoder { 0.0 } else { facts.vocab as f64 };
    let split = (2.0 * facts.intermediate as f64 + logits) / f64::from(n_gpus.max(1));
    chunk_tokens as f64 * ACTIVATION_BYTES_PER_ELEMENT * (facts.hidden as f64 + split)
}

/// KV cache bytes per token held by each of `n_gpus` cards.
pub fn kv_bytes_per_token_per_gpu(facts: &ModelFacts, kv: KvDtype, n_gpus: u32) -> f64 {
    let n = u64::from(n_gpus.max(1));
    let heads_per_gpu = facts.kv_heads.div_ceil(n).max(1);
    match facts.arch {
        Arch::Encoder => 0.0,
        _ => (2 * facts.layers * heads_per_gpu * facts.head_dim * kv.bytes()) as f64,
    }
}

/// The memory plan of `facts` in `quant` on `n_gpus` cards of `gpu`.
pub fn memory(facts: &ModelFacts, quant: Quant, gpu: &GpuKind, n_gpus: u32, settings: &Settings) -> Memory {
    let n = f64::from(n_gpus.max(1));
    let budget_per_gpu = gpu.usable_bytes() * settings.mem_util;
    let weights_per_gpu = quant.weights_bytes(facts) / n;
    let activation_per_gpu = activation_bytes(facts, settings.prefill_chunk_for(gpu), n_gpus);
    let runtime_per_gpu = RUNTIME_BYTES + if n_gpus > 1 { TP_RUNTIME_BYTES } else { 0.0 };
    let left_per_gpu = budget_per_gpu - weights_per_gpu - activation_per_gpu - runtime_per_gpu;
    let kv_per_gpu = kv_bytes_per_token_per_gpu(facts, settings.kv_dtype, n_gpus);
    let kv_capacity_tokens = if left_per_gpu > 0.0 && kv_per_gpu > 0.0 {
        (left_per_gpu / kv_per_gpu).floor() as u64
    } else {
        0
    };
    Memory {
        budget_per_gpu,
        weights_per_gpu,
        activation_per_gpu,
        runtime_per_gpu,
        kv_budget_bytes: left_per_gpu * n,
        kv_bytes_per_token: kv_per_gpu * n,
        kv_capacity_tokens,
    }
}

/// The most sequences of `context` tokens the KV cache holds at once, capped by `max_seqs`.
/// Encoders keep no cache: they are capped by `max_seqs` alone.
pub fn max_concurrency(facts: &ModelFacts, mem: &Memory, context: u64, settings: &Settings) -> u64 {
    if mem.kv_budget_bytes <= 0.0 {
        return 0;
    }
    if facts.arch == Arch::Encoder {
        return settings.max_seqs;
    }
    let per_token = mem.kv_bytes_per_token;
    let fixed = facts.kv_bytes_per_sequence(settings.kv_dtype.bytes()) as f64;
    let per_sequence = per_token * context as f64 + fixed;
    if per_sequence <= 0.0 {
        return 0;
    }
    ((mem.kv_budget_bytes / per_sequence).floor() as u64).min(settings.max_seqs)
}
