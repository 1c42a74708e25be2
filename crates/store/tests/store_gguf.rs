//! Pushing GGUF models: a directory holding a `.gguf` file (and no config.json) is a model, its
//! header is validated and summarised in the manifest, and a file that lies is refused with the
//! file and the reason.

use colo_model::GgmlType;
use colo_store::{no_progress, push_dir, PushOptions, Store, StoreError};

/// A small valid GGUF file: one llama block's worth of metadata and two F32 tensors.
fn gguf_file() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes()); // tensors
    out.extend_from_slice(&2u64.to_le_bytes()); // metadata keys
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "llama.context_length");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&512u32.to_le_bytes());
    for (name, offset) in [("token_embd.weight", 0u64), ("output_norm.weight", 64)] {
        string(&mut out, name);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&16u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(32) + 128, 0);
    out
}

#[tokio::test]
async fn a_gguf_directory_is_a_model_and_its_header_is_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let src = dir.path().join("tiny-gguf");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("tiny.gguf"), gguf_file()).unwrap();
    let pushed = push_dir(&store, &src, "tiny-gguf", &PushOptions::default(), no_progress())
        .await
        .expect("a directory with a GGUF file is a model");
    let entry = pushed.manifest.file("tiny.gguf").unwrap();
    let summary = entry.gguf.as_ref().expect("the GGUF summary is in the manifest");
    assert_eq!(summary.architecture.as_deref(), Some("llama"));
    assert_eq!(summary.hyper("context_length"), Some(512));
    assert_eq!(summary.parameters, 32);
    assert_eq!(summary.bytes_by_type[&GgmlType::F32], 128);
    assert!(entry.safetensors.is_none());

    // A header that lies is refused, naming the file and the lie.
    let mut bad = gguf_file();
    bad[4..8].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(src.join("tiny.gguf"), bad).unwrap();
    let err = push_dir(&store, &src, "tiny-gguf", &PushOptions::default(), no_progress())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Gguf { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("tiny.gguf") && message.contains("version 7"), "{message}");

    // A directory with neither a config.json nor a GGUF file is not a model.
    std::fs::remove_file(src.join("tiny.gguf")).unwrap();
    std::fs::write(src.join("notes.txt"), "hello").unwrap();
    let err = push_dir(&store, &src, "tiny-gguf", &PushOptions::default(), no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no config.json and no .gguf file"), "{err}");
}
