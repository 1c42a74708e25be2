//! The dashboard in a real browser: `colo up` with an app on colo's engine, and
//! tests/py/ui_browser.py driving headless Chromium through Playwright over its pages (what it
//! checks is listed at the top of that script). Needs Debian's `chromium` and PyPI's
//! `playwright` (scripts/test installs both); without them this test fails, naming them.
//! COLO_UI_SCREENSHOTS=DIR keeps a PNG of each page there (docs/ui/ holds the committed ones).

mod common;

use common::{repo_root, Colo};
use std::process::Command;

#[test]
fn the_dashboard_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    // A host in a region of the table, so that the map places it.
    let colo = Colo::up_with(tmp.path(), &["--region", "ord"]);
    colo.push_tiny("tiny");
    colo.ok(&["deploy", "chat", "--model", "tiny"]);
    // A simulation report where the dashboard shows them.
    let sims = tmp.path().join("sims").join("mmc");
    let sim = Command::new(env!("CARGO_BIN_EXE_colo"))
        .arg("sim")
        .arg(repo_root().join("sims/mmc.toml"))
        .arg("--out")
        .arg(&sims)
        .output()
        .unwrap();
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("colo.json")).unwrap()).unwrap();
    let api = info["api"].as_str().unwrap().to_string();
    let deploy = format!(
        "{} deploy second --model tiny --detach --data-dir {}",
        env!("CARGO_BIN_EXE_colo"),
        tmp.path().display()
    );
    let minted = colo.ok(&["token", "read-only", "--json"]);
    let read_only = serde_json::from_str::<serde_json::Value>(&minted).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = tmp.path().join("ui.json");
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("tests/py/ui_browser.py"))
        .args([
            "--api",
            &api,
            "--edge",
            &colo.edge,
            "--token",
            &colo.token(),
            "--read-only-token",
            &read_only,
            "--deploy-cmd",
            &deploy,
            "--new-app",
            "second",
        ])
        .arg("--out")
        .arg(&out);
    if let Ok(dir) = std::env::var("COLO_UI_SCREENSHOTS") {
        command.args(["--screenshots", &dir]);
    }
    let run = command.output().expect("running python3");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !stderr.contains("No module named 'playwright'"),
        "PyPI's playwright is missing (python3 -m pip install playwright; scripts/test installs it)"
    );
    assert!(
        run.status.success(),
        "the browser checks failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&run.stdout)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout));
}
