//! Validation of safetensors headers: the first 8 bytes give the JSON header length, the
//! header maps tensor names to dtype, shape and byte range in the data that follows.
//!
//! Weights come from users, so every way a header can lie is refused with a reason.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Headers longer than this are refused (the safetensors format sets the same limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SafetensorsError {
    #[error("file is {len} bytes, too short to hold the 8-byte header length")]
    TooShort { len: u64 },
    #[error("header length {header_len} is over the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLong { header_len: u64 },
    #[error("header length {header_len} runs past the end of the {file_len}-byte file")]
    HeaderPastEnd { header_len: u64, file_len: u64 },
    #[error("header is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("tensor {tensor:?}: unknown dtype {dtype:?}")]
    UnknownDtype { tensor: String, dtype: String },
    #[error("tensor {tensor:?}: data offsets [{begin}, {end}) are reversed")]
    ReversedOffsets { tensor: String, begin: u64, end: u64 },
    #[error("tensor {tensor:?}: shape {shape:?} of {dtype} needs {expected} bytes but its offsets hold {actual}")]
    SizeMismatch {
        tensor: String,
        dtype: Dtype,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap at byte {at}")]
    Overlap { first: String, second: String, at: u64 },
    #[error("bytes [{begin}, {end}) of the data are not covered by any tensor (before {next:?})")]
    Gap { begin: u64, end: u64, next: String },
    #[error("tensor {tensor:?} ends at byte {end} of the data, past its end at {data_len}")]
    PastEnd { tensor: String, end: u64, data_len: u64 },
    #[error("the data holds {data_len} bytes but the tensors cover only {covered}")]
    TrailingBytes { data_len: u64, covered: u64 },
}

/// The element types safetensors defines, named as its headers spell them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dtype {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

// === impl Dtype ===

impl Dtype {
    pub fn parse(s: &str) -> Option<Self> {
        use Dtype::*;
        Some(match s {
            "BOOL" => BOOL,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8_E5M2,
            "F8_E4M3" => F8_E4M3,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }

    pub fn size_bytes(self) -> u64 {
        use Dtype::*;
        match self {
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a valid header says, summarised for the manifest and the planner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSummary {
    /// Length of the JSON header in bytes (the data starts at 8 + this).
    pub header_len: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// Bytes of tensor data per dtype.
    pub bytes_by_dtype: BTreeMap<Dtype, u64>,
    /// Total elements (parameters) over all tensors.
    pub parameters: u64,
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

impl RawTensor {
    /// Tensor `name`'s entry of a header, and its dtype.
    fn read(name: &str, value: serde_json::Value) -> Result<(Self, Dtype), SafetensorsError> {
        let tensor: RawTensor = serde_json::from_value(value).map_err(|e| SafetensorsError::InvalidJson {
            reason: format!("tensor {name:?}: {e}"),
        })?;
        let dtype = Dtype::parse(&tensor.dtype).ok_or_else(|| SafetensorsError::UnknownDtype {
            tensor: name.to_string(),
            dtype: tensor.dtype.clone(),
        })?;
        Ok((tensor, dtype))
    }
}

/// Each tensor's shape, by name, from a JSON header (checked by `parse_header`).
pub fn tensor_shapes(header: &[u8]) -> Result<BTreeMap<String, Vec<u64>>, SafetensorsError> {
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| SafetensorsError::InvalidJson { reason: e.to_string() })?;
    Ok(raw
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(name, value)| Some((name, serde_json::from_value::<RawTensor>(value).ok()?.shape)))
        .collect())
}

/// Reads the header length from the first 8 bytes of a file of `file_len` bytes and checks
/// that the header fits. Returns how many bytes after those 8 hold the JSON header.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, SafetensorsError> {
    if file_len < 8 || prefix.len() < 8 {
        return Err(SafetensorsError::TooShort {
            len: file_len.min(prefix.len() as u64),
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&prefix[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLong { header_len });
    }
    if header_len > file_len - 8 {
        return Err(SafetensorsError::HeaderPastEnd { header_len, file_len });
    }
    Ok(header_len)
}

/// Validates the JSON header of a file of `file_len` bytes: dtypes known, each tensor's byte
/// range matching its shape, and the ranges tiling the data exactly (no overlap, no gap, nothing
/// past the end).
pub fn parse_header(header: &[u8], file_len: u64) -> Result<HeaderSummary, SafetensorsError> {
    let header_len = header.len() as u64;
    let data_len = file_len
        .checked_sub(8 + header_len)
        .ok_or(SafetensorsError::HeaderPastEnd { header_len, file_len })?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| SafetensorsError::InvalidJson { reason: e.to_string() })?;

    let mut spans = Vec::with_capacity(raw.len());
    let mut summary = HeaderSummary {
        header_len,
        ..Default::default()
    };
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let (tensor, dtype) = RawTensor::read(&name, value)?;
        let (begin, end) = tensor.data_offsets;
        if end < begin {
            return Err(SafetensorsError::ReversedOffsets { tensor: name, begin, end });
        }
        let elements = tensor.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        let expected = elements.and_then(|n| n.checked_mul(dtype.size_bytes()));
        if expected != Some(end - begin) {
            return Err(SafetensorsError::SizeMismatch {
                tensor: name,
                dtype,
                shape: tensor.shape,
                expected: expected.unwrap_or(u64::MAX),
                actual: end - begin,
            });
        }
        summary.tensors += 1;
        summary.parameters += elements.unwrap_or(0);
        *summary.bytes_by_dtype.entry(dtype).or_default() += end - begin;
        spans.push((begin, end, name));
    }

    spans.sort();
    let mut covered = 0u64;
    let mut previous = String::new();
    for (begin, end, name) in spans {
        if end > data_len {
            return Err(SafetensorsError::PastEnd {
                tensor: name,
                end,
                data_len,
            });
        }
        if begin < covered {
            return Err(SafetensorsError::Overlap {
                first: previous,
                second: name,
                at: begin,
            });
        }
        if begin > covered {
            return Err(SafetensorsError::Gap {
                begin: covered,
                end: begin,
                next: name,
            });
        }
        covered = end;
        previous = name;
    }
    if covered != data_len {
        return Err(SafetensorsError::TrailingBytes { data_len, covered });
    }
    Ok(summary)
}

/// Where one tensor's bytes are: its dtype, shape and byte range in the data section (which
/// starts after the 8-byte length and the JSON header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpan {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// Each tensor's span, by name, from the JSON header of a file of `file_len` bytes, after
/// `parse_header` has checked that the spans tile the data exactly: a loader reading tensors
/// by these ranges never reads outside the file or past another tensor.
pub fn tensor_spans(header: &[u8], file_len: u64) -> Result<BTreeMap<String, TensorSpan>, SafetensorsError> {
    parse_header(header, file_len)?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| SafetensorsError::InvalidJson { reason: e.to_string() })?;
    let mut spans = BTreeMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let (tensor, dtype) = RawTensor::read(&name, value)?;
        let (begin, end) = tensor.data_offsets;
        spans.insert(
            name,
            TensorSpan {
                dtype,
                shape: tensor.shape,
                begin,
                end,
            },
        );
    }
    Ok(spans)
}

#[cfg(test)]
mod tests;
