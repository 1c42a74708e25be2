//! Small random-weight Llama models for tests and demos: config.json, model.safetensors, a
//! byte-level BPE tokenizer.json and a tokenizer_config.json with a chat template. Returns the
//! files' bytes; the caller writes them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    /// Feed-forward width; 0 picks about 8/3 of `hidden`.
    pub intermediate: usize,
    pub context: usize,
    pub seed: u64,
    /// "f32", "f16" or "bf16".
    pub dtype: String,
    pub tie_embeddings: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--{field}: {reason}")]
pub struct SynthError {
    pub field: &'static str,
    pub reason: String,
}

/// Special tokens, in id order; `<|eot_id|>` and `<|end_of_text|>` end a sequence.
const SPECIALS: [&str; 5] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

fn check(ok: bool, field: &'static str, reason: impl FnOnce() -> String) -> Result<(), SynthError> {
    if ok {
        Ok(())
    } else {
        Err(SynthError { field, reason: reason() })
    }
}

// === impl SynthSpec ===

impl SynthSpec {
    /// Every problem with the spec, the first one named.
    pub fn validate(&self) -> Result<(), SynthError> {
        let min_vocab = SPECIALS.len() + 256;
        check((1..=128).contains(&self.layers), "layers", || {
            format!("{} is outside 1 to 128", self.layers)
        })?;
        check((1..=256).contains(&self.heads), "heads", || {
            format!("{} is outside 1 to 256", self.heads)
        })?;
        check(self.kv_heads >= 1 && self.heads.is_multiple_of(self.kv_heads), "kv-heads", || {
            format!("{} must divide --heads {}", self.kv_heads, self.heads)
        })?;
        check((8..=16384).contains(&self.hidden), "hidden", || {
            format!("{} is outside 8 to 16384", self.hidden)
        })?;
        check(
            self.hidden.is_multiple_of(self.heads) && (self.hidden / self.heads).is_multiple_of(2),
            "hidden",
            || {
                format!(
                    "{} must be a multiple of --heads {} with an even head size",
                    self.hidden, self.heads
                )
            },
        )?;
        check((min_vocab..=1_000_000).contains(&self.vocab), "vocab", || {
            format!("{} is outside {min_vocab} to 1000000", self.vocab)
        })?;
        check((16..=1_048_576).contains(&self.context), "context", || {
            format!("{} is outside 16 to 1048576", self.context)
        })?;
        check(self.intermediate <= 65536, "intermediate", || {
            format!("{} is over 65536", self.intermediate)
        })?;
        check(matches!(self.dtype.as_str(), "f32" | "f16" | "bf16"), "dtype", || {
            format!("{:?} is not f32, f16 or bf16", self.dtype)
        })?;
        Ok(())
    }

    fn ffn(&self) -> usize {
        if self.intermediate > 0 {
            return self.intermediate;
        }
        (self.hidden * 8 / 3).div_ceil(32) * 32
    }
}

/// The files of a synthesized model, as (file name, bytes).
pub fn synth_llama(spec: &SynthSpec) -> Result<Vec<(String, Vec<u8>)>, SynthError> {
    spec.validate()?;
    let head_dim = spec.hidden / spec.heads;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn(),
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.context,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "vocab_size": spec.vocab,
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": false,
        "bos_token_id": 0,
        "eos_token_id": [1, 4],
        "dtype": match spec.dtype.as_str() { "f16" => "float16", "bf16" => "bfloat16", _ => "float32" },
        "colo_synth_seed": spec.seed,
    });
    let tokenizer_config = json!({
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[4], "chat_template": CHAT_TEMPLATE,
        "model_max_length": spec.context, "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": false,
    });
    Ok(vec![
        ("config.json".into(), pretty(&config)),
        ("tokenizer.json".into(), pretty(&tokenizer(spec.vocab))),
        ("tokenizer_config.json".into(), pretty(&tokenizer_config)),
        ("model.safetensors".into(), weights(spec)),
    ])
}

fn pretty(value: &Value) -> Vec<u8> {
    // Plain JSON values always serialise.
    serde_json::to_vec_pretty(value).expect("json serialises")
}

/// GPT-2's byte-to-character map, which byte-level BPE vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let mut out = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).expect("latin-1 code point")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("code point below 512")
        };
    }
    out
}

/// A byte-level BPE tokenizer with `vocab` entries: the special tokens, the 256 byte
/// symbols, then merges of lowercase letters and the space symbol, shortest first.
fn tokenizer(vocab: usize) -> Value {
    let mut entries: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let chars = byte_chars();
    entries.extend(chars.iter().map(|c| c.to_string()));
    let alphabet: Vec<String> = "abcdefghijklmnopqrstuvwxyz"
        .chars()
        .map(String::from)
        .chain([chars[b' ' as usize].to_string()])
        .collect();
    let mut merges = Vec::new();
    let mut level: Vec<String> = alphabet.clone();
    while entries.len() < vocab {
        let mut next = Vec::new();
        'fill: for prefix in &level {
            for letter in &alphabet {
                if entries.len() >= vocab {
                    break 'fill;
                }
                let token = format!("{prefix}{letter}");
                merges.push(format!("{prefix} {letter}"));
                entries.push(token.clone());
                next.push(token);
            }
        }
        level = next;
    }
    let vocab_map: serde_json::Map<String, Value> = entries
        .iter()
        .enumerate()
        .skip(SPECIALS.len())
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let bos = SPECIALS[0];
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [0], "tokens": [bos]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab_map, "merges": merges}
    })
}

/// The safetensors file: random weights with unit-scale activations, norms at one.
fn weights(spec: &SynthSpec) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (h, hd, ffn) = (spec.hidden, spec.hidden / spec.heads, spec.ffn());
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut random = |name: String, shape: Vec<usize>, fan_in: usize| {
        let bound = (3.0 / fan_in as f32).sqrt();
        let n = shape.iter().product();
        let values = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
        tensors.push((name, shape, values));
    };
    random("model.embed_tokens.weight".into(), vec![spec.vocab, h], 1);
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        random(format!("{p}.self_attn.q_proj.weight"), vec![spec.heads * hd, h], h);
        random(format!("{p}.self_attn.k_proj.weight"), vec![spec.kv_heads * hd, h], h);
        random(format!("{p}.self_attn.v_proj.weight"), vec![spec.kv_heads * hd, h], h);
        random(format!("{p}.self_attn.o_proj.weight"), vec![h, spec.heads * hd], spec.heads * hd);
        random(format!("{p}.mlp.gate_proj.weight"), vec![ffn, h], h);
        random(format!("{p}.mlp.up_proj.weight"), vec![ffn, h], h);
        random(format!("{p}.mlp.down_proj.weight"), vec![h, ffn], ffn);
    }
    if !spec.tie_embeddings {
        random("lm_head.weight".into(), vec![spec.vocab, h], h);
    }
    for i in 0..spec.layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("model.layers.{i}.{norm}.weight"), vec![h], vec![1.0; h]));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![h], vec![1.0; h]));
    write_safetensors(&tensors, &spec.dtype)
}

fn write_safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: &str) -> Vec<u8> {
    let (name, size) = match dtype {
        "f16" => ("F16", 2),
        "bf16" => ("BF16", 2),
        _ => ("F32", 4),
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (tensor, shape, values) in tensors {
        let end = offset + values.len() * size;
        header.insert(
            tensor.clone(),
            json!({"dtype": name, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("json serialises");
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, _, values) in tensors {
        for &v in values {
            match dtype {
                "f16" => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                "bf16" => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                _ => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SynthSpec {
        SynthSpec {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            vocab: 600,
            intermediate: 0,
            context: 256,
            seed: 1,
            dtype: "f32".into(),
            tie_embeddings: false,
        }
    }

    #[test]
    fn files_are_valid_and_seeded() {
        let files = synth_llama(&spec()).unwrap();
        let st = &files.iter().find(|f| f.0 == "model.safetensors").unwrap().1;
        let len = crate::safetensors::header_len(st, st.len() as u64).unwrap();
        let summary = crate::safetensors::parse_header(&st[8..8 + len as usize], st.len() as u64).unwrap();
        assert_eq!(summary.tensors, 1 + 2 * 7 + 1 + 2 * 2 + 1);
        assert_eq!(synth_llama(&spec()).unwrap(), files, "same seed, same bytes");
        let other = synth_llama(&SynthSpec { seed: 2, ..spec() }).unwrap();
        assert_ne!(other[3].1, files[3].1);
        let tok: Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(tok["model"]["vocab"].as_object().unwrap().len() + SPECIALS.len(), 600);
    }

    #[test]
    fn bad_specs_name_the_flag() {
        let cases: Vec<(SynthSpec, &str)> = vec![
            (SynthSpec { layers: 0, ..spec() }, "--layers"),
            (SynthSpec { kv_heads: 3, ..spec() }, "--kv-heads"),
            (SynthSpec { hidden: 66, ..spec() }, "--hidden"),
            (SynthSpec { vocab: 10, ..spec() }, "--vocab"),
            (
                SynthSpec {
                    dtype: "f8".into(),
                    ..spec()
                },
                "--dtype",
            ),
        ];
        for (spec, flag) in cases {
            assert!(synth_llama(&spec).unwrap_err().to_string().starts_with(flag), "{flag}");
        }
    }
}
