//! BERT-family sentence embeddings with candle, pooled the way sentence-transformers pools:
//! the model's own `modules.json` and `1_Pooling/config.json` decide mean or CLS pooling and
//! whether to L2-normalise; `sentence_bert_config.json` gives the truncation length.

use crate::encoder::{cls_pool, l2_normalize, mean_pool, Encoder, EncoderConfig};
use crate::EngineError;
use candle_core::DType;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

pub struct Embedder {
    model: Encoder,
    tokenizer: Tokenizer,
    /// Tokens per input after truncation, special tokens included.
    pub max_tokens: usize,
    pub dim: usize,
    pub pooling: Pooling,
    pub normalize: bool,
}

fn load_err(file: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Load {
        file: file.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EngineError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| load_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(load_err(path, e)),
    }
}

// === impl Embedder ===

impl Embedder {
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_from(dir, None)
    }

    /// [`Embedder::load`], reading a weight file that is still being pulled as its bytes land
    /// (see [`crate::landing`]).
    pub fn load_from(dir: &Path, landing: Option<&std::sync::Arc<crate::landing::Landing>>) -> Result<Self, EngineError> {
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?.ok_or_else(|| load_err(&config_path, "missing"))?;
        let model_type = config_json.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "bert" {
            return Err(load_err(
                &config_path,
                format!("model_type {model_type:?} is not supported for embeddings (bert is)"),
            ));
        }
        let act = config_json.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu");
        if act != "gelu" {
            return Err(load_err(&config_path, format!("hidden_act {act:?} is not supported (gelu is)")));
        }
        let field = |name: &str| {
            config_json
                .get(name)
                .and_then(|v| v.as_u64())
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| load_err(&config_path, format!("{name} must be a positive integer")))
        };
        let config = EncoderConfig {
            hidden: field("hidden_size")?,
            heads: field("num_attention_heads")?,
            layers: field("num_hidden_layers")?,
            intermediate: field("intermediate_size")?,
            max_position: field("max_position_embeddings")?,
            eps: config_json.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12),
        };
        if !config.hidden.is_multiple_of(config.heads) {
            return Err(load_err(
                &config_path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden, config.heads
                ),
            ));
        }

        let device = crate::device::open()?;
        let dtype = crate::device::compute_dtype(&device, crate::device::stored_dtype(&config_json));
        tracing::info!(device = crate::device::name(&device), ?dtype, "loading a BERT model");
        let weights = dir.join("model.safetensors");
        let vb = crate::landing::var_builder(dir, std::slice::from_ref(&weights), dtype, &device, landing)?;
        let model = Encoder::load(vb, config.clone()).map_err(|e| load_err(&weights, e))?;

        let max_position = config.max_position;
        let st_config = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_tokens = st_config
            .as_ref()
            .and_then(|c| c.get("max_seq_length"))
            .and_then(|v| v.as_u64())
            .map(|n| n as usize)
            .unwrap_or(max_position)
            .min(max_position);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| load_err(&tokenizer_path, e))?;
        // tokenizer.json may carry its own padding and a shorter truncation; the batcher pads
        // and sentence-transformers truncates to max_seq_length, so override both.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| load_err(&tokenizer_path, e))?;

        let (pooling, normalize) = pooling_of(dir)?;
        Ok(Self {
            model,
            tokenizer,
            max_tokens,
            dim: config.hidden,
            pooling,
            normalize,
        })
    }

    /// Token ids of one input, special tokens added, truncated to `max_tokens`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenize_checked(text)?.0)
    }

    /// Token ids of one input as `tokenize` gives them, and whether it was longer than
    /// `max_tokens` (and so cut).
    pub fn tokenize_checked(&self, text: &str) -> Result<(Vec<u32>, bool), EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Inference(format!("tokenizer: {e}")))?;
        Ok((encoding.get_ids().to_vec(), !encoding.get_overflowing().is_empty()))
    }

    /// Embeds a batch of tokenized inputs in one forward pass over the packed tokens.
    pub fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = inputs.iter().position(|ids| ids.is_empty()) {
            return Err(EngineError::Inference(format!("input {i} has no tokens")));
        }
        let lens: Vec<usize> = inputs.iter().map(|ids| ids.len()).collect();
        // Pooled and normalised in f32 whatever the format the model ran in.
        let hidden = self.model.forward(inputs)?.to_dtype(DType::F32)?;
        let pooled = match self.pooling {
            Pooling::Cls => cls_pool(&hidden, &lens)?,
            Pooling::Mean => mean_pool(&hidden, &lens)?,
        };
        let pooled = if self.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Reads the sentence-transformers module list: mean pooling unless `1_Pooling` says CLS;
/// normalised when a Normalize module is listed, or when there is no module list at all (the
/// convention of OpenAI's embeddings API).
fn pooling_of(dir: &Path) -> Result<(Pooling, bool), EngineError> {
    let modules = read_json(&dir.join("modules.json"))?;
    let Some(modules) = modules.as_ref().and_then(|m| m.as_array()) else {
        return Ok((Pooling::Mean, true));
    };
    let kind = |m: &serde_json::Value| m.get("type").and_then(|t| t.as_str()).unwrap_or("").to_string();
    let normalize = modules.iter().any(|m| kind(m).ends_with("Normalize"));
    let mut pooling = Pooling::Mean;
    if let Some(pool) = modules.iter().find(|m| kind(m).ends_with("Pooling")) {
        let path = pool.get("path").and_then(|p| p.as_str()).unwrap_or("1_Pooling");
        if let Some(cfg) = read_json(&dir.join(path).join("config.json"))? {
            let flag = |key: &str| cfg.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
            if flag("pooling_mode_cls_token") {
                pooling = Pooling::Cls;
            } else if !flag("pooling_mode_mean_tokens") {
                return Err(load_err(&dir.join(path), "only mean and CLS pooling are supported"));
            }
        }
    }
    Ok((pooling, normalize))
}
