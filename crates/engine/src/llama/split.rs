//! A linear layer's weight, laid out for the products its device and CPU do fastest.

use crate::panels::Panels;
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// A linear layer's weight, kept the way its products are fastest here.
///
/// `Panels`, f32 on a CPU where [`decode_choice`] found them the faster: the checkpoint's rows
/// interleaved in panels of 16 outputs ([`crate::panels`]), multiplied by the engine's own
/// kernels for any number of rows, the panels split over the engine's pool.
///
/// `Columns`, anywhere else: transposed once at load, `[inputs, outputs]`, and on the CPU split
/// by columns into one block per core, multiplied in parallel by gemm, or by the BLAS for
/// steps of many rows (candle runs a decode-sized product on one core; split, each core streams
/// its own share of the weights). On a GPU the weight stays whole: one product already uses
/// the whole card.
pub(crate) enum Split {
    Panels(Panels),
    Columns(Vec<Tensor>),
}

// === impl Split ===

impl Split {
    /// The layer whose weight is the rows of `weights` stacked (each `[outputs_j, inputs]`, as
    /// stored in a checkpoint), in the layout this device and CPU multiply fastest.
    pub(crate) fn new(weights: &[&Tensor]) -> candle_core::Result<Self> {
        let panels = weights[0].device().is_cpu() && weights.iter().all(|w| w.dtype() == DType::F32) && decode_choice().chosen;
        match panels {
            true => Self::panels(weights),
            false => Self::columns(weights),
        }
    }

    /// The `Panels` layout (f32 CPU weights only).
    pub(crate) fn panels(weights: &[&Tensor]) -> candle_core::Result<Self> {
        let rows = match weights {
            [one] => (*one).clone(),
            _ => Tensor::cat(weights, 0)?,
        };
        let (n, k) = rows.dims2()?;
        let rows = rows.to_dtype(DType::F32)?.flatten_all()?;
        let (storage, layout) = rows.storage_and_layout();
        let (Storage::Cpu(cpu), Some((from, to))) = (&*storage, layout.contiguous_offsets()) else {
            candle_core::bail!("panels: the weight is not contiguous f32 in CPU memory");
        };
        Ok(Self::Panels(Panels::from_rows(&cpu.as_slice::<f32>()?[from..to], n, k)))
    }

    /// The `Columns` layout.
    pub(crate) fn columns(weights: &[&Tensor]) -> candle_core::Result<Self> {
        let outputs: usize = weights.iter().map(|w| w.dim(0)).sum::<candle_core::Result<usize>>()?;
        let cores = if weights[0].device().is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        let n = cores.clamp(1, 8).min(outputs);
        let per = outputs.div_ceil(n);
        let parts = (0..outputs)
            .step_by(per)
            .map(|start| crate::cpu_ops::transpose_rows(weights, start, (start + per).min(outputs)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self::Columns(parts))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let parts = match self {
            Self::Panels(panels) => return panels_product(x, panels),
            Self::Columns(parts) => parts,
        };
        if parts.len() == 1 {
            return crate::blas::matmul(x, &parts[0]);
        }
        // A step with many rows (prompts being read) goes to the BLAS where there is one; a
        // decode step's few rows stay on gemm, the faster there (docs/BENCHMARKS.md).
        let outs: Vec<Tensor> = parts
            .par_iter()
            .map(|w| crate::blas::matmul(x, w))
            .collect::<candle_core::Result<_>>()?;
        Tensor::cat(&outs, 1)
    }
}

/// `x . wᵀ` for `x` `(m, k)` on the CPU and `w` in panels.
fn panels_product(x: &Tensor, panels: &Panels) -> candle_core::Result<Tensor> {
    let (m, k) = x.dims2()?;
    if k != panels.k() {
        candle_core::bail!("panels: x has {k} values per row, the weight {}", panels.k());
    }
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (Storage::Cpu(xc), Some((x0, x1))) = (&*xs, xl.contiguous_offsets()) else {
        candle_core::bail!("panels: x is not in CPU memory");
    };
    let out = panels.product(&xc.as_slice::<f32>()?[x0..x1], m);
    drop(xs);
    Tensor::from_vec(out, (m, panels.n()), &Device::Cpu)
}

/// The probe's products: 16 rows (a busy server's decode step) by weights of 1024 inputs and
/// 4096 outputs (16 MB each), as many as it takes to fill twice the last-level cache (two at
/// least, eight at most), so that they are read from memory as a model's are.
pub const PROBE: (usize, usize, usize) = (16, 1024, 4096);

/// Which layout the CPU's f32 weights take, by [`PROBE`]'s products timed both ways.
#[derive(Clone, Copy, Debug)]
pub struct DecodeChoice {
    /// `gemm`'s best time over the panels' (above 1: the panels are the faster).
    pub speedup: f32,
    /// Whether weights take the `Panels` layout.
    pub chosen: bool,
    /// Whether `COLO_DECODE` made the choice rather than the probe.
    pub forced: bool,
}

/// The layout choice of this process, timed on first use (about 0.1 s). The panels were the
/// faster with AVX-512 (1.3x) and with AVX2 kernels (2.1x) on the Zen 5 of docs/BENCHMARKS.md;
/// the probe stays so that a CPU where `gemm` (or the BLAS behind `Columns`) does better keeps
/// it.
pub fn decode_choice() -> DecodeChoice {
    static CHOICE: OnceLock<DecodeChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        // On a worker of the pool, as the engine's steps run: a call from outside would time
        // the hand-over to the pool too.
        let speedup = rayon::scope(|_| probe()).unwrap_or(0.0);
        // `COLO_DECODE=panels` or `columns` overrides the probe (to measure the other layout).
        let forced = match std::env::var("COLO_DECODE").as_deref() {
            Ok("panels") => Some(true),
            Ok("columns") => Some(false),
            Ok(other) => {
                tracing::warn!(value = other, "COLO_DECODE is neither panels nor columns; the probe chooses");
                None
            }
            Err(_) => None,
        };
        DecodeChoice {
            speedup,
            chosen: forced.unwrap_or(speedup > 1.0),
            forced: forced.is_some(),
        }
    })
}

/// `gemm`'s best time over the panels' for [`PROBE`]'s products, each layout run in turn four
/// times (the first of each a warm-up).
fn probe() -> candle_core::Result<f32> {
    let (m, k, n) = PROBE;
    let count = (2 * last_level_cache() / (n * k * 4)).clamp(2, 8);
    let ramp = |len: usize, seed: usize| (0..len).map(|i| ((i * 31 + seed) % 97) as f32 / 97.0 - 0.5).collect::<Vec<f32>>();
    let x = Tensor::from_vec(ramp(m * k, 1), (m, k), &Device::Cpu)?;
    let mut panels = Vec::with_capacity(count);
    let mut columns = Vec::with_capacity(count);
    for i in 0..count {
        let w = Tensor::from_vec(ramp(n * k, 2 + i), (n, k), &Device::Cpu)?;
        columns.push(Split::columns(&[&w])?);
        panels.push(Split::panels(&[&w])?);
    }
    let timed = |splits: &[Split]| -> candle_core::Result<f32> {
        let start = std::time::Instant::now();
        for split in splits {
            split.forward(&x)?;
        }
        Ok(start.elapsed().as_secs_f32())
    };
    let (mut ours, mut gemm) = (f32::INFINITY, f32::INFINITY);
    for round in 0..4 {
        let (o, g) = (timed(&panels)?, timed(&columns)?);
        if round > 0 {
            (ours, gemm) = (ours.min(o), gemm.min(g));
        }
    }
    Ok(if ours > 0.0 { gemm / ours } else { 0.0 })
}

/// Bytes of the largest cache the kernel reports for CPU 0 (32 MiB where it says nothing).
fn last_level_cache() -> usize {
    let sizes = (0..8).filter_map(|i| {
        let size = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size")).ok()?;
        let size = size.trim();
        let (digits, scale) = match size.strip_suffix('K') {
            Some(d) => (d, 1024),
            None => match size.strip_suffix('M') {
                Some(d) => (d, 1024 * 1024),
                None => (size, 1),
            },
        };
        digits.parse::<usize>().ok().map(|v| v * scale)
    });
    sizes.max().unwrap_or(32 << 20)
}
