//! Load-report gossip (`colo_edge::gossip`) over an in-memory bus: an edge publishes the
//! engine reports it received on its region's subject, applies other regions' reports to the
//! machines of its table, and ignores its own subject.

use axum::routing::post;
use bytes::Bytes;
use colo_edge::gossip::{self, Bus, Message};
use colo_edge::routes::Endpoint;
use colo_edge::{router, Edge, EdgeConfig, RouteTable, SharedLoad};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Every subscriber sees every message whose subject matches its pattern (`*`: one token).
struct MemoryBus(broadcast::Sender<Message>);

impl MemoryBus {
    fn new() -> Arc<Self> {
        Arc::new(MemoryBus(broadcast::channel(64).0))
    }
}

fn matches(pattern: &str, subject: &str) -> bool {
    let (pattern, subject): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), subject.split('.').collect());
    pattern.len() == subject.len() && pattern.iter().zip(&subject).all(|(p, s)| *p == "*" || p == s)
}

impl Bus for MemoryBus {
    type Error = Infallible;

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), Infallible> {
        let _ = self.0.send(Message {
            subject: subject.to_string(),
            payload,
        });
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<BoxStream<'static, Message>, Infallible> {
        let (receiver, pattern) = (self.0.subscribe(), pattern.to_string());
        let messages = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(message) => return Some((message, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(messages.filter(move |m| std::future::ready(matches(&pattern, &m.subject))).boxed())
    }
}

/// An edge of `region` whose table has machines `m1` (at `addr`) and `m2`, served over HTTP;
/// and the sender of its table.
async fn edge(region: &str, addr: &str) -> (Arc<Edge>, String, watch::Sender<Arc<RouteTable>>) {
    let table = RouteTable::single(
        "app",
        vec![
            Endpoint::new("m1", addr, region).unwrap(),
            Endpoint::new("m2", "127.0.0.1:9", region).unwrap(),
        ],
    );
    let (tx, rx) = watch::channel(Arc::new(table));
    let config = EdgeConfig {
        region: region.into(),
        ..EdgeConfig::default()
    };
    let edge = Edge::new(config, rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(edge.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (edge, url, tx)
}

/// `/colo/load`'s report of `machine`, once it has one, or `None` after a second.
async fn report_of(url: &str, machine: &str) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let load: serde_json::Value = reqwest::get(format!("{url}/colo/load")).await.unwrap().json().await.unwrap();
        let row = load["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == machine)
            .cloned();
        if let Some(report) = row.map(|r| r["report"].clone()).filter(|r| !r.is_null()) {
            return Some(report);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn reports(machine: &str, running: u32) -> Bytes {
    let report = SharedLoad {
        machine: machine.into(),
        running,
        waiting: 1,
        kv_permille: Some(250),
        age_ms: 0,
    };
    serde_json::to_vec(&vec![report]).unwrap().into()
}

#[tokio::test]
async fn applies_other_regions_reports_and_skips_its_own_subject() {
    let bus = MemoryBus::new();
    let (edge, url, _routes) = edge("ord", "127.0.0.1:9").await;
    gossip::share_load(edge, bus.clone(), "ord");
    // Let the subscriber task subscribe before anything is published.
    tokio::time::sleep(Duration::from_millis(50)).await;

    bus.publish(&gossip::subject("ams"), reports("m1", 7)).await.unwrap();
    bus.publish(&gossip::subject("ord"), reports("m2", 9)).await.unwrap();
    bus.publish(&gossip::subject("lhr"), Bytes::from_static(b"not json")).await.unwrap();

    let m1 = report_of(&url, "m1").await.expect("the relayed report never arrived");
    assert_eq!((m1["running"].as_u64(), m1["relayed"].as_bool()), (Some(7), Some(true)), "{m1}");
    assert_eq!(report_of(&url, "m2").await, None, "a report on the edge's own subject was applied");
}

#[tokio::test]
async fn publishes_the_reports_its_machines_sent_on_its_region_subject() {
    let upstream = axum::Router::new().route("/v1/embeddings", post(|| async { ([("colo-load", "running=3;waiting=1")], "ok") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let machine = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });

    let bus = MemoryBus::new();
    let mut heard = bus.subscribe("colo.load.*").await.unwrap();
    let (edge, url, _routes) = edge("ord", &machine).await;
    gossip::share_load(edge, bus.clone(), "ord");
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/embeddings"))
        .body(r#"{"model":"app","input":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.headers().get("colo-load").is_none(),
        "the engine's load report is kept from callers"
    );

    let message = tokio::time::timeout(gossip::SHARE_EVERY * 8, heard.next())
        .await
        .expect("no report published")
        .unwrap();
    assert_eq!(message.subject, "colo.load.ord");
    let shared: Vec<SharedLoad> = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!((shared[0].machine.as_str(), shared[0].running, shared[0].waiting), ("m1", 3, 1));
}
