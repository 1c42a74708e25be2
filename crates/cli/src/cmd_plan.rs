//! `colo plan`: which GPU, how many, in which weight format, at what cost per million tokens;
//! and with `--fleet`/`--demand`, how many machines go where. Reads the files; the decisions
//! are `colo_policy::plan` and `colo_policy::place`.

use crate::output::{print_json, table};
use crate::Common;
use anyhow::{anyhow, Context};
use colo_core::{Catalogue, GpuSpec, PriceBook, Regions, Usd};
use colo_model::estimate::GIB;
use colo_model::safetensors::{header_len, parse_header};
use colo_model::{FactsSource, HeaderSummary, KvDtype, ModelFacts, Quant, Settings};
use colo_node::RunInfo;
use colo_policy::{place, plan, Demand, Fleet, Plan, PlanOption, PlanRequest};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The model: a model directory (config.json and, if present, *.safetensors), a config.json
    /// file, or the name of a pushed model in the store.
    model: String,
    /// Longest sequence to hold, in tokens [default: 4096, or the model's maximum if shorter].
    #[arg(long)]
    context: Option<u64>,
    /// Sequences that must fit in the KV cache at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Typical prompt length [default: a quarter of the context, at most 1024].
    #[arg(long)]
    prompt_tokens: Option<u64>,
    /// Typical output length [default: a sixteenth of the context, at most 256].
    #[arg(long)]
    output_tokens: Option<u64>,
    /// Weight formats to consider: bf16, fp8, int8, int4 (repeat or comma-separate) [default: all].
    #[arg(long, value_delimiter = ',')]
    quant: Vec<String>,
    /// KV cache precision: bf16 or fp8.
    #[arg(long, default_value = "bf16")]
    kv_dtype: String,
    /// GPU kinds to consider (repeat or comma-separate) [default: all].
    #[arg(long, value_delimiter = ',')]
    gpu: Vec<String>,
    /// Card counts to consider (repeat or comma-separate) [default: 1, 2, 4, 8].
    #[arg(long, value_delimiter = ',')]
    n_gpus: Vec<u32>,
    /// Longest acceptable time to first token, in ms.
    #[arg(long)]
    ttft_slo: Option<f64>,
    /// Prices: fly-2024 (after the Aug 2024 L40S cut), fly-2024-before, ref, own (colo.toml),
    /// or a TOML file of `kind = usd_per_hour` lines.
    #[arg(long, default_value = "ref")]
    prices: String,
    /// Share of each card's memory the engine may use (vLLM's gpu_memory_utilization).
    #[arg(long, default_value_t = 0.9)]
    mem_util: f64,
    /// Share of the hour the machines are busy, for cost per token and placement headroom.
    #[arg(long, default_value_t = 0.5)]
    utilisation: f64,
    /// Sequences an engine runs in one batch at most (vLLM's max_num_seqs): the batch the speed
    /// figures assume; 1 gives one stream's speed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_batch: u64,
    /// colo.toml with `[gpus.<kind>]` tables [default: ./colo.toml if it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// fleet.toml: hosts and their free GPUs (with --demand: place machines).
    #[arg(long, requires = "demand")]
    fleet: Option<PathBuf>,
    /// demand.toml: requests/s and token lengths per region.
    #[arg(long, requires = "fleet")]
    demand: Option<PathBuf>,
    /// Longest RTT between callers and the machine serving them, in ms, unless demand.toml sets one.
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
    /// Model store for pushed models [default: the running colo's store, else <data dir>/store].
    #[arg(long)]
    store: Option<String>,
    #[command(flatten)]
    common: Common,
}

pub async fn run(args: PlanArgs) -> anyhow::Result<()> {
    let facts = load_facts(&args).await?;
    let catalogue = load_catalogue(args.config.as_deref())?;
    let request = build_request(&args, &facts)?;
    if let (Some(fleet), Some(demand)) = (&args.fleet, &args.demand) {
        return run_placement(&args, &facts, &catalogue, &request, fleet, demand);
    }
    let plan = plan(&facts, &catalogue, &request)?;
    if args.common.json {
        return print_json(&plan);
    }
    print_plan(&args.model, &plan, !args.n_gpus.is_empty(), request.prompt_tokens);
    Ok(())
}

fn build_request(args: &PlanArgs, facts: &ModelFacts) -> anyhow::Result<PlanRequest> {
    let context = args.context.unwrap_or(facts.max_position.min(4096));
    let quants = if args.quant.is_empty() {
        Quant::ALL.to_vec()
    } else {
        args.quant
            .iter()
            .map(|q| Quant::parse(q).ok_or_else(|| anyhow!("--quant {q:?}: expected bf16, fp8, int8 or int4")))
            .collect::<Result<_, _>>()?
    };
    let kv_dtype = KvDtype::parse(&args.kv_dtype).ok_or_else(|| anyhow!("--kv-dtype {:?}: expected bf16 or fp8", args.kv_dtype))?;
    let typical = PlanRequest::at_context(context);
    Ok(PlanRequest {
        context,
        concurrency: args.concurrency,
        prompt_tokens: args.prompt_tokens.unwrap_or(typical.prompt_tokens),
        output_tokens: args.output_tokens.unwrap_or(typical.output_tokens),
        quants,
        gpus: args.gpu.clone(),
        n_gpus: args.n_gpus.clone(),
        ttft_slo_ms: args.ttft_slo,
        prices: load_prices(&args.prices)?,
        target_utilisation: args.utilisation,
        settings: Settings {
            mem_util: args.mem_util,
            kv_dtype,
            max_seqs: args.max_batch,
            ..Settings::default()
        },
    })
}

/// A price book by name, or a TOML file of `kind = usd_per_hour`.
fn load_prices(spec: &str) -> anyhow::Result<PriceBook> {
    if let Some(book) = PriceBook::parse_name(spec) {
        return Ok(book);
    }
    let text = std::fs::read_to_string(spec)
        .with_context(|| format!("--prices {spec:?} is not fly-2024, fly-2024-before, ref or own, nor a readable file"))?;
    let raw: BTreeMap<String, f64> =
        toml::from_str(&text).with_context(|| format!("reading prices from {spec}: expected lines of kind = usd_per_hour"))?;
    let mut table = BTreeMap::new();
    for (kind, value) in raw {
        table.insert(kind.clone(), Usd::new(value).map_err(|e| anyhow!("{spec}: {kind}: {e}"))?);
    }
    Ok(PriceBook::Table(table))
}

/// The built-in catalogue with colo.toml's `[gpus.<kind>]` tables applied. Only the `gpus`
/// table is read here; the rest of colo.toml belongs to other commands.
fn load_catalogue(config: Option<&Path>) -> anyhow::Result<Catalogue> {
    let path = match config {
        Some(path) => path.to_path_buf(),
        None if Path::new("colo.toml").exists() => PathBuf::from("colo.toml"),
        None => return Ok(Catalogue::builtin()),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(gpus) = doc.remove("gpus") else {
        return Ok(Catalogue::builtin());
    };
    let specs: BTreeMap<String, GpuSpec> = gpus.try_into().with_context(|| format!("{}: [gpus] tables", path.display()))?;
    Catalogue::builtin()
        .with_overrides(&specs)
        .with_context(|| path.display().to_string())
}

/// Model facts from the best source at hand: a GGUF file's header, a directory's safetensors
/// headers (or its GGUF file), a bare config.json, or a pushed model's manifest.
async fn load_facts(args: &PlanArgs) -> anyhow::Result<ModelFacts> {
    let path = Path::new(&args.model);
    let from_gguf = |file: &Path| -> anyhow::Result<ModelFacts> {
        let summary = colo_store::gguf_header(file)?;
        ModelFacts::from_gguf(&summary).with_context(|| file.display().to_string())
    };
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return from_gguf(path);
    }
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return ModelFacts::from_config(&bytes).with_context(|| path.display().to_string());
    }
    if path.is_dir() {
        let config = path.join("config.json");
        if !config.exists() {
            if let Some(gguf) = largest_gguf(path)? {
                return from_gguf(&gguf);
            }
        }
        let bytes = std::fs::read(&config).with_context(|| {
            format!(
                "reading {} (a model directory needs a config.json or a .gguf file)",
                config.display()
            )
        })?;
        let facts = ModelFacts::from_config(&bytes).with_context(|| config.display().to_string())?;
        let headers = local_headers(path)?;
        if headers.is_empty() {
            return Ok(facts);
        }
        return Ok(facts.with_tensors(&headers, FactsSource::Directory)?);
    }
    from_store(args).await
}

/// The largest `*.gguf` file directly in `dir`, if there is one.
fn largest_gguf(dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            let len = path.metadata().map(|m| m.len()).unwrap_or(0);
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Summaries of every `*.safetensors` header directly in `dir`; only the headers are read.
fn local_headers(dir: &Path) -> anyhow::Result<Vec<HeaderSummary>> {
    let mut headers = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let file_len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix)
            .with_context(|| format!("reading the header length of {}", path.display()))?;
        let len = header_len(&prefix, file_len).with_context(|| path.display().to_string())?;
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("reading the header of {}", path.display()))?;
        headers.push(parse_header(&header, file_len).with_context(|| path.display().to_string())?);
    }
    Ok(headers)
}

async fn from_store(args: &PlanArgs) -> anyhow::Result<ModelFacts> {
    let url = match &args.store {
        Some(url) => url.clone(),
        None => match RunInfo::read(&args.common.data_dir) {
            Some(info) => info.store,
            None => args.common.data_dir.join("store").display().to_string(),
        },
    };
    let store = colo_store::Store::open(&url)?;
    let manifest = store.manifest(&args.model).await.with_context(|| {
        format!(
            "{:?} is not a file or directory, so it was looked up in the store at {url}",
            args.model
        )
    })?;
    Ok(store.model_facts(&manifest).await?)
}

fn gib(bytes: f64) -> String {
    format!("{:.1}", bytes / GIB)
}

fn money(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), colo_core::usd_figure)
}

/// Milliseconds with two decimals below 10 ms, whole above.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn print_plan(model: &str, plan: &Plan, all_degrees: bool, prompt_tokens: u64) {
    let m = &plan.model;
    let encoder = m.arch == colo_model::Arch::Encoder;
    let name_of = |v: serde_json::Result<serde_json::Value>| v.ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    // An encoder keeps no KV cache: it embeds its input in one pass.
    let kv = match encoder {
        true => String::new(),
        false => format!(", KV {} KiB per token", m.kv_bytes_per_token / 1024),
    };
    println!(
        "{model}: {} ({}), {:.2} B parameters, {:.2} GiB of weights in {}{kv} (from {})",
        m.model_type,
        name_of(serde_json::to_value(m.arch)),
        m.params as f64 / 1e9,
        m.weights_bytes as f64 / GIB,
        m.dtype,
        name_of(serde_json::to_value(m.source)),
    );
    // Per kind and format: the fewest cards that fit and the cheapest per token, unless
    // --n-gpus asked for every count.
    let mut shown: Vec<&PlanOption> = Vec::new();
    for o in plan.options.iter().filter(|o| o.fits) {
        let group = || plan.options.iter().filter(|p| p.fits && p.gpu == o.gpu && p.quant == o.quant);
        let fewest = group().map(|p| p.n_gpus).min() == Some(o.n_gpus);
        let cost = |p: &PlanOption| p.usd_per_million_tokens.unwrap_or(f64::MAX);
        let cheapest = group()
            .min_by(|a, b| cost(a).total_cmp(&cost(b)).then(a.n_gpus.cmp(&b.n_gpus)))
            .map(|p| p.n_gpus)
            == Some(o.n_gpus);
        if all_degrees || fewest || cheapest {
            shown.push(o);
        }
    }
    let hidden = plan.options.iter().filter(|o| o.fits).count() - shown.len();
    if encoder {
        print_encoder_rows(&shown, m.priced_tokens, prompt_tokens);
    } else {
        print_decoder_rows(&shown, m.priced_tokens);
    }
    if hidden > 0 {
        println!(
            "{hidden} more options that fit are not shown: per GPU and format only the fewest cards and the cheapest per token are; --n-gpus 1,2,4,8 lists every count"
        );
    }
    print_reasons(plan);
}

/// The table for an encoder: what it does is embed, so inputs per second and the time to embed
/// one, and no KV cache.
fn print_encoder_rows(shown: &[&PlanOption], priced_tokens: &str, prompt_tokens: u64) {
    let embeddings = format!("EMBEDDINGS/S ({prompt_tokens} TOKENS)");
    print_rows(shown, priced_tokens, &[&embeddings, "MS PER INPUT", "TOKENS/S", "BATCH"], |o| {
        vec![
            format!("{:.0}", o.embeddings_per_s.unwrap_or(0.0)),
            ms(o.prefill_ms),
            format!("{:.0}", o.tokens_per_s),
            o.batch.to_string(),
        ]
    });
}

fn print_decoder_rows(shown: &[&PlanOption], priced_tokens: &str) {
    let header = ["DECODE TOK/S (ALL / ONE)", "PREFILL MS", "MAX SEQS", "KV GIB", "KV TOKENS", "BOUND"];
    print_rows(shown, priced_tokens, &header, |o| {
        vec![
            format!("{:.0} / {:.0}", o.decode_tokens_per_s, o.decode_tokens_per_s_per_sequence),
            ms(o.prefill_ms),
            o.max_concurrency.to_string(),
            gib(o.kv_budget_bytes as f64),
            o.kv_capacity_tokens.to_string(),
            o.bound.map(|b| format!("{b:?}").to_lowercase()).unwrap_or_default(),
        ]
    });
}

/// A plan table: the option and its prices first (a narrow terminal leaves out the last
/// columns), then the columns of `rest`.
fn print_rows(shown: &[&PlanOption], priced_tokens: &str, rest_header: &[&str], rest: impl Fn(&PlanOption) -> Vec<String>) {
    let priced = format!("$/M {}", priced_tokens.to_uppercase());
    let mut header = vec!["GPU", "N", "QUANT", &priced, "$/H"];
    header.extend_from_slice(rest_header);
    let rows = shown
        .iter()
        .map(|o| {
            let mut row = vec![
                o.gpu.clone(),
                o.n_gpus.to_string(),
                o.quant.to_string(),
                money(o.usd_per_million_tokens),
                money(o.usd_per_hour),
            ];
            row.extend(rest(o));
            row
        })
        .collect();
    println!("{}", table(&header, rows));
}

fn print_reasons(plan: &Plan) {
    // Why the rest do not fit: for each kind and format, the reason at its largest card count
    // when none fits, or at one card when only more cards do.
    let mut reasons = Vec::new();
    let mut seen: Vec<(&str, Quant)> = Vec::new();
    for o in &plan.options {
        if seen.contains(&(o.gpu.as_str(), o.quant)) {
            continue;
        }
        seen.push((o.gpu.as_str(), o.quant));
        let group: Vec<&PlanOption> = plan.options.iter().filter(|p| p.gpu == o.gpu && p.quant == o.quant).collect();
        let shown_row = if group.iter().any(|p| p.fits) {
            group.first().filter(|p| !p.fits)
        } else {
            group.last()
        };
        if let Some(p) = shown_row {
            reasons.push(format!(
                "  {} x{} {}: {}",
                p.gpu,
                p.n_gpus,
                p.quant,
                p.why_not.as_deref().unwrap_or("")
            ));
        }
    }
    if !reasons.is_empty() {
        println!("does not fit:\n{}", reasons.join("\n"));
    }
    match &plan.recommended {
        Some(_) => println!("recommended ({} prices): {}", plan.prices, plan.why),
        None => println!("no recommendation: {}", plan.why),
    }
}

fn run_placement(
    args: &PlanArgs,
    facts: &ModelFacts,
    catalogue: &Catalogue,
    request: &PlanRequest,
    fleet: &Path,
    demand: &Path,
) -> anyhow::Result<()> {
    let fleet_text = std::fs::read_to_string(fleet).with_context(|| format!("reading {}", fleet.display()))?;
    let fleet: Fleet = toml::from_str(&fleet_text).with_context(|| format!("parsing {}", fleet.display()))?;
    let demand_text = std::fs::read_to_string(demand).with_context(|| format!("reading {}", demand.display()))?;
    let demand: Demand = toml::from_str(&demand_text).with_context(|| format!("parsing {}", demand.display()))?;
    let placement = place(facts, catalogue, &Regions::builtin(), &fleet, &demand, request, args.rtt_ms)?;
    if args.common.json {
        return print_json(&placement);
    }
    let rows = placement
        .machines
        .iter()
        .map(|m| {
            let serves: Vec<String> = m.serves.iter().map(|(r, rps)| format!("{r} {rps:.2}")).collect();
            vec![
                m.host.clone(),
                m.region.clone(),
                format!("{} x{}", m.gpu, m.n_gpus),
                m.quant.to_string(),
                format!("{:.0}%", m.load * 100.0),
                serves.join(", "),
                money(Some(m.usd_per_hour)),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["HOST", "REGION", "GPUS", "QUANT", "LOAD", "SERVES (REQ/S)", "$/H"], rows)
    );
    println!(
        "{} machines, {} per hour",
        placement.machines.len(),
        money(Some(placement.usd_per_hour))
    );
    for u in &placement.unmet {
        println!("unmet: {} {:.2} req/s: {}", u.region, u.requests_per_s, u.reason);
    }
    Ok(())
}
