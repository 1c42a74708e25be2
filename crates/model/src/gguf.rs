//! Validation of GGUF files, llama.cpp's one-file model format: a header (magic, version,
//! counts), typed key/value metadata, tensor descriptions, then the tensor data, each tensor
//! at an aligned offset.
//!
//! Weights come from users, so every way a header can lie is refused with a reason that names
//! the key or tensor, as for safetensors. The rules are the ones llama.cpp's own loader applies:
//! version 2 or 3, known value and tensor types, at most 4 dimensions, rows made of whole
//! blocks, each tensor at the offset the ones before it (padded to the alignment) put it, and
//! all data inside the file.
//!
//! The parser reads from the bytes it is handed (a prefix of the file). When the header runs
//! past them but not past the file, it says how many bytes it needs (`GgufError::NeedBytes`),
//! so the caller can read more and try again.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

mod types;

pub use types::GgmlType;

#[cfg(test)]
mod tests;

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Headers (everything before the tensor data) longer than this are refused.
pub const MAX_HEADER_BYTES: u64 = 512 * 1024 * 1024;
/// Most metadata keys and most tensors a file may declare.
pub const MAX_COUNT: u64 = 1 << 20;
/// Dimensions a tensor may have (ggml's limit).
pub const MAX_DIMS: u32 = 4;
/// Alignment of tensor data when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// String values longer than this are kept in the metadata summary as their length only.
const KEEP_STRING: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    #[error("file is {len} bytes, too short for a GGUF header (24 bytes)")]
    TooShort { len: u64 },
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { found: String },
    #[error("GGUF version {version} is not supported (2 and 3 are); convert the model with a current llama.cpp")]
    Version { version: u32 },
    #[error("the header needs at least {at_least} bytes of the file; {have} were read")]
    NeedBytes { at_least: u64, have: u64 },
    #[error("{what} runs past the end of the {file_len}-byte file (at byte {at})")]
    PastFileEnd { what: String, at: u64, file_len: u64 },
    #[error("the header is over the {MAX_HEADER_BYTES}-byte limit (it reaches byte {at})")]
    HeaderTooLong { at: u64 },
    #[error("the file declares {count} {what}; the limit is {MAX_COUNT}")]
    TooMany { what: &'static str, count: u64 },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("metadata key {key:?} has unknown value type {value_type}")]
    UnknownValueType { key: String, value_type: u32 },
    #[error("metadata key {key:?} is an array of arrays, which GGUF readers do not take")]
    NestedArray { key: String },
    #[error("metadata key {key:?} is a bool stored as {byte}, not 0 or 1")]
    BadBool { key: String, byte: u8 },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("general.alignment must be a u32 power of two; it is {value}")]
    BadAlignment { value: String },
    #[error("tensor {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },
    #[error("tensor {tensor:?} has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed")]
    Dims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?} has dimension {dim}, over 2^63 - 1")]
    DimTooLarge { tensor: String, dim: u64 },
    #[error("tensor {tensor:?} has unknown type {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: rows of {row} elements are not whole blocks of {block} ({kind})")]
    PartialBlock {
        tensor: String,
        row: u64,
        block: u64,
        kind: GgmlType,
    },
    #[error("tensor {tensor:?} is too large to size")]
    SizeOverflow { tensor: String },
    #[error("tensor {tensor:?} is at data offset {offset}; the tensors before it put it at {expected}")]
    Offset { tensor: String, offset: u64, expected: u64 },
    #[error("tensor {tensor:?} ends at byte {end} of the data, past its end at {data_len}")]
    PastEnd { tensor: String, end: u64, data_len: u64 },
    #[error("the data holds {data_len} bytes but the tensors, padded, take at most {covered}")]
    TrailingBytes { data_len: u64, covered: u64 },
}

/// One metadata value, as the summary keeps it: scalars whole, long strings and arrays by size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum MetaValue {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    /// A string longer than the summary keeps: its length in bytes.
    LongString(u64),
    /// An array: the type name of its elements and how many there are.
    Array {
        element: String,
        len: u64,
    },
}

/// What a valid GGUF file holds, summarised for the manifest, the planner and `model inspect`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufSummary {
    pub version: u32,
    /// Where the tensor data starts: the header's length with its padding.
    pub data_offset: u64,
    pub alignment: u64,
    pub tensors: u64,
    /// Elements of all tensors.
    pub parameters: u64,
    /// Elements of the token embedding and the output head (`token_embd`, `output`).
    pub embedding_parameters: u64,
    /// Bytes of tensor data by tensor type.
    pub bytes_by_type: BTreeMap<GgmlType, u64>,
    /// `general.architecture` (`llama`, `qwen2`, `bert`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `general.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The architecture's hyperparameters (`<arch>.context_length` and the like), by the key
    /// without the architecture prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hyper: BTreeMap<String, u64>,
    /// Tokens in the vocabulary (`tokenizer.ggml.tokens`'s length, or `<arch>.vocab_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<u64>,
}

/// A parsed GGUF header: the summary, and every metadata key with its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Gguf {
    pub summary: GgufSummary,
    pub metadata: BTreeMap<String, MetaValue>,
}

/// The hyperparameters the summary keeps, by their key after `<arch>.`.
const HYPER_KEYS: [&str; 8] = [
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "vocab_size",
];

// === impl GgufSummary ===

impl GgufSummary {
    /// All tensor bytes.
    pub fn weights_bytes(&self) -> u64 {
        self.bytes_by_type.values().sum()
    }

    /// The tensor type that holds the most bytes (what a file is called by: `Q4_K`, `F16`).
    pub fn main_type(&self) -> Option<GgmlType> {
        self.bytes_by_type.iter().max_by_key(|(_, bytes)| **bytes).map(|(kind, _)| *kind)
    }

    /// Bits per weight over all tensors.
    pub fn bits_per_weight(&self) -> f64 {
        if self.parameters == 0 {
            return 0.0;
        }
        self.weights_bytes() as f64 * 8.0 / self.parameters as f64
    }

    /// One hyperparameter, by its key after `<arch>.`.
    pub fn hyper(&self, key: &str) -> Option<u64> {
        self.hyper.get(key).copied()
    }
}

/// Parses and validates the GGUF file whose first bytes are `bytes` and whose length is
/// `file_len`.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Gguf, GgufError> {
    let mut r = Reader { bytes, at: 0, file_len };
    if file_len < 24 || bytes.len() < 4 {
        return Err(GgufError::TooShort {
            len: file_len.min(bytes.len() as u64),
        });
    }
    let magic = r.take(4, "the magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version { version });
    }
    let tensor_count = r.count("tensors")?;
    let kv_count = r.count("metadata keys")?;
    let metadata = read_metadata(&mut r, kv_count)?;
    let alignment = alignment_of(&metadata)?;
    let tensors = read_tensor_infos(&mut r, tensor_count)?;
    let data_offset = r.at.div_ceil(alignment).saturating_mul(alignment);
    if data_offset > MAX_HEADER_BYTES {
        return Err(GgufError::HeaderTooLong { at: data_offset });
    }
    let data_len = file_len.checked_sub(data_offset).ok_or_else(|| GgufError::PastFileEnd {
        what: "the header's padding".into(),
        at: data_offset,
        file_len,
    })?;
    let mut summary = GgufSummary {
        version,
        data_offset,
        alignment,
        tensors: tensor_count,
        ..GgufSummary::default()
    };
    check_layout(&tensors, alignment, data_len, &mut summary)?;
    describe(&metadata, &mut summary);
    Ok(Gguf { summary, metadata })
}

/// One tensor's description, as read.
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    kind: GgmlType,
    offset: u64,
}

fn read_metadata(r: &mut Reader<'_>, count: u64) -> Result<BTreeMap<String, MetaValue>, GgufError> {
    let mut metadata = BTreeMap::new();
    for n in 0..count {
        let key = r.string(|| format!("metadata key {n}"))?;
        let value_type = r.u32(&format!("the type of {key:?}"))?;
        let value = read_value(r, &key, value_type, true)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
    }
    Ok(metadata)
}

/// Reads one value of `value_type` for `key`; an array's elements are read (so that the header
/// is walked whole and checked) but not kept.
fn read_value(r: &mut Reader<'_>, key: &str, value_type: u32, top: bool) -> Result<MetaValue, GgufError> {
    let what = || format!("the value of {key:?}");
    Ok(match value_type {
        0 => MetaValue::Uint(u64::from(r.take(1, &what())?[0])),
        1 => MetaValue::Int(i64::from(r.take(1, &what())?[0] as i8)),
        2 => MetaValue::Uint(u64::from(r.u16(&what())?)),
        3 => MetaValue::Int(i64::from(r.u16(&what())? as i16)),
        4 => MetaValue::Uint(u64::from(r.u32(&what())?)),
        5 => MetaValue::Int(i64::from(r.u32(&what())? as i32)),
        6 => MetaValue::Float(f64::from(f32::from_bits(r.u32(&what())?))),
        7 => match r.take(1, &what())?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            byte => {
                return Err(GgufError::BadBool {
                    key: key.to_string(),
                    byte,
                })
            }
        },
        8 => {
            let s = r.string(what)?;
            if s.len() > KEEP_STRING {
                MetaValue::LongString(s.len() as u64)
            } else {
                MetaValue::String(s)
            }
        }
        9 if !top => return Err(GgufError::NestedArray { key: key.to_string() }),
        9 => {
            let element = r.u32(&what())?;
            let len = r.u64(&what())?;
            let Some(name) = value_type_name(element) else {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    value_type: element,
                });
            };
            if element == 9 {
                return Err(GgufError::NestedArray { key: key.to_string() });
            }
            // Every element takes a byte at least: a count the file cannot hold is a lie.
            if len > r.file_len.saturating_sub(r.at) {
                return Err(GgufError::PastFileEnd {
                    what: format!("the {len} elements of {key:?}"),
                    at: r.at,
                    file_len: r.file_len,
                });
            }
            match value_type_width(element) {
                Some(width) => {
                    let bytes = len.checked_mul(width).ok_or_else(|| GgufError::PastFileEnd {
                        what: what(),
                        at: r.at,
                        file_len: r.file_len,
                    })?;
                    if element == 7 {
                        for _ in 0..len {
                            read_value(r, key, 7, false)?;
                        }
                    } else {
                        r.skip(bytes, &what())?;
                    }
                }
                None => {
                    for _ in 0..len {
                        read_value(r, key, element, false)?;
                    }
                }
            }
            MetaValue::Array {
                element: name.to_string(),
                len,
            }
        }
        10 => MetaValue::Uint(r.u64(&what())?),
        11 => MetaValue::Int(r.u64(&what())? as i64),
        12 => MetaValue::Float(f64::from_bits(r.u64(&what())?)),
        other => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                value_type: other,
            })
        }
    })
}

fn value_type_name(value_type: u32) -> Option<&'static str> {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
    ];
    NAMES.get(value_type as usize).copied()
}

/// Bytes of one value of a fixed-width type; `None` for strings and arrays.
fn value_type_width(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn alignment_of(metadata: &BTreeMap<String, MetaValue>) -> Result<u64, GgufError> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::Uint(a)) if *a > 0 && a.is_power_of_two() && *a <= u64::from(u32::MAX) => Ok(*a),
        Some(other) => Err(GgufError::BadAlignment {
            value: format!("{other:?}"),
        }),
    }
}

fn read_tensor_infos(r: &mut Reader<'_>, count: u64) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for n in 0..count {
        let name = r.string(|| format!("the name of tensor {n}"))?;
        let what = format!("tensor {name:?}");
        let n_dims = r.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Dims { tensor: name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let dim = r.u64(&what)?;
            if dim > i64::MAX as u64 {
                return Err(GgufError::DimTooLarge { tensor: name, dim });
            }
            dims.push(dim);
        }
        let type_id = r.u32(&what)?;
        let kind = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        let offset = r.u64(&what)?;
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        tensors.push(TensorInfo { name, dims, kind, offset });
    }
    Ok(tensors)
}

/// Checks that each tensor sits where the ones before it put it, inside the data, and sums
/// what the summary reports.
fn check_layout(tensors: &[TensorInfo], alignment: u64, data_len: u64, summary: &mut GgufSummary) -> Result<(), GgufError> {
    let mut expected = 0u64;
    let mut end_of_last = 0u64;
    for t in tensors {
        let (block, block_bytes) = t.kind.block();
        let row = t.dims[0];
        if row % block != 0 {
            return Err(GgufError::PartialBlock {
                tensor: t.name.clone(),
                row,
                block,
                kind: t.kind,
            });
        }
        let overflow = || GgufError::SizeOverflow { tensor: t.name.clone() };
        let elements = t.dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d)).ok_or_else(overflow)?;
        let bytes = (elements / block).checked_mul(block_bytes).ok_or_else(overflow)?;
        if t.offset != expected {
            return Err(GgufError::Offset {
                tensor: t.name.clone(),
                offset: t.offset,
                expected,
            });
        }
        let end = t.offset.checked_add(bytes).ok_or_else(overflow)?;
        if end > data_len {
            return Err(GgufError::PastEnd {
                tensor: t.name.clone(),
                end,
                data_len,
            });
        }
        end_of_last = end;
        expected = end.checked_next_multiple_of(alignment).ok_or_else(overflow)?;
        summary.parameters = summary.parameters.saturating_add(elements);
        if t.name.starts_with("token_embd.") || t.name.starts_with("output.") {
            summary.embedding_parameters = summary.embedding_parameters.saturating_add(elements);
        }
        *summary.bytes_by_type.entry(t.kind).or_default() += bytes;
    }
    // The last tensor may be padded or not; anything past its padding is not the model's.
    let covered = end_of_last.checked_next_multiple_of(alignment).unwrap_or(u64::MAX);
    if data_len > covered {
        return Err(GgufError::TrailingBytes { data_len, covered });
    }
    Ok(())
}

/// Fills in what the metadata says about the model.
fn describe(metadata: &BTreeMap<String, MetaValue>, summary: &mut GgufSummary) {
    let string = |key: &str| match metadata.get(key) {
        Some(MetaValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    summary.architecture = string("general.architecture");
    summary.name = string("general.name");
    if let Some(arch) = &summary.architecture {
        for key in HYPER_KEYS {
            if let Some(MetaValue::Uint(v)) = metadata.get(&format!("{arch}.{key}")) {
                summary.hyper.insert(key.to_string(), *v);
            }
        }
    }
    summary.vocab = match metadata.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array { len, .. }) => Some(*len),
        _ => summary.hyper("vocab_size"),
    };
}

/// A cursor over the bytes handed in, which knows how long the whole file is.
struct Reader<'a> {
    bytes: &'a [u8],
    at: u64,
    file_len: u64,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.at.checked_add(n).ok_or_else(|| GgufError::PastFileEnd {
            what: what.to_string(),
            at: self.at,
            file_len: self.file_len,
        })?;
        if end > self.file_len {
            return Err(GgufError::PastFileEnd {
                what: what.to_string(),
                at: self.at,
                file_len: self.file_len,
            });
        }
        if end > MAX_HEADER_BYTES {
            return Err(GgufError::HeaderTooLong { at: end });
        }
        if end > self.bytes.len() as u64 {
            return Err(GgufError::NeedBytes {
                at_least: end,
                have: self.bytes.len() as u64,
            });
        }
        let slice = &self.bytes[self.at as usize..end as usize];
        self.at = end;
        Ok(slice)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        self.take(n, what).map(|_| ())
    }

    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }

    /// A count of items, refused when it is beyond what any real file declares.
    fn count(&mut self, what: &'static str) -> Result<u64, GgufError> {
        let count = self.u64(what)?;
        if count > MAX_COUNT {
            return Err(GgufError::TooMany { what, count });
        }
        Ok(count)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&what())?;
        let bytes = self.take(len, &what())?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::NotUtf8 { what: what() })
    }
}
