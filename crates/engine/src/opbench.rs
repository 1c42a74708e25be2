//! Operator timings of colo's engine at the shapes of the benchmark models (`colo bench ops`,
//! driven by `bench/ops` beside PyTorch on the same shapes): the matrix products, GELU, softmax,
//! layer and RMS norms, attention and the packing of a batch that an embedding pass over
//! all-MiniLM-L6-v2 and a decode step of bench/generate's Llama are made of, each through the
//! engine's own code (the encoder's packed attention, the decoder's split matrix products and
//! grouped attention), and one whole layer of each for scale.
//!
//! Weights are zeros in the models' shapes: the time of these kernels does not depend on the
//! values.

use crate::cpu_ops::{bias_gelu, bias_residual_norm};
use crate::encoder::{Encoder, EncoderConfig};
use crate::llama::{Llama, LlamaConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;
use std::time::Instant;

/// One operator at one shape: the median time of a call.
#[derive(Clone, Debug, Serialize)]
pub struct OpTiming {
    /// `model.op`, as bench/ops_bench.py names the same case.
    pub name: String,
    /// The shape, as text (`30x384 . 384x1152`).
    pub shape: String,
    pub us: f64,
}

/// MiniLM's shape (all-MiniLM-L6-v2).
pub const MINILM: (usize, usize, usize, usize) = (384, 12, 1536, 30522);
/// Tokens per sentence in the cases, and sentences in the batched cases.
pub const SENTENCE: usize = 30;
pub const BATCH: usize = 32;
/// bench/generate's Llama: hidden, heads, KV heads, ffn, vocab; context of the decode cases.
pub const LLAMA: (usize, usize, usize, usize, usize) = (1024, 16, 4, 2816, 32000);
pub const CONTEXT: usize = 160;

/// Median microseconds per call of `f`, over `rounds` timed runs of about `secs / rounds` each,
/// after one warm-up call.
fn time(secs: f64, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let rounds = 5;
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut calls = 0u32;
        while calls == 0 || started.elapsed().as_secs_f64() < secs / rounds as f64 {
            f()?;
            calls += 1;
        }
        per_call.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(calls));
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[rounds / 2])
}

fn zeros(shape: (usize, usize)) -> candle_core::Result<Tensor> {
    Tensor::zeros(shape, DType::F32, &Device::Cpu)
}

/// Zero weights of one MiniLM layer under BERT's names.
fn minilm_weights(hidden: usize, ffn: usize, vocab: usize) -> candle_core::Result<VarBuilder<'static>> {
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![vocab, hidden]),
        ("embeddings.position_embeddings.weight".into(), vec![512, hidden]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, hidden]),
        ("embeddings.LayerNorm.weight".into(), vec![hidden]),
        ("embeddings.LayerNorm.bias".into(), vec![hidden]),
    ];
    let l = "encoder.layer.0";
    for (name, out, inp) in [
        ("attention.self.query", hidden, hidden),
        ("attention.self.key", hidden, hidden),
        ("attention.self.value", hidden, hidden),
        ("attention.output.dense", hidden, hidden),
        ("intermediate.dense", ffn, hidden),
        ("output.dense", hidden, ffn),
    ] {
        shapes.push((format!("{l}.{name}.weight"), vec![out, inp]));
        shapes.push((format!("{l}.{name}.bias"), vec![out]));
    }
    for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
        shapes.push((format!("{l}.{name}.weight"), vec![hidden]));
        shapes.push((format!("{l}.{name}.bias"), vec![hidden]));
    }
    let tensors = shapes
        .into_iter()
        .map(|(name, shape)| Ok((name, Tensor::zeros(shape, DType::F32, &Device::Cpu)?)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// Weights of any shape asked for, every value 0.01 and every page written: a decode step's
/// products are bound by reading their weights, and zeros that were never written would all
/// be read from the one page of zeros the kernel maps for them.
struct Filled;

impl candle_nn::var_builder::SimpleBackend for Filled {
    fn get(&self, s: candle_core::Shape, _: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::full(0.01f32, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("{name}: no shape given")))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Every case whose name contains `filter`, each timed for about `secs`.
pub fn run(filter: &str, secs: f64) -> candle_core::Result<Vec<OpTiming>> {
    // As the engine does when it serves: large blocks stay in the process between passes.
    crate::keep_freed_memory();
    let mut out = Vec::new();
    let mut case = |name: &str, shape: String, f: &mut dyn FnMut() -> candle_core::Result<()>| -> candle_core::Result<()> {
        if name.contains(filter) {
            let us = time(secs, f)?;
            out.push(OpTiming {
                name: name.to_string(),
                shape,
                us,
            });
        }
        Ok(())
    };

    // --- MiniLM: one sentence, and a batch of 32 packed end to end ---
    let (hidden, heads, ffn, vocab) = MINILM;
    let encoder = Encoder::load(
        minilm_weights(hidden, ffn, vocab)?,
        EncoderConfig {
            hidden,
            heads,
            layers: 1,
            intermediate: ffn,
            max_position: 512,
            eps: 1e-12,
        },
    )?;
    for tokens in [SENTENCE, SENTENCE * BATCH] {
        let x = zeros((tokens, hidden))?;
        let wide = zeros((tokens, ffn))?;
        let lens = vec![SENTENCE; tokens / SENTENCE];
        for (op, k, n) in [("qkv", hidden, 3 * hidden), ("out", hidden, hidden), ("up", hidden, ffn)] {
            let w = zeros((k, n))?;
            // The encoder's products: through OpenBLAS from crate::blas::MIN_ROWS rows where the
            // system has it and its probe chose it, else gemm.
            case(&format!("minilm.{op}"), format!("{tokens}x{k} . {k}x{n}"), &mut || {
                crate::blas::matmul(&x, &w).map(drop)
            })?;
        }
        let w = zeros((ffn, hidden))?;
        case("minilm.down", format!("{tokens}x{ffn} . {ffn}x{hidden}"), &mut || {
            crate::blas::matmul(&wide, &w).map(drop)
        })?;
        let (wide_bias, gamma, beta) = (
            Tensor::zeros(ffn, DType::F32, &Device::Cpu)?,
            Tensor::ones(hidden, DType::F32, &Device::Cpu)?,
            Tensor::zeros(hidden, DType::F32, &Device::Cpu)?,
        );
        // The encoder's CPU path: the bias and GELU in one pass; the bias, residual and norm in one.
        case("minilm.bias_gelu", format!("{tokens}x{ffn}"), &mut || {
            bias_gelu(&wide, &wide_bias).map(drop)
        })?;
        case("minilm.add_norm", format!("{tokens}x{hidden}"), &mut || {
            bias_residual_norm(&x, &beta, &x, &gamma, &beta, 1e-12).map(drop)
        })?;
        let scores = zeros((heads * lens.len(), SENTENCE * SENTENCE))?.reshape((lens.len() * heads, SENTENCE, SENTENCE))?;
        case(
            "minilm.softmax",
            format!("{}x{SENTENCE}x{SENTENCE}", lens.len() * heads),
            &mut || crate::cpu_ops::softmax_last_dim(&scores).map(drop),
        )?;
        let qkv = zeros((tokens, 3 * hidden))?;
        case(
            "minilm.attention",
            format!("{} seqs x {SENTENCE} tokens, {heads} heads", lens.len()),
            &mut || encoder.attention(&qkv, &lens).map(drop),
        )?;
        let seqs: Vec<Vec<u32>> = lens
            .iter()
            .map(|&n| (0..n as u32).map(|i| i * 37 % vocab as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        case("minilm.pack", format!("{} seqs x {SENTENCE} tokens", lens.len()), &mut || {
            encoder.embed_packed(&refs).map(drop)
        })?;
        case("minilm.forward", format!("{} seqs x {SENTENCE} tokens", lens.len()), &mut || {
            encoder.forward(&refs).map(drop)
        })?;
    }

    // --- the Llama of bench/generate: a decode step of 1 and of 16 sequences ---
    let (hidden, heads, kv_heads, ffn, vocab) = LLAMA;
    let config = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": 4096, "model_type": "llama",
    }))
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let llama = Llama::from_vb(VarBuilder::from_backend(Box::new(Filled), DType::F32, Device::Cpu), config)?;
    let head_dim = hidden / heads;
    for rows in [1usize, 16] {
        let x = zeros((rows, hidden))?;
        let wide = zeros((rows, ffn))?;
        let layer = llama.first_layer();
        let kv = kv_heads * head_dim;
        case("llama.qkv", format!("{rows}x{hidden} . {hidden}x{}", hidden + 2 * kv), &mut || {
            layer.qkv_w.forward(&x).map(drop)
        })?;
        case("llama.o", format!("{rows}x{hidden} . {hidden}x{hidden}"), &mut || {
            layer.o_w.forward(&x).map(drop)
        })?;
        case("llama.gate_up", format!("{rows}x{hidden} . {hidden}x{}", 2 * ffn), &mut || {
            layer.gate_up_w.forward(&x).map(drop)
        })?;
        case("llama.down", format!("{rows}x{ffn} . {ffn}x{hidden}"), &mut || {
            layer.down_w.forward(&wide).map(drop)
        })?;
        case("llama.lm_head", format!("{rows}x{hidden} . {hidden}x{vocab}"), &mut || {
            llama.lm_head_forward(&x).map(drop)
        })?;
        case("llama.rms_norm", format!("{rows}x{hidden}"), &mut || {
            candle_nn::ops::rms_norm(&x, &layer.attn_norm, 1e-6).map(drop)
        })?;
        let gate_up = zeros((rows, 2 * ffn))?;
        case("llama.silu_mul", format!("{rows}x{} -> {rows}x{ffn}", 2 * ffn), &mut || {
            crate::cpu_ops::silu_mul(&gate_up, ffn).map(drop)
        })?;
        // Each sequence's new query attending over its cache of CONTEXT tokens, the way a decode
        // step does it (`cpu_ops::decoder_attention`, which also rotates the new query and key
        // and appends the key and value).
        let qkv = zeros((rows, hidden + 2 * kv))?;
        let (cos, sin) = (zeros((CONTEXT, head_dim / 2))?, zeros((CONTEXT, head_dim / 2))?);
        let mut caches: Vec<crate::cpu_ops::CpuKv> = (0..rows).map(|_| crate::cpu_ops::CpuKv::new(CONTEXT)).collect();
        let shape = crate::cpu_ops::DecoderHeads { heads, kv_heads, head_dim };
        case(
            "llama.attention",
            format!("{rows} seqs x 1 query over {CONTEXT}, {heads}/{kv_heads} heads"),
            &mut || {
                let mut seqs: Vec<crate::cpu_ops::SeqAttend> = caches
                    .iter_mut()
                    .map(|kv| crate::cpu_ops::SeqAttend {
                        n: 1,
                        past: CONTEXT - 1,
                        kv,
                    })
                    .collect();
                crate::cpu_ops::decoder_attention(&qkv, &mut seqs, &cos, &sin, shape).map(drop)
            },
        )?;
    }
    Ok(out)
}
