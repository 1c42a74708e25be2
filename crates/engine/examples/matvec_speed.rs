//! Times decode-sized products at bench/generate's Llama shapes: candle's `gemm` on the weight
//! transposed and split in one column block per core (`llama::Split`'s `Columns` layout), and
//! the engine's panels with each instruction set this CPU has (a profiling aid; the engine's own numbers
//! come from `colo bench ops`). `hot` is a weight small enough to stay in the caches (the
//! kernels' arithmetic alone); the others are read from memory as a model's are, except where
//! the last-level cache holds a whole one. `ROWS=1,16` and `SHAPES=gate_up,down` narrow it.
//! `SHAPES=step` times a whole decode step's products instead: every layer's four weights of
//! that Llama (12 layers) and its lm_head, one product after another, as decoding reads them
//! (nothing between them stays in the caches), reported as milliseconds and GB/s per step;
//! there `gemm rowsᵀ` is `gemm` reading the stored rows through their transpose.
use candle_core::{Device, Tensor};
use colo_engine::panels::{Isa, Panels, Tile};
use rayon::prelude::*;
use std::time::Instant;

/// Median microseconds per call over 7 runs of about 60 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let (t, mut n) = (Instant::now(), 0u32);
            while n == 0 || t.elapsed().as_secs_f64() < 0.06 {
                f();
                n += 1;
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

fn main() {
    // From a worker of the pool, as the engine's scheduler runs (`generate.rs`).
    rayon::ThreadPoolBuilder::new().build().unwrap().install(run);
}

fn run() {
    let dev = Device::Cpu;
    let list = |var: &str| {
        std::env::var(var)
            .ok()
            .map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
    };
    let rows: Vec<usize> = list("ROWS").map_or(vec![1, 4, 8, 16, 32], |v| v.iter().filter_map(|r| r.parse().ok()).collect());
    let shapes = list("SHAPES");
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Plain].into_iter().filter(|i| i.available()).collect();
    let cores = rayon::current_num_threads();
    if shapes.as_ref().is_some_and(|s| s.iter().any(|s| s == "step")) {
        return step(&rows, &isas, cores);
    }
    println!(
        "{:<8} {:>4} {:>10} {}",
        "shape",
        "rows",
        "gemm us",
        isas.iter().map(|i| format!("{:>10}", i.name())).collect::<String>()
    );
    for (name, k, n) in [
        ("hot", 1024, 48),
        ("qkv", 1024, 1536),
        ("o", 1024, 1024),
        ("gate_up", 1024, 5632),
        ("down", 2816, 1024),
        ("lm_head", 1024, 32000),
    ] {
        if shapes.as_ref().is_some_and(|s| !s.iter().any(|s| s == name)) {
            continue;
        }
        // Stored rows (n, k), as a checkpoint has them; written, so every page is its own.
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let panels = Panels::from_rows(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k);
        let per = n.div_ceil(cores);
        let parts: Vec<Tensor> = (0..n)
            .step_by(per)
            .map(|s| w.narrow(0, s, per.min(n - s)).unwrap().t().unwrap().contiguous().unwrap())
            .collect();
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gemm = time(|| {
                let outs: Vec<Tensor> = parts.par_iter().map(|p| x.matmul(p).unwrap()).collect();
                Tensor::cat(&outs, 1).unwrap();
            });
            let ours: String = isas
                .iter()
                .map(|&isa| format!("{:>10.1}", time(|| drop(panels.product_with(isa, &xv, m, Tile::best(isa))))))
                .collect();
            println!("{name:<8} {m:>4} {gemm:>10.1}{ours}");
        }
    }
}

/// A whole decode step's products, one after another: the Llama's 12 layers of (qkv, o,
/// gate_up, down) and its lm_head, each weight its own memory.
fn step(rows: &[usize], isas: &[Isa], cores: usize) {
    let dev = Device::Cpu;
    // `TILES=8x2,16x1`: tiles timed besides each kernel's own choice, where they fit.
    let extra_tiles: Vec<Tile> = std::env::var("TILES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.split_once('x'))
        .filter_map(|(r, p)| {
            Some(Tile {
                rows: r.parse().ok()?,
                panels: p.parse().ok()?,
            })
        })
        .collect();
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(15);
    let layer = [(1024, 1536), (1024, 1024), (1024, 5632), (2816, 1024)];
    let shapes: Vec<(usize, usize)> = (0..12).flat_map(|_| layer).chain([(1024, 32000)]).collect();
    let bytes: usize = shapes.iter().map(|(k, n)| k * n * 4).sum();
    // (k, the Columns layout's blocks, the stored rows' blocks seen transposed, the panels)
    type Weight = (usize, Vec<Tensor>, Vec<Tensor>, Panels);
    let weights: Vec<Weight> = shapes
        .iter()
        .map(|&(k, n)| {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let per = n.div_ceil(cores);
            let parts = (0..n)
                .step_by(per)
                .map(|s| w.narrow(0, s, per.min(n - s)).unwrap().t().unwrap().contiguous().unwrap())
                .collect();
            let seen = (0..n)
                .step_by(per)
                .map(|s| w.narrow(0, s, per.min(n - s)).unwrap().t().unwrap())
                .collect();
            let panels = Panels::from_rows(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k);
            (k, parts, seen, panels)
        })
        .collect();
    println!("a decode step's products: {} weights, {} MB", shapes.len(), bytes >> 20);
    println!("{:<16} {:>4} {:>10} {:>8}", "kernel", "rows", "ms/step", "GB/s");
    for &m in rows {
        let xs: Vec<(Vec<f32>, Tensor)> = [1024, 2816]
            .iter()
            .map(|&k| {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x)
            })
            .collect();
        let x_for = |k: usize| &xs[usize::from(k != 1024)];
        let report = |name: &str, us: f64| {
            println!("{name:<16} {m:>4} {:>10.2} {:>8.1}", us / 1e3, bytes as f64 / us / 1e3);
        };
        // gemm over each weight's blocks, the Columns layout's (`false`) or the stored rows'
        // seen transposed (`true`).
        let gemm = |transposed: bool| {
            for (k, parts, seen, _) in &weights {
                let x = &x_for(*k).1;
                let blocks = if transposed { seen } else { parts };
                let outs: Vec<Tensor> = blocks.par_iter().map(|p| x.matmul(p).unwrap()).collect();
                Tensor::cat(&outs, 1).unwrap();
            }
        };
        let panels = |isa: Isa, tile: Tile| {
            for (k, _, _, panels) in &weights {
                drop(panels.product_with(isa, &x_for(*k).0, m, tile));
            }
        };
        // Every kernel once per round, in turn, so that the machine's drifts reach them alike.
        let mut kernels: Vec<(String, Box<dyn Fn() + '_>)> = vec![
            ("gemm".into(), Box::new(|| gemm(false))),
            ("gemm rowsᵀ".into(), Box::new(|| gemm(true))),
        ];
        for &isa in isas {
            let own = Tile::best(isa);
            let tiles = std::iter::once(own).chain(extra_tiles.iter().copied().filter(|t| t.fits(isa) && *t != own));
            for tile in tiles {
                let name = format!("{} {}x{}", isa.name(), tile.rows, tile.panels);
                kernels.push((name, Box::new(move || panels(isa, tile))));
            }
        }
        let mut samples = vec![Vec::new(); kernels.len()];
        for _ in 0..rounds {
            for (kernel, samples) in kernels.iter().zip(&mut samples) {
                let start = Instant::now();
                (kernel.1)();
                samples.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        for ((name, _), mut samples) in kernels.iter().zip(samples) {
            samples.sort_by(f64::total_cmp);
            report(name, samples[samples.len() / 2]);
        }
    }
}
