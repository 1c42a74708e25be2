//! Times `Embedder::embed` at several batch sizes on synthetic sentences (a profiling aid).
use colo_engine::bert::Embedder;
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    if std::env::var("KEEP").is_ok() {
        colo_engine::keep_freed_memory();
    }
    let embedder = Embedder::load(std::path::Path::new(&dir)).unwrap();
    let words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches in old towns";
    let sentences: Vec<String> = (0..256)
        .map(|i| words.split(' ').cycle().skip(i % 7).take(20 + i % 40).collect::<Vec<_>>().join(" "))
        .collect();
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| embedder.tokenize(s).unwrap()).collect();
    let avg: f64 = ids.iter().map(|v| v.len() as f64).sum::<f64>() / ids.len() as f64;
    println!("avg tokens {avg:.1}");
    for batch in [1usize, 8, 32, 64] {
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed().as_secs_f64() < 4.0 {
            for chunk in ids.chunks(batch) {
                let refs: Vec<&[u32]> = chunk.iter().map(|v| v.as_slice()).collect();
                embedder.embed(&refs).unwrap();
                n += chunk.len();
            }
        }
        println!("batch {batch:3}: {:.1} emb/s", n as f64 / started.elapsed().as_secs_f64());
    }
}
