//! `colo sim SCENARIO.toml...`: colo's routing, hold and scaling decisions against a simulated
//! world in virtual time (colo-sim). A table for people, `--json` for scripts, `--out DIR` to
//! keep the report with its plots; a progress line on a terminal. Several scenarios run one
//! after another and are compared side by side.

use crate::output::table;
use anyhow::Context;
use colo_sim::{plot, Outcome, Report, Scenario};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SimArgs {
    /// The scenarios (TOML: seed, duration_s, warmup_s, [[region]], [service], [routing], and
    /// optionally [arrivals], [model], [tokens], [scaling], [storage]; see sims/).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Print the report as JSON (several scenarios: an object keyed by file stem).
    #[arg(long)]
    json: bool,
    /// Also write each report into this directory (report.json, report.txt, ttft.svg,
    /// timeline.svg; several scenarios: one directory each and compare-*.svg beside them).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned())
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    // Read and check every scenario before running any: a typo in the third should not wait
    // for the first two.
    let mut scenarios = Vec::new();
    for path in &args.scenarios {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario = Scenario::from_toml(&text).with_context(|| format!("scenario {}", path.display()))?;
        scenarios.push((stem(path), scenario));
    }
    let mut names: Vec<&str> = scenarios.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        anyhow::bail!("two scenarios have the same file name; their reports would overwrite each other");
    }
    let show_progress = std::io::stderr().is_terminal();
    let several = scenarios.len() > 1;
    let mut reports = Vec::new();
    for (name, scenario) in scenarios {
        let label = name.clone();
        let report = tokio::task::spawn_blocking(move || {
            colo_sim::run(&scenario, &mut |done| {
                if show_progress {
                    eprint!("\rsimulating {label}: {:>3.0}% of the simulated time", done * 100.0);
                    let _ = std::io::stderr().flush();
                }
            })
        })
        .await
        .context("the simulation stopped")?;
        if show_progress {
            eprintln!();
        }
        if let Some(dir) = &args.out {
            let dir = if several { dir.join(&name) } else { dir.clone() };
            write_report(&dir, &name, &report)?;
        }
        reports.push((name, report));
    }
    if let (Some(dir), true) = (&args.out, several) {
        let (ttft, cost) = plot::compare(&reports);
        write(&dir.join("compare-ttft.svg"), &ttft)?;
        write(&dir.join("compare-cost.svg"), &cost)?;
        write(&dir.join("compare.txt"), &compare(&reports))?;
    }
    if args.json {
        let json = if several {
            let map: serde_json::Map<String, serde_json::Value> = reports
                .iter()
                .map(|(name, r)| Ok((name.clone(), serde_json::to_value(r)?)))
                .collect::<Result<_, serde_json::Error>>()?;
            serde_json::to_string_pretty(&map)?
        } else {
            serde_json::to_string_pretty(&reports[0].1)?
        };
        println!("{json}");
    } else {
        for (name, report) in &reports {
            if several {
                println!("== {name}");
            }
            println!("{}", render(report));
        }
        if several {
            println!("{}", compare(&reports));
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_report(dir: &Path, name: &str, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join("report.json"), &serde_json::to_string_pretty(report)?)?;
    write(&dir.join("report.txt"), &render(report))?;
    write(
        &dir.join("ttft.svg"),
        &plot::ttft_by_region(report, &format!("{name}: time to first token by caller region")),
    )?;
    write(
        &dir.join("timeline.svg"),
        &plot::timeline(report, &format!("{name}: the simulated day")),
    )
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn usd_per_m(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn row(name: &str, machines: String, cold: String, hours: f64, busy: String, per_m: Option<f64>, o: &Outcome) -> Vec<String> {
    vec![
        name.to_string(),
        machines,
        o.requests.to_string(),
        ms(o.wait_ms.p99),
        ms(o.ttft_ms.p50),
        ms(o.ttft_ms.p99),
        ms(o.latency_ms.p50),
        ms(o.latency_ms.p99),
        cold,
        format!("{hours:.1}"),
        busy,
        usd_per_m(per_m),
        o.turned_away.to_string(),
    ]
}

/// The report as a table, with what was simulated and how fast above it.
fn render(report: &Report) -> String {
    let machines = |on: u32, scalable: u32| if scalable > 0 { format!("{on}+{scalable}") } else { on.to_string() };
    let mut rows: Vec<Vec<String>> = report
        .regions
        .iter()
        .map(|r| {
            row(
                &r.name,
                machines(r.machines, r.scalable),
                r.cold_starts.count.to_string(),
                r.gpu_hours,
                format!("{:.0}%", r.utilisation * 100.0),
                r.cost.usd_per_million_tokens,
                &r.outcome,
            )
        })
        .collect();
    let on: u32 = report.regions.iter().map(|r| r.machines).sum();
    let scalable: u32 = report.regions.iter().map(|r| r.scalable).sum();
    rows.push(row(
        "all",
        machines(on, scalable),
        report.cold_starts.count.to_string(),
        report.gpu_hours,
        format!("{:.0}%", report.utilisation * 100.0),
        report.cost.usd_per_million_tokens,
        &report.overall,
    ));
    let header = [
        "region",
        "machines",
        "requests",
        "wait p99",
        "ttft p50",
        "p99",
        "latency p50",
        "p99",
        "cold",
        "GPU-h",
        "busy",
        "$/Mtok",
        "refused",
    ];
    let cold = &report.cold_starts;
    format!(
        "{} requests simulated in {:.2} s ({:.2} million per second); {:.0} s simulated, the first {:.0} s not reported\n\
         cost ${:.2} (GPUs ${:.2}, egress ${:.2} for {:.1} GB of weights and {:.1} GB of answers); \
         {} cold starts (cache {}, peer {}, origin {}; p50 {:.1} s, p99 {:.1} s); times in ms\n{}",
        report.simulated_requests,
        report.wall_s,
        report.simulated_requests as f64 / report.wall_s.max(1e-9) / 1e6,
        report.duration_s,
        report.warmup_s,
        report.cost.total_usd,
        report.cost.gpu_usd,
        report.cost.egress_usd,
        report.egress_bytes.weights_bytes / 1e9,
        report.egress_bytes.answer_bytes / 1e9,
        cold.count,
        cold.from_cache,
        cold.from_peer,
        cold.from_origin,
        cold.ms.p50 / 1000.0,
        cold.ms.p99 / 1000.0,
        table(&header, rows)
    )
}

/// Several reports side by side, one row each.
fn compare(reports: &[(String, Report)]) -> String {
    let rows = reports
        .iter()
        .map(|(name, r)| {
            vec![
                name.clone(),
                r.overall.requests.to_string(),
                ms(r.overall.ttft_ms.p50),
                ms(r.overall.ttft_ms.p99),
                ms(r.overall.latency_ms.p50),
                r.cold_starts.count.to_string(),
                format!("{:.1}", r.gpu_hours),
                format!("{:.2}", r.cost.gpu_usd),
                format!("{:.2}", r.cost.egress_usd),
                usd_per_m(r.cost.usd_per_million_tokens),
            ]
        })
        .collect();
    let header = [
        "scenario",
        "requests",
        "ttft p50",
        "ttft p99",
        "latency p50",
        "cold",
        "GPU-h",
        "GPU $",
        "egress $",
        "$/Mtok",
    ];
    table(&header, rows)
}
