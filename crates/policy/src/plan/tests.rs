//! Table-driven checks of the plan: which options fit, why others do not, what is chosen.

use super::*;

fn facts(name: &str) -> ModelFacts {
    let path = format!("{}/../../testdata/configs/{name}/config.json", env!("CARGO_MANIFEST_DIR"));
    ModelFacts::from_config(&std::fs::read(path).unwrap()).unwrap()
}

fn find<'a>(plan: &'a Plan, gpu: &str, n: u32, quant: Quant) -> &'a PlanOption {
    plan.options
        .iter()
        .find(|o| o.gpu == gpu && o.n_gpus == n && o.quant == quant)
        .unwrap()
}

/// (case, request, GPU kind, cards, weight format) -> why that option does not fit (`None`
/// when it does).
type WhyNotCase = (&'static str, PlanRequest, &'static str, u32, Quant, Option<&'static str>);

#[test]
fn why_not_by_table() {
    let cat = Catalogue::builtin();
    let cases: Vec<WhyNotCase> = vec![
        ("8b on an a10", PlanRequest::default(), "a10", 1, Quant::Bf16, None),
        (
            "70b on one h100",
            PlanRequest::default(),
            "h100-80gb-sxm",
            1,
            Quant::Bf16,
            Some("exceed the 71.7 GiB budget (90% of 79.6 GiB)"),
        ),
        (
            "qwen heads over 4",
            PlanRequest::default(),
            "h100-80gb-sxm",
            4,
            Quant::Bf16,
            Some("14 attention heads do not split over 4 cards"),
        ),
        (
            "context past positions",
            PlanRequest {
                context: 40000,
                ..Default::default()
            },
            "h100-80gb-sxm",
            1,
            Quant::Bf16,
            Some("past the model's 32768 positions"),
        ),
        (
            "too many sequences",
            PlanRequest {
                concurrency: 200,
                ..Default::default()
            },
            "a10",
            1,
            Quant::Bf16,
            Some("sequences of 4096 tokens; 200 wanted"),
        ),
        (
            "slo",
            PlanRequest {
                prompt_tokens: 3000,
                ttft_slo_ms: Some(20.0),
                ..Default::default()
            },
            "a10",
            1,
            Quant::Bf16,
            Some("over the 20 ms time-to-first-token target"),
        ),
    ];
    let models = [
        "llama-3.1-8b",
        "llama-3.1-70b",
        "qwen2.5-0.5b",
        "mistral-7b-v0.1",
        "llama-3.1-8b",
        "llama-3.1-8b",
    ];
    for ((what, request, gpu, n, quant, expected), model) in cases.into_iter().zip(models) {
        let plan = plan(&facts(model), &cat, &request).unwrap();
        let row = find(&plan, gpu, n, quant);
        match expected {
            None => assert!(row.fits, "{what}: {row:?}"),
            Some(needle) => {
                let why = row.why_not.as_deref().unwrap_or_default();
                assert!(!row.fits && why.contains(needle), "{what}: {why:?} lacks {needle:?}");
                assert_eq!(row.usd_per_million_tokens, None, "{what}: no cost for what does not fit");
            }
        }
    }
}

#[test]
fn recommendation_prefers_least_lossy_then_cheapest() {
    let cat = Catalogue::builtin();
    let request = PlanRequest {
        prices: PriceBook::Fly2024,
        ..Default::default()
    };
    let plan = plan(&facts("llama-3.1-8b"), &cat, &request).unwrap();
    let best = plan.recommended.as_ref().unwrap();
    assert_eq!(best.quant, Quant::Bf16, "{}", plan.why);
    let cheapest_bf16 = plan
        .options
        .iter()
        .filter(|o| o.fits && o.quant == Quant::Bf16)
        .filter_map(|o| o.usd_per_million_tokens)
        .fold(f64::MAX, f64::min);
    assert_eq!(best.usd_per_million_tokens, Some(cheapest_bf16));
    assert!(
        plan.why.starts_with(&format!("{} x{} in bf16", best.gpu, best.n_gpus)),
        "{}",
        plan.why
    );

    // Restricted to int4, the recommendation follows.
    let int4 = PlanRequest {
        quants: vec![Quant::Int4],
        ..request.clone()
    };
    let rec = recommend(&facts("llama-3.1-8b"), &cat, &int4, &[]).unwrap();
    assert_eq!(rec.quant, Quant::Int4);
    // Deploy on a host that has only A10s: the cheapest A10 shape per token, which is not
    // one card (one A10 leaves KV room for only a couple of 4k sequences).
    let rec = recommend(&facts("llama-3.1-8b"), &cat, &request, &["a10".to_string()]).unwrap();
    assert_eq!(rec.gpu, "a10");
    let a10_only = super::plan(
        &facts("llama-3.1-8b"),
        &cat,
        &PlanRequest {
            gpus: vec!["a10".into()],
            ..request.clone()
        },
    )
    .unwrap();
    assert_eq!(a10_only.recommended.as_ref().map(|o| o.n_gpus), Some(rec.n_gpus));
    // 405B in bf16 on A10s: nothing fits, and the error says why for the kind.
    let err = recommend(
        &facts("llama-3.1-405b"),
        &cat,
        &PlanRequest {
            quants: vec![Quant::Bf16],
            ..request
        },
        &["a10".into()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("a10 x8 bf16: weights"), "{err}");
}

#[test]
fn bad_requests_name_every_field() {
    let cat = Catalogue::builtin();
    let request = PlanRequest {
        context: 0,
        concurrency: 0,
        quants: vec![],
        gpus: vec!["tpu-v9".into()],
        n_gpus: vec![16],
        ttft_slo_ms: Some(f64::NAN),
        target_utilisation: 1.5,
        settings: Settings {
            mem_util: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = plan(&facts("llama-3.1-8b"), &cat, &request).unwrap_err().to_string();
    for field in [
        "context:",
        "concurrency:",
        "quants:",
        "gpus: unknown GPU kind \"tpu-v9\"",
        "n_gpus: 16",
        "ttft_slo_ms:",
        "target_utilisation:",
        "mem_util:",
        "exceed context",
    ] {
        assert!(err.contains(field), "{err} lacks {field}");
    }
}

#[test]
fn no_option_carries_a_nan() {
    let cat = Catalogue::builtin();
    for model in [
        "llama-3.1-8b",
        "qwen2.5-0.5b",
        "all-minilm-l6-v2",
        "whisper-large-v3",
        "llama-3.1-405b",
    ] {
        let plan = plan(
            &facts(model),
            &cat,
            &PlanRequest {
                context: 448,
                prompt_tokens: 200,
                output_tokens: 200,
                ..Default::default()
            },
        )
        .unwrap();
        for o in &plan.options {
            for v in [
                o.decode_tokens_per_s,
                o.tokens_per_s,
                o.prefill_ms,
                o.decode_tokens_per_s_per_sequence,
            ] {
                assert!(v.is_finite() && v >= 0.0, "{model} {} x{}: {o:?}", o.gpu, o.n_gpus);
            }
            if let Some(c) = o.usd_per_million_tokens {
                assert!(c.is_finite() && c > 0.0, "{model}: {o:?}");
            }
        }
        assert!(plan.recommended.is_some(), "{model}: {}", plan.why);
    }
}
