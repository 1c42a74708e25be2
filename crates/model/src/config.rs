//! Model facts for planning, read from a `config.json` (the bytes a caller hands in) and,
//! where they are at hand, from safetensors headers, which give exact bytes per dtype; or from
//! a GGUF file's header alone, which holds both.
//!
//! Parameters are counted from the architecture: decoder-only transformers of the Llama shape
//! (llama, mistral, qwen2, qwen3), BERT encoders and Whisper. Every missing or absurd field is
//! reported at once, by name, before any arithmetic runs, so no estimate is built on a zero.

use crate::gguf::{GgmlType, GgufSummary};
use crate::safetensors::{Dtype, HeaderSummary};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// One problem with one field of a config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json is not a JSON object: {reason}")]
    Json { reason: String },
    #[error("model_type {model_type:?} is not one the planner knows (llama, mistral, qwen2, qwen3, bert, whisper)")]
    Unsupported { model_type: String },
    #[error("config.json: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { problems: Vec<FieldProblem> },
    #[error("safetensors headers hold no tensors")]
    NoTensors,
    #[error("GGUF metadata: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Gguf { problems: Vec<FieldProblem> },
}

/// What shape of network the model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Generates tokens; a KV cache per sequence.
    Decoder,
    /// Embeds its input in one forward pass; no KV cache.
    Encoder,
    /// Encodes a fixed-length input, then generates (Whisper).
    EncoderDecoder,
}

/// Where the facts came from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FactsSource {
    /// Exact bytes from a pushed model's manifest.
    Manifest,
    /// Exact bytes from the safetensors headers of a local directory.
    Directory,
    /// Exact bytes and the hyperparameters from a GGUF file's header.
    Gguf,
    /// Counted from config.json alone.
    Config,
}

/// What the planner needs to know about a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelFacts {
    pub model_type: String,
    pub arch: Arch,
    /// All parameters.
    pub params: u64,
    /// Parameters of the token embedding and the output head: weight-only quantization keeps
    /// these at 16 bits.
    pub embedding_params: u64,
    /// Bytes of the weights at the checkpoint's dtype.
    pub weights_bytes: u64,
    /// The checkpoint's dtype (the one holding most bytes).
    pub dtype: Dtype,
    /// Transformer layers that keep a KV cache (the decoder's, for Whisper; all, for BERT).
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// Width of the feed-forward layer.
    pub intermediate: u64,
    pub vocab: u64,
    /// Longest sequence the model was trained for.
    pub max_position: u64,
    /// Positions of cross-attention KV each sequence holds whatever its length (Whisper: 1500
    /// audio frames); zero for other models.
    pub cross_kv_positions: u64,
    /// Sliding attention window, where the config sets one.
    pub sliding_window: Option<u64>,
    pub source: FactsSource,
    /// For a GGUF model, the tensor type that holds most of its bytes (its weights are served as
    /// stored); `None` for a safetensors checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<crate::gguf::GgmlType>,
}

// === impl ModelFacts ===

impl ModelFacts {
    /// Reads a config.json. Weights are counted at the config's `torch_dtype` (float32 where
    /// it names none, as transformers loads such a model).
    pub fn from_config(bytes: &[u8]) -> Result<ModelFacts, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError::Json { reason: e.to_string() })?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::Json {
                reason: "the top level is not an object".into(),
            });
        };
        let mut fields = Fields {
            obj: &obj,
            problems: Vec::new(),
        };
        let model_type = fields.text("model_type");
        let facts = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" => decoder(&mut fields, &model_type),
            "bert" => encoder(&mut fields),
            "whisper" => whisper(&mut fields),
            "" => None,
            other => {
                return Err(ConfigError::Unsupported {
                    model_type: other.to_string(),
                })
            }
        };
        let dtype = fields.dtype();
        match facts {
            Some(mut facts) if fields.problems.is_empty() => {
                facts.dtype = dtype;
                facts.weights_bytes = facts.params.saturating_mul(dtype.size_bytes());
                Ok(facts)
            }
            _ => Err(ConfigError::Invalid { problems: fields.problems }),
        }
    }

    /// Where config.json and the weights' tensor `shapes` disagree, one line each: the tensors
    /// colo knows by name (the token embedding, the first layer's attention and feed-forward
    /// projections) against the sizes the config gives them, and the number of layers. An
    /// engine would fail to load such a model; a push refuses it.
    pub fn contradictions(&self, shapes: &std::collections::BTreeMap<String, Vec<u64>>) -> Vec<String> {
        let (h, v, ff) = (self.hidden, self.vocab, self.intermediate);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        // (tensor name's end, its shape by the config, which config fields make it)
        type Expected<'a> = Vec<(&'a str, [u64; 2], &'a str)>;
        let (expected, layer_prefix): (Expected<'_>, &str) = match self.arch {
            Arch::Decoder => (
                vec![
                    ("embed_tokens.weight", [v, h], "vocab_size x hidden_size"),
                    (
                        "layers.0.self_attn.q_proj.weight",
                        [q, h],
                        "num_attention_heads x head_dim, hidden_size",
                    ),
                    (
                        "layers.0.self_attn.k_proj.weight",
                        [kv, h],
                        "num_key_value_heads x head_dim, hidden_size",
                    ),
                    ("layers.0.mlp.gate_proj.weight", [ff, h], "intermediate_size x hidden_size"),
                ],
                "layers.",
            ),
            Arch::Encoder => (
                vec![
                    ("embeddings.word_embeddings.weight", [v, h], "vocab_size x hidden_size"),
                    (
                        "encoder.layer.0.intermediate.dense.weight",
                        [ff, h],
                        "intermediate_size x hidden_size",
                    ),
                ],
                "encoder.layer.",
            ),
            Arch::EncoderDecoder => return Vec::new(),
        };
        let named = |suffix: &str| {
            shapes
                .iter()
                .find(|(name, _)| name.as_str() == suffix || name.ends_with(&format!(".{suffix}")))
        };
        let mut wrong: Vec<String> = expected
            .iter()
            .filter_map(|(suffix, want, what)| {
                let (name, shape) = named(suffix)?;
                (shape.as_slice() != want.as_slice())
                    .then(|| format!("{name} is {shape:?} in the weights, and config.json makes it {want:?} ({what})"))
            })
            .collect();
        // Layer indices as they appear in tensor names: `...layers.<n>.` or `encoder.layer.<n>.`.
        let layers = shapes
            .keys()
            .filter_map(|name| {
                let at = name.find(layer_prefix)? + layer_prefix.len();
                name[at..].split('.').next()?.parse::<u64>().ok()
            })
            .max()
            .map(|n| n + 1);
        if let Some(found) = layers.filter(|&n| n != self.layers) {
            wrong.push(format!(
                "the weights have {found} layers, and config.json says num_hidden_layers = {}",
                self.layers
            ));
        }
        wrong
    }

    /// Replaces the counted weights with the exact ones from safetensors headers.
    pub fn with_tensors(mut self, headers: &[HeaderSummary], source: FactsSource) -> Result<ModelFacts, ConfigError> {
        let params: u64 = headers.iter().map(|h| h.parameters).sum();
        if params == 0 {
            return Err(ConfigError::NoTensors);
        }
        let mut by_dtype = std::collections::BTreeMap::<Dtype, u64>::new();
        for header in headers {
            for (dtype, bytes) in &header.bytes_by_dtype {
                *by_dtype.entry(*dtype).or_default() += bytes;
            }
        }
        self.weights_bytes = by_dtype.values().sum();
        // Not empty: params > 0 means at least one tensor with bytes.
        self.dtype = by_dtype
            .iter()
            .max_by_key(|(_, bytes)| **bytes)
            .map(|(d, _)| *d)
            .unwrap_or(self.dtype);
        self.params = params;
        self.source = source;
        Ok(self)
    }

    /// Reads a GGUF file's header summary: the hyperparameters from its metadata, the exact
    /// parameters and bytes from its tensors. Every missing or absurd key is reported at once.
    pub fn from_gguf(summary: &GgufSummary) -> Result<ModelFacts, ConfigError> {
        let mut problems = Vec::new();
        let arch_name = summary.architecture.clone().unwrap_or_default();
        if arch_name.is_empty() {
            problems.push(FieldProblem {
                field: "general.architecture".into(),
                reason: "missing".into(),
            });
        }
        let mut get = |key: &str, limit: u64, required: bool| -> u64 {
            match summary.hyper(key) {
                Some(v) if v > limit => {
                    problems.push(FieldProblem {
                        field: format!("{arch_name}.{key}"),
                        reason: format!("{v} is past the {limit} any real model has"),
                    });
                    0
                }
                Some(0) | None if required => {
                    problems.push(FieldProblem {
                        field: format!("{arch_name}.{key}"),
                        reason: "missing or zero".into(),
                    });
                    0
                }
                Some(v) => v,
                None => 0,
            }
        };
        let layers = get("block_count", limit_for("layers"), true);
        let hidden = get("embedding_length", limit_for("hidden_size"), true);
        let heads = get("attention.head_count", limit_for("heads"), true);
        let kv_heads = get("attention.head_count_kv", limit_for("heads"), false);
        let key_length = get("attention.key_length", limit_for("head_dim"), false);
        let intermediate = get("feed_forward_length", limit_for("intermediate_size"), false);
        let max_position = get("context_length", limit_for("max_position_embeddings"), true);
        if summary.parameters == 0 {
            problems.push(FieldProblem {
                field: "tensors".into(),
                reason: "the file holds no tensor data".into(),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError::Gguf { problems });
        }
        let main = summary.main_type();
        let arch = match arch_name.as_str() {
            "bert" | "nomic-bert" | "jina-bert-v2" | "modern-bert" => Arch::Encoder,
            _ => Arch::Decoder,
        };
        Ok(ModelFacts {
            params: summary.parameters,
            embedding_params: summary.embedding_parameters,
            weights_bytes: summary.weights_bytes(),
            dtype: match main {
                Some(GgmlType::F32) => Dtype::F32,
                Some(GgmlType::BF16) => Dtype::BF16,
                Some(GgmlType::F16) => Dtype::F16,
                // A block format: the bytes are exact, the element type has no safetensors name.
                _ => Dtype::U8,
            },
            layers,
            hidden,
            heads,
            kv_heads: if kv_heads == 0 { heads } else { kv_heads },
            head_dim: if key_length == 0 { hidden / heads } else { key_length },
            intermediate,
            vocab: summary.vocab.unwrap_or(0),
            max_position,
            source: FactsSource::Gguf,
            gguf: main,
            ..blank(&arch_name, arch)
        })
    }

    /// KV cache bytes for one token at `bytes_per_value`: K and V for every layer and KV head.
    pub fn kv_bytes_per_token(&self, bytes_per_value: u64) -> u64 {
        match self.arch {
            Arch::Encoder => 0,
            Arch::Decoder | Arch::EncoderDecoder => 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value,
        }
    }

    /// KV bytes each sequence holds whatever its length (Whisper's cross-attention cache).
    pub fn kv_bytes_per_sequence(&self, bytes_per_value: u64) -> u64 {
        2 * self.layers * self.hidden * self.cross_kv_positions * bytes_per_value
    }
}

/// Reads fields of one JSON object, collecting every problem instead of stopping at the first.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    problems: Vec<FieldProblem>,
}

/// Ceilings far above any real model: a value past one is a typo or an attack, and keeping
/// below them keeps every product of two fields inside u64.
const LIMITS: &[(&str, u64)] = &[
    ("layers", 4096),
    ("heads", 4096),
    ("head_dim", 16384),
    ("hidden_size", 1 << 20),
    ("d_model", 1 << 20),
    ("intermediate_size", 1 << 22),
    ("ffn_dim", 1 << 22),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 28),
    ("positions", 1 << 28),
    ("sliding_window", 1 << 28),
    ("type_vocab_size", 1 << 16),
    ("num_mel_bins", 4096),
];

fn limit_for(field: &str) -> u64 {
    LIMITS
        .iter()
        .find(|(suffix, _)| field.contains(suffix))
        .map(|(_, limit)| *limit)
        .unwrap_or(1 << 32)
}

impl Fields<'_> {
    fn problem(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(FieldProblem {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    fn text(&mut self, field: &str) -> String {
        match self.obj.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                self.problem(field, format!("{other} is not a string"));
                String::new()
            }
            None => {
                self.problem(field, "missing");
                String::new()
            }
        }
    }

    /// A whole number of at least one, or `None` if absent or null.
    fn opt_count(&mut self, field: &str) -> Option<u64> {
        let value = self.obj.get(field)?;
        if value.is_null() {
            return None;
        }
        let limit = limit_for(field);
        match value.as_u64() {
            Some(n) if (1..=limit).contains(&n) => Some(n),
            Some(0) => {
                self.problem(field, "must be at least 1, not 0");
                Some(1)
            }
            Some(n) => {
                self.problem(field, format!("{n} is past the {limit} any real model stays under"));
                Some(1)
            }
            None => {
                self.problem(field, format!("{value} is not a whole number of at least 1"));
                Some(1)
            }
        }
    }

    /// A whole number of at least one that must be there. Returns 1 after recording a problem,
    /// so later arithmetic stays defined; the caller discards the result.
    fn count(&mut self, field: &str) -> u64 {
        match self.opt_count(field) {
            Some(n) => n,
            None => {
                self.problem(field, "missing");
                1
            }
        }
    }

    fn flag(&mut self, field: &str, default: bool) -> bool {
        match self.obj.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(field, format!("{other} is not true or false"));
                default
            }
        }
    }

    /// The checkpoint dtype: `torch_dtype` (or `dtype`, its newer name); float32 if absent.
    fn dtype(&mut self) -> Dtype {
        let field = if self.obj.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        let Some(value) = self.obj.get(field) else {
            return Dtype::F32;
        };
        let parsed = value.as_str().and_then(|s| match s {
            "bfloat16" => Some(Dtype::BF16),
            "float16" | "half" => Some(Dtype::F16),
            "float32" | "float" => Some(Dtype::F32),
            "float8_e4m3fn" => Some(Dtype::F8_E4M3),
            "float8_e5m2" => Some(Dtype::F8_E5M2),
            _ => None,
        });
        parsed.unwrap_or_else(|| {
            self.problem(
                field,
                format!("unknown dtype {value} (bfloat16, float16, float32, float8_e4m3fn, float8_e5m2)"),
            );
            Dtype::F32
        })
    }
}

fn blank(model_type: &str, arch: Arch) -> ModelFacts {
    ModelFacts {
        model_type: model_type.to_string(),
        arch,
        params: 0,
        embedding_params: 0,
        weights_bytes: 0,
        dtype: Dtype::F32,
        layers: 0,
        hidden: 0,
        heads: 0,
        kv_heads: 0,
        head_dim: 0,
        intermediate: 0,
        vocab: 0,
        max_position: 0,
        cross_kv_positions: 0,
        sliding_window: None,
        source: FactsSource::Config,
        gguf: None,
    }
}

/// Llama-shaped decoders: attention with grouped KV heads, a gated MLP, RMS norms.
fn decoder(f: &mut Fields, model_type: &str) -> Option<ModelFacts> {
    let layers = f.count("num_hidden_layers");
    let hidden = f.count("hidden_size");
    let heads = f.count("num_attention_heads");
    let kv_heads = f.opt_count("num_key_value_heads").unwrap_or(heads);
    let head_dim = f.opt_count("head_dim").unwrap_or(hidden / heads.max(1));
    let intermediate = f.count("intermediate_size");
    let vocab = f.count("vocab_size");
    let max_position = f.count("max_position_embeddings");
    let tied = f.flag("tie_word_embeddings", false);
    let attention_bias = f.flag("attention_bias", false);
    let mlp_bias = f.flag("mlp_bias", false);
    let use_window = f.flag("use_sliding_window", model_type == "mistral");
    let window = f.opt_count("sliding_window").filter(|_| use_window);
    if kv_heads > heads || !heads.is_multiple_of(kv_heads) {
        f.problem(
            "num_key_value_heads",
            format!("{kv_heads} does not divide num_attention_heads {heads}"),
        );
    }
    if head_dim == 0 {
        f.problem("head_dim", format!("hidden_size {hidden} / num_attention_heads {heads} is 0"));
    }
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let mut attention = hidden * q + 2 * hidden * kv + q * hidden;
    if attention_bias {
        attention += q + 2 * kv + hidden;
    } else if model_type == "qwen2" {
        // Qwen2 has biases on the q, k and v projections only.
        attention += q + 2 * kv;
    }
    if model_type == "qwen3" {
        attention += 2 * head_dim; // per-head RMS norms of q and k
    }
    let mlp = 3 * hidden * intermediate + if mlp_bias { 2 * intermediate + hidden } else { 0 };
    let per_layer = attention + mlp + 2 * hidden;
    let embedding_params = vocab * hidden * if tied { 1 } else { 2 };
    Some(ModelFacts {
        params: layers * per_layer + embedding_params + hidden,
        embedding_params,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        vocab,
        max_position,
        sliding_window: window,
        ..blank(model_type, Arch::Decoder)
    })
}

/// BERT encoders (sentence-transformers models): post-norm layers, GELU MLP, a pooler.
fn encoder(f: &mut Fields) -> Option<ModelFacts> {
    let layers = f.count("num_hidden_layers");
    let hidden = f.count("hidden_size");
    let heads = f.count("num_attention_heads");
    let intermediate = f.count("intermediate_size");
    let vocab = f.count("vocab_size");
    let max_position = f.count("max_position_embeddings");
    let type_vocab = f.opt_count("type_vocab_size").unwrap_or(2);
    if !hidden.is_multiple_of(heads) {
        f.problem("num_attention_heads", format!("{heads} does not divide hidden_size {hidden}"));
    }
    let embeddings = (vocab + max_position + type_vocab) * hidden + 2 * hidden;
    let attention = 4 * (hidden * hidden + hidden) + 2 * hidden;
    let mlp = 2 * hidden * intermediate + intermediate + hidden + 2 * hidden;
    let pooler = hidden * hidden + hidden;
    Some(ModelFacts {
        params: embeddings + layers * (attention + mlp) + pooler,
        embedding_params: vocab * hidden,
        layers,
        hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads.max(1),
        intermediate,
        vocab,
        max_position,
        ..blank("bert", Arch::Encoder)
    })
}

/// Whisper: a convolutional front end and encoder over 30 s of audio, then a text decoder
/// with self- and cross-attention; the output head is tied to the token embedding.
fn whisper(f: &mut Fields) -> Option<ModelFacts> {
    let d = f.count("d_model");
    let enc_layers = f.count("encoder_layers");
    let dec_layers = f.count("decoder_layers");
    let enc_heads = f.count("encoder_attention_heads");
    let dec_heads = f.count("decoder_attention_heads");
    let enc_ffn = f.count("encoder_ffn_dim");
    let dec_ffn = f.count("decoder_ffn_dim");
    let vocab = f.count("vocab_size");
    let mels = f.count("num_mel_bins");
    let source_positions = f.count("max_source_positions");
    let target_positions = f.count("max_target_positions");
    if !d.is_multiple_of(dec_heads) || !d.is_multiple_of(enc_heads) {
        f.problem("decoder_attention_heads", format!("heads must divide d_model {d}"));
    }
    // q, k, v, out projections; k has no bias.
    let attention = 4 * d * d + 3 * d;
    let mlp = |ffn: u64| 2 * d * ffn + ffn + d;
    let norm = 2 * d;
    let convs = (mels * d * 3 + d) + (d * d * 3 + d);
    let encoder = convs + source_positions * d + enc_layers * (attention + mlp(enc_ffn) + 2 * norm) + norm;
    let decoder = vocab * d + target_positions * d + dec_layers * (2 * attention + mlp(dec_ffn) + 3 * norm) + norm;
    Some(ModelFacts {
        params: encoder + decoder,
        embedding_params: vocab * d,
        layers: dec_layers,
        hidden: d,
        heads: dec_heads,
        kv_heads: dec_heads,
        head_dim: d / dec_heads.max(1),
        intermediate: dec_ffn,
        vocab,
        max_position: target_positions,
        cross_kv_positions: source_positions,
        ..blank("whisper", Arch::EncoderDecoder)
    })
}

#[cfg(test)]
mod tests;
