//! The host cache's capacity: least-recently-used eviction of models nobody uses, pins that
//! protect models in use, a clear refusal when only models in use fill it, and files from an
//! earlier boot re-verified before they are trusted.

mod common;

use colo_store::{no_progress, push_dir, HostCache, HydrateOptions, PushOptions, Store, StoreError};

const CHUNK: u64 = 256 * 1024;

/// Pushes three models of about 4 MiB each.
async fn three_models(root: &std::path::Path) -> (Store, Vec<colo_model::Manifest>) {
    let store = Store::open(root.join("store").to_str().unwrap()).unwrap();
    let mut manifests = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let src = root.join(name);
        common::write_sharded_model(&src, 1, 4, i as u64);
        let opts = PushOptions {
            chunk_size: CHUNK,
            ..Default::default()
        };
        manifests.push(push_dir(&store, &src, name, &opts, no_progress()).await.unwrap().manifest);
    }
    (store, manifests)
}

async fn pull(cache: &HostCache, store: &Store, manifest: &colo_model::Manifest) -> Result<colo_core::HydrationReport, StoreError> {
    cache
        .pull(store, manifest, &HydrateOptions::default(), no_progress())
        .finish()
        .await
}

#[tokio::test]
async fn the_least_recently_used_model_is_evicted_first() {
    let root = tempfile::tempdir().unwrap();
    let (store, m) = three_models(root.path()).await;
    let size = m[0].total_bytes();
    // Room for two models and a half.
    let cache = HostCache::with_capacity(root.path().join("cache"), Some(size * 5 / 2));
    pull(&cache, &store, &m[0]).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    pull(&cache, &store, &m[1]).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // alpha is used again after beta arrived, so beta is now the least recently used.
    cache.touch("alpha", &m[0].revision);
    pull(&cache, &store, &m[2]).await.unwrap();
    let names: Vec<String> = cache.entries().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["alpha", "gamma"], "beta was the least recently used");
    assert!(cache.used_bytes().unwrap() <= size * 5 / 2);
}

#[tokio::test]
async fn a_cache_full_of_models_in_use_refuses_a_new_one() {
    let root = tempfile::tempdir().unwrap();
    let (store, m) = three_models(root.path()).await;
    let size = m[0].total_bytes();
    let cache = HostCache::with_capacity(root.path().join("cache"), Some(size * 5 / 2));
    pull(&cache, &store, &m[0]).await.unwrap();
    pull(&cache, &store, &m[1]).await.unwrap();
    let _alpha = cache.pin("alpha", &m[0].revision);
    let _beta = cache.pin("beta", &m[1].revision);

    let err = pull(&cache, &store, &m[2]).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, StoreError::Shared(inner) if matches!(**inner, StoreError::CacheFull { .. })),
        "{text}"
    );
    for needle in ["gamma", "alpha@", "beta@", "in use", "MB"] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert!(
        cache.complete_dir(&m[0]).is_some() && cache.complete_dir(&m[1]).is_some(),
        "nothing in use was evicted"
    );
    assert!(
        cache.entries().unwrap().iter().all(|e| e.name != "gamma"),
        "nothing of the refused model was written"
    );

    // Once beta is no longer in use, gamma fits by evicting it.
    drop(_beta);
    pull(&cache, &store, &m[2]).await.unwrap();
    assert!(cache.complete_dir(&m[0]).is_some() && cache.complete_dir(&m[1]).is_none());
}

#[tokio::test]
async fn a_model_larger_than_the_cache_is_refused_up_front() {
    let root = tempfile::tempdir().unwrap();
    let (store, m) = three_models(root.path()).await;
    let cache = HostCache::with_capacity(root.path().join("cache"), Some(1024 * 1024));
    let err = pull(&cache, &store, &m[0]).await.unwrap_err().to_string();
    assert!(err.contains("alpha") && err.contains("at most 1.0 MB"), "{err}");
}

#[tokio::test]
async fn evict_refuses_a_pinned_model_and_removes_an_unpinned_one() {
    let root = tempfile::tempdir().unwrap();
    let (store, m) = three_models(root.path()).await;
    let cache = HostCache::new(root.path().join("cache"));
    pull(&cache, &store, &m[0]).await.unwrap();
    let pin = cache.pin("alpha", &m[0].revision);
    let err = cache.evict("alpha", None).unwrap_err();
    assert!(matches!(err, StoreError::InUse { pins: 1, .. }), "{err}");
    drop(pin);
    let evicted = cache.evict("alpha", None).unwrap();
    assert_eq!(evicted.len(), 1);
    assert!(cache.entries().unwrap().is_empty());
    assert!(matches!(cache.evict("alpha", None), Err(StoreError::NotCached { .. })));
}

#[tokio::test]
async fn files_from_an_earlier_boot_are_reverified_and_only_bad_chunks_refetched() {
    let root = tempfile::tempdir().unwrap();
    let (store, m) = three_models(root.path()).await;
    let cache = HostCache::new(root.path().join("cache"));
    pull(&cache, &store, &m[0]).await.unwrap();
    let dir = cache.complete_dir(&m[0]).unwrap();
    // A power cut lost one chunk of a file that was never flushed, and the host rebooted.
    let file = &m[0].files.iter().find(|f| f.path.ends_with(".safetensors")).unwrap().path;
    let mut bytes = std::fs::read(dir.join(file)).unwrap();
    bytes[CHUNK as usize..2 * CHUNK as usize].fill(0);
    std::fs::write(dir.join(file), bytes).unwrap();
    std::fs::write(dir.join(".colo-boot"), "an-earlier-boot").unwrap();

    assert!(cache.complete_dir(&m[0]).is_none(), "an earlier boot's model is not trusted as is");
    let report = pull(&cache, &store, &m[0]).await.unwrap();
    assert_eq!(report.bytes_from_origin, CHUNK, "only the lost chunk is fetched again");
    common::assert_same_model(&m[0], &root.path().join("alpha"), &cache.complete_dir(&m[0]).unwrap());
}
