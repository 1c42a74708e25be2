//! Config parsing across transformers versions, bad configs refused by field, and the CPU's
//! products and attention against candle's.

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

#[test]
fn split_products_agree_in_both_layouts_on_every_path() {
    // Both layouts of a weight: `Panels` by the engine's panel kernels (one row, a tile's
    // height, more than one tile, many tiles); `Columns` by gemm per column block, or the BLAS
    // from 64 rows where its probe chose it. Every path gives the product with the whole weight.
    let values = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    };
    let (inputs, outputs) = (48, 70);
    let stored = Tensor::from_vec(values(outputs * inputs, 1), (outputs, inputs), &Device::Cpu).unwrap();
    let (panels, columns) = (Split::panels(&[&stored]).unwrap(), Split::columns(&[&stored]).unwrap());
    assert!(matches!(panels, Split::Panels(_)) && matches!(columns, Split::Columns(_)));
    for n in [1, 3, 12, 16, 33, crate::blas::MIN_ROWS, 130] {
        let x = Tensor::from_vec(values(n * inputs, 2), (n, inputs), &Device::Cpu).unwrap();
        let want = x
            .matmul(&stored.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (layout, split) in [("panels", &panels), ("columns", &columns)] {
            let got = split.forward(&x).unwrap();
            assert_eq!(got.dims(), &[n, outputs]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-4, "{layout}, {n} rows: {worst}");
        }
    }
    // Two weights stacked (q, k and v; gate and up) are one product.
    let second = Tensor::from_vec(values(30 * inputs, 3), (30, inputs), &Device::Cpu).unwrap();
    let both = Tensor::cat(&[&stored, &second], 0).unwrap();
    let x = Tensor::from_vec(values(5 * inputs, 4), (5, inputs), &Device::Cpu).unwrap();
    let want = x.matmul(&both.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
    for split in [
        Split::panels(&[&stored, &second]).unwrap(),
        Split::columns(&[&stored, &second]).unwrap(),
    ] {
        let got = split.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!(got.iter().flatten().zip(want.iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-4));
    }
    // The layout choice was timed, and made exactly when the panels were the faster.
    let choice = decode_choice();
    assert!(choice.speedup > 0.0 && choice.speedup.is_finite(), "{choice:?}");
    assert!(!choice.forced, "COLO_DECODE is set in the tests' environment");
    assert_eq!(choice.chosen, choice.speedup > 1.0);
}

/// Weights of any shape asked for, the same values for the same name every time.
struct Hashed;

impl candle_nn::var_builder::SimpleBackend for Hashed {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let seed = name.bytes().fold(2_166_136_261u32, |h, b| (h ^ b as u32).wrapping_mul(16_777_619));
        let norm = name.contains("norm");
        let values: Vec<f32> = (0..s.elem_count())
            .map(|i| {
                let r = ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32 - 0.5;
                if norm {
                    1.0 + r * 0.2
                } else {
                    r * 0.4
                }
            })
            .collect();
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("{name}: no shape given")))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

#[test]
fn cpu_attention_kernel_agrees_with_candles_operations() {
    // Sequences reading prompts of different lengths in one step, then decoding together, one
    // of them joining late; caches made too small, so the kernel's cache grows on the way. Its
    // logits against candle's operations, one sequence at a time, step by step.
    let config = LlamaConfig::from_json(&base()).unwrap();
    let vb = VarBuilder::from_backend(Box::new(Hashed), DType::F32, Device::Cpu);
    let mut fused = Llama::from_vb(vb, config).unwrap();
    assert!(fused.cpu_attention, "f32 on the CPU with heads of 16 takes the kernel");
    let vb = VarBuilder::from_backend(Box::new(Hashed), DType::F32, Device::Cpu);
    let mut plain = Llama::from_vb(vb, fused.config.clone()).unwrap();
    plain.cpu_attention = false;
    let steps: Vec<Vec<Vec<u32>>> = vec![
        vec![(1..6).collect(), vec![7], (20..29).collect()],
        vec![vec![9], vec![8], vec![30]],
        vec![vec![10], vec![11], vec![31], (40..44).collect()],
        vec![vec![12], vec![13], vec![32], vec![50]],
        vec![vec![14], vec![15], vec![33], vec![51]],
    ];
    let run = |model: &Llama| -> Vec<Vec<f32>> {
        let mut caches: Vec<SeqCache> = (0..4).map(|_| model.new_cache(2)).collect();
        let mut out = Vec::new();
        for step in &steps {
            let mut inputs: Vec<StepInput> = caches
                .iter_mut()
                .zip(step)
                .map(|(cache, tokens)| StepInput { tokens, cache })
                .collect();
            let logits = model.step(&mut inputs).unwrap();
            out.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        out
    };
    let (a, b) = (run(&fused), run(&plain));
    for (step, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "step {step}: {x} against {y}");
        }
    }
    let spread = a[4].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 0.01, "logits this small would hide a difference: {spread}");
    fused.cpu_attention = false;
    let mut wrong = fused.new_cache(4);
    fused.cpu_attention = true;
    let err = fused
        .step(&mut [StepInput {
            tokens: &[1],
            cache: &mut wrong,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("cache made for candle"), "{err}");
}
