//! The dashboard: pages built into the binary (`/ui`, no data in them and no token needed to
//! fetch them) and the data they show (`/v1/ui/...`, behind the API's token like the rest of
//! `/v1`): one snapshot of apps, machines, hosts and regions with what each costs, the same
//! pushed again over server-sent events whenever the state changes, and the models with the
//! planner's options. The page keeps the token in the tab's session storage, taken from the
//! `#token=` fragment of the address `colo up` prints, which never reaches a server.

use crate::{Control, ControlError};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use colo_core::{App, Catalogue, Device, HostRecord, Machine, MachineState, PriceBook, Regions};
use colo_policy::{AppTraffic, EdgeTraffic, Flow};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const LAND: &str = include_str!("ui/land.svg");

/// The price book the dashboard's costs use: the planner's default.
const PRICES: PriceBook = PriceBook::Ref;

/// Pushes at most this often, however fast the state changes.
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Pushes at least this often when there are traffic figures, which change without the state.
const TRAFFIC_PUSH_INTERVAL: Duration = Duration::from_secs(2);

/// The traffic figures of every edge the dashboard shows: `colo up`'s in-process edges, or
/// what `colo edge` daemons publish (a [`TrafficBoard`]).
pub type EdgeMetrics = Arc<dyn Fn() -> Vec<EdgeTraffic> + Send + Sync>;

/// An edge that has published nothing for this long is gone from the dashboard.
const EDGE_FIGURES_TTL: Duration = Duration::from_secs(10);

/// The latest traffic figures each edge daemon published, by subject (one per edge).
#[derive(Default)]
pub struct TrafficBoard {
    latest: std::sync::Mutex<BTreeMap<String, (std::time::Instant, EdgeTraffic)>>,
}

impl TrafficBoard {
    /// Keeps `figures`, published on `subject` (which names the edge), as that edge's latest.
    pub fn note(&self, subject: String, figures: EdgeTraffic) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.insert(subject, (std::time::Instant::now(), figures));
    }

    /// The figures of every edge heard from lately; those gone quiet are forgotten.
    pub fn read(&self) -> Vec<EdgeTraffic> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.retain(|_, (at, _)| at.elapsed() < EDGE_FIGURES_TTL);
        latest.values().map(|(_, f)| f.clone()).collect()
    }
}

/// How often the dashboard adds up what machines cost.
const ACCRUE_EVERY: Duration = Duration::from_secs(5);

/// What an app's machines have used and cost since the dashboard began counting.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Accrued {
    pub gpu_hours: f64,
    /// At the price book's prices.
    pub usd: f64,
}

/// What the dashboard has counted since it began (`since_ms`), per app.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ledger {
    pub since_ms: u64,
    /// When it last added; the next interval starts here.
    pub until_ms: u64,
    pub apps: BTreeMap<String, Accrued>,
}

/// Adds to `ledger` what `machines` used from its last mark to `now_ms` (pure): the GPUs each
/// one holds, and their price, for the whole interval. A machine seen at one mark is taken to
/// have held its cards since the one before (the interval is a few seconds).
pub fn accrue(ledger: &mut Ledger, machines: &[Machine], catalogue: &Catalogue, now_ms: u64) {
    if ledger.until_ms == 0 {
        ledger.since_ms = now_ms;
        ledger.until_ms = now_ms;
        return;
    }
    let hours = now_ms.saturating_sub(ledger.until_ms) as f64 / 3_600_000.0;
    ledger.until_ms = ledger.until_ms.max(now_ms);
    for m in machines {
        if !m.holds_device() || !matches!(m.device, Device::Gpu { .. }) {
            continue;
        }
        let entry = ledger.apps.entry(m.app.to_string()).or_default();
        entry.gpu_hours += hours * m.devices().count() as f64;
        entry.usd += hours * machine_price(catalogue, m).unwrap_or(0.0);
    }
}

#[derive(Clone)]
struct UiState {
    control: Arc<Control>,
    ledger: Arc<std::sync::Mutex<Ledger>>,
    traffic: Option<EdgeMetrics>,
    /// Where `colo sim --out` reports are shown from: `<data dir>/sims`, one directory each.
    sims: std::path::PathBuf,
    /// The built-in tables, read once rather than on every push.
    catalogue: Arc<Catalogue>,
    regions: Arc<Regions>,
}

/// The pages and their script and style: public, since they hold no data.
pub fn assets_router() -> Router {
    let page = |body: &'static str, kind: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-cache"),
                    // Everything the page loads comes from this address: no CDN, no inline script.
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'",
                    ),
                ],
                body,
            )
        }
    };
    Router::new()
        .route("/ui", get(page(INDEX, "text/html; charset=utf-8")))
        .route("/ui/", get(page(INDEX, "text/html; charset=utf-8")))
        .route("/ui/app.js", get(page(SCRIPT, "text/javascript; charset=utf-8")))
        .route("/ui/app.css", get(page(STYLE, "text/css; charset=utf-8")))
        .route("/ui/land.svg", get(page(LAND, "image/svg+xml")))
}

/// The dashboard's data, for holders of the API token; `traffic` reads the edges' counters
/// where this process has them; `sims` is the directory of simulation reports to show.
pub fn data_router(control: Arc<Control>, traffic: Option<EdgeMetrics>, sims: std::path::PathBuf) -> Router {
    let catalogue = Arc::new(Catalogue::builtin());
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    spawn_ledger(Arc::downgrade(&control), ledger.clone(), catalogue.clone());
    Router::new()
        .route("/v1/ui/snapshot", get(snapshot_handler))
        .route("/v1/ui/events", get(events))
        .route("/v1/ui/models", get(models))
        .route("/v1/ui/models/{name}/plan", get(model_plan))
        .route("/v1/ui/sims", get(sim_list))
        .route("/v1/ui/sims/{name}/{file}", get(sim_file))
        .with_state(UiState {
            control,
            ledger,
            traffic,
            sims,
            catalogue,
            regions: Arc::new(Regions::builtin()),
        })
}

/// Adds up what machines cost every few seconds for as long as control runs.
fn spawn_ledger(control: std::sync::Weak<Control>, ledger: Arc<std::sync::Mutex<Ledger>>, catalogue: Arc<Catalogue>) {
    tokio::spawn(async move {
        loop {
            let Some(control) = control.upgrade() else { return };
            if let Ok(machines) = control.state.machines().await {
                let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
                accrue(&mut ledger, &machines, &catalogue, crate::now_ms());
            }
            drop(control);
            tokio::time::sleep(ACCRUE_EVERY).await;
        }
    });
}

/// One `colo sim --out` report: its directory's name and its files.
#[derive(Serialize)]
struct SimView {
    name: String,
    files: Vec<String>,
    modified_ms: u64,
}

/// A name the dashboard may read under the simulations directory: letters, digits, `.`, `_`
/// and `-`, not starting with a dot (so never `..`).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The reports under the simulations directory, newest first (none when there is none).
async fn sim_list(State(ui): State<UiState>) -> Response {
    let dir = ui.sims;
    let list = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !plain_name(&name) || !entry.path().join("report.txt").is_file() {
                continue;
            }
            let mut files: Vec<String> = std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|f| plain_name(f) && (f.ends_with(".svg") || f.ends_with(".txt")))
                .collect();
            files.sort();
            let modified_ms = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            out.push(SimView { name, files, modified_ms });
        }
        out.sort_by(|a, b| b.modified_ms.cmp(&a.modified_ms).then(a.name.cmp(&b.name)));
        out
    })
    .await
    .unwrap_or_default();
    Json(list).into_response()
}

/// One file of a report: its text, or an SVG plot.
async fn sim_file(State(ui): State<UiState>, Path((name, file)): Path<(String, String)>) -> Response {
    let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "",
    };
    let not_found = || {
        (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no report file {name}/{file}")})),
        )
            .into_response()
    };
    if kind.is_empty() || !plain_name(&name) || !plain_name(&file) {
        return not_found();
    }
    match tokio::fs::read(ui.sims.join(&name).join(&file)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        Err(_) => not_found(),
    }
}

/// An app as the dashboard shows it: no keys, no tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppView {
    pub name: String,
    pub model: String,
    pub revision: String,
    pub version: u64,
    pub machines_wanted: u32,
    /// Machines by state.
    pub machines: BTreeMap<String, usize>,
    pub gpu_kind: Option<String>,
    pub gpus_per_machine: u32,
    pub engine: String,
    pub autostop_secs: Option<u64>,
    /// What its started and starting machines cost an hour at the price book's prices; `None`
    /// when none of them has a priced GPU.
    pub usd_per_hour: Option<f64>,
    pub api_keys: usize,
    pub cold_starts: Vec<ColdStartView>,
}

/// One machine's last start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ColdStartView {
    pub machine: String,
    pub source: &'static str,
    pub queued_ms: u64,
    pub hydrate_ms: u64,
    pub engine_load_ms: u64,
    pub first_response_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostView {
    pub name: String,
    pub region: String,
    pub lost: bool,
    pub gpus: BTreeMap<String, usize>,
    pub cpu_slots: usize,
    pub devices: usize,
    pub devices_held: usize,
    pub cached_models: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionView {
    pub code: String,
    pub city: String,
    /// Where it is; `None` for a region code that is not in data/regions.csv (`colo up`'s
    /// `local`), which the map cannot place.
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub hosts: usize,
    /// Machines by state.
    pub machines: BTreeMap<String, usize>,
    pub gpu_kinds: Vec<String>,
    pub usd_per_hour: f64,
}

/// Everything the World, Apps and Machines pages show.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    pub prices: &'static str,
    pub apps: Vec<AppView>,
    pub machines: Vec<MachineView>,
    pub hosts: Vec<HostView>,
    pub regions: Vec<RegionView>,
    pub usd_per_hour: f64,
    /// Requests per app as the edges counted them since they started; `None` where the
    /// dashboard hears from no edge.
    pub traffic: Option<BTreeMap<String, AppTraffic>>,
    /// Requests from the edges of one region to the machines of another (or the same).
    pub flows: Vec<Flow>,
    /// The regions of the edges heard from, with how many edges each has.
    pub edges: BTreeMap<String, usize>,
    /// GPU-hours and dollars per app since the dashboard began counting.
    pub ledger: Ledger,
}

/// A machine as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MachineView {
    pub id: String,
    pub app: String,
    pub state: MachineState,
    pub healthy: bool,
    pub host: String,
    pub region: String,
    pub device: String,
    pub gpu_kind: Option<String>,
    pub restarts: u32,
    pub last_error: Option<String>,
    /// The last hydration: bytes fetched, seconds, and where the bytes came from.
    pub hydration: Option<colo_core::HydrationReport>,
    pub cold_start: Option<colo_core::ColdStart>,
    pub progress: Option<String>,
    pub usd_per_hour: Option<f64>,
    pub updated_at_ms: u64,
}

/// What a machine costs an hour: each card it holds at its kind's price; nothing for a CPU
/// slot or a machine that holds no device.
fn machine_price(catalogue: &Catalogue, m: &Machine) -> Option<f64> {
    if !m.holds_device() || !matches!(m.device, Device::Gpu { .. }) {
        return None;
    }
    let kind = catalogue.get(m.gpu_kind.as_deref()?).ok()?;
    Some(kind.price(&PRICES)?.as_f64() * m.devices().count() as f64)
}

/// A region's code, its city, and where it is when the region table knows.
type Place = (String, String, Option<(f64, f64)>);

/// The snapshot of `apps`, `machines` and `hosts` (pure: the time is an argument).
pub fn snapshot(
    apps: &[App],
    machines: &[Machine],
    hosts: &[HostRecord],
    regions: &Regions,
    catalogue: &Catalogue,
    now_ms: u64,
) -> Snapshot {
    let live: Vec<&Machine> = machines.iter().filter(|m| m.state != MachineState::Destroyed).collect();
    let count_states = |ms: &mut dyn Iterator<Item = &&Machine>| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for m in ms {
            *by.entry(m.state.as_str().to_string()).or_default() += 1;
        }
        by
    };
    let apps = apps
        .iter()
        .map(|a| {
            let mine: Vec<&&Machine> = live.iter().filter(|m| m.app == a.name).collect();
            let prices: Vec<f64> = mine.iter().filter_map(|m| machine_price(catalogue, m)).collect();
            AppView {
                name: a.name.to_string(),
                model: a.model.to_string(),
                revision: a.revision.clone(),
                version: a.version,
                machines_wanted: a.machines,
                machines: count_states(&mut mine.iter().copied()),
                gpu_kind: a.gpu.as_ref().map(|g| g.kind.clone()),
                gpus_per_machine: a.gpus_per_machine,
                engine: match (&a.engine, &a.engine_cmd) {
                    (_, Some(_)) => "own command".into(),
                    (Some(e), None) => e.kind.to_string(),
                    (None, None) => "colo".into(),
                },
                autostop_secs: a.autostop_secs,
                usd_per_hour: (!prices.is_empty()).then(|| prices.iter().sum()),
                api_keys: a.keys.len(),
                cold_starts: mine
                    .iter()
                    .filter_map(|m| {
                        let c = m.cold_start.as_ref()?;
                        Some(ColdStartView {
                            machine: m.id.clone(),
                            source: c.source(),
                            queued_ms: c.queued_ms,
                            hydrate_ms: c.hydrate_ms,
                            engine_load_ms: c.engine_load_ms,
                            first_response_ms: c.first_response_ms,
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    let host_views: Vec<HostView> = hosts
        .iter()
        .map(|h| {
            let mut gpus: BTreeMap<String, usize> = BTreeMap::new();
            let mut cpu_slots = 0;
            for d in &h.devices {
                match d {
                    Device::Gpu { name, .. } => {
                        let kind = colo_agent::facts::device_kind(catalogue, d).unwrap_or_else(|| name.clone());
                        *gpus.entry(kind).or_default() += 1;
                    }
                    Device::Cpu { .. } => cpu_slots += 1,
                }
            }
            HostView {
                name: h.name.clone(),
                region: h.region.clone(),
                lost: h.lost,
                gpus,
                cpu_slots,
                devices: h.devices.len(),
                devices_held: live
                    .iter()
                    .filter(|m| m.host == h.name && m.holds_device())
                    .map(|m| m.devices().count())
                    .sum(),
                cached_models: h.cached_models.clone(),
            }
        })
        .collect();
    // Every region colo knows, then any other a host or machine names.
    let mut places: Vec<Place> = regions
        .regions
        .iter()
        .map(|r| (r.code.clone(), r.city.clone(), Some((r.lat, r.lon))))
        .collect();
    for code in host_views.iter().map(|h| &h.region).chain(live.iter().map(|m| &m.region)) {
        if places.iter().all(|(c, _, _)| c != code) {
            places.push((code.clone(), "not in the region table".into(), None));
        }
    }
    let regions = places
        .into_iter()
        .map(|(code, city, at)| {
            let here: Vec<&&Machine> = live.iter().filter(|m| m.region == code).collect();
            let mut gpu_kinds: Vec<String> = host_views
                .iter()
                .filter(|h| h.region == code)
                .flat_map(|h| h.gpus.keys().cloned())
                .collect();
            gpu_kinds.sort();
            gpu_kinds.dedup();
            RegionView {
                hosts: host_views.iter().filter(|h| h.region == code).count(),
                machines: count_states(&mut here.iter().copied()),
                gpu_kinds,
                lat: at.map(|(lat, _)| lat),
                lon: at.map(|(_, lon)| lon),
                code,
                city,
                usd_per_hour: here.iter().filter_map(|m| machine_price(catalogue, m)).sum(),
            }
        })
        .collect();
    let machines: Vec<MachineView> = live
        .iter()
        .map(|m| MachineView {
            id: m.id.clone(),
            app: m.app.to_string(),
            state: m.state,
            healthy: m.healthy,
            host: m.host.clone(),
            region: m.region.clone(),
            device: if m.holds_device() { m.device_label() } else { "-".into() },
            gpu_kind: m.gpu_kind.clone(),
            restarts: m.restarts,
            last_error: m.last_error.clone(),
            hydration: m.hydration.clone(),
            cold_start: m.cold_start.clone(),
            progress: m.progress.as_ref().map(|p| p.to_string()),
            usd_per_hour: machine_price(catalogue, m),
            updated_at_ms: m.updated_at_ms,
        })
        .collect();
    let usd_per_hour = machines.iter().filter_map(|m| m.usd_per_hour).sum();
    Snapshot {
        now_ms,
        prices: PRICES.name(),
        apps,
        machines,
        hosts: host_views,
        regions,
        usd_per_hour,
        traffic: None,
        flows: Vec::new(),
        edges: BTreeMap::new(),
        ledger: Ledger::default(),
    }
}

// === impl Control ===

impl Control {
    /// The dashboard's snapshot of the state now, placed on `regions` and priced by `catalogue`.
    pub async fn ui_snapshot(&self, regions: &Regions, catalogue: &Catalogue) -> Result<Snapshot, ControlError> {
        let apps = self.state.apps().await?;
        let machines = self.state.machines().await?;
        let hosts = match &self.hosts {
            // Agents in this process (`colo up`) write no host records: ask them.
            crate::hosts::Hosts::Local(agents) => {
                let mut records = Vec::with_capacity(agents.len());
                for agent in agents {
                    records.push(agent.host_record("", Duration::ZERO).await);
                }
                records
            }
            crate::hosts::Hosts::Remote { .. } => self.state.hosts().await?,
        };
        Ok(snapshot(&apps, &machines, &hosts, regions, catalogue, crate::now_ms()))
    }
}

// === impl UiState ===

impl UiState {
    /// The snapshot, with the edges' traffic where this process has it.
    async fn snapshot(&self) -> Result<Snapshot, ControlError> {
        let mut snapshot = self.control.ui_snapshot(&self.regions, &self.catalogue).await?;
        snapshot.ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(read) = &self.traffic {
            let edges = read();
            if !edges.is_empty() {
                snapshot.traffic = Some(colo_policy::traffic::merge(&edges));
                snapshot.flows = colo_policy::traffic::flows(&edges);
                for e in &edges {
                    *snapshot.edges.entry(e.region.clone()).or_default() += 1;
                }
            }
        }
        Ok(snapshot)
    }
}

async fn snapshot_handler(State(ui): State<UiState>) -> Response {
    match ui.snapshot().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A snapshot now, then one after each change of the state (at most every 250 ms), and every
/// 2 s while there are traffic figures.
async fn events(State(ui): State<UiState>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let changes = ui.control.state.changes();
    let stream = futures::stream::unfold((ui, changes, true), |(ui, mut changes, first)| async move {
        if !first {
            let tick = async {
                match ui.traffic {
                    Some(_) => tokio::time::sleep(TRAFFIC_PUSH_INTERVAL).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => changed.ok()?,
                _ = tick => {}
            }
            tokio::time::sleep(MIN_PUSH_INTERVAL).await;
            changes.borrow_and_update();
        }
        let event = match ui.snapshot().await {
            Ok(s) => Event::default()
                .event("snapshot")
                .json_data(&s)
                .unwrap_or_else(|_| Event::default().comment("unserializable")),
            Err(e) => Event::default().event("problem").data(e.to_string()),
        };
        Some((Ok(event), (ui, changes, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One model in the store, for the Models page.
#[derive(Serialize)]
struct ModelView {
    name: String,
    revision: String,
    bytes: u64,
    files: usize,
    pushed_at_ms: u64,
    /// Hosts that hold this revision in their cache.
    cached_on: Vec<String>,
}

async fn models(State(ui): State<UiState>) -> Response {
    let control = ui.control;
    let answer = async {
        let hosts = control.state.hosts().await?;
        let mut out = Vec::new();
        for name in control.store.models().await? {
            let Ok(m) = control.store.manifest(&name).await else { continue };
            out.push(ModelView {
                cached_on: hosts
                    .iter()
                    .filter(|h| h.caches(&name, &m.revision))
                    .map(|h| h.name.clone())
                    .collect(),
                name,
                revision: m.revision.clone(),
                bytes: m.total_bytes(),
                files: m.files.len(),
                pushed_at_ms: m.pushed_at_ms,
            });
        }
        Ok::<_, ControlError>(out)
    };
    match answer.await {
        Ok(models) => Json(models).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The planner's options for a pushed model's latest revision, one card and more, every format.
async fn model_plan(State(ui): State<UiState>, Path(name): Path<String>) -> Response {
    let control = ui.control;
    let answer = async {
        let manifest = control.store.manifest(&name).await?;
        let facts = control
            .facts_of(&name, &manifest.revision)
            .await
            .map_err(|e| ControlError::invalid("model", format!("the planner cannot read {name}: {e}")))?;
        let request = colo_policy::PlanRequest::at_context(facts.max_position.min(4096));
        colo_policy::plan(&facts, &ui.catalogue, &request).map_err(|e| ControlError::invalid("model", e.to_string()))
    };
    match answer.await {
        Ok(plan) => Json(plan).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests;
