//! The routing pick: which started machine of an app answers one request, or why none can now.
//!
//! The rules are the ones Fly.io documents for its proxy, made exact:
//!
//! - A machine whose load is at or over the app's hard limit, or that fails health checks, gets
//!   nothing.
//! - Regions are taken nearest first (RTT from the edge's region, a row the caller supplies).
//!   Traffic leaves the nearest region that has machines only when every machine there is at its
//!   hard limit or unhealthy. Regions within `local_rtt_ms` of the edge count as one local pool,
//!   and regions at equal RTT share a pool.
//! - Within a pool, a machine under its soft limit beats one over it; then the least loaded wins;
//!   then the closest by RTT; remaining ties go to the first machine after a rotating start
//!   (derived from the caller's `seed`), so equal machines share a light load. In a pool larger
//!   than `scan_limit` the pick weighs `scan_limit` machines from that start (and more only until
//!   one has room): the least loaded of a moving sample, as power-of-d-choices balancers do.
//! - `prefer` makes a region the nearest; `force` makes it the only one.
//! - Scoring (`RouteMode::Score`, the default): the machines that served the longest start of
//!   this prompt (the caller's prefix matches, from a [`crate::PrefixIndex`]) compete with the
//!   least loaded one on a weighted score ([`ScoreWeights`], per app): prefix match (blocks
//!   matched over the prompt's blocks), KV headroom (one less the engine's reported KV use),
//!   less load (requests over the soft limit) and less RTT (per 100 ms). Load is a term, so a
//!   shared prefix gives way as its machine's queue grows (with the default weights a whole
//!   prompt matched is worth 1.5 soft limits of load), and no machine past its hard limit is
//!   taken: prefix-only routing collapses under skewed traffic.
//!   `RouteMode::LeastLoaded` skips the scores; `RouteMode::RoundRobin` takes the first machine
//!   with room after the rotating start, whatever its load; `RouteMode::Pack` takes the most
//!   loaded machine under the soft limit (then the least loaded over it), ties in a fixed order
//!   (no rotating start), filling machines one at a time so that spare ones fall idle and
//!   autostop stops them.
//! - A request may avoid machines (it already failed on them) or accept only one (a replay to
//!   an instance); those count as unhealthy for it.
//! - No machine with room: the request is held if anything in scope could take it later (a
//!   started machine, or a region with machines stopped or starting), else rejected. Whether to
//!   wake a machine for held requests is the [`crate::Scaler`]'s decision, not the pick's.
//!
//! Load is what the edge knows and what the engine said, whichever is larger: the edge's own
//! in-flight count, or the engine's last `colo-load` report (running + waiting, which includes
//! other edges' requests). A report counts fully for `report_fresh_ms`, then its weight falls
//! linearly to nothing at `report_stale_ms`, so a machine that stopped reporting is judged by the
//! edge's own count alone. The maximum rather than the sum, because the report already contains
//! this edge's requests of the moment it was made.
//!
//! The pick reads its inputs and returns a [`Decision`]; it reserves nothing and allocates
//! nothing. Its cost is one pass over the machines of the pools it looks at (nearest first,
//! stopping at an idle machine or after `scan_limit` machines once one has room), plus a pass
//! over the region spans per pool tried.

pub use colo_core::RouteMode;
use serde::Deserialize;
use thiserror::Error;

#[cfg(test)]
mod tests;

/// Index of a region in the caller's RTT row (for example the order of `Regions::builtin()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u16);

/// What an engine last reported about its own queue: from colo's `colo-load` response header,
/// or read off another engine's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// Sequences the engine is generating.
    pub running: u32,
    /// Requests admitted but waiting for room in the batch.
    pub waiting: u32,
    /// Share of the KV cache in use, in thousandths; `None` when the engine does not say.
    pub kv_permille: Option<u16>,
    /// When the edge received the report, on the same millisecond clock as `now_ms`.
    pub at_ms: u64,
}

/// Why a `colo-load` header could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LoadHeaderError {
    #[error("colo-load field {field:?} is not key=value")]
    NotKeyValue { field: String },
    #[error("colo-load {key}={value:?} is not a whole number")]
    NotANumber { key: String, value: String },
    #[error("colo-load has no {key}")]
    Missing { key: &'static str },
}

/// What the pick reads of one started machine. The edge implements it over its own route-table
/// entries (atomics and all), so no copy of the machine list is made per request.
pub trait MachineView {
    /// Whether health checks pass.
    fn healthy(&self) -> bool;
    /// Requests this edge has sent the machine and not yet seen answered.
    fn in_flight(&self) -> u32;
    /// The engine's last load report, if any.
    fn report(&self) -> Option<LoadReport>;
}

/// A plain [`MachineView`] for callers that keep loads as values (the simulator, tests, benches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineLoad {
    pub healthy: bool,
    pub in_flight: u32,
    pub report: Option<LoadReport>,
}

/// The machines of one region: `started[start..end]` of an [`AppView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpan {
    pub region: RegionId,
    pub start: u32,
    pub end: u32,
}

/// One app as the edge sees it at the moment of a pick.
#[derive(Clone, Copy, Debug)]
pub struct AppView<'a, M> {
    /// Started machines, grouped by region (see [`group_by_region`]).
    pub started: &'a [M],
    /// Where each region's machines lie in `started`.
    pub spans: &'a [RegionSpan],
    /// Regions where the app has machines that are not started (stopped or starting): a
    /// request that finds no room is held rather than rejected while one is in scope.
    pub dormant: &'a [RegionId],
}

/// Per-app routing settings; a key left out takes its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteParams {
    /// Load (requests) at which a machine stops being preferred.
    pub soft_limit: u32,
    /// Load (requests) at which a machine gets no more traffic.
    pub hard_limit: u32,
    /// An engine load report counts fully for this long after it arrived.
    pub report_fresh_ms: u64,
    /// An engine load report counts for nothing from this age on.
    pub report_stale_ms: u64,
    /// Regions this close to the edge (RTT, ms) form one local pool.
    pub local_rtt_ms: u32,
    /// How the pick weighs machines within a pool.
    pub mode: RouteMode,
    /// The weights of the scores (`RouteMode::Score`).
    pub weights: ScoreWeights,
    /// In a pool of more machines than this, look at this many (from the rotating start) and
    /// past them only until one has room: a sampled least-loaded that bounds the pick's cost.
    /// 0 looks at every machine.
    pub scan_limit: u32,
}

/// Weights of the terms `RouteMode::Score` adds up: colo-core's [`colo_core::RouteWeights`],
/// per app where its deploy set them.
pub type ScoreWeights = colo_core::RouteWeights;

/// How one request steers the pick (the `colo-prefer-region` and `colo-force-region` headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steer {
    /// Treat this region as the nearest.
    pub prefer: Option<RegionId>,
    /// Consider this region only.
    pub force: Option<RegionId>,
}

/// The per-request inputs of a pick.
#[derive(Clone, Copy, Debug)]
pub struct PickRequest<'a> {
    /// The caller's clock, in milliseconds, the same clock as `LoadReport::at_ms`.
    pub now_ms: u64,
    /// RTT in ms from the edge's region to each region, indexed by `RegionId`; a region past the
    /// end of the row counts as farthest.
    pub rtt_ms: &'a [u32],
    pub steer: Steer,
    /// Machines that served this prompt's start, as (index in `started`, blocks in a row), from
    /// a [`crate::PrefixIndex`]; empty when the request has no prompt or no machine matched.
    pub prefix: &'a [(usize, u32)],
    /// Blocks in the prompt, for the prefix score's share.
    pub prefix_blocks: u32,
    /// Varies the tie-break from request to request (a counter or a seeded RNG's output).
    pub seed: u64,
    /// Indexes in `started` of machines this request must not go to (it failed on them).
    pub avoid: &'a [usize],
    /// The one machine (index in `started`) this request may go to, if it is bound to one.
    pub only: Option<usize>,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it to `started[i]`.
    Pick(usize),
    /// No started machine has room now, but one may later: hold it.
    Hold,
    /// Nothing could ever take it.
    Reject(RejectReason),
}

/// Why a request cannot be held.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RejectReason {
    #[error("the app has no machines")]
    NoMachines,
    #[error("the app has no machine in the forced region {region:?}")]
    NoMachineInRegion { region: RegionId },
}

/// Chooses where one request goes. See the module documentation for the rules.
pub fn pick<M: MachineView>(app: &AppView<'_, M>, req: &PickRequest<'_>, params: &RouteParams) -> Decision {
    let mut after: Option<u64> = None;
    while let Some(pool) = next_pool(app.spans, req, params, after) {
        if let Some(best) = scan_pool(app, req, params, &pool) {
            return Decision::Pick(with_prefix(app, req, params, &pool, best));
        }
        after = Some(pool.tier);
    }
    no_room(app, req, params)
}

/// The load the pick weighs for one machine: see the module documentation.
#[inline]
pub fn effective_load(in_flight: u32, report: Option<LoadReport>, now_ms: u64, params: &RouteParams) -> u32 {
    let Some(report) = report else {
        return in_flight;
    };
    let age = now_ms.saturating_sub(report.at_ms);
    let reported = report.requests();
    let weighted = if age <= params.report_fresh_ms {
        reported
    } else if age >= params.report_stale_ms {
        0
    } else {
        // Here fresh < age < stale, so the divisor is positive and the quotient is below `reported`.
        let left = params.report_stale_ms - age;
        let span = params.report_stale_ms - params.report_fresh_ms;
        (u64::from(reported) * left / span) as u32
    };
    in_flight.max(weighted)
}

/// How many more machines held requests need: `ceil(held / soft_limit)` less those already
/// starting. The `Scaler`'s herd cap.
pub fn starts_needed(held: u32, soft_limit: u32, starting: u32) -> u32 {
    held.div_ceil(soft_limit.max(1)).saturating_sub(starting)
}

/// Sorts `machines` by region (stably) and returns the spans an [`AppView`] needs. Call it when
/// the route table changes, not per request.
pub fn group_by_region<M>(machines: &mut [M], region_of: impl Fn(&M) -> RegionId) -> Vec<RegionSpan> {
    machines.sort_by_key(|m| region_of(m));
    let mut spans: Vec<RegionSpan> = Vec::new();
    for (idx, machine) in machines.iter().enumerate() {
        let region = region_of(machine);
        let idx = idx as u32;
        match spans.last_mut() {
            Some(span) if span.region == region => span.end = idx + 1,
            _ => spans.push(RegionSpan {
                region,
                start: idx,
                end: idx + 1,
            }),
        }
    }
    spans
}

// === impl LoadReport ===

impl LoadReport {
    /// Reads `running=R;waiting=W[;kv_used_bytes=U;kv_budget_bytes=B][;other=N...]`, as colo's
    /// engine writes it. Unknown keys are skipped so that engines may report more.
    pub fn parse(header: &str, at_ms: u64) -> Result<LoadReport, LoadHeaderError> {
        let (mut running, mut waiting, mut kv_used, mut kv_budget) = (None, None, None, None);
        for field in header.split(';').map(str::trim).filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return Err(LoadHeaderError::NotKeyValue { field: field.to_string() });
            };
            let not_a_number = || LoadHeaderError::NotANumber {
                key: key.trim().to_string(),
                value: value.to_string(),
            };
            match key.trim() {
                "running" => running = Some(value.trim().parse::<u32>().map_err(|_| not_a_number())?),
                "waiting" => waiting = Some(value.trim().parse::<u32>().map_err(|_| not_a_number())?),
                "kv_used_bytes" => kv_used = Some(value.trim().parse::<u64>().map_err(|_| not_a_number())?),
                "kv_budget_bytes" => kv_budget = Some(value.trim().parse::<u64>().map_err(|_| not_a_number())?),
                _ => {}
            }
        }
        Ok(LoadReport {
            running: running.ok_or(LoadHeaderError::Missing { key: "running" })?,
            waiting: waiting.ok_or(LoadHeaderError::Missing { key: "waiting" })?,
            kv_permille: kv_used
                .zip(kv_budget.filter(|b| *b > 0))
                .map(|(u, b)| permille(u as f64 / b as f64)),
            at_ms,
        })
    }

    /// Requests the engine holds: running plus waiting.
    pub fn requests(&self) -> u32 {
        self.running.saturating_add(self.waiting)
    }
}

/// A share from 0 to 1 in thousandths, clamped.
pub fn permille(share: f64) -> u16 {
    if share.is_nan() {
        return 0;
    }
    (share.clamp(0.0, 1.0) * 1000.0).round() as u16
}

/// Callers that share their entries (the edge's route table holds `Arc`s) read them directly.
impl<M: MachineView + ?Sized> MachineView for std::sync::Arc<M> {
    #[inline]
    fn healthy(&self) -> bool {
        (**self).healthy()
    }
    #[inline]
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }
    #[inline]
    fn report(&self) -> Option<LoadReport> {
        (**self).report()
    }
}

// === impl MachineLoad ===

impl MachineView for MachineLoad {
    fn healthy(&self) -> bool {
        self.healthy
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
    fn report(&self) -> Option<LoadReport> {
        self.report
    }
}

// === impl RouteParams ===

impl RouteParams {
    /// Every problem with these settings, empty when they are usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.soft_limit == 0 {
            problems.push("soft_limit must be at least 1".to_string());
        }
        if self.hard_limit < self.soft_limit {
            problems.push(format!("hard_limit {} is below soft_limit {}", self.hard_limit, self.soft_limit));
        }
        if self.report_stale_ms < self.report_fresh_ms {
            problems.push(format!(
                "report_stale_ms {} is below report_fresh_ms {}",
                self.report_stale_ms, self.report_fresh_ms
            ));
        }
        problems
    }
}

impl Default for RouteParams {
    fn default() -> Self {
        RouteParams {
            soft_limit: 8,
            hard_limit: 16,
            report_fresh_ms: 1_000,
            report_stale_ms: 5_000,
            local_rtt_ms: 0,
            mode: RouteMode::Score,
            weights: ScoreWeights::default(),
            scan_limit: 512,
        }
    }
}

// === the pick's parts ===

/// A set of regions the pick treats as equally near.
struct Pool {
    tier: u64,
    min_rtt: u32,
}

/// Where a region stands for this request: its tier (lower is nearer) and RTT, or `None` when a
/// forced region rules it out.
fn place_of(region: RegionId, req: &PickRequest<'_>, params: &RouteParams) -> Option<(u64, u32)> {
    if req.steer.force.is_some_and(|forced| forced != region) {
        return None;
    }
    let rtt = req.rtt_ms.get(usize::from(region.0)).copied().unwrap_or(u32::MAX);
    let tier = if req.steer.prefer == Some(region) {
        0
    } else if rtt <= params.local_rtt_ms {
        1
    } else {
        u64::from(rtt) + 1
    };
    Some((tier, rtt))
}

/// The nearest pool beyond tier `after`, if any region is left.
fn next_pool(spans: &[RegionSpan], req: &PickRequest<'_>, params: &RouteParams, after: Option<u64>) -> Option<Pool> {
    let mut next: Option<Pool> = None;
    for span in spans {
        let Some((tier, rtt)) = place_of(span.region, req, params) else {
            continue;
        };
        if after.is_some_and(|after| tier <= after) {
            continue;
        }
        match &mut next {
            Some(pool) if pool.tier < tier => {}
            Some(pool) if pool.tier == tier => pool.min_rtt = pool.min_rtt.min(rtt),
            _ => next = Some(Pool { tier, min_rtt: rtt }),
        }
    }
    next
}

/// Orders machines within a pool: over-soft last, then load, then RTT. Lower is better, and
/// never `u64::MAX` (the load is clamped below 2^31 - 1), which marks "no machine".
fn rank(load: u32, rtt: u32, soft_limit: u32) -> u64 {
    (u64::from(load >= soft_limit) << 63) | (u64::from(load.min(0x7fff_fffe)) << 32) | u64::from(rtt)
}

/// Splitmix64's finaliser: spreads a seed over the bits used for the rotating start.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The best (rank, index) so far; `u64::MAX` while there is none.
type Best = (u64, usize);

/// The best machine with room in `pool`, as (rank, index in `started`).
fn scan_pool<M: MachineView>(app: &AppView<'_, M>, req: &PickRequest<'_>, params: &RouteParams, pool: &Pool) -> Option<Best> {
    // Nothing beats an idle machine at the pool's smallest RTT (when packing, one with room for
    // exactly one more below its soft limit), so the scan may stop there.
    let floor = rank(0, pool.min_rtt, params.soft_limit);
    let mut best: Best = (u64::MAX, usize::MAX);
    let mut budget = match params.scan_limit {
        0 => usize::MAX,
        limit => limit as usize,
    };
    for span in app.spans {
        let Some((tier, rtt)) = place_of(span.region, req, params) else {
            continue;
        };
        let Some(machines) = app.started.get(span.start as usize..span.end as usize) else {
            continue;
        };
        if tier != pool.tier || machines.is_empty() {
            continue;
        }
        // Start at a seed-chosen machine and wrap around, so that ties go to a different
        // machine from request to request.
        // Round robin takes the machines in order; pack always starts at the first; the others
        // start anywhere, so that ties spread without a pattern.
        let spread = match params.mode {
            RouteMode::RoundRobin => req.seed,
            // Packing breaks ties in one fixed order, so that an idle app's requests all go to
            // the same machine and the others stay idle.
            RouteMode::Pack => 0,
            _ => mix(req.seed ^ (u64::from(span.region.0) << 48)),
        };
        let turn = (spread % machines.len() as u64) as usize;
        let (wrapped, first) = machines.split_at(turn);
        let base = span.start as usize;
        if scan_slice(first, base + turn, rtt, floor, req, params, &mut best, &mut budget)
            || scan_slice(wrapped, base, rtt, floor, req, params, &mut best, &mut budget)
        {
            break;
        }
    }
    (best.0 != u64::MAX).then_some(best)
}

/// The hot loop: updates `best` from `machines` (which start at `base` in `started`) and says
/// whether the scan is over: `floor`, the best rank possible, was reached, or the budget of
/// machines to look at is spent and one with room was found.
// The loop takes its inputs unbundled so that they stay in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scan_slice<M: MachineView>(
    machines: &[M],
    base: usize,
    rtt: u32,
    floor: u64,
    req: &PickRequest<'_>,
    params: &RouteParams,
    best: &mut Best,
    budget: &mut usize,
) -> bool {
    let (soft, hard, now_ms) = (params.soft_limit, params.hard_limit, req.now_ms);
    // Round robin weighs nothing but room: every machine with room ranks as if idle.
    let weighs_load = params.mode != RouteMode::RoundRobin;
    // Packing ranks a machine under the soft limit by its room left below it: the fullest
    // first. The best rank is still `floor` (room for exactly one more at the smallest RTT).
    let packs = params.mode == RouteMode::Pack;
    // Most requests may go anywhere: the check per machine is skipped for them.
    let restricted = req.only.is_some() || !req.avoid.is_empty();
    for (i, machine) in machines.iter().enumerate() {
        let load = effective_load(machine.in_flight(), machine.report(), now_ms, params);
        let r = if machine.healthy() && load < hard && (!restricted || usable(req, base + i)) {
            match (weighs_load, packs && load < soft) {
                (false, _) => rank(0, rtt, soft),
                (true, true) => rank(soft - 1 - load, rtt, soft),
                (true, false) => rank(load, rtt, soft),
            }
        } else {
            u64::MAX
        };
        if r < best.0 {
            *best = (r, base + i);
            if r == floor {
                return true;
            }
        }
        *budget = budget.saturating_sub(1);
        if *budget == 0 && best.0 != u64::MAX {
            return true;
        }
    }
    false
}

/// In `RouteMode::Score`, the best of `best` (the least loaded machine of the pool) and the
/// machines of the same pool that served this prompt's start, on weighted terms (`score`). Load
/// is one of the terms, so a prefix match gives way as its machine's queue grows; no machine at
/// its hard limit is taken.
fn with_prefix<M: MachineView>(
    app: &AppView<'_, M>,
    req: &PickRequest<'_>,
    params: &RouteParams,
    pool: &Pool,
    best: (u64, usize),
) -> usize {
    let (_, best_idx) = best;
    if params.mode != RouteMode::Score || req.prefix.is_empty() {
        return best_idx;
    }
    let blocks_of = |idx: usize| req.prefix.iter().find(|(i, _)| *i == idx).map_or(0, |(_, n)| *n);
    let mut chosen = (score(app, best_idx, blocks_of(best_idx), req, params), best_idx);
    for &(idx, blocks) in req.prefix {
        if idx == best_idx || !usable(req, idx) {
            continue;
        }
        let Some(machine) = app.started.get(idx) else { continue };
        let in_pool = region_of(app, idx).is_some_and(|region| place_of(region, req, params).is_some_and(|(tier, _)| tier == pool.tier));
        let load = effective_load(machine.in_flight(), machine.report(), req.now_ms, params);
        if !in_pool || !machine.healthy() || load >= params.hard_limit {
            continue;
        }
        let candidate = (score(app, idx, blocks, req, params), idx);
        // The higher score; ties keep the earlier choice (the least loaded first).
        if candidate.0 > chosen.0 {
            chosen = candidate;
        }
    }
    chosen.1
}

/// The region of `started[idx]`.
fn region_of<M>(app: &AppView<'_, M>, idx: usize) -> Option<RegionId> {
    app.spans
        .iter()
        .find(|span| (span.start as usize..span.end as usize).contains(&idx))
        .map(|span| span.region)
}

/// A machine's weighted score: `prefix` x the share of the prompt's blocks it served, plus `kv`
/// x its KV cache's free share, less `queue` x its load in soft limits, less `rtt` x the round
/// trip to its region in units of 100 ms.
fn score<M: MachineView>(app: &AppView<'_, M>, idx: usize, blocks: u32, req: &PickRequest<'_>, params: &RouteParams) -> f64 {
    let Some(machine) = app.started.get(idx) else { return f64::MIN };
    let report = machine.report();
    let load = effective_load(machine.in_flight(), report, req.now_ms, params);
    let prefix = if req.prefix_blocks == 0 {
        0.0
    } else {
        f64::from(blocks.min(req.prefix_blocks)) / f64::from(req.prefix_blocks)
    };
    // A stale report says nothing of the KV cache now.
    let fresh = report.filter(|r| req.now_ms.saturating_sub(r.at_ms) < params.report_stale_ms);
    let kv_free = 1.0 - f64::from(fresh.and_then(|r| r.kv_permille).unwrap_or(0).min(1000)) / 1000.0;
    let queue = f64::from(load) / f64::from(params.soft_limit.max(1));
    let rtt = region_of(app, idx).map_or(0.0, |region| {
        f64::from(req.rtt_ms.get(usize::from(region.0)).copied().unwrap_or(0)) / 100.0
    });
    let w = params.weights;
    f64::from(w.prefix) * prefix + f64::from(w.kv) * kv_free - f64::from(w.queue) * queue - f64::from(w.rtt) * rtt
}

/// Whether the request may go to `started[idx]` at all.
#[inline(always)]
fn usable(req: &PickRequest<'_>, idx: usize) -> bool {
    req.only.is_none_or(|only| only == idx) && !req.avoid.contains(&idx)
}

/// No machine in any allowed region has room: hold, or reject when nothing in scope exists that
/// could ever take the request.
fn no_room<M>(app: &AppView<'_, M>, req: &PickRequest<'_>, params: &RouteParams) -> Decision {
    let any_started = app
        .spans
        .iter()
        .any(|span| span.end > span.start && place_of(span.region, req, params).is_some());
    let any_dormant = app.dormant.iter().any(|&region| place_of(region, req, params).is_some());
    if !any_started && !any_dormant {
        return Decision::Reject(match req.steer.force {
            Some(region) => RejectReason::NoMachineInRegion { region },
            None => RejectReason::NoMachines,
        });
    }
    Decision::Hold
}
