//! GPU choice: every (kind, cards, weight format) a model could run on, whether it fits and
//! why not, its speed and its cost per million tokens, and the one to deploy.
//!
//! Pure: the caller hands in the model's facts, the catalogue and the request, and gets rows
//! back. `colo plan` prints them; `colo deploy` calls [`recommend`] when no GPU kind is given.

use colo_core::{Catalogue, CatalogueError, GpuKind, PriceBook};
use colo_model::estimate::{self, GIB};
use colo_model::speed::{self, Bound};
use colo_model::{Arch, Dtype, FactsSource, GgmlType, ModelFacts, Quant, Settings};
use serde::Serialize;

/// Tensor-parallel degrees the planner tries.
pub const TP_DEGREES: [u32; 4] = [1, 2, 4, 8];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid plan request: {}", problems.join("; "))]
    Request { problems: Vec<String> },
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error("nothing fits: {}", reasons.join("; "))]
    NothingFits { reasons: Vec<String> },
}

/// What the operator expects of the model, and which options to consider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanRequest {
    /// Longest sequence (prompt and output) to hold in the KV cache.
    pub context: u64,
    /// Sequences that must fit in the KV cache at once.
    pub concurrency: u64,
    /// Typical prompt length, for prefill time and cost.
    pub prompt_tokens: u64,
    /// Typical output length, for cost.
    pub output_tokens: u64,
    /// Weight formats to consider (all by default).
    pub quants: Vec<Quant>,
    /// GPU kinds to consider; empty: all in the catalogue.
    pub gpus: Vec<String>,
    /// Card counts to consider; empty: 1, 2, 4, 8.
    pub n_gpus: Vec<u32>,
    /// Longest acceptable time to first token, in ms.
    pub ttft_slo_ms: Option<f64>,
    pub prices: PriceBook,
    /// Share of the hour the machine is busy, for cost per token.
    pub target_utilisation: f64,
    pub settings: Settings,
}

impl Default for PlanRequest {
    fn default() -> Self {
        PlanRequest {
            context: 4096,
            concurrency: 1,
            prompt_tokens: 1024,
            output_tokens: 256,
            quants: Quant::ALL.to_vec(),
            gpus: Vec::new(),
            n_gpus: Vec::new(),
            ttft_slo_ms: None,
            prices: PriceBook::Ref,
            target_utilisation: 0.5,
            settings: Settings::default(),
        }
    }
}

// === impl PlanRequest ===

impl PlanRequest {
    /// The defaults at `context` tokens, with the typical prompt and output `colo plan` assumes
    /// for it (a quarter of the context, at most 1024; a sixteenth, at most 256).
    pub fn at_context(context: u64) -> Self {
        PlanRequest {
            context,
            prompt_tokens: (context / 4).clamp(1, 1024),
            output_tokens: (context / 16).clamp(1, 256),
            ..Default::default()
        }
    }
}

// === impl PlanRequest ===

impl PlanRequest {
    /// Every problem with the request, each naming its field.
    pub fn validate(&self, catalogue: &Catalogue) -> Result<(), PlanError> {
        let mut problems = self.settings.validate();
        let counts = [
            ("context", self.context),
            ("concurrency", self.concurrency),
            ("prompt_tokens", self.prompt_tokens),
            ("output_tokens", self.output_tokens),
        ];
        for (field, value) in counts {
            if value == 0 {
                problems.push(format!("{field}: must be at least 1"));
            } else if value > 1 << 24 {
                problems.push(format!("{field}: {value} is past the 16M this planner handles"));
            }
        }
        if self.prompt_tokens.saturating_add(self.output_tokens) > self.context {
            problems.push(format!(
                "prompt_tokens + output_tokens ({}) exceed context ({})",
                self.prompt_tokens.saturating_add(self.output_tokens),
                self.context
            ));
        }
        if self.quants.is_empty() {
            problems.push("quants: at least one weight format is needed".into());
        }
        for kind in &self.gpus {
            if let Err(e) = catalogue.get(kind) {
                problems.push(format!("gpus: {e}"));
            }
        }
        for n in &self.n_gpus {
            if !(1..=8).contains(n) {
                problems.push(format!("n_gpus: {n} is outside 1 to 8"));
            }
        }
        if let Some(slo) = self.ttft_slo_ms {
            if !(slo.is_finite() && slo > 0.0) {
                problems.push(format!("ttft_slo_ms: {slo} must be a number of milliseconds above zero"));
            }
        }
        let u = self.target_utilisation;
        if !(u.is_finite() && u > 0.0 && u <= 1.0) {
            problems.push(format!("target_utilisation: {u} must be above 0 and at most 1"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PlanError::Request { problems })
        }
    }
}

/// The model as the plan describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model_type: String,
    pub arch: Arch,
    pub params: u64,
    /// Bytes of the weights at the checkpoint's dtype.
    pub weights_bytes: u64,
    pub dtype: Dtype,
    /// For a GGUF model, the tensor type holding most of its bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgmlType>,
    /// KV cache bytes per token at the request's KV dtype.
    pub kv_bytes_per_token: u64,
    pub max_position: u64,
    pub source: FactsSource,
    /// Which tokens the prices count: "output" for generators, "input" for encoders.
    pub priced_tokens: &'static str,
}

/// One (kind, cards, format) and what it gives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanOption {
    pub gpu: String,
    pub n_gpus: u32,
    pub quant: Quant,
    pub fits: bool,
    /// Why it does not fit; `None` when it does.
    pub why_not: Option<String>,
    /// KV cache bytes left over all cards (negative: the shortfall).
    pub kv_budget_bytes: i64,
    pub kv_capacity_tokens: u64,
    /// Sequences of `context` tokens the KV cache holds at once (capped at max_seqs).
    pub max_concurrency: u64,
    /// Weights, activations and runtime per card, and the budget they share (bytes).
    pub weights_bytes_per_gpu: u64,
    pub overhead_bytes_per_gpu: u64,
    pub budget_bytes_per_gpu: u64,
    /// Batch the speed figures assume: the achievable concurrency.
    pub batch: u64,
    /// Decode tokens/s over the whole batch, and for one sequence of it.
    pub decode_tokens_per_s: f64,
    pub decode_tokens_per_s_per_sequence: f64,
    /// Tokens/s over whole requests, prefill included: what cost is computed from.
    pub tokens_per_s: f64,
    pub bound: Option<Bound>,
    /// Batch at which decoding turns compute-bound.
    pub ridge_batch: Option<f64>,
    /// Prefill time of one prompt on an idle machine: the floor of time to first token (for an
    /// encoder, the time to embed one input).
    pub prefill_ms: f64,
    /// For an encoder: inputs of the request's prompt length embedded per second, batched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings_per_s: Option<f64>,
    pub usd_per_hour: Option<f64>,
    pub usd_per_million_tokens: Option<f64>,
}

/// Every option, and the recommended one with one sentence of why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub model: ModelSummary,
    pub options: Vec<PlanOption>,
    pub recommended: Option<PlanOption>,
    pub why: String,
    pub prices: &'static str,
}

/// What `colo deploy` needs: which kind, how many cards, which weight format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    pub gpu: String,
    pub n_gpus: u32,
    pub quant: Quant,
    pub why: String,
}

/// Plans `facts` under `request` over `catalogue`.
pub fn plan(facts: &ModelFacts, catalogue: &Catalogue, request: &PlanRequest) -> Result<Plan, PlanError> {
    request.validate(catalogue)?;
    let kinds: Vec<&GpuKind> = catalogue
        .kinds
        .iter()
        .filter(|k| request.gpus.is_empty() || request.gpus.contains(&k.kind))
        .collect();
    let degrees: Vec<u32> = if request.n_gpus.is_empty() {
        TP_DEGREES.to_vec()
    } else {
        request.n_gpus.clone()
    };
    let mut options = Vec::new();
    for gpu in kinds {
        for &n_gpus in &degrees {
            for quant in quants_for(facts, request) {
                options.push(option(facts, gpu, n_gpus, quant, request));
            }
        }
    }
    let priced_tokens = if facts.arch == Arch::Encoder { "input" } else { "output" };
    let (recommended, why) = choose(&options, request, priced_tokens);
    Ok(Plan {
        model: ModelSummary {
            model_type: facts.model_type.clone(),
            arch: facts.arch,
            params: facts.params,
            weights_bytes: facts.weights_bytes,
            dtype: facts.dtype,
            gguf: facts.gguf,
            kv_bytes_per_token: facts.kv_bytes_per_token(request.settings.kv_dtype.bytes()),
            max_position: facts.max_position,
            source: facts.source,
            priced_tokens,
        },
        recommended: recommended.map(|idx| options[idx].clone()),
        options,
        why,
        prices: request.prices.name(),
    })
}

/// The formats to plan `facts` in: a GGUF file is served only as stored, whatever the request
/// lists; a safetensors checkpoint in the request's formats but GGUF.
fn quants_for(facts: &ModelFacts, request: &PlanRequest) -> Vec<Quant> {
    if facts.gguf.is_some() {
        return vec![Quant::Gguf];
    }
    request.quants.iter().copied().filter(|q| q.applies_to(facts)).collect()
}

/// The option `colo deploy` should use when the user names no GPU kind, among the kinds in
/// `available` (empty: any kind in the catalogue).
pub fn recommend(
    facts: &ModelFacts,
    catalogue: &Catalogue,
    request: &PlanRequest,
    available: &[String],
) -> Result<Recommendation, PlanError> {
    let mut request = request.clone();
    if !available.is_empty() {
        request.gpus = available
            .iter()
            .filter(|k| request.gpus.is_empty() || request.gpus.contains(k))
            .cloned()
            .collect();
        if request.gpus.is_empty() {
            return Err(PlanError::NothingFits {
                reasons: vec![format!("none of the available kinds ({}) was asked for", available.join(", "))],
            });
        }
    }
    let plan = plan(facts, catalogue, &request)?;
    match plan.recommended {
        Some(best) => Ok(Recommendation {
            gpu: best.gpu,
            n_gpus: best.n_gpus,
            quant: best.quant,
            why: plan.why,
        }),
        None => Err(PlanError::NothingFits {
            reasons: closest_reasons(&plan.options),
        }),
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / GIB)
}

/// Builds one row: memory first (nothing else matters if it does not fit), then speed, cost.
fn option(facts: &ModelFacts, gpu: &GpuKind, n_gpus: u32, quant: Quant, request: &PlanRequest) -> PlanOption {
    let settings = &request.settings;
    let mem = estimate::memory(facts, quant, gpu, n_gpus, settings);
    let overhead = mem.activation_per_gpu + mem.runtime_per_gpu;
    let max_concurrency = estimate::max_concurrency(facts, &mem, request.context, settings);
    let mut row = PlanOption {
        gpu: gpu.kind.clone(),
        n_gpus,
        quant,
        fits: false,
        why_not: None,
        kv_budget_bytes: mem.kv_budget_bytes.round() as i64,
        kv_capacity_tokens: mem.kv_capacity_tokens,
        max_concurrency,
        weights_bytes_per_gpu: mem.weights_per_gpu.round() as u64,
        overhead_bytes_per_gpu: overhead.round() as u64,
        budget_bytes_per_gpu: mem.budget_per_gpu.round() as u64,
        batch: 0,
        decode_tokens_per_s: 0.0,
        decode_tokens_per_s_per_sequence: 0.0,
        tokens_per_s: 0.0,
        bound: None,
        ridge_batch: None,
        prefill_ms: 0.0,
        embeddings_per_s: None,
        usd_per_hour: gpu.price(&request.prices).map(|p| p.times(n_gpus).as_f64()),
        usd_per_million_tokens: None,
    };
    let why_not = why_not(facts, gpu, n_gpus, request, &mem, max_concurrency);
    if why_not.is_none() {
        speed_and_cost(facts, gpu, n_gpus, quant, request, &mut row);
    }
    // The SLO test needs the prefill time, so it runs after the speed figures.
    let slo_miss = request.ttft_slo_ms.filter(|slo| row.prefill_ms > *slo).map(|slo| {
        format!(
            "prefill of {} tokens takes {:.0} ms, over the {slo:.0} ms time-to-first-token target",
            request.prompt_tokens, row.prefill_ms
        )
    });
    row.why_not = why_not.or(slo_miss);
    row.fits = row.why_not.is_none();
    if !row.fits {
        row.usd_per_million_tokens = None;
    }
    row
}

/// The first reason the option cannot hold the request, if any (the SLO is checked later,
/// once the prefill time is known).
fn why_not(
    facts: &ModelFacts,
    gpu: &GpuKind,
    n_gpus: u32,
    request: &PlanRequest,
    mem: &estimate::Memory,
    max_concurrency: u64,
) -> Option<String> {
    if n_gpus > gpu.max_tensor_parallel() {
        return Some(format!("{} does not split a model over {n_gpus} devices", gpu.kind));
    }
    if n_gpus > 1 && !facts.heads.is_multiple_of(u64::from(n_gpus)) {
        return Some(format!("{} attention heads do not split over {n_gpus} cards", facts.heads));
    }
    if request.context > facts.max_position {
        return Some(format!(
            "context {} is past the model's {} positions",
            request.context, facts.max_position
        ));
    }
    if mem.kv_budget_bytes <= 0.0 {
        let each = if n_gpus > 1 { " per card" } else { "" };
        return Some(format!(
            "weights {} + activations and runtime {}{each} exceed the {} budget ({:.0}% of {})",
            gib(mem.weights_per_gpu),
            gib(mem.activation_per_gpu + mem.runtime_per_gpu),
            gib(mem.budget_per_gpu),
            request.settings.mem_util * 100.0,
            gib(mem.budget_per_gpu / request.settings.mem_util),
        ));
    }
    if max_concurrency == 0 {
        return Some(format!(
            "KV room for {} tokens, less than one {}-token sequence",
            mem.kv_capacity_tokens, request.context
        ));
    }
    if max_concurrency < request.concurrency {
        return Some(format!(
            "KV room for {max_concurrency} sequences of {} tokens; {} wanted",
            request.context, request.concurrency
        ));
    }
    None
}

/// Fills in speed and cost at the achievable batch.
fn speed_and_cost(facts: &ModelFacts, gpu: &GpuKind, n_gpus: u32, quant: Quant, request: &PlanRequest, row: &mut PlanOption) {
    let settings = &request.settings;
    let batch = row.max_concurrency.max(1);
    let (prompt, output) = (request.prompt_tokens, request.output_tokens);
    row.batch = batch;
    row.prefill_ms = speed::prefill_seconds(facts, quant, gpu, n_gpus, settings, 1, prompt) * 1000.0;
    let batch_prefill_s = speed::prefill_seconds(facts, quant, gpu, n_gpus, settings, batch, prompt);
    if facts.arch == Arch::Encoder {
        // An encoder's work is its prefill: the tokens it embeds are the tokens it is paid for.
        row.tokens_per_s = (batch * prompt) as f64 / batch_prefill_s;
        row.decode_tokens_per_s = row.tokens_per_s;
        row.decode_tokens_per_s_per_sequence = prompt as f64 / (row.prefill_ms / 1000.0);
        row.bound = Some(Bound::Compute);
        row.embeddings_per_s = Some(row.tokens_per_s / prompt.max(1) as f64);
    } else {
        // The KV cache holds, on average, the prompt and half of the output during decoding.
        let mean_context = (prompt + output / 2).min(request.context);
        let step = speed::decode(facts, quant, gpu, n_gpus, settings, batch, mean_context);
        row.decode_tokens_per_s = step.tokens_per_s();
        row.decode_tokens_per_s_per_sequence = step.tokens_per_s_per_sequence();
        row.tokens_per_s = (batch * output) as f64 / (batch_prefill_s + output as f64 * step.step_s);
        row.bound = Some(step.bound);
        row.ridge_batch = step.ridge_batch;
    }
    if let Some(usd_per_hour) = row.usd_per_hour {
        let tokens_per_hour = row.tokens_per_s * 3600.0 * request.target_utilisation;
        if tokens_per_hour.is_finite() && tokens_per_hour > 0.0 {
            row.usd_per_million_tokens = Some(usd_per_hour / tokens_per_hour * 1e6);
        }
    }
}

/// Picks the recommended option: the least lossy weight format that fits anywhere, then the
/// lowest cost per million tokens, then fewer cards.
fn choose(options: &[PlanOption], request: &PlanRequest, priced_tokens: &str) -> (Option<usize>, String) {
    let priced = |o: &PlanOption| o.fits && o.usd_per_million_tokens.is_some();
    let Some(quant) = Quant::EVERY
        .into_iter()
        .find(|q| options.iter().any(|o| o.quant == *q && priced(o)))
    else {
        let why = if options.iter().any(|o| o.fits) {
            format!(
                "nothing that fits has a price in the {} price book; pass --prices",
                request.prices.name()
            )
        } else {
            "nothing fits the request".to_string()
        };
        return (None, why);
    };
    let mut ranked: Vec<usize> = (0..options.len())
        .filter(|&i| options[i].quant == quant && priced(&options[i]))
        .collect();
    ranked.sort_by(|&a, &b| {
        let cost = |i: usize| options[i].usd_per_million_tokens.unwrap_or(f64::MAX);
        cost(a).total_cmp(&cost(b)).then(options[a].n_gpus.cmp(&options[b].n_gpus))
    });
    let best = &options[ranked[0]];
    let money = |v: Option<f64>| colo_core::usd_figure(v.unwrap_or(0.0));
    let mut why = format!(
        "{} x{} in {}: the lowest cost per million {} tokens ({}) of the {} priced options that fit in {}",
        best.gpu,
        best.n_gpus,
        best.quant,
        priced_tokens,
        money(best.usd_per_million_tokens),
        ranked.len(),
        quant,
    );
    if let Some(next) = ranked.get(1).map(|&i| &options[i]) {
        why += &format!(" (next: {} x{} at {})", next.gpu, next.n_gpus, money(next.usd_per_million_tokens));
    }
    if quant != request.quants[0] && request.quants.contains(&Quant::Bf16) {
        why += &format!("; nothing fits in {} with this request", request.quants[0]);
    }
    let bound = match best.bound {
        Some(Bound::Compute) => "compute-bound",
        _ => "memory-bound",
    };
    why += &format!(", {bound} at a batch of {}.", best.batch);
    (Some(ranked[0]), why)
}

/// For each kind, why its cheapest-to-fix option fails: what the operator reads when nothing fits.
fn closest_reasons(options: &[PlanOption]) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for o in options {
        if seen.contains(&o.gpu.as_str()) {
            continue;
        }
        seen.push(&o.gpu);
        let best = options
            .iter()
            .filter(|p| p.gpu == o.gpu)
            .max_by_key(|p| p.kv_budget_bytes)
            .unwrap_or(o);
        reasons.push(format!(
            "{} x{} {}: {}",
            best.gpu,
            best.n_gpus,
            best.quant,
            best.why_not.as_deref().unwrap_or("fits but has no price")
        ));
    }
    reasons
}

#[cfg(test)]
mod tests;
