//! The agent's REST API, shaped like the Fly Machines API:
//! `/v1/apps/{app}/machines[/{id}[/start|/stop|/wait]]`.

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
            AgentError::Store(colo_store::StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
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
        .with_state(agent)
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
