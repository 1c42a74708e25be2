//! Hosts of one region pulling one model at once, each serving the chunks it has verified to the
//! others over real sockets while it pulls (the swarm): each chunk crosses from the origin
//! about once and every host ends with a verified copy; a host that starts later reads what the
//! first already holds; a peer that lies, stalls or dies is dropped and costs time, never a
//! failed or corrupt pull. The origin is an in-memory store whose reads are slowed per byte, so
//! the pulls overlap.

mod common;

use common::Served;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use colo_store::{no_progress, peer_router, push_dir, HostCache, HydrateOptions, PeerChunks, PushOptions, Store, PEER_PREFIX};
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::ObjectStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 256 * 1024;
const MIB: u64 = 1024 * 1024;

struct Origin {
    root: tempfile::TempDir,
    objects: Arc<dyn ObjectStore>,
    manifest: colo_model::Manifest,
    src: std::path::PathBuf,
}

/// Pushes a model of `shards` files of `mib` MiB each into an in-memory origin.
async fn origin(shards: usize, mib: usize) -> Origin {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    common::write_sharded_model(&src, shards, mib, 17);
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = Store::from_objects(objects.clone(), "memory://origin");
    let opts = PushOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let manifest = push_dir(&store, &src, "storm", &opts, no_progress()).await.unwrap().manifest;
    Origin {
        root,
        objects,
        manifest,
        src,
    }
}

impl Origin {
    /// One host's handle on the origin: reads slowed by `ns_per_byte`, bytes counted per host.
    fn for_host(&self, ns_per_byte: u32) -> Store {
        let config = ThrottleConfig {
            wait_get_per_byte: Duration::from_nanos(ns_per_byte.into()),
            ..Default::default()
        };
        Store::from_objects(Arc::new(ThrottledStore::new(self.objects.clone(), config)), "memory://origin")
    }

    fn cache(&self, host: &str) -> HostCache {
        HostCache::new(self.root.path().join(host))
    }

    fn assert_copy(&self, cache: &HostCache) {
        let dir = cache.complete_dir(&self.manifest).expect("complete");
        common::assert_same_model(&self.manifest, &self.src, &dir);
    }
}

fn swarm_opts(me: &str, peers: &[&str]) -> HydrateOptions {
    HydrateOptions {
        concurrency: Some(4),
        range_bytes: Some(MIB),
        peers: peers.iter().filter(|p| **p != me).map(|p| p.to_string()).collect(),
        self_url: Some(me.to_string()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hosts_waking_at_once_read_each_chunk_from_the_origin_about_once() {
    let o = origin(2, 24).await;
    let total = o.manifest.total_bytes();
    let caches: Vec<HostCache> = (0..4).map(|i| o.cache(&format!("host-{i}"))).collect();
    let served: Vec<Served> = caches.iter().map(|c| Served::start(peer_router(c.clone()))).collect();
    let urls: Vec<&str> = served.iter().map(|s| s.url.as_str()).collect();
    let stores: Vec<Store> = (0..4).map(|_| o.for_host(60)).collect();
    let pulls: Vec<_> = (0..4)
        .map(|i| caches[i].pull(&stores[i], &o.manifest, &swarm_opts(urls[i], &urls), no_progress()))
        .collect();
    let mut origin_bytes = 0;
    for (i, pull) in pulls.iter().enumerate() {
        let report = pull.finish().await.unwrap();
        assert_eq!(report.bytes_from_peer + report.bytes_from_origin, total, "host {i}: {report:?}");
        assert_eq!(stores[i].bytes_read(), report.bytes_from_origin, "host {i}");
        assert!(report.bytes_from_peer > 0, "host {i} read nothing from its peers: {report:?}");
        assert_eq!(report.bytes_by_peer.values().sum::<u64>(), report.bytes_from_peer, "host {i}");
        origin_bytes += report.bytes_from_origin;
        o.assert_copy(&caches[i]);
    }
    eprintln!("origin bytes / model bytes: {:.3}", origin_bytes as f64 / total as f64);
    // Each chunk once, plus at most each host's copy of the files' heads and a few races.
    assert!(
        origin_bytes as f64 <= 1.25 * total as f64,
        "the origin served {origin_bytes} bytes for a {total}-byte model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_starts_later_reads_what_the_first_has_verified() {
    let o = origin(2, 16).await;
    let total = o.manifest.total_bytes();
    let (a, b) = (o.cache("host-a"), o.cache("host-b"));
    let (served_a, served_b) = (Served::start(peer_router(a.clone())), Served::start(peer_router(b.clone())));
    let urls = [served_a.url.as_str(), served_b.url.as_str()];
    let (store_a, store_b) = (o.for_host(150), o.for_host(150));
    let seen = Arc::new(AtomicU64::new(0));
    let progress: colo_store::Progress = {
        let seen = seen.clone();
        Arc::new(move |n| {
            seen.fetch_add(n, Ordering::SeqCst);
        })
    };
    let opts_a = HydrateOptions {
        concurrency: Some(2),
        ..swarm_opts(urls[0], &urls)
    };
    let pull_a = a.pull(&store_a, &o.manifest, &opts_a, progress);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < total / 3 {
        assert!(Instant::now() < deadline, "host a made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.complete_dir(&o.manifest).is_none(), "host a finished before b started");

    // Mid-pull, a serves the chunks it has verified and nothing else.
    let http = reqwest::Client::new();
    let base = format!("{}{PEER_PREFIX}/storm/{}", urls[0], o.manifest.revision);
    let map: PeerChunks = http.get(format!("{base}/chunks")).send().await.unwrap().json().await.unwrap();
    assert!(!map.complete);
    let file = map
        .files
        .iter()
        .find(|f| f.path.ends_with(".safetensors") && !f.held.is_empty())
        .expect("a weights file with verified chunks");
    let size = o.manifest.file(&file.path).unwrap().size;
    let ranged = |from: u64, to: u64| {
        http.get(format!("{base}/files/{}", file.path))
            .header(header::RANGE, format!("bytes={}-{}", from * CHUNK, (to * CHUNK).min(size) - 1))
            .send()
    };
    let [first, end] = file.held[0];
    let held = ranged(first, end).await.unwrap();
    assert_eq!(held.status(), StatusCode::PARTIAL_CONTENT);
    let bytes = held.bytes().await.unwrap();
    let on_disk = std::fs::read(o.src.join(&file.path)).unwrap();
    assert!(bytes[..] == on_disk[(first * CHUNK) as usize..((end * CHUNK).min(size)) as usize]);
    let chunks = o.manifest.file(&file.path).unwrap().chunks.len() as u64;
    if let Some(gap) = (0..chunks).find(|i| !file.held.iter().any(|r| (r[0]..r[1]).contains(i))) {
        let refused = ranged(gap, gap + 1).await.unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "chunk {gap} is not verified yet"
        );
    }

    let report_b = b
        .pull(&store_b, &o.manifest, &swarm_opts(urls[1], &urls), no_progress())
        .finish()
        .await
        .unwrap();
    let report_a = pull_a.finish().await.unwrap();
    assert!(report_b.bytes_from_peer >= total / 3, "b read what a held from a: {report_b:?}");
    assert!(report_b.bytes_from_origin < total - total / 3, "{report_b:?}");
    assert_eq!(report_b.bytes_by_peer.get(urls[0]), Some(&report_b.bytes_from_peer));
    assert_eq!(report_a.bytes_from_peer + report_a.bytes_from_origin, total, "{report_a:?}");
    o.assert_copy(&a);
    o.assert_copy(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dies_mid_storm_leaves_its_share_to_the_origin() {
    let o = origin(2, 16).await;
    let total = o.manifest.total_bytes();
    let (a, b) = (o.cache("host-a"), o.cache("host-b"));
    let mut served_b = Served::start(peer_router(b.clone()));
    let served_a = Served::start(peer_router(a.clone()));
    let urls = [served_a.url.as_str(), served_b.url.as_str()];
    let seen = Arc::new(AtomicU64::new(0));
    let progress: colo_store::Progress = {
        let seen = seen.clone();
        Arc::new(move |n| {
            seen.fetch_add(n, Ordering::SeqCst);
        })
    };
    let store_a = o.for_host(100);
    let pull_a = a.pull(&store_a, &o.manifest, &swarm_opts(urls[0], &urls), progress);
    // b pulls slowly, and its host goes away once a is a quarter in.
    let opts_b = HydrateOptions {
        concurrency: Some(1),
        ..swarm_opts(urls[1], &urls)
    };
    let _pull_b = b.pull(&o.for_host(400), &o.manifest, &opts_b, no_progress());
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < total / 4 {
        assert!(Instant::now() < deadline, "host a made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served_b.stop();
    let report = tokio::time::timeout(Duration::from_secs(60), pull_a.finish())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.bytes_from_peer + report.bytes_from_origin, total, "{report:?}");
    assert_eq!(store_a.bytes_read(), report.bytes_from_origin);
    o.assert_copy(&a);
}

/// A peer that says it holds every chunk: `garbage` sends bytes that match no digest; otherwise
/// it sends a little and then nothing, forever.
fn lying_peer(manifest: &colo_model::Manifest, garbage: bool) -> axum::Router {
    let map = PeerChunks {
        name: manifest.name.clone(),
        revision: manifest.revision.clone(),
        complete: true,
        files: Vec::new(),
    };
    let body = move |headers: axum::http::HeaderMap| async move {
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("bytes=0-0")
            .to_string();
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let len = b - a + 1;
        let body = if garbage {
            Body::from(vec![0x5a; len as usize])
        } else {
            let first = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1024])) });
            Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
        };
        Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, len)
            .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/*"))
            .body(body)
            .unwrap()
    };
    axum::Router::new()
        .route(
            &format!("{PEER_PREFIX}/{{name}}/{{revision}}/chunks"),
            axum::routing::get(move || {
                let map = map.clone();
                async move { axum::Json(map).into_response() }
            }),
        )
        .route(
            &format!("{PEER_PREFIX}/{{name}}/{{revision}}/files/{{*path}}"),
            axum::routing::get(body),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_lie_or_stall_are_dropped_and_nothing_unverified_is_kept() {
    let o = origin(2, 4).await;
    let total = o.manifest.total_bytes();
    let liar = Served::start(lying_peer(&o.manifest, true));
    let staller = Served::start(lying_peer(&o.manifest, false));
    let cache = o.cache("host");
    let store = o.for_host(0);
    let opts = HydrateOptions {
        peers: vec![liar.url.clone(), staller.url.clone()],
        ..Default::default()
    };
    let started = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        cache.pull(&store, &o.manifest, &opts, no_progress()).finish(),
    )
    .await
    .expect("a stalled peer does not hang the pull")
    .unwrap();
    assert_eq!(report.bytes_from_peer, 0, "no chunk from a lying peer verified: {report:?}");
    assert_eq!(report.bytes_from_origin, total);
    assert!(report.bytes_by_peer.values().all(|n| *n == 0), "{report:?}");
    o.assert_copy(&cache);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
