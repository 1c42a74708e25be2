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
macro_rules! dispatched {
    ($name:ident, $avx2:ident, $rows:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) {
            $rows($($arg),*)
        }

        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $rows($($arg),*)
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
