//! Helpers shared by the store's integration tests: model directories on disk, byte
//! comparisons, and a real S3-compatible server.
#![allow(dead_code)]

pub mod s3;

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

/// Writes a sharded model: config.json and `shards` safetensors files of `mib` MiB of random
/// weights each (`model-00001-of-0000N.safetensors`).
pub fn write_sharded_model(dir: &Path, shards: usize, mib: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"llama"}"#).unwrap();
    for shard in 1..=shards {
        let n = mib * 1024 * 1024 / 2;
        let header = format!(r#"{{"w{shard}":{{"dtype":"F16","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * 2);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let at = bytes.len();
        bytes.resize(at + n * 2, 0);
        rng.fill_bytes(&mut bytes[at..]);
        std::fs::write(dir.join(format!("model-{shard:05}-of-{shards:05}.safetensors")), bytes).unwrap();
    }
}

/// Asserts that every file named in `manifest` is byte-for-byte the same under both dirs.
pub fn assert_same_model(manifest: &colo_model::Manifest, expected: &Path, actual: &Path) {
    for file in &manifest.files {
        let a =
            std::fs::read(expected.join(&file.path)).unwrap_or_else(|e| panic!("{} missing from {}: {e}", file.path, expected.display()));
        let b = std::fs::read(actual.join(&file.path)).unwrap_or_else(|e| panic!("{} missing from {}: {e}", file.path, actual.display()));
        assert!(
            a == b,
            "{} differs between {} and {}",
            file.path,
            expected.display(),
            actual.display()
        );
    }
}

/// Bytes of the chunks of `manifest` that are on disk under `dir` with the right digest,
/// under the file's real name or its partial name; checked by hashing, not by any record.
pub fn verified_on_disk(manifest: &colo_model::Manifest, dir: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut total = 0;
    for file in &manifest.files {
        let path = dir.join(&file.path);
        let partial = dir.join(format!("{}.colo-partial", file.path));
        let Ok(handle) = std::fs::File::open(&path).or_else(|_| std::fs::File::open(&partial)) else {
            continue;
        };
        for (idx, digest) in file.chunks.iter().enumerate() {
            let (start, end) = file.chunk_range(idx as u64, manifest.chunk_size);
            let mut buf = vec![0u8; (end - start) as usize];
            if handle.read_exact_at(&mut buf, start).is_ok() && &blake3::hash(&buf).to_hex().to_string() == digest {
                total += end - start;
            }
        }
    }
    total
}

/// A router (a host's peer API, or a stand-in peer) served on a loopback port by a runtime of
/// its own, so stopping it closes every socket, including connections kept alive by a puller.
pub struct Served {
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Served {
    pub fn start(router: axum::Router) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await
        });
        Self {
            url,
            runtime: Some(runtime),
        }
    }

    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}
