//! Llama-family decoders (Llama 2/3/3.1, Mistral, Qwen2) for continuous batching, on the CPU
//! in f32 or on a GPU in the weights' own format (bf16, f16).
//!
//! Like the encoder, a step packs every running sequence's new tokens end to end: the linear
//! layers see one matrix of all new tokens, and only attention works per sequence, against that
//! sequence's own KV cache. A prefilling prompt and a one-token decode share the same step.

use crate::EngineError;
use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::VarBuilder;
use serde_json::Value;
use std::path::Path;

pub mod split;
pub(crate) use split::Split;
pub use split::{decode_choice, DecodeChoice};

/// Llama 3.1's frequency-dependent RoPE scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_position: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub tie_embeddings: bool,
    pub attention_bias: bool,
    pub eos_ids: Vec<u32>,
}

fn bad(field: &str, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Load {
        file: "config.json".into(),
        reason: format!("{field}: {reason}"),
    }
}

// === impl LlamaConfig ===

impl LlamaConfig {
    /// Reads a config as transformers 4 writes it (top-level `rope_theta`, `rope_scaling`,
    /// `torch_dtype`) or as transformers 5 does (`rope_parameters`, `dtype`).
    pub fn from_json(json: &Value) -> Result<Self, EngineError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        if !matches!(model_type, "llama" | "mistral" | "qwen2") {
            return Err(bad(
                "model_type",
                format!("{model_type:?} is not a Llama-family decoder (llama, mistral, qwen2)"),
            ));
        }
        let uint = |name: &str| -> Result<usize, EngineError> {
            let v = json.get(name).ok_or_else(|| bad(name, "missing"))?;
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| bad(name, format!("must be a positive integer, got {v}")))
        };
        let hidden = uint("hidden_size")?;
        let heads = uint("num_attention_heads")?;
        let kv_heads = if json.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            uint("num_key_value_heads")?
        } else {
            heads
        };
        let head_dim = if json.get("head_dim").is_some_and(|v| !v.is_null()) {
            uint("head_dim")?
        } else {
            hidden / heads
        };
        if heads % kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }
        let act = json.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(bad("hidden_act", format!("{act:?} is not supported (silu is)")));
        }
        let rope = json.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| json.get("rope_theta"))
            .map(|v| {
                v.as_f64()
                    .filter(|t| *t > 0.0)
                    .ok_or_else(|| bad("rope_theta", format!("must be a positive number, got {v}")))
            })
            .transpose()?
            .unwrap_or(10_000.0);
        let scaling = rope.or_else(|| json.get("rope_scaling").filter(|v| v.is_object()));
        let rope_scaling = match scaling
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(Value::as_str)
        {
            None | Some("default") => None,
            Some("llama3") => {
                let s = scaling.expect("checked above");
                let num = |name: &str| {
                    s.get(name)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| bad(&format!("rope_scaling.{name}"), "missing"))
                };
                Some(Llama3Scaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position: num("original_max_position_embeddings")?,
                })
            }
            Some(other) => {
                return Err(bad(
                    "rope_scaling.rope_type",
                    format!("{other:?} is not supported (default, llama3)"),
                ))
            }
        };
        let eos_ids = match json.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            hidden,
            heads,
            kv_heads,
            head_dim,
            layers: uint("num_hidden_layers")?,
            intermediate: uint("intermediate_size")?,
            vocab: uint("vocab_size")?,
            max_position: uint("max_position_embeddings")?,
            rms_eps: json.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_embeddings: json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            attention_bias: json.get("attention_bias").and_then(Value::as_bool).unwrap_or(model_type == "qwen2"),
            eos_ids,
        })
    }

    /// Bytes of KV cache per token with `bytes` per value (4 in f32, 2 in bf16).
    pub fn kv_bytes_per_token(&self, bytes: usize) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * bytes
    }

    /// Inverse frequencies of the rotary embedding, with Llama 3.1 scaling when configured.
    fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let freq = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                let Some(s) = &self.rope_scaling else {
                    return freq as f32;
                };
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let low_wavelen = s.original_max_position / s.low_freq_factor;
                let high_wavelen = s.original_max_position / s.high_freq_factor;
                let scaled = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * freq / s.factor + smooth * freq
                };
                scaled as f32
            })
            .collect()
    }
}

pub(crate) struct Layer {
    pub(crate) qkv_w: Split,
    qkv_b: Option<Tensor>,
    pub(crate) o_w: Split,
    pub(crate) gate_up_w: Split,
    pub(crate) down_w: Split,
    pub(crate) attn_norm: Tensor,
    mlp_norm: Tensor,
}

pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The output layer: the embeddings themselves where they are tied.
    lm_head: Split,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    /// The format weights, activations and the KV cache are held in.
    dtype: DType,
    /// Attention by `cpu_ops::decoder_attention` (f32 on the CPU, heads a multiple of 8 wide),
    /// else by candle's operations, one sequence at a time.
    cpu_attention: bool,
}

/// One sequence's KV cache: per layer, keys and values of every token seen so far.
pub struct SeqCache {
    layers: Vec<LayerKv>,
    pub len: usize,
}

/// One layer's keys and values: in the CPU kernel's own layout, or as candle's cache.
enum LayerKv {
    Cpu(crate::cpu_ops::CpuKv),
    Candle(KvCache),
}

/// The part of a step that belongs to one sequence.
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
}

// === impl Llama ===

impl Llama {
    /// Loads `config.json` and the safetensors weights (single file or sharded with
    /// `model.safetensors.index.json`) from `dir` onto the device `crate::device::open` picks:
    /// in f32 on the CPU whatever the stored format, in the stored format on a GPU.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_from(dir, None)
    }

    /// [`Llama::load`], reading weight files that are still being pulled as their bytes land
    /// (see [`crate::landing`]).
    pub fn load_from(dir: &Path, landing: Option<&std::sync::Arc<crate::landing::Landing>>) -> Result<Self, EngineError> {
        let config_path = dir.join("config.json");
        let json: Value =
            serde_json::from_slice(&std::fs::read(&config_path).map_err(|e| bad("config.json", e))?).map_err(|e| bad("config.json", e))?;
        let config = LlamaConfig::from_json(&json)?;
        let files = weight_files(dir, landing.map(|l| &**l))?;
        let device = crate::device::open()?;
        let dtype = crate::device::compute_dtype(&device, crate::device::stored_dtype(&json));
        tracing::info!(device = crate::device::name(&device), ?dtype, "loading a Llama-family model");
        // Each tensor is read (from the mapping, or as it lands) straight onto the device as the
        // model is built.
        let vb = crate::landing::var_builder(dir, &files, dtype, &device, landing)?;
        Self::from_vb(vb, config).map_err(|e| EngineError::Load {
            file: dir.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn from_vb(vb: VarBuilder, config: LlamaConfig) -> candle_core::Result<Self> {
        let c = &config;
        let (h, q_dim, kv_dim) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let m = vb.pp("model");
        let embed = m.get((c.vocab, h), "embed_tokens.weight")?;
        // The matrices of every layer first, their norms after: the norms are small, and a file
        // that keeps them at its end (as `colo model synth` writes) still lets a load that runs
        // as the bytes land build each layer's matrices as soon as they are there.
        let mut matrices = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = m.pp(format!("layers.{i}"));
            let w = |name: &str, out: usize, inp: usize| l.get((out, inp), name);
            let qkv_w = Split::new(&[
                &w("self_attn.q_proj.weight", q_dim, h)?,
                &w("self_attn.k_proj.weight", kv_dim, h)?,
                &w("self_attn.v_proj.weight", kv_dim, h)?,
            ])?;
            let qkv_b = if c.attention_bias {
                let b = |n: &str, d: usize| l.get(d, n);
                Some(Tensor::cat(
                    &[
                        b("self_attn.q_proj.bias", q_dim)?,
                        b("self_attn.k_proj.bias", kv_dim)?,
                        b("self_attn.v_proj.bias", kv_dim)?,
                    ],
                    0,
                )?)
            } else {
                None
            };
            let o_w = Split::new(&[&w("self_attn.o_proj.weight", h, q_dim)?])?;
            let gate_up_w = Split::new(&[
                &w("mlp.gate_proj.weight", c.intermediate, h)?,
                &w("mlp.up_proj.weight", c.intermediate, h)?,
            ])?;
            let down_w = Split::new(&[&w("mlp.down_proj.weight", h, c.intermediate)?])?;
            matrices.push((qkv_w, qkv_b, o_w, gate_up_w, down_w));
        }
        let mut layers = Vec::with_capacity(c.layers);
        for (i, (qkv_w, qkv_b, o_w, gate_up_w, down_w)) in matrices.into_iter().enumerate() {
            let l = m.pp(format!("layers.{i}"));
            layers.push(Layer {
                qkv_w,
                qkv_b,
                o_w,
                gate_up_w,
                down_w,
                attn_norm: l.get(h, "input_layernorm.weight")?,
                mlp_norm: l.get(h, "post_attention_layernorm.weight")?,
            });
        }
        let norm = m.get(h, "norm.weight")?;
        let lm_head = if c.tie_embeddings || !vb.contains_tensor("lm_head.weight") {
            Split::new(&[&embed])?
        } else {
            Split::new(&[&vb.get((c.vocab, h), "lm_head.weight")?])?
        };
        let inv_freq = Tensor::new(config.inv_freq(), vb.device())?;
        let positions = Tensor::arange(0u32, c.max_position as u32, vb.device())?.to_dtype(DType::F32)?;
        let freqs = positions.unsqueeze(1)?.matmul(&inv_freq.unsqueeze(0)?)?;
        let dtype = vb.dtype();
        let (cos, sin) = (freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?);
        let device = vb.device().clone();
        let cpu_attention = device.is_cpu() && dtype == DType::F32 && c.head_dim.is_multiple_of(8);
        Ok(Self {
            cpu_attention,
            config,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device,
            dtype,
        })
    }

    /// Bytes of KV cache per token in the format this model computes in.
    /// The first layer, for the operator benchmark (`opbench`).
    pub(crate) fn first_layer(&self) -> &Layer {
        &self.layers[0]
    }

    /// The logits of normed hidden states, for the operator benchmark.
    pub(crate) fn lm_head_forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head.forward(x)
    }

    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token(self.dtype.size_in_bytes())
    }

    /// The device it computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache with room for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> SeqCache {
        SeqCache {
            layers: (0..self.config.layers)
                .map(|_| match self.cpu_attention {
                    true => LayerKv::Cpu(crate::cpu_ops::CpuKv::new(capacity)),
                    false => LayerKv::Candle(KvCache::new(1, capacity.max(1))),
                })
                .collect(),
            len: 0,
        }
    }

    /// Runs one step: appends each sequence's new tokens to its cache and returns the logits
    /// after each sequence's last new token, (sequences, vocab).
    pub fn step(&self, seqs: &mut [StepInput<'_>]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let total = ids.len();
        let mut x = self.embed.index_select(&Tensor::from_vec(ids, total, &self.device)?, 0)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps as f32)?;
            let mut qkv = layer.qkv_w.forward(&normed)?;
            if let Some(b) = &layer.qkv_b {
                qkv = qkv.broadcast_add(b)?;
            }
            let context = match self.cpu_attention {
                true => self.cpu_attend(&qkv, seqs, layer_idx)?,
                false => self.candle_attend(&qkv, seqs, layer_idx)?,
            };
            let attn = layer.o_w.forward(&context)?;
            x = (x + attn)?;
            let normed = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, c.rms_eps as f32)?;
            let gate_up = layer.gate_up_w.forward(&normed)?;
            let act = if self.device.is_cpu() {
                crate::cpu_ops::silu_mul(&gate_up, c.intermediate)?
            } else {
                let gate = gate_up.narrow(1, 0, c.intermediate)?;
                (candle_nn::ops::silu(&gate)? * gate_up.narrow(1, c.intermediate, c.intermediate)?)?
            };
            let mlp = layer.down_w.forward(&act)?;
            x = (x + mlp)?;
        }
        for seq in seqs.iter_mut() {
            seq.cache.len += seq.tokens.len();
        }
        // Only each sequence's last position needs logits.
        let mut last = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for seq in seqs.iter() {
            offset += seq.tokens.len();
            last.push((offset - 1) as u32);
        }
        let last = x.index_select(&Tensor::from_vec(last, seqs.len(), &self.device)?, 0)?;
        let normed = candle_nn::ops::rms_norm(&last, &self.norm, c.rms_eps as f32)?;
        self.lm_head.forward(&normed)?.to_dtype(DType::F32)
    }

    /// One layer's attention for a step by `cpu_ops::decoder_attention`: `(rows, heads x
    /// head_dim)` from the step's fused QKV rows.
    fn cpu_attend(&self, qkv: &Tensor, seqs: &mut [StepInput<'_>], layer_idx: usize) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let mut parts = Vec::with_capacity(seqs.len());
        for seq in seqs.iter_mut() {
            let (n, past) = (seq.tokens.len(), seq.cache.len);
            let LayerKv::Cpu(kv) = &mut seq.cache.layers[layer_idx] else {
                return Err(candle_core::Error::Msg(
                    "a cache made for candle's attention in a step of the CPU kernel's".into(),
                ));
            };
            parts.push(crate::cpu_ops::SeqAttend { n, past, kv });
        }
        let heads = crate::cpu_ops::DecoderHeads {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        crate::cpu_ops::decoder_attention(&qkv.contiguous()?, &mut parts, &self.cos, &self.sin, heads)?
            .ok_or_else(|| candle_core::Error::Msg("the CPU attention kernel refused this model's tensors".into()))
    }

    /// One layer's attention for a step by candle's operations, one sequence at a time.
    fn candle_attend(&self, qkv: &Tensor, seqs: &mut [StepInput<'_>], layer_idx: usize) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut outputs = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for seq in seqs.iter_mut() {
            let n = seq.tokens.len();
            let rows = qkv.narrow(0, offset, n)?;
            let past = seq.cache.len;
            let cos = self.cos.narrow(0, past, n)?;
            let sin = self.sin.narrow(0, past, n)?;
            let q = rows.narrow(1, 0, q_dim)?.reshape((1, n, c.heads, c.head_dim))?;
            let k = rows.narrow(1, q_dim, kv_dim)?.reshape((1, n, c.kv_heads, c.head_dim))?;
            let v = rows.narrow(1, q_dim + kv_dim, kv_dim)?.reshape((1, n, c.kv_heads, c.head_dim))?;
            let q = candle_nn::rotary_emb::rope_thd(&q.contiguous()?, &cos, &sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?;
            let k = candle_nn::rotary_emb::rope_thd(&k.contiguous()?, &cos, &sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?;
            let v = v.squeeze(0)?.transpose(0, 1)?.contiguous()?;
            let LayerKv::Candle(cache) = &mut seq.cache.layers[layer_idx] else {
                return Err(candle_core::Error::Msg(
                    "a cache made for the CPU kernel in a step of candle's attention".into(),
                ));
            };
            let (k_all, v_all) = cache.append(&k, &v)?;
            outputs.push(self.attend(&q, &k_all, &v_all, past, n)?);
            offset += n;
        }
        Tensor::cat(&outputs, 0)
    }

    /// Causal attention of `n` new queries (heads, n, d) over `past + n` keys and values
    /// (kv_heads, past + n, d); returns (n, heads * d).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, past: usize, n: usize) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let group = c.heads / c.kv_heads;
        let total = past + n;
        // Grouped queries: the heads that share a KV head attend together.
        let q = q.reshape((c.kv_heads, group * n, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        // Scores and their softmax in f32 whatever the weights' format (a no-op on the CPU).
        let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
        if n > 1 {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, total), &self.device)?;
            scores = scores
                .reshape((c.kv_heads, group, n, total))?
                .broadcast_add(&mask)?
                .reshape((c.kv_heads, group * n, total))?;
        }
        let probs = if self.device.is_cpu() {
            crate::cpu_ops::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        .to_dtype(self.dtype)?;
        let out = probs.matmul(v)?; // (kv_heads, group * n, d)
        out.reshape((c.heads, n, c.head_dim))?
            .transpose(0, 1)?
            .reshape((n, c.heads * c.head_dim))
    }
}

/// The safetensors files of a model: the shards named by `model.safetensors.index.json`, or
/// `model.safetensors`.
fn weight_files(dir: &Path, landing: Option<&crate::landing::Landing>) -> Result<Vec<std::path::PathBuf>, EngineError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let load = |reason: String| EngineError::Load {
            file: index.display().to_string(),
            reason,
        };
        let json: Value =
            serde_json::from_slice(&std::fs::read(&index).map_err(|e| load(e.to_string()))?).map_err(|e| load(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| load("no weight_map object".into()))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(String::from).collect();
        files.sort();
        files.dedup();
        if files.iter().any(|f| f.contains('/') || f.contains("..")) {
            return Err(load("shard names must be plain file names".into()));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if !single.is_file() && !landing.is_some_and(|l| l.is_landing("model.safetensors")) {
        return Err(EngineError::Load {
            file: single.display().to_string(),
            reason: "missing (and no model.safetensors.index.json)".into(),
        });
    }
    Ok(vec![single])
}

#[cfg(test)]
mod tests;
