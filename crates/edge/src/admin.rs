//! The edge's own endpoints: `/health`, `/metrics`, `/v1/models`, and `/colo/{rtt,routes,load}`,
//! the last two and `/metrics` behind the cluster token when the edge has one.

use crate::edge::Edge;
use crate::scaling::count_phase;
use axum::response::{IntoResponse, Response};
use colo_policy::Phase;
use http::{header, Method, StatusCode};

/// The answer to a request for one of the edge's own endpoints, or `None` when the request is
/// for an app.
pub(crate) fn answer(edge: &Edge, request: &http::request::Parts) -> Option<Response> {
    let path = request.uri.path();
    if let Some(check) = &edge.config.admin_token {
        let admin = path == "/metrics" || path.starts_with("/colo/");
        let presented = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if admin && !presented.is_some_and(|p| (check.0)(p.trim())) {
            return Some(crate::EdgeError::AdminToken.into_response());
        }
    }
    Some(match (&request.method, path) {
        (&Method::GET, "/health") => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response(),
        (&Method::GET, "/metrics") => {
            edge.metrics.connections.set(edge.connections.held() as i64);
            ([("content-type", "text/plain; version=0.0.4")], edge.metrics.encode()).into_response()
        }
        (&Method::GET, "/v1/models") => list_models(edge, &request.headers),
        (&Method::GET, p) if p.starts_with("/v1/models/") => one_model(edge, &request.headers, &p["/v1/models/".len()..]),
        (&Method::GET, "/colo/rtt") => rtt_table(edge),
        (&Method::GET, "/colo/routes") => route_summary(edge),
        (&Method::GET, "/colo/load") => axum::Json(serde_json::json!({"machines": edge.load_table()})).into_response(),
        _ => return None,
    })
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
                "starting": count_phase(routes, Phase::Starting),
                "stopped": count_phase(routes, Phase::Stopped),
                "waking": edge.starting(name).unwrap_or(0),
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

/// The apps a caller may see: those without keys, and those its bearer key is for.
fn visible(table: &crate::routes::RouteTable, headers: &http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = table.app_names().into_iter().map(String::from).collect();
    if let Some(key) = crate::keys::bearer(headers) {
        names.extend(crate::keys::apps_of_key(table, key).into_iter().map(String::from));
    }
    names.sort();
    names.dedup();
    names
}

fn model_object(name: &str) -> serde_json::Value {
    serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "colo"})
}

/// The apps, in the shape of OpenAI's model list, so clients can discover them: the open ones,
/// and with a key the apps it is for.
fn list_models(edge: &Edge, headers: &http::HeaderMap) -> Response {
    let table = edge.routes.borrow().clone();
    let data: Vec<_> = visible(&table, headers).iter().map(|name| model_object(name)).collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`: the app as OpenAI describes a model, or 404 when the caller may not
/// see it (it does not exist, or it has keys and the caller's is not one).
fn one_model(edge: &Edge, headers: &http::HeaderMap, id: &str) -> Response {
    let table = edge.routes.borrow().clone();
    if visible(&table, headers).iter().any(|name| name == id) {
        return axum::Json(model_object(id)).into_response();
    }
    crate::EdgeError::UnknownApp {
        app: id.to_string(),
        apps: table.app_names().into_iter().map(String::from).collect(),
    }
    .into_response()
}
