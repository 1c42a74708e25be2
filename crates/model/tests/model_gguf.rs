//! The GGUF reader against files that llama.cpp's own Python writer (`gguf`, from PyPI) made:
//! a `colo model synth` model converted by bench/to_gguf.py must read back with the same
//! shape, parameters and bytes. Needs python3 with numpy and gguf (scripts/test installs them).

use colo_model::synth::{synth_llama, SynthSpec};
use colo_model::{gguf, GgmlType, ModelFacts, Quant};
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Converts a synthesized model to GGUF with `outtype`; the file's bytes.
fn converted(spec: &SynthSpec, outtype: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in synth_llama(spec).unwrap() {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let out = dir.path().join("model.gguf");
    let run = Command::new("python3")
        .arg(repo().join("bench/to_gguf.py"))
        .arg(dir.path())
        .arg(&out)
        .args(["--outtype", outtype])
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "bench/to_gguf.py failed (needs `pip install numpy gguf`; scripts/test installs them): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(out).unwrap()
}

#[test]
fn files_from_llama_cpps_writer_read_back_whole() {
    let spec = SynthSpec {
        layers: 3,
        hidden: 128,
        heads: 4,
        kv_heads: 2,
        vocab: 700,
        intermediate: 256,
        context: 1024,
        seed: 7,
        dtype: "f32".into(),
        tie_embeddings: false,
    };
    for outtype in ["f32", "f16"] {
        let bytes = converted(&spec, outtype);
        let parsed = gguf::parse(&bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("{outtype}: {e}"));
        let s = &parsed.summary;
        assert_eq!(s.architecture.as_deref(), Some("llama"));
        assert_eq!(s.hyper("block_count"), Some(3));
        assert_eq!(s.hyper("embedding_length"), Some(128));
        assert_eq!(s.hyper("attention.head_count_kv"), Some(2));
        assert_eq!(s.hyper("context_length"), Some(1024));
        assert_eq!(s.vocab, Some(700));
        // Embedding, head, and per layer 4 attention, 3 MLP and 2 norm tensors, plus the final norm.
        assert_eq!(s.tensors, 2 + 3 * 9 + 1);
        let facts = ModelFacts::from_gguf(s).unwrap();
        let files = synth_llama(&spec).unwrap();
        let config = &files.iter().find(|(name, _)| name == "config.json").unwrap().1;
        let from_config = ModelFacts::from_config(config).unwrap();
        assert_eq!(facts.params, from_config.params, "{outtype}: the same parameters either way");
        assert_eq!(facts.embedding_params, 2 * 700 * 128);
        let main = if outtype == "f16" { GgmlType::F16 } else { GgmlType::F32 };
        assert_eq!(facts.gguf, Some(main));
        assert_eq!(Quant::Gguf.weights_bytes(&facts), s.weights_bytes() as f64);
        // The data is the tensors and their padding, no more.
        let data = bytes.len() as u64 - s.data_offset;
        assert!(data >= s.weights_bytes() && data < s.weights_bytes() + s.tensors * s.alignment);
        // The header alone is enough: the parser asks for no byte of the tensor data.
        assert!(gguf::parse(&bytes[..s.data_offset as usize], bytes.len() as u64).is_ok());
    }
}
