//! Quantization what-ifs: the bytes the weights take at bf16, fp8, int8 or int4, and the
//! precision the KV cache is kept in.
//!
//! These are weight-only formats as vLLM serves them: the token embedding and the output head
//! stay at 16 bits; int4 (AWQ/GPTQ style) adds a 16-bit scale and a 4-bit zero point per group
//! of 128 weights. A GGUF file is served as it is stored (`Quant::Gguf`): its bytes are exact.

use crate::config::ModelFacts;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes of scale and zero point that int4 adds per weight: 2.5 bytes per group of 128.
const INT4_GROUP_OVERHEAD: f64 = 2.5 / 128.0;

/// The precision the weights are served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    Bf16,
    Fp8,
    Int8,
    Int4,
    /// The weights as a GGUF file stores them, in its own block formats: llama.cpp serves the
    /// file as it is, so this is the one format a GGUF model has.
    Gguf,
}

/// The precision of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    Bf16,
    Fp8,
}

/// The arithmetic the tensor cores run for a given weight format on a given card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    Bf16,
    Fp8,
    Int8,
}

// === impl Quant ===

impl Quant {
    /// The formats a safetensors checkpoint may be served in, least lossy first: the order the
    /// recommendation prefers.
    pub const ALL: [Quant; 4] = [Quant::Bf16, Quant::Fp8, Quant::Int8, Quant::Int4];

    /// Every format there is, in the order the recommendation prefers.
    pub const EVERY: [Quant; 5] = [Quant::Bf16, Quant::Fp8, Quant::Int8, Quant::Int4, Quant::Gguf];

    pub fn parse(s: &str) -> Option<Quant> {
        Quant::EVERY.into_iter().find(|q| q.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quant::Bf16 => "bf16",
            Quant::Fp8 => "fp8",
            Quant::Int8 => "int8",
            Quant::Int4 => "int4",
            Quant::Gguf => "gguf",
        }
    }

    /// Bytes per quantized weight, scales included; `None` for GGUF, whose bytes are the file's.
    pub fn bytes_per_weight(self) -> Option<f64> {
        match self {
            Quant::Bf16 => Some(2.0),
            Quant::Fp8 | Quant::Int8 => Some(1.0),
            Quant::Int4 => Some(0.5 + INT4_GROUP_OVERHEAD),
            Quant::Gguf => None,
        }
    }

    /// Bytes of `facts`' weights served in this format (a GGUF file's: exactly as stored).
    pub fn weights_bytes(self, facts: &ModelFacts) -> f64 {
        let Some(per_weight) = self.bytes_per_weight() else {
            return facts.weights_bytes as f64;
        };
        let embedding = facts.embedding_params.min(facts.params) as f64;
        let rest = facts.params as f64 - embedding;
        embedding * 2.0 + rest * per_weight
    }

    /// Whether a model whose facts are `facts` can be served in this format: a GGUF file only
    /// as itself, a safetensors checkpoint in any format but GGUF.
    pub fn applies_to(self, facts: &ModelFacts) -> bool {
        (self == Quant::Gguf) == facts.gguf.is_some()
    }

    /// The tensor-core arithmetic on a card with the given fp8 and int8 support: fp8 and int8
    /// weights run natively where the card has the units (W8A8), else they are widened to bf16
    /// on the fly (W8A16, as vLLM's Marlin kernels do on Ampere); int4 always runs as bf16.
    pub fn compute(self, has_fp8: bool, has_int8: bool) -> Compute {
        match self {
            Quant::Fp8 if has_fp8 => Compute::Fp8,
            Quant::Int8 if has_int8 => Compute::Int8,
            _ => Compute::Bf16,
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl KvDtype ===

impl KvDtype {
    pub fn parse(s: &str) -> Option<KvDtype> {
        match s {
            "bf16" => Some(KvDtype::Bf16),
            "fp8" => Some(KvDtype::Fp8),
            _ => None,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_by_table() {
        let facts = ModelFacts::from_config(include_bytes!("../../../testdata/configs/llama-3.1-70b/config.json")).unwrap();
        const GB: f64 = 1e9;
        // 70.55 B parameters, 2.10 B of them embedding and head.
        let cases = [(Quant::Bf16, 141.1), (Quant::Fp8, 72.7), (Quant::Int8, 72.7), (Quant::Int4, 39.8)];
        for (quant, expected_gb) in cases {
            let got = quant.weights_bytes(&facts) / GB;
            assert!((got - expected_gb).abs() < 0.1, "{quant}: {got:.2} GB, expected {expected_gb}");
        }
        for quant in Quant::EVERY {
            assert_eq!(Quant::parse(quant.as_str()), Some(quant));
        }
        assert_eq!(Quant::parse("int3"), None);
        assert_eq!(Quant::Fp8.compute(false, true), Compute::Bf16);
        assert_eq!(Quant::Int8.compute(false, true), Compute::Int8);
    }
}
