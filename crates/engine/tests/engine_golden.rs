//! The embedder against sentence-transformers' reference vectors, alone and batched.

use colo_engine::bert::Embedder;
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The demo model's directory: `COLO_MINILM_DIR`, or fetched by `scripts/fetch-minilm`.
fn minilm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("COLO_MINILM_DIR") {
        return dir.into();
    }
    let out = std::process::Command::new(repo_root().join("scripts/fetch-minilm"))
        .output()
        .expect("running scripts/fetch-minilm");
    assert!(
        out.status.success(),
        "scripts/fetch-minilm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().last().expect("a directory").into()
}

struct Golden {
    input: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn golden() -> Vec<Golden> {
    let text = std::fs::read_to_string(repo_root().join("testdata/golden/minilm.jsonl")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Golden {
                input: v["input"].as_str().unwrap().to_string(),
                n_tokens: v["n_tokens"].as_u64().unwrap() as usize,
                embedding: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn matches_sentence_transformers_alone_and_batched() {
    let embedder = Embedder::load(&minilm_dir()).unwrap();
    assert_eq!(embedder.dim, 384);
    assert_eq!(embedder.max_tokens, 256);
    let cases = golden();
    assert!(cases.len() >= 5);
    let ids: Vec<Vec<u32>> = cases.iter().map(|c| embedder.tokenize(&c.input).unwrap()).collect();
    for (case, ids) in cases.iter().zip(&ids) {
        assert_eq!(ids.len(), case.n_tokens, "token count of {:?}", case.input);
    }
    let mut worst = 0.0f32;
    for (case, ids) in cases.iter().zip(&ids) {
        let got = embedder.embed(&[ids.as_slice()]).unwrap().remove(0);
        let diff = max_abs_diff(&got, &case.embedding);
        worst = worst.max(diff);
        assert!(diff < 1e-4, "alone: {:?} differs by {diff}", case.input);
    }
    // All at once: padding to the longest input must not change any vector.
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    for (case, got) in cases.iter().zip(embedder.embed(&batch).unwrap()) {
        let diff = max_abs_diff(&got, &case.embedding);
        worst = worst.max(diff);
        assert!(diff < 1e-4, "batched: {:?} differs by {diff}", case.input);
    }
    println!("minilm golden: {} inputs, max abs difference {worst:.2e} (limit 1e-4)", cases.len());
}
