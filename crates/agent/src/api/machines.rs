//! The machines API, in the shape of Fly's (`/v1/apps/{app}/machines`): list (filtered by
//! region, state and metadata), create, get, update, destroy; start, stop, suspend, restart;
//! wait for a state (at most 60 s, 408 when it runs out); leases with a nonce
//! (`fly-machine-lease-nonce`); cordon and uncordon; metadata. docs/MACHINES-API.md lists every
//! path of Fly's API and whether colo has it.

use super::{bad_request, Hosts};
use crate::manage::UpdateMachine;
use crate::{Agent, AgentError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use colo_core::{AppName, MachineState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The header that proves a lease, as Fly names it.
pub const LEASE_NONCE: &str = "fly-machine-lease-nonce";
/// The longest `wait`, in seconds; Fly's limit too.
pub const MAX_WAIT_SECS: f64 = 60.0;

pub(super) fn routes() -> Router<Hosts> {
    Router::new()
        .route("/v1/apps/{app}/machines", get(list).post(create))
        .route("/v1/apps/{app}/machines/{id}", get(show).post(update).delete(destroy))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/suspend", post(suspend))
        .route("/v1/apps/{app}/machines/{id}/restart", post(restart))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/apps/{app}/machines/{id}/logs", get(logs))
        .route(
            "/v1/apps/{app}/machines/{id}/lease",
            get(lease).post(acquire_lease).delete(release_lease),
        )
        .route("/v1/apps/{app}/machines/{id}/cordon", post(cordon))
        .route("/v1/apps/{app}/machines/{id}/uncordon", post(uncordon))
        .route("/v1/apps/{app}/machines/{id}/metadata", get(metadata))
        .route(
            "/v1/apps/{app}/machines/{id}/metadata/{key}",
            post(set_metadata).delete(remove_metadata),
        )
}

/// `GET /v1/apps/{app}/machines[?region=R][&state=S][&metadata.KEY=VALUE...]`.
async fn list(State(hosts): State<Hosts>, Path(app): Path<String>, Query(query): Query<HashMap<String, String>>) -> Response {
    let mut region = None;
    let mut state = None;
    let mut metadata = Vec::new();
    for (key, value) in &query {
        match (key.as_str(), key.strip_prefix("metadata.")) {
            ("region", _) => region = Some(value.as_str()),
            ("state", _) => match MachineState::parse(value) {
                Some(s) => state = Some(s),
                None => return bad_request(format!("state: {value:?} is not a machine state")),
            },
            (_, Some(k)) if !k.is_empty() => metadata.push((k, value.as_str())),
            _ => return bad_request(format!("{key}: not a filter of this list (region, state, metadata.KEY)")),
        }
    }
    let mut all = Vec::new();
    for agent in hosts.iter() {
        match agent.machines().await {
            Ok(machines) => all.extend(machines.into_iter().filter(|m| {
                m.app.as_str() == app
                    && region.is_none_or(|r| m.region == r)
                    && state.is_none_or(|s| m.state == s)
                    && metadata.iter().all(|(k, v)| m.metadata.get(*k).is_some_and(|have| have == v))
            })),
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
    /// Whole GPUs of one host to lease, for an engine that spans them; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
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
            gpus: (spec.gpus != 1).then_some(spec.gpus),
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
        .filter(|a| request.region.as_ref().is_none_or(|r| r == a.region()))
        .collect();
    let Some(first) = candidates.first() else {
        return bad_request(format!("region: no host in region {:?}", request.region.unwrap_or_default()));
    };
    let revision = match request.revision {
        Some(revision) => revision,
        None => match first.store().manifest(model.as_str()).await {
            Ok(manifest) => manifest.revision,
            Err(e) => return AgentError::from(e).into_response(),
        },
    };
    let spec = crate::MachineSpec {
        app,
        model,
        revision,
        gpu_kind: request.gpu,
        gpus: request.gpus.unwrap_or(1),
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

/// The answer to a machine verb: the machine as JSON, or the error's status and message.
fn answer(result: Result<colo_core::Machine, AgentError>) -> Response {
    result.map(Json).into_response()
}

/// The lease nonce a request carries.
fn nonce(headers: &HeaderMap) -> Option<&str> {
    headers.get(LEASE_NONCE).and_then(|v| v.to_str().ok())
}

/// The agent of machine `id`, once the request may change it under the machine's lease.
async fn leased(hosts: &Hosts, app: &str, id: &str, headers: &HeaderMap) -> Result<Arc<Agent>, AgentError> {
    let agent = owned(hosts, app, id).await?;
    agent.check_lease(id, nonce(headers))?;
    Ok(agent)
}

async fn show(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    answer(async { owned(&hosts, &app, &id).await?.machine(&id).await }.await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Lines from the end (default 50, at most 500).
    lines: Option<usize>,
}

/// `GET .../logs[?lines=N]`: the end of the machine's engine log, as plain text.
async fn logs(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, Query(query): Query<LogsQuery>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    match agent.engine_log(&id, query.lines.unwrap_or(50)).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn update(
    State(hosts): State<Hosts>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: UpdateMachine = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("body: {e}")),
    };
    answer(async { leased(&hosts, &app, &id, &headers).await?.update(&id, request).await }.await)
}

async fn destroy(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    answer(async { leased(&hosts, &app, &id, &headers).await?.destroy(&id).await }.await)
}

// Start, stop and suspend are the verbs edges use to scale: a lease never keeps a machine
// from waking for callers or parking when idle, so they do not check it.

async fn start(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    answer(async { owned(&hosts, &app, &id).await?.start(&id).await }.await)
}

async fn stop(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    answer(async { owned(&hosts, &app, &id).await?.stop(&id).await }.await)
}

async fn suspend(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    answer(async { owned(&hosts, &app, &id).await?.suspend(&id).await }.await)
}

async fn restart(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    answer(async { leased(&hosts, &app, &id, &headers).await?.restart(&id).await }.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    state: Option<String>,
    timeout: Option<f64>,
}

/// Reads `state` (default `started`) and `timeout` (seconds, default and at most 60) of a
/// wait, or the field that is wrong and why.
pub fn wait_args(state: Option<&str>, timeout: Option<f64>) -> Result<(MachineState, Duration), (&'static str, String)> {
    let wanted = state.unwrap_or("started");
    let state = MachineState::parse(wanted).ok_or_else(|| ("state", format!("{wanted:?} is not a machine state")))?;
    let secs = timeout.unwrap_or(MAX_WAIT_SECS);
    if !(0.0..=MAX_WAIT_SECS).contains(&secs) {
        return Err(("timeout", format!("{secs} is outside 0 to {MAX_WAIT_SECS} seconds")));
    }
    Ok((state, Duration::from_secs_f64(secs)))
}

async fn wait(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, Query(query): Query<WaitQuery>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let (state, timeout) = match wait_args(query.state.as_deref(), query.timeout) {
        Ok(args) => args,
        Err((field, reason)) => return bad_request(format!("{field}: {reason}")),
    };
    agent.wait(&id, state, timeout).await.map(Json).into_response()
}

/// Fly answers lease calls in an envelope.
fn lease_answer(lease: crate::lease::Lease) -> Response {
    Json(json!({"status": "success", "data": lease})).into_response()
}

async fn lease(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    agent.lease(&id).await.map(lease_answer).unwrap_or_else(|e| e.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    /// Seconds the lease holds (default 30).
    ttl: Option<u64>,
    description: Option<String>,
    owner: Option<String>,
}

/// `POST .../lease[?ttl=S]` with an optional body `{"ttl": S, "description": "...", "owner":
/// "..."}`: takes the lease (409 while another holds it), or with the nonce extends it.
async fn acquire_lease(
    State(hosts): State<Hosts>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: LeaseRequest = if body.is_empty() {
        LeaseRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("body: {e}")),
        }
    };
    let ttl = match (query.get("ttl"), request.ttl) {
        (Some(text), _) => match text.parse::<u64>() {
            Ok(ttl) => ttl,
            Err(_) => return bad_request(format!("ttl: {text:?} is not a whole number of seconds")),
        },
        (None, Some(ttl)) => ttl,
        (None, None) => 30,
    };
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let owner = request.owner.as_deref().unwrap_or("api");
    let description = request.description.as_deref().unwrap_or("");
    agent
        .acquire_lease(&id, ttl, nonce(&headers), owner, description)
        .await
        .map(lease_answer)
        .unwrap_or_else(|e| e.into_response())
}

async fn release_lease(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    match agent.release_lease(&id, nonce(&headers)).await {
        Ok(()) => Json(json!({"status": "success"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cordon(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    answer(async { leased(&hosts, &app, &id, &headers).await?.cordon(&id, true).await }.await)
}

async fn uncordon(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    answer(async { leased(&hosts, &app, &id, &headers).await?.cordon(&id, false).await }.await)
}

async fn metadata(State(hosts): State<Hosts>, Path((app, id)): Path<(String, String)>) -> Response {
    let agent = match owned(&hosts, &app, &id).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    match agent.machine(&id).await {
        Ok(machine) => Json::<BTreeMap<String, String>>(machine.metadata).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataValue {
    value: String,
}

/// `POST .../metadata/{key}` with `{"value": "..."}`; 204.
async fn set_metadata(
    State(hosts): State<Hosts>,
    Path((app, id, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let value: MetadataValue = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("body: {e} (send {{\"value\": \"...\"}})")),
    };
    match async {
        leased(&hosts, &app, &id, &headers)
            .await?
            .set_metadata(&id, &key, &value.value)
            .await
    }
    .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_metadata(State(hosts): State<Hosts>, Path((app, id, key)): Path<(String, String, String)>, headers: HeaderMap) -> Response {
    match async { leased(&hosts, &app, &id, &headers).await?.remove_metadata(&id, &key).await }.await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
