//! Helpers shared by the store's integration tests: a small model directory on disk.

use std::path::Path;

/// Writes a model directory: config.json, a valid safetensors file of about `mib` MiB of
/// random weights, a tokenizer file and a nested pooling config.
pub fn write_model_dir(dir: &Path, mib: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), br#"{"version":"1.0"}"#).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), br#"{"pooling_mode_mean_tokens":true}"#).unwrap();
    let n = mib * 1024 * 1024 / 4;
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * 4);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let mut data = vec![0u8; n * 4];
    rng.fill(&mut data[..]);
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

/// Asserts that every file of `src` is byte-for-byte present under `dst`.
pub fn assert_same_files(src: &Path, dst: &Path) {
    for rel in ["config.json", "tokenizer.json", "1_Pooling/config.json", "model.safetensors"] {
        let a = std::fs::read(src.join(rel)).unwrap();
        let b = std::fs::read(dst.join(rel)).unwrap_or_else(|e| panic!("{rel} missing from the cache: {e}"));
        assert!(a == b, "{rel} differs after hydration");
    }
}
