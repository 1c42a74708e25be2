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
    for key in [
        "ttft_ms",
        "cold_starts",
        "gpu_hours",
        "egress_bytes",
        "cost",
        "utilisation",
        "timeline",
    ] {
        assert!(!report[key].is_null(), "{key} missing from the report");
    }
    for plot in ["ttft.svg", "timeline.svg"] {
        let svg = std::fs::read_to_string(dir.path().join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{plot}");
    }

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

/// Two scenarios in one run: each report in a directory of its own, and a comparison table
/// and plots beside them; a scale-to-zero world reports its cold starts and cost.
#[test]
fn colo_sim_compares_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let world = |name: &str, scalable: &str, autostop: u32| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
                duration_s = 20000
                warmup_s = 100
                gpu = "l40s"
                [[region]]
                name = "ord"
                {scalable}
                arrival_rate = 0.005
                [[region]]
                name = "syd"
                arrival_rate = 0.005
                [service]
                distribution = "roofline"
                [model]
                name = "llama-3.1-8b"
                [tokens]
                prompt_mean = 256
                output_mean = 64
                [routing]
                hard_limit = 8
                [scaling]
                autostop_s = {autostop}
                [storage]
                origin_gbps = 4
                "#
            ),
        )
        .unwrap();
        path
    };
    let zero = world("zero", "scalable = 2", 30);
    let warm = world("warm", "machines = 1\nscalable = 1", 600);
    let out_dir = dir.path().join("out");
    let out = colo(&[
        "sim",
        zero.to_str().unwrap(),
        warm.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("== zero") && text.contains("== warm") && text.contains("$/Mtok"),
        "{text}"
    );
    for file in [
        "zero/report.json",
        "warm/report.json",
        "compare-ttft.svg",
        "compare-cost.svg",
        "compare.txt",
    ] {
        assert!(out_dir.join(file).exists(), "{file} not written");
    }
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out_dir.join(name).join("report.json")).unwrap()).unwrap()
    };
    let (zero, warm) = (report("zero"), report("warm"));
    // Scaled to zero: many cold starts, few GPU-hours; kept warm: the reverse.
    assert!(zero["cold_starts"]["count"].as_u64().unwrap() > 50, "{}", zero["cold_starts"]);
    assert!(warm["gpu_hours"].as_f64().unwrap() > 1.5 * zero["gpu_hours"].as_f64().unwrap());
    assert!(zero["wait_ms"]["p50"].as_f64().unwrap() > 10_000.0, "a woken machine takes seconds");
    assert!(warm["cost"]["usd_per_million_tokens"].as_f64().unwrap() > zero["cost"]["usd_per_million_tokens"].as_f64().unwrap());
}
