//! Sending one request until a machine answers: pick, send, and on failure or a `colo-replay`
//! answer send again where `colo_policy::Attempts` allows.

use crate::edge::{lock, Edge};
use crate::headers::{is_hop_by_hop, nominated, COLO_REPLAY};
use crate::metrics::RetryLabels;
use crate::respond::{is_event_stream, Answered, InFlight, TokenMeter};
use crate::routes::{machine_key, RouteTable};
use crate::upstream::{self, SendError};
use crate::EdgeError;
use bytes::Bytes;
use colo_policy::{idempotent, Attempts, PrefixKey, Replay, SendFailure};
use http::{header, HeaderMap, Method};
use std::sync::Arc;

/// Answers of known length up to this size are read whole before their head goes to the
/// client (larger ones stream).
const WHOLE_ANSWER: u64 = 4 * 1024 * 1024;

/// A request as the edge keeps it while it may be sent more than once (retries, replays).
pub(crate) struct Outgoing {
    /// Wall-clock ms when the request arrived: a machine whose start was asked for after this
    /// woke for it.
    pub arrived_ms: u64,
    /// The same on the edge's monotonic clock: time to the first token counts from here.
    pub arrived: tokio::time::Instant,
    /// A completion (chat or text): its tokens are counted on the way back.
    pub llm: bool,
    pub app: String,
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The prompt's block keys for the prefix index; empty when it has no prompt.
    pub prefix: Vec<PrefixKey>,
}

// === impl Outgoing ===

impl Outgoing {
    /// Checks an OpenAI request's body (types, ranges, and parameters the app's engine cannot
    /// honour) before it is held: the machine it would wake would refuse it anyway.
    fn check(&self, routes: &crate::routes::AppRoutes) -> Result<(), EdgeError> {
        let Some(endpoint) = colo_core::openai::Endpoint::of_path(self.path.path()) else {
            return Ok(());
        };
        let engine = (!routes.own_engine).then_some(routes.engine);
        colo_core::openai::check(endpoint, &self.body, engine).map_err(EdgeError::BadParam)
    }
}

/// Picks a machine and sends the request, until a machine answers or the policy gives up.
/// `table`: the route table as the caller just read it, for the first pick.
pub(crate) async fn send(edge: &Arc<Edge>, out: &Outgoing, mut table: Option<Arc<RouteTable>>) -> Result<Answered, EdgeError> {
    let mut attempts = Attempts::new();
    let mut last_error: Option<EdgeError> = None;
    let nominated = nominated(&out.headers);
    loop {
        let endpoint = match edge
            .pick(
                &out.app,
                &out.headers,
                &attempts,
                &out.prefix,
                &|routes| out.check(routes),
                table.take(),
            )
            .await
        {
            Ok(endpoint) => endpoint,
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
            out.headers.iter().filter(|(name, _)| {
                !is_hop_by_hop(name) && *name != header::HOST && *name != header::CONTENT_LENGTH && !nominated.contains(name)
            }),
            &out.body,
        );
        let guard = InFlight::new(endpoint.clone(), edge);
        if endpoint.stopping() {
            // Autostop took the machine between the pick and now: pick again.
            drop(guard);
            continue;
        }
        if let Some(delay) = edge.link_delay(&endpoint.region) {
            tokio::time::sleep(delay).await;
        }
        let started = tokio::time::Instant::now();
        let head_timeout = edge.config.limits.upstream_head_timeout;
        let key = edge.config.machine_key.as_deref();
        let sent = upstream::send(
            &endpoint.addr,
            &wire,
            &out.method,
            edge.config.connect_timeout,
            head_timeout,
            key,
            started,
        )
        .await;
        let mut response = match sent {
            Ok(response) => response,
            // Not sent elsewhere: the machine may still be working on it.
            Err(SendError::HeadTimeout) => {
                return Err(EdgeError::UpstreamTimeout {
                    machine: endpoint.machine_id.clone(),
                    secs: head_timeout.as_secs_f64(),
                })
            }
            Err(e) => {
                let (failure, kind, reason) = match e {
                    SendError::Connect(reason) => (SendFailure::Connect, "connect", reason),
                    SendError::Sent(reason) => (SendFailure::AfterSend, "after_send", reason),
                    SendError::HeadTimeout => (SendFailure::AfterSend, "after_send", "no response head in time".into()),
                };
                let error = upstream_failed(reason);
                if attempts
                    .failed(&endpoint.machine_id, failure, idempotent(out.method.as_str()), &edge.retry)
                    .is_err()
                {
                    return Err(error);
                }
                tracing::info!(app = %out.app, machine = %endpoint.machine_id, %error, kind, "request failed; trying another machine");
                edge.metrics.retries.get_or_create(&RetryLabels { kind: kind.into() }).inc();
                last_error = Some(error);
                continue;
            }
        };
        edge.metrics.upstream_seconds.observe(started.elapsed().as_secs_f64());
        edge.record_report(&endpoint.load, response.headers());
        // A whole answer (not a stream) is read to its end before its status goes out: a
        // machine that fails part way then gets the client a clear 502, not a 200 cut short.
        let (is_stream, limit) = (is_event_stream(response.headers()), WHOLE_ANSWER.min(edge.config.max_body as u64));
        // (Checked first without a timer: usually the whole answer came with its head.)
        if !is_stream && !response.body().whole_or_streamed(limit) {
            match tokio::time::timeout(head_timeout, response.body_mut().read_whole(limit)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(upstream_failed(format!("failed part way through its answer: {e}"))),
                Err(_) => {
                    return Err(EdgeError::UpstreamTimeout {
                        machine: endpoint.machine_id.clone(),
                        secs: head_timeout.as_secs_f64(),
                    })
                }
            }
        }
        let Some(replay) = response.headers().get(COLO_REPLAY) else {
            return Ok(answered(edge, out, guard, response));
        };
        let replay = replay
            .to_str()
            .map_err(|_| "not text".to_string())
            .and_then(|value| Replay::parse(value).map_err(|e| e.to_string()))
            .map_err(|reason| upstream_failed(format!("bad colo-replay header: {reason}")))?;
        tracing::debug!(app = %out.app, machine = %endpoint.machine_id, ?replay, "replaying");
        attempts
            .replay(&endpoint.machine_id, replay, &edge.retry)
            .map_err(|give_up| upstream_failed(give_up.to_string()))?;
        edge.metrics.replays.inc();
    }
}

/// Records what an answer teaches (the prompt's machine, the cold start it waited for) and
/// keeps it counted in flight.
fn answered(edge: &Edge, out: &Outgoing, guard: InFlight, response: http::Response<upstream::Body>) -> Answered {
    let endpoint = guard.endpoint().clone();
    if !out.prefix.is_empty() {
        lock(&edge.prefixes).record(&out.prefix, machine_key(&endpoint.machine_id), edge.now_ms());
    }
    let woke = endpoint.cold_start.clone().filter(|c| c.requested_at_ms >= out.arrived_ms);
    if let Some(cold) = &woke {
        edge.observe_cold_start(&endpoint, cold);
    }
    let egress = endpoint.series(&edge.metrics, &out.app).egress.clone();
    let meter = out.llm.then(|| {
        let label = crate::metrics::AppLabel { app: out.app.clone() };
        TokenMeter::new(
            out.arrived,
            edge.metrics.first_token_seconds.get_or_create(&label).clone(),
            edge.metrics.output_tokens.get_or_create(&label).clone(),
        )
    });
    Answered {
        woke,
        endpoint,
        guard,
        response,
        meter,
        egress,
    }
}
