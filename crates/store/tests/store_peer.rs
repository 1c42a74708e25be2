//! Two host caches in one region, the first serving its cache over a real socket: the second
//! pulls every chunk from it and nothing from the origin; a peer that dies mid-pull or sends a
//! bad chunk costs a fall back to the origin, never a failed or corrupt pull.

mod common;

use common::Served;

use colo_store::{no_progress, peer_router, push_dir, HostCache, HydrateOptions, PushOptions, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const CHUNK: u64 = 256 * 1024;

struct Region {
    _root: tempfile::TempDir,
    store: Store,
    manifest: colo_model::Manifest,
    src: std::path::PathBuf,
    first: HostCache,
    second: HostCache,
}

/// Pushes a model, pulls it into the first host's cache, and leaves the second's empty.
async fn region() -> Region {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    common::write_sharded_model(&src, 3, 12, 11);
    let store = Store::open(root.path().join("store").to_str().unwrap()).unwrap();
    let opts = PushOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let manifest = push_dir(&store, &src, "shared", &opts, no_progress()).await.unwrap().manifest;
    let first = HostCache::new(root.path().join("host-a"));
    first
        .pull(&store, &manifest, &HydrateOptions::default(), no_progress())
        .finish()
        .await
        .unwrap();
    let second = HostCache::new(root.path().join("host-b"));
    // The second host counts its own origin reads.
    let store = Store::open(root.path().join("store").to_str().unwrap()).unwrap();
    Region {
        _root: root,
        store,
        manifest,
        src,
        first,
        second,
    }
}

fn with_peer(url: &str) -> HydrateOptions {
    HydrateOptions {
        peers: vec![url.to_string()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_host_takes_every_chunk_from_the_first() {
    let r = region().await;
    let peer = Served::start(peer_router(r.first.clone()));
    let report = r
        .second
        .pull(&r.store, &r.manifest, &with_peer(&peer.url), no_progress())
        .finish()
        .await
        .unwrap();
    let total = r.manifest.total_bytes();
    assert_eq!(report.bytes_from_peer, total);
    assert_eq!(report.bytes_from_origin, 0);
    assert_eq!(r.store.bytes_read(), 0, "no byte crossed from the origin");
    common::assert_same_model(&r.manifest, &r.src, &r.second.complete_dir(&r.manifest).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_pull_leaves_the_rest_to_the_origin() {
    let r = region().await;
    let peer = Arc::new(Mutex::new(Served::start(peer_router(r.first.clone()))));
    let url = peer.lock().unwrap().url.clone();
    let total = r.manifest.total_bytes();
    let seen = Arc::new(AtomicU64::new(0));
    // Once a third of the model is in, the peer host goes away: the progress callback stops
    // it before the pull goes on, so the kill lands mid-pull every time.
    let progress: colo_store::Progress = {
        let (peer, seen) = (peer.clone(), seen.clone());
        Arc::new(move |n| {
            if seen.fetch_add(n, Ordering::SeqCst) + n >= total / 3 {
                peer.lock().unwrap().stop();
            }
        })
    };
    let opts = HydrateOptions {
        concurrency: Some(1),
        range_bytes: Some(CHUNK),
        ..with_peer(&url)
    };
    let report = r.second.pull(&r.store, &r.manifest, &opts, progress).finish().await.unwrap();
    assert!(report.bytes_from_peer >= total / 3, "{report:?}");
    assert!(report.bytes_from_origin > 0, "{report:?}");
    assert_eq!(report.bytes_from_peer + report.bytes_from_origin, total);
    assert_eq!(r.store.bytes_read(), report.bytes_from_origin);
    common::assert_same_model(&r.manifest, &r.src, &r.second.complete_dir(&r.manifest).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_a_peer_got_wrong_comes_from_the_origin() {
    let r = region().await;
    // The first host's copy rots on disk after it was verified.
    let file = &r.manifest.files.iter().find(|f| f.path.ends_with(".safetensors")).unwrap().path;
    let cached = r.first.complete_dir(&r.manifest).unwrap().join(file);
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[2 * CHUNK as usize + 9] ^= 1;
    std::fs::write(&cached, bytes).unwrap();

    let peer = Served::start(peer_router(r.first.clone()));
    let report = r
        .second
        .pull(&r.store, &r.manifest, &with_peer(&peer.url), no_progress())
        .finish()
        .await
        .unwrap();
    assert!(
        report.bytes_from_origin >= CHUNK,
        "the bad chunk was read again from the origin: {report:?}"
    );
    common::assert_same_model(&r.manifest, &r.src, &r.second.complete_dir(&r.manifest).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_model_is_skipped() {
    let r = region().await;
    let empty = tempfile::tempdir().unwrap();
    let peer = Served::start(peer_router(HostCache::new(empty.path())));
    let report = r
        .second
        .pull(&r.store, &r.manifest, &with_peer(&peer.url), no_progress())
        .finish()
        .await
        .unwrap();
    assert_eq!(report.bytes_from_peer, 0);
    assert_eq!(report.bytes_from_origin, r.manifest.total_bytes());
    // Nor does the peer serve a partial name or a path outside the model.
    let client = reqwest::Client::new();
    let base = format!("{}{}/shared/{}/files", peer.url, colo_store::PEER_PREFIX, r.manifest.revision);
    for path in ["config.json", "../../../etc/passwd", "config.json.colo-partial"] {
        let status = client.get(format!("{base}/{path}")).send().await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{path}");
    }
}
