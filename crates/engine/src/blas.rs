//! The large matrix products of the CPU path through OpenBLAS, where the system has it and it is
//! the faster here.
//!
//! `bench/ops` measured the `gemm` crate (candle's CPU matmul) at 0.74 to 0.79 of PyTorch's speed
//! on MiniLM's products of 960 rows on an AVX2 CPU without AVX-512, where OpenBLAS (the same
//! shapes through numpy) was as fast as PyTorch; on products of a few rows (a decode step, one
//! short sentence) `gemm` is the faster. On an AVX-512 CPU the other way round: Debian's OpenBLAS
//! 0.3.21 runs its 256-bit Haswell kernels on an AMD Zen 5, and `gemm`'s 512-bit ones did the same
//! 960-row products in half its time. So when the library loads, one product of the encoder's
//! size is timed both ways ([`probe`]), and products of at least [`MIN_ROWS`] rows (the
//! encoder's, and the decoder's steps that read prompts) go to OpenBLAS's `cblas_sgemm` only
//! where it was the faster; everything else, or everything on a system without it, stays on
//! candle's path. The library is found at run time: the binary neither links it nor needs it.
//! `COLO_BLAS=off` keeps every product on `gemm`; `COLO_BLAS=<path>` loads that library instead.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Products with fewer rows than this stay on `gemm` (bench/ops: 30 rows are faster there).
pub const MIN_ROWS: usize = 64;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

type Sgemm = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);

/// A loaded BLAS library.
pub struct Blas {
    sgemm: Sgemm,
    /// What the library says it is (`openblas_get_config`), or its path.
    pub name: String,
    /// `gemm`'s time over the library's for the probe product (above 1: the library is faster).
    pub speedup: f32,
    /// Whether products of [`MIN_ROWS`] rows or more go to it (it was the faster at the probe).
    pub chosen: bool,
    // Kept loaded for as long as the process runs (the function pointer points into it).
    _library: libloading::Library,
}

/// The BLAS this process uses for large products, loaded on first use; `None` without one.
pub fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        let chosen = std::env::var("COLO_BLAS").ok();
        let paths: Vec<String> = match chosen.as_deref() {
            Some("off") => return None,
            Some(path) if !path.is_empty() => vec![path.to_string()],
            _ => vec!["libopenblas.so.0".into(), "libopenblas.so".into()],
        };
        let mut loaded = paths.iter().find_map(|path| load(path).ok());
        if loaded.is_none() && chosen.is_some() {
            tracing::warn!(path = ?chosen, "COLO_BLAS names no loadable BLAS; products stay on gemm");
        }
        if let Some(blas) = &mut loaded {
            blas.speedup = probe(blas);
            blas.chosen = blas.speedup > 1.0;
        }
        loaded
    })
    .as_ref()
}

fn load(path: &str) -> Result<Blas, libloading::Error> {
    // SAFETY: loading a shared library runs its initialisers; OpenBLAS's only set up its thread
    // pool. The symbols are looked up with the C signatures OpenBLAS documents.
    unsafe {
        let library = libloading::Library::new(path)?;
        let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0")?;
        // One thread per call: the engine's own pool splits each product by rows (a second
        // pool of the library's would spin on the same cores as the engine's between products).
        if let Ok(set_threads) = library.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
            set_threads(1);
        }
        let name = match library.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_config\0") {
            Ok(config) => std::ffi::CStr::from_ptr(config()).to_string_lossy().into_owned(),
            Err(_) => path.to_string(),
        };
        Ok(Blas {
            sgemm,
            name,
            speedup: 0.0,
            chosen: false,
            _library: library,
        })
    }
}

/// The probe's product: 512 rows of 384 by 384 x 1152 (a batch of sentences through MiniLM's
/// QKV weight; the decoder's prompt steps are of the same order).
pub const PROBE: (usize, usize, usize) = (512, 384, 1152);

/// `gemm`'s best time over the library's for the [`PROBE`] product, each path run in turn four
/// times (the first of each a warm-up): about 10 ms, once per process.
fn probe(blas: &Blas) -> f32 {
    let (m, k, n) = PROBE;
    let ramp = |len: usize| (0..len).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect::<Vec<f32>>();
    let (Ok(x), Ok(w)) = (
        Tensor::from_vec(ramp(m * k), (m, k), &Device::Cpu),
        Tensor::from_vec(ramp(k * n), (k, n), &Device::Cpu),
    ) else {
        return 0.0;
    };
    let timed = |f: &dyn Fn() -> candle_core::Result<Tensor>| {
        let start = std::time::Instant::now();
        f().map(|_| start.elapsed().as_secs_f32()).unwrap_or(f32::INFINITY)
    };
    let (mut library, mut gemm) = (f32::INFINITY, f32::INFINITY);
    for round in 0..4 {
        let (l, g) = (timed(&|| blas.product(&x, &w, None)), timed(&|| on_candle(&x, &w, None)));
        if round > 0 {
            (library, gemm) = (library.min(l), gemm.min(g));
        }
    }
    if library > 0.0 && library.is_finite() {
        gemm / library
    } else {
        0.0
    }
}

/// `x (m, k) . w (k, n)`: through the BLAS for contiguous f32 CPU matrices of at least
/// [`MIN_ROWS`] rows when there is one and it was chosen (see [`probe`]), else candle's `matmul`.
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    chosen(x, w, None)
}

/// `x . w + bias` (the bias added to every row): through the BLAS as for [`matmul`], the bias
/// laid into the output first so that the product adds onto it (no pass of its own).
pub fn matmul_bias(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    chosen(x, w, Some(bias))
}

/// The product on the path its size chooses (see the module's notes).
fn chosen(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match blas() {
        Some(blas) if blas.chosen && x.rank() == 2 && w.rank() == 2 && x.dim(0)? >= MIN_ROWS => blas.product(x, w, bias),
        _ => on_candle(x, w, bias),
    }
}

/// `x . w`, plus `bias` on every row when given, by candle.
fn on_candle(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(bias) => x.matmul(w)?.broadcast_add(bias),
        None => x.matmul(w),
    }
}

// === impl Blas ===

impl Blas {
    /// `x (m, k) . w (k, n)` through `cblas_sgemm`; candle's `matmul` for anything that is not
    /// a pair of contiguous f32 CPU matrices of matching sizes within `i32`.
    pub fn matmul(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        self.product(x, w, None)
    }

    /// `x . w`, plus `bias` on every row when given.
    fn product(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let candle = || on_candle(x, w, bias);
        let ((m, k), (k2, n)) = (x.dims2()?, w.dims2()?);
        let fits = |v: usize| i32::try_from(v).is_ok();
        if k != k2 || x.dtype() != DType::F32 || w.dtype() != DType::F32 || ![m, n, k].into_iter().all(fits) {
            return candle();
        }
        let start = match bias {
            Some(bias) if bias.dims() != [n] || bias.dtype() != DType::F32 => return candle(),
            Some(bias) => Some(bias.to_vec1::<f32>()?),
            None => None,
        };
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        // `w` as stored (k, n), or the transpose of a stored (n, k) (a checkpoint's rows,
        // `llama::Split`), which the library reads as it lies.
        let (trans_b, ldb, w_span) = match wl.contiguous_offsets() {
            Some(span) => (NO_TRANS, n, Some(span)),
            None if wl.is_fortran_contiguous() => (TRANS, k, Some((wl.start_offset(), wl.start_offset() + k * n))),
            None => (NO_TRANS, n, None),
        };
        let (Storage::Cpu(xc), Storage::Cpu(wc), Some((x0, x1)), Some((w0, w1))) = (&*xs, &*ws, xl.contiguous_offsets(), w_span) else {
            drop((xs, ws));
            return candle();
        };
        let (a, b) = (&xc.as_slice::<f32>()?[x0..x1], &wc.as_slice::<f32>()?[w0..w1]);
        debug_assert!(a.len() == m * k && b.len() == k * n);
        let (mut out, beta) = match &start {
            Some(row) => (row.repeat(m), 1.0),
            None => (vec![0f32; m * n], 0.0),
        };
        if m > 0 && n > 0 {
            // One band of rows per core of the engine's pool.
            let band = m.div_ceil(rayon::current_num_threads().max(1));
            out.par_chunks_mut(band * n)
                .zip(a.par_chunks(band * k.max(1)))
                .for_each(|(out, a)| {
                    let rows = out.len() / n;
                    // SAFETY: a holds rows x k values, b k x n (or its transpose, n x k, when
                    // trans_b says so) and out rows x n, all row-major and contiguous as the
                    // leading dimensions passed say; the sizes fit in i32 (checked above).
                    unsafe {
                        (self.sgemm)(
                            ROW_MAJOR,
                            NO_TRANS,
                            trans_b,
                            rows as i32,
                            n as i32,
                            k as i32,
                            1.0,
                            a.as_ptr(),
                            k.max(1) as i32,
                            b.as_ptr(),
                            ldb.max(1) as i32,
                            beta,
                            out.as_mut_ptr(),
                            n as i32,
                        )
                    };
                });
        }
        drop((xs, ws));
        Tensor::from_vec(out, (m, n), &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blas_products_match_candles() {
        // CI installs OpenBLAS (scripts/test); a machine without it fails here rather than
        // testing nothing.
        let blas = blas().expect("libopenblas.so.0 is not installed (Debian: libopenblas0-pthread)");
        // The probe timed both paths, and chose the library exactly when it was the faster.
        assert!(blas.speedup > 0.0 && blas.speedup.is_finite(), "probe: {}", blas.speedup);
        assert_eq!(blas.chosen, blas.speedup > 1.0);
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32 - 0.5)
                .collect()
        };
        for (m, k, n) in [(96, 384, 1152), (64, 7, 3), (200, 33, 65)] {
            let x = Tensor::from_vec(values(m * k, 1), (m, k), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(values(k * n, 2), (k, n), &Device::Cpu).unwrap();
            let want = x.matmul(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = blas.matmul(&x, &w).unwrap();
            assert_eq!(got.dims(), &[m, n]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-4, "{m}x{k}x{n}: {worst}");
        }
        // The bias rides on the product: each row gets it once.
        let (x, w) = (
            Tensor::from_vec(values(70 * 16, 6), (70, 16), &Device::Cpu).unwrap(),
            Tensor::from_vec(values(16 * 9, 7), (16, 9), &Device::Cpu).unwrap(),
        );
        let bias = Tensor::from_vec(values(9, 8), 9, &Device::Cpu).unwrap();
        let want = x
            .matmul(&w)
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = matmul_bias(&x, &w, &bias).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        // A weight given as the transpose of stored rows (`llama::Split`'s `Rows`) is read as
        // it lies.
        let (m, k, n) = (70, 33, 21);
        let x = Tensor::from_vec(values(m * k, 9), (m, k), &Device::Cpu).unwrap();
        let stored = Tensor::from_vec(values(n * k, 10), (n, k), &Device::Cpu).unwrap();
        let want = x.matmul(&stored.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
        let got = blas.matmul(&x, &stored.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
        assert!(got.iter().flatten().zip(want.iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-4));
        // A view that is not contiguous in either way (a transposed x) and a product of few
        // rows take candle's path, with the same answer.
        let x = Tensor::from_vec(values(100 * 8, 3), (8, 100), &Device::Cpu).unwrap().t().unwrap();
        let w = Tensor::from_vec(values(8 * 5, 4), (8, 5), &Device::Cpu).unwrap();
        assert_eq!(
            blas.matmul(&x, &w).unwrap().to_vec2::<f32>().unwrap(),
            x.matmul(&w).unwrap().to_vec2::<f32>().unwrap()
        );
        let small = Tensor::from_vec(values(2 * 8, 5), (2, 8), &Device::Cpu).unwrap();
        assert_eq!(
            matmul(&small, &w).unwrap().to_vec2::<f32>().unwrap(),
            small.matmul(&w).unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
