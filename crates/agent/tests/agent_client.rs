//! `AgentClient` against the agent's real API on a loopback port: a machine created, stopped,
//! started and destroyed with the request types the API reads, and each kind of failure told
//! apart (an error answer with its status, an agent that does not answer). The engine is a
//! stand-in that exits at once; only the API's answers are checked.

use colo_agent::api::CreateMachine;
use colo_agent::client::{AgentClient, ClientError};
use colo_agent::{Agent, AgentConfig, EngineCommand};
use colo_core::{Device, MachineState};
use colo_state::{Embedded, StateStore};
use colo_store::{no_progress, push_dir, HostCache, PushOptions, Store};
use std::sync::Arc;
use std::time::Duration;

/// An agent for host `h1` with two CPU slots, its API served on loopback, and a store holding
/// model `tiny` (a config.json is all a machine record needs); returns the API's URL.
async fn serve_agent(root: &std::path::Path) -> String {
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    let store = Store::open(root.join("store").to_str().unwrap()).unwrap();
    push_dir(&store, &model, "tiny", &PushOptions::default(), no_progress())
        .await
        .unwrap();
    let state: Arc<dyn StateStore> = Arc::new(Embedded::open(&root.join("state.redb")).unwrap());
    let config = AgentConfig {
        host: "h1".into(),
        region: "fra".into(),
        data_dir: root.to_path_buf(),
        engine: EngineCommand {
            program: "/bin/false".into(),
            args: Vec::new(),
            load_while_pulling: false,
        },
        start_timeout: Duration::from_secs(1),
        stop_grace: Duration::ZERO,
        health_interval: Duration::from_secs(1),
        engine_host: std::net::Ipv4Addr::LOCALHOST.into(),
        forward_key: None,
    };
    let devices = vec![Device::Cpu { slot: 0 }, Device::Cpu { slot: 1 }];
    let agent = Agent::new(config, state, store, HostCache::new(root.join("cache")), devices);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, colo_agent::api::router(vec![agent])).await });
    url
}

#[tokio::test]
async fn drives_a_machine_through_the_agents_api() {
    let root = tempfile::tempdir().unwrap();
    let url = serve_agent(root.path()).await;
    let client = AgentClient::new(&url, "unused".into(), reqwest::Client::new());

    let request = CreateMachine {
        model: "tiny".into(),
        ..Default::default()
    };
    let machine = client.create("chat", &request).await.unwrap();
    assert_eq!((machine.app.as_str(), machine.host.as_str()), ("chat", "h1"));
    assert_eq!(machine.desired, MachineState::Started);

    let stopped = client.stop("chat", &machine.id).await.unwrap();
    assert_eq!(stopped.desired, MachineState::Stopped);
    let started = client.start("chat", &machine.id).await.unwrap();
    assert_eq!(started.desired, MachineState::Started);
    let destroyed = client.destroy("chat", &machine.id).await.unwrap();
    assert_eq!(destroyed.desired, MachineState::Destroyed);

    // An error answer keeps the agent's status and body.
    match client.start("chat", "m-none").await {
        Err(ClientError::Refused { status, body, url }) => {
            assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
            assert!(body.contains("m-none"), "{body}");
            assert!(
                url.ends_with("/v1/apps/chat/machines/m-none/start") && !url.contains("//v1"),
                "{url}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let unknown = CreateMachine {
        model: "absent".into(),
        ..Default::default()
    };
    assert!(matches!(
        client.create("chat", &unknown).await,
        Err(ClientError::Refused { status, .. }) if status == reqwest::StatusCode::NOT_FOUND
    ));

    // A port nobody listens on.
    let gone = AgentClient::new("http://127.0.0.1:9", String::new(), reqwest::Client::new());
    assert!(matches!(gone.destroy("chat", "m-1").await, Err(ClientError::Unreachable { .. })));
}

#[test]
fn create_requests_leave_out_what_they_do_not_set() {
    let request = CreateMachine {
        model: "tiny".into(),
        revision: Some("r1".into()),
        ..Default::default()
    };
    let json = serde_json::to_string(&request).unwrap();
    assert_eq!(json, r#"{"model":"tiny","revision":"r1"}"#);
    let back: CreateMachine = serde_json::from_str(&json).unwrap();
    assert_eq!(back, request);
    // The API refuses fields it does not know, so a typo is an error, not a default.
    assert!(serde_json::from_str::<CreateMachine>(r#"{"model":"tiny","gpus":"l40s"}"#).is_err());
}
