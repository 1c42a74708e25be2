//! Control's REST API: `/v1/apps` (list, deploy), `/v1/apps/{app}` (show, destroy) and
//! `/v1/machines` (every machine, for `colo ps`).

use crate::{Control, ControlError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

impl ControlError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            ControlError::NoSuchApp(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Store(colo_store::StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ControlError::Agent(e) => e.http_status(),
            // Capacity: every device is held; stopping or destroying a machine frees one.
            ControlError::HostFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::AgentCall {
                source: colo_agent::client::ClientError::Refused { status, .. },
                ..
            } if *status == StatusCode::SERVICE_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::NotDeployed { cause, .. } => cause.http_status(),
            // A host control drives is out of reach, or answered with an error.
            ControlError::AgentCall { .. }
            | ControlError::MachineHostGone { .. }
            | ControlError::HostGone { .. }
            | ControlError::NoSuchMachine { .. } => StatusCode::BAD_GATEWAY,
            ControlError::Rollout { .. } | ControlError::Unplaced { .. } => StatusCode::CONFLICT,
            ControlError::Store(_) | ControlError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(json!({"error": self.to_string()}))).into_response()
    }
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/apps", get(list).post(deploy))
        .route("/v1/apps/{app}", get(show).delete(destroy))
        .route("/v1/machines", get(machines))
        .route("/v1/apps/{app}/keys", get(list_keys).post(create_key))
        .route("/v1/apps/{app}/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/apps/{app}/deploy-tokens", axum::routing::post(create_deploy_token))
        .with_state(control)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    /// App name.
    name: String,
    /// Model name in the store.
    model: String,
    /// Machines to keep (default 1).
    machines: Option<u32>,
    /// GPU kind (`l40s`); the planner chooses among the host's kinds when absent.
    gpu: Option<String>,
    /// Whole GPUs of one host per machine (tensor parallel); 1 when absent.
    gpus_per_machine: Option<u32>,
    /// Requests in flight per machine past which edges prefer other machines.
    soft_limit: Option<u32>,
    /// Requests in flight per machine at which edges send it no more.
    hard_limit: Option<u32>,
    /// Idle seconds after which edges stop a machine.
    autostop_secs: Option<u64>,
    /// `stop` (the default) or `suspend`: what autostop does to an idle machine.
    #[serde(default)]
    autostop_to: colo_core::IdleAction,
    /// Weights of the routing score (`{"prefix": 3, "kv": 2, "queue": 2, "rtt": 1}`).
    #[serde(default)]
    route_weights: Option<colo_core::RouteWeights>,
    /// Machines kept started even when idle.
    min_running: Option<u32>,
    /// Machines per region code (`{"ord": 2, "ams": 1}`); replaces `machines` when given.
    #[serde(default)]
    regions: std::collections::BTreeMap<String, u32>,
    /// The app's own engine command, with `{port}` (and optionally `{host}`, `{model_dir}`).
    engine_cmd: Option<String>,
    /// Traffic per region (demand.toml as JSON): the planner places the machines on the live
    /// hosts' GPUs; replaces `machines`, not allowed with `regions`.
    demand: Option<colo_core::Demand>,
    /// How edges choose among the app's machines: `score`, `least-loaded` or `round-robin`.
    route: Option<colo_core::RouteMode>,
    /// The engine profile (`{"kind": "vllm", "bin": ..., "args": [...]}`); colo's engine when absent.
    engine: Option<colo_core::EngineSpec>,
}

/// A JSON request body, or the 400 that names what is wrong with it.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::invalid("body", e.to_string()))
}

async fn deploy(State(control): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let request: DeployRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match control
        .deploy_with(
            &request.name,
            &request.model,
            request.machines.unwrap_or(1),
            &crate::DeployOptions {
                gpu: request.gpu.clone(),
                gpus_per_machine: request.gpus_per_machine,
                soft_limit: request.soft_limit,
                hard_limit: request.hard_limit,
                autostop_secs: request.autostop_secs,
                autostop_to: request.autostop_to,
                route_weights: request.route_weights,
                min_running: request.min_running.unwrap_or(0),
                regions: request.regions.clone(),
                engine_cmd: request.engine_cmd.clone(),
                demand: request.demand.clone(),
                route: request.route,
                engine: request.engine.clone(),
            },
        )
        .await
    {
        Ok(app) => (StatusCode::CREATED, Json(app)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(control): State<Arc<Control>>) -> Response {
    control.apps().await.map(Json).into_response()
}

async fn show(State(control): State<Arc<Control>>, Path(app): Path<String>) -> Response {
    control.app(&app).await.map(Json).into_response()
}

async fn destroy(State(control): State<Arc<Control>>, Path(app): Path<String>) -> Response {
    match control.destroy_app(&app).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn machines(State(control): State<Arc<Control>>) -> Response {
    control.state.machines().await.map(Json).map_err(ControlError::from).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    /// Requests per second allowed.
    rps: Option<u32>,
    /// LLM tokens per minute allowed.
    tokens_per_minute: Option<u32>,
}

async fn create_key(State(control): State<Arc<Control>>, Path(app): Path<String>, body: axum::body::Bytes) -> Response {
    let request: KeyRequest = match parse_body(if body.is_empty() { b"{}" } else { &body }) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match control.create_key(&app, request.rps, request.tokens_per_minute).await {
        Ok((record, key)) => (StatusCode::CREATED, Json(json!({"key": key, "record": record}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_keys(State(control): State<Arc<Control>>, Path(app): Path<String>) -> Response {
    control.app(&app).await.map(|a| Json(a.keys)).into_response()
}

async fn revoke_key(State(control): State<Arc<Control>>, Path((app, id)): Path<(String, String)>) -> Response {
    match control.revoke_key(&app, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create_deploy_token(State(control): State<Arc<Control>>, Path(app): Path<String>) -> Response {
    match control.create_deploy_token(&app).await {
        Ok(token) => (StatusCode::CREATED, Json(json!({"app": app, "token": token}))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The read side of the machines API, answered from the shared state, for a control that runs
/// without agents in its process (`colo control`): `GET /v1/apps/{app}/machines[/{id}[/wait]]`.
/// Starting and stopping machines is the agents' API.
pub fn machines_router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/apps/{app}/machines", get(app_machines))
        .route("/v1/apps/{app}/machines/{id}", get(app_machine))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait_machine))
        .route("/v1/apps/{app}/machines/{id}/logs", get(machine_logs))
        .route("/v1/hosts", get(hosts))
        .with_state(control)
}

/// The end of a machine's engine log, from the agent of its host (whose answer, a refusal
/// included, is passed on).
async fn machine_logs(
    State(control): State<Arc<Control>>,
    Path((app, id)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let machine = match find_machine(&control, &app, &id).await {
        Ok(machine) => machine,
        Err(response) => return response,
    };
    let agent = match control.hosts.agent_of(&machine.host).await {
        Ok(Some(agent)) => agent,
        Ok(None) => return ControlError::HostGone { host: machine.host }.into_response(),
        Err(e) => return e.into_response(),
    };
    match agent.logs(&app, &id, query.as_deref()).await {
        Ok((status, kind, body)) => {
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let kind = kind.unwrap_or_else(|| "text/plain; charset=utf-8".into());
            (status, [(axum::http::header::CONTENT_TYPE, kind)], body).into_response()
        }
        Err(source) => ControlError::AgentCall {
            host: machine.host,
            source,
        }
        .into_response(),
    }
}

/// Every registered host, as its agent last wrote it (and control marked it).
async fn hosts(State(control): State<Arc<Control>>) -> Response {
    match control.state.hosts().await {
        Ok(hosts) => Json(hosts).into_response(),
        Err(e) => ControlError::from(e).into_response(),
    }
}

async fn app_machines(State(control): State<Arc<Control>>, Path(app): Path<String>) -> Response {
    match control.state.machines().await {
        Ok(all) => Json(all.into_iter().filter(|m| m.app.as_str() == app).collect::<Vec<_>>()).into_response(),
        Err(e) => ControlError::from(e).into_response(),
    }
}

async fn find_machine(control: &Control, app: &str, id: &str) -> Result<colo_core::Machine, Response> {
    let all = control.state.machines().await.map_err(|e| ControlError::from(e).into_response())?;
    all.into_iter().find(|m| m.id == id && m.app.as_str() == app).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("app {app:?} has no machine {id:?}")})),
        )
            .into_response()
    })
}

async fn app_machine(State(control): State<Arc<Control>>, Path((app, id)): Path<(String, String)>) -> Response {
    match find_machine(&control, &app, &id).await {
        Ok(machine) => Json(machine).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    state: Option<String>,
    timeout: Option<f64>,
}

/// Answers once the machine reaches the state asked for (default `started`), with 409 if it
/// fails or is destroyed first and 408 when the timeout (seconds, at most 60, as Fly's) passes.
async fn wait_machine(
    State(control): State<Arc<Control>>,
    Path((app, id)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<WaitQuery>,
) -> Response {
    let (state, timeout) = match colo_agent::api::wait_args(query.state.as_deref(), query.timeout) {
        Ok(args) => args,
        Err((field, reason)) => return ControlError::invalid(field, reason).into_response(),
    };
    let (wanted, secs) = (state.as_str(), timeout.as_secs_f64());
    let mut changes = control.state.changes();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let machine = match find_machine(&control, &app, &id).await {
            Ok(machine) => machine,
            Err(response) => return response,
        };
        if machine.state == state {
            return Json(machine).into_response();
        }
        if matches!(machine.state, colo_core::MachineState::Failed | colo_core::MachineState::Destroyed) {
            let error = machine.last_error.unwrap_or_default();
            let body = json!({"error": format!("machine {id} is {} (wanted {wanted}): {error}", machine.state)});
            return (StatusCode::CONFLICT, Json(body)).into_response();
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let body = json!({"error": format!("machine {id} is {} after {secs}s (wanted {wanted})", machine.state)});
                return (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response();
            }
        }
    }
}
