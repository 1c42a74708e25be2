//! Push and hydrate through a real S3-compatible server (`s3s-fs`, started here as its own
//! process), configured the way users configure S3: AWS_* environment variables and an
//! `s3://bucket/prefix` URL.

mod common;

use colo_fault::s3s_fs;
use colo_store::{hydrate, no_progress, push_dir, HostCache, HydrateOptions, PushOptions, Store};
use std::process::{Child, Command};
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3s_fs_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("S3S_FS") {
        return path.into();
    }
    let home_bin = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs");
    if home_bin.exists() {
        return home_bin;
    }
    "s3s-fs".into()
}

fn start_s3(root: &std::path::Path) -> (Server, u16) {
    // Its log beside the data: the line that says where it listens is read from there.
    let log_path = root.with_extension("s3s-fs.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(s3s_fs_binary());
    s3s_fs::with_port_args(&mut command, "127.0.0.1");
    let child = command
        .args(["--access-key", "colo-test", "--secret-key", "colo-test-secret"])
        .arg(root)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("s3s-fs must be installed: cargo install s3s-fs@0.14.1 --locked --features binary (.ci/run does this)");
    // Held before the wait, so that a wait that fails still kills it.
    let mut server = Server(child);
    let port = s3s_fs::bound_port(&mut server.0, &log_path, Duration::from_secs(10));
    (server, port)
}

#[tokio::test]
async fn push_and_hydrate_through_s3() {
    let root = tempfile::tempdir().unwrap();
    let s3_root = root.path().join("s3");
    std::fs::create_dir_all(s3_root.join("weights")).unwrap();
    let (_server, port) = start_s3(&s3_root);
    // This test binary holds only this test, so setting the process environment is safe.
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_ACCESS_KEY_ID", "colo-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "colo-test-secret");
    std::env::set_var("AWS_REGION", "us-east-1");

    let src = root.path().join("src");
    common::write_model_dir(&src, 6, 3);
    let store = Store::open("s3://weights/team-a").unwrap();
    let opts = PushOptions {
        chunk_size: 1024 * 1024,
        ..Default::default()
    };
    let pushed = push_dir(&store, &src, "tiny", &opts, no_progress()).await.unwrap();
    assert!(
        s3_root.join("weights/team-a/models/tiny/manifest.json").exists(),
        "the manifest lands under the prefix"
    );
    assert_eq!(store.models().await.unwrap(), vec!["tiny".to_string()]);

    let manifest = store.manifest("tiny").await.unwrap();
    assert_eq!(manifest, pushed.manifest);
    let cache = HostCache::new(root.path().join("cache"));
    let report = hydrate(&store, &manifest, &cache, &HydrateOptions::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(report.bytes_fetched, manifest.total_bytes());
    common::assert_same_files(&src, &cache.complete_dir(&manifest).unwrap());
    println!(
        "s3 hydration: {} bytes in {:.3}s ({:.2} GB/s)",
        report.bytes_fetched,
        report.seconds,
        report.gb_per_s()
    );
}
