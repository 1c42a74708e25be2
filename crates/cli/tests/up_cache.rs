//! The host cache through a real `colo up`: a machine's start records its cold-start phases
//! (in `colo ps --json` and the agent's /metrics), the model it uses is pinned (eviction is
//! refused), and `colo cache ls|evict|prefetch` list, empty and warm the cache.

mod common;

use common::Colo;

fn api_get(colo: &Colo, path: &str) -> String {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(colo.data_dir.join("colo.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(colo.data_dir.join("api-token")).unwrap();
    let response = reqwest::blocking::Client::new()
        .get(format!("{}{path}", info["api"].as_str().unwrap()))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.text().unwrap()
}

#[test]
fn cold_starts_are_recorded_and_the_cache_is_managed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(dir.path(), &["--s3-addr", "127.0.0.1:0"]);
    colo.deploy_minilm();

    // The first start read everything from the origin store and timed each phase.
    let machine = colo.machines().remove(0);
    let cold = &machine["cold_start"];
    let total = machine["hydration"]["bytes_total"].as_u64().unwrap();
    assert!(total > 1_000_000, "{machine}");
    assert_eq!(cold["bytes_from_origin"].as_u64(), Some(total), "{cold}");
    assert_eq!(cold["bytes_from_peer"].as_u64(), Some(0));
    let first = cold["first_response_ms"].as_u64().unwrap();
    let parts = ["queued_ms", "hydrate_ms", "engine_load_ms"].map(|k| cold[k].as_u64().unwrap());
    // colo's engine starts loading while the weights land: that overlap counts once.
    let overlap = cold["overlap_ms"].as_u64().unwrap();
    assert!(
        first > 0 && parts.iter().sum::<u64>() <= first + overlap + 5,
        "phases add up within the total: {cold}"
    );

    let metrics = api_get(&colo, "/metrics");
    assert!(metrics.contains("colo_agent_cold_start_milliseconds{"), "{metrics}");
    assert!(metrics.contains(r#"phase="first_response""#), "{metrics}");
    assert!(metrics.contains(&format!(r#"source="origin"}} {total}"#)), "{metrics}");

    // The model is in the cache, complete and in use by the machine: eviction is refused.
    let listing: serde_json::Value = serde_json::from_str(&colo.ok(&["cache", "ls", "--json"])).unwrap();
    let entry = &listing[0]["entries"][0];
    assert_eq!(entry["name"], "minilm");
    assert_eq!(entry["complete"], true);
    assert_eq!(entry["pins"], 1);
    let table = colo.ok(&["cache", "ls"]);
    assert!(table.contains("minilm") && table.contains("complete"), "{table}");
    let refused = colo.cli(&["cache", "evict", "minilm"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("in use"), "{stderr}");
    let wrong_region = colo.cli(&["cache", "prefetch", "minilm", "--region", "nowhere"]);
    let stderr = String::from_utf8_lossy(&wrong_region.stderr);
    assert!(
        !wrong_region.status.success() && stderr.contains("no host in region \"nowhere\""),
        "{stderr}"
    );

    // Once no machine uses it, it can be evicted, and a prefetch brings it back.
    colo.ok(&["destroy", "minilm"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = colo.cli(&["cache", "evict", "minilm", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let listing: serde_json::Value = serde_json::from_str(&colo.ok(&["cache", "ls", "--json"])).unwrap();
    assert_eq!(listing[0]["entries"].as_array().unwrap().len(), 0, "{listing}");
    let warmed: serde_json::Value =
        serde_json::from_str(&colo.ok(&["cache", "prefetch", "minilm", "--region", "local", "--json"])).unwrap();
    assert_eq!(warmed[0]["report"]["bytes_from_origin"].as_u64(), Some(total), "{warmed}");
    let listing: serde_json::Value = serde_json::from_str(&colo.ok(&["cache", "ls", "--json"])).unwrap();
    assert_eq!(listing[0]["entries"][0]["complete"], true, "{listing}");

    // The host's cache over S3: boto3 lists the model and reads a range of its weights, the
    // same bytes as the file in the cache.
    let log = std::fs::read_to_string(colo.data_dir.join("up.log")).unwrap();
    let endpoint = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("s3     "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no S3 endpoint in the log: {log}"))
        .to_string();
    let secret = std::fs::read_to_string(colo.data_dir.join("api-token")).unwrap();
    let weights = walk(&colo.data_dir.join("cache"))
        .into_iter()
        .find(|p| p.ends_with("model.safetensors"))
        .unwrap();
    let script = r#"
import sys, boto3
endpoint, secret, out = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="colo", aws_secret_access_key=secret, region_name="us-east-1")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="colo", Prefix="minilm/latest/")["Contents"]]
assert "minilm/latest/model.safetensors" in keys, keys
body = s3.get_object(Bucket="colo", Key="minilm/latest/model.safetensors", Range="bytes=1000-1999999")["Body"].read()
open(out, "wb").write(body)
"#;
    let out_path = dir.path().join("range.bin");
    let run = std::process::Command::new("python3")
        .args(["-c", script, &endpoint, secret.trim(), out_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "boto3: {}", String::from_utf8_lossy(&run.stderr));
    let got = std::fs::read(&out_path).unwrap();
    let want = std::fs::read(&weights).unwrap();
    assert_eq!(got.len(), 1_999_000);
    assert!(got == want[1000..2_000_000], "the S3 range differs from the cached file");
    colo.stop();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `colo model rm NAME[@REVISION]`: refused while an app runs the model, one revision at a
/// time or every one, the latest moving to the newest left, and the store's files gone.
#[test]
fn models_are_removed_from_the_store_unless_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    let mut revisions = Vec::new();
    for seed in ["1", "2"] {
        let model = dir.path().join(format!("synth-{seed}"));
        colo.ok(&["model", "synth", model.to_str().unwrap(), "--seed", seed]);
        colo.ok(&["model", "push", model.to_str().unwrap(), "--name", "tiny"]);
        let manifest: serde_json::Value = serde_json::from_str(&colo.ok(&["model", "inspect", "tiny", "--json"])).unwrap();
        revisions.push(manifest["revision"].as_str().unwrap().to_string());
    }
    let (old, new) = (&revisions[0], &revisions[1]);
    assert_ne!(old, new);
    colo.ok(&["deploy", "chat", "--model", "tiny"]);

    // In use: refused, naming the app; nothing deleted.
    let out = colo.cli(&["model", "rm", "tiny"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("app chat"), "{stderr}");
    let refused = colo.cli(&["model", "rm", &format!("tiny@{}", &new[..8])]);
    assert!(!refused.status.success(), "the revision chat runs is kept");

    // The revision no app runs goes; the latest stays.
    let removed = colo.ok(&["model", "rm", &format!("tiny@{old}"), "--json"]);
    let removed: serde_json::Value = serde_json::from_str(&removed).unwrap();
    assert_eq!(removed["removed"], serde_json::json!([old]));
    assert_eq!(removed["latest"], new.as_str());
    let store = dir.path().join("store/models/tiny");
    assert!(!store.join("rev").join(old).exists(), "the old revision's files are gone");

    // Once the app is gone, the whole model goes.
    colo.ok(&["destroy", "chat"]);
    colo.wait_machines(30, "chat's machine destroyed", |ms| ms.iter().all(|m| m["app"] != "chat"));
    let out = colo.ok(&["model", "rm", "tiny"]);
    assert!(out.contains("model tiny is gone"), "{out}");
    assert!(!colo.ok(&["model", "ls"]).contains("tiny"));
    assert!(
        !store.join("rev").exists(),
        "no files are left: {:?}",
        std::fs::read_dir(&store).ok().map(|d| d.count())
    );
    let again = colo.cli(&["model", "rm", "tiny"]);
    assert!(!again.status.success(), "a model that is not there is an error");
    colo.stop();
}
