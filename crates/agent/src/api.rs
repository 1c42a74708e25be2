//! The agent's REST API: the machines API in Fly's shape (`machines.rs`); the host cache (`/v1/cache`,
//! `/v1/cache/prefetch`, `/v1/cache/evict`, and the peer routes under `/v1/cache/models`);
//! and `/metrics`.

use crate::{Agent, AgentError};

mod machines;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use machines::{wait_args, CreateMachine, LEASE_NONCE, MAX_WAIT_SECS};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

impl AgentError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            AgentError::NoSuchMachine(_) => StatusCode::NOT_FOUND,
            AgentError::Destroyed(_) => StatusCode::CONFLICT,
            // Capacity: another machine may free one.
            AgentError::NoFreeDevice { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::EngineMissing { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::WaitTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            AgentError::WaitFailed { .. } => StatusCode::CONFLICT,
            AgentError::Lease(crate::lease::LeaseError::NoLease { .. }) | AgentError::NoMetadataKey { .. } => StatusCode::NOT_FOUND,
            AgentError::Lease(crate::lease::LeaseError::BadTtl { .. }) | AgentError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AgentError::Lease(_) => StatusCode::CONFLICT,
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
pub(crate) type Hosts = Arc<Vec<Arc<Agent>>>;

pub fn router(agents: Vec<Arc<Agent>>) -> Router {
    let mut router = machines::routes()
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

pub(crate) fn bad_request(message: String) -> Response {
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
