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
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

impl AgentError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            AgentError::NoSuchMachine(_) => StatusCode::NOT_FOUND,
            AgentError::Destroyed(_) => StatusCode::CONFLICT,
            AgentError::NoFreeDevice { .. } => StatusCode::INSUFFICIENT_STORAGE,
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

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/apps/{app}/machines", get(list).post(create))
        .route("/v1/apps/{app}/machines/{id}", get(show).delete(destroy))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/host", get(host))
        .route("/v1/cache", get(cache_list))
        .route("/v1/cache/prefetch", post(cache_prefetch))
        .route("/v1/cache/evict", post(cache_evict))
        .route("/metrics", get(metrics))
        .with_state(agent.clone())
        .merge(colo_store::peer_router(agent.cache().clone()))
}

/// What `GET /v1/cache` answers.
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

async fn cache_list(State(agent): State<Arc<Agent>>) -> Response {
    let cache = agent.cache().clone();
    match tokio::task::spawn_blocking(move || cache.entries()).await {
        Ok(Ok(entries)) => Json(CacheListing {
            host: agent.host().to_string(),
            region: agent.region().to_string(),
            capacity: agent.cache().capacity(),
            used: entries.iter().map(|e| e.bytes).sum(),
            entries,
        })
        .into_response(),
        Ok(Err(e)) => AgentError::from(e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheModel {
    /// Model name in the store.
    model: String,
    /// One revision; the latest (prefetch) or every cached one (evict) when absent.
    revision: Option<String>,
}

async fn cache_prefetch(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Response {
    let request: CacheModel = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    match agent.prefetch(&request.model, request.revision.as_deref()).await {
        Ok(report) => {
            Json(json!({"host": agent.host(), "region": agent.region(), "model": request.model, "report": report})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn cache_evict(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Response {
    let request: CacheModel = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    let cache = agent.cache().clone();
    let result = tokio::task::spawn_blocking(move || cache.evict(&request.model, request.revision.as_deref())).await;
    match result {
        Ok(Ok(evicted)) => Json(json!({"host": agent.host(), "evicted": evicted})).into_response(),
        Ok(Err(e)) => AgentError::from(e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&agent).await,
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn host(State(agent): State<Arc<Agent>>) -> Response {
    Json(json!({"host": agent.config.host, "region": agent.config.region, "devices": agent.devices})).into_response()
}

async fn list(State(agent): State<Arc<Agent>>, Path(app): Path<String>) -> Response {
    match agent.machines().await {
        Ok(machines) => Json(machines.into_iter().filter(|m| m.app.as_str() == app).collect::<Vec<_>>()).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMachine {
    /// Model name in the store.
    model: String,
    /// Model revision; the latest when absent.
    revision: Option<String>,
    /// GPU kind to lease (`l40s`); any free device when absent.
    gpu: Option<String>,
}

async fn create(State(agent): State<Arc<Agent>>, Path(app): Path<String>, body: axum::body::Bytes) -> Response {
    let request: CreateMachine = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    let (app, model) = match (AppName::new(app), AppName::new(request.model)) {
        (Ok(app), Ok(model)) => (app, model),
        (Err(e), _) => return bad_request(format!("app: {e}")),
        (_, Err(e)) => return bad_request(format!("model: {e}")),
    };
    let revision = match request.revision {
        Some(revision) => revision,
        None => match agent.store.manifest(model.as_str()).await {
            Ok(manifest) => manifest.revision,
            Err(e) => return AgentError::from(e).into_response(),
        },
    };
    match agent.create_machine(&app, &model, &revision, request.gpu.as_deref()).await {
        Ok(machine) => (StatusCode::CREATED, Json(machine)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Looks a machine up and checks that it belongs to the app in the path.
async fn owned(agent: &Agent, app: &str, id: &str) -> Result<(), AgentError> {
    let machine = agent.machine(id).await?;
    if machine.app.as_str() != app {
        return Err(AgentError::NoSuchMachine(id.to_string()));
    }
    Ok(())
}

async fn show(State(agent): State<Arc<Agent>>, Path((app, id)): Path<(String, String)>) -> Response {
    match owned(&agent, &app, &id).await {
        Ok(()) => agent.machine(&id).await.map(Json).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start(State(agent): State<Arc<Agent>>, Path((app, id)): Path<(String, String)>) -> Response {
    if let Err(e) = owned(&agent, &app, &id).await {
        return e.into_response();
    }
    agent.start(&id).await.map(Json).into_response()
}

async fn stop(State(agent): State<Arc<Agent>>, Path((app, id)): Path<(String, String)>) -> Response {
    if let Err(e) = owned(&agent, &app, &id).await {
        return e.into_response();
    }
    agent.stop(&id).await.map(Json).into_response()
}

async fn destroy(State(agent): State<Arc<Agent>>, Path((app, id)): Path<(String, String)>) -> Response {
    if let Err(e) = owned(&agent, &app, &id).await {
        return e.into_response();
    }
    agent.destroy(&id).await.map(Json).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    state: Option<String>,
    timeout: Option<f64>,
}

async fn wait(State(agent): State<Arc<Agent>>, Path((app, id)): Path<(String, String)>, Query(query): Query<WaitQuery>) -> Response {
    if let Err(e) = owned(&agent, &app, &id).await {
        return e.into_response();
    }
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
