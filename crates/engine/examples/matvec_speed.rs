//! Times a decode-sized matrix product (1 x 1024 by 1024 x 5632) in candle, whole and split in
//! two column halves run on two threads (a profiling aid for single-stream decoding).
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let (k, n) = (1024usize, 5632usize);
    let w = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
    let halves = [
        w.narrow(1, 0, n / 2).unwrap().contiguous().unwrap(),
        w.narrow(1, n / 2, n / 2).unwrap().contiguous().unwrap(),
    ];
    for m in [1usize, 4, 16] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let iters = 2000;
        let t = Instant::now();
        for _ in 0..iters {
            x.matmul(&w).unwrap();
        }
        let whole = t.elapsed().as_secs_f64() / iters as f64;
        let t = Instant::now();
        for _ in 0..iters {
            let (a, b) = rayon::join(|| x.matmul(&halves[0]).unwrap(), || x.matmul(&halves[1]).unwrap());
            Tensor::cat(&[a, b], 1).unwrap();
        }
        let split = t.elapsed().as_secs_f64() / iters as f64;
        let gbs = (k * n * 4) as f64 / 1e9;
        println!(
            "m={m}: whole {:.1} us ({:.1} GB/s), split {:.1} us ({:.1} GB/s)",
            whole * 1e6,
            gbs / whole,
            split * 1e6,
            gbs / split
        );
    }
}
