//! Two regions over real links: each region's agent and edge run inside its own network
//! namespace (`ip netns exec`), joined by a bridge that nats-server, s3s-fs and control listen
//! on, with `tc netem` delay on each region's link. The app is deployed with a demand in both
//! regions on GPUs the agents declare, so control's planner places one machine in each; then
//! each edge must send its callers to its own region's machine, and the RTT each edge measures
//! to the other region must show the delay.
//!
//! What runs depends on the machine, and the test prints which: with root, iproute2 and a
//! kernel with netem, the namespaces and netem delay; without netem, the namespaces with the
//! edges adding the delay; without root or iproute2, everything on loopback with the edges
//! adding the delay (as `daemons.rs` does). The assertions are the same on every path.

mod common;

use common::cluster::*;
use common::netns::Netns;
use std::time::{Duration, Instant};

/// Delay netem adds to each packet leaving a region, so twice this between two regions.
const ONE_WAY_MS: u64 = 30;
const RTT_MS: u64 = 2 * ONE_WAY_MS;

#[test]
fn regions_in_network_namespaces_place_by_demand_and_keep_callers_local() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let netns = Netns::create(&["ord", "ams"], ONE_WAY_MS);
    // (how it runs, why not better, where nats/s3/control listen, where each region runs,
    // delay the edges add)
    let (path, why, host_ip, places, edge_delay_ms) = match &netns {
        Ok(net) => {
            let places = [net.place("ord"), net.place("ams")];
            match &net.netem {
                Ok(_) => ("namespaces, netem", String::new(), net.bridge_ip.clone(), places, 0),
                Err(why) => ("namespaces, edge delay", why.clone(), net.bridge_ip.clone(), places, RTT_MS),
            }
        }
        Err(why) => (
            "loopback, edge delay",
            why.clone(),
            "127.0.0.1".to_string(),
            [Place::loopback(), Place::loopback()],
            RTT_MS,
        ),
    };
    match edge_delay_ms {
        0 => println!("regions: {path} ({ONE_WAY_MS} ms each way, {RTT_MS} ms between regions)"),
        _ => println!("regions: {path} (edges add {RTT_MS} ms between regions): {why}"),
    }

    let (mut cluster, api) = start_cluster_at(tmp.path(), None, &host_ip);
    for ((name, region), place) in [("ord-1", "ord"), ("ams-1", "ams")].into_iter().zip(&places) {
        cluster.start_agent_at(name, region, place, &["--gpus", "l40s=2"]);
    }
    let edges: Vec<String> = ["ord", "ams"]
        .iter()
        .zip(&places)
        .map(|(region, place)| cluster.start_edge_at(region, place, edge_delay_ms))
        .collect();
    cluster.wait_hosts(&api, 2);

    // Demand in both regions, 30 ms allowed (ord and ams are 100+ ms apart): the planner puts
    // one machine in each region, on a declared L40S.
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let demand = tmp.path().join("demand.toml");
    let region = |code: &str| format!("[[regions]]\nregion = \"{code}\"\nrequests_per_s = 2\nprompt_tokens = 256\noutput_tokens = 64\n");
    std::fs::write(&demand, format!("rtt_limit_ms = 30\n{}{}", region("ord"), region("ams"))).unwrap();
    let deployed = cluster.cli(&[
        "deploy",
        "near",
        "--model",
        "tiny",
        "--demand",
        demand.to_str().unwrap(),
        "--engine-cmd",
        &upstream_engine(""),
        "--timeout",
        "120",
    ]);
    assert!(
        deployed.contains("placed: ord-1 (ord) l40s x1") && deployed.contains("placed: ams-1 (ams) l40s x1"),
        "{deployed}"
    );
    assert!(!deployed.contains("unmet"), "{deployed}");
    let machines = live_of(&cluster.machines(), "near");
    let mut hosts: Vec<String> = machines
        .iter()
        .map(|m| format!("{}:{}", m["host"].as_str().unwrap(), m["gpu_kind"].as_str().unwrap_or("-")))
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["ams-1:l40s", "ord-1:l40s"], "{machines:#?}");
    let machine_of = |host: &str| {
        machines.iter().find(|m| m["host"] == host).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let apps: serde_json::Value = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
    assert_eq!(apps[0]["app"]["placement"]["unmet"], serde_json::json!([]), "{apps}");

    // Locality over the links: each edge answers from its own region's machine.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for (edge, (region, host)) in edges.iter().zip([("ord", "ord-1"), ("ams", "ams-1")]) {
        for _ in 0..5 {
            let (status, answered_region, answered_machine) = answer(&client, edge);
            assert_eq!((status, answered_region.as_str()), (200, region), "through the {region} edge");
            assert_eq!(answered_machine, machine_of(host), "through the {region} edge");
        }
    }

    // The RTT each edge measures to the other region (timed health checks every 2 s, smoothed)
    // shows the delay: at least the round trip, and not wildly more.
    let token = std::fs::read_to_string(cluster.data("control").join("api-token")).unwrap();
    let http = reqwest::blocking::Client::new();
    for (edge, (own, other)) in edges.iter().zip([("ord", "ams"), ("ams", "ord")]) {
        let mut rtt = 0;
        wait_for(30, &format!("the {own} edge measuring {other} at about {RTT_MS} ms"), || {
            let table: serde_json::Value = http
                .get(format!("{edge}/colo/rtt"))
                .bearer_auth(token.trim())
                .send()
                .unwrap()
                .json()
                .unwrap();
            let row = table["regions"].as_array().unwrap().iter().find(|r| r["region"] == other).cloned();
            let Some(row) = row.filter(|r| r["measured"] == true) else {
                return false;
            };
            rtt = row["rtt_ms"].as_u64().unwrap();
            (RTT_MS * 9 / 10..=RTT_MS * 3).contains(&rtt)
        });
        println!("the {own} edge measures {other} at {rtt} ms ({path})");
    }

    // A request from the test (outside both regions) to the ord edge steered to ams pays the
    // round trip between the regions on top.
    let steered = |force: Option<&str>| {
        let began = Instant::now();
        let mut request = client
            .post(format!("{}/v1/embeddings", edges[0]))
            .body(r#"{"model":"near","input":"x"}"#);
        if let Some(region) = force {
            request = request.header("colo-force-region", region);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status(), 200);
        (began.elapsed(), response.headers()["colo-region"].to_str().unwrap().to_string())
    };
    let best = |force: Option<&str>| (0..5).map(|_| steered(force)).min().unwrap();
    let (local, local_region) = best(None);
    let (remote, remote_region) = best(Some("ams"));
    assert_eq!((local_region.as_str(), remote_region.as_str()), ("ord", "ams"));
    println!("through the ord edge: ord's machine in {local:?}, ams's in {remote:?}");
    assert!(
        remote >= local + Duration::from_millis(RTT_MS * 9 / 10),
        "ams's machine only {remote:?} against ord's {local:?}"
    );
    cluster.cli(&["destroy", "near"]);
    println!("regions test ({path}) took {:?}", started.elapsed());
}
