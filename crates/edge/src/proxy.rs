//! The request path: find the app, pick a machine (holding the request while one starts),
//! proxy to it, and stream the response back as it arrives.

use crate::metrics::{AppLabel, ErrorLabels, Metrics, RegionLabel, RequestLabels};
use crate::routes::{Endpoint, RouteTable};
use crate::upstream::{self, SendError};
use crate::{EdgeConfig, EdgeError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use colo_core::Regions;
use colo_policy::{
    idle_to_stop, pick, AffinityTable, AppView, Decision, Idle, LoadReport, MachineView, PickRequest, PrefixKey, RegionId, RejectReason,
    RouteParams, Steer, StoppedMachine, TokenBucket,
};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{watch, Notify};

/// What the edge tracks per machine between requests: its own in-flight count and the
/// engine's last `colo-load` report.
#[derive(Default)]
struct Load {
    in_flight: AtomicU32,
    report_running: AtomicU32,
    report_waiting: AtomicU32,
    /// Edge clock (ms) of the last report; 0: none yet.
    report_at_ms: AtomicU64,
    /// Edge clock (ms) when the machine last had a request in flight, or was first seen.
    last_active_ms: AtomicU64,
    /// Whether the last report came from another edge (relayed over NATS), not from the
    /// engine's own answer to this edge.
    report_relayed: std::sync::atomic::AtomicBool,
    /// Wall-clock ms when autostop asked for the machine to stop; 0: never. A machine asked to
    /// stop gets no new requests until its record changes after that moment (it restarted).
    stop_asked_ms: AtomicU64,
}

impl Load {
    fn stopping(&self, endpoint: &Endpoint) -> bool {
        self.stop_asked_ms.load(Ordering::SeqCst) > endpoint.since_ms
    }
}

use colo_core::unix_ms as wall_ms;

/// One API key's rate limits.
struct KeyBuckets {
    rps: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

/// What the edge may ask of the agents: wake a stopped machine for waiting requests, stop an
/// idle one. Calls return at once; the outcome reaches the edge through the route table.
pub trait Machines: Send + Sync {
    fn start(&self, machine_id: &str);
    fn stop(&self, machine_id: &str);
}

/// A started machine as the policy sees it at the moment of a pick.
struct View(Arc<Load>, bool);

impl MachineView for View {
    fn healthy(&self) -> bool {
        // The route table holds started machines only (the agent removes unhealthy ones); the
        // flag marks a machine this request already failed to reach.
        self.1
    }

    fn in_flight(&self) -> u32 {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    fn report(&self) -> Option<LoadReport> {
        let at_ms = self.0.report_at_ms.load(Ordering::Relaxed);
        (at_ms > 0).then(|| LoadReport {
            running: self.0.report_running.load(Ordering::Relaxed),
            waiting: self.0.report_waiting.load(Ordering::Relaxed),
            at_ms,
        })
    }
}

/// How often the edge looks for idle machines to stop.
const AUTOSTOP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Prompt prefixes the edge remembers, and for how long.
const AFFINITY_ENTRIES: usize = 16 * 1024;
const AFFINITY_TTL_MS: u64 = 10 * 60 * 1000;

/// Machines a request may fail to connect to before the edge gives up on it.
const MAX_CONNECT_RETRIES: usize = 2;

/// How often a held request looks again when nothing else wakes it.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A start this edge asked for counts against the herd cap for this long at most.
const WAKE_TIMEOUT_MS: u64 = 120_000;

/// How often the edge times each remote region's machines.
const RTT_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Times one request may be resent because of `colo-replay` answers.
const MAX_REPLAYS: usize = 10;

pub struct Edge {
    pub(crate) config: EdgeConfig,
    routes: watch::Receiver<Arc<RouteTable>>,
    loads: Mutex<HashMap<String, Arc<Load>>>,
    picks: AtomicU64,
    metrics: Metrics,
    regions: Regions,
    /// The edge's clock: milliseconds since it started (never 0 once running).
    started: std::time::Instant,
    /// Wall-clock ms at `started`: a request's arrival in wall time without another clock read.
    started_wall_ms: u64,
    /// Signalled whenever a request to any machine ends, so held requests look again.
    released: Arc<Notify>,
    /// Wakes and stops machines, where the process has agents to ask.
    machines: std::sync::OnceLock<Arc<dyn Machines>>,
    /// Rate-limit buckets per API key (by the key's digest).
    buckets: Mutex<HashMap<String, KeyBuckets>>,
    /// Prompt prefix -> the machine that served it last (by `machine_key`).
    affinity: Mutex<AffinityTable<u64>>,
    /// Requests held per app, waiting for room.
    held: Mutex<HashMap<String, u32>>,
    /// Per app, stopped machines this edge asked to start, with when (edge clock, ms); a start
    /// counts against the herd cap until the route table shows it or `WAKE_TIMEOUT_MS` passes.
    asked: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// Measured RTT (ms, smoothed) to each region, from timed health checks of its machines.
    rtt: Mutex<HashMap<String, f64>>,
    /// The start (by its request time) last counted in the cold-start metrics, per machine.
    cold_starts_seen: Mutex<HashMap<String, u64>>,
}

/// How a request may be routed beyond the policy's defaults.
#[derive(Default)]
struct Routing {
    /// Machines this request already failed on (connect errors, replays `elsewhere`).
    failed: Vec<String>,
    /// Only this machine (a `colo-replay: instance=` answer).
    only: Option<String>,
    /// Only this region (a `colo-replay: region=` answer), as `colo-force-region` does.
    region: Option<String>,
}

/// The edge's whole HTTP surface: its own endpoints, and everything else proxied.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .fallback(|State(edge): State<Arc<Edge>>, request: Request| handle(edge, request))
        .with_state(edge)
}

// === impl Edge ===

impl Edge {
    pub fn new(config: EdgeConfig, routes: watch::Receiver<Arc<RouteTable>>) -> Arc<Self> {
        Arc::new(Self {
            config,
            routes,
            loads: Mutex::default(),
            picks: AtomicU64::new(0),
            metrics: Metrics::new(),
            regions: Regions::builtin(),
            started: std::time::Instant::now(),
            started_wall_ms: wall_ms(),
            released: Arc::new(Notify::new()),
            affinity: Mutex::new(AffinityTable::new(AFFINITY_ENTRIES, AFFINITY_TTL_MS)),
            buckets: Mutex::default(),
            machines: std::sync::OnceLock::new(),
            held: Mutex::default(),
            asked: Mutex::default(),
            rtt: Mutex::default(),
            cold_starts_seen: Mutex::default(),
        })
    }

    /// Counts one machine start's phases in the cold-start histograms, once per start.
    fn observe_cold_start(&self, machine_id: &str, cold: &colo_core::ColdStart) {
        let mut seen = self.cold_starts_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(machine_id.to_string(), cold.requested_at_ms) == Some(cold.requested_at_ms) {
            return;
        }
        for (phase, ms) in [
            ("queued", cold.queued_ms),
            ("hydrate", cold.hydrate_ms),
            ("engine_load", cold.engine_load_ms),
            ("first_response", cold.first_response_ms),
        ] {
            let labels = crate::metrics::PhaseLabel { phase: phase.into() };
            self.metrics.cold_start_seconds.get_or_create(&labels).observe(ms as f64 / 1000.0);
        }
    }

    /// Requests this edge holds or is proxying (bodies still streaming included): what a
    /// drain waits for.
    pub fn busy(&self) -> i64 {
        self.metrics.in_flight.get() + self.metrics.held.get()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// RTT in ms from this edge's region to each region of the table: 0 within the region,
    /// else the measured RTT where the edge has timed that region's machines, else the
    /// great-circle estimate, and 1 s for codes the region list does not know.
    fn rtt_row(&self, table: &RouteTable) -> Vec<u32> {
        let here = &self.config.region;
        let measured = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        table
            .regions
            .iter()
            .map(|code| {
                if code == here {
                    0
                } else if let Some(ms) = measured.get(code) {
                    ms.round().max(1.0) as u32
                } else {
                    self.regions.rtt_ms(here, code).map_or(1000, |ms| ms.round() as u32)
                }
            })
            .collect()
    }

    /// The RTT table as this edge uses it: (region, ms, measured or estimated).
    pub fn rtt_table(&self) -> Vec<(String, u32, bool)> {
        let table = self.routes.borrow().clone();
        let row = self.rtt_row(&table);
        let measured = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        table
            .regions
            .iter()
            .zip(row)
            .map(|(code, ms)| (code.clone(), ms, code == &self.config.region || measured.contains_key(code)))
            .collect()
    }

    /// Extra delay this edge adds on the way to a machine in `region` (a fleet file's
    /// simulated distance between regions on one host).
    fn link_delay(&self, region: &str) -> Option<std::time::Duration> {
        (region != self.config.region && !self.config.inter_region_delay.is_zero()).then_some(self.config.inter_region_delay)
    }

    /// Times a health check of one machine per region every `RTT_PROBE` and keeps a smoothed
    /// RTT per region for picks; runs until the edge is dropped.
    pub fn spawn_rtt_probe(self: &Arc<Self>) {
        let edge = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = edge.upgrade() else { return };
                strong.probe_once().await;
                drop(strong);
                tokio::time::sleep(RTT_PROBE).await;
            }
        });
    }

    async fn probe_once(&self) {
        let table = self.routes.borrow().clone();
        let mut targets: HashMap<String, Arc<Endpoint>> = HashMap::new();
        for routes in table.apps.values() {
            for m in &routes.machines {
                if m.region != self.config.region {
                    targets.entry(m.region.clone()).or_insert_with(|| m.clone());
                }
            }
        }
        for (region, target) in targets {
            let wire = upstream::request(&Method::GET, "/health", &target.host_header, std::iter::empty(), &Bytes::new());
            let started = std::time::Instant::now();
            if let Some(delay) = self.link_delay(&region) {
                tokio::time::sleep(delay).await;
            }
            let timeout = std::time::Duration::from_secs(2);
            let answered = tokio::time::timeout(timeout, async {
                let response = upstream::send(&target.addr, &wire, &Method::GET, self.config.connect_timeout)
                    .await
                    .ok()?;
                response.into_body().collect().await.ok()?;
                Some(())
            })
            .await;
            if !matches!(answered, Ok(Some(()))) {
                continue;
            }
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut rtt = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
            let smoothed = rtt.get(&region).map_or(ms, |old| old * 0.7 + ms * 0.3);
            rtt.insert(region.clone(), smoothed);
            self.metrics
                .rtt_ms
                .get_or_create(&RegionLabel { region })
                .set(smoothed.round() as i64);
        }
    }

    /// Reads the steering headers: `colo-force-region` (only that region) and
    /// `colo-prefer-region` (that region first).
    fn steer(&self, headers: &HeaderMap, table: &RouteTable) -> Result<Steer, EdgeError> {
        let region = |name: &str| -> Result<Option<RegionId>, EdgeError> {
            let Some(value) = headers.get(name) else { return Ok(None) };
            let code = value.to_str().unwrap_or_default().trim().to_ascii_lowercase();
            match table.region_id(&code) {
                Some(id) => Ok(Some(id)),
                None if name == "colo-force-region" => Err(EdgeError::NoRegion {
                    region: code,
                    regions: table.regions.clone(),
                }),
                None => Ok(None),
            }
        };
        Ok(Steer {
            prefer: region("colo-prefer-region")?,
            force: region("colo-force-region")?,
        })
    }

    fn load_of(&self, machine_id: &str) -> Arc<Load> {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(load) = loads.get(machine_id) {
            return load.clone();
        }
        let now = self.now_ms();
        loads
            .entry(machine_id.to_string())
            .or_insert_with(|| {
                Arc::new(Load {
                    last_active_ms: AtomicU64::new(now),
                    ..Load::default()
                })
            })
            .clone()
    }

    /// Lets the edge wake and stop machines (wake on demand, autostop).
    pub fn with_machines(self: Arc<Self>, machines: Arc<dyn Machines>) -> Arc<Self> {
        let _ = self.machines.set(machines);
        self
    }

    /// Stops machines that sat idle past their app's autostop time, keeping `min_running`,
    /// as the policy decides; runs until the edge is dropped.
    pub fn spawn_autostop(self: &Arc<Self>) {
        let edge = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(AUTOSTOP_CHECK).await;
                let Some(edge) = edge.upgrade() else { return };
                edge.autostop_once();
            }
        });
    }

    fn autostop_once(&self) {
        let Some(machines_api) = self.machines.get() else { return };
        let table = self.routes.borrow().clone();
        let now = self.now_ms();
        let wall_now = wall_ms();
        for routes in table.apps.values() {
            let (Some(after_s), min_running) = routes.autostop else { continue };
            // `min_running` holds in each region: every region keeps its own warm machines, and
            // each region's edge decides for its machines.
            for span in &routes.spans {
                let machines = &routes.machines[span.start as usize..span.end as usize];
                // Each edge stops only its own region's machines: it sees their traffic.
                if machines.first().is_none_or(|m| m.region != self.config.region) {
                    continue;
                }
                let facts: Vec<Idle> = machines
                    .iter()
                    .map(|m| {
                        let load = self.load_of(&m.machine_id);
                        let in_flight = load.in_flight.load(Ordering::Relaxed);
                        // A machine that just started (or woke) has been idle no longer than it has run.
                        let since_busy = now.saturating_sub(load.last_active_ms.load(Ordering::Relaxed));
                        let since_start = wall_now.saturating_sub(m.since_ms);
                        Idle {
                            in_flight,
                            idle_ms: since_busy.min(since_start),
                        }
                    })
                    .collect();
                for idx in idle_to_stop(&facts, after_s * 1000, min_running) {
                    // Flag first, then look: a request that took the machine meanwhile either
                    // sees the flag (and goes elsewhere) or is seen here (and the stop is off).
                    let load = self.load_of(&machines[idx].machine_id);
                    load.stop_asked_ms.store(wall_now.max(1), Ordering::SeqCst);
                    if load.in_flight.load(Ordering::SeqCst) > 0 {
                        load.stop_asked_ms.store(0, Ordering::SeqCst);
                        continue;
                    }
                    tracing::info!(machine = %machines[idx].machine_id, region = %machines[idx].region, idle_s = facts[idx].idle_ms / 1000, "autostop");
                    machines_api.stop(&machines[idx].machine_id);
                }
            }
        }
    }

    /// The app named by a Host of `<app>.<domain>`, if the request has one.
    fn app_from_host(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.host())?;
        let host = host.rsplit_once(':').map_or(
            host,
            |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            },
        );
        let app = host.strip_suffix(&self.config.domain)?.strip_suffix('.')?;
        (!app.is_empty() && !app.contains('.')).then(|| app.to_string())
    }

    /// Picks the machine for a request to `app` with the routing policy, holding the request
    /// while no machine has room (none started yet, or all at their hard limit) until one does
    /// or the hold deadline passes. A held request may wake a stopped machine: the policy says
    /// which and whether the held load needs another start (the herd cap).
    async fn pick(
        &self,
        app: &str,
        headers: &HeaderMap,
        routing: &Routing,
        prefix: Option<PrefixKey>,
    ) -> Result<(Arc<Endpoint>, Arc<Load>), EdgeError> {
        // A retry after a failed connect does not wait: with no other machine free, the
        // caller answers with the connect error at once.
        let hold = routing.failed.is_empty();
        let mut routes = self.routes.clone();
        let mut held: Option<(Held<'_>, tokio::time::Instant)> = None;
        loop {
            // Registered before looking, so a release between the look and the wait is not lost.
            let released = self.released.notified();
            let table = routes.borrow_and_update().clone();
            let Some(app_routes) = table.apps.get(app) else {
                return Err(EdgeError::UnknownApp {
                    app: app.to_string(),
                    apps: table.app_names().iter().map(|s| s.to_string()).collect(),
                });
            };
            let mut steer = self.steer(headers, &table)?;
            if let Some(code) = &routing.region {
                steer.force = Some(table.region_id(code).ok_or_else(|| EdgeError::NoRegion {
                    region: code.clone(),
                    regions: table.regions.clone(),
                })?);
            }
            let views: Vec<View> = app_routes
                .machines
                .iter()
                .map(|m| {
                    let allowed = !routing.failed.contains(&m.machine_id) && routing.only.as_ref().is_none_or(|only| *only == m.machine_id);
                    let load = self.load_of(&m.machine_id);
                    let allowed = allowed && !load.stopping(m);
                    View(load, allowed)
                })
                .collect();
            let rtt_ms = self.rtt_row(&table);
            // The machine that last served a prompt starting like this one, if it is still here.
            let affinity = prefix.and_then(|key| {
                let served = self.affinity.lock().unwrap_or_else(|p| p.into_inner()).get(key, self.now_ms())?;
                app_routes.machines.iter().position(|m| machine_key(&m.machine_id) == served)
            });
            let request = PickRequest {
                now_ms: self.now_ms(),
                rtt_ms: &rtt_ms,
                steer,
                affinity,
                seed: self.picks.fetch_add(1, Ordering::Relaxed),
            };
            let (soft, hard) = app_routes.limits;
            let params = RouteParams {
                soft_limit: soft.unwrap_or(self.config.route.soft_limit),
                hard_limit: hard.unwrap_or(self.config.route.hard_limit),
                ..self.config.route
            };
            let mut view = AppView {
                started: &views,
                spans: &app_routes.spans,
                stopped: &[],
                held: 0,
                starting: app_routes.pending as u32,
            };
            match pick(&view, &request, &params) {
                Decision::Pick(idx) => return Ok((app_routes.machines[idx].clone(), views[idx].0.clone())),
                Decision::Reject(RejectReason::NoMachineInRegion { region }) if app_routes.stopped.is_empty() => {
                    let code = table.regions.get(region.0 as usize).cloned().unwrap_or_default();
                    return Err(EdgeError::NoRegion {
                        region: code,
                        regions: table.regions.clone(),
                    });
                }
                _ => {}
            }
            if !hold || routing.only.is_some() {
                return Err(self.no_machine(app));
            }
            if held.is_none() {
                held = Some((self.hold(app)?, tokio::time::Instant::now() + self.config.hold_timeout));
            }
            let deadline = held.as_ref().map_or_else(tokio::time::Instant::now, |(_, deadline)| *deadline);
            // No room: the policy decides, with the stopped machines and the held load in view,
            // whether to wake one. Decided under one lock so that concurrent requests never
            // count the same start twice.
            if let Some(machines) = self.machines.get() {
                let now = self.now_ms();
                let mut all_asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
                let asked = all_asked.entry(app.to_string()).or_default();
                // A start counts until the table shows the machine moving (no longer stopped);
                // one that is stopped again later may be woken again.
                asked.retain(|id, at| now.saturating_sub(*at) < WAKE_TIMEOUT_MS && app_routes.stopped.iter().any(|m| m.machine_id == *id));
                let (waking, sleeping): (Vec<_>, Vec<_>) = app_routes.stopped.iter().partition(|m| asked.contains_key(&m.machine_id));
                let stopped: Vec<StoppedMachine> = sleeping
                    .iter()
                    .map(|m| StoppedMachine {
                        region: table.region_id(&m.region).unwrap_or(RegionId(u16::MAX)),
                        cached: m.cached,
                    })
                    .collect();
                view.stopped = &stopped;
                view.held = self.held_count(app).saturating_sub(1);
                view.starting = (app_routes.pending + waking.len()) as u32;
                if let Decision::Hold { wake: Some(idx) } = pick(&view, &request, &params) {
                    let id = &sleeping[idx].machine_id;
                    tracing::info!(app, machine = %id, held = view.held + 1, "waking a stopped machine for held requests");
                    asked.insert(id.clone(), now);
                    self.metrics.wakes.get_or_create(&AppLabel { app: app.to_string() }).inc();
                    machines.start(id);
                }
            }
            tokio::select! {
                changed = routes.changed() => if changed.is_err() { return Err(self.no_machine(app)) },
                _ = released => {}
                // Engine reports age out without any event; look again now and then.
                _ = tokio::time::sleep(RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => return Err(self.no_machine(app)),
            }
        }
    }

    /// Joins `app`'s hold queue, or refuses when it is full.
    fn hold(&self, app: &str) -> Result<Held<'_>, EdgeError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(app.to_string()).or_default();
        if *count >= self.config.max_held {
            return Err(EdgeError::QueueFull {
                app: app.to_string(),
                limit: self.config.max_held,
            });
        }
        *count += 1;
        self.metrics.held.inc();
        self.metrics.queue_depth.get_or_create(&AppLabel { app: app.to_string() }).inc();
        Ok(Held {
            edge: self,
            app: app.to_string(),
        })
    }

    fn held_count(&self, app: &str) -> u32 {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(app).copied().unwrap_or(0)
    }

    fn no_machine(&self, app: &str) -> EdgeError {
        EdgeError::NoMachine {
            app: app.to_string(),
            secs: self.config.hold_timeout.as_secs(),
        }
    }

    /// Checks the bearer key of a request to an app that has keys, and charges the key's rate
    /// limits: one request, and for LLM calls the tokens the request may use (a prompt estimate
    /// of a token per 4 bytes plus `max_tokens`, 256 when unset). A key of another app gets the
    /// same 404 as an app that does not exist, so keys do not reveal other apps' names.
    fn authorize(&self, app: &str, headers: &HeaderMap, body: &[u8], is_llm: bool) -> Result<(), EdgeError> {
        let table = self.routes.borrow().clone();
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(routes) = table.apps.get(app) else {
            return match presented {
                Some(_) => Err(EdgeError::NotFound { app: app.to_string() }),
                None => Ok(()), // the pick answers with the list of apps
            };
        };
        if routes.keys.is_empty() {
            return Ok(());
        }
        let Some(presented) = presented else {
            return Err(EdgeError::Unauthorized { app: app.to_string() });
        };
        let hash = blake3::hash(presented.trim().as_bytes()).to_hex().to_string();
        let Some(key) = routes.keys.iter().find(|k| k.hash == hash) else {
            return Err(EdgeError::NotFound { app: app.to_string() });
        };
        let now = self.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let entry = buckets.entry(hash).or_insert_with(|| KeyBuckets {
            rps: key.rps.map(|rps| TokenBucket::new(rps, f64::from(rps), now)),
            tokens: key.tokens_per_minute.map(|tpm| TokenBucket::new(tpm, f64::from(tpm) / 60.0, now)),
        });
        let limited = |what, limit: u32, wait_ms: u64| EdgeError::RateLimited {
            what,
            limit,
            retry_after_s: wait_ms.div_ceil(1000).max(1),
        };
        if let (Some(bucket), Some(limit)) = (&mut entry.rps, key.rps) {
            bucket.take(1, now).map_err(|wait| limited("requests per second", limit, wait))?;
        }
        if let (true, Some(bucket), Some(limit)) = (is_llm, &mut entry.tokens, key.tokens_per_minute) {
            bucket
                .take(llm_cost(body), now)
                .map_err(|wait| limited("tokens per minute", limit, wait))?;
        }
        Ok(())
    }

    /// Keeps the engine's `colo-load` report of a response for later picks.
    fn record_report(&self, load: &Load, headers: &HeaderMap) {
        let Some(value) = headers.get("colo-load").and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Ok(report) = LoadReport::parse(value, self.now_ms()) {
            load.report_running.store(report.running, Ordering::Relaxed);
            load.report_waiting.store(report.waiting, Ordering::Relaxed);
            load.report_at_ms.store(report.at_ms, Ordering::Relaxed);
            load.report_relayed.store(false, Ordering::Relaxed);
        }
    }

    /// The engine load reports this edge received itself that are still fresh, at most
    /// `limit`: what it shares with edges in other regions.
    pub fn fresh_reports(&self, limit: usize) -> Vec<SharedLoad> {
        let now = self.now_ms();
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads
            .iter()
            .filter_map(|(machine, load)| {
                let at = load.report_at_ms.load(Ordering::Relaxed);
                let age = now.saturating_sub(at);
                (at > 0 && age <= self.config.route.report_fresh_ms && !load.report_relayed.load(Ordering::Relaxed)).then(|| SharedLoad {
                    machine: machine.clone(),
                    running: load.report_running.load(Ordering::Relaxed),
                    waiting: load.report_waiting.load(Ordering::Relaxed),
                    age_ms: age,
                })
            })
            .take(limit)
            .collect()
    }

    /// Takes a report another edge relayed, unless this edge holds a fresher one.
    pub fn apply_shared(&self, report: &SharedLoad) {
        let load = self.load_of(&report.machine);
        let at = self.now_ms().saturating_sub(report.age_ms).max(1);
        if load.report_at_ms.load(Ordering::Relaxed) >= at {
            return;
        }
        load.report_running.store(report.running, Ordering::Relaxed);
        load.report_waiting.store(report.waiting, Ordering::Relaxed);
        load.report_at_ms.store(at, Ordering::Relaxed);
        load.report_relayed.store(true, Ordering::Relaxed);
    }

    /// Every machine's load as this edge sees it (for `/colo/load`).
    fn load_table(&self) -> Vec<serde_json::Value> {
        let now = self.now_ms();
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<serde_json::Value> = loads
            .iter()
            .map(|(machine, load)| {
                let at = load.report_at_ms.load(Ordering::Relaxed);
                serde_json::json!({
                    "machine": machine,
                    "in_flight": load.in_flight.load(Ordering::Relaxed),
                    "report": (at > 0).then(|| serde_json::json!({
                        "running": load.report_running.load(Ordering::Relaxed),
                        "waiting": load.report_waiting.load(Ordering::Relaxed),
                        "age_ms": now.saturating_sub(at),
                        "relayed": load.report_relayed.load(Ordering::Relaxed),
                    })),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["machine"].as_str().cmp(&b["machine"].as_str()));
        rows
    }
}

/// One engine load report as edges relay them to each other.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedLoad {
    pub machine: String,
    pub running: u32,
    pub waiting: u32,
    /// How old the report was when it was sent.
    pub age_ms: u64,
}

/// Answers one request: the edge's own endpoints, or the app's machine's answer. What `router`
/// serves, for servers that drive connections themselves.
pub async fn handle(edge: Arc<Edge>, request: Request) -> Response {
    let host_app = edge.app_from_host(request.headers(), request.uri());
    if host_app.is_none() {
        let path = request.uri().path();
        if let Some(check) = &edge.config.admin_token {
            let admin = path == "/metrics" || path.starts_with("/colo/");
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if admin && !presented.is_some_and(|p| (check.0)(p.trim())) {
                let body = serde_json::json!({"error": {"message": "this endpoint needs the cluster token", "type": "invalid_request_error", "param": null, "code": "unauthorized"}});
                return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            }
        }
        match (request.method(), path) {
            (&Method::GET, "/health") => return (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response(),
            (&Method::GET, "/metrics") => return ([("content-type", "text/plain; version=0.0.4")], edge.metrics.encode()).into_response(),
            (&Method::GET, "/v1/models") => return list_models(&edge),
            (&Method::GET, "/colo/rtt") => return rtt_table(&edge),
            (&Method::GET, "/colo/routes") => return route_summary(&edge),
            (&Method::GET, "/colo/load") => return axum::Json(serde_json::json!({"machines": edge.load_table()})).into_response(),
            _ => {}
        }
    }
    let started = std::time::Instant::now();
    let (app, response) = match proxy(&edge, host_app, request, started).await {
        Ok((app, response)) => (app, response),
        Err((app, err)) => {
            edge.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    source: err.source_label().into(),
                })
                .inc();
            if err.status().is_server_error() {
                tracing::warn!(app = %app, error = %err, "request failed");
            }
            (app, err.into_response())
        }
    };
    let region = response
        .headers()
        .get("colo-region")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let labels = RequestLabels {
        app,
        region,
        status: response.status().as_u16(),
    };
    edge.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    edge.metrics.requests.get_or_create(&labels).inc();
    response
}

/// What this edge's route table holds now, per app: machines it may route to (by region),
/// machines starting, machines stopped.
fn route_summary(edge: &Edge) -> Response {
    let table = edge.routes.borrow().clone();
    let apps: serde_json::Map<String, serde_json::Value> = table
        .apps
        .iter()
        .map(|(name, routes)| {
            let mut regions = std::collections::BTreeMap::<&str, usize>::new();
            for m in &routes.machines {
                *regions.entry(m.region.as_str()).or_default() += 1;
            }
            let summary = serde_json::json!({
                "routable": routes.machines.len(),
                "by_region": regions,
                "starting": routes.pending,
                "stopped": routes.stopped.len(),
            });
            (name.clone(), summary)
        })
        .collect();
    axum::Json(serde_json::json!({"edge_region": edge.config.region, "apps": apps})).into_response()
}

/// The RTT this edge uses for each region, and whether it was measured or estimated.
fn rtt_table(edge: &Edge) -> Response {
    let rows: Vec<_> = edge
        .rtt_table()
        .into_iter()
        .map(|(region, ms, measured)| serde_json::json!({"region": region, "rtt_ms": ms, "measured": measured}))
        .collect();
    axum::Json(serde_json::json!({"edge_region": edge.config.region, "regions": rows})).into_response()
}

/// The apps, in the shape of OpenAI's model list, so clients can discover them.
fn list_models(edge: &Edge) -> Response {
    let table = edge.routes.borrow().clone();
    let data: Vec<_> = table
        .app_names()
        .into_iter()
        .map(|name| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "colo"}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

type ProxyResult = Result<(String, Response), (String, EdgeError)>;

/// A request as the edge keeps it while it may be sent more than once (retries, replays).
struct Outgoing {
    /// Wall-clock ms when the request arrived: a machine whose start was asked for after this
    /// woke for it.
    arrived_ms: u64,
    app: String,
    method: Method,
    path: axum::http::uri::PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    prefix: Option<PrefixKey>,
}

/// What came back from a machine: the response head and body, still counted in flight.
struct Answered {
    /// The machine's cold start, when it started for this request.
    woke: Option<colo_core::ColdStart>,
    endpoint: Arc<Endpoint>,
    guard: InFlight,
    response: http::Response<upstream::Body>,
}

async fn proxy(edge: &Arc<Edge>, host_app: Option<String>, request: Request, arrived: std::time::Instant) -> ProxyResult {
    let (parts, body) = request.into_parts();
    let unknown = || "-".to_string();
    let body = read_body(&parts.headers, body, edge.config.max_body)
        .await
        .map_err(|e| (unknown(), e))?;
    let app = match host_app {
        Some(app) => app,
        None => app_from_body(&body, &edge.config.domain).map_err(|e| (unknown(), e))?,
    };
    let is_llm = parts.uri.path().ends_with("completions");
    if let Err(e) = edge.authorize(&app, &parts.headers, &body, is_llm) {
        return Err((app, e));
    }
    let streaming = is_llm && wants_stream(&body);
    let outgoing = Outgoing {
        arrived_ms: edge.started_wall_ms + arrived.saturating_duration_since(edge.started).as_millis() as u64,
        prefix: is_llm.then(|| prefix_of(&app, &body)).flatten(),
        app: app.clone(),
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/")),
        headers: parts.headers,
        body,
    };
    if !streaming || edge.config.sse_keepalive.is_zero() {
        return match send(edge.clone(), Arc::new(outgoing)).await {
            Ok(answered) => Ok((app, respond(answered))),
            Err(e) => Err((app, e)),
        };
    }
    // A streaming client that has to wait for a machine gets its stream at once, with SSE
    // comments as keep-alives until the machine answers.
    let mut sending = AbortOnDrop(tokio::spawn(send(edge.clone(), Arc::new(outgoing))));
    tokio::select! {
        joined = &mut sending.0 => match joined {
            Ok(Ok(answered)) => Ok((app, respond(answered))),
            Ok(Err(e)) => Err((app, e)),
            Err(e) => Err((app, EdgeError::BodyRead(format!("request task failed: {e}")))),
        },
        _ = tokio::time::sleep(edge.config.sse_keepalive) => Ok((app, held_stream(edge.clone(), sending))),
    }
}

/// Whether an LLM request asks for server-sent events.
fn wants_stream(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Streamed {
        #[serde(default)]
        stream: bool,
    }
    serde_json::from_slice::<Streamed>(body).is_ok_and(|s| s.stream)
}

/// A spawned request that is cancelled when the client goes away.
struct AbortOnDrop(tokio::task::JoinHandle<Result<Answered, EdgeError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The response of a streaming request still waiting for a machine: `: waiting` comments every
/// keep-alive interval, then the machine's events as they come, or one error event if it
/// never answers.
fn held_stream(edge: Arc<Edge>, mut sending: AbortOnDrop) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(edge.config.sse_keepalive);
        let held_since = std::time::Instant::now() - edge.config.sse_keepalive;
        let answered = loop {
            tokio::select! {
                joined = &mut sending.0 => break joined.map_err(|e| EdgeError::BodyRead(format!("request task failed: {e}"))).and_then(|r| r),
                _ = ticks.tick() => {
                    let comment = format!(": waiting for a machine ({:.1}s)\n\n", held_since.elapsed().as_secs_f64());
                    if tx.send(Ok(Bytes::from(comment))).await.is_err() {
                        return; // the client left; dropping `sending` cancels the request
                    }
                }
            }
        };
        match answered {
            Ok(answered) if answered.response.status().is_success() => {
                let mut body = respond(answered).into_body();
                while let Some(frame) = body.frame().await {
                    let Ok(Some(data)) = frame.map(|f| f.into_data().ok()) else { break };
                    if tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(answered) => {
                let status = answered.response.status();
                let bytes = answered
                    .response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = format!("the machine answered {status}: {}", String::from_utf8_lossy(&bytes));
                let _ = tx.send(Ok(error_event(&message, "upstream_error"))).await;
            }
            Err(e) => {
                let _ = tx.send(Ok(error_event(&e.to_string(), "unavailable_error"))).await;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn error_event(message: &str, kind: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    Bytes::from(format!("data: {body}\n\n"))
}

/// Methods whose requests may be sent twice: a failure after sending is retried only for these.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Picks a machine and sends the request, until a machine answers: a refused or failed
/// connect goes to another machine (the request was not sent); a failure after sending goes to
/// another machine only for idempotent methods; a `colo-replay` answer resends the request
/// where it says, at most `MAX_REPLAYS` times.
async fn send(edge: Arc<Edge>, out: Arc<Outgoing>) -> Result<Answered, EdgeError> {
    let mut routing = Routing::default();
    let mut last_error: Option<EdgeError> = None;
    let mut replays = 0;
    loop {
        let (endpoint, load) = match edge.pick(&out.app, &out.headers, &routing, out.prefix).await {
            Ok(picked) => picked,
            Err(e) => return Err(last_error.unwrap_or(e)),
        };
        let upstream_failed = |reason: String| EdgeError::Upstream {
            machine: endpoint.machine_id.clone(),
            addr: endpoint.addr.clone(),
            reason,
        };
        let wire = upstream::request(
            &out.method,
            out.path.as_str(),
            &endpoint.host_header,
            out.headers
                .iter()
                .filter(|(name, _)| !is_hop_by_hop(name) && *name != header::HOST && *name != header::CONTENT_LENGTH),
            &out.body,
        );
        let guard = InFlight::new(load, &edge);
        if guard.load.stopping(&endpoint) {
            // Autostop took the machine between the pick and now: pick again.
            drop(guard);
            continue;
        }
        if let Some(delay) = edge.link_delay(&endpoint.region) {
            tokio::time::sleep(delay).await;
        }
        let started = std::time::Instant::now();
        let response = match upstream::send(&endpoint.addr, &wire, &out.method, edge.config.connect_timeout).await {
            Ok(answered) => answered,
            Err(e) => {
                let (kind, reason) = match &e {
                    SendError::Connect(reason) => ("connect", reason.clone()),
                    SendError::Sent(reason) => ("after_send", reason.clone()),
                };
                let retry = matches!(e, SendError::Connect(_)) || idempotent(&out.method);
                if !retry || routing.failed.len() >= MAX_CONNECT_RETRIES {
                    return Err(upstream_failed(reason));
                }
                tracing::info!(app = %out.app, machine = %endpoint.machine_id, error = %reason, kind, "request failed; trying another machine");
                edge.metrics
                    .retries
                    .get_or_create(&crate::metrics::RetryLabels { kind: kind.into() })
                    .inc();
                routing.failed.push(endpoint.machine_id.clone());
                last_error = Some(upstream_failed(reason));
                continue;
            }
        };
        edge.metrics.upstream_seconds.observe(started.elapsed().as_secs_f64());
        edge.record_report(&guard.load, response.headers());
        let Some(replay) = response
            .headers()
            .get("colo-replay")
            .and_then(|v| v.to_str().ok())
            .map(Replay::parse)
        else {
            if let Some(key) = out.prefix {
                edge.affinity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(key, machine_key(&endpoint.machine_id), edge.now_ms());
            }
            let woke = endpoint.cold_start.clone().filter(|c| c.requested_at_ms >= out.arrived_ms);
            if let Some(cold) = &woke {
                edge.observe_cold_start(&endpoint.machine_id, cold);
            }
            return Ok(Answered {
                woke,
                endpoint,
                guard,
                response,
            });
        };
        let replay = replay.map_err(|reason| upstream_failed(format!("bad colo-replay header: {reason}")))?;
        replays += 1;
        if replays > MAX_REPLAYS {
            return Err(upstream_failed(format!(
                "asked to replay the request more than {MAX_REPLAYS} times"
            )));
        }
        edge.metrics.replays.inc();
        tracing::debug!(app = %out.app, machine = %endpoint.machine_id, ?replay, "replaying");
        routing = Routing {
            failed: if replay.elsewhere {
                vec![endpoint.machine_id.clone()]
            } else {
                Vec::new()
            },
            only: replay.instance,
            region: replay.region,
        };
    }
}

/// Where a `colo-replay` answer sends the request: `region=<code>`, `instance=<machine id>`,
/// and/or `elsewhere` (any machine but this one), separated by `;`.
#[derive(Debug, Default, PartialEq)]
struct Replay {
    region: Option<String>,
    instance: Option<String>,
    elsewhere: bool,
}

impl Replay {
    fn parse(value: &str) -> Result<Replay, String> {
        let mut replay = Replay::default();
        for field in value.split(';').map(str::trim).filter(|f| !f.is_empty()) {
            match field.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("region", code)) if !code.is_empty() => replay.region = Some(code.to_ascii_lowercase()),
                Some(("instance", id)) if !id.is_empty() => replay.instance = Some(id.to_string()),
                Some(("elsewhere", v)) => replay.elsewhere = v == "true",
                None if field == "elsewhere" => replay.elsewhere = true,
                _ => return Err(format!("{field:?} is not region=<code>, instance=<id> or elsewhere")),
            }
        }
        if replay == Replay::default() {
            return Err("names no region, instance or elsewhere".into());
        }
        Ok(replay)
    }
}

/// The client's response: the machine's head (hop-by-hop headers dropped, the machine and its
/// region added) and its body passed through as it arrives.
fn respond(answered: Answered) -> Response {
    let Answered {
        woke,
        endpoint,
        guard,
        response,
    } = answered;
    let (mut parts, incoming) = response.into_parts();
    parts.headers.retain_hop_by_hop();
    if let Some(cold) = woke {
        // The request that woke a machine says what the wait was made of.
        let source = match (cold.bytes_from_origin, cold.bytes_from_peer) {
            (0, 0) => "cache",
            (0, _) => "peer",
            _ => "origin",
        };
        let value = format!(
            "queued={};hydrate={};engine_load={};first_response={};weights={source}",
            cold.queued_ms, cold.hydrate_ms, cold.engine_load_ms, cold.first_response_ms
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(HeaderName::from_static("colo-cold-start"), value);
        }
    }
    parts
        .headers
        .insert(HeaderName::from_static("colo-machine"), endpoint.machine_header.clone());
    parts
        .headers
        .insert(HeaderName::from_static("colo-region"), endpoint.region_header.clone());
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let sse_machine = is_sse.then(|| endpoint.machine_id.clone());
    let body = Body::new(Tracked {
        inner: incoming,
        _guard: guard,
        sse_machine,
        done: false,
    });
    Response::from_parts(parts, body)
}

/// Bodies over the limit are still read, up to this many bytes, before the 413 goes out:
/// a client that is cut off mid-upload often never sees the answer that explains why.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, EdgeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0u64;
    let too_large = |seen: u64| EdgeError::BodyTooLarge {
        size: declared.unwrap_or(seen).max(seen),
        limit,
    };
    if declared.is_some_and(|size| size > DRAIN_LIMIT) {
        return Err(too_large(0));
    }
    let mut drain = None;
    while !hyper::body::Body::is_end_stream(&body) {
        // A small body has usually arrived with its head: take it without arming a timer.
        let next = match futures::FutureExt::now_or_never(body.frame()) {
            Some(next) => Ok(next),
            None => {
                let deadline = *drain.get_or_insert_with(|| tokio::time::Instant::now() + std::time::Duration::from_secs(10));
                tokio::time::timeout_at(deadline, body.frame()).await
            }
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(EdgeError::BodyRead(e.to_string())),
            Ok(None) => break,
            Err(_) if seen > limit as u64 => return Err(too_large(seen)),
            Err(_) => return Err(EdgeError::BodyRead("timed out reading the request body".into())),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > DRAIN_LIMIT {
            return Err(too_large(seen));
        }
        if seen <= limit as u64 && declared.is_none_or(|size| size <= limit as u64) {
            collected.extend_from_slice(&data);
        }
    }
    if seen > limit as u64 || declared.is_some_and(|size| size > limit as u64) {
        return Err(too_large(seen));
    }
    Ok(collected.freeze())
}

/// Bytes of a prompt that decide prefix affinity: two prompts that agree this far are sent to
/// the machine whose KV cache may already hold their start.
const PREFIX_BYTES: usize = 512;

/// The affinity key of a completions or chat request: its app and the start of its prompt (the
/// text, the token ids, or the messages as sent).
fn prefix_of(app: &str, body: &[u8]) -> Option<PrefixKey> {
    #[derive(serde::Deserialize)]
    struct Prompted {
        prompt: Option<serde_json::Value>,
        messages: Option<serde_json::Value>,
    }
    let prompted: Prompted = serde_json::from_slice(body).ok()?;
    let mut bytes = app.as_bytes().to_vec();
    bytes.push(0);
    match (prompted.prompt, prompted.messages) {
        (Some(serde_json::Value::String(text)), _) => bytes.extend_from_slice(text.as_bytes()),
        (_, Some(messages)) => bytes.extend_from_slice(messages.to_string().as_bytes()),
        (Some(other), _) => bytes.extend_from_slice(other.to_string().as_bytes()),
        (None, None) => return None,
    }
    Some(PrefixKey::of_bytes(&bytes, app.len() + 1 + PREFIX_BYTES))
}

/// Tokens an LLM request may use, for the per-minute budget: about one per 4 bytes of body,
/// plus its `max_tokens` (or `max_completion_tokens`), 256 when neither is set.
fn llm_cost(body: &[u8]) -> u32 {
    let max_tokens = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("max_tokens")
                .or_else(|| v.get("max_completion_tokens"))
                .and_then(|m| m.as_u64())
        })
        .unwrap_or(256);
    (body.len() as u64 / 4 + max_tokens).min(u64::from(u32::MAX)) as u32
}

/// A stable handle for a machine in the affinity table, whatever its place in the route table.
fn machine_key(machine_id: &str) -> u64 {
    PrefixKey::of_bytes(machine_id.as_bytes(), usize::MAX).0
}

fn app_from_body(body: &[u8], domain: &str) -> Result<String, EdgeError> {
    #[derive(serde::Deserialize)]
    struct Routed {
        model: Option<serde_json::Value>,
    }
    let routed: Routed = serde_json::from_slice(body).map_err(|e| EdgeError::BadJson {
        reason: e.to_string(),
        domain: domain.to_string(),
    })?;
    match routed.model {
        Some(serde_json::Value::String(model)) if !model.is_empty() => Ok(model),
        _ => Err(EdgeError::NoModel {
            domain: domain.to_string(),
        }),
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-authenticate" | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    )
}

trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    /// Drops the headers that describe one connection rather than the message.
    fn retain_hop_by_hop(&mut self) {
        if !self.keys().any(is_hop_by_hop) {
            return;
        }
        let names: Vec<HeaderName> = self.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
        for name in names {
            self.remove(name);
        }
    }
}

/// A request's place in its app's hold queue, given up when dropped (picked, timed out, or the
/// client left).
struct Held<'a> {
    edge: &'a Edge,
    app: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.edge.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.app) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.app);
            }
        }
        self.edge.metrics.held.dec();
        self.edge
            .metrics
            .queue_depth
            .get_or_create(&AppLabel { app: self.app.clone() })
            .dec();
    }
}

/// Counts a request as in flight to its machine until the response body is done or dropped,
/// then wakes held requests: a machine at its hard limit may have room again.
struct InFlight {
    load: Arc<Load>,
    /// The edge's in-flight gauge.
    gauge: prometheus_client::metrics::gauge::Gauge,
    released: Arc<Notify>,
    /// The edge's clock origin, to stamp when the machine was last busy.
    clock: std::time::Instant,
}

impl InFlight {
    fn new(load: Arc<Load>, edge: &Edge) -> Self {
        // A machine with requests in flight is busy whatever its last-active stamp says; the
        // stamp is set when the request ends.
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        edge.metrics.in_flight.inc();
        Self {
            load,
            gauge: edge.metrics.in_flight.clone(),
            released: edge.released.clone(),
            clock: edge.started,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load
            .last_active_ms
            .store(self.clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        self.gauge.dec();
        self.released.notify_waiters();
    }
}

/// A response body that holds its request's in-flight count until it ends. Frames pass
/// through as they arrive: nothing is buffered.
struct Tracked<B> {
    inner: B,
    _guard: InFlight,
    /// For server-sent events: the machine that the error event names if the stream breaks.
    sse_machine: Option<String>,
    /// Set once the stream has ended, cleanly or with an error event.
    done: bool,
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            // A stream whose machine died mid-way ends with an error event the client can see,
            // never with a silent cut that looks like a finished answer.
            Poll::Ready(Some(Err(e))) if self.sse_machine.is_some() => {
                self.done = true;
                let machine = self.sse_machine.take().unwrap_or_default();
                let message = format!("machine {machine} failed mid-stream: {e}");
                let body =
                    serde_json::json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_failed"}});
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(format!("data: {body}\n\n"))))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_come_from_host_names() {
        let (_tx, rx) = watch::channel(Arc::new(RouteTable::default()));
        let edge = Edge::new(EdgeConfig::default(), rx);
        let cases = [
            ("minilm.localhost:8080", Some("minilm")),
            ("minilm.localhost", Some("minilm")),
            ("localhost:8080", None),
            ("127.0.0.1:8080", None),
            ("a.b.localhost", None),
            (".localhost", None),
            ("minilmlocalhost", None),
        ];
        for (host, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(edge.app_from_host(&headers, &Uri::from_static("/")).as_deref(), expected, "{host}");
        }
    }

    #[test]
    fn apps_come_from_the_model_field() {
        assert_eq!(app_from_body(br#"{"model":"minilm","input":"x"}"#, "localhost").unwrap(), "minilm");
        assert!(matches!(app_from_body(b"{", "localhost"), Err(EdgeError::BadJson { .. })));
        assert!(matches!(
            app_from_body(br#"{"input":"x"}"#, "localhost"),
            Err(EdgeError::NoModel { .. })
        ));
        assert!(matches!(
            app_from_body(br#"{"model":7}"#, "localhost"),
            Err(EdgeError::NoModel { .. })
        ));
        let err = EdgeError::UnknownApp {
            app: "x".into(),
            apps: vec!["a".into(), "b".into()],
        };
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert!(err.to_string().contains("apps: a, b"));
    }
}
