//! `colo cache ls | evict | prefetch`: what each host's model cache holds, and warming or
//! emptying it, through the agents of a running colo.

use crate::client::Api;
use crate::output::{age, bytes, print_json, table};
use crate::Common;
use clap::Subcommand;
use colo_agent::api::CacheListing;
use serde_json::json;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List the models in each host's cache: size, state, machines using them, last use.
    Ls(LsArgs),
    /// Remove a model (every cached revision, or one) from the cache; refused while in use.
    Evict(ModelArgs),
    /// Pull a model into the cache of every host of a region before traffic arrives.
    Prefetch(PrefetchArgs),
}

#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model name in the store.
    model: String,
    /// One revision only.
    #[arg(long)]
    revision: Option<String>,
    /// One host only (default: every host).
    #[arg(long)]
    host: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// Model name in the store.
    model: String,
    /// Revision to pull; the latest when absent.
    #[arg(long)]
    revision: Option<String>,
    /// Warm the hosts of this region (default: every host).
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    common: Common,
}

pub async fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Ls(args) => ls(args).await,
        CacheCommand::Evict(args) => evict(args).await,
        CacheCommand::Prefetch(args) => prefetch(args).await,
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    let listings: Vec<CacheListing> = api.get("/v1/cache").await?;
    if args.common.json {
        return print_json(&listings);
    }
    let rows = listings
        .iter()
        .flat_map(|listing| {
            listing.entries.iter().map(move |e| {
                let state = match (e.complete, e.pulling) {
                    (_, true) => "pulling",
                    (true, false) => "complete",
                    (false, false) => "partial",
                };
                vec![
                    listing.host.clone(),
                    e.name.clone(),
                    e.revision.chars().take(16).collect(),
                    bytes(e.bytes),
                    state.to_string(),
                    e.pins.to_string(),
                    age(e.last_used_ms),
                ]
            })
        })
        .collect();
    println!(
        "{}",
        table(&["HOST", "MODEL", "REVISION", "SIZE", "STATE", "IN USE", "LAST USED"], rows)
    );
    for listing in &listings {
        let capacity = listing.capacity.map(bytes).unwrap_or_else(|| "unlimited".into());
        println!("{} ({}): {} used of {capacity}", listing.host, listing.region, bytes(listing.used));
    }
    Ok(())
}

async fn evict(args: ModelArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    let answers: Vec<serde_json::Value> = api
        .post(
            "/v1/cache/evict",
            &json!({"model": args.model, "revision": args.revision, "host": args.host}),
        )
        .await?;
    if args.common.json {
        return print_json(&answers);
    }
    for answer in &answers {
        let evicted: Vec<colo_agent::CacheEntry> = serde_json::from_value(answer["evicted"].clone())?;
        for e in &evicted {
            println!(
                "evicted {}@{} ({}) from {}",
                e.name,
                e.revision,
                bytes(e.bytes),
                answer["host"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

async fn prefetch(args: PrefetchArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.common.data_dir)?;
    // Every host of the region (or every host) pulls at once; peers in a region share bytes.
    let answers: Vec<serde_json::Value> = api
        .post(
            "/v1/cache/prefetch",
            &json!({"model": args.model, "revision": args.revision, "region": args.region}),
        )
        .await?;
    if args.common.json {
        return print_json(&answers);
    }
    for answer in &answers {
        let report: colo_core::HydrationReport = serde_json::from_value(answer["report"].clone())?;
        println!(
            "{} ({}): {} ready; {} fetched ({} from peers, {} from the store, {} already cached) in {:.2}s",
            answer["host"].as_str().unwrap_or("?"),
            answer["region"].as_str().unwrap_or("?"),
            args.model,
            bytes(report.bytes_fetched),
            bytes(report.bytes_from_peer),
            bytes(report.bytes_from_origin),
            bytes(report.bytes_from_cache),
            report.seconds
        );
    }
    Ok(())
}
