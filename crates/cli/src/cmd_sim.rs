//! `colo sim SCENARIO.toml`: colo's routing and hold decisions against a simulated world in
//! virtual time (colo-sim). A table for people, `--json` for scripts, `--out DIR` to keep the
//! report; a progress line on a terminal.

use crate::output::table;
use anyhow::Context;
use colo_sim::{Outcome, Report, Scenario};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SimArgs {
    /// The scenario (TOML: seed, duration_s, warmup_s, [[region]], [service], [routing]; see sims/).
    scenario: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the report into this directory (report.json, report.txt).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario).with_context(|| format!("reading {}", args.scenario.display()))?;
    let scenario = Scenario::from_toml(&text).with_context(|| format!("scenario {}", args.scenario.display()))?;
    let show_progress = std::io::stderr().is_terminal();
    let report = tokio::task::spawn_blocking(move || {
        colo_sim::run(&scenario, &mut |done| {
            if show_progress {
                eprint!("\rsimulating: {:>3.0}% of the simulated time", done * 100.0);
                let _ = std::io::stderr().flush();
            }
        })
    })
    .await
    .context("the simulation stopped")?;
    if show_progress {
        eprintln!();
    }
    let json = serde_json::to_string_pretty(&report)?;
    let human = render(&report);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &json).with_context(|| format!("writing {}", dir.join("report.json").display()))?;
        std::fs::write(dir.join("report.txt"), &human).with_context(|| format!("writing {}", dir.join("report.txt").display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{human}");
    }
    Ok(())
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn row(name: &str, machines: String, utilisation: String, o: &Outcome) -> Vec<String> {
    vec![
        name.to_string(),
        machines,
        o.requests.to_string(),
        ms(o.wait_ms.mean),
        ms(o.wait_ms.p99),
        ms(o.latency_ms.p50),
        ms(o.latency_ms.p90),
        ms(o.latency_ms.p99),
        utilisation,
        o.turned_away.to_string(),
    ]
}

/// The report as a table, with what was simulated and how fast above it.
fn render(report: &Report) -> String {
    let mut rows: Vec<Vec<String>> = report
        .regions
        .iter()
        .map(|r| {
            row(
                &r.name,
                r.machines.to_string(),
                format!("{:.0}%", r.utilisation * 100.0),
                &r.outcome,
            )
        })
        .collect();
    let machines: u32 = report.regions.iter().map(|r| r.machines).sum();
    rows.push(row("all", machines.to_string(), "-".into(), &report.overall));
    let header = [
        "region",
        "machines",
        "requests",
        "wait ms mean",
        "wait p99",
        "latency p50",
        "p90",
        "p99",
        "busy",
        "turned away",
    ];
    format!(
        "{} requests simulated in {:.2} s ({:.2} million per second); {:.0} s of simulated time, the first {:.0} s not reported; {:.1} machine-hours\n{}",
        report.simulated_requests,
        report.wall_s,
        report.simulated_requests as f64 / report.wall_s.max(1e-9) / 1e6,
        report.duration_s,
        report.warmup_s,
        report.gpu_hours,
        table(&header, rows)
    )
}
