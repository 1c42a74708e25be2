//! `colo deploy | destroy | ps | apps`: calls to the running colo's API.

use crate::client::Api;
use crate::output::{age, bytes, print_json, table};
use crate::Common;
use anyhow::Context;
use colo_core::{App, Demand, Machine, MachineState, StartPhase};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;

#[derive(clap::Args)]
pub struct DeployArgs {
    /// App name: what callers put in the OpenAI `model` field.
    app: String,
    /// Model name in the store.
    #[arg(long)]
    model: String,
    /// Machines to keep running.
    #[arg(long, default_value_t = 1)]
    machines: u32,
    /// GPU kind for the machines (see `colo plan`); by default the planner picks among the
    /// host's GPUs, and a host without GPUs uses CPU slots.
    #[arg(long)]
    gpu: Option<String>,
    /// Whole GPUs of one host each machine leases, for an engine that spans them: vLLM and
    /// SGLang get them as tensor parallelism, llama-server splits the layers over them, the
    /// app's own --engine-cmd gets {tp}. colo's engine runs on one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    gpus_per_machine: Option<u32>,
    /// Requests in flight per machine past which the edge prefers other machines (default: the edge's).
    #[arg(long)]
    soft_limit: Option<u32>,
    /// Requests in flight per machine at which the edge sends it no more (default: the edge's).
    #[arg(long)]
    hard_limit: Option<u32>,
    /// Stop a machine after this many idle seconds; the next request wakes it again.
    #[arg(long)]
    autostop: Option<u64>,
    /// What --autostop does to an idle machine: stop it (its device is freed; the next request
    /// waits for a cold start from cached weights) or suspend it (the engine keeps the model and
    /// its device, and wakes in about a second: vLLM's sleep mode, SGLang's memory release,
    /// llama-server's idle sleep).
    #[arg(long, value_parser = parse_idle, requires = "autostop", default_value = "stop")]
    autostop_to: colo_core::IdleAction,
    /// Machines kept started in each region even when idle (with --autostop).
    #[arg(long, default_value_t = 0)]
    min_running: u32,
    /// Machines in one region, as CODE=COUNT (repeat for more regions); replaces --machines.
    #[arg(long = "region", value_name = "CODE=COUNT", value_parser = parse_count)]
    regions: Vec<(String, u32)>,
    /// demand.toml, as for `colo plan --demand`: requests/s and token lengths per region.
    /// Control's planner then places the machines on the live hosts' GPUs (whole cards, within
    /// the demand's RTT limit) and places them again when hosts come and go. Replaces
    /// --machines; not with --region.
    #[arg(long, conflicts_with = "regions")]
    demand: Option<std::path::PathBuf>,
    /// Run this command as each machine's engine instead of colo's (bring your own vLLM,
    /// llama.cpp or any HTTP server); {port} is where it must listen, {model_dir} holds the
    /// model's files.
    #[arg(long, conflicts_with = "engine")]
    engine_cmd: Option<String>,
    /// The engine the machines run: colo (colo's own), llama-server (llama.cpp, on a GGUF
    /// model), vllm or sglang. colo starts it on the leased device, knows when it is ready and
    /// reads its load from its metrics.
    #[arg(long, value_parser = parse_engine)]
    engine: Option<colo_core::EngineKind>,
    /// The engine's program, where it is not the profile's on PATH (llama-server, vllm,
    /// python3 -m sglang.launch_server).
    #[arg(long, requires = "engine")]
    engine_bin: Option<String>,
    /// Arguments appended to the engine's command line, as one shell-quoted string.
    #[arg(long, requires = "engine", allow_hyphen_values = true)]
    engine_args: Option<String>,
    /// How the edge chooses among the app's machines: score (prefix match, KV headroom and
    /// queue, the default), least-loaded, round-robin, or pack (fill one machine to its soft
    /// limit before the next, so that autostop can stop the spare ones).
    #[arg(long, value_parser = parse_route)]
    route: Option<colo_core::RouteMode>,
    /// Weights of `--route score`: `prefix=3,kv=2,queue=2,rtt=1` (the defaults; keys left out
    /// keep theirs): per share of the prompt matched, per share of KV cache free, against each
    /// soft limit of load, against each 100 ms of RTT.
    #[arg(long, value_parser = parse_weights)]
    route_weights: Option<colo_core::RouteWeights>,
    /// Return once the deploy is recorded, without waiting for machines to start.
    #[arg(long)]
    detach: bool,
    /// Seconds to wait for the machines to start.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct DestroyArgs {
    /// App name.
    app: String,
    /// Return once control has the app removed, without waiting for its machines to stop and
    /// give their devices back.
    #[arg(long)]
    detach: bool,
    /// Seconds to wait for the machines to be destroyed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct PsArgs {
    /// Include destroyed machines.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct AppsArgs {
    #[command(flatten)]
    common: Common,
}

/// `CODE=COUNT` of `--region` and `KIND=COUNT` of `colo agent --gpus`: the name lowercased.
pub(crate) fn parse_count(value: &str) -> Result<(String, u32), String> {
    let (code, count) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=COUNT (for example ord=2)"))?;
    let count = count
        .parse::<u32>()
        .map_err(|_| format!("{value:?}: the count {count:?} is not a whole number"))?;
    Ok((code.trim().to_ascii_lowercase(), count))
}

fn parse_engine(value: &str) -> Result<colo_core::EngineKind, String> {
    colo_core::EngineKind::parse(value).ok_or_else(|| format!("{value:?} is not an engine; colo knows colo, llama-server, vllm and sglang"))
}

fn parse_idle(value: &str) -> Result<colo_core::IdleAction, String> {
    colo_core::IdleAction::parse(value).ok_or_else(|| format!("{value:?}: --autostop-to is stop or suspend"))
}

fn parse_weights(value: &str) -> Result<colo_core::RouteWeights, String> {
    colo_core::RouteWeights::parse(value)
}

fn parse_route(value: &str) -> Result<colo_core::RouteMode, String> {
    colo_core::RouteMode::parse(value).ok_or_else(|| format!("{value:?} is not a route mode: score, least-loaded, round-robin or pack"))
}

/// Splits a shell-quoted argument string into words: whitespace separates, single quotes keep
/// everything, double quotes keep everything but a backslash-escaped quote or backslash.
pub(crate) fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("{line:?}: a single quote is not closed")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("{line:?}: a double quote is not closed")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("{line:?}: a double quote is not closed")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("{line:?}: ends with a backslash")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Reads and checks a demand file, naming the file and each field that is wrong.
fn read_demand(path: &std::path::Path) -> anyhow::Result<Demand> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let demand: Demand = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let problems = demand.validate(&colo_core::Regions::builtin());
    if !problems.is_empty() {
        anyhow::bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(demand)
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let demand = args.demand.as_deref().map(read_demand).transpose()?;
    let engine_args = match &args.engine_args {
        Some(line) => split_args(line).map_err(|e| anyhow::anyhow!("--engine-args: {e}"))?,
        None => Vec::new(),
    };
    let engine = args.engine.map(|kind| colo_core::EngineSpec {
        kind,
        bin: args.engine_bin.clone(),
        args: engine_args,
        sleep_after_secs: 0,
    });
    let api = Api::connect(&args.common.data_dir)?;
    let started = std::time::Instant::now();
    let app: App = api
        .post(
            "/v1/apps",
            &json!({"name": args.app, "model": args.model, "machines": args.machines, "gpu": args.gpu,
                "gpus_per_machine": args.gpus_per_machine,
                "soft_limit": args.soft_limit, "hard_limit": args.hard_limit,
                "autostop_secs": args.autostop, "autostop_to": args.autostop_to, "min_running": args.min_running,
                "regions": args.regions.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "engine_cmd": args.engine_cmd, "demand": demand, "engine": engine, "route": args.route,
                "route_weights": args.route_weights}),
        )
        .await?;
    let machines: Vec<Machine> = api.get(&format!("/v1/apps/{}/machines", app.name)).await?;
    let mut machines: Vec<Machine> = machines.into_iter().filter(|m| m.state != MachineState::Destroyed).collect();
    let watch =
        (!args.detach && !args.common.json && std::io::stderr().is_terminal()).then(|| watch_starts(api.clone(), app.name.to_string()));
    if !args.detach {
        for machine in machines.iter_mut() {
            let timeout = std::time::Duration::from_secs(args.timeout.min(3600));
            let started = api
                .wait_machine(app.name.as_str(), &machine.id, "started", timeout)
                .await
                .with_context(|| format!("waiting for machine {} to start", machine.id));
            match started {
                Ok(started) => *machine = started,
                // A deploy is all or nothing: a new app whose machine does not start is removed
                // (a redeploy's control keeps the previous version on a failed rollout).
                Err(e) if app.version == 1 => {
                    let removed = api.delete(&format!("/v1/apps/{}", app.name)).await;
                    let what = match removed {
                        Ok(()) => format!("app {} was not deployed (nothing is recorded)", app.name),
                        Err(r) => format!("app {} did not start, and removing it failed ({r:#}): colo destroy {0}", app.name),
                    };
                    return Err(e.context(what));
                }
                Err(e) => return Err(e),
            }
        }
    }
    drop(watch);
    if args.common.json {
        return print_json(&json!({"app": app, "machines": machines}));
    }
    println!(
        "deployed {} (model {} revision {}) in {:.1}s",
        app.name,
        app.model,
        app.revision,
        started.elapsed().as_secs_f64()
    );
    match (&app.gpu, &app.placement) {
        (Some(gpu), _) if app.gpus_per_machine > 1 => {
            println!(
                "gpu {} x{} per machine ({}): {}",
                gpu.kind, app.gpus_per_machine, gpu.quant, gpu.why
            )
        }
        (Some(gpu), _) => println!("gpu {} ({}): {}", gpu.kind, gpu.quant, gpu.why),
        (None, Some(_)) => {}
        (None, None) => println!("no GPU chosen: machines run on any free device (CPU slots on a host without GPUs)"),
    }
    if let Some(placement) = &app.placement {
        for m in &placement.machines {
            println!("placed: {} ({}) {} x{} ({})", m.host, m.region, m.gpu, m.n_gpus, m.quant);
        }
        for u in &placement.unmet {
            println!("unmet: {} {:.2} req/s: {}", u.region, u.requests_per_s, u.reason);
        }
    }
    println!("{}", machines_table(&machines));
    Ok(())
}

/// Shows on the terminal how far an app's machines have got in starting (hydrating: bytes and
/// rate; loading: seconds) until dropped.
struct StartWatch {
    task: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

fn watch_starts(api: Api, app: String) -> StartWatch {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("{app}: starting"));
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(machines) = api.get::<Vec<Machine>>(&format!("/v1/apps/{app}/machines")).await {
                shown.set_message(start_line(&app, &machines, colo_core::unix_ms()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    StartWatch { task, bar }
}

/// One line on an app's start: machines started of all, and each starting one's phase.
fn start_line(app: &str, machines: &[Machine], now_ms: u64) -> String {
    let live: Vec<&Machine> = machines.iter().filter(|m| m.state != MachineState::Destroyed).collect();
    let started = live.iter().filter(|m| m.state == MachineState::Started).count();
    let mut line = format!("{app}: {started}/{} started", live.len());
    for m in live.iter().filter(|m| m.state != MachineState::Started) {
        let secs = |since_ms: u64| now_ms.saturating_sub(since_ms) as f64 / 1000.0;
        let phase = match &m.progress {
            Some(p) if p.phase == StartPhase::Hydrating => {
                let rate = p.bytes_done as f64 / secs(p.since_ms).max(0.001);
                format!(
                    "hydrating {} of {} at {}/s",
                    bytes(p.bytes_done),
                    bytes(p.bytes_total),
                    bytes(rate as u64)
                )
            }
            Some(p) => format!("loading the engine, {:.1}s", secs(p.since_ms)),
            None => m.state.to_string(),
        };
        line.push_str(&format!("; {} {phase}", m.id));
    }
    line
}

pub async fn destroy(args: DestroyArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    let machines: Vec<Machine> = api.get(&format!("/v1/apps/{}/machines", args.app)).await.unwrap_or_default();
    api.delete(&format!("/v1/apps/{}", args.app)).await?;
    // Destroyed only once its engine has stopped and its devices are free: a deploy that comes
    // next finds them free.
    if !args.detach {
        let timeout = std::time::Duration::from_secs(args.timeout.min(3600));
        for m in machines.iter().filter(|m| m.state != MachineState::Destroyed) {
            api.wait_machine(&args.app, &m.id, "destroyed", timeout)
                .await
                .with_context(|| format!("waiting for machine {} to be destroyed", m.id))?;
        }
    }
    if args.common.json {
        return print_json(&json!({"destroyed": args.app}));
    }
    println!("destroyed {}", args.app);
    Ok(())
}

pub async fn ps(args: PsArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    let machines: Vec<Machine> = api.get("/v1/machines").await?;
    let machines: Vec<Machine> = machines
        .into_iter()
        .filter(|m| args.all || m.state != MachineState::Destroyed)
        .collect();
    if args.common.json {
        return print_json(&machines);
    }
    println!("{}", machines_table(&machines));
    Ok(())
}

pub async fn apps(args: AppsArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    let apps: Vec<App> = api.get("/v1/apps").await?;
    let machines: Vec<Machine> = api.get("/v1/machines").await?;
    if args.common.json {
        let out: Vec<_> = apps
            .iter()
            .map(|a| {
                let m = AppMachines::of(a, &machines);
                json!({"app": a, "machines_started": m.started, "machines_by_state": m.by_state, "scaled_to_zero": m.scaled_to_zero})
            })
            .collect();
        return print_json(&out);
    }
    let rows = apps
        .iter()
        .map(|a| {
            let autostop = match a.autostop_secs {
                Some(secs) if a.autostop_to.is_stop() => format!("stop after {secs}s idle"),
                Some(secs) => format!("suspend after {secs}s idle"),
                None => "-".to_string(),
            };
            vec![
                a.name.to_string(),
                a.model.to_string(),
                a.revision.clone(),
                AppMachines::of(a, &machines).to_string(),
                autostop,
                a.keys.len().to_string(),
                age(a.deployed_at_ms),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["APP", "MODEL", "REVISION", "MACHINES", "AUTOSTOP", "KEYS", "DEPLOYED"], rows)
    );
    for app in &apps {
        for u in app.placement.iter().flat_map(|p| &p.unmet) {
            println!(
                "unmet demand of {}: {} {:.2} req/s: {}",
                app.name, u.region, u.requests_per_s, u.reason
            );
        }
    }
    Ok(())
}

/// An app's machines as `colo apps` shows them: started of wanted, how many are in each other
/// state, and whether autostop has scaled the app to zero (it wakes on the next request).
struct AppMachines {
    wanted: u32,
    started: usize,
    by_state: std::collections::BTreeMap<String, usize>,
    scaled_to_zero: bool,
}

impl AppMachines {
    fn of(app: &App, machines: &[Machine]) -> Self {
        let mut by_state = std::collections::BTreeMap::new();
        for m in machines.iter().filter(|m| m.app == app.name && m.state != MachineState::Destroyed) {
            *by_state.entry(m.state.to_string()).or_insert(0) += 1;
        }
        let count = |state: MachineState| by_state.get(state.as_str()).copied().unwrap_or(0);
        let (started, parked) = (
            count(MachineState::Started),
            count(MachineState::Stopped) + count(MachineState::Suspended),
        );
        AppMachines {
            wanted: app.machines,
            started,
            scaled_to_zero: app.autostop_secs.is_some() && started == 0 && parked > 0 && parked == by_state.values().sum::<usize>(),
            by_state,
        }
    }
}

impl std::fmt::Display for AppMachines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} started", self.started, self.wanted)?;
        if self.scaled_to_zero {
            return f.write_str(", scaled to zero (wakes on a request)");
        }
        for (state, n) in self.by_state.iter().filter(|(state, _)| *state != "started") {
            write!(f, ", {n} {state}")?;
        }
        Ok(())
    }
}

fn machines_table(machines: &[Machine]) -> String {
    let rows = machines
        .iter()
        .map(|m| {
            let hydration = match &m.hydration {
                Some(h) if h.bytes_fetched > 0 => format!("{} in {:.2}s ({:.2} GB/s)", bytes(h.bytes_fetched), h.seconds, h.gb_per_s()),
                Some(_) => "cached".to_string(),
                None => "-".to_string(),
            };
            let cold_start = match &m.cold_start {
                Some(c) => format!("{} ms ({})", c.first_response_ms, c.source()),
                None => "-".to_string(),
            };
            vec![
                m.id.clone(),
                m.app.to_string(),
                match (m.state, m.healthy, &m.progress) {
                    (MachineState::Started, false, _) => "started (unhealthy)".to_string(),
                    (MachineState::Starting, _, Some(progress)) => format!("starting: {progress}"),
                    (state, _, _) => state.to_string(),
                },
                // A stopped machine holds no device; it leases one when it starts.
                if m.holds_device() { m.device_label() } else { "-".to_string() },
                m.host.clone(),
                m.region.clone(),
                m.addr.clone().unwrap_or_else(|| "-".into()),
                m.restarts.to_string(),
                hydration,
                cold_start,
                age(m.updated_at_ms),
            ]
        })
        .collect();
    table(
        &[
            "MACHINE",
            "APP",
            "STATE",
            "DEVICE",
            "HOST",
            "REGION",
            "ADDRESS",
            "RESTARTS",
            "HYDRATION",
            "COLD START",
            "UPDATED",
        ],
        rows,
    )
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Make an API key for an app (shown once). An app with keys answers only requests that
    /// carry one of them (Authorization: Bearer <key>).
    Create(KeyCreateArgs),
    /// List an app's keys (ids and limits; keys themselves are not stored).
    Ls(KeyAppArgs),
    /// Remove a key.
    Revoke(KeyRevokeArgs),
}

#[derive(clap::Args)]
pub struct KeyCreateArgs {
    /// App the key calls.
    app: String,
    /// Requests per second the key may make.
    #[arg(long, allow_negative_numbers = true)]
    rps: Option<u32>,
    /// LLM tokens per minute the key may use (prompt estimate plus max_tokens).
    #[arg(long, allow_negative_numbers = true)]
    tokens_per_minute: Option<u32>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct KeyAppArgs {
    /// App whose keys to list.
    app: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct KeyRevokeArgs {
    /// App the key belongs to.
    app: String,
    /// The key's id (`colo keys ls`).
    id: String,
    #[command(flatten)]
    common: Common,
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create(args) => {
            let api = Api::connect(&args.common.data_dir)?;
            let body = json!({"rps": args.rps, "tokens_per_minute": args.tokens_per_minute});
            let created: serde_json::Value = api.post(&format!("/v1/apps/{}/keys", args.app), &body).await?;
            if args.common.json {
                return print_json(&created);
            }
            println!("{}", created["key"].as_str().unwrap_or_default());
            eprintln!(
                "key {} for {}: keep it now, colo stores only its digest",
                created["record"]["id"].as_str().unwrap_or_default(),
                args.app
            );
            Ok(())
        }
        KeysCommand::Ls(args) => {
            let api = Api::connect(&args.common.data_dir)?;
            let keys: Vec<colo_core::ApiKey> = api.get(&format!("/v1/apps/{}/keys", args.app)).await?;
            if args.common.json {
                return print_json(&keys);
            }
            let limit = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
            let rows = keys
                .iter()
                .map(|k| vec![k.id.clone(), limit(k.rps), limit(k.tokens_per_minute)])
                .collect();
            println!("{}", table(&["KEY", "RPS", "TOKENS/MIN"], rows));
            Ok(())
        }
        KeysCommand::Revoke(args) => {
            let api = Api::connect(&args.common.data_dir)?;
            api.delete(&format!("/v1/apps/{}/keys/{}", args.app, args.id)).await?;
            if args.common.json {
                return print_json(&json!({"revoked": args.id}));
            }
            println!("revoked {}", args.id);
            Ok(())
        }
    }
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a deploy token for one app (shown once): it may deploy, inspect and destroy that
    /// app through control, and nothing else.
    Create(TokenAppArgs),
    /// Replace the cluster token in the data dir; daemons reading the file use the new one at
    /// their next request (copy it to hosts whose daemons read their own copy).
    Rotate(TokenRotateArgs),
    /// Print the read-only token, and the dashboard's address signed in with it: it shows the
    /// dashboard and engine logs and changes nothing (rotating the cluster token replaces it).
    ReadOnly(TokenRotateArgs),
}

#[derive(clap::Args)]
pub struct TokenAppArgs {
    /// App the deploy token may redeploy (and nothing else).
    app: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct TokenRotateArgs {
    #[command(flatten)]
    common: Common,
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => {
            let api = Api::connect(&args.common.data_dir)?;
            let created: serde_json::Value = api.post(&format!("/v1/apps/{}/deploy-tokens", args.app), &json!({})).await?;
            if args.common.json {
                return print_json(&created);
            }
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!("deploy token for {}: keep it now, colo stores only its digest", args.app);
            Ok(())
        }
        TokenCommand::ReadOnly(args) => {
            let dir = &args.common.data_dir;
            let token = colo_control::auth::TokenFile::open(&dir.join(colo_control::auth::TOKEN_FILE))
                .with_context(|| {
                    format!(
                        "reading the cluster token in {} (is colo up or colo control running there?)",
                        dir.display()
                    )
                })?
                .current();
            let read_only = colo_control::auth::read_only_token(&token);
            let api = colo_node::RunInfo::read(dir).map(|r| r.api).unwrap_or_default();
            let dashboard = (!api.is_empty()).then(|| format!("{api}/ui#token={read_only}"));
            if args.common.json {
                return print_json(&json!({"token": read_only, "dashboard": dashboard}));
            }
            println!("{read_only}");
            if let Some(url) = dashboard {
                eprintln!("dashboard, read-only: {url}");
            }
            Ok(())
        }
        TokenCommand::Rotate(args) => {
            colo_control::auth::rotate_token(&args.common.data_dir)
                .with_context(|| format!("rotating the token in {}", args.common.data_dir.display()))?;
            if args.common.json {
                return print_json(&json!({"rotated": args.common.data_dir.join(colo_control::auth::TOKEN_FILE)}));
            }
            println!("rotated {}", args.common.data_dir.join(colo_control::auth::TOKEN_FILE).display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{split_args, start_line};
    use colo_core::{AppName, Device, Machine, MachineState, StartPhase, StartProgress};

    #[test]
    fn a_start_shows_bytes_and_rate_then_load_time() {
        let machine = |id: &str, state, progress| Machine {
            state,
            progress,
            ..Machine::new(
                id.into(),
                AppName::new("chat").unwrap(),
                AppName::new("big").unwrap(),
                "r".into(),
                Device::Cpu { slot: 0 },
                "vm".into(),
                "local".into(),
            )
        };
        let hydrating = StartProgress {
            phase: StartPhase::Hydrating,
            bytes_done: 1_500_000_000,
            bytes_total: 4_000_000_000,
            since_ms: 10_000,
        };
        let loading = StartProgress {
            phase: StartPhase::Loading,
            bytes_done: 0,
            bytes_total: 4_000_000_000,
            since_ms: 11_500,
        };
        let machines = [
            machine("m-1", MachineState::Started, None),
            machine("m-2", MachineState::Starting, Some(hydrating.clone())),
            machine("m-3", MachineState::Starting, Some(loading)),
            machine("m-4", MachineState::Destroyed, None),
        ];
        assert_eq!(
            start_line("chat", &machines, 13_000),
            "chat: 1/3 started; m-2 hydrating 1.5 GB of 4.0 GB at 500.0 MB/s; m-3 loading the engine, 1.5s"
        );
        assert_eq!(hydrating.to_string(), "hydrating 37%");
    }

    #[test]
    fn engine_args_split_like_a_shell() {
        let cases: Vec<(&str, Result<Vec<&str>, &str>)> = vec![
            ("--parallel 4 -c 8192", Ok(vec!["--parallel", "4", "-c", "8192"])),
            ("  --x   'a b'  ", Ok(vec!["--x", "a b"])),
            (r#"--json "{\"k\": 1}""#, Ok(vec!["--json", r#"{"k": 1}"#])),
            (r"a\ b c", Ok(vec!["a b", "c"])),
            ("''", Ok(vec![""])),
            ("", Ok(vec![])),
            ("'open", Err("not closed")),
            ("\"open", Err("not closed")),
        ];
        for (line, expected) in cases {
            match (split_args(line), expected) {
                (Ok(words), Ok(expected)) => assert_eq!(words, expected, "{line:?}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{line:?}: {e}"),
                (got, expected) => panic!("{line:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
