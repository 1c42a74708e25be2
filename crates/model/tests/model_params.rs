//! Every model in data/models.csv, counted from its config.json fixture, against the
//! published parameter count (within 1%) and KV bytes per token (exactly).

use colo_model::ModelFacts;
use std::path::PathBuf;

/// Rows of models.csv that a config.json alone cannot describe: diffusion pipelines are several
/// networks with several configs. The planner takes them from a manifest (exact bytes) instead.
const NOT_FROM_CONFIG: &[&str] = &["flux.1-dev", "sdxl-base-1.0"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Row {
    name: String,
    params_b: f64,
    kv_bytes_per_token_bf16: Option<u64>,
}

fn models_csv() -> Vec<Row> {
    let text = std::fs::read_to_string(repo().join("data/models.csv")).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (name, params, kv) = (col("name"), col("params_b"), col("kv_bytes_per_token_bf16"));
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            Row {
                name: cells[name].to_string(),
                params_b: cells[params].parse().unwrap(),
                kv_bytes_per_token_bf16: cells[kv].parse().ok(),
            }
        })
        .collect()
}

#[test]
fn counted_parameters_match_published_within_one_percent() {
    let rows = models_csv();
    assert!(rows.len() >= 11, "models.csv has {} rows", rows.len());
    let mut report = Vec::new();
    for row in &rows {
        let path = repo().join("testdata/configs").join(&row.name).join("config.json");
        if NOT_FROM_CONFIG.contains(&row.name.as_str()) {
            assert!(!path.exists(), "{}: a fixture exists now; take it off NOT_FROM_CONFIG", row.name);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let facts = ModelFacts::from_config(&bytes).unwrap_or_else(|e| panic!("{}: {e}", row.name));
        let counted_b = facts.params as f64 / 1e9;
        let off = (counted_b / row.params_b - 1.0) * 100.0;
        report.push(format!(
            "{:<18} published {:>8.4} B  counted {:>9.4} B  {off:+.2}%",
            row.name, row.params_b, counted_b
        ));
        assert!(
            off.abs() < 1.0,
            "{}: counted {counted_b} B vs published {} B ({off:+.2}%)",
            row.name,
            row.params_b
        );
        if let Some(kv) = row.kv_bytes_per_token_bf16 {
            assert_eq!(facts.kv_bytes_per_token(2), kv, "{}: KV bytes per token", row.name);
        }
    }
    println!("{}", report.join("\n"));
}
