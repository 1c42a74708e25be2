//! `colo bench scale-out` (hidden): measures how a multi-host colo's shared state scales, against
//! running edges. It writes synthetic hosts, one app and N machines into NATS, then times how
//! long machine state changes take to reach every edge's route table, how much memory the
//! edges grew by, and how long control's reconciliation of the app takes. `bench/scale-out`
//! starts what it needs and calls it.

use anyhow::{bail, Context};
use colo_core::{App, AppName, Device, HostRecord, Machine, MachineState};
use colo_state::{Nats, NatsOptions, StateStore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Route-table propagation, edge memory and reconcile time at N machines.
    ScaleOut(ScaleOutArgs),
    /// The CPU, its SIMD extensions and the engine's kernel paths on it: one line (what each
    /// bench/ script prints beside its numbers), or JSON.
    Cpu {
        #[arg(long)]
        json: bool,
    },
    /// The engine's operators at the benchmark models' shapes, as JSON (bench/ops drives it
    /// beside PyTorch).
    Ops {
        /// Seconds per case.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        /// Only the cases whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
    },
}

#[derive(clap::Args)]
pub struct ScaleOutArgs {
    #[arg(long)]
    nats: String,
    /// Edge base URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    edges: Vec<String>,
    /// Process ids of those edges, comma-separated (for their resident memory).
    #[arg(long, value_delimiter = ',')]
    edge_pids: Vec<u32>,
    /// The cluster token the edges ask of their admin endpoints.
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// State changes timed (each one there and back).
    #[arg(long, default_value_t = 50)]
    changes: usize,
}

const APP: &str = "scale-bench";
const HOSTS: usize = 10;

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::ScaleOut(args) => scale_out(args).await,
        BenchCommand::Ops { secs, filter } => {
            let cases = tokio::task::spawn_blocking(move || colo_engine::opbench::run(&filter, secs)).await??;
            println!("{}", serde_json::json!({ "cases": cases }));
            Ok(())
        }
        BenchCommand::Cpu { json } => {
            let report = colo_engine::cpu::report();
            match json {
                true => println!("{}", serde_json::to_string(&report)?),
                false => println!("{}", report.line()),
            }
            Ok(())
        }
    }
}

use colo_core::unix_ms as now_ms;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn machine(i: usize) -> Machine {
    let host = i % HOSTS;
    Machine {
        state: MachineState::Started,
        addr: Some(format!("127.0.0.1:{}", 20_000 + i % 40_000)),
        updated_at_ms: now_ms(),
        ..Machine::new(
            format!("sb-{i:06}"),
            AppName::new(APP).expect("valid name"),
            AppName::new(APP).expect("valid name"),
            "r1".into(),
            Device::Cpu { slot: (i / HOSTS) as u32 },
            format!("sb-host-{host}"),
            if host.is_multiple_of(2) { "ord".into() } else { "ams".into() },
        )
    }
}

/// Machines of the bench app each edge may route to now.
async fn routable(http: &reqwest::Client, edge: &str, token: &str) -> anyhow::Result<usize> {
    let summary: serde_json::Value = http
        .get(format!("{edge}/colo/routes"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(summary["apps"][APP]["routable"].as_u64().unwrap_or(0) as usize)
}

/// Polls every edge until each shows `want` routable machines; returns the time each took.
async fn until_all(http: &reqwest::Client, edges: &[String], token: &str, want: usize, limit: Duration) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut seen: Vec<Option<Duration>> = vec![None; edges.len()];
    while seen.iter().any(Option::is_none) {
        for (i, edge) in edges.iter().enumerate() {
            if seen[i].is_none() && routable(http, edge, token).await? == want {
                seen[i] = Some(started.elapsed());
            }
        }
        if started.elapsed() > limit {
            bail!("edges did not reach {want} routable machines within {limit:?}");
        }
    }
    Ok(seen.into_iter().flatten().collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn scale_out(args: ScaleOutArgs) -> anyhow::Result<()> {
    if args.edges.is_empty() {
        bail!("--edges: name at least one edge URL");
    }
    if args.machines == 0 || args.machines > 100_000 {
        bail!("--machines: {} is outside 1 to 100000", args.machines);
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_string();
    let nats = Arc::new(Nats::connect(&args.nats, NatsOptions::default()).await?);
    let state: Arc<dyn StateStore> = nats.clone();
    let http = reqwest::Client::new();
    let n = args.machines;
    let rss_before: Vec<u64> = args.edge_pids.iter().map(|p| rss_bytes(*p)).collect();

    // Hosts with a lease that outlasts the run, one app, N machines.
    for h in 0..HOSTS {
        state
            .put_host(&HostRecord {
                name: format!("sb-host-{h}"),
                region: if h % 2 == 0 { "ord".into() } else { "ams".into() },
                addr: "http://127.0.0.1:9".into(),
                devices: (0..n.div_ceil(HOSTS) as u32).map(|slot| Device::Cpu { slot }).collect(),
                cached_models: Vec::new(),
                heartbeat_ms: now_ms(),
                lease_ms: 3_600_000,
                lost: false,
            })
            .await?;
    }
    let app = App {
        name: AppName::new(APP)?,
        model: AppName::new(APP)?,
        revision: "r1".into(),
        machines: n as u32,
        deployed_at_ms: now_ms(),
        version: 1,
        gpus_per_machine: 1,
        gpu: None,
        soft_limit: None,
        hard_limit: None,
        autostop_secs: None,
        min_running: 0,
        autostop_to: Default::default(),
        route_weights: None,
        keys: Vec::new(),
        deploy_tokens: Vec::new(),
        regions: Default::default(),
        engine_cmd: None,
        demand: None,
        placement: None,
        route: None,
        engine: None,
    };
    state.put_app(&app).await?;
    let loading = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let writes = chunk.iter().map(|i| {
            let state = state.clone();
            async move { state.put_machine(&machine(*i)).await }
        });
        for result in futures::future::join_all(writes).await {
            result?;
        }
        eprintln!("[scale-out] wrote {} of {n} machines", chunk.last().map_or(0, |i| i + 1));
    }
    let loaded = until_all(&http, &args.edges, &token, n, Duration::from_secs(120)).await?;
    let load_s = loading.elapsed().as_secs_f64();
    eprintln!("[scale-out] every edge routes {n} machines {load_s:.2}s after the first write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after: Vec<u64> = args.edge_pids.iter().map(|p| rss_bytes(*p)).collect();

    // Propagation: one machine goes unhealthy and back; time until every edge agrees.
    let mut samples = Vec::new();
    for k in 0..args.changes {
        let mut m = machine(k);
        m.healthy = false;
        m.updated_at_ms = now_ms();
        let t0 = Instant::now();
        state.put_machine(&m).await?;
        let put = t0.elapsed();
        let times = until_all(&http, &args.edges, &token, n - 1, Duration::from_secs(30)).await?;
        samples.push(put + times.iter().max().copied().unwrap_or_default());
        m.healthy = true;
        m.updated_at_ms = now_ms();
        let t0 = Instant::now();
        state.put_machine(&m).await?;
        let put = t0.elapsed();
        let times = until_all(&http, &args.edges, &token, n, Duration::from_secs(30)).await?;
        samples.push(put + times.iter().max().copied().unwrap_or_default());
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);

    // Reconcile: control's pass over the app when every machine already matches.
    let store_dir = tempfile::tempdir()?;
    let control = colo_control::Control::remote(
        state.clone(),
        colo_store::Store::open(&store_dir.path().display().to_string())?,
        Arc::new(colo_control::auth::TokenFile::open(&args.token_file)?),
        reqwest::Client::new(),
    );
    let mut reconcile_ms = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        control.reconcile(&app).await?;
        reconcile_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    reconcile_ms.sort_by(f64::total_cmp);

    // Leave the state as it was.
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let deletes = chunk.iter().map(|i| {
            let state = state.clone();
            async move { state.delete_machine(&format!("sb-{i:06}")).await }
        });
        for result in futures::future::join_all(deletes).await {
            result?;
        }
    }
    state.delete_app(&app.name).await?;
    for h in 0..HOSTS {
        state.delete_host(&format!("sb-host-{h}")).await?;
    }

    let grown: Vec<f64> = rss_before
        .iter()
        .zip(&rss_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / 1e6)
        .collect();
    let edge_mb = grown.iter().copied().fold(0.0, f64::max);
    let out = serde_json::json!({
        "machines": n,
        "edges": args.edges.len(),
        "load_s": load_s,
        "load_per_edge_s": loaded.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        "propagation_samples": ms.len(),
        "propagation_p50_ms": percentile(&ms, 0.5),
        "propagation_p99_ms": percentile(&ms, 0.99),
        "propagation_max_ms": ms.last().copied().unwrap_or(0.0),
        "edge_rss_growth_mb": grown,
        "edge_mb": edge_mb,
        "reconcile_ms": reconcile_ms[reconcile_ms.len() / 2],
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
