//! Products of a few rows (a decode step's) with a weight kept as a checkpoint stores it:
//! `x (m, k) . w (n, k)ᵀ`, every output a dot product of one row of `x` with one row of `w`.
//!
//! A decode step multiplies a handful of rows by every weight of the model. `gemm` (candle's CPU
//! matmul) is written for large products; its AVX-512 kernels still do a 16-row step well, but
//! its AVX2 ones ran whole 16-row decode steps at about 81 GFLOP/s against llama.cpp's 92
//! (docs/BENCHMARKS.md). Here a tile of a few rows of `x` by a few rows of `w` keeps one register
//! of partial sums per pair: each step along `k` loads one vector from each of those rows and
//! does every multiply-add between them. `k` is walked in stretches of [`K_BLOCK`], so that a
//! stretch of the tile's rows of `w` stays in the L1 cache while every group of `x`'s rows
//! passes over it. The tile is 2 x 6 with AVX2 (12 sums in 16 registers) and 4 x 6 with AVX-512
//! (24 in 32); a CPU with neither takes the same sums over arrays of 8, which the compiler
//! vectorises as it can. Rows of `x` whose length is a multiple of 4 KB are first copied to a
//! stride that is not (they would all fall in the same sets of the L1 cache). One row, which
//! reads nothing twice, reads `w`'s rows one after the other instead, one stream through
//! memory. Columns are split in blocks over the engine's pool.
//!
//! Whether the engine uses it is measured, not assumed: [`crate::llama::decode_choice`] times
//! a 16-row product both ways when the first model loads.

use rayon::prelude::*;

/// Products of at most this many rows take this kernel (past it `gemm`'s packed kernels, or the
/// BLAS, are the faster: `examples/matvec_speed.rs` at 32 rows on AVX2 found them even).
pub const MAX_ROWS: usize = 32;

/// The instruction set the kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Plain,
}

impl Isa {
    /// The best this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Plain
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Isa::Plain => true,
            Isa::Avx2 => matches!(Isa::detect(), Isa::Avx2 | Isa::Avx512),
            Isa::Avx512 => Isa::detect() == Isa::Avx512,
        }
    }

    /// Its name in the engine's CPU line.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Plain => "plain",
        }
    }
}

/// The ISA the engine's products use, found once.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// `x (m, k) . w (n, k)ᵀ` as `(m, n)` row-major, with the best instructions this CPU has.
pub fn product(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    product_with(isa(), x, m, w, n, k)
}

/// [`product`] with the instructions named (the tests run each the CPU has).
///
/// # Panics
/// If `x` is not `m * k` values or `w` not `n * k`, or `isa` is not available on this CPU.
pub fn product_with(isa: Isa, x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "few_rows::product: {} and {} values for ({m}, {k}) . ({n}, {k})ᵀ",
        x.len(),
        w.len()
    );
    assert!(isa.available(), "few_rows::product: this CPU has no {}", isa.name());
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    // The output transposed, (n, m): each task's columns are then one contiguous run of it.
    let mut t = vec![0f32; n * m];
    // About four tasks per core (cores that a neighbour slows still finish together), whole
    // tiles of 24 columns each, at least 48 columns.
    let tasks = 4 * rayon::current_num_threads().max(1);
    let per = n.div_ceil(tasks).next_multiple_of(24).max(48);
    // x's rows at a stride that is not a multiple of 4 KB: rows of 1024 values (the hidden size
    // of many models) would otherwise all fall in the same sets of the L1 cache as each other
    // and as the rows of w, and evict one another.
    let ldx = if m > 1 && (k * 4).is_multiple_of(4096) { k + 16 } else { k };
    let padded;
    let x = if ldx == k {
        x
    } else {
        let mut copy = vec![0f32; m * ldx];
        for (to, from) in copy.chunks_exact_mut(ldx).zip(x.chunks_exact(k)) {
            to[..k].copy_from_slice(from);
        }
        padded = copy;
        &padded[..]
    };
    t.par_chunks_mut(per * m).enumerate().for_each(|(b, t)| {
        let j0 = b * per;
        let cols = t.len() / m;
        let w = &w[j0 * k..(j0 + cols) * k];
        match isa {
            // SAFETY: the CPU has the instructions (asserted above); `x` holds m rows of k,
            // `w` cols rows of k and `t` cols x m values, as `block` reads and writes them.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::block(x, ldx, m, k, w, t) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::block(x, ldx, m, k, w, t) },
            _ => plain_block(x, ldx, m, k, w, t),
        }
    });
    if m == 1 {
        return t;
    }
    let mut out = vec![0f32; m * n];
    for (j, column) in t.chunks_exact(m).enumerate() {
        for (i, v) in column.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

/// One block of columns without SIMD intrinsics: the dot products in 8 lanes, which the
/// compiler vectorises for whatever the build targets.
fn plain_block(x: &[f32], ldx: usize, m: usize, k: usize, w: &[f32], t: &mut [f32]) {
    const LANES: usize = 8;
    let whole = k - k % LANES;
    for (j, wr) in w.chunks_exact(k).enumerate() {
        for (i, xr) in (0..m).map(|i| &x[i * ldx..i * ldx + k]).enumerate() {
            let mut acc = [0f32; LANES];
            for (a, b) in xr[..whole].chunks_exact(LANES).zip(wr[..whole].chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] += a[l] * b[l];
                }
            }
            let tail: f32 = xr[whole..].iter().zip(&wr[whole..]).map(|(a, b)| a * b).sum();
            t[j * m + i] = acc.iter().sum::<f32>() + tail;
        }
    }
}

/// Values of `k` a tile runs through before the next group of `x`'s rows takes the same
/// stretch of `w`'s rows: 6 KB of `w` for a tile of 6 of its rows, which stay in the L1 cache
/// while every group of `x`'s rows passes over them.
const K_BLOCK: usize = 256;

/// The kernel for one instruction set: `block` walks a block of `w`'s rows in groups of
/// `$cols`; for each, `k` in stretches of [`K_BLOCK`], and for each stretch `x`'s rows in
/// groups of `$rows` through `tile`, whose partial sums wait in registers' worth of memory
/// between stretches.
macro_rules! kernels {
    ($module:ident, $features:literal, $vec:ty, $lanes:literal, $zero:ident, $load:ident, $fma:ident, $sum:path, $rows:literal, $cols:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use std::arch::x86_64::*;

            /// `t[j * m + i] = x[i] . w[j]` for every row `i` of `x` (m rows of k) and `j` of
            /// `w` (rows of k).
            ///
            /// # Safety
            /// The CPU must have the module's instructions.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn block(x: &[f32], ldx: usize, m: usize, k: usize, w: &[f32], t: &mut [f32]) {
                let cols = w.len() / k;
                assert!(ldx >= k && x.len() >= (m - 1) * ldx + k && t.len() == cols * m);
                if m == 1 {
                    // SAFETY: the caller's promise, passed on.
                    unsafe { one_row(&x[..k], w, t) };
                    return;
                }
                let whole = k - k % $lanes;
                // Per row of x, one vector of partial sums for each of the group's rows of w.
                let mut sums: Vec<$vec> = vec![$zero(); m * $cols];
                let mut j = 0;
                while j < cols {
                    let c = (cols - j).min($cols);
                    sums.fill($zero());
                    let mut k0 = 0;
                    // With one group of x's rows nothing is read twice: w's rows go straight through.
                    let stretch = if m <= $rows { whole } else { super::K_BLOCK };
                    while k0 < whole {
                        let len = (whole - k0).min(stretch);
                        let mut i = 0;
                        while i < m {
                            let r = (m - i).min($rows);
                            // SAFETY: rows i..i + r of x and j..j + c of w are in bounds (r and c
                            // are clamped), as are values k0..k0 + len of each; sums holds
                            // $cols vectors for each of x's m rows.
                            unsafe {
                                let (xp, wp, sp) = (
                                    x.as_ptr().add(i * ldx + k0),
                                    w.as_ptr().add(j * k + k0),
                                    sums.as_mut_ptr().add(i * $cols),
                                );
                                match r {
                                    1 => by_cols::<1>(c, xp, ldx, wp, sp, k, len),
                                    2 => by_cols::<2>(c, xp, ldx, wp, sp, k, len),
                                    3 => by_cols::<3>(c, xp, ldx, wp, sp, k, len),
                                    _ => by_cols::<$rows>(c, xp, ldx, wp, sp, k, len),
                                }
                            }
                            i += r;
                        }
                        k0 += len;
                    }
                    for i in 0..m {
                        for jj in 0..c {
                            let (xr, wr) = (&x[i * ldx..i * ldx + k], &w[(j + jj) * k..(j + jj + 1) * k]);
                            let tail: f32 = xr[whole..].iter().zip(&wr[whole..]).map(|(a, b)| a * b).sum();
                            t[(j + jj) * m + i] = $sum(sums[i * $cols + jj]) + tail;
                        }
                    }
                    j += c;
                }
            }

            /// `t[j] = x . w[j]` for one row `x`: nothing is read twice, so `w`'s rows are read
            /// one after the other, one stream through memory, four vectors of sums in flight.
            ///
            /// # Safety
            /// The CPU must have the module's instructions.
            #[target_feature(enable = $features)]
            unsafe fn one_row(x: &[f32], w: &[f32], t: &mut [f32]) {
                let k = x.len();
                let whole = k - k % (4 * $lanes);
                for (wr, t) in w.chunks_exact(k).zip(t.iter_mut()) {
                    // SAFETY: reads below `whole` <= k of x and of the row.
                    let sum = unsafe {
                        let mut acc = [$zero(); 4];
                        let mut p = 0;
                        while p < whole {
                            for (u, acc) in acc.iter_mut().enumerate() {
                                let q = p + u * $lanes;
                                *acc = $fma($load(x.as_ptr().add(q)), $load(wr.as_ptr().add(q)), *acc);
                            }
                            p += 4 * $lanes;
                        }
                        acc.iter().map(|v| $sum(*v)).sum::<f32>()
                    };
                    *t = sum + x[whole..].iter().zip(&wr[whole..]).map(|(a, b)| a * b).sum::<f32>();
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn by_cols<const R: usize>(c: usize, x: *const f32, ldx: usize, w: *const f32, sums: *mut $vec, k: usize, len: usize) {
                // SAFETY: as for `tile`, which the caller's bounds satisfy.
                unsafe {
                    match c {
                        1 => tile::<R, 1>(x, ldx, w, sums, k, len),
                        2 => tile::<R, 2>(x, ldx, w, sums, k, len),
                        3 => tile::<R, 3>(x, ldx, w, sums, k, len),
                        4 => tile::<R, 4>(x, ldx, w, sums, k, len),
                        5 => tile::<R, 5>(x, ldx, w, sums, k, len),
                        _ => tile::<R, $cols>(x, ldx, w, sums, k, len),
                    }
                }
            }

            /// Adds `len` values' products of `R` rows of `x` (from `x`, k apart) with `C` rows
            /// of `w` (from `w`, k apart) to their partial sums, `sums[i * $cols + j]`.
            ///
            /// # Safety
            /// The rows' `len` values and the sums must be in bounds, `len` a multiple of the
            /// vector's lanes, and the CPU must have the instructions.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const R: usize, const C: usize>(
                x: *const f32,
                ldx: usize,
                w: *const f32,
                sums: *mut $vec,
                k: usize,
                len: usize,
            ) {
                // SAFETY: every access is within what the caller vouches for.
                unsafe {
                    let mut acc: [[$vec; C]; R] = [[$zero(); C]; R];
                    for (i, row) in acc.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = *sums.add(i * $cols + j);
                        }
                    }
                    let mut p = 0;
                    while p < len {
                        let mut a: [$vec; R] = [$zero(); R];
                        for (i, a) in a.iter_mut().enumerate() {
                            *a = $load(x.add(i * ldx + p));
                        }
                        for j in 0..C {
                            let b = $load(w.add(j * k + p));
                            for i in 0..R {
                                acc[i][j] = $fma(a[i], b, acc[i][j]);
                            }
                        }
                        p += $lanes;
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (j, v) in row.iter().enumerate() {
                            *sums.add(i * $cols + j) = *v;
                        }
                    }
                }
            }
        }
    };
}

kernels!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    super::sum8,
    2,
    6
);
kernels!(
    avx512,
    "avx512f",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_reduce_add_ps,
    4,
    6
);

/// The sum of a 256-bit vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sum8(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    }

    #[test]
    fn every_instruction_set_agrees_with_plain_sums() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Plain].into_iter().filter(|i| i.available()).collect();
        // Row counts around each tile's height, column counts around its width and the task
        // blocks, and widths with and without a tail past the vector length.
        for (m, n, k) in [
            (1, 1, 1),
            (1, 70, 64),
            (1, 9, 200),
            (2, 7, 19),
            (3, 25, 40),
            (5, 49, 33),
            (7, 100, 72),
            (16, 97, 128),
            (32, 5, 8),
            (13, 300, 17),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let want: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (0..k).map(|q| x[i * k + q] as f64 * w[j * k + q] as f64).sum()
                })
                .collect();
            for &isa in &isas {
                let got = product_with(isa, &x, m, &w, n, k);
                assert_eq!(got.len(), m * n);
                let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-5 * k as f64, "{isa:?} ({m}, {k}) . ({n}, {k}): off by {worst}");
            }
        }
        assert!(isas.len() >= 2, "this x86-64 CPU should have AVX2: {isas:?}");
    }

    #[test]
    fn empty_products_and_wrong_sizes() {
        assert_eq!(product(&[], 0, &[1.0, 2.0], 1, 2), Vec::<f32>::new());
        assert_eq!(product(&[1.0, 2.0], 1, &[], 0, 2), Vec::<f32>::new());
        assert_eq!(product(&[], 2, &[], 3, 0), vec![0.0; 6]);
        let refused = std::panic::catch_unwind(|| product(&[1.0], 1, &[1.0, 2.0], 1, 2));
        assert!(refused.is_err());
    }
}
