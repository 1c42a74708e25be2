//! Checks of the roofline: bounds switch where they should and times scale as they must.

use super::*;
use colo_core::Catalogue;

fn facts(name: &str) -> ModelFacts {
    let path = format!("{}/../../testdata/configs/{name}/config.json", env!("CARGO_MANIFEST_DIR"));
    ModelFacts::from_config(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn decode_bound_switches_at_the_ridge() {
    let cat = Catalogue::builtin();
    let settings = Settings::default();
    let llama = facts("llama-3.1-8b");
    let cases = [
        // kind, batch, context, expected bound
        ("h100-80gb-sxm", 1, 1024, Bound::Memory),
        ("h100-80gb-sxm", 256, 128, Bound::Compute),
        ("a10", 1, 4096, Bound::Memory),
        ("a10", 256, 256, Bound::Compute),
        // Long contexts: KV reads grow with the batch as fast as the arithmetic does.
        ("a10", 256, 32768, Bound::Memory),
    ];
    for (kind, batch, context, bound) in cases {
        let step = decode(&llama, Quant::Bf16, cat.get(kind).unwrap(), 1, &settings, batch, context);
        assert_eq!(step.bound, bound, "{kind} batch {batch} context {context}: {step:?}");
        if let Some(ridge) = step.ridge_batch {
            assert_eq!(step.bound == Bound::Compute, batch as f64 > ridge, "{kind}: {step:?}");
        }
    }
}

#[test]
fn single_sequence_decode_is_near_bandwidth_over_weights() {
    let cat = Catalogue::builtin();
    let settings = Settings::default();
    let llama = facts("llama-3.1-8b");
    let h100 = cat.get("h100-80gb-sxm").unwrap();
    let step = decode(&llama, Quant::Bf16, h100, 1, &settings, 1, 512);
    // 16.06 GB at 80% of 3350 GB/s: about 167 tokens/s; the KV of 512 tokens adds 0.4%.
    let tps = step.tokens_per_s_per_sequence();
    assert!((160.0..170.0).contains(&tps), "{tps}");
    // Two cards: half the bytes each, plus all-reduces over NVLink.
    let two = decode(&llama, Quant::Bf16, h100, 2, &settings, 1, 512);
    assert!(two.tokens_per_s_per_sequence() > 1.5 * tps, "{two:?}");
    let l40s = cat.get("l40s").unwrap();
    let pcie_two = decode(&llama, Quant::Bf16, l40s, 2, &settings, 1, 512);
    assert!(
        pcie_two.comm_s > 3.0 * two.comm_s,
        "PCIe all-reduces cost more: {pcie_two:?} vs {two:?}"
    );
}

#[test]
fn prefill_scales_with_tokens_and_precision() {
    let cat = Catalogue::builtin();
    let settings = Settings::default();
    let llama = facts("llama-3.1-8b");
    let h100 = cat.get("h100-80gb-sxm").unwrap();
    let one = prefill_seconds(&llama, Quant::Bf16, h100, 1, &settings, 1, 2048);
    // 2 × 7.5 G matmul weights × 2048 tokens at half of 989 TFLOP/s: about 62 ms.
    assert!((0.055..0.075).contains(&one), "{one}");
    let eight = prefill_seconds(&llama, Quant::Bf16, h100, 1, &settings, 8, 2048);
    assert!((eight / one - 8.0).abs() < 0.5, "{eight} vs {one}");
    let fp8 = prefill_seconds(&llama, Quant::Fp8, h100, 1, &settings, 8, 2048);
    assert!(fp8 < 0.6 * eight, "fp8 tensor cores: {fp8} vs {eight}");
    assert_eq!(prefill_seconds(&llama, Quant::Bf16, h100, 1, &settings, 0, 2048), 0.0);
}
