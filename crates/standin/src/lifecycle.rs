//! Sleep and wake as each engine offers them: vLLM's development endpoints (`/sleep`,
//! `/wake_up`, `/is_sleeping`), SGLang's release and resume of memory occupation, and
//! llama-server's `/props`, which reports the idle sleep that `--sleep-idle-seconds` turns on.

use crate::config::Flavor;
use crate::engine::{Engine, Phase, Sleep};
use crate::error::ApiError;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

type App = Router<Arc<Engine>>;

/// vLLM's development endpoints, present only in its dev mode.
pub fn vllm_dev_routes(app: App) -> App {
    app.route("/sleep", post(vllm_sleep))
        .route("/wake_up", post(vllm_wake_up))
        .route("/is_sleeping", get(is_sleeping))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/collective_rpc", post(|| async { Json(json!({"results": [null]})) }))
}

pub fn sglang_routes(app: App) -> App {
    app.route("/release_memory_occupation", post(sglang_release))
        .route("/resume_memory_occupation", post(sglang_resume))
        .route("/get_model_info", get(sglang_model_info))
}

/// `key=value` pairs of a query string, keys repeated as given (`tags=a&tags=b`).
fn query_pairs(query: Option<&str>) -> Vec<(&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn asleep(level: u8) -> Phase {
    Phase::Asleep(Sleep {
        level,
        weights: true,
        kv_cache: true,
    })
}

/// `POST /sleep?level=1|2[&mode=abort|wait]`. The default mode aborts the requests in flight; `wait`
/// lets them finish first. Either way the prefix cache is dropped.
async fn vllm_sleep(State(engine): State<Arc<Engine>>, RawQuery(query): RawQuery) -> Response {
    let flavor = engine.config.flavor;
    if !engine.config.sleep_mode {
        return ApiError::Internal("Sleep mode is not enabled; start the server with --enable-sleep-mode".to_string()).respond(flavor);
    }
    let mut level = 1;
    let mut wait = false;
    for (key, value) in query_pairs(query.as_deref()) {
        match (key, value) {
            ("level", "1") => level = 1,
            ("level", "2") => level = 2,
            ("level", other) => return ApiError::bad("level", format!("'level' must be 1 or 2, got {other:?}")).respond(flavor),
            ("mode", "abort") => wait = false,
            ("mode", "wait") => wait = true,
            ("mode", other) => return ApiError::bad("mode", format!("'mode' must be abort or wait, got {other:?}")).respond(flavor),
            _ => {}
        }
    }
    match engine.phase() {
        Phase::Dead => return ApiError::Internal("EngineDeadError: the engine died".to_string()).respond(flavor),
        Phase::Asleep(_) => return StatusCode::OK.into_response(),
        _ => {}
    }
    if wait {
        engine.drained().await;
    }
    if engine.replace_if(|p| matches!(p, Phase::Ready | Phase::Waking), asleep(level)) {
        engine.abort_all("aborted: the engine was put to sleep");
        engine.drop_prefix_cache();
    }
    StatusCode::OK.into_response()
}

/// `POST /wake_up[?tags=weights|kv_cache]`: answers once awake. Waking the weights takes
/// `--wake-ms`, plus `--load-ms` after level 2 (which discarded them and reads them again); waking
/// the KV cache is immediate. With no tags, both.
async fn vllm_wake_up(State(engine): State<Arc<Engine>>, RawQuery(query): RawQuery) -> Response {
    let flavor = engine.config.flavor;
    let mut want_weights = false;
    let mut want_kv = false;
    for (key, value) in query_pairs(query.as_deref()) {
        match (key, value) {
            ("tags", "weights") => want_weights = true,
            ("tags", "kv_cache") => want_kv = true,
            ("tags", other) => return ApiError::bad("tags", format!("'tags' must be weights or kv_cache, got {other:?}")).respond(flavor),
            _ => {}
        }
    }
    if !want_weights && !want_kv {
        (want_weights, want_kv) = (true, true);
    }
    let sleep = match engine.phase() {
        Phase::Asleep(sleep) => sleep,
        Phase::Waking => {
            let mut phase = engine.watch_phase();
            let _ = phase.wait_for(|p| *p != Phase::Waking).await;
            return StatusCode::OK.into_response();
        }
        Phase::Dead => return ApiError::Internal("EngineDeadError: the engine died".to_string()).respond(flavor),
        Phase::Ready | Phase::Loading => return StatusCode::OK.into_response(),
    };
    let wake_weights = want_weights && sleep.weights;
    let cost = if !wake_weights {
        Duration::ZERO
    } else if sleep.level >= 2 {
        engine.config.wake + engine.config.load
    } else {
        engine.config.wake
    };
    let rest = Sleep {
        weights: sleep.weights && !want_weights,
        kv_cache: sleep.kv_cache && !want_kv,
        ..sleep
    };
    if rest.weights || rest.kv_cache {
        // A part wakes; the engine sleeps on until the other does.
        tokio::time::sleep(cost).await;
        engine.replace_if(|p| *p == Phase::Asleep(sleep), Phase::Asleep(rest));
    } else if engine.replace_if(|p| *p == Phase::Asleep(sleep), Phase::Waking) {
        tokio::time::sleep(cost).await;
        engine.replace_if(|p| *p == Phase::Waking, Phase::Ready);
    }
    StatusCode::OK.into_response()
}

fn sleeping(engine: &Engine) -> bool {
    matches!(engine.phase(), Phase::Asleep(_) | Phase::Waking)
}

async fn is_sleeping(State(engine): State<Arc<Engine>>) -> Response {
    Json(json!({"is_sleeping": sleeping(&engine)})).into_response()
}

async fn reset_prefix_cache(State(engine): State<Arc<Engine>>) -> Response {
    engine.drop_prefix_cache();
    StatusCode::OK.into_response()
}

/// `POST /release_memory_occupation`: SGLang lets go of weights and KV cache. It needs an idle
/// engine, as the real one asserts.
async fn sglang_release(State(engine): State<Arc<Engine>>) -> Response {
    let flavor = Flavor::Sglang;
    match engine.phase() {
        Phase::Asleep(_) => return StatusCode::OK.into_response(),
        Phase::Ready => {}
        other => return ApiError::Unavailable(format!("cannot release memory while {other:?}")).respond(flavor),
    }
    if engine.busy() {
        return ApiError::bad(
            "release_memory_occupation",
            "release_memory_occupation needs an idle engine; requests are in flight",
        )
        .respond(flavor);
    }
    if engine.replace_if(|p| *p == Phase::Ready, asleep(1)) {
        // A request that arrived between the check above and now is failed, not left running on
        // memory that was let go.
        engine.abort_all("aborted: memory occupation was released");
        engine.drop_prefix_cache();
    }
    StatusCode::OK.into_response()
}

/// `POST /resume_memory_occupation`: takes `--wake-ms`, then answers.
async fn sglang_resume(State(engine): State<Arc<Engine>>) -> Response {
    if engine.replace_if(|p| matches!(p, Phase::Asleep(_)), Phase::Waking) {
        tokio::time::sleep(engine.config.wake).await;
        engine.replace_if(|p| *p == Phase::Waking, Phase::Ready);
    } else if engine.phase() == Phase::Waking {
        let mut phase = engine.watch_phase();
        let _ = phase.wait_for(|p| *p != Phase::Waking).await;
    }
    StatusCode::OK.into_response()
}

async fn sglang_model_info(State(engine): State<Arc<Engine>>) -> Response {
    Json(json!({"model_path": engine.config.model_path, "is_generation": true})).into_response()
}

/// llama-server's `GET /props`; it reports `is_sleeping` and, like `/health`, does not wake the model.
pub async fn llama_props(State(engine): State<Arc<Engine>>) -> Response {
    let c = &engine.config;
    Json(json!({
        "default_generation_settings": {"n_ctx": c.context, "params": {"n_predict": -1}},
        "total_slots": c.max_running,
        "model_alias": c.served_name,
        "model_path": c.model_path,
        "is_sleeping": sleeping(&engine),
        "build_info": "colo-standin",
    }))
    .into_response()
}
