//! `colo model push | pull | inspect | ls | synth`.

use crate::output::{bytes, print_json, table};
use crate::Common;
use clap::Subcommand;
use colo_node::RunInfo;
use colo_store::{push_dir, PushOptions, Store};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Upload a Hugging Face style model directory to the store.
    Push(PushArgs),
    /// Pull a pushed model into a host cache (verified, resumable, from peers first).
    Pull(PullArgs),
    /// Show a pushed model's files, chunks and tensors.
    Inspect(InspectArgs),
    /// List the models in the store.
    Ls(LsArgs),
    /// Delete a model, or one revision of it, from the store (refused while an app uses it).
    Rm(RmArgs),
    /// Write a small random-weight Llama model (for tests and demos; no download needed).
    Synth(SynthArgs),
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Architecture; only llama is synthesized.
    #[arg(long, default_value = "llama")]
    arch: String,
    /// Transformer layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Hidden size (width of the residual stream).
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Attention heads (--hidden must divide by it).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (grouped-query attention; --heads must divide by it).
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Vocabulary size of the byte-level tokenizer written with it.
    #[arg(long, default_value_t = 512)]
    vocab: usize,
    /// Feed-forward width (0: about 8/3 of --hidden).
    #[arg(long, default_value_t = 0)]
    intermediate: usize,
    /// Context length in tokens.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Seed of the random weights: the same seed writes the same model.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Share the input embedding with the output head.
    #[arg(long)]
    tie_embeddings: bool,
    /// Directory to write (created; files in it are replaced).
    dir: PathBuf,
    /// Print JSON for scripts instead of a sentence.
    #[arg(long)]
    json: bool,
    /// Accepted for scripts that give every colo command one; synth writes only to DIR.
    #[arg(long, hide = true)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StoreArg {
    /// Model store: a directory or s3://bucket/prefix (endpoint and keys from AWS_* variables).
    /// Default: the store of the running `colo up`, else <data dir>/store.
    #[arg(long)]
    store: Option<String>,
}

impl StoreArg {
    fn open(&self, common: &Common) -> anyhow::Result<Store> {
        let url = match &self.store {
            Some(url) => url.clone(),
            None => match RunInfo::read(&common.data_dir) {
                Some(info) => info.store,
                None => common.data_dir.join("store").display().to_string(),
            },
        };
        Ok(Store::open(&url)?)
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The model directory (config.json, *.safetensors, tokenizer files).
    dir: PathBuf,
    /// Name of the model in the store.
    #[arg(long)]
    name: String,
    /// Bytes per verified chunk.
    #[arg(long, default_value_t = colo_model::DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// Model name in the store.
    name: String,
    /// Revision to pull; the latest when absent.
    #[arg(long)]
    revision: Option<String>,
    /// Host cache directory. Default: <data dir>/cache.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Ranged reads in flight at once (default: tuned from measured throughput).
    #[arg(long)]
    concurrency: Option<usize>,
    /// MiB per ranged read, rounded to whole chunks (default: tuned).
    #[arg(long)]
    range_mib: Option<u64>,
    /// A peer host's API base URL to read cached files from first (repeatable). Peers that are
    /// pulling the same model at once serve each other the chunks they have verified.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Serve this cache's chunks to peers on this address (ip:port) while pulling, and for
    /// --linger seconds after. No token is asked: use it on a private network.
    #[arg(long, value_name = "ADDR")]
    serve: Option<std::net::SocketAddr>,
    /// Seconds to keep serving peers after the pull ends (with --serve).
    #[arg(long, default_value_t = 0, requires = "serve")]
    linger: u64,
    /// Flush each file to disk before it takes its real name (slower; files from an earlier
    /// boot are re-verified before use either way).
    #[arg(long)]
    fsync: bool,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model name in the store.
    name: String,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// NAME for every revision, or NAME@REVISION (a prefix of the revision will do) for one.
    model: String,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    common: Common,
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Push(args) => push(args).await,
        ModelCommand::Pull(args) => pull(args).await,
        ModelCommand::Inspect(args) => inspect(args).await,
        ModelCommand::Ls(args) => ls(args).await,
        ModelCommand::Rm(args) => rm(args).await,
        ModelCommand::Synth(args) => synth(args),
    }
}

async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let (name, revision) = match args.model.split_once('@') {
        Some((name, revision)) if !revision.is_empty() => (name, Some(revision)),
        Some(_) => anyhow::bail!("{:?}: give a revision after @, or the name alone for every revision", args.model),
        None => (args.model.as_str(), None),
    };
    colo_core::AppName::new(name).map_err(|e| anyhow::anyhow!("{name:?}: {e}"))?;
    // With colo running on this data dir, a model an app runs is kept: its machines hydrate
    // from it whenever they start.
    if RunInfo::read(&args.common.data_dir).is_some() {
        let api = crate::client::Api::connect(&args.common.data_dir)?;
        let apps: Vec<colo_core::App> = api.get("/v1/apps").await?;
        let machines: Vec<colo_core::Machine> = api.get("/v1/machines").await?;
        let uses = |model: &colo_core::AppName, rev: &str| model.as_str() == name && revision.is_none_or(|r| rev.starts_with(r));
        let mut users: Vec<String> = apps
            .iter()
            .filter(|a| uses(&a.model, &a.revision))
            .map(|a| format!("app {} (revision {})", a.name, a.revision))
            .collect();
        users.extend(
            machines
                .iter()
                .filter(|m| m.state != colo_core::MachineState::Destroyed && uses(&m.model, &m.revision))
                .filter(|m| !apps.iter().any(|a| a.name == m.app && uses(&a.model, &a.revision)))
                .map(|m| format!("machine {} of app {} (revision {})", m.id, m.app, m.revision)),
        );
        if !users.is_empty() {
            anyhow::bail!(
                "model {} is in use by {}; destroy or redeploy those apps first",
                args.model,
                users.join(", ")
            );
        }
    }
    let store = args.store.open(&args.common)?;
    let (removed, latest) = store.remove(name, revision).await?;
    let freed: u64 = removed.iter().map(|m| m.total_bytes()).sum();
    let revisions: Vec<&str> = removed.iter().map(|m| m.revision.as_str()).collect();
    if args.common.json {
        return print_json(&serde_json::json!({"model": name, "removed": revisions, "bytes": freed, "latest": latest}));
    }
    let left = match &latest {
        Some(latest) => format!("; the latest revision is now {latest}"),
        None => format!("; model {name} is gone"),
    };
    println!(
        "removed {name} revision{} {} ({}){left}",
        if revisions.len() == 1 { "" } else { "s" },
        revisions.join(", "),
        bytes(freed)
    );
    println!("host caches keep their copies until evicted (colo cache evict {name})");
    Ok(())
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    if args.arch != "llama" {
        anyhow::bail!("--arch: {:?} cannot be synthesized (llama can)", args.arch);
    }
    let spec = colo_model::synth::SynthSpec {
        layers: args.layers,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        vocab: args.vocab,
        intermediate: args.intermediate,
        context: args.context,
        seed: args.seed,
        dtype: args.dtype.clone(),
        tie_embeddings: args.tie_embeddings,
    };
    let files = colo_model::synth::synth_llama(&spec)?;
    std::fs::create_dir_all(&args.dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", args.dir.display()))?;
    let mut total = 0;
    for (name, bytes) in &files {
        let path = args.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        total += bytes.len() as u64;
    }
    if args.json {
        return print_json(&serde_json::json!({"dir": args.dir, "bytes": total, "files": files.iter().map(|f| &f.0).collect::<Vec<_>>()}));
    }
    println!(
        "wrote a random {}-layer llama ({}) to {}",
        args.layers,
        bytes(total),
        args.dir.display()
    );
    Ok(())
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    colo_core::AppName::new(args.name.clone()).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    if !(64 * 1024..=1 << 30).contains(&args.chunk_size) {
        anyhow::bail!("--chunk-size {} is outside 64 KiB to 1 GiB", args.chunk_size);
    }
    let store = args.store.open(&args.common)?;
    let total: u64 = walk_size(&args.dir);
    let bar = if std::io::stderr().is_terminal() && !args.common.json {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}")
                .expect("valid template"),
        );
        bar.set_message(format!("pushing {}", args.name));
        bar
    } else {
        ProgressBar::hidden()
    };
    let progress = {
        let bar = bar.clone();
        Arc::new(move |n| bar.inc(n))
    };
    let opts = PushOptions {
        chunk_size: args.chunk_size,
        ..Default::default()
    };
    let report = push_dir(&store, &args.dir, &args.name, &opts, progress).await?;
    bar.finish_and_clear();
    if args.store.store.is_none() && RunInfo::read(&args.common.data_dir).is_none() {
        // A push into a data dir no colo runs on: the colo the user has in mind (started with
        // another --data-dir) will not see the model.
        let dir = args.common.data_dir.display();
        eprintln!(
            "note: no colo is running with data dir {dir}; the model went to {dir}/store, which only a colo started with --data-dir {dir} reads (give --data-dir DIR of the running colo, or --store URL)"
        );
    }
    let m = &report.manifest;
    if args.common.json {
        return print_json(&serde_json::json!({
            "name": m.name, "revision": m.revision, "files": m.files.len(), "bytes": m.total_bytes(),
            "bytes_uploaded": report.bytes_uploaded, "seconds": report.seconds, "store": store.url(),
        }));
    }
    println!(
        "pushed {} revision {}: {} files, {} ({} uploaded) in {:.2}s to {}",
        m.name,
        m.revision,
        m.files.len(),
        bytes(m.total_bytes()),
        bytes(report.bytes_uploaded),
        report.seconds,
        store.url()
    );
    Ok(())
}

async fn pull(args: PullArgs) -> anyhow::Result<()> {
    if args.concurrency == Some(0) || args.range_mib == Some(0) {
        anyhow::bail!("--concurrency and --range-mib must be at least 1");
    }
    let store = args.store.open(&args.common)?;
    let manifest = match &args.revision {
        Some(revision) => store.manifest_at(&args.name, revision).await?,
        None => store.manifest(&args.name).await?,
    };
    let cache = colo_store::HostCache::new(args.cache_dir.clone().unwrap_or_else(|| args.common.data_dir.join("cache")));
    let bar = if std::io::stderr().is_terminal() && !args.common.json {
        let bar = ProgressBar::new(manifest.total_bytes());
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}")
                .expect("valid template"),
        );
        bar.set_message(format!("pulling {}", args.name));
        bar
    } else {
        ProgressBar::hidden()
    };
    let progress = {
        let bar = bar.clone();
        Arc::new(move |n| bar.inc(n))
    };
    let serving = match args.serve {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--serve {addr}: {e}"))?;
            Some(tokio::spawn(colo_store::serve_peers(listener, cache.clone())))
        }
        None => None,
    };
    let opts = colo_store::HydrateOptions {
        concurrency: args.concurrency,
        range_bytes: args.range_mib.map(|m| m * 1024 * 1024),
        peers: args.peers.clone(),
        self_url: args.serve.map(|addr| format!("http://{addr}")),
        durable: args.fsync,
        ..Default::default()
    };
    let report = cache.pull(&store, &manifest, &opts, progress).finish().await?;
    let finished_at_ms = colo_core::unix_ms();
    bar.finish_and_clear();
    let dir = cache.model_dir(&manifest.name, &manifest.revision);
    if args.common.json {
        let mut value = serde_json::to_value(&report)?;
        value["gb_per_s"] = serde_json::json!(report.gb_per_s());
        value["dir"] = serde_json::json!(dir);
        value["revision"] = serde_json::json!(manifest.revision);
        value["finished_at_ms"] = serde_json::json!(finished_at_ms);
        print_json(&value)?;
        linger(serving, args.linger).await;
        return Ok(());
    }
    println!(
        "pulled {} revision {} into {}: {} fetched ({} from peers, {} from the store, {} already cached) in {:.2}s, {:.2} GB/s ({} in flight, {} ranges)",
        manifest.name,
        manifest.revision,
        dir.display(),
        bytes(report.bytes_fetched),
        bytes(report.bytes_from_peer),
        bytes(report.bytes_from_origin),
        bytes(report.bytes_from_cache),
        report.seconds,
        report.gb_per_s(),
        report.concurrency,
        bytes(report.range_bytes),
    );
    for (peer, n) in &report.bytes_by_peer {
        println!("  {} from {peer}", bytes(*n));
    }
    linger(serving, args.linger).await;
    Ok(())
}

/// Keeps serving peers for `seconds` after a pull, then stops.
async fn linger(serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>, seconds: u64) {
    let Some(serving) = serving else { return };
    if seconds > 0 {
        eprintln!("serving peers for {seconds} s more");
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    }
    serving.abort();
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_size(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let store = args.store.open(&args.common)?;
    let manifest = store.manifest(&args.name).await?;
    if args.common.json {
        return print_json(&manifest);
    }
    println!(
        "model {}  revision {}  chunk size {}  pushed {}",
        manifest.name,
        manifest.revision,
        // Chunk sizes are powers of two: said in MiB, as they were given.
        match manifest.chunk_size % (1 << 20) {
            0 => format!("{} MiB", manifest.chunk_size >> 20),
            _ => bytes(manifest.chunk_size),
        },
        crate::output::age(manifest.pushed_at_ms)
    );
    let rows = manifest
        .files
        .iter()
        .map(|f| {
            let tensors = match (&f.safetensors, &f.gguf) {
                (Some(s), _) => {
                    let dtypes: Vec<String> = s.bytes_by_dtype.iter().map(|(d, b)| format!("{d} {}", bytes(*b))).collect();
                    format!(
                        "{} tensors, {:.1}M params, {}",
                        s.tensors,
                        s.parameters as f64 / 1e6,
                        dtypes.join(", ")
                    )
                }
                (None, Some(g)) => gguf_line(g),
                (None, None) => String::new(),
            };
            vec![f.path.clone(), bytes(f.size), f.chunks.len().to_string(), tensors]
        })
        .collect();
    println!("{}", table(&["FILE", "SIZE", "CHUNKS", "TENSORS"], rows));
    println!("{} files, {}", manifest.files.len(), bytes(manifest.total_bytes()));
    Ok(())
}

/// What `model inspect` says of a GGUF file: architecture, context, parameters, bits per
/// weight, and the bytes of each tensor type.
fn gguf_line(g: &colo_model::GgufSummary) -> String {
    let types: Vec<String> = g.bytes_by_type.iter().map(|(t, b)| format!("{t} {}", bytes(*b))).collect();
    let context = g.hyper("context_length").map_or_else(String::new, |c| format!(", context {c}"));
    format!(
        "GGUF v{}: {}{context}, {} tensors, {:.1}M params, {:.2} bits/weight, {}",
        g.version,
        g.architecture.as_deref().unwrap_or("unknown architecture"),
        g.tensors,
        g.parameters as f64 / 1e6,
        g.bits_per_weight(),
        types.join(", ")
    )
}

async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let store = args.store.open(&args.common)?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for name in store.models().await? {
        let manifest = store.manifest(&name).await?;
        rows.push(vec![
            name.clone(),
            manifest.revision.clone(),
            manifest.files.len().to_string(),
            bytes(manifest.total_bytes()),
        ]);
        out.push(serde_json::json!({"name": name, "revision": manifest.revision, "files": manifest.files.len(), "bytes": manifest.total_bytes()}));
    }
    if args.common.json {
        return print_json(&out);
    }
    println!("{}", table(&["MODEL", "REVISION", "FILES", "SIZE"], rows));
    Ok(())
}
