//! A weight laid out in panels of 16 outputs, for products of any number of rows on the CPU:
//! `x (m, k) . w (n, k)ᵀ`.
//!
//! A checkpoint stores a linear layer's weight as rows `[outputs, inputs]`. Here groups of 16
//! rows are interleaved value by value: panel `j` holds, for each input `p`, the 16 values
//! `w[16j..16j + 16][p]` side by side, one 64-byte cache line (`[n / 16][k][16]`). Every product
//! then has the same shape: load one line of a panel, broadcast one value of a row of `x`, and
//! add their product into a vector of 16 outputs. That serves both ends of a decode step:
//!
//! - one row (one stream decoding) reads each task's panels as one contiguous stream through
//!   memory, with no horizontal sums at the end (the 16 outputs already lie in one vector);
//! - many rows (a busy server's step, a prompt) keep a tile of rows x 16-output vectors of sums
//!   in registers, as `gemm`'s packed kernels do, with the weight already packed: one panel line
//!   serves every row of the tile, and a panel pair (128 KB at k = 1024) stays in the L2 cache
//!   while every group of `x`'s rows passes over it, so it is read from memory once per product.
//!
//! The rows of `x` are first interleaved the same way in groups of the tile's height (a tile's
//! values for one `p` side by side). The tile is up to 12 rows by 2 panels with AVX-512 (24 sums
//! in 32 registers), 6 rows by 1 panel (two 8-lane halves) with AVX2 and FMA, and 4 by 1 over
//! arrays of 16 lanes elsewhere, which the compiler vectorises as it can. `k` is walked in
//! stretches of [`K_BLOCK`] when it is longer, so that a panel pair's stretch stays in L2.
//! Panels are split over the engine's pool, about four tasks per core, each a contiguous run.

use rayon::prelude::*;
use std::borrow::Cow;

/// Outputs per panel: one 64-byte line of f32.
pub const WIDTH: usize = 16;

/// Values of `k` a tile walks before the next group of rows takes the same stretch: a panel
/// pair's stretch is then 2 x 2048 x 64 B = 256 KB, which the L2 cache holds while every group
/// passes over it.
const K_BLOCK: usize = 2048;

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

/// One cache line of a panel: a value of `k` for its 16 outputs.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; WIDTH]);

/// A weight `[n, k]` in panels of [`WIDTH`] outputs (the last padded with zeros, and their
/// count made even so that every task takes whole pairs).
pub struct Panels {
    lines: Vec<Line>,
    n: usize,
    k: usize,
}

impl Panels {
    /// The panels of the stored rows `w` (`n` rows of `k`), built over the engine's pool.
    ///
    /// # Panics
    /// If `w` is not `n * k` values.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "panels: {} values for ({n}, {k})", w.len());
        let count = n.div_ceil(2 * WIDTH) * 2;
        let mut lines = vec![Line::default(); count * k];
        if k > 0 {
            lines.par_chunks_mut(k).enumerate().for_each(|(panel, lines)| {
                let j0 = panel * WIDTH;
                for c in 0..WIDTH.min(n.saturating_sub(j0)) {
                    for (line, v) in lines.iter_mut().zip(&w[(j0 + c) * k..(j0 + c + 1) * k]) {
                        line.0[c] = *v;
                    }
                }
            });
        }
        Self { lines, n, k }
    }

    /// Outputs (the stored rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs (the length of a row).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// `x (m, k) . wᵀ` as `(m, n)` row-major, with the best instructions this CPU has.
    pub fn product(&self, x: &[f32], m: usize) -> Vec<f32> {
        let isa = isa();
        self.product_with(isa, x, m, Tile::best(isa))
    }

    /// [`Panels::product`] with the instructions and the tile named (the tests run each the
    /// CPU has; `examples/matvec_speed.rs` times them).
    ///
    /// # Panics
    /// If `x` is not `m * k` values, `isa` is not available on this CPU, or the tile is not
    /// one it is built for ([`Tile::fits`]).
    pub fn product_with(&self, isa: Isa, x: &[f32], m: usize, tile: Tile) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "panels: {} values for x ({m}, {k})", x.len());
        assert!(isa.available(), "panels: this CPU has no {}", isa.name());
        assert!(tile.fits(isa), "panels: no {tile:?} tile for {}", isa.name());
        if m == 0 || n == 0 || k == 0 {
            return vec![0.0; m * n];
        }
        // The fewest groups of at most `tile.rows` rows, as even as can be; the last is padded.
        let groups = m.div_ceil(tile.rows);
        let r = m.div_ceil(groups);
        let np = tile.panels;
        let xp = interleave(x, m, k, r, groups);
        let pairs = self.lines.len() / k / 2;
        let tasks = 4 * rayon::current_num_threads().max(1);
        let per = pairs.div_ceil(tasks).max(1);
        let cols = 2 * WIDTH * per;
        let rows = groups * r;
        // Each task's outputs, `rows` of `cols` (its panels' outputs).
        let parts: Vec<Vec<f32>> = self
            .lines
            .par_chunks(2 * per * k)
            .map(|lines| {
                let mut out = vec![0f32; rows * cols];
                match isa {
                    // SAFETY: the CPU has the instructions (asserted above); `lines` holds
                    // whole panels of k lines, `xp` groups of r rows of k, `out` rows x cols.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { avx512::task(&xp, r, np, groups, k, lines, &mut out, cols) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { avx2::task(&xp, r, np, groups, k, lines, &mut out, cols) },
                    _ => plain::task(&xp, r, np, groups, k, lines, &mut out, cols),
                }
                out
            })
            .collect();
        let mut out = vec![0f32; m * n];
        for (t, part) in parts.iter().enumerate() {
            let j0 = t * cols;
            let width = cols.min(n.saturating_sub(j0));
            for i in 0..m {
                out[i * n + j0..i * n + j0 + width].copy_from_slice(&part[i * cols..i * cols + width]);
            }
        }
        out
    }
}

/// How many rows of `x` and panels of the weight a kernel's tile of sums holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// At most this many rows per group (groups are made as even as they can be).
    pub rows: usize,
    /// Panels at a time: 1 or 2.
    pub panels: usize,
}

impl Tile {
    /// The tile `isa`'s kernel takes (`examples/matvec_speed.rs` with `TILES` times others:
    /// with AVX-512, 16 rows as one group of 16 by 1 panel ran 0.88x of two groups of 8 by 2).
    pub fn best(isa: Isa) -> Self {
        match isa {
            Isa::Avx512 => Tile { rows: 12, panels: 2 },
            Isa::Avx2 => Tile { rows: 6, panels: 1 },
            Isa::Plain => Tile { rows: 4, panels: 1 },
        }
    }

    /// Whether `isa`'s kernel is built for it: with AVX-512 up to 12 rows by 2 panels or 24 by
    /// 1 (the sums fill at most 24 of 32 registers), with AVX2 up to 6 by 1 (12 of 16), else 4
    /// by 1.
    pub fn fits(self, isa: Isa) -> bool {
        let most = match (isa, self.panels) {
            (Isa::Avx512, 2) => 12,
            (Isa::Avx512, 1) => 24,
            (Isa::Avx2, 1) => 6,
            (Isa::Plain, 1) => 4,
            _ => 0,
        };
        (1..=most).contains(&self.rows)
    }
}

/// `x`'s `m` rows in `groups` groups of `r`, each group's values interleaved by `p`
/// (`[groups][k][r]`), rows past `m` zero.
fn interleave(x: &[f32], m: usize, k: usize, r: usize, groups: usize) -> Cow<'_, [f32]> {
    if r == 1 {
        return Cow::Borrowed(x);
    }
    let mut xp = vec![0f32; groups * k * r];
    for i in 0..m {
        let (g, row) = (i / r, i % r);
        let group = &mut xp[g * k * r..(g + 1) * k * r];
        for (p, v) in x[i * k..(i + 1) * k].iter().enumerate() {
            group[p * r + row] = *v;
        }
    }
    Cow::Owned(xp)
}

/// Generates one instruction set's kernel: `task` walks a task's panels `np` at a time (one or
/// a pair), for each stretch of `k` every group of rows through `tile::<R, V>`, which keeps `R`
/// rows by `V` vectors (the `np` panels' lines) of sums in registers. `$shapes` lists the
/// `(R, V)` it is built for.
macro_rules! kernels {
    ($module:ident, $features:literal, $vec:ty, $lanes:literal, $zero:ident, $load:ident, $store:ident,
     $set1:ident, $fma:ident, [$(($r:literal, $v:literal)),*]) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::{Line, K_BLOCK, WIDTH};
            use std::arch::x86_64::*;

            /// Vectors per panel line.
            const HALVES: usize = WIDTH / $lanes;

            /// `out[i * ldo + c] = x[i] . w[c]` for the task's panels (`lines`, k each), `np`
            /// at a time, and every row `i` of the `groups` groups of `r` interleaved rows in
            /// `xp`.
            ///
            /// # Safety
            /// The CPU must have the module's instructions.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn task(xp: &[f32], r: usize, np: usize, groups: usize, k: usize, lines: &[Line], out: &mut [f32], ldo: usize) {
                let panels = lines.len() / k;
                assert!(xp.len() == groups * r * k && panels % np == 0 && out.len() >= groups * r * ldo && panels * WIDTH <= ldo);
                for j in (0..panels).step_by(np) {
                    for k0 in (0..k).step_by(K_BLOCK) {
                        let len = (k - k0).min(K_BLOCK);
                        for g in 0..groups {
                            // SAFETY: panels j..j + np and values k0..k0 + len of each, group
                            // g's r rows from k0, and out's r rows from row g * r, columns
                            // j * WIDTH.. + np * WIDTH are all in bounds (asserted above).
                            unsafe {
                                let (x, w, o) = (
                                    xp.as_ptr().add((g * k + k0) * r),
                                    lines.as_ptr().add(j * k + k0).cast::<f32>(),
                                    out.as_mut_ptr().add(g * r * ldo + j * WIDTH),
                                );
                                match (r, np * HALVES) {
                                    $(($r, $v) => tile::<$r, $v>(x, w, k, len, o, ldo, k0 > 0),)*
                                    _ => unreachable!("a tile shape the module is not built for"),
                                }
                            }
                        }
                    }
                }
            }

            /// Adds `len` values' products of `R` interleaved rows (`x`, `[len][R]`) with the
            /// `V / HALVES` panels from `w` (`k` lines apart) into `R` rows of outputs at `out`
            /// (`ldo` apart), which start from zero unless `more`.
            ///
            /// # Safety
            /// Everything named must be in bounds and the CPU must have the instructions.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::modulo_one)] // HALVES is 1 for AVX-512: a line is one vector
            unsafe fn tile<const R: usize, const V: usize>(x: *const f32, w: *const f32, k: usize, len: usize, out: *mut f32, ldo: usize, more: bool) {
                // SAFETY: every access is within what the caller vouches for.
                unsafe {
                    let line = |c: usize, p: usize| w.add((c / HALVES) * k * WIDTH + p * WIDTH + (c % HALVES) * $lanes);
                    let mut acc: [[$vec; V]; R] = [[$zero(); V]; R];
                    // With one row, a second set of sums for odd `p`: more chains in flight.
                    let mut odd: [$vec; V] = [$zero(); V];
                    let mut p = 0;
                    if R == 1 {
                        while p + 1 < len {
                            let (b0, b1) = ($set1(*x.add(p)), $set1(*x.add(p + 1)));
                            for c in 0..V {
                                acc[0][c] = $fma(b0, $load(line(c, p)), acc[0][c]);
                                odd[c] = $fma(b1, $load(line(c, p + 1)), odd[c]);
                            }
                            p += 2;
                        }
                    }
                    while p < len {
                        let mut v: [$vec; V] = [$zero(); V];
                        for (c, v) in v.iter_mut().enumerate() {
                            *v = $load(line(c, p));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let b = $set1(*x.add(p * R + i));
                            for (s, v) in row.iter_mut().zip(&v) {
                                *s = $fma(b, *v, *s);
                            }
                        }
                        p += 1;
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (c, s) in row.iter().enumerate() {
                            let o = out.add(i * ldo + c * $lanes);
                            let mut s = *s;
                            if R == 1 {
                                s = $fma($set1(1.0), odd[c], s);
                            }
                            if more {
                                s = $fma($set1(1.0), $load(o), s);
                            }
                            $store(o, s);
                        }
                    }
                }
            }
        }
    };
}

kernels!(
    avx512,
    "avx512f",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    [
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 2),
        (5, 2),
        (6, 2),
        (7, 2),
        (8, 2),
        (9, 2),
        (10, 2),
        (11, 2),
        (12, 2),
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (9, 1),
        (10, 1),
        (11, 1),
        (12, 1),
        (13, 1),
        (14, 1),
        (15, 1),
        (16, 1),
        (17, 1),
        (18, 1),
        (19, 1),
        (20, 1),
        (21, 1),
        (22, 1),
        (23, 1),
        (24, 1)
    ]
);
kernels!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    [(1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2)]
);

/// The kernel without SIMD intrinsics: the same walk over arrays of 16 lanes, which the
/// compiler vectorises for whatever the build targets.
mod plain {
    use super::{Line, K_BLOCK, WIDTH};

    #[allow(clippy::too_many_arguments)]
    pub(super) fn task(xp: &[f32], r: usize, _np: usize, groups: usize, k: usize, lines: &[Line], out: &mut [f32], ldo: usize) {
        for (j, panel) in lines.chunks_exact(k).enumerate() {
            for k0 in (0..k).step_by(K_BLOCK) {
                let len = (k - k0).min(K_BLOCK);
                for g in 0..groups {
                    let x = &xp[(g * k + k0) * r..(g * k + k0 + len) * r];
                    let mut acc = [[0f32; WIDTH]; 4];
                    for (line, xs) in panel[k0..k0 + len].iter().zip(x.chunks_exact(r)) {
                        for (acc, xv) in acc.iter_mut().zip(xs) {
                            for (s, w) in acc.iter_mut().zip(&line.0) {
                                *s += xv * w;
                            }
                        }
                    }
                    for (i, acc) in acc.iter().take(r).enumerate() {
                        let o = &mut out[(g * r + i) * ldo + j * WIDTH..][..WIDTH];
                        for (o, s) in o.iter_mut().zip(acc) {
                            *o = if k0 > 0 { *o + s } else { *s };
                        }
                    }
                }
            }
        }
    }
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
        // Row counts around each tile's height and past it, outputs around a panel and a pair
        // and the task split, and a `k` past the stretch (the sums carried between stretches).
        for (m, n, k) in [
            (1, 1, 1),
            (1, 70, 64),
            (1, 9, 201),
            (2, 7, 19),
            (3, 25, 40),
            (5, 49, 33),
            (7, 100, 72),
            (13, 97, 128),
            (16, 33, 64),
            (25, 5, 8),
            (33, 300, 17),
            (4, 40, 2 * K_BLOCK + 3),
            (1, 17, K_BLOCK + 1),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let want: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (0..k).map(|q| x[i * k + q] as f64 * w[j * k + q] as f64).sum()
                })
                .collect();
            let panels = Panels::from_rows(&w, n, k);
            for &isa in &isas {
                // The tile each instruction set takes, and every other shape it is built for.
                let tiles = (1..=24).flat_map(|rows| [1, 2].map(|panels| Tile { rows, panels }));
                for tile in tiles.filter(|t| t.fits(isa)) {
                    let got = panels.product_with(isa, &x, m, tile);
                    assert_eq!(got.len(), m * n);
                    let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
                    assert!(worst < 1e-5 * k as f64, "{isa:?} {tile:?} ({m}, {k}) . ({n}, {k})ᵀ: off by {worst}");
                }
                assert!(Tile::best(isa).fits(isa));
            }
        }
        assert!(isas.len() >= 2, "this x86-64 CPU should have AVX2: {isas:?}");
    }

    #[test]
    fn empty_products_and_wrong_sizes() {
        assert_eq!(Panels::from_rows(&[1.0, 2.0], 1, 2).product(&[], 0), Vec::<f32>::new());
        assert_eq!(Panels::from_rows(&[], 0, 2).product(&[1.0, 2.0], 1), Vec::<f32>::new());
        assert_eq!(Panels::from_rows(&[], 3, 0).product(&[], 2), vec![0.0; 6]);
        let panels = Panels::from_rows(&[1.0, 2.0], 1, 2);
        assert!(std::panic::catch_unwind(|| panels.product(&[1.0], 1)).is_err());
        let too_tall = Tile { rows: 13, panels: 2 };
        assert!(!too_tall.fits(Isa::Plain) && !too_tall.fits(Isa::Avx2) && !too_tall.fits(Isa::Avx512));
        assert!(std::panic::catch_unwind(|| panels.product_with(Isa::Plain, &[1.0, 2.0], 1, too_tall)).is_err());
        assert!(std::panic::catch_unwind(|| Panels::from_rows(&[1.0], 1, 2)).is_err());
        // 1 row of 2 outputs takes a pair of panels: 2 x 2 lines of 64 bytes.
        assert_eq!(panels.bytes(), 2 * 2 * 64);
    }
}
