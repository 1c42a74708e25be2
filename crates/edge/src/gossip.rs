//! Load-report gossip between the edges of different regions: each edge publishes the engine
//! reports it received itself on `colo.load.<region>` every [`SHARE_EVERY`], and applies the
//! reports the other regions' edges publish, so that every edge weighs a machine's load with
//! what the machine told any edge. The messages go over a [`Bus`], which the process supplies
//! (`colo edge` gives NATS); the edge knows only subjects and bytes.

use crate::edge::Edge;
use crate::load::SharedLoad;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often an edge publishes the reports it saw: at most this many messages per second per
/// edge, whatever the traffic.
pub const SHARE_EVERY: Duration = Duration::from_millis(250);
/// Reports in one message at most.
pub const SHARE_MAX: usize = 2000;
/// How long the subscriber waits before subscribing again after the bus failed or ended it.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);
/// Subjects are `colo.load.<region>`; this matches every region's.
const ALL_REGIONS: &str = "colo.load.*";

/// One message on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
}

/// Plain publish/subscribe on dot-separated subjects, where `*` in a subscription matches one
/// token (NATS's syntax). Delivery is best effort: the next report supersedes a lost one.
pub trait Bus: Send + Sync + 'static {
    /// Why a publish or a subscription failed (logged, then retried).
    type Error: std::fmt::Display + Send;

    /// Sends `payload` on `subject`.
    fn publish(&self, subject: &str, payload: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Messages published on subjects matching `subject` from when this returns; the stream
    /// ends when the subscription does.
    fn subscribe(&self, subject: &str) -> impl Future<Output = Result<BoxStream<'static, Message>, Self::Error>> + Send;
}

/// The subject `region`'s edge publishes its reports on.
pub fn subject(region: &str) -> String {
    format!("colo.load.{region}")
}

/// Starts the two gossip tasks of `edge`, which serves `region`: publishing its own fresh
/// reports, and applying those of the other regions. Both retry while the bus is away.
pub fn share_load<B: Bus>(edge: Arc<Edge>, bus: Arc<B>, region: &str) {
    let own = subject(region);
    tokio::spawn(publish_reports(edge.clone(), bus.clone(), own.clone()));
    tokio::spawn(apply_reports(edge, bus, own));
}

/// How often an edge publishes its traffic figures for the dashboard.
pub const TRAFFIC_EVERY: Duration = Duration::from_secs(2);
/// Subjects are `colo.traffic.<region>.<edge>`; this matches every edge's.
pub const ALL_TRAFFIC: &str = "colo.traffic.*.*";

/// Publishes `edge`'s traffic figures every [`TRAFFIC_EVERY`] on `colo.traffic.<region>.<id>`,
/// `id` naming this edge among its region's, for whoever shows them (control's dashboard).
pub fn share_traffic<B: Bus>(edge: Arc<Edge>, bus: Arc<B>, region: &str, id: &str) {
    let subject = format!("colo.traffic.{region}.{id}");
    tokio::spawn(publish_every(bus, subject, TRAFFIC_EVERY, "traffic figures", move || {
        Some(edge.traffic())
    }));
}

/// Calls `note(subject, figures)` with every edge's traffic figures as they arrive, for as long
/// as the process runs (subscribing again after the bus fails).
pub fn collect_traffic<B: Bus>(bus: Arc<B>, note: impl Fn(String, colo_policy::EdgeTraffic) + Send + 'static) {
    tokio::spawn(receive(bus, ALL_TRAFFIC, "traffic figures", note));
}

async fn publish_reports<B: Bus>(edge: Arc<Edge>, bus: Arc<B>, subject: String) {
    publish_every(bus, subject, SHARE_EVERY, "load reports", move || {
        let reports = edge.fresh_reports(SHARE_MAX);
        (!reports.is_empty()).then_some(reports)
    })
    .await
}

async fn apply_reports<B: Bus>(edge: Arc<Edge>, bus: Arc<B>, own: String) {
    receive(bus, ALL_REGIONS, "load reports", move |subject, reports: Vec<SharedLoad>| {
        // This edge's own reports come back too; it knows them already.
        if subject != own {
            reports.iter().for_each(|r| edge.apply_shared(r));
        }
    })
    .await
}

/// Every `every`, publishes what `make` gives as JSON on `subject` (nothing when it gives
/// `None`); a failure is logged and the next turn tries again.
async fn publish_every<B: Bus, T: serde::Serialize>(
    bus: Arc<B>,
    subject: String,
    every: Duration,
    what: &'static str,
    mut make: impl FnMut() -> Option<T>,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(value) = make() else { continue };
        match serde_json::to_vec(&value) {
            Ok(payload) => {
                if let Err(e) = bus.publish(&subject, payload.into()).await {
                    tracing::debug!(%subject, error = %e, "publishing {what}");
                }
            }
            Err(e) => tracing::debug!(error = %e, "encoding {what}"),
        }
    }
}

/// Hands every message on subjects matching `subject`, read as JSON, to `handle` with its
/// subject, for as long as the process runs: an unreadable one is logged and skipped, and the
/// subscription is made again after the bus fails or ends it.
async fn receive<B: Bus, T: serde::de::DeserializeOwned>(
    bus: Arc<B>,
    subject: &'static str,
    what: &'static str,
    handle: impl Fn(String, T),
) {
    loop {
        match bus.subscribe(subject).await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    match serde_json::from_slice(&message.payload) {
                        Ok(value) => handle(message.subject, value),
                        Err(e) => tracing::debug!(subject = %message.subject, error = %e, "unreadable {what}"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "subscribing to {what}"),
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}
