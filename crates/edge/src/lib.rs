//! The edge: one HTTP port in front of every app. It finds the app of each request, asks the
//! policy crate which machine should answer, proxies the request there and streams the answer
//! back. It decides nothing itself: routing, holds, wakes, autostop, retries, RTT and rate
//! limits are `colo-policy`'s; the edge turns sockets and timers into its events and carries
//! out its answers.

#![forbid(unsafe_code)]

mod admin;
mod body;
mod edge;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gossip;
mod handle;
mod headers;
pub mod holders;
mod keys;
mod limits;
mod load;
mod machines;
mod metrics;
mod pick;
mod probe;
mod reports;
mod request;
mod respond;
pub mod routes;
mod rtt;
mod scaling;
mod scrape;
mod send;
pub mod serve;
mod server;
mod sse;
pub mod tls;
mod upstream;

pub use edge::Edge;
pub use error::EdgeError;
pub use handle::{handle, router};
pub use limits::Limits;
pub use load::{Load, SharedLoad};
pub use machines::{Machines, Refused};
pub use routes::{follow_state, RouteTable};
pub use server::serve_connection;

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Apps are also reachable as `<app>.<domain>` through the Host header.
    pub domain: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request may wait for a machine of its app to start.
    pub hold_timeout: Duration,
    /// How long connecting to a machine may take before it counts as down.
    pub connect_timeout: Duration,
    /// The edge's own region: machines here are preferred.
    pub region: String,
    /// Soft and hard limits per machine, load-report freshness, affinity slack.
    pub route: colo_policy::RouteParams,
    /// Requests held per app at most; more get 503 with Retry-After at once.
    pub max_held: u32,
    /// A streaming request held this long gets its stream with an SSE comment now and every
    /// interval after, until a machine answers; zero: streaming requests wait like others.
    pub sse_keepalive: Duration,
    /// Added on the way to machines of other regions: a fleet file's simulated distance.
    pub inter_region_delay: Duration,
    /// When set, `/metrics` and `/colo/*` ask for a bearer token this accepts (the cluster
    /// token of a multi-host colo).
    pub admin_token: Option<AdminCheck>,
    /// Timeouts and connection caps against bad clients and stuck machines.
    pub limits: Limits,
    /// The key each new connection to a machine opens with (a multi-host colo's machines sit
    /// behind their agents' forwarders, which admit only it); `None` in `colo up`.
    pub machine_key: Option<String>,
    /// When set, the edge's address speaks TLS only (HTTP/1.1 and HTTP/2 through ALPN).
    pub tls: Option<std::sync::Arc<tls::EdgeTls>>,
}

/// Checks a presented bearer token for the edge's admin endpoints.
#[derive(Clone)]
pub struct AdminCheck(pub std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for AdminCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCheck")
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            max_body: 10 * 1024 * 1024,
            hold_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(1),
            region: "local".into(),
            route: colo_policy::RouteParams {
                soft_limit: 32,
                hard_limit: 64,
                // Engines' metrics are read every 200 ms: a report 2 s old says nothing of now
                // (the Gateway API inference extension's staleness threshold too).
                report_fresh_ms: 1_000,
                report_stale_ms: 2_000,
                ..Default::default()
            },
            max_held: 4096,
            sse_keepalive: Duration::from_secs(5),
            inter_region_delay: Duration::ZERO,
            admin_token: None,
            limits: Limits::default(),
            machine_key: None,
            tls: None,
        }
    }
}
