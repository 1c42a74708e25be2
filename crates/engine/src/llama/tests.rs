//! Config parsing across transformers versions, and bad configs refused by field.

use super::*;
use serde_json::json;

fn base() -> Value {
    json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "intermediate_size": 176, "vocab_size": 512, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "eos_token_id": [4, 5]})
}

#[test]
fn both_transformers_layouts_load() {
    let mut v4 = base();
    v4["rope_theta"] = json!(500000.0);
    v4["torch_dtype"] = json!("bfloat16");
    v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let mut v5 = base();
    v5["dtype"] = json!("bfloat16");
    v5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let a = LlamaConfig::from_json(&v4).unwrap();
    let b = LlamaConfig::from_json(&v5).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rope_theta, 500000.0);
    assert_eq!(a.head_dim, 16);
    assert_eq!(a.eos_ids, vec![4, 5]);
    // Llama 3.1 scaling leaves high frequencies alone and divides the lowest by the factor.
    let plain = LlamaConfig {
        rope_scaling: None,
        ..a.clone()
    }
    .inv_freq();
    let scaled = a.inv_freq();
    assert_eq!(scaled[0], plain[0]);
    assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12);
}

#[test]
fn bad_configs_name_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("model_type", json!("gpt2"), "model_type"),
        ("num_hidden_layers", json!(0), "num_hidden_layers"),
        ("num_attention_heads", json!(-4), "num_attention_heads"),
        ("num_key_value_heads", json!(3), "num_key_value_heads"),
        ("hidden_act", json!("gelu"), "hidden_act"),
        ("rope_theta", json!("big"), "rope_theta"),
    ];
    for (field, value, needle) in cases {
        let mut config = base();
        config[field] = value;
        let err = LlamaConfig::from_json(&config).unwrap_err().to_string();
        assert!(err.contains(needle), "{field}: {err}");
    }
    let mut missing = base();
    missing.as_object_mut().unwrap().remove("vocab_size");
    assert!(LlamaConfig::from_json(&missing)
        .unwrap_err()
        .to_string()
        .contains("vocab_size: missing"));
}
