//! The `colo` command. Each subcommand parses its flags and calls library code.

mod client;
mod cmd_bench;
mod cmd_cache;
mod cmd_daemon;
mod cmd_deploy;
mod cmd_model;
mod cmd_plan;
mod cmd_sim;
mod cmd_up;
mod flags;
mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc: the edge allocates and frees a few small buffers per request on every core, which
/// glibc's allocator does at a measurably higher cost (see docs/BENCHMARKS.md, edge).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "colo", version, about = "Inference next to your GPUs, your weights and your callers.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand shares.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Data directory: state, host cache, local store, logs.
    #[arg(long, env = "COLO_DATA_DIR", default_value = ".colo", global = true)]
    pub data_dir: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run control, an agent and an edge in this process, in the foreground until SIGTERM.
    Up(cmd_up::UpArgs),
    /// Run control alone (apps, deploys, reconciliation) over NATS and an S3-compatible store.
    Control(cmd_daemon::ControlArgs),
    /// Run one host's agent over NATS: leases its devices, runs machines, heartbeats.
    Agent(cmd_daemon::AgentArgs),
    /// Run one region's edge over NATS: the OpenAI-compatible entry point.
    Edge(cmd_daemon::EdgeArgs),
    /// Measurements that bench/ scripts drive.
    #[command(subcommand, hide = true)]
    Bench(cmd_bench::BenchCommand),
    /// Cluster and deploy tokens.
    #[command(subcommand)]
    Token(cmd_deploy::TokenCommand),
    /// Push, inspect and list models in the store.
    #[command(subcommand)]
    Model(cmd_model::ModelCommand),
    /// Deploy a pushed model as an app and wait for its machines to start.
    Deploy(cmd_deploy::DeployArgs),
    /// Remove an app and destroy its machines.
    Destroy(cmd_deploy::DestroyArgs),
    /// List machines: state, device, address, restarts, last hydration.
    Ps(cmd_deploy::PsArgs),
    /// List apps: model, revision, machines started of wanted.
    Apps(cmd_deploy::AppsArgs),
    /// Create, list and revoke an app's API keys.
    #[command(subcommand)]
    Keys(cmd_deploy::KeysCommand),
    /// What each host's model cache holds; evict from it or warm it ahead of traffic.
    #[command(subcommand)]
    Cache(cmd_cache::CacheCommand),
    /// Which GPU, how many, at what cost per million tokens; with --fleet/--demand, where.
    Plan(cmd_plan::PlanArgs),
    /// Simulate a scenario in virtual time with colo's own routing and hold decisions.
    Sim(cmd_sim::SimArgs),
    /// Run colo's built-in inference engine (the agent starts one per machine).
    #[command(subcommand)]
    Engine(EngineCommand),
}

#[derive(Subcommand)]
enum EngineCommand {
    /// Serve one model over an OpenAI-compatible HTTP API.
    Serve(EngineServeArgs),
}

#[derive(clap::Args)]
struct EngineServeArgs {
    /// Directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long)]
    model_dir: PathBuf,
    /// TCP port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Name reported by /v1/models.
    #[arg(long, default_value = "model")]
    name: String,
    /// Milliseconds the batcher waits for more requests after the first.
    #[arg(long, default_value_t = 5)]
    batch_window_ms: u64,
    /// Sequences per forward pass at most (embeddings).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// MiB of KV cache that running generation sequences may hold together.
    #[arg(long, default_value_t = 2048)]
    kv_budget_mib: usize,
    /// Generation requests that may wait for KV room before new ones get 503.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Weights may still be landing: read on stdin, from the agent that pulls them, how far
    /// each weight file is verified, and load each tensor as soon as its bytes are there.
    #[arg(long)]
    landing: bool,
}

/// Raises the open-file limit to the hard limit: an edge holds two sockets per request in
/// flight, and the usual soft limit of 1024 would cap it at a few hundred streams.
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Lets a closed pipe end the command quietly, as Unix tools do (`colo ps | head`): Rust ignores
/// SIGPIPE, so a write to a closed pipe would be an error and `println!` would panic. Not for
/// the daemons, which write only to sockets (Rust sends on those without raising SIGPIPE) and
/// must never die of a reader going away.
fn quiet_broken_pipe(command: &Command) {
    let daemon = matches!(
        command,
        Command::Up(_) | Command::Control(_) | Command::Agent(_) | Command::Edge(_) | Command::Engine(_) | Command::Bench(_)
    );
    if !daemon {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    quiet_broken_pipe(&cli.command);
    raise_open_files();
    tracing_subscriber::fmt()
        // s3s logs every client's mistake on the S3 endpoint (a bad signature, a refused write)
        // as an error with the whole response; the client gets the answer, the log need not.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COLO_LOG").unwrap_or_else(|_| "info,s3s=off".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => cmd_up::run(args).await,
            Command::Control(args) => cmd_daemon::control(args).await,
            Command::Bench(cmd) => cmd_bench::run(cmd).await,
            Command::Agent(args) => cmd_daemon::agent(args).await,
            Command::Edge(args) => cmd_daemon::edge(args).await,
            Command::Token(cmd) => cmd_deploy::token(cmd).await,
            Command::Model(cmd) => cmd_model::run(cmd).await,
            Command::Deploy(args) => cmd_deploy::deploy(args).await,
            Command::Destroy(args) => cmd_deploy::destroy(args).await,
            Command::Ps(args) => cmd_deploy::ps(args).await,
            Command::Apps(args) => cmd_deploy::apps(args).await,
            Command::Keys(cmd) => cmd_deploy::keys(cmd).await,
            Command::Cache(cmd) => cmd_cache::run(cmd).await,
            Command::Plan(args) => cmd_plan::run(args).await,
            Command::Sim(args) => cmd_sim::run(args).await,
            Command::Engine(EngineCommand::Serve(args)) => engine_serve(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: many errors already quote their cause in their
/// own message, and `{:#}` would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

async fn engine_serve(args: EngineServeArgs) -> anyhow::Result<()> {
    if args.max_batch == 0 {
        anyhow::bail!("--max-batch must be at least 1");
    }
    colo_engine::serve(colo_engine::ServeOptions {
        model_dir: args.model_dir,
        addr: std::net::SocketAddr::new(args.host, args.port),
        served_name: args.name,
        batch_window: std::time::Duration::from_millis(args.batch_window_ms),
        max_batch: args.max_batch,
        kv_budget_bytes: args.kv_budget_mib * 1024 * 1024,
        max_waiting: args.max_waiting,
        landing: args.landing.then(|| {
            let landing = colo_engine::landing::Landing::new();
            landing.follow(std::io::BufReader::new(std::io::stdin()));
            landing
        }),
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every subcommand says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_long().map_or(id.to_string(), |l| format!("--{l}"))));
                }
            }
            for sub in command.get_subcommands() {
                if !sub.is_hide_set() {
                    walk(sub, &format!("{path} {}", sub.get_name()), missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "colo", &mut missing);
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }
}
