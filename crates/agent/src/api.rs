//! The agent's REST API, shaped like the Fly Machines API:
//! `/v1/apps/{app}/machines[/{id}[/start|/stop|/wait]]`; the host cache (`/v1/cache`,
//! `/v1/cache/prefetch`, `/v1/cache/evict`, and the peer routes under `/v1/cache/models`);
//! and `/metrics`.

use crate::{Agent, AgentError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use colo_core::{AppName, MachineState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

impl AgentError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            AgentError::NoSuchMachine(_) => StatusCode::NOT_FOUND,
            AgentError::Destroyed(_) => StatusCode::CONFLICT,
            AgentError::NoFreeDevice { .. } => StatusCode::INSUFFICIENT_STORAGE,
            AgentError::EngineMissing { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::WaitTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            AgentError::WaitFailed { .. } => StatusCode::CONFLICT,
            AgentError::Store(colo_store::StoreError::NotFound { .. } | colo_store::StoreError::NotCached { .. }) => StatusCode::NOT_FOUND,
            AgentError::Store(colo_store::StoreError::InUse { .. }) => StatusCode::CONFLICT,
            AgentError::Store(colo_store::StoreError::CacheFull { .. } | colo_store::StoreError::CacheTooSmall { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            AgentError::Store(colo_store::StoreError::Shared(inner)) if matches!(**inner, colo_store::StoreError::CacheFull { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            AgentError::State(_) | AgentError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// The agents of the hosts this process runs (one for `colo up`, several with a fleet file).
type Hosts = Arc<Vec<Arc<Agent>>>;

pub fn router(agents: Vec<Arc<Agent>>) -> Router {
    let mut router = Router::new()
        .route("/v1/apps/{app}/machines", get(list).post(create))
        .route("/v1/apps/{app}/machines/{id}", get(show).delete(destroy))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/suspend", post(suspend))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/host", get(host))
        .route("/v1/hosts", get(hosts))
        .route("/v1/cache", get(cache_list))
        .route("/v1/cache/prefetch", post(cache_prefetch))
        .route("/v1/cache/evict", post(cache_evict))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(agents.clone()));
    // Each host serves its cache to peers under `/v1/hosts/<name>`; the first also at the
    // root, where a one-host process (and every `colo agent`) serves it.
    for (i, agent) in agents.iter().enumerate() {
        let peers = colo_store::peer_router(agent.cache().clone());
        router = router.nest(&format!("/v1/hosts/{}", agent.host()), peers.clone());
        if i == 0 {
            router = router.merge(peers);
        }
    }
    router
}

/// What `GET /v1/cache` answers, one per host.
#[derive(serde::Serialize, Deserialize)]
pub struct CacheListing {
    pub host: String,
    pub region: String,
    /// Bytes the cache may hold; `None` when unlimited.
    pub capacity: Option<u64>,
    pub used: u64,
    /// Least recently used first.
    pub entries: Vec<colo_store::CacheEntry>,
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response()
}

async fn cache_list(State(hosts): State<Hosts>) -> Response {
    let mut listings = Vec::new();
    for agent in hosts.iter() {
        let cache = agent.cache().clone();
        match tokio::task::spawn_blocking(move || cache.entries()).await {
            Ok(Ok(entries)) => listings.push(CacheListing {
                host: agent.host().to_string(),
                region: agent.region().to_string(),
                capacity: agent.cache().capacity(),
                used: entries.iter().map(|e| e.bytes).sum(),
                entries,
            }),
            Ok(Err(e)) => return AgentError::from(e).into_response(),
            Err(e) => return internal(e),
        }
    }
    Json(listings).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheModel {
    /// Model name in the store.
    model: String,
    /// One revision; the latest (prefetch) or every cached one (evict) when absent.
    revision: Option<String>,
    /// Only the hosts of this region; every host when absent.
    region: Option<String>,
    /// Only this host.
    host: Option<String>,
}

/// The hosts a cache request is for, or why there are none (the 400's message).
fn hosts_in<'a>(hosts: &'a Hosts, request: &CacheModel) -> Result<Vec<&'a Arc<Agent>>, String> {
    let (region, host) = (request.region.as_deref(), request.host.as_deref());
    let chosen: Vec<&Arc<Agent>> = hosts
        .iter()
        .filter(|a| region.is_none_or(|r| r == a.region()) && host.is_none_or(|h| h == a.host()))
        .collect();
    if let (true, Some(host)) = (chosen.is_empty(), host) {
        let names: Vec<&str> = hosts.iter().map(|a| a.host()).collect();
        return Err(format!("host: no host {host:?} here (hosts: {})", names.join(", ")));
    }
    if chosen.is_empty() {
        let regions: Vec<&str> = hosts.iter().map(|a| a.region()).collect();
        return Err(format!(
            "region: no host in region {:?} (hosts are in: {})",
            region.unwrap_or_default(),
            regions.join(", ")
        ));
    }
    Ok(chosen)
}

/// Warms every chosen host's cache at once; answers one report per host.
async fn cache_prefetch(State(hosts): State<Hosts>, body: axum::body::Bytes) -> Response {
    let request: CacheModel = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    let chosen = match hosts_in(&hosts, &request) {
        Ok(chosen) => chosen,
        Err(message) => return bad_request(message),
    };
    let pulls = chosen
        .iter()
        .map(|agent| agent.prefetch(&request.model, request.revision.as_deref()));
    let mut answers = Vec::new();
    for (agent, result) in chosen.iter().zip(futures::future::join_all(pulls).await) {
        match result {
            Ok(report) => answers.push(json!({"host": agent.host(), "region": agent.region(), "model": request.model, "report": report})),
            Err(e) => return e.into_response(),
        }
    }
    Json(answers).into_response()
}

async fn cache_evict(State(hosts): State<Hosts>, body: axum::body::Bytes) -> Response {
    let request: CacheModel = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    let chosen = match hosts_in(&hosts, &request) {
        Ok(chosen) => chosen,
        Err(message) => return bad_request(message),
    };
    let mut answers = Vec::new();
    for agent in chosen {
        let (cache, model, revision) = (agent.cache().clone(), request.model.clone(), request.revision.clone());
        match tokio::task::spawn_blocking(move || cache.evict(&model, revision.as_deref())).await {
            Ok(Ok(evicted)) => answers.push(json!({"host": agent.host(), "evicted": evicted})),
            Ok(Err(e)) => return AgentError::from(e).into_response(),
            Err(e) => return internal(e),
        }
    }
    Json(answers).into_response()
}

async fn metrics(State(hosts): State<Hosts>) -> Response {
    let text = crate::metrics::encode(&hosts).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn describe(agent: &Agent) -> serde_json::Value {
    json!({"host": agent.config.host, "region": agent.config.region, "devices": agent.devices})
}

/// The first host (the only one under `colo up` without a fleet file).
async fn host(State(hosts): State<Hosts>) -> Response {
    match hosts.first() {
        Some(agent) => Json(describe(agent)).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "this process runs no host"}))).into_response(),
    }
}

async fn hosts(State(hosts): State<Hosts>) -> Response {
    Json(hosts.iter().map(|a| describe(a)).collect::<Vec<_>>()).into_response()
}

async fn list(State(hosts): State<Hosts>, Path(app): Path<String>) -> Response {
    let mut all = Vec::new();
    for agent in hosts.iter() {
        match agent.machines().await {
            Ok(machines) => all.extend(machines.into_iter().filter(|m| m.app.as_str() == app)),
            Err(e) => return e.into_response(),
        }
    }
    Json(all).into_response()
}

/// The body of `POST /v1/apps/{app}/machines`; [`crate::client::AgentClient`] sends the same.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    /// Model name in the store.
    pub model: String,
    /// Model revision; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// GPU kind to lease (`l40s`); any free device when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Region of the host to run on; the first host with a free device when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The app's own engine command (`{port}`, `{model_dir}`); colo's engine when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_cmd: Option<String>,
    /// The engine profile to run; colo's engine when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<colo_core::EngineSpec>,
}

impl From<&crate::MachineSpec> for CreateMachine {
    /// The request that creates a machine of `spec` on another host: its revision pinned, on
    /// whichever of that agent's hosts has a device free.
    fn from(spec: &crate::MachineSpec) -> Self {
        CreateMachine {
            model: spec.model.to_string(),
            revision: Some(spec.revision.clone()),
            gpu: spec.gpu_kind.clone(),
            region: None,
            engine_cmd: spec.engine_cmd.clone(),
            engine: spec.engine.clone(),
        }
    }
}

async fn create(State(hosts): State<Hosts>, Path(app): Path<String>, body: axum::body::Bytes) -> Response {
    let request: CreateMachine = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    let (app, model) = match (AppName::new(app), AppName::new(request.model)) {
        (Ok(app), Ok(model)) => (app, model),
        (Err(e), _) => return bad_request(format!("app: {e}")),
        (_, Err(e)) => return bad_request(format!("model: {e}")),
    };
    let candidates: Vec<&Arc<Agent>> = hosts
        .iter()
        .filter(|a| request.region.as_ref().is_none_or(|r| *r == a.config.region))
        .collect();
    let Some(first) = candidates.first() else {
        return bad_request(format!("region: no host in region {:?}", request.region.unwrap_or_default()));
    };
    let revision = match request.revision {
        Some(revision) => revision,
        None => match first.store.manifest(model.as_str()).await {
            Ok(manifest) => manifest.revision,
            Err(e) => return AgentError::from(e).into_response(),
        },
    };
    let spec = crate::MachineSpec {
        app,
        model,
        revision,
        gpu_kind: request.gpu,
        engine_cmd: request.engine_cmd,
        engine: request.engine,
    };
    let mut last = None;
    for agent in candidates {
        match agent.create_machine(&spec).await {
            Ok(machine) => return (StatusCode::CREATED, Json(machine)).into_response(),
            Err(e @ AgentError::NoFreeDevice { .. }) => last = Some(e),
            Err(e) => return e.into_response(),
        }
    }
    last.map(|e| e.into_response()).unwrap_or_else(|| bad_request("no host".into()))
}

/// The agent of the host that runs machine `id`, which must belong to the app in the path.
async fn owned(hosts: &Hosts, app: &str, id: &str) -> Result<Arc<Agent>, AgentError> {
    for agent in hosts.iter() {
        match agent.machine(id).await {
            Ok(machine) if machine.app.as_str() == app => return Ok(agent.clone()),
            Ok(_) | Err(AgentError::NoSuchMachine(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(AgentError::NoSuchMachine(id.to_string()))
}

async fn show(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    match owned(&hosts, &app, &id).await {
        Ok(agent) => agent.machine(&id).await.map(Json).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    agent.start(&id).await.map(Json).into_response()
}

async fn stop(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    agent.stop(&id).await.map(Json).into_response()
}

async fn suspend(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    agent.suspend(&id).await.map(Json).into_response()
}

async fn destroy(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    agent.destroy(&id).await.map(Json).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    state: Option<String>,
    timeout: Option<f64>,
}

async fn wait(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, Query(query): Query<WaitQuery>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let wanted = query.state.as_deref().unwrap_or("started");
    let Some(state) = MachineState::parse(wanted) else {
        return bad_request(format!("state: {wanted:?} is not a machine state"));
    };
    let secs = query.timeout.unwrap_or(60.0);
    if !(0.0..=600.0).contains(&secs) {
        return bad_request(format!("timeout: {secs} is outside 0 to 600 seconds"));
    }
    agent
        .wait(&id, state, Duration::from_secs_f64(secs))
        .await
        .map(Json)
        .into_response()
}
