//! Pulls through a real S3-compatible server (`s3s-fs`, its own process): a sharded model of
//! about a gigabyte, pulled twice at once and downloaded once; a corrupt chunk on the origin
//! refused, then refetched once repaired; a pull killed at random points resuming with only
//! the missing chunks.
//!
//! The sharded model is synthesized (never committed) under Cargo's target tmp dir and pushed
//! once; later runs reuse the pushed objects. Set `COLO_TEST_BIG_MIB` to change its size.

mod common;

use colo_store::{hydrate, no_progress, push_dir, HostCache, HydrateOptions, PushOptions, Store, StoreError};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const BIG: &str = "big-v1";
/// Env var that turns the `child_pull` test into the pull a parent test kills.
const CHILD_ENV: &str = "COLO_TEST_CHILD_PULL";

struct Fixture {
    /// The server's root: objects are plain files under `<root>/<bucket>/<key>`.
    s3_root: PathBuf,
    port: u16,
}

/// One server and one pushed big model for every test of this binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("store_s3_model");
        let s3_root = base.join("s3");
        std::fs::create_dir_all(s3_root.join("weights")).unwrap();
        let port = common::s3::start_for_process(&s3_root);
        common::s3::set_env(port);
        // The push runs on its own runtime: this may be called from inside a test's runtime.
        let src = base.join("src");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store = Store::open("s3://weights/models").unwrap();
                if store.manifest(BIG).await.is_ok() {
                    return;
                }
                let mib: usize = std::env::var("COLO_TEST_BIG_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
                let shards = 4;
                common::write_sharded_model(&src, shards, mib / shards, 7);
                push_dir(&store, &src, BIG, &PushOptions::default(), no_progress()).await.unwrap();
                std::fs::remove_dir_all(&src).unwrap();
            })
        })
        .join()
        .unwrap();
        Fixture { s3_root, port }
    })
}

/// Where the server keeps a model's files.
fn origin_dir(fx: &Fixture, name: &str, revision: &str) -> PathBuf {
    fx.s3_root.join("weights/models/models").join(name).join("rev").join(revision)
}

/// Removes a per-test model's objects from the server's root when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pushes a fresh small model under a unique name and returns it.
async fn push_small(name_prefix: &str, mib: usize, chunk: u64) -> (Store, colo_model::Manifest, Cleanup) {
    let _ = fixture();
    let src = tempfile::tempdir().unwrap();
    let name = format!("{name_prefix}-{:08x}", rand::random::<u32>());
    common::write_sharded_model(src.path(), 2, mib / 2, rand::random());
    let store = Store::open("s3://weights/models").unwrap();
    let opts = PushOptions {
        chunk_size: chunk,
        ..Default::default()
    };
    let report = push_dir(&store, src.path(), &name, &opts, no_progress()).await.unwrap();
    let cleanup = Cleanup(fixture().s3_root.join("weights/models/models").join(&name));
    (store, report.manifest, cleanup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pulls_of_a_big_model_download_it_once() {
    let fx = fixture();
    let store = Store::open("s3://weights/models").unwrap();
    let manifest = store.manifest(BIG).await.unwrap();
    assert!(manifest.files.len() >= 5, "a sharded model: {} files", manifest.files.len());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = HostCache::new(cache_dir.path());

    let first = cache.pull(&store, &manifest, &HydrateOptions::default(), no_progress());
    let second = cache.clone().pull(&store, &manifest, &HydrateOptions::default(), no_progress());
    assert!(!first.joined() && second.joined(), "the second pull joins the first");

    // A loader can read the first shard's safetensors header before the model is complete.
    let shard = &manifest.files.iter().find(|f| f.path.ends_with(".safetensors")).unwrap().path;
    let mut header = [0u8; 8];
    let file = first.open_prefix(shard, 8).await.unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0).unwrap();
    let header_len = u64::from_le_bytes(header);
    assert!(header_len > 2 && header_len < 4096, "a real header length, got {header_len}");

    let (a, b) = tokio::join!(first.finish(), second.finish());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both callers get the one pull's report");
    let total = manifest.total_bytes();
    assert_eq!(a.bytes_from_origin, total);
    assert_eq!(store.bytes_read(), total, "the origin served the model exactly once");
    let dir = cache.complete_dir(&manifest).expect("complete");
    common::assert_same_model(&manifest, &origin_dir(fx, BIG, &manifest.revision), &dir);
    println!(
        "s3 pull of {} MB in {} files: {:.2}s, {:.2} GB/s, {} in flight, {} B ranges",
        total / 1_000_000,
        manifest.files.len(),
        a.seconds,
        a.gb_per_s(),
        a.concurrency,
        a.range_bytes
    );
}

#[tokio::test]
async fn a_corrupt_origin_chunk_is_refused_then_refetched_once_repaired() {
    let chunk = 1024 * 1024;
    let (store, manifest, _cleanup) = push_small("corrupt", 16, chunk).await;
    let fx = fixture();
    let file = manifest.files.iter().find(|f| f.path.ends_with(".safetensors")).unwrap();
    let object = origin_dir(fx, &manifest.name, &manifest.revision).join(&file.path);
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    bad[5 * chunk as usize + 123] ^= 0x5a;
    std::fs::write(&object, &bad).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = HostCache::new(cache_dir.path());
    let err = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap_err();
    match &err {
        StoreError::Digest { file: f, chunk: 5, .. } => assert_eq!(f, &file.path),
        other => panic!("expected a digest error for chunk 5, got {other}"),
    }
    let dir = cache.model_dir(&manifest.name, &manifest.revision);
    assert!(!dir.join(&file.path).exists(), "a file with a bad chunk never takes its real name");
    assert!(cache.complete_dir(&manifest).is_none());
    let verified_before = common::verified_on_disk(&manifest, &dir);
    assert!(verified_before < manifest.total_bytes());

    // Repaired at the origin, the next pull fetches only what is missing, chunk 5 included.
    std::fs::write(&object, &good).unwrap();
    let report = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(report.bytes_from_cache, verified_before, "every verified chunk is kept");
    assert_eq!(report.bytes_from_origin, manifest.total_bytes() - verified_before);
    common::assert_same_model(&manifest, &origin_dir(fx, &manifest.name, &manifest.revision), &dir);
}

/// What the parent tells a child pull.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildPull {
    model: String,
    revision: String,
    cache: PathBuf,
}

/// Not a test on its own: the pull that
/// `a_pull_killed_at_random_points_resumes_with_only_missing_chunks` runs in a child process
/// (`--ignored --exact child_pull`, with `COLO_TEST_CHILD_PULL` set) and kills. It prints its
/// progress so the parent can pick the moment. Ignored, so it is never counted as a pass.
#[tokio::test]
#[ignore = "a helper the resume test runs in a child process"]
async fn child_pull() {
    let spec = std::env::var(CHILD_ENV).unwrap_or_else(|_| panic!("child_pull runs only as the resume test's child, with {CHILD_ENV} set"));
    let spec: ChildPull = serde_json::from_str(&spec).unwrap();
    let store = Store::open("s3://weights/models").unwrap();
    let manifest = store.manifest_at(&spec.model, &spec.revision).await.unwrap();
    let cache = HostCache::new(&spec.cache);
    let seen = std::sync::atomic::AtomicU64::new(0);
    let progress: colo_store::Progress = std::sync::Arc::new(move |n| {
        let now = seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
        println!("progress {n} {now}");
    });
    let opts = HydrateOptions {
        concurrency: Some(2),
        range_bytes: Some(manifest.chunk_size),
        ..Default::default()
    };
    hydrate(&store, &manifest, &cache, &opts, progress).await.unwrap();
    println!("finished");
}

#[tokio::test]
async fn a_pull_killed_at_random_points_resumes_with_only_missing_chunks() {
    let chunk = 256 * 1024;
    let (store, manifest, _cleanup) = push_small("resume", 48, chunk).await;
    let fx = fixture();
    let total = manifest.total_bytes();
    let cache_dir = tempfile::tempdir().unwrap();
    let dir = HostCache::new(cache_dir.path()).model_dir(&manifest.name, &manifest.revision);
    // Ranges in flight when a kill lands may be written but not yet recorded: at most two.
    let slack = 2 * chunk;
    let spec = serde_json::to_string(&ChildPull {
        model: manifest.name.clone(),
        revision: manifest.revision.clone(),
        cache: cache_dir.path().to_path_buf(),
    })
    .unwrap();

    let mut kills = 0;
    for round in 0..5 {
        let on_disk = common::verified_on_disk(&manifest, &dir);
        let target = on_disk + (total - on_disk) * (10 + rand::random::<u64>() % 60) / 100;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_pull", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &spec)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", fx.port))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut first_progress = None;
        let mut killed = false;
        for line in lines {
            let line = line.unwrap();
            // The harness may print its own words before ours on the first line.
            let Some(at) = line.find("progress ") else { continue };
            let rest = &line[at + "progress ".len()..];
            let mut parts = rest.split(' ').map(|v| v.parse::<u64>().unwrap());
            let (step, seen) = (parts.next().unwrap(), parts.next().unwrap());
            first_progress.get_or_insert(step);
            if seen >= target {
                // SAFETY: kill(2) on the child we spawned and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                killed = true;
                break;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed && !status.success(),
            "round {round}: the child should have been killed mid-pull ({status})"
        );
        kills += 1;
        // The resumed child trusted exactly the chunks that were verified on disk, less at
        // most the ranges in flight at the last kill.
        let reused = first_progress.expect("the child reports what it reused first");
        assert!(
            reused <= on_disk && reused + slack >= on_disk,
            "round {round}: resumed with {reused} bytes reused, {on_disk} were verified on disk"
        );
    }
    assert_eq!(kills, 5);

    let on_disk = common::verified_on_disk(&manifest, &dir);
    let cache = HostCache::new(cache_dir.path());
    let report = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    let missing = total - on_disk;
    assert!(
        report.bytes_from_origin >= missing && report.bytes_from_origin <= missing + slack,
        "the final pull fetched {} bytes; {missing} were missing on disk",
        report.bytes_from_origin
    );
    assert_eq!(report.bytes_from_cache + report.bytes_from_origin, total);
    common::assert_same_model(&manifest, &origin_dir(fx, &manifest.name, &manifest.revision), &dir);
}
