//! A BERT encoder laid out for CPU throughput (and run as it is on a GPU): the sequences of a batch are packed end to end
//! (no padding), so every linear layer is one large matrix product over all tokens of the
//! batch, and only attention works per sequence. Q, K and V share one fused weight.

use crate::{blas, cpu_ops};
use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    /// (hidden, 3 * hidden): query, key and value side by side.
    qkv_w: Tensor,
    qkv_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    attn_norm: Norm,
    up_w: Tensor,
    up_b: Tensor,
    down_w: Tensor,
    down_b: Tensor,
    out_norm: Norm,
}

/// The facts of `config.json` the encoder needs.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub max_position: usize,
    pub eps: f64,
}

pub struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    config: EncoderConfig,
    device: Device,
}

/// A linear layer's weight, transposed once at load so products read it row-major.
fn linear(vb: &VarBuilder, name: &str, inputs: usize, outputs: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let w = vb.get((outputs, inputs), &format!("{name}.weight"))?.t()?.contiguous()?;
    let b = vb.get(outputs, &format!("{name}.bias"))?;
    Ok((w, b))
}

fn norm(vb: &VarBuilder, name: &str, size: usize) -> candle_core::Result<Norm> {
    // Old checkpoints call the LayerNorm parameters gamma and beta.
    let (w, b) = if vb.contains_tensor(&format!("{name}.weight")) {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    Ok(Norm {
        weight: vb.get(size, &format!("{name}.{w}"))?,
        bias: vb.get(size, &format!("{name}.{b}"))?,
    })
}

// === impl Norm ===

impl Norm {
    fn forward(&self, x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, eps as f32)
    }
}

// === impl Encoder ===

impl Encoder {
    pub fn load(vb: VarBuilder, config: EncoderConfig) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let h = config.hidden;
        let emb = vb.pp("embeddings");
        let word = emb.get_unchecked_dtype("word_embeddings.weight", vb.dtype())?;
        let position = emb.get((config.max_position, h), "position_embeddings.weight")?;
        let token_type = emb.get_unchecked_dtype("token_type_embeddings.weight", vb.dtype())?.get(0)?;
        let emb_norm = norm(&emb, "LayerNorm", h)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let (q_w, q_b) = linear(&l, "attention.self.query", h, h)?;
            let (k_w, k_b) = linear(&l, "attention.self.key", h, h)?;
            let (v_w, v_b) = linear(&l, "attention.self.value", h, h)?;
            let (out_w, out_b) = linear(&l, "attention.output.dense", h, h)?;
            let (up_w, up_b) = linear(&l, "intermediate.dense", h, config.intermediate)?;
            let (down_w, down_b) = linear(&l, "output.dense", config.intermediate, h)?;
            layers.push(Layer {
                qkv_w: Tensor::cat(&[&q_w, &k_w, &v_w], 1)?.contiguous()?,
                qkv_b: Tensor::cat(&[&q_b, &k_b, &v_b], 0)?,
                out_w,
                out_b,
                attn_norm: norm(&l, "attention.output.LayerNorm", h)?,
                up_w,
                up_b,
                down_w,
                down_b,
                out_norm: norm(&l, "output.LayerNorm", h)?,
            });
        }
        let device = vb.device().clone();
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            config,
            device,
        })
    }

    /// Hidden states of every token of every sequence, packed: (total tokens, hidden).
    pub fn forward(&self, seqs: &[&[u32]]) -> candle_core::Result<Tensor> {
        let mut x = self.embed_packed(seqs)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        for layer in &self.layers {
            x = self.layer(layer, &x, &lens)?;
        }
        Ok(x)
    }

    /// The sequences' tokens packed end to end: their embeddings, positions and type added and
    /// normed, (total tokens, hidden).
    pub(crate) fn embed_packed(&self, seqs: &[&[u32]]) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
        if self.device.is_cpu() {
            let (n, eps) = (&self.emb_norm, self.config.eps as f32);
            if let Some(x) = cpu_ops::embed_norm(
                &self.word,
                &self.position,
                &self.token_type,
                &ids,
                &positions,
                &n.weight,
                &n.bias,
                eps,
            )? {
                return Ok(x);
            }
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let x = self.word.index_select(&ids, 0)?.add(&self.position.index_select(&positions, 0)?)?;
        self.emb_norm.forward(&x.broadcast_add(&self.token_type)?, self.config.eps)
    }

    fn layer(&self, layer: &Layer, x: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let qkv = blas::matmul_bias(x, &layer.qkv_w, &layer.qkv_b)?;
        let context = self.attention(&qkv, lens)?;
        if self.device.is_cpu() {
            // Each bias, residual, norm and the GELU in one pass over the rows, on every core.
            let eps = c.eps as f32;
            let (an, on) = (&layer.attn_norm, &layer.out_norm);
            let attn = cpu_ops::bias_residual_norm(&blas::matmul(&context, &layer.out_w)?, &layer.out_b, x, &an.weight, &an.bias, eps)?;
            let up = cpu_ops::bias_gelu(&blas::matmul(&attn, &layer.up_w)?, &layer.up_b)?;
            return cpu_ops::bias_residual_norm(&blas::matmul(&up, &layer.down_w)?, &layer.down_b, &attn, &on.weight, &on.bias, eps);
        }
        let attn = context.matmul(&layer.out_w)?.broadcast_add(&layer.out_b)?.add(x)?;
        let attn = layer.attn_norm.forward(&attn, c.eps)?;
        let up = attn.matmul(&layer.up_w)?.broadcast_add(&layer.up_b)?.gelu_erf()?;
        let down = up.matmul(&layer.down_w)?.broadcast_add(&layer.down_b)?.add(&attn)?;
        layer.out_norm.forward(&down, c.eps)
    }

    /// Each sequence attending to itself alone, over the packed (total tokens, 3 x hidden)
    /// queries, keys and values of sequences of `lens` tokens: (total tokens, hidden).
    pub(crate) fn attention(&self, qkv: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        if self.device.is_cpu() {
            if let Some(context) = cpu_ops::packed_attention(qkv, lens, c.heads)? {
                return Ok(context);
            }
        }
        let head_dim = c.hidden / c.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut contexts = Vec::with_capacity(lens.len());
        let mut offset = 0;
        for &len in lens {
            // (len, 3, heads, head_dim) -> (3, heads, len, head_dim)
            let part = qkv
                .narrow(0, offset, len)?
                .reshape((len, 3, c.heads, head_dim))?
                .permute((1, 2, 0, 3))?
                .contiguous()?;
            let (q, k, v) = (part.get(0)?, part.get(1)?, part.get(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let probs = if self.device.is_cpu() {
                cpu_ops::softmax_last_dim(&scores)?
            } else {
                candle_nn::ops::softmax_last_dim(&scores)?
            };
            let context = probs.matmul(&v)?.transpose(0, 1)?.reshape((len, c.hidden))?;
            contexts.push(context);
            offset += len;
        }
        Tensor::cat(&contexts, 0)
    }
}

/// Mean of each sequence's rows of packed hidden states: (sequences, hidden).
pub fn mean_pool(hidden: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
    let mut offset = 0;
    let mut rows = Vec::with_capacity(lens.len());
    for &len in lens {
        rows.push(hidden.narrow(0, offset, len)?.mean_keepdim(0)?);
        offset += len;
    }
    Tensor::cat(&rows, 0)
}

/// The first row of each sequence (the CLS token): (sequences, hidden).
pub fn cls_pool(hidden: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
    let mut offset = 0;
    let mut rows = Vec::with_capacity(lens.len());
    for &len in lens {
        rows.push(hidden.narrow(0, offset, 1)?);
        offset += len;
    }
    Tensor::cat(&rows, 0)
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norms)
}
