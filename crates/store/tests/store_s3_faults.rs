//! Pulls through a real S3-compatible server (`s3s-fs`) with `colo-fault`'s proxy in front of
//! it (issue 16, item 7): S3 errors on some requests, bodies cut off part way and a server that
//! stalls all end in a complete, verified copy; what was verified before a failure is not read
//! again. (The S3 client retries errors and cut bodies itself; a stall is the store's to notice:
//! no byte for the stall timeout fails the read, which is then taken up again from the first
//! chunk not verified.)

mod common;

use colo_fault::{Fault, FaultProxy};
use colo_store::{hydrate, no_progress, push_dir, HostCache, HydrateOptions, PushOptions, Store};
use std::time::{Duration, Instant};

const CHUNK: u64 = 256 * 1024;

/// S3's answer to a client going too fast.
fn slow_down() -> bytes::Bytes {
    let body =
        r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"#;
    bytes::Bytes::from(format!(
        "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_cut_bodies_and_stalls_mid_pull_end_in_a_verified_copy() {
    let root = tempfile::tempdir().unwrap();
    let s3_root = root.path().join("s3");
    std::fs::create_dir_all(s3_root.join("weights")).unwrap();
    let port = common::s3::start_for_process(&s3_root);
    let proxy = FaultProxy::start(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    // This test binary holds only this test, so setting the process environment is safe.
    common::s3::set_env(proxy.addr().port());

    let src = root.path().join("src");
    common::write_model_dir(&src, 6, 11);
    let store = Store::open("s3://weights/faults")
        .unwrap()
        .with_stall_timeout(Duration::from_millis(800));
    let push = PushOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let manifest = push_dir(&store, &src, "tiny", &push, no_progress()).await.unwrap().manifest;
    // Ranged reads of 1 MiB, one at a time, so that faults land part way through pulls.
    let options = HydrateOptions {
        concurrency: Some(1),
        range_bytes: Some(1024 * 1024),
        ..Default::default()
    };
    let pull = |name: &str| {
        let (store, manifest, options) = (store.clone(), manifest.clone(), options.clone());
        let cache = HostCache::new(root.path().join(name));
        async move {
            let report = hydrate(&store, &manifest, &cache, &options, no_progress()).await;
            (report, cache)
        }
    };

    let cases: Vec<(&str, Fault, u64)> = vec![
        ("slow-down", Fault::Answer(slow_down()), 2),
        ("cut-bodies", Fault::Truncate(300 * 1024), 2),
    ];
    for (name, fault, every) in cases {
        // Pooled connections end, so the fault meets the pull's new ones.
        proxy.set(Fault::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = proxy.faulted();
        proxy.set_every(fault, every);
        let (report, cache) = pull(name).await;
        let report = report.unwrap_or_else(|e| panic!("{name}: the pull failed: {e}"));
        assert!(proxy.faulted() > before, "{name}: no request met the fault");
        let dir = cache.complete_dir(&manifest).unwrap_or_else(|| panic!("{name}: not complete"));
        common::assert_same_files(&src, &dir);
        // Verified chunks are not read again: at most one range more than the model.
        assert!(
            report.bytes_fetched <= manifest.total_bytes() + 1024 * 1024,
            "{name}: fetched {} of a {} byte model",
            report.bytes_fetched,
            manifest.total_bytes()
        );
    }

    // A server that stalls: each read fails after the stall timeout and is tried again, and
    // the pull completes once the server moves again.
    proxy.set(Fault::Stall);
    let started = Instant::now();
    let task = tokio::spawn(pull("stalled"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!task.is_finished(), "the pull ended while the server stalled");
    proxy.set(Fault::Pass);
    let (report, cache) = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("a stalled pull must not hang")
        .unwrap();
    report.unwrap_or_else(|e| panic!("stalled: the pull failed: {e}"));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    common::assert_same_files(&src, &cache.complete_dir(&manifest).expect("complete after the stall"));
}
