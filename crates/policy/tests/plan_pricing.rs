//! The L40S price cut of 2024-08-15, reproduced: at Fly.io's prices after the cut (L40S
//! $1.25/h, A10 $1.50/h) every model of models.csv that fits one A10 at a 4k context costs
//! less per million output tokens on an L40S; at the price before (L40S $2.50/h) some flip
//! back. The table printed here is the one in docs/PLANNING.md, and the test checks that the
//! document still carries it.

use colo_core::{Catalogue, PriceBook};
use colo_model::ModelFacts;
use colo_policy::{plan, PlanOption, PlanRequest};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("data/models.csv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

/// The option for one card of `gpu` in bf16 at a 4096-token context (1024-token prompts,
/// 256-token outputs), or at the model's own maximum where it is shorter (prompts of half of
/// it, outputs of an eighth), priced from `book`.
fn one_card(facts: &ModelFacts, catalogue: &Catalogue, gpu: &str, book: PriceBook) -> PlanOption {
    let context = facts.max_position.min(4096);
    let request = PlanRequest {
        gpus: vec![gpu.into()],
        n_gpus: vec![1],
        quants: vec![colo_model::Quant::Bf16],
        prices: book,
        context,
        prompt_tokens: context / 4,
        output_tokens: context / 16,
        ..Default::default()
    };
    plan(facts, catalogue, &request).unwrap().options.remove(0)
}

/// Dollars to three significant figures: per-token costs span five orders of magnitude.
fn dollars(v: f64) -> String {
    let decimals = (2 - v.log10().floor() as i32).max(2) as usize;
    format!("${v:.decimals$}")
}

#[test]
fn l40s_beats_a10_after_the_cut_and_some_flip_back_before() {
    let catalogue = Catalogue::builtin();
    // The price before the cut, as an operator's price table would give it.
    let before = PriceBook::Table(
        [("a10", 1.50), ("l40s", 2.50)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), colo_core::Usd::new(v).unwrap()))
            .collect(),
    );
    let mut rows = vec![
        "| model | context | A10 batch | A10 $/M | L40S batch | L40S $/M at $1.25/h | L40S $/M at $2.50/h | after the cut | before the cut |".to_string(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |".to_string(),
    ];
    let mut compared = Vec::new();
    let mut flips = Vec::new();
    for name in model_names() {
        let path = repo().join("testdata/configs").join(&name).join("config.json");
        let Ok(bytes) = std::fs::read(&path) else {
            rows.push(format!(
                "| {name} | - | - | - | - | - | - | not compared: no config.json (diffusion pipeline) | |"
            ));
            continue;
        };
        let facts = ModelFacts::from_config(&bytes).unwrap();
        let a10 = one_card(&facts, &catalogue, "a10", PriceBook::Fly2024);
        if !a10.fits {
            let why = a10.why_not.unwrap_or_default();
            rows.push(format!(
                "| {name} | - | - | - | - | - | - | not compared: does not fit one A10 ({why}) | |"
            ));
            continue;
        }
        let l40s_after = one_card(&facts, &catalogue, "l40s", PriceBook::Fly2024);
        let l40s_before = one_card(&facts, &catalogue, "l40s", before.clone());
        let a10_before = one_card(&facts, &catalogue, "a10", before.clone());
        assert_eq!(
            a10_before.usd_per_million_tokens, a10.usd_per_million_tokens,
            "the A10 price did not change"
        );
        let cost = |o: &PlanOption| o.usd_per_million_tokens.unwrap_or_else(|| panic!("{name}: {o:?} has no cost"));
        let winner = |l40s: f64| if l40s < cost(&a10) { "L40S" } else { "A10" };
        assert_eq!(
            winner(cost(&l40s_after)),
            "L40S",
            "{name}: after the cut the L40S must be cheaper per token"
        );
        if winner(cost(&l40s_before)) == "A10" {
            flips.push(name.clone());
        }
        compared.push(name.clone());
        rows.push(format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            facts.max_position.min(4096),
            a10.batch,
            dollars(cost(&a10)),
            l40s_after.batch,
            dollars(cost(&l40s_after)),
            dollars(cost(&l40s_before)),
            winner(cost(&l40s_after)),
            winner(cost(&l40s_before)),
        ));
    }
    let table = rows.join("\n");
    println!("{table}\n\nflip back to the A10 before the cut: {flips:?}");
    // A model dropping out of the comparison, or a flip appearing, changes the claim: the
    // document must say so.
    let expected = [
        "llama-3.1-8b",
        "mistral-7b-v0.1",
        "tinyllama-1.1b",
        "qwen2.5-0.5b",
        "whisper-large-v3",
        "all-minilm-l6-v2",
    ];
    assert_eq!(compared, expected, "models that fit one A10");
    assert_eq!(flips, Vec::<String>::new(), "models cheaper on the A10 at the old L40S price");
    let doc = std::fs::read_to_string(repo().join("docs/PLANNING.md")).unwrap_or_default();
    assert!(
        doc.contains(&table),
        "docs/PLANNING.md does not carry the current table; paste it from this test's output:\n{table}"
    );
}
