//! ggml's tensor types as GGUF numbers them, with the block each one packs its elements in.

use serde::{Deserialize, Serialize};

/// A tensor type: plain floats and integers, and the quantized block formats.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, GGUF id, elements per block, bytes per block). Ids 4, 5 and 31 to 33 belonged to
/// formats llama.cpp has removed, and 36 to 38 were never used in files.
const TABLE: [(GgmlType, u32, u64, u64); 32] = {
    use GgmlType::*;
    [
        (F32, 0, 1, 4),
        (F16, 1, 1, 2),
        (Q4_0, 2, 32, 18),
        (Q4_1, 3, 32, 20),
        (Q5_0, 6, 32, 22),
        (Q5_1, 7, 32, 24),
        (Q8_0, 8, 32, 34),
        (Q8_1, 9, 32, 36),
        (Q2_K, 10, 256, 84),
        (Q3_K, 11, 256, 110),
        (Q4_K, 12, 256, 144),
        (Q5_K, 13, 256, 176),
        (Q6_K, 14, 256, 210),
        (Q8_K, 15, 256, 292),
        (IQ2_XXS, 16, 256, 66),
        (IQ2_XS, 17, 256, 74),
        (IQ3_XXS, 18, 256, 98),
        (IQ1_S, 19, 256, 50),
        (IQ4_NL, 20, 32, 18),
        (IQ3_S, 21, 256, 110),
        (IQ2_S, 22, 256, 82),
        (IQ4_XS, 23, 256, 136),
        (I8, 24, 1, 1),
        (I16, 25, 1, 2),
        (I32, 26, 1, 4),
        (I64, 27, 1, 8),
        (F64, 28, 1, 8),
        (IQ1_M, 29, 256, 56),
        (BF16, 30, 1, 2),
        (TQ1_0, 34, 256, 54),
        (TQ2_0, 35, 256, 66),
        (MXFP4, 39, 32, 17),
    ]
};

// === impl GgmlType ===

impl GgmlType {
    /// The type GGUF numbers `id`, if it is one of today's.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|(_, i, _, _)| *i == id).map(|(t, _, _, _)| *t)
    }

    /// The number GGUF stores for this type.
    pub fn id(self) -> u32 {
        TABLE.iter().find(|(t, _, _, _)| *t == self).map_or(u32::MAX, |(_, id, _, _)| *id)
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        TABLE
            .iter()
            .find(|(t, _, _, _)| *t == self)
            .map_or((1, 1), |(_, _, elements, bytes)| (*elements, *bytes))
    }

    /// Bits each element takes on average.
    pub fn bits_per_element(self) -> f64 {
        let (elements, bytes) = self.block();
        bytes as f64 * 8.0 / elements as f64
    }

    /// Every type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|(t, _, _, _)| *t)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
