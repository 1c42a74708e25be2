//! Push and hydrate through a real local object store: verified chunks, corrupt chunks
//! refused, interrupted pulls resumed without refetching what was verified.

mod common;

use colo_store::{hydrate, no_progress, push_dir, HostCache, HydrateOptions, PushOptions, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const CHUNK: u64 = 256 * 1024;

async fn pushed(root: &std::path::Path) -> (Store, colo_model::Manifest, std::path::PathBuf) {
    let src = root.join("src");
    common::write_model_dir(&src, 8, 1);
    let store = Store::open(root.join("store").to_str().unwrap()).unwrap();
    let opts = PushOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let report = push_dir(&store, &src, "tiny", &opts, no_progress()).await.unwrap();
    (store, report.manifest, src)
}

#[tokio::test]
async fn push_then_hydrate_round_trips() {
    let root = tempfile::tempdir().unwrap();
    let (store, manifest, src) = pushed(root.path()).await;
    assert_eq!(store.models().await.unwrap(), vec!["tiny".to_string()]);
    let st = manifest.file("model.safetensors").unwrap();
    assert_eq!(st.safetensors.as_ref().unwrap().tensors, 1);
    assert_eq!(st.chunks.len() as u64, st.size.div_ceil(CHUNK));

    let cache = HostCache::new(root.path().join("cache"));
    let report = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(report.bytes_fetched, manifest.total_bytes());
    let dir = cache.complete_dir(&manifest).expect("complete after hydration");
    common::assert_same_files(&src, &dir);

    let again = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(again.bytes_fetched, 0, "a cached model is not fetched again");
}

#[tokio::test]
async fn a_corrupt_chunk_is_refused_and_nothing_is_published() {
    let root = tempfile::tempdir().unwrap();
    let (store, manifest, _) = pushed(root.path()).await;
    let stored = root
        .path()
        .join("store/models/tiny/rev")
        .join(&manifest.revision)
        .join("model.safetensors");
    let mut bytes = std::fs::read(&stored).unwrap();
    let at = 3 * CHUNK as usize + 17;
    bytes[at] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let cache = HostCache::new(root.path().join("cache"));
    let err = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap_err();
    match &err {
        StoreError::Digest { file, chunk, .. } => {
            assert_eq!(file, "model.safetensors");
            assert_eq!(*chunk, 3);
        }
        other => panic!("expected a digest error, got {other}"),
    }
    assert!(
        err.to_string().contains("model.safetensors") && err.to_string().contains("chunk 3"),
        "{err}"
    );
    let dir = cache.model_dir("tiny", &manifest.revision);
    assert!(
        !dir.join("model.safetensors").exists(),
        "a file with a bad chunk must not look whole"
    );
    assert!(cache.complete_dir(&manifest).is_none());
}

#[tokio::test]
async fn an_interrupted_pull_fetches_only_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let (store, manifest, src) = pushed(root.path()).await;
    let total = manifest.total_bytes();
    let cache = HostCache::new(root.path().join("cache"));

    // First pull: one chunk at a time, killed once about half the bytes are in.
    let seen = Arc::new(AtomicU64::new(0));
    let (half_tx, half_rx) = tokio::sync::oneshot::channel::<()>();
    let half_tx = std::sync::Mutex::new(Some(half_tx));
    let progress: colo_store::Progress = {
        let seen = seen.clone();
        Arc::new(move |n| {
            if seen.fetch_add(n, Ordering::SeqCst) + n >= total / 2 {
                if let Some(tx) = half_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        })
    };
    let pull = {
        let (store, manifest, cache) = (store.clone(), manifest.clone(), cache.clone());
        tokio::spawn(async move {
            hydrate(
                &store,
                &manifest,
                &cache,
                &HydrateOptions {
                    concurrency: Some(1),
                    range_bytes: Some(CHUNK),
                    ..Default::default()
                },
                progress,
            )
            .await
        })
    };
    half_rx.await.unwrap();
    pull.abort();
    assert!(
        pull.await.unwrap_err().is_cancelled(),
        "the first pull should have been killed mid-way"
    );
    let before_kill = seen.load(Ordering::SeqCst);
    assert!(before_kill < total, "killed too late to test anything");

    let report = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    assert!(report.bytes_fetched > 0);
    assert!(
        report.bytes_fetched <= total - before_kill,
        "resumed pull fetched {} bytes, but {} of {total} were already verified",
        report.bytes_fetched,
        before_kill
    );
    assert_eq!(report.bytes_fetched + report.bytes_reused, total);
    common::assert_same_files(&src, &cache.complete_dir(&manifest).unwrap());
}

#[tokio::test]
async fn malformed_safetensors_is_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    common::write_model_dir(&src, 1, 2);
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(src.join("model.safetensors"), bytes).unwrap();
    let store = Store::open(root.path().join("store").to_str().unwrap()).unwrap();
    let err = push_dir(&store, &src, "bad", &PushOptions::default(), no_progress())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("model.safetensors") && text.contains("past"), "{text}");
    assert!(
        store.models().await.unwrap().is_empty(),
        "nothing may be visible after a refused push"
    );
    assert!(matches!(store.manifest("bad").await, Err(StoreError::NotFound { .. })));
}
