//! The HTTP server: binding and readiness as each real engine does them, its routes, and the
//! engine's death.

use crate::config::{Config, Flavor};
use crate::engine::{Engine, Phase};
use crate::error::{ApiError, StandinError};
use crate::{lifecycle, metrics, openai};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// How long a dying server waits for its connections to finish before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A stand-in whose port is taken but which does not yet serve.
pub struct Bound {
    engine: Arc<Engine>,
    socket: Socket,
    addr: SocketAddr,
}

/// vLLM's port is bound and not listened on until it is ready; the others listen from the start.
enum Socket {
    Bound(TcpSocket),
    Listening(TcpListener),
}

/// How a stand-in's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The engine died (`--die-after`): the process should exit with status 1.
    Died,
}

/// Takes the port. vLLM does the same before it loads, so the port is held but not listened on:
/// connections to it are refused until the engine is ready.
pub async fn bind(config: Config) -> Result<Bound, StandinError> {
    let host = config.host.as_str();
    let mut addrs = tokio::net::lookup_host((host, config.port))
        .await
        .map_err(|source| StandinError::Resolve {
            host: host.to_string(),
            source,
        })?;
    let addr = addrs.next().ok_or_else(|| StandinError::NoAddress { host: host.to_string() })?;
    drop(addrs);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|source| StandinError::Bind { addr, source })?;
    socket.set_reuseaddr(true).map_err(|source| StandinError::Bind { addr, source })?;
    socket.bind(addr).map_err(|source| StandinError::Bind { addr, source })?;
    let addr = socket.local_addr().map_err(|source| StandinError::Bind { addr, source })?;
    let socket = match config.flavor {
        Flavor::Vllm => Socket::Bound(socket),
        Flavor::Sglang | Flavor::Llama => Socket::Listening(listen(socket, addr)?),
    };
    Ok(Bound {
        engine: Engine::new(config),
        socket,
        addr,
    })
}

fn listen(socket: TcpSocket, addr: SocketAddr) -> Result<TcpListener, StandinError> {
    socket.listen(1024).map_err(|source| StandinError::Listen { addr, source })
}

// === impl Bound ===

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loads, serves, and returns when the engine has died. Readiness follows the flavour: vLLM
    /// listens only once loaded; SGLang and llama-server listen at once and answer `/health` 503
    /// until loaded.
    pub async fn run(self) -> Result<Ended, StandinError> {
        let Bound { engine, socket, addr } = self;
        let config = &engine.config;
        let listener = match socket {
            Socket::Bound(socket) => {
                tokio::time::sleep(config.load).await;
                engine.replace_if(|p| *p == Phase::Loading, Phase::Ready);
                listen(socket, addr)?
            }
            Socket::Listening(listener) => {
                let loading = engine.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(loading.config.load).await;
                    loading.replace_if(|p| *p == Phase::Loading, Phase::Ready);
                });
                listener
            }
        };
        tracing::info!(
            "{} stand-in serving {} on http://{addr}",
            config.flavor.as_str(),
            config.served_name
        );
        if let Some(idle) = config.idle_sleep {
            tokio::spawn(engine.clone().sleep_when_idle(idle));
        }
        let linger = config.die_linger;
        let died = |engine: &Arc<Engine>, after: Duration| {
            let mut phase = engine.watch_phase();
            async move {
                let _ = phase.wait_for(|p| *p == Phase::Dead).await;
                tokio::time::sleep(after).await;
            }
        };
        // A dead engine keeps answering for its linger (health 503), then stops taking connections
        // and lets the answers in flight (the last one it took among them) finish, for a bounded time.
        let server = axum::serve(listener, router(engine.clone())).with_graceful_shutdown(died(&engine, linger));
        tokio::select! {
            served = server.into_future() => served.map_err(StandinError::Serve)?,
            () = died(&engine, linger + SHUTDOWN_GRACE) => {}
        }
        Ok(Ended::Died)
    }
}

/// The routes of `engine`'s flavour, with the optional ones its flags turn on.
pub fn router(engine: Arc<Engine>) -> Router {
    let config = &engine.config;
    let mut app = Router::new()
        .route("/v1/models", get(models))
        .route(
            "/v1/completions",
            post(|State(e): State<Arc<Engine>>, body: Bytes| openai::generate(e, body, false)),
        )
        .route(
            "/v1/chat/completions",
            post(|State(e): State<Arc<Engine>>, body: Bytes| openai::generate(e, body, true)),
        )
        .route("/health", get(health));
    if config.metrics {
        app = app.route("/metrics", get(metrics_text));
    }
    app = match config.flavor {
        Flavor::Vllm => {
            let app = app.route("/version", get(|| async { Json(json!({"version": "0.0.0+colo-standin"})) }));
            if config.dev_mode {
                lifecycle::vllm_dev_routes(app)
            } else {
                app
            }
        }
        Flavor::Sglang => lifecycle::sglang_routes(app.route("/health_generate", get(health))),
        Flavor::Llama => {
            let app = app.route("/v1/health", get(health)).route("/props", get(lifecycle::llama_props));
            if config.metrics {
                app
            } else {
                app.route("/metrics", get(|| async { llama_no_metrics() }))
            }
        }
    };
    let flavor = config.flavor;
    let mut app = app.fallback(move || async move { ApiError::NotFound("Not Found".to_string()).respond(flavor) });
    if flavor == Flavor::Llama {
        app = app.layer(middleware::from_fn_with_state(engine.clone(), llama_loading));
    }
    app.with_state(engine)
}

fn llama_no_metrics() -> Response {
    ApiError::NotImplemented("This server does not support metrics endpoint. Start it with `--metrics`".to_string()).respond(Flavor::Llama)
}

/// llama-server answers every request, `/health` included, with 503 "Loading model" until loaded.
async fn llama_loading(State(engine): State<Arc<Engine>>, request: Request, next: Next) -> Response {
    if engine.phase() == Phase::Loading {
        return ApiError::Unavailable("Loading model".to_string()).respond(Flavor::Llama);
    }
    next.run(request).await
}

/// `GET /health`: vLLM 200 with no body (503 once its engine is dead); SGLang the same, 503 while
/// starting; llama-server `{"status":"ok"}` (its loading answer is the middleware's). An asleep
/// engine is healthy, and asking does not wake it.
async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let phase = engine.phase();
    let flavor = engine.config.flavor;
    match (flavor, phase) {
        (_, Phase::Dead) | (Flavor::Sglang, Phase::Loading) => match flavor {
            Flavor::Llama => ApiError::Unavailable("the engine died".to_string()).respond(flavor),
            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        },
        (Flavor::Llama, _) => Json(json!({"status": "ok"})).into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

async fn models(State(engine): State<Arc<Engine>>) -> Response {
    let c = &engine.config;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let owner = match c.flavor {
        Flavor::Vllm => "vllm",
        Flavor::Sglang => "sglang",
        Flavor::Llama => "llamacpp",
    };
    let model = json!({"id": c.served_name, "object": "model", "created": created, "owned_by": owner,
        "root": c.model_path, "parent": null, "max_model_len": c.context});
    let mut body = json!({"object": "list", "data": [model]});
    if c.flavor == Flavor::Llama {
        body["models"] = json!([{"name": c.served_name, "model": c.served_name, "type": "model"}]);
    }
    Json(body).into_response()
}

async fn metrics_text(State(engine): State<Arc<Engine>>) -> Response {
    let text = metrics::render(&engine.config, &engine.snapshot());
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
