//! The host's read-only S3 endpoint, read by boto3 (a real Python client, run as its own
//! process) with ranged GETs: a cached model comes back byte for byte, and a model that was
//! only at the origin is pulled into the cache on its first read.

mod common;

use colo_store::{no_progress, push_dir, serve_s3, HostCache, HydrateOptions, PushOptions, S3Config, Store};
use std::process::Command;

const CHUNK: u64 = 256 * 1024;

/// Runs tests/py/s3_read.py against the endpoint; returns its JSON answer.
fn boto3_read(endpoint: &str, prefix: &str, out: &std::path::Path) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/s3_read.py");
    let output = Command::new("python3")
        .arg(script)
        .args([endpoint, "colo", prefix])
        .arg(out)
        .output()
        .expect("python3 must be installed (scripts/test installs boto3)");
    assert!(output.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(output.stdout.trim_ascii()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_cached_and_origin_models_with_ranged_gets() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path().join("store").to_str().unwrap()).unwrap();
    let opts = PushOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let mut manifests = Vec::new();
    for (name, seed) in [("cached", 1), ("remote", 2)] {
        common::write_sharded_model(&root.path().join(name), 2, 3, seed);
        manifests.push(
            push_dir(&store, &root.path().join(name), name, &opts, no_progress())
                .await
                .unwrap()
                .manifest,
        );
    }
    let cache = HostCache::new(root.path().join("cache"));
    cache
        .pull(&store, &manifests[0], &HydrateOptions::default(), no_progress())
        .finish()
        .await
        .unwrap();
    assert!(cache.complete_dir(&manifests[1]).is_none());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_s3(
        listener,
        cache.clone(),
        store.clone(),
        HydrateOptions::default(),
        S3Config::default(),
    ));

    for (manifest, label) in [
        (&manifests[0], manifests[0].revision.clone()),
        (&manifests[1], "latest".to_string()),
    ] {
        let out = root.path().join(format!("out-{}", manifest.name));
        let prefix = format!("{}/{label}/", manifest.name);
        let answer = tokio::task::spawn_blocking({
            let (endpoint, out, prefix) = (endpoint.clone(), out.clone(), prefix.clone());
            move || boto3_read(&endpoint, &prefix, &out)
        })
        .await
        .unwrap();
        let keys: Vec<String> = serde_json::from_value(answer["keys"].clone()).unwrap();
        let expected: Vec<String> = manifest.files.iter().map(|f| format!("{prefix}{}", f.path)).collect();
        assert_eq!(keys, expected, "ListObjectsV2 lists the model's files");
        assert!(answer["ranged_gets"].as_u64().unwrap() > keys.len() as u64, "{answer}");
        assert_eq!(answer["buckets"], serde_json::json!(["colo"]), "ListBuckets names the one bucket");
        // A write is refused as a denial that says why, not a 501.
        assert_eq!(answer["put"]["status"], 403, "{answer}");
        assert_eq!(answer["put"]["code"], "AccessDenied", "{answer}");
        assert!(answer["put"]["message"].as_str().unwrap().contains("read-only"), "{answer}");
        common::assert_same_model(manifest, &root.path().join(&manifest.name), &out.join(&prefix));
    }
    assert!(
        cache.complete_dir(&manifests[1]).is_some(),
        "reading a model the cache lacked pulled it into the cache"
    );
    server.abort();
}
