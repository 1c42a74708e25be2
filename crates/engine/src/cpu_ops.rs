//! The models' element-wise work on the CPU, fused and spread over the cores: the encoder's bias
//! and GELU in one pass, and bias, residual and layer norm in one pass; softmax for both models'
//! attention; the decoder's SiLU(gate) x up in one pass. candle does each of these
//! as separate passes over the whole activation, on one core and without SIMD in this build
//! (`bench/ops` measured GELU at 0.21x PyTorch's speed, layer norm at 0.35x, and the bias and
//! residual additions between them at about a quarter of a MiniLM layer's time).
//!
//! Each row is worked by a plain loop that the compiler vectorises; on x86-64 CPUs with AVX2 and
//! FMA the same loop is compiled a second time for them and chosen at run time, so the binary
//! still runs on any x86-64.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Rows per task: enough work per task to pay for handing it out.
const MIN_ELEMENTS_PER_TASK: usize = 16 * 1024;

/// The f32 values of a contiguous CPU tensor, without a copy; `None` for anything else.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok().map(|all| f(&all[start..end])),
        _ => None,
    }
}

/// Defines `$name`, which runs the row loop `$rows` compiled a second time for AVX2 and FMA
/// (as `$avx2`) where the CPU has them, and as built for any x86-64 elsewhere: the same plain
/// loop, vectorised for each.
/// A second form names the loop for each copy (`$fast` for AVX2 and FMA, `$plain` for the rest),
/// for a loop that uses fused multiply-adds only where the CPU has them.
macro_rules! dispatched {
    ($name:ident, $avx2:ident, $rows:ident, ($($arg:ident: $ty:ty),*)) => {
        dispatched!($name, $avx2, $rows, $rows, ($($arg: $ty),*));
    };
    ($name:ident, $avx2:ident, $fast:path, $plain:path, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        fn $avx2($($arg: $ty),*) {
            $fast($($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $plain($($arg),*)
        }
    };
}

dispatched!(dispatch_bias_gelu, bias_gelu_avx2, bias_gelu_rows, (out: &mut [f32], x: &[f32], b: &[f32]));
dispatched!(dispatch_norm, norm_avx2, norm_rows, (out: &mut [f32], x: &[f32], r: &[f32], b: &[f32], g: &[f32], be: &[f32], eps: f32));
dispatched!(dispatch_softmax, softmax_avx2, softmax_rows, (out: &mut [f32], x: &[f32], width: usize));
dispatched!(dispatch_silu_mul, silu_mul_avx2, silu_mul_rows, (out: &mut [f32], x: &[f32], width: usize));

/// A row of `width` values, or the whole tensor's values as rows.
fn rows_of(t: &Tensor) -> candle_core::Result<(usize, usize)> {
    let dims = t.dims();
    let width = *dims.last().ok_or_else(|| candle_core::Error::Msg("a scalar has no rows".into()))?;
    Ok((t.elem_count() / width.max(1), width))
}

fn rows_per_task(width: usize) -> usize {
    (MIN_ELEMENTS_PER_TASK / width.max(1)).max(1)
}

/// `gelu(x + bias)` (the exact form, with erf), for `x` of shape (.., width) and `bias` (width).
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, width) = rows_of(x)?;
    let mut out = vec![0f32; rows * width];
    let done = with_values(x, |xs| {
        with_values(bias, |b| {
            out.par_chunks_mut(width * rows_per_task(width))
                .zip(xs.par_chunks(width * rows_per_task(width)))
                .for_each(|(o, x)| dispatch_bias_gelu(o, x, b));
        })
    })
    .flatten();
    match done {
        Some(()) => Tensor::from_vec(out, x.shape(), &Device::Cpu),
        None => x.broadcast_add(bias)?.gelu_erf(),
    }
}

/// `layer_norm(x + bias + residual) * gamma + beta` over the last dimension.
pub fn bias_residual_norm(
    x: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let (rows, width) = rows_of(x)?;
    let mut out = vec![0f32; rows * width];
    let done = with_values(x, |xs| {
        with_values(residual, |rs| {
            with_values(bias, |b| {
                with_values(gamma, |g| {
                    with_values(beta, |be| {
                        let chunk = width * rows_per_task(width);
                        out.par_chunks_mut(chunk)
                            .zip(xs.par_chunks(chunk).zip(rs.par_chunks(chunk)))
                            .for_each(|(o, (x, r))| dispatch_norm(o, x, r, b, g, be, eps));
                    })
                })
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()
    .flatten();
    match done {
        Some(()) => Tensor::from_vec(out, x.shape(), &Device::Cpu),
        None => candle_nn::ops::layer_norm(&x.broadcast_add(bias)?.add(residual)?, gamma, beta, eps),
    }
}

/// Softmax over the last dimension; candle's own for anything but a contiguous f32 CPU tensor.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, width) = rows_of(x)?;
    let mut out = vec![0f32; rows * width];
    let done = with_values(x, |xs| {
        let chunk = width * rows_per_task(width);
        out.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .for_each(|(o, x)| dispatch_softmax(o, x, width));
    });
    match done {
        Some(()) => Tensor::from_vec(out, x.shape(), &Device::Cpu),
        None => candle_nn::ops::softmax_last_dim(x),
    }
}

/// `silu(gate) * up` of a decoder's fused gate-and-up product, whose rows hold the `width`
/// gate values, then the `width` up values: (rows, width).
pub fn silu_mul(gate_up: &Tensor, width: usize) -> candle_core::Result<Tensor> {
    let (rows, both) = rows_of(gate_up)?;
    if both != 2 * width {
        return Err(candle_core::Error::Msg(format!(
            "silu_mul: rows of {both} values are not two halves of {width}"
        )));
    }
    let mut out = vec![0f32; rows * width];
    let done = with_values(gate_up, |xs| {
        let per = rows_per_task(both);
        out.par_chunks_mut(width * per)
            .zip(xs.par_chunks(both * per))
            .for_each(|(o, x)| dispatch_silu_mul(o, x, width));
    });
    match done {
        Some(()) => Tensor::from_vec(out, (rows, width), &Device::Cpu),
        None => candle_nn::ops::silu(&gate_up.narrow(1, 0, width)?)? * gate_up.narrow(1, width, width)?,
    }
}

/// The encoder's input rows, one per token: the layer norm (with `gamma` and `beta`) of
/// `word[id] + position[pos] + token_type`, each row gathered, summed and normed in one pass,
/// over every core (candle takes two gathers, two additions and the norm, five passes). `None` when a table is not a
/// contiguous f32 CPU tensor; an error names an id or position past its table.
#[allow(clippy::too_many_arguments)]
pub fn embed_norm(
    word: &Tensor,
    position: &Tensor,
    token_type: &Tensor,
    ids: &[u32],
    positions: &[u32],
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    let (vocab, width) = rows_of(word)?;
    let (places, _) = rows_of(position)?;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(candle_core::Error::Msg(format!("token id {id} is past the vocabulary of {vocab}")));
    }
    if let Some(p) = positions.iter().find(|&&p| p as usize >= places) {
        return Err(candle_core::Error::Msg(format!("position {p} is past the {places} the model has")));
    }
    if ids.len() != positions.len() || rows_of(position)?.1 != width || token_type.elem_count() != width {
        return Err(candle_core::Error::Msg(
            "embed_norm: tables of different widths, or ids and positions of different counts".into(),
        ));
    }
    let mut out = vec![0f32; ids.len() * width];
    let done = with_values(word, |w| {
        with_values(position, |p| {
            with_values(token_type, |t| {
                with_values(gamma, |g| {
                    with_values(beta, |be| {
                        let per = rows_per_task(width);
                        out.par_chunks_mut(width * per).enumerate().for_each(|(task, chunk)| {
                            for (i, row) in chunk.chunks_exact_mut(width).enumerate() {
                                let (id, at) = (ids[task * per + i] as usize, positions[task * per + i] as usize);
                                let (word_row, place_row) = (&w[id * width..(id + 1) * width], &p[at * width..(at + 1) * width]);
                                dispatch_norm(row, word_row, place_row, t, g, be, eps);
                            }
                        });
                    })
                })
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()
    .flatten();
    match done {
        Some(()) => Tensor::from_vec(out, (ids.len(), width), &Device::Cpu).map(Some),
        None => Ok(None),
    }
}

/// Each sequence attending to itself alone (no mask: the sequences are packed end to end, not
/// padded), straight from the packed `(total tokens, 3 x hidden)` rows of a fused QKV product
/// (each row the queries, then the keys, then the values, `heads` heads of `hidden / heads`
/// each): `(total tokens, hidden)`, each head's context in its own columns. One task per
/// sequence and head, over every core; `None` when `qkv` is not a contiguous f32 CPU tensor or
/// a head's width is no multiple of 8 (the caller then takes candle's path). Replaces, per sequence, a permuted copy, two batched
/// products, a scale, a softmax, a transpose and a concatenation, each its own pass and
/// allocation, which for a batch of short sentences cost more than the arithmetic.
pub fn packed_attention(qkv: &Tensor, lens: &[usize], heads: usize) -> candle_core::Result<Option<Tensor>> {
    let (total, width) = rows_of(qkv)?;
    let hidden = width / 3;
    if heads == 0 || width != 3 * hidden || hidden % heads != 0 || lens.iter().sum::<usize>() != total {
        return Err(candle_core::Error::Msg(format!(
            "packed_attention: rows of {width} values are not queries, keys and values of {heads} heads for sequences of {lens:?} tokens"
        )));
    }
    let head_dim = hidden / heads;
    if !head_dim.is_multiple_of(8) {
        // Heads of a width the kernel's registers do not divide: candle's path.
        return Ok(None);
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut starts = Vec::with_capacity(lens.len());
    let mut offset = 0;
    for &len in lens {
        starts.push(offset);
        offset += len;
    }
    let tasks: Vec<(usize, usize)> = (0..lens.len()).flat_map(|s| (0..heads).map(move |h| (s, h))).collect();
    let contexts = with_values(qkv, |xs| {
        tasks
            .par_iter()
            .map(|&(s, h)| {
                let (start, len) = (starts[s], lens[s]);
                let rows = &xs[start * width..(start + len) * width];
                let mut context = vec![0f32; len * head_dim];
                let blocks = len.div_ceil(8);
                let (mut scores, mut keys) = (vec![0f32; blocks * 8], vec![0f32; blocks * 8 * head_dim]);
                dispatch_attend_head(
                    &mut context,
                    &mut scores,
                    &mut keys,
                    rows,
                    width,
                    h * head_dim,
                    hidden,
                    head_dim,
                    scale,
                );
                context
            })
            .collect::<Vec<_>>()
    });
    let Some(contexts) = contexts else {
        return Ok(None);
    };
    let mut out = vec![0f32; total * hidden];
    for (&(s, h), context) in tasks.iter().zip(&contexts) {
        for (i, row) in context.chunks_exact(head_dim).enumerate() {
            let at = (starts[s] + i) * hidden + h * head_dim;
            out[at..at + head_dim].copy_from_slice(row);
        }
    }
    Tensor::from_vec(out, (total, hidden), &Device::Cpu).map(Some)
}

/// One head of one sequence: `rows` are the sequence's packed QKV rows of `width` values; the
/// head's queries start at column `q`, its keys `hidden` later and its values `2 x hidden`
/// later; `head_dim` is a multiple of 8. Writes the head's `(len, head_dim)` context.
/// `scores` is room for one row of scores rounded up to 8, and `keys` for the head's keys in
/// panels of 8, `(len / 8 rounded up, head_dim, 8)`, the last one padded with zeros.
///
/// Both products keep their sums in registers: a score is 8 keys at a time, each sum split in
/// four over the head's values (so no sum waits on the one before), and a context row is 32 of
/// its values at a time along the sequence. Summing into a row in memory instead made each step
/// wait for the last one's store: three times candle's time for this work.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_head_rows<const FMA: bool>(
    context: &mut [f32],
    scores: &mut [f32],
    keys: &mut [f32],
    rows: &[f32],
    width: usize,
    q: usize,
    hidden: usize,
    head_dim: usize,
    scale: f32,
) {
    let (k, v, len) = (q + hidden, q + 2 * hidden, context.len() / head_dim);
    for (b, panel) in keys.chunks_exact_mut(head_dim * 8).enumerate() {
        for lane in 0..8 {
            let j = b * 8 + lane;
            let key = (j < len).then(|| &rows[j * width + k..j * width + k + head_dim]);
            for d in 0..head_dim {
                panel[d * 8 + lane] = key.map_or(0.0, |key| key[d]);
            }
        }
    }
    for (i, out) in context.chunks_exact_mut(head_dim).enumerate() {
        let query = &rows[i * width + q..i * width + q + head_dim];
        for (panel, block) in keys.chunks_exact(head_dim * 8).zip(scores.chunks_exact_mut(8)) {
            let mut sums = [[0f32; 8]; 4];
            for (four, panel) in query.chunks_exact(4).zip(panel.chunks_exact(32)) {
                for (t, sum) in sums.iter_mut().enumerate() {
                    for (lane, sum) in sum.iter_mut().enumerate() {
                        *sum = madd::<FMA>(four[t], panel[t * 8 + lane], *sum);
                    }
                }
            }
            for (lane, score) in block.iter_mut().enumerate() {
                *score = (sums[0][lane] + sums[1][lane] + sums[2][lane] + sums[3][lane]) * scale;
            }
        }
        softmax_weighted::<FMA>(out, &mut scores[..len], rows, width, v);
    }
}

/// `out` (a head's values, a multiple of 8) = the rows' values from column `column` weighted by
/// the softmax of `scores` (turned into the probabilities on the way).
#[inline(always)]
fn softmax_weighted<const FMA: bool>(out: &mut [f32], scores: &mut [f32], rows: &[f32], width: usize, column: usize) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for p in scores.iter_mut() {
        *p = exp(*p - max);
    }
    let norm = 1.0 / lane_sum(scores, |v| v);
    let mut start = 0;
    while start < out.len() {
        // 32 columns at a time (four registers of 8), then 8.
        if out.len() - start >= 32 {
            weighted_rows::<4, FMA>(&mut out[start..start + 32], scores, rows, width, column + start, norm);
            start += 32;
        } else {
            weighted_rows::<1, FMA>(&mut out[start..start + 8], scores, rows, width, column + start, norm);
            start += 8;
        }
    }
}

/// `out` (`B` x 8 values) = `norm` x the sum over rows `j` of `probs[j]` times that row's
/// values from column `column`, the sums held in `B` registers.
#[inline(always)]
fn weighted_rows<const B: usize, const FMA: bool>(out: &mut [f32], probs: &[f32], rows: &[f32], width: usize, column: usize, norm: f32) {
    let mut sums = [[0f32; 8]; B];
    for (j, &p) in probs.iter().enumerate() {
        let values = &rows[j * width + column..j * width + column + B * 8];
        for (sum, values) in sums.iter_mut().zip(values.chunks_exact(8)) {
            for (sum, &x) in sum.iter_mut().zip(values) {
                *sum = madd::<FMA>(p, x, *sum);
            }
        }
    }
    for (out, sum) in out.chunks_exact_mut(8).zip(&sums) {
        for (out, &sum) in out.iter_mut().zip(sum) {
            *out = sum * norm;
        }
    }
}

/// `a * b + c`, as one fused instruction where the caller is compiled for FMA (Rust never fuses
/// a product and a sum on its own, and without the instruction `mul_add` is a slow library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

dispatched!(dispatch_attend_head, attend_head_avx2, attend_head_rows::<true>, attend_head_rows::<false>,
    (c: &mut [f32], s: &mut [f32], k: &mut [f32], rows: &[f32], width: usize, q: usize, hidden: usize, d: usize, scale: f32));

/// One layer's keys and values of one sequence, for the decoder's attention on the CPU:
/// `(kv_heads, capacity, head_dim)` each, grown (doubling) when a step needs more room.
pub struct CpuKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
}

// === impl CpuKv ===

impl CpuKv {
    /// Room for `capacity` tokens, allocated on the first step.
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// Makes room for `len` tokens in all, the `kept` already there moved to their new places.
    fn reserve(&mut self, kept: usize, len: usize, kv_heads: usize, head_dim: usize) {
        if !self.keys.is_empty() && len <= self.capacity {
            return;
        }
        let capacity = if self.keys.is_empty() {
            self.capacity.max(len)
        } else {
            (2 * self.capacity).max(len)
        };
        for store in [&mut self.keys, &mut self.values] {
            let mut grown = vec![0f32; kv_heads * capacity * head_dim];
            if !store.is_empty() {
                for h in 0..kv_heads {
                    let (from, to) = (h * self.capacity * head_dim, h * capacity * head_dim);
                    grown[to..to + kept * head_dim].copy_from_slice(&store[from..from + kept * head_dim]);
                }
            }
            *store = grown;
        }
        self.capacity = capacity;
    }
}

/// The decoder's attention heads: `heads` queries share `kv_heads` keys and values in groups,
/// each `head_dim` values wide.
#[derive(Clone, Copy, Debug)]
pub struct DecoderHeads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One sequence's part of a decoder step: its `n` new rows (the step's rows are the sequences'
/// in order), after the `past` tokens its cache `kv` holds.
pub struct SeqAttend<'a> {
    pub n: usize,
    pub past: usize,
    pub kv: &'a mut CpuKv,
}

/// Causal attention of one decoder step on the CPU, straight from the rows of the fused QKV
/// product, `(total, (heads + 2 kv_heads) x head_dim)`: each new query and key is rotated by
/// its position (`cos` and `sin`, `(positions, head_dim / 2)`, as candle's `rope_thd`), each new
/// key and value is appended to its sequence's cache, and each query attends to its sequence's
/// past and to itself. Returns `(total, heads x head_dim)`. One task per sequence for the
/// rotations and appends, then one per sequence and KV head for the attention, over every core.
/// It replaces about twenty small candle operations per sequence and layer (narrows, rotations,
/// copies, transposes, the cache's append, two products, a mask, a softmax), which at 16
/// sequences cost more than the arithmetic. `None` when a tensor is not contiguous f32 on the
/// CPU or a head's width is no multiple of 8 (the caller then takes candle's path).
pub fn decoder_attention(
    qkv: &Tensor,
    seqs: &mut [SeqAttend<'_>],
    cos: &Tensor,
    sin: &Tensor,
    shape: DecoderHeads,
) -> candle_core::Result<Option<Tensor>> {
    let DecoderHeads {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (total, width) = rows_of(qkv)?;
    let (q_dim, kv_dim) = (heads * d, kv_heads * d);
    let (positions, half) = rows_of(cos)?;
    if kv_heads == 0
        || heads % kv_heads != 0
        || width != q_dim + 2 * kv_dim
        || half * 2 != d
        || rows_of(sin)? != (positions, half)
        || seqs.iter().map(|s| s.n).sum::<usize>() != total
    {
        return Err(candle_core::Error::Msg(format!(
            "decoder_attention: rows of {width} values are not {heads} query heads and {kv_heads} key and value heads of {d}, \
             or the sequences' new tokens are not the step's {total} rows"
        )));
    }
    if let Some(s) = seqs.iter().find(|s| s.past + s.n > positions) {
        return Err(candle_core::Error::Msg(format!(
            "a sequence of {} tokens is past the {positions} positions the model has",
            s.past + s.n
        )));
    }
    if d % 8 != 0 {
        return Ok(None);
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    // Where each sequence's rows start in the step.
    let starts: Vec<usize> = seqs
        .iter()
        .scan(0, |at, s| {
            *at += s.n;
            Some(*at - s.n)
        })
        .collect();
    let mut queries = vec![0f32; total * q_dim];
    let done = with_values(qkv, |xs| {
        with_values(cos, |cs| {
            with_values(sin, |sn| {
                // Rotations and appends: one task per sequence (each owns its cache and rows).
                let mut parts = Vec::with_capacity(seqs.len());
                let mut rest = &mut queries[..];
                for s in seqs.iter() {
                    let (mine, after) = rest.split_at_mut(s.n * q_dim);
                    parts.push(mine);
                    rest = after;
                }
                seqs.par_iter_mut().zip(parts).zip(&starts).for_each(|((s, qs), &start)| {
                    s.kv.reserve(s.past, s.past + s.n, kv_heads, d);
                    let capacity = s.kv.capacity;
                    for (i, q_row) in qs.chunks_exact_mut(q_dim).enumerate() {
                        let row = &xs[(start + i) * width..(start + i + 1) * width];
                        let pos = s.past + i;
                        let (c, t) = (&cs[pos * half..(pos + 1) * half], &sn[pos * half..(pos + 1) * half]);
                        for (out, x) in q_row.chunks_exact_mut(d).zip(row[..q_dim].chunks_exact(d)) {
                            rotate(out, x, c, t);
                        }
                        for h in 0..kv_heads {
                            let at = (h * capacity + pos) * d;
                            let key = &row[q_dim + h * d..q_dim + (h + 1) * d];
                            rotate(&mut s.kv.keys[at..at + d], key, c, t);
                            let value = &row[q_dim + kv_dim + h * d..q_dim + kv_dim + (h + 1) * d];
                            s.kv.values[at..at + d].copy_from_slice(value);
                        }
                    }
                });
                // Attention: one task per sequence and KV head, its group of query heads
                // together (they read the same keys and values).
                let seqs = &*seqs;
                let queries = &queries;
                let tasks: Vec<(usize, usize)> = (0..seqs.len()).flat_map(|s| (0..kv_heads).map(move |h| (s, h))).collect();
                let contexts: Vec<Vec<f32>> = tasks
                    .par_iter()
                    .map(|&(si, h)| {
                        let s = &seqs[si];
                        let seen = s.past + s.n;
                        let base = h * s.kv.capacity * d;
                        let (keys, values) = (&s.kv.keys[base..base + seen * d], &s.kv.values[base..base + seen * d]);
                        let mut scores = vec![0f32; seen];
                        let mut context = vec![0f32; s.n * group * d];
                        for (i, out) in context.chunks_exact_mut(group * d).enumerate() {
                            let visible = s.past + i + 1;
                            for (g, out) in out.chunks_exact_mut(d).enumerate() {
                                let at = (starts[si] + i) * q_dim + (h * group + g) * d;
                                dispatch_attend_one(out, &mut scores[..visible], &queries[at..at + d], keys, values, d, scale);
                            }
                        }
                        context
                    })
                    .collect();
                let mut out = vec![0f32; total * q_dim];
                for (&(si, h), context) in tasks.iter().zip(&contexts) {
                    for (i, part) in context.chunks_exact(group * d).enumerate() {
                        let at = (starts[si] + i) * q_dim + h * group * d;
                        out[at..at + group * d].copy_from_slice(part);
                    }
                }
                out
            })
        })
    })
    .flatten()
    .flatten();
    match done {
        Some(out) => Tensor::from_vec(out, (total, q_dim), &Device::Cpu).map(Some),
        None => Ok(None),
    }
}

/// `x` rotated by its position's angles (`cos` and `sin`, one per pair): the pairs are each
/// value of the first half with the value half a head later (candle's `rope_thd`, the layout
/// Llama's checkpoints use).
#[inline(always)]
fn rotate(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = x.split_at(half);
    let (out_lo, out_hi) = out.split_at_mut(half);
    for i in 0..half {
        out_lo[i] = lo[i] * cos[i] - hi[i] * sin[i];
        out_hi[i] = lo[i] * sin[i] + hi[i] * cos[i];
    }
}

/// One query attending to the first `scores.len()` keys and values (rows of `d`, a multiple
/// of 8): `out` is their average weighted by the softmax of the scaled scores.
#[inline(always)]
fn attend_one_rows<const FMA: bool>(
    out: &mut [f32],
    scores: &mut [f32],
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    d: usize,
    scale: f32,
) {
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
        let mut sum = [0f32; 8];
        for (q, k) in query.chunks_exact(8).zip(key.chunks_exact(8)) {
            for lane in 0..8 {
                sum[lane] = madd::<FMA>(q[lane], k[lane], sum[lane]);
            }
        }
        *score = sum.iter().sum::<f32>() * scale;
    }
    softmax_weighted::<FMA>(out, scores, values, d, 0);
}

dispatched!(dispatch_attend_one, attend_one_avx2, attend_one_rows::<true>, attend_one_rows::<false>,
    (out: &mut [f32], scores: &mut [f32], query: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32));

/// Rows `[start, end)` of the matrix whose rows are those of `weights` stacked (each
/// `[rows_j, width]`), transposed: `[width, end - start]`. How a checkpoint's `[out, in]`
/// weights become the `[in, out]` operands of the products, at load. On the CPU, for
/// contiguous f32 weights, it is one pass in tiles over every core (candle's transpose copies
/// element by element on one core, then `cat` and the split copy again); anything else takes
/// candle's path.
pub fn transpose_rows(weights: &[&Tensor], start: usize, end: usize) -> candle_core::Result<Tensor> {
    let width = weights[0].dim(1)?;
    let guards: Vec<_> = weights.iter().map(|w| w.storage_and_layout()).collect();
    let mut rows: Vec<&[f32]> = Vec::new();
    let fast = weights
        .iter()
        .all(|w| w.dtype() == DType::F32 && w.rank() == 2 && w.dim(1).ok() == Some(width))
        && guards.iter().all(|(storage, layout)| {
            let (Storage::Cpu(cpu), Some((from, to))) = (&**storage, layout.contiguous_offsets()) else {
                return false;
            };
            match cpu.as_slice::<f32>() {
                Ok(all) => {
                    rows.extend(all[from..to].chunks_exact(width.max(1)));
                    true
                }
                Err(_) => false,
            }
        });
    if !fast || width == 0 || end > rows.len() {
        drop(guards);
        let stacked = Tensor::cat(weights, 0)?;
        return stacked.narrow(0, start, end - start)?.t()?.contiguous();
    }
    let n = end - start;
    let rows = &rows[start..end];
    let mut out = vec![0f32; width * n];
    // One band of output rows per core, written in square tiles of TILE x TILE: a tile reads
    // TILE values from each of TILE source rows and writes TILE values into each of TILE
    // output rows, both a few whole cache lines, and the tile stays in the L1 cache.
    const TILE: usize = 64;
    let band = width.div_ceil(rayon::current_num_threads().max(1));
    out.par_chunks_mut(band * n).enumerate().for_each(|(b, chunk)| {
        let (first, tall) = (b * band, chunk.len() / n);
        for j0 in (0..n).step_by(TILE) {
            let j1 = (j0 + TILE).min(n);
            for i0 in (0..tall).step_by(TILE) {
                let i1 = (i0 + TILE).min(tall);
                for (j, row) in rows[j0..j1].iter().enumerate() {
                    for (i, value) in row[first + i0..first + i1].iter().enumerate() {
                        chunk[(i0 + i) * n + j0 + j] = *value;
                    }
                }
            }
        }
    });
    drop(guards);
    Tensor::from_vec(out, (width, n), &Device::Cpu)
}

#[inline(always)]
fn silu_mul_rows(out: &mut [f32], x: &[f32], width: usize) {
    for (o, row) in out.chunks_exact_mut(width).zip(x.chunks_exact(2 * width)) {
        let (gate, up) = row.split_at(width);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            // g / (1 + e^-g), with the exponential of -|g| only (never of a large positive).
            let t = exp(-g.abs());
            let top = if g >= 0.0 { g } else { g * t };
            *o = top / (1.0 + t) * u;
        }
    }
}

#[inline(always)]
fn softmax_rows(out: &mut [f32], x: &[f32], width: usize) {
    for (o, x) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for (o, &v) in o.iter_mut().zip(x) {
            *o = exp(v - max);
        }
        let scale = 1.0 / lane_sum(o, |v| v);
        for o in o.iter_mut() {
            *o *= scale;
        }
    }
}

/// e^x for x <= 0 (what softmax gives it), to about 3e-7 relative: x = n ln 2 + r with |r| <=
/// ln 2 / 2, a degree-6 polynomial for e^r, and 2^n put into the exponent's bits. Branch-free,
/// so a loop of it vectorises; below -87 it gives 0 (e^-87 is under f32's normal range).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts (Cody and Waite), so that n ln 2 is subtracted without losing r's bits.
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

#[inline(always)]
fn bias_gelu_rows(out: &mut [f32], x: &[f32], b: &[f32]) {
    for (o, x) in out.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
        for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
            let v = x + b;
            *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

#[inline(always)]
fn norm_rows(out: &mut [f32], x: &[f32], r: &[f32], b: &[f32], g: &[f32], be: &[f32], eps: f32) {
    let width = b.len();
    for ((o, x), r) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)).zip(r.chunks_exact(width)) {
        for ((o, &x), (&r, &b)) in o.iter_mut().zip(x).zip(r.iter().zip(b)) {
            *o = x + r + b;
        }
        let mean = lane_sum(o, |v| v) / width as f32;
        for o in o.iter_mut() {
            *o -= mean;
        }
        let var = lane_sum(o, |v| v * v) / width as f32;
        let scale = 1.0 / (var + eps).sqrt();
        for ((o, &g), &be) in o.iter_mut().zip(g).zip(be) {
            *o = *o * scale * g + be;
        }
    }
}

/// The sum of `f` of each value, in eight running sums (one sum in order is a chain of
/// dependent additions the compiler may not reorder, so it would not vectorise).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f32>() + rest
}

/// erf by Abramowitz and Stegun 7.1.28 (absolute error under 3e-7): only products, sums and one
/// division, so that a loop of it vectorises (7.1.26 needs an exp, a call per element).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    let z = x.abs();
    let p = 1.0 + z * (A[0] + z * (A[1] + z * (A[2] + z * (A[3] + z * (A[4] + z * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let y = 1.0 - 1.0 / (p8 * p8);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn sample(rows: usize, width: usize, seed: u32) -> Tensor {
        let values: Vec<f32> = (0..rows * width)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                (h >> 8) as f32 / (1 << 24) as f32 * 8.0 - 4.0
            })
            .collect();
        Tensor::from_vec(values, (rows, width), &Device::Cpu).unwrap()
    }

    #[test]
    fn erf_is_within_its_bound() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (6.0, 1.0),
            (-40.0, -1.0),
        ] {
            assert!((erf(x) - want).abs() < 4e-7, "erf({x}) = {} against {want}", erf(x));
        }
    }

    #[test]
    fn exp_and_softmax_match_the_library() {
        // Down to -87; below that it is clamped (the softmax weight is 0 in all but name).
        for i in 0..=1740 {
            let x = -(i as f32) * 0.05;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= want * 4e-7 + 1e-38, "exp({x}) = {got} against {want}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
        assert!(exp(-1000.0) < 1e-37);
        for (rows, width) in [(384, 30), (4, 160), (3, 7)] {
            let x = sample(rows, width, 9);
            let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
            let got = softmax_last_dim(&x).unwrap();
            assert!(max_diff(&got, &want) < 1e-6, "softmax {rows}x{width}: {}", max_diff(&got, &want));
        }
    }

    #[test]
    fn silu_times_up_matches_candle() {
        for (rows, width) in [(1, 2816), (16, 2816), (3, 5)] {
            let gate_up = (sample(rows, 2 * width, 11) * 6.0).unwrap();
            let want =
                (candle_nn::ops::silu(&gate_up.narrow(1, 0, width).unwrap()).unwrap() * gate_up.narrow(1, width, width).unwrap()).unwrap();
            let got = silu_mul(&gate_up, width).unwrap();
            assert_eq!(got.dims(), &[rows, width]);
            // Values up to about 24 x 24: the bound is relative.
            let (got, want) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= w.abs() * 5e-7 + 1e-6, "silu_mul {rows}x{width}: {g} against {w}");
            }
        }
        assert!(silu_mul(&sample(2, 7, 1), 3).is_err(), "rows that are not two halves");
    }

    /// Attention as candle computes it for one sequence: (len, 3, heads, d) permuted, QK^T
    /// scaled, softmax, times V, back to (len, hidden).
    fn candle_attention(qkv: &Tensor, lens: &[usize], heads: usize) -> Tensor {
        let hidden = qkv.dim(1).unwrap() / 3;
        let d = hidden / heads;
        let mut contexts = Vec::new();
        let mut offset = 0;
        for &len in lens {
            let part = qkv
                .narrow(0, offset, len)
                .unwrap()
                .reshape((len, 3, heads, d))
                .unwrap()
                .permute((1, 2, 0, 3))
                .unwrap();
            let part = part.contiguous().unwrap();
            let (q, k, v) = (part.get(0).unwrap(), part.get(1).unwrap(), part.get(2).unwrap());
            let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (d as f64).sqrt())).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            contexts.push(probs.matmul(&v).unwrap().transpose(0, 1).unwrap().reshape((len, hidden)).unwrap());
            offset += len;
        }
        Tensor::cat(&contexts, 0).unwrap()
    }

    #[test]
    fn packed_attention_matches_candles_per_sequence_path() {
        // MiniLM's shape (12 heads of 32), sequences of unequal length (one of a single token,
        // lengths that are and are not multiples of 8), heads of 16, 64 and 40 values (32 at a
        // time, then 8).
        for (lens, heads, hidden) in [
            (vec![30, 7, 1, 64], 12, 384),
            (vec![5, 3], 3, 48),
            (vec![200], 4, 256),
            (vec![9], 1, 40),
        ] {
            let total: usize = lens.iter().sum();
            let qkv = (sample(total, 3 * hidden, 21) * 0.5).unwrap();
            let want = candle_attention(&qkv, &lens, heads);
            let got = packed_attention(&qkv, &lens, heads).unwrap().expect("a contiguous f32 tensor");
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 2e-5, "{lens:?} x {heads} heads: {}", max_diff(&got, &want));
        }
        // Lengths that do not add up to the rows, or rows that are not three equal parts, are
        // refused rather than read out of bounds; a tensor that is not f32 is left to candle.
        assert!(packed_attention(&sample(10, 96, 1), &[4, 4], 4).is_err());
        assert!(packed_attention(&sample(10, 95, 1), &[10], 4).is_err());
        let half = sample(4, 96, 1).to_dtype(DType::BF16).unwrap();
        assert!(packed_attention(&half, &[4], 4).unwrap().is_none());
        assert!(packed_attention(&sample(4, 90, 1), &[4], 3).unwrap().is_none(), "heads of 10");
    }

    #[test]
    fn packed_embeddings_match_candles_gathers_and_norm() {
        let (word, position) = (sample(50, 24, 31), sample(16, 24, 32));
        let token_type = sample(1, 24, 33).squeeze(0).unwrap();
        let (gamma, beta) = (sample(1, 24, 34).squeeze(0).unwrap(), sample(1, 24, 35).squeeze(0).unwrap());
        let ids = [3u32, 49, 0, 7, 7, 12];
        let places = [0u32, 1, 2, 0, 1, 15];
        let index = |v: &[u32]| Tensor::new(v, &Device::Cpu).unwrap();
        let summed = word
            .index_select(&index(&ids), 0)
            .unwrap()
            .add(&position.index_select(&index(&places), 0).unwrap())
            .unwrap()
            .broadcast_add(&token_type)
            .unwrap();
        let want = candle_nn::ops::layer_norm(&summed, &gamma, &beta, 1e-12).unwrap();
        let got = embed_norm(&word, &position, &token_type, &ids, &places, &gamma, &beta, 1e-12)
            .unwrap()
            .unwrap();
        assert!(max_diff(&got, &want) < 2e-6, "{}", max_diff(&got, &want));
        let past = embed_norm(&word, &position, &token_type, &[50], &[0], &gamma, &beta, 1e-12).unwrap_err();
        assert!(past.to_string().contains("token id 50"), "{past}");
        let past = embed_norm(&word, &position, &token_type, &[1], &[16], &gamma, &beta, 1e-12).unwrap_err();
        assert!(past.to_string().contains("position 16"), "{past}");
    }

    #[test]
    fn transposed_rows_match_candles_transpose() {
        let (a, b) = (sample(70, 45, 11), sample(33, 45, 12));
        let stacked = Tensor::cat(&[&a, &b], 0).unwrap();
        for (start, end) in [(0, 103), (0, 52), (52, 103), (69, 71)] {
            let want = stacked.narrow(0, start, end - start).unwrap().t().unwrap().contiguous().unwrap();
            let got = transpose_rows(&[&a, &b], start, end).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(max_diff(&got, &want), 0.0, "rows {start}..{end}");
        }
        // Weights that are not f32 take candle's path, with the same answer.
        let half = a.to_dtype(DType::BF16).unwrap();
        let want = half.t().unwrap().contiguous().unwrap().to_dtype(DType::F32).unwrap();
        let got = transpose_rows(&[&half], 0, 70).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
    }

    #[test]
    fn fused_kernels_match_candles_separate_passes() {
        for (rows, width) in [(1, 384), (960, 1536), (7, 5)] {
            let x = sample(rows, width, 1);
            let bias = sample(1, width, 2).squeeze(0).unwrap();
            let want = x.broadcast_add(&bias).unwrap().gelu_erf().unwrap();
            let got = bias_gelu(&x, &bias).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 2e-6, "gelu {rows}x{width}: {}", max_diff(&got, &want));

            let residual = sample(rows, width, 3);
            let (gamma, beta) = (sample(1, width, 4).squeeze(0).unwrap(), sample(1, width, 5).squeeze(0).unwrap());
            let want = candle_nn::ops::layer_norm(&x.broadcast_add(&bias).unwrap().add(&residual).unwrap(), &gamma, &beta, 1e-12).unwrap();
            let got = bias_residual_norm(&x, &bias, &residual, &gamma, &beta, 1e-12).unwrap();
            assert!(max_diff(&got, &want) < 2e-5, "norm {rows}x{width}: {}", max_diff(&got, &want));
        }
        // A view that is not contiguous takes candle's path, with the same answer.
        let x = sample(8, 6, 7).t().unwrap();
        let bias = sample(1, 8, 8).squeeze(0).unwrap();
        let want = x.broadcast_add(&bias).unwrap().gelu_erf().unwrap();
        assert!(max_diff(&bias_gelu(&x, &bias).unwrap(), &want) < 2e-6);
    }
}
