//! The planner against published measurements and the claims colo's docs make: vLLM's KV
//! budget for Llama-3.1-8B on an H100, Llama-3.1-70B's card counts, and the L40S price cut.

use colo_core::Catalogue;
use colo_model::estimate::GIB;
use colo_model::{KvDtype, ModelFacts, Quant, Settings};
use colo_policy::{plan, PlanRequest};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn facts(name: &str) -> ModelFacts {
    let path = repo().join("testdata/configs").join(name).join("config.json");
    ModelFacts::from_config(&std::fs::read(&path).unwrap()).unwrap()
}

/// vLLM's startup log for meta-llama/Llama-3.1-8B in bf16 on one H100 80GB at the default
/// gpu_memory_utilization of 0.9: weights 14.99 GiB, activation peak 4.76 GiB, KV cache 51.38 GiB.
#[test]
fn llama_8b_h100_kv_budget_matches_vllm_within_5_percent() {
    let request = PlanRequest {
        gpus: vec!["h100-80gb-sxm".into()],
        n_gpus: vec![1],
        quants: vec![Quant::Bf16],
        ..Default::default()
    };
    let plan = plan(&facts("llama-3.1-8b"), &Catalogue::builtin(), &request).unwrap();
    let row = &plan.options[0];
    let kv_gib = row.kv_budget_bytes as f64 / GIB;
    let weights_gib = row.weights_bytes_per_gpu as f64 / GIB;
    println!("colo: weights {weights_gib:.2} GiB, KV budget {kv_gib:.2} GiB (vLLM: 14.99 and 51.38 GiB)");
    assert!((weights_gib / 14.99 - 1.0).abs() < 0.01, "weights {weights_gib:.2} GiB");
    assert!((kv_gib / 51.38 - 1.0).abs() < 0.05, "KV budget {kv_gib:.2} GiB vs 51.38 GiB");
}

#[test]
fn llama_70b_needs_several_cards_in_bf16_and_one_l40s_in_int4() {
    let cat = Catalogue::builtin();
    let model = facts("llama-3.1-70b");
    assert!(
        (model.weights_bytes as f64 / 1e9 - 141.1).abs() < 0.5,
        "about 141 GB of bf16 weights"
    );
    let bf16 = plan(
        &model,
        &cat,
        &PlanRequest {
            quants: vec![Quant::Bf16],
            ..Default::default()
        },
    )
    .unwrap();
    let mut lines = Vec::new();
    for gpu in &cat.kinds {
        let single = bf16.options.iter().find(|o| o.gpu == gpu.kind && o.n_gpus == 1).unwrap();
        assert!(!single.fits, "70B bf16 fits one {}?", gpu.kind);
        assert!(single.why_not.as_deref().unwrap_or_default().contains("exceed"), "{single:?}");
        let fewest = bf16.options.iter().filter(|o| o.gpu == gpu.kind && o.fits).min_by_key(|o| o.n_gpus);
        lines.push(match fewest {
            Some(o) => format!(
                "{:<15} x{}  KV room {:>6.1} GiB = {:>7} tokens",
                o.gpu,
                o.n_gpus,
                o.kv_budget_bytes as f64 / GIB,
                o.kv_capacity_tokens
            ),
            None => format!("{:<15} no fit with up to 8 cards", gpu.kind),
        });
    }
    println!("Llama-3.1-70B in bf16, fewest cards per kind:\n{}", lines.join("\n"));
    let fewest = |kind: &str| bf16.options.iter().filter(|o| o.gpu == kind && o.fits).map(|o| o.n_gpus).min();
    assert_eq!(fewest("h100-80gb-sxm"), Some(2));
    assert_eq!(
        fewest("h200-141gb-sxm"),
        Some(2),
        "141 GB of weights do not leave room on one 141 GB card"
    );
    assert_eq!(fewest("l40s"), Some(4));
    assert_eq!(fewest("a10"), Some(8));

    // int4 weights on one L40S (46068 MiB as nvidia-smi reports it). With a bf16 KV cache the
    // default request (one 4k sequence) fits; an fp8 KV cache doubles the tokens past 8k.
    let on_l40s = |kv_dtype| {
        let settings = Settings {
            kv_dtype,
            ..Default::default()
        };
        let request = PlanRequest {
            quants: vec![Quant::Int4],
            gpus: vec!["l40s".into()],
            n_gpus: vec![1],
            settings,
            ..Default::default()
        };
        plan(&model, &cat, &request).unwrap().options[0].clone()
    };
    for (kv_dtype, at_least) in [(KvDtype::Bf16, 4096), (KvDtype::Fp8, 8192)] {
        let l40s = on_l40s(kv_dtype);
        println!(
            "Llama-3.1-70B int4 on one L40S, KV in {kv_dtype:?}: KV room {:.2} GiB = {} tokens",
            l40s.kv_budget_bytes as f64 / GIB,
            l40s.kv_capacity_tokens
        );
        assert!(l40s.fits, "{l40s:?}");
        assert!(
            l40s.kv_capacity_tokens >= at_least,
            "{kv_dtype:?}: {} tokens of KV",
            l40s.kv_capacity_tokens
        );
    }
}
