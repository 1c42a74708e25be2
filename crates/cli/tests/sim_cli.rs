//! `colo sim` as users run it: the shipped M/M/c scenario as a table and as JSON (the report's
//! keys as issue 18 names them), `--out` keeping the report, and a bad scenario refused with
//! each wrong field named.

mod common;

use std::process::Command;

fn colo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(args)
        .env_remove("COLUMNS")
        .output()
        .expect("running colo")
}

#[test]
fn colo_sim_reports_the_shipped_scenario_and_names_bad_fields() {
    let scenario = common::repo_root().join("sims/mmc.toml");
    let out = colo(&["sim", scenario.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("requests simulated in") && table.contains("ord") && table.contains("all"),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = colo(&["sim", scenario.to_str().unwrap(), "--json", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for scope in [&report, &report["regions"][0]] {
        assert!(scope["requests"].as_u64().unwrap() > 10_000_000, "{scope}");
        for key in ["wait_ms", "latency_ms"] {
            for stat in ["mean", "p50", "p90", "p99"] {
                assert!(scope[key][stat].as_f64().is_some(), "{key}.{stat} missing: {scope}");
            }
        }
    }
    // Erlang C for M/M/3 at 80% with 10 ms service: 10.79 ms.
    let wait = report["wait_ms"]["mean"].as_f64().unwrap();
    assert!((wait - 10.786).abs() / 10.786 < 0.03, "{wait}");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(kept["wait_ms"], report["wait_ms"], "--out keeps the same report");
    assert!(dir.path().join("report.txt").exists());

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "duration_s = 10\nwarmup_s = 20\n[[region]]\nname = \"ord\"\nmachines = 1\narrival_rate = -1\n[service]\ndistribution = \"fixed\"\nmean_ms = 5\nsigma = 1\n",
    )
    .unwrap();
    let out = colo(&["sim", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for field in ["warmup_s", "region[0].arrival_rate", "service.sigma"] {
        assert!(stderr.contains(field), "{field} not named: {stderr}");
    }
}
