//! Table-driven checks of config.json reading: good configs give the right shape, bad ones an
//! error that names every offending field.

use super::*;

const LLAMA_8B: &str = include_str!("../../../../testdata/configs/llama-3.1-8b/config.json");

fn with(base: &str, edits: &[(&str, Value)], removals: &[&str]) -> Vec<u8> {
    let mut value: Value = serde_json::from_str(base).unwrap();
    let obj = value.as_object_mut().unwrap();
    for (field, v) in edits {
        obj.insert(field.to_string(), v.clone());
    }
    for field in removals {
        obj.remove(*field);
    }
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn llama_shape_is_read() {
    let facts = ModelFacts::from_config(LLAMA_8B.as_bytes()).unwrap();
    assert_eq!((facts.layers, facts.heads, facts.kv_heads, facts.head_dim), (32, 32, 8, 128));
    assert_eq!(facts.dtype, Dtype::BF16);
    assert_eq!(facts.weights_bytes, facts.params * 2);
    assert_eq!(facts.kv_bytes_per_token(2), 131072, "models.csv kv_bytes_per_token_bf16");
    assert_eq!(facts.kv_bytes_per_sequence(2), 0);
}

#[test]
fn bad_configs_name_the_field() {
    use serde_json::json;
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "missing layers",
            with(LLAMA_8B, &[], &["num_hidden_layers"]),
            &["num_hidden_layers: missing"],
        ),
        (
            "missing several",
            with(LLAMA_8B, &[], &["hidden_size", "vocab_size", "intermediate_size"]),
            &["hidden_size: missing", "vocab_size: missing", "intermediate_size: missing"],
        ),
        (
            "zero layers",
            with(LLAMA_8B, &[("num_hidden_layers", json!(0))], &[]),
            &["num_hidden_layers: must be at least 1"],
        ),
        (
            "negative heads",
            with(LLAMA_8B, &[("num_attention_heads", json!(-32))], &[]),
            &["num_attention_heads: -32 is not a whole number"],
        ),
        (
            "fractional",
            with(LLAMA_8B, &[("hidden_size", json!(40.5))], &[]),
            &["hidden_size: 40.5"],
        ),
        (
            "string count",
            with(LLAMA_8B, &[("vocab_size", json!("many"))], &[]),
            &["vocab_size"],
        ),
        (
            "absurd",
            with(LLAMA_8B, &[("num_hidden_layers", json!(1u64 << 40))], &[]),
            &["num_hidden_layers", "past the"],
        ),
        (
            "unknown dtype",
            with(LLAMA_8B, &[("torch_dtype", json!("float7"))], &[]),
            &["torch_dtype: unknown dtype \"float7\""],
        ),
        (
            "kv heads",
            with(LLAMA_8B, &[("num_key_value_heads", json!(5))], &[]),
            &["num_key_value_heads: 5 does not divide"],
        ),
        ("no model_type", with(LLAMA_8B, &[], &["model_type"]), &["model_type: missing"]),
        ("not an object", b"[1, 2]".to_vec(), &["not a JSON object"]),
        ("not JSON", b"{\"model_type\": ".to_vec(), &["not a JSON object"]),
        (
            "unknown family",
            with(LLAMA_8B, &[("model_type", json!("mamba"))], &[]),
            &["model_type \"mamba\""],
        ),
    ];
    for (what, bytes, needles) in cases {
        let err = ModelFacts::from_config(&bytes).expect_err(what).to_string();
        for needle in needles {
            assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn tensors_replace_counted_weights() {
    let facts = ModelFacts::from_config(LLAMA_8B.as_bytes()).unwrap();
    let header = HeaderSummary {
        header_len: 100,
        tensors: 2,
        bytes_by_dtype: [(Dtype::BF16, 1000), (Dtype::F32, 40)].into_iter().collect(),
        parameters: 510,
    };
    let exact = facts
        .clone()
        .with_tensors(&[header.clone(), header], FactsSource::Directory)
        .unwrap();
    assert_eq!((exact.params, exact.weights_bytes, exact.dtype), (1020, 2080, Dtype::BF16));
    assert_eq!(exact.source, FactsSource::Directory);
    assert!(matches!(
        facts.with_tensors(&[], FactsSource::Manifest),
        Err(ConfigError::NoTensors)
    ));
}
