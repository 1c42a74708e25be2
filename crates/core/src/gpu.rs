//! The GPU catalogue: what each kind of accelerator holds, moves and computes, what it costs,
//! and how its cards talk to each other for tensor parallelism.
//!
//! The built-in kinds come from `data/gpus.csv` (datasheet values, dense throughput). An
//! operator extends or overrides them from the `[gpus.<kind>]` tables of `colo.toml`: their own
//! prices, a kind the table lacks, or a CPU "device" (`link = "none"`).

use crate::csv::{self, CsvError};
use crate::money::Usd;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

const BUILTIN_CSV: &str = include_str!("../../../data/gpus.csv");

/// Usable memory as a share of the marketed size (read as GiB) where the driver's figure is not
/// known: the two kinds with a known figure give 81559/81920 (H100 SXM) and 143771/144384 (H200).
pub const USABLE_SHARE: f64 = 0.9957;

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogueError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("unknown GPU kind {kind:?} (known: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("invalid GPU configuration: {}", problems.join("; "))]
    Config { problems: Vec<String> },
}

/// How a kind's cards are joined to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    Pcie4,
    Pcie5,
    Nvlink3,
    Nvlink4,
    /// Not a GPU: a CPU "device" that never splits a model.
    None,
}

// === impl Link ===

impl Link {
    pub fn parse(s: &str) -> Option<Link> {
        Some(match s {
            "pcie4" => Link::Pcie4,
            "pcie5" => Link::Pcie5,
            "nvlink3" => Link::Nvlink3,
            "nvlink4" => Link::Nvlink4,
            "none" => Link::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Link::Pcie4 => "pcie4",
            Link::Pcie5 => "pcie5",
            Link::Nvlink3 => "nvlink3",
            Link::Nvlink4 => "nvlink4",
            Link::None => "none",
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path tensor-parallel all-reduces take between the cards of one machine.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interconnect {
    /// What carries the traffic: "nvlink", "nvlink bridge" or "pcie".
    pub via: &'static str,
    /// Bytes per second each card can send, one direction, in GB/s.
    pub gbs_per_direction: f64,
    /// Fixed cost of one all-reduce in microseconds (launch and synchronisation).
    pub latency_us: f64,
}

/// Where a price comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriceBook {
    /// Fly.io list prices before the 2024-08-15 L40S cut.
    Fly2024Before,
    /// Fly.io list prices after the cut.
    Fly2024,
    /// One large cloud's on-demand prices (2025-2026 snapshot).
    Ref,
    /// The operator's own prices (`usd_per_hour` in colo.toml).
    Own,
    /// Prices given per kind, e.g. from a file.
    Table(BTreeMap<String, Usd>),
}

// === impl PriceBook ===

impl PriceBook {
    /// Parses the names `--prices` takes; anything else is a file for the caller to read.
    pub fn parse_name(s: &str) -> Option<PriceBook> {
        Some(match s {
            "fly-2024" | "fly-2024-after" => PriceBook::Fly2024,
            "fly-2024-before" => PriceBook::Fly2024Before,
            "ref" => PriceBook::Ref,
            "own" => PriceBook::Own,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            PriceBook::Fly2024Before => "fly-2024-before",
            PriceBook::Fly2024 => "fly-2024",
            PriceBook::Ref => "ref",
            PriceBook::Own => "own",
            PriceBook::Table(_) => "table",
        }
    }
}

/// The prices one kind is known at, per GPU-hour.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Prices {
    pub fly_2024_before: Option<Usd>,
    pub fly_2024_after: Option<Usd>,
    pub ref_ondemand: Option<Usd>,
    pub own: Option<Usd>,
}

/// One kind of accelerator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuKind {
    /// Short name used everywhere in colo (`l40s`).
    pub kind: String,
    /// Marketing name (`NVIDIA L40S`).
    pub name: String,
    /// Marketed memory size.
    pub memory_gb: f64,
    /// Memory the driver reports, where known.
    pub usable_mib: Option<u64>,
    /// Memory bandwidth in GB/s.
    pub bandwidth_gbs: f64,
    /// Dense bf16 tensor throughput in TFLOP/s.
    pub bf16_tflops: f64,
    /// Dense fp8 throughput in TFLOP/s, where the kind has fp8 tensor cores.
    pub fp8_tflops: Option<f64>,
    /// Dense int8 throughput in TOP/s.
    pub int8_tops: Option<f64>,
    pub tdp_w: Option<f64>,
    pub link: Link,
    /// NVLink bandwidth per card (both directions), including bridged PCIe pairs.
    pub nvlink_gbs: Option<f64>,
    pub prices: Prices,
}

// === impl GpuKind ===

impl GpuKind {
    /// Bytes a process can allocate on one card before any utilisation fraction.
    pub fn usable_bytes(&self) -> f64 {
        match self.usable_mib {
            Some(mib) => mib as f64 * MIB,
            None => self.memory_gb * GIB * USABLE_SHARE,
        }
    }

    pub fn is_cpu(&self) -> bool {
        self.link == Link::None
    }

    /// The most cards one model may be split over.
    pub fn max_tensor_parallel(&self) -> u32 {
        if self.is_cpu() {
            1
        } else {
            8
        }
    }

    /// The link tensor parallelism over `n_gpus` cards uses; `None` for one card. PCIe cards
    /// with an NVLink bridge join in pairs; larger groups fall back to PCIe.
    pub fn interconnect(&self, n_gpus: u32) -> Option<Interconnect> {
        if n_gpus <= 1 {
            return None;
        }
        let pcie = |gbs| Interconnect {
            via: "pcie",
            gbs_per_direction: gbs,
            latency_us: 30.0,
        };
        match (self.link, self.nvlink_gbs) {
            (Link::Nvlink3 | Link::Nvlink4, Some(gbs)) => Some(Interconnect {
                via: "nvlink",
                gbs_per_direction: gbs / 2.0,
                latency_us: 10.0,
            }),
            (Link::Pcie4 | Link::Pcie5, Some(gbs)) if n_gpus == 2 => Some(Interconnect {
                via: "nvlink bridge",
                gbs_per_direction: gbs / 2.0,
                latency_us: 10.0,
            }),
            // What PCIe carries in practice: about 80% of the 32 / 64 GB/s of an x16 slot.
            (Link::Pcie5, _) => Some(pcie(50.0)),
            _ => Some(pcie(25.0)),
        }
    }

    /// The price of one card-hour in `book`, if the kind has one there.
    pub fn price(&self, book: &PriceBook) -> Option<Usd> {
        match book {
            PriceBook::Fly2024Before => self.prices.fly_2024_before,
            PriceBook::Fly2024 => self.prices.fly_2024_after,
            PriceBook::Ref => self.prices.ref_ondemand,
            PriceBook::Own => self.prices.own,
            PriceBook::Table(table) => table.get(&self.kind).copied(),
        }
    }
}

/// Fields of a `[gpus.<kind>]` table in colo.toml. For a kind colo knows, every field is an
/// override; a new kind needs `memory_gb`, `bandwidth_gbs`, `bf16_tflops` and `link`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Marketing name.
    pub name: Option<String>,
    /// Marketed memory size in GB (for a CPU device: the RAM given to models).
    pub memory_gb: Option<f64>,
    /// Memory the driver reports, in MiB.
    pub usable_mib: Option<u64>,
    /// Memory bandwidth in GB/s.
    pub bandwidth_gbs: Option<f64>,
    /// Dense bf16 throughput in TFLOP/s.
    pub bf16_tflops: Option<f64>,
    /// Dense fp8 throughput in TFLOP/s.
    pub fp8_tflops: Option<f64>,
    /// Dense int8 throughput in TOP/s.
    pub int8_tops: Option<f64>,
    /// Board power in watts.
    pub tdp_w: Option<f64>,
    /// pcie4, pcie5, nvlink3, nvlink4, or none for a CPU device.
    pub link: Option<String>,
    /// NVLink bandwidth per card in GB/s.
    pub nvlink_gbs: Option<f64>,
    /// The operator's own price per card-hour (`--prices own`).
    pub usd_per_hour: Option<f64>,
    /// Fly.io price before the 2024 L40S cut.
    pub fly_2024_before: Option<f64>,
    /// Fly.io price after the cut.
    pub fly_2024_after: Option<f64>,
    /// Reference on-demand price.
    pub ref_ondemand: Option<f64>,
}

// === impl GpuSpec ===

impl GpuSpec {
    /// Every problem with this table, each naming `gpus.<kind>.<field>`.
    pub fn validate(&self, kind: &str, is_new: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let field = |name: &str| format!("gpus.{kind}.{name}");
        let numbers = [
            ("memory_gb", self.memory_gb, true),
            ("bandwidth_gbs", self.bandwidth_gbs, true),
            ("bf16_tflops", self.bf16_tflops, true),
            ("fp8_tflops", self.fp8_tflops, true),
            ("int8_tops", self.int8_tops, true),
            ("tdp_w", self.tdp_w, true),
            ("nvlink_gbs", self.nvlink_gbs, true),
            ("usd_per_hour", self.usd_per_hour, false),
            ("fly_2024_before", self.fly_2024_before, false),
            ("fly_2024_after", self.fly_2024_after, false),
            ("ref_ondemand", self.ref_ondemand, false),
        ];
        for (name, value, must_be_positive) in numbers {
            if let Some(v) = value {
                let ok = v.is_finite() && if must_be_positive { v > 0.0 } else { v >= 0.0 };
                if !ok {
                    let want = if must_be_positive { "above zero" } else { "zero or more" };
                    problems.push(format!("{}: {v} must be a finite number {want}", field(name)));
                }
            }
        }
        if self.usable_mib == Some(0) {
            problems.push(format!("{}: must be above zero", field("usable_mib")));
        }
        if let Some(link) = &self.link {
            if Link::parse(link).is_none() {
                problems.push(format!(
                    "{}: unknown link {link:?} (pcie4, pcie5, nvlink3, nvlink4, none)",
                    field("link")
                ));
            }
        }
        if is_new {
            let required = [
                ("memory_gb", self.memory_gb.is_some()),
                ("bandwidth_gbs", self.bandwidth_gbs.is_some()),
                ("bf16_tflops", self.bf16_tflops.is_some()),
                ("link", self.link.is_some()),
            ];
            for (name, present) in required {
                if !present {
                    problems.push(format!("{}: required for a kind colo does not know", field(name)));
                }
            }
        }
        problems
    }
}

/// All kinds colo can plan for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Catalogue {
    pub kinds: Vec<GpuKind>,
}

// === impl Catalogue ===

impl Catalogue {
    /// The kind of a device as the driver names it ("NVIDIA H100 80GB HBM3"): an exact name
    /// match first, else the kind whose model number appears in the name as a whole word and
    /// whose memory is closest to the device's.
    pub fn kind_of_device(&self, name: &str, memory_mib: u64) -> Option<&GpuKind> {
        let lower = name.to_ascii_lowercase();
        if let Some(kind) = self.kinds.iter().find(|k| k.name.eq_ignore_ascii_case(name)) {
            return Some(kind);
        }
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let model_of = |k: &GpuKind| k.kind.split('-').next().unwrap_or_default().to_string();
        let memory_gb = memory_mib as f64 * 1024.0 * 1024.0 / 1e9;
        self.kinds
            .iter()
            .filter(|k| words.contains(&model_of(k).as_str()))
            .min_by(|a, b| (a.memory_gb - memory_gb).abs().total_cmp(&(b.memory_gb - memory_gb).abs()))
    }

    /// The kinds in `data/gpus.csv`, built into the binary.
    pub fn builtin() -> Catalogue {
        // The table is part of the source tree and checked by the tests below.
        Catalogue::from_csv(BUILTIN_CSV).expect("data/gpus.csv is valid (checked by colo-core's tests)")
    }

    pub fn from_csv(text: &str) -> Result<Catalogue, CatalogueError> {
        let mut kinds = Vec::new();
        for row in csv::rows("gpus.csv", text)? {
            let link_text = row.text("link")?;
            let link = Link::parse(link_text).ok_or_else(|| CsvError {
                table: "gpus.csv",
                line: row.line,
                column: "link".into(),
                reason: format!("unknown link {link_text:?}"),
            })?;
            let usd = |column: &str| -> Result<Option<Usd>, CsvError> { Ok(row.opt_f64(column)?.and_then(|v| Usd::new(v).ok())) };
            kinds.push(GpuKind {
                kind: row.text("kind")?.to_string(),
                name: row.text("name")?.to_string(),
                memory_gb: row.positive("memory_gb")?,
                usable_mib: row.opt_f64("usable_mib")?.map(|v| v as u64),
                bandwidth_gbs: row.positive("bandwidth_gbs")?,
                bf16_tflops: row.positive("bf16_tflops")?,
                fp8_tflops: row.opt_f64("fp8_tflops")?,
                int8_tops: row.opt_f64("int8_tops")?,
                tdp_w: row.opt_f64("tdp_w")?,
                link,
                nvlink_gbs: row.opt_f64("nvlink_gbs")?,
                prices: Prices {
                    fly_2024_before: usd("fly_2024_before")?,
                    fly_2024_after: usd("fly_2024_after")?,
                    ref_ondemand: usd("ref_ondemand")?,
                    own: None,
                },
            });
        }
        Ok(Catalogue { kinds })
    }

    pub fn get(&self, kind: &str) -> Result<&GpuKind, CatalogueError> {
        self.kinds
            .iter()
            .find(|k| k.kind == kind)
            .ok_or_else(|| CatalogueError::UnknownKind {
                kind: kind.to_string(),
                known: self.kinds.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>().join(", "),
            })
    }

    /// Applies colo.toml's `[gpus.<kind>]` tables: overrides for known kinds, new kinds added.
    /// Reports every problem in every table at once.
    pub fn with_overrides(mut self, specs: &BTreeMap<String, GpuSpec>) -> Result<Catalogue, CatalogueError> {
        let mut problems = Vec::new();
        for (kind, spec) in specs {
            let is_new = self.kinds.iter().all(|k| &k.kind != kind);
            if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                problems.push(format!("gpus.{kind:?}: a kind is letters, digits, '-' and '_'"));
            }
            problems.extend(spec.validate(kind, is_new));
        }
        if !problems.is_empty() {
            return Err(CatalogueError::Config { problems });
        }
        for (kind, spec) in specs {
            let idx = match self.kinds.iter().position(|k| &k.kind == kind) {
                Some(idx) => idx,
                None => {
                    self.kinds.push(GpuKind {
                        kind: kind.clone(),
                        name: kind.clone(),
                        memory_gb: 0.0,
                        usable_mib: None,
                        bandwidth_gbs: 0.0,
                        bf16_tflops: 0.0,
                        fp8_tflops: None,
                        int8_tops: None,
                        tdp_w: None,
                        link: Link::None,
                        nvlink_gbs: None,
                        prices: Prices::default(),
                    });
                    self.kinds.len() - 1
                }
            };
            apply(&mut self.kinds[idx], spec);
        }
        Ok(self)
    }
}

/// Copies every field `spec` sets onto `gpu`; `spec` has been validated.
fn apply(gpu: &mut GpuKind, spec: &GpuSpec) {
    let usd = |v: Option<f64>| v.and_then(|v| Usd::new(v).ok());
    if let Some(v) = &spec.name {
        gpu.name = v.clone();
    }
    gpu.memory_gb = spec.memory_gb.unwrap_or(gpu.memory_gb);
    gpu.usable_mib = spec.usable_mib.or(gpu.usable_mib);
    gpu.bandwidth_gbs = spec.bandwidth_gbs.unwrap_or(gpu.bandwidth_gbs);
    gpu.bf16_tflops = spec.bf16_tflops.unwrap_or(gpu.bf16_tflops);
    gpu.fp8_tflops = spec.fp8_tflops.or(gpu.fp8_tflops);
    gpu.int8_tops = spec.int8_tops.or(gpu.int8_tops);
    gpu.tdp_w = spec.tdp_w.or(gpu.tdp_w);
    gpu.link = spec.link.as_deref().and_then(Link::parse).unwrap_or(gpu.link);
    gpu.nvlink_gbs = spec.nvlink_gbs.or(gpu.nvlink_gbs);
    gpu.prices.own = usd(spec.usd_per_hour).or(gpu.prices.own);
    gpu.prices.fly_2024_before = usd(spec.fly_2024_before).or(gpu.prices.fly_2024_before);
    gpu.prices.fly_2024_after = usd(spec.fly_2024_after).or(gpu.prices.fly_2024_after);
    gpu.prices.ref_ondemand = usd(spec.ref_ondemand).or(gpu.prices.ref_ondemand);
}

#[cfg(test)]
mod tests;
