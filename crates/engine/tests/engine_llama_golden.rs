//! The Llama decoder against transformers' greedy tokens for the tiny golden model, one
//! sequence at a time and all prompts packed into the same steps.

use colo_engine::llama::{Llama, StepInput};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden/tiny-llama")
}

fn cases() -> Vec<(Vec<u32>, Vec<u32>)> {
    let text = std::fs::read_to_string(golden_dir().join("greedy.jsonl")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = |k: &str| {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect::<Vec<_>>()
            };
            (ids("prompt_ids"), ids("greedy_ids"))
        })
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
        .0 as u32
}

#[test]
fn greedy_tokens_match_transformers_alone_and_batched() {
    let model = Llama::load(&golden_dir()).unwrap();
    let cases = cases();
    assert!(cases.len() >= 3);
    for (prompt, expected) in &cases {
        let mut cache = model.new_cache(prompt.len() + 24);
        let mut next = prompt.clone();
        let mut got = Vec::new();
        for _ in 0..24 {
            let logits = model
                .step(&mut [StepInput {
                    tokens: &next,
                    cache: &mut cache,
                }])
                .unwrap();
            let token = argmax(&logits.to_vec2::<f32>().unwrap()[0]);
            got.push(token);
            next = vec![token];
        }
        assert_eq!(&got, expected, "alone, prompt {prompt:?}");
    }

    // Every prompt in the same steps: the first step prefills all of them together.
    let mut caches: Vec<_> = cases.iter().map(|(p, _)| model.new_cache(p.len() + 24)).collect();
    let mut next: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    for _ in 0..24 {
        let mut inputs: Vec<StepInput> = next
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, cache)| StepInput { tokens: t, cache })
            .collect();
        let logits = model.step(&mut inputs).unwrap().to_vec2::<f32>().unwrap();
        for (i, row) in logits.iter().enumerate() {
            let token = argmax(row);
            got[i].push(token);
            next[i] = vec![token];
        }
    }
    for (i, (_, expected)) in cases.iter().enumerate() {
        assert_eq!(&got[i], expected, "batched, prompt {i}");
    }
}
