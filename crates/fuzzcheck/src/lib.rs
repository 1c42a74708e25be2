//! The checks the fuzz targets run, one function per target: each takes any bytes and panics
//! only when colo's code misbehaves on them (a panic of its own, or a verdict that disagrees
//! with the reference it is checked against). `fuzz/fuzz_targets/*.rs` call them under
//! libFuzzer; `tests/corpus.rs` replays the committed corpora and crashes through them.

use colo_core::{Demand, Regions};

/// A target's check: any bytes in, a panic only when colo misbehaves.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus under `fuzz/corpus/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("edge_request", edge_request),
    ("edge_response", edge_response),
    ("safetensors_header", safetensors_header),
    ("gguf_header", gguf_header),
    ("manifest", manifest),
    ("config_json", config_json),
    ("demand_toml", demand_toml),
    ("fleet_toml", fleet_toml),
    ("load_header", load_header),
    ("replay_header", replay_header),
];

/// The edge's own HTTP/1.1 request parser against httparse and RFC 9112's framing rules.
pub fn edge_request(data: &[u8]) {
    colo_edge::fuzzing::request(data);
}

/// A machine's answer as the edge's upstream client reads it, to a GET and to a HEAD, against
/// httparse and RFC 9112's framing rules.
pub fn edge_response(data: &[u8]) {
    colo_edge::fuzzing::response(data, false);
    colo_edge::fuzzing::response(data, true);
}

/// A safetensors file: its 8-byte length, then the JSON header, then the data. A header that
/// passes says only what fits in the file.
pub fn safetensors_header(data: &[u8]) {
    let len = data.len() as u64;
    let Ok(header_len) = colo_model::safetensors::header_len(data, len) else {
        return;
    };
    let Some(header) = data.get(8..8 + header_len as usize) else {
        panic!("header_len {header_len} accepted past the end of {len} bytes");
    };
    if let Ok(summary) = colo_model::safetensors::parse_header(header, len) {
        let bytes: u64 = summary.bytes_by_dtype.values().sum();
        assert!(bytes <= len, "tensors of {bytes} bytes in a file of {len}");
    }
    let _ = colo_model::safetensors::tensor_shapes(header);
}

/// A GGUF file's header, read from its first bytes.
pub fn gguf_header(data: &[u8]) {
    if let Ok(gguf) = colo_model::gguf::parse(data, data.len() as u64) {
        let _ = colo_model::ModelFacts::from_gguf(&gguf.summary);
    }
}

/// A model manifest, and what a manifest that parses says of itself.
pub fn manifest(data: &[u8]) {
    if let Ok(manifest) = colo_model::Manifest::from_json(data) {
        let _ = manifest.total_bytes();
        let _ = manifest.to_json();
    }
}

/// A config.json, the planner's facts from it, and their sizes.
pub fn config_json(data: &[u8]) {
    if let Ok(facts) = colo_model::ModelFacts::from_config(data) {
        let _ = facts.kv_bytes_per_token(2);
        let _ = facts.kv_bytes_per_sequence(2);
        let _ = facts.contradictions(&Default::default());
    }
}

/// A demand.toml, and its validation against the built-in regions.
pub fn demand_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(demand) = toml::from_str::<Demand>(text) {
        let _ = demand.validate(&Regions::builtin());
    }
}

/// A fleet.toml.
pub fn fleet_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<colo_policy::Fleet>(text);
}

/// An engine's `colo-load` report header.
pub fn load_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = colo_policy::LoadReport::parse(text, 1);
}

/// A machine's `colo-replay` header.
pub fn replay_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = colo_policy::Replay::parse(text);
}
