//! Deploys with a demand: control builds the planner's fleet from the live hosts' records (GPUs
//! declared as data, so this runs anywhere), places machines where `colo_policy::place` says,
//! leaves lost hosts out, moves machines off a host that is lost, and reports what it cannot
//! place. Control drives the agents over their real HTTP API on loopback, as `colo control`
//! does; the engine is a stand-in that never becomes healthy, since only placement is checked.

use colo_control::{Control, ControlError, DeployOptions};
use colo_core::{Demand, Device, HostRecord, Machine, MachineState, RegionDemand};
use colo_state::{Embedded, StateStore};
use colo_store::Store;
use std::path::Path;
use std::sync::Arc;

mod common;

fn l40s(n: u32) -> Vec<Device> {
    (0..n)
        .map(|index| Device::Gpu {
            index,
            name: "NVIDIA L40S".into(),
            memory_mib: 46068,
        })
        .collect()
}

/// Registers a host record as its agent's heartbeat would (an hour's lease).
async fn register(state: &Arc<dyn StateStore>, name: &str, region: &str, addr: &str, devices: Vec<Device>, lost: bool) {
    state
        .put_host(&HostRecord {
            name: name.into(),
            region: region.into(),
            addr: addr.into(),
            devices,
            cached_models: Vec::new(),
            heartbeat_ms: colo_core::unix_ms(),
            lease_ms: 3_600_000,
            lost,
        })
        .await
        .unwrap();
}

/// An agent in this process serving its machines API on a loopback port; returns its URL.
async fn agent(root: &Path, state: &Arc<dyn StateStore>, store: &Store, name: &str, region: &str, devices: Vec<Device>) -> String {
    let data_dir = root.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let agent = common::stand_in_agent(name, region, &data_dir, state, store, devices.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, colo_agent::api::router(vec![agent])).await });
    register(state, name, region, &addr, devices, false).await;
    addr
}

fn demand(rtt_limit_ms: f64, regions: &[&str]) -> Demand {
    Demand {
        rtt_limit_ms: Some(rtt_limit_ms),
        regions: regions
            .iter()
            .map(|r| RegionDemand {
                region: r.to_string(),
                requests_per_s: 2.0,
                prompt_tokens: 256,
                output_tokens: 64,
            })
            .collect(),
    }
}

fn deploying(demand: Demand) -> DeployOptions {
    DeployOptions {
        demand: Some(demand),
        ..Default::default()
    }
}

/// The app's machines that are not destroyed, as sorted `host:gpu_kind` strings.
async fn placed(state: &Arc<dyn StateStore>, app: &str) -> Vec<String> {
    let machines: Vec<Machine> = state.machines().await.unwrap();
    let mut out: Vec<String> = machines
        .iter()
        .filter(|m| m.app.as_str() == app && m.state != MachineState::Destroyed)
        .map(|m| format!("{}:{}", m.host, m.gpu_kind.as_deref().unwrap_or("-")))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_demand_places_machines_where_the_planner_says() {
    let root = tempfile::tempdir().unwrap();
    let store = common::push_tiny(root.path(), 2048).await;
    let state: Arc<dyn StateStore> = Arc::new(Embedded::open(&root.path().join("state.redb")).unwrap());
    agent(root.path(), &state, &store, "ord-1", "ord", l40s(2)).await;
    let ams_1 = agent(root.path(), &state, &store, "ams-1", "ams", l40s(1)).await;
    agent(root.path(), &state, &store, "ams-2", "ams", l40s(1)).await;
    // A lost host with the most GPUs, named to come first: placement must not use it.
    register(&state, "ord-0", "ord", "http://127.0.0.1:9", l40s(8), true).await;
    // And a host whose lease ran out without control marking it yet.
    state
        .put_host(&HostRecord {
            name: "ord-00".into(),
            region: "ord".into(),
            addr: "http://127.0.0.1:9".into(),
            devices: l40s(8),
            cached_models: Vec::new(),
            heartbeat_ms: 1,
            lease_ms: 1,
            lost: false,
        })
        .await
        .unwrap();
    colo_control::auth::load_or_create_token(root.path()).unwrap();
    let token = Arc::new(colo_control::auth::TokenFile::open(&root.path().join("api-token")).unwrap());
    let control = Control::remote(state.clone(), store, token, reqwest::Client::new());

    // Demand in two regions 100+ ms apart, 30 ms allowed: one machine in each, on a GPU.
    let app = control
        .deploy_with("chat", "tiny", 1, &deploying(demand(30.0, &["ord", "ams"])))
        .await
        .unwrap();
    assert_eq!(placed(&state, "chat").await, ["ams-1:l40s", "ord-1:l40s"]);
    let record = app.placement.expect("the app records its placement");
    let mut slots: Vec<String> = record
        .machines
        .iter()
        .map(|m| format!("{}:{} x{}", m.host, m.gpu, m.n_gpus))
        .collect();
    slots.sort();
    assert_eq!(slots, ["ams-1:l40s x1", "ord-1:l40s x1"]);
    assert!(record.unmet.is_empty(), "{:?}", record.unmet);
    assert_eq!(app.machines, 2);
    assert!(app.demand.is_some() && app.regions.is_empty());
    let machines = state.machines().await.unwrap();
    assert!(
        machines
            .iter()
            .filter(|m| m.app.as_str() == "chat")
            .all(|m| matches!(m.device, Device::Gpu { .. })),
        "machines lease GPUs: {machines:#?}"
    );

    // Demand where no live host is in reach: a 409 naming the region and the nearest host.
    let err = control
        .deploy_with("far", "tiny", 1, &deploying(demand(30.0, &["syd"])))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Unplaced { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("syd") && text.contains("no host within 30 ms of syd"), "{text}");
    assert!(state.app(&colo_core::AppName::new("far").unwrap()).await.unwrap().is_none());

    // Reconciling again changes nothing: the placement keeps machines where they are.
    let before: Vec<String> = state.machines().await.unwrap().iter().map(|m| m.id.clone()).collect();
    control.reconcile_all().await;
    let after: Vec<String> = state.machines().await.unwrap().iter().map(|m| m.id.clone()).collect();
    assert_eq!(before, after, "a second pass creates and destroys nothing");

    // ams-1 is lost: the next pass places ams's machine on ams-2 (ams-1's machine is out of
    // reach; the agent destroys nothing it was not told to).
    register(&state, "ams-1", "ams", &ams_1, l40s(1), true).await;
    control.reconcile_all().await;
    let now = placed(&state, "chat").await;
    assert!(now.contains(&"ams-2:l40s".to_string()), "{now:?}");

    // Another app takes what GPUs are left: ord-1's second card. ams has none free now, so
    // its demand is unmet and the deploy says why, placing what it can.
    let app = control
        .deploy_with("other", "tiny", 1, &deploying(demand(30.0, &["ord", "ams"])))
        .await
        .unwrap();
    assert_eq!(placed(&state, "other").await, ["ord-1:l40s"]);
    let unmet = app.placement.unwrap().unmet;
    assert_eq!(unmet.len(), 1, "{unmet:?}");
    assert_eq!(unmet[0].region, "ams");
    assert!(unmet[0].reason.contains("ran out"), "{unmet:?}");

    // Every GPU is taken now: the next deploy with a demand is refused, saying so.
    let err = control
        .deploy_with("late", "tiny", 1, &deploying(demand(30.0, &["ord"])))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("every GPU of the live hosts (ams-2, ord-1) is taken"), "{err}");

    // A bad demand is refused naming the field; a demand with per-region counts too.
    let mut bad = demand(30.0, &["ord"]);
    bad.regions[0].requests_per_s = 0.0;
    let err = control
        .deploy_with("bad", "tiny", 1, &deploying(bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("demand.regions[0].requests_per_s"), "{err}");
    let both = DeployOptions {
        regions: [("ord".to_string(), 1)].into_iter().collect(),
        ..deploying(demand(30.0, &["ord"]))
    };
    let err = control.deploy_with("both", "tiny", 1, &both).await.unwrap_err().to_string();
    assert!(err.starts_with("demand:") && err.contains("not both"), "{err}");
}
