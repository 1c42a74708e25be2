//! `colo_node::up` as a library, without the binary: it serves the edges and the API, writes
//! the run file only once everything serves, lays out a fleet's hosts and edges, refuses a bad
//! config before touching the disk, and drains (run file gone, edges closed).

use colo_node::{EdgeSettings, NodeError, RunInfo, UpConfig};
use std::path::Path;
use std::time::Duration;

fn config(data_dir: &Path) -> UpConfig {
    UpConfig {
        data_dir: data_dir.to_path_buf(),
        edge_addr: "127.0.0.1:0".parse().unwrap(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        cpu_slots: 1,
        edge: EdgeSettings {
            workers: 1,
            drain_timeout_secs: 5,
            ..EdgeSettings::default()
        },
        ..UpConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_writes_its_run_file_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = colo_node::up(config(&dir.path().join("data"))).await.unwrap();
    let (region, edge) = running.edges[0].clone();
    assert_eq!(region, "local");

    let info = RunInfo::read(&running.data_dir).expect("no run file while up");
    assert_eq!(info.api, format!("http://{}", running.api_addr));
    assert_eq!(info.edge, format!("http://{edge}"));
    assert_eq!(info.edges["local"], info.edge);
    assert_eq!(info.pid, std::process::id());

    let http = reqwest::Client::new();
    let health = http.get(format!("http://{edge}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let apps = format!("{}/v1/apps", info.api);
    assert_eq!(
        http.get(&apps).send().await.unwrap().status(),
        401,
        "the API answered without a token"
    );
    let token = std::fs::read_to_string(running.data_dir.join("api-token")).unwrap();
    let listed = http.get(&apps).bearer_auth(token.trim()).send().await.unwrap();
    assert_eq!(listed.status(), 200);

    let drain = running.drain().await;
    assert!(drain.complete, "nothing was in flight, yet the drain timed out");
    assert!(drain.took < Duration::from_secs(5), "{:?}", drain.took);
    assert_eq!(RunInfo::read(&running.data_dir), None, "the run file outlived the drain");
    let fresh = reqwest::Client::new().get(format!("http://{edge}/health")).send().await;
    assert!(fresh.is_err(), "the edge still accepts after the drain");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_gets_one_edge_per_region_and_one_agent_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = "inter_region_delay_ms = 5\n\
        [[hosts]]\nname = \"ord-1\"\nregion = \"ord\"\ncpu_slots = 1\n\
        [[hosts]]\nname = \"ord-2\"\nregion = \"ord\"\n\
        [[hosts]]\nname = \"ams-1\"\nregion = \"ams\"\n";
    let config = UpConfig {
        fleet: Some(toml::from_str(fleet).unwrap()),
        ..config(&dir.path().join("data"))
    };
    let running = colo_node::up(config).await.unwrap();
    let regions: Vec<&str> = running.edges.iter().map(|(region, _)| region.as_str()).collect();
    assert_eq!(regions, ["ord", "ams"]);
    let hosts: Vec<(&str, &str, usize)> = running.agents().iter().map(|a| (a.host(), a.region(), a.devices().len())).collect();
    assert_eq!(hosts, [("ord-1", "ord", 1), ("ord-2", "ord", 2), ("ams-1", "ams", 2)]);
    let info = RunInfo::read(&running.data_dir).unwrap();
    assert_eq!(info.edges.len(), 2, "{info:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = UpConfig {
        health_interval_secs: 0.0,
        edge: EdgeSettings {
            soft_limit: 0,
            ..EdgeSettings::default()
        },
        peers: vec!["10.0.0.2:7070".into()],
        ..config(&data_dir)
    };
    let Err(NodeError::Invalid(problems)) = colo_node::up(config).await else {
        panic!("a config with a zero soft limit and health interval was accepted");
    };
    let fields: Vec<&str> = problems.0.iter().map(|p| p.field).collect();
    assert_eq!(fields, ["edge.limits", "health_interval_secs", "peers"]);
    assert!(!data_dir.exists(), "the data dir was created for a refused config");
}
