//! colo past one machine, all real processes on loopback: a nats-server with JetStream, an
//! S3-compatible server (s3s-fs), one `colo control`, two `colo agent`s in two regions and two
//! `colo edge`s. Distance between regions is simulated by the edges (`--inter-region-delay-ms`);
//! `daemons_netns.rs` runs the regions in network namespaces with real delay instead.
//!
//! One test walks the whole story, because starting the cluster is the slow part: auth of every
//! API, locality, an agent killed and replaced then back again, NATS down for 30 s under
//! traffic, and a rolling deploy under traffic.

mod common;

use common::cluster::*;
use common::repo_root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn control_agents_and_edges_as_daemons_over_nats_and_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, api) = start_cluster(tmp.path(), None);
    let control_dir = cluster.data("control");
    cluster.start_agent("ord-1", "ord");
    cluster.start_agent("ams-1", "ams");
    let ord = cluster.start_edge("ord");
    let ams = cluster.start_edge("ams");
    let token = std::fs::read_to_string(control_dir.join("api-token")).unwrap();

    // Agents register with a heartbeat.
    let http = reqwest::blocking::Client::new();
    wait_for(20, "both agents registered", || {
        let answer = http.get(format!("{api}/v1/hosts")).bearer_auth(token.trim()).send();
        let hosts: Vec<serde_json::Value> = answer.ok().and_then(|r| r.json().ok()).unwrap_or_default();
        hosts.iter().filter(|h| h["lost"] == false).count() == 2
    });

    // The model goes to the S3 store; the app brings its own engine (a small Python server).
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let engine = format!(
        "python3 {} --port {{port}} --delay-ms 100",
        repo_root().join("tests/py/upstream.py").display()
    );
    deploy_near(&cluster, &engine);
    let machines = live_of(&cluster.machines(), "near");
    let hosts: Vec<&str> = machines.iter().map(|m| m["host"].as_str().unwrap()).collect();
    assert_eq!(machines.len(), 2, "{machines:#?}");
    assert!(
        hosts.contains(&"ord-1") && hosts.contains(&"ams-1"),
        "spread over both hosts: {hosts:?}"
    );

    // Locality: each edge sends its callers to its own region's machine.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for (edge, region) in [(&ord, "ord"), (&ams, "ams")] {
        for _ in 0..3 {
            assert_eq!(call(&client, edge), (200, region.to_string()), "through the {region} edge");
        }
    }

    // Machines are reached only through the edges: the address edges use answers anyone
    // else 403 (the agent's forwarder wants the machine key first), and the engine itself
    // listens on loopback.
    for m in &machines {
        let addr = m["addr"].as_str().unwrap();
        let stranger = client.get(format!("http://{addr}/health")).send().unwrap();
        assert_eq!(stranger.status(), 403, "{addr} let a caller in around the edge");
        let engine = m["engine_addr"].as_str().unwrap_or_default();
        assert!(engine.starts_with("127.0.0.1:") && engine != addr, "{m}");
    }

    // Engine load reports travel between regions: after ams's machine answered the ams edge,
    // the ord edge holds a relayed report for it (edges publish at most 4 times a second).
    let ams_machine = machines.iter().find(|m| m["host"] == "ams-1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let relayed = wait_for(10, "the ams machine's load relayed to the ord edge", || {
        call(&client, &ams);
        let table: serde_json::Value = http
            .get(format!("{ord}/colo/load"))
            .bearer_auth(token.trim())
            .send()
            .unwrap()
            .json()
            .unwrap();
        table["machines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["machine"] == ams_machine.as_str() && m["report"]["relayed"] == true)
    });
    println!("load report of an ams machine reached the ord edge within {relayed:?}");

    // The dashboard of `colo control`: the edges are other processes, which publish their
    // figures over NATS; both regions' requests show, with where they went.
    let seen = wait_for(10, "both edges' traffic on control's dashboard", || {
        let snap: serde_json::Value = http
            .get(format!("{api}/v1/ui/snapshot"))
            .bearer_auth(token.trim())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let flows = snap["flows"].as_array().cloned().unwrap_or_default();
        let flow = |from: &str| {
            flows
                .iter()
                .any(|f| f["from"] == from && f["to"] == from && f["requests"].as_u64() >= Some(3))
        };
        snap["traffic"]["near"]["requests"].as_u64() >= Some(6)
            && snap["edges"] == serde_json::json!({"ams": 1, "ord": 1})
            && flow("ord")
            && flow("ams")
    });
    println!("control's dashboard showed both edges' traffic within {seen:?}");
    // A machine's engine log, which is on its host, through control.
    let machine = &machines[0]["id"].as_str().unwrap();
    let log = http
        .get(format!("{api}/v1/apps/near/machines/{machine}/logs?lines=5"))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert_eq!(log.status(), 200);
    assert!(log.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let bad = http
        .get(format!("{api}/v1/apps/near/machines/{machine}/logs?lines=many"))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400, "the agent's refusal is passed on");
    // The read-only token shows the dashboard and changes nothing.
    let minted: serde_json::Value = serde_json::from_str(&cluster.cli(&["token", "read-only", "--json"])).unwrap();
    let read_only = minted["token"].as_str().unwrap();
    assert!(
        minted["dashboard"].as_str().unwrap().ends_with(&format!("/ui#token={read_only}")),
        "{minted}"
    );
    let with = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(read_only)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(with(reqwest::Method::GET, "/v1/ui/snapshot"), 200);
    assert_eq!(with(reqwest::Method::GET, &format!("/v1/apps/near/machines/{machine}/logs")), 200);
    assert_eq!(with(reqwest::Method::GET, "/v1/apps"), 403, "listing apps shows their keys' names");
    assert_eq!(with(reqwest::Method::DELETE, "/v1/apps/near"), 403);

    // Auth: every daemon API refuses callers without the cluster token; an app's deploy token
    // reaches its own app only.
    let agent_api = |name: &str| run_agent_addr(&cluster, name);
    for url in [
        format!("{api}/v1/apps"),
        format!("{}/v1/apps/near/machines", agent_api("ord-1")),
        format!("{ord}/metrics"),
    ] {
        assert_eq!(http.get(&url).send().unwrap().status(), 401, "{url} without a token");
        assert_eq!(
            http.get(&url).bearer_auth("wrong").send().unwrap().status(),
            401,
            "{url} with a wrong token"
        );
        assert_eq!(
            http.get(&url).bearer_auth(&token).send().unwrap().status(),
            200,
            "{url} with the cluster token"
        );
    }
    cluster.cli(&[
        "deploy",
        "other",
        "--model",
        "tiny",
        "--machines",
        "1",
        "--engine-cmd",
        &engine,
        "--detach",
    ]);
    let deploy_token = cluster.cli(&["token", "create", "near"]).trim().to_string();
    let near = http.get(format!("{api}/v1/apps/near")).bearer_auth(&deploy_token).send().unwrap();
    assert_eq!(near.status(), 200, "a deploy token reads its own app");
    let other = http.get(format!("{api}/v1/apps/other")).bearer_auth(&deploy_token).send().unwrap();
    assert_eq!(other.status(), 404, "another app is not found with near's deploy token");
    let destroy_other = http
        .delete(format!("{api}/v1/apps/other"))
        .bearer_auth(&deploy_token)
        .send()
        .unwrap();
    assert_eq!(destroy_other.status(), 404);
    let deploy_other = http
        .post(format!("{api}/v1/apps"))
        .bearer_auth(&deploy_token)
        .json(&serde_json::json!({"name": "other", "model": "tiny"}))
        .send()
        .unwrap();
    assert_eq!(deploy_other.status(), 404, "near's deploy token cannot deploy other");
    assert_eq!(
        http.get(format!("{api}/v1/machines"))
            .bearer_auth(&deploy_token)
            .send()
            .unwrap()
            .status(),
        403
    );
    let agent_with_deploy_token = http
        .get(format!("{}/v1/apps/near/machines", agent_api("ord-1")))
        .bearer_auth(&deploy_token)
        .send()
        .unwrap();
    assert_eq!(agent_with_deploy_token.status(), 401, "agents take the cluster token only");
    cluster.cli(&["destroy", "other"]);

    // Kill -9 the ord agent (its engines die with it): within the lease its machine leaves
    // both edges' tables, ord's callers go to ams, and control replaces the machine on ams.
    cluster.kill("ord-1");
    let killed = Instant::now();
    let mut served_by_ams = 0;
    let gone = wait_for(20, "ord's callers served from ams", || {
        let (status, region) = call(&client, &ord);
        served_by_ams = if status == 200 && region == "ams" { served_by_ams + 1 } else { 0 };
        served_by_ams >= 3
    });
    println!("agent killed: its machine left the ord edge's table after {gone:?} (lease {LEASE_MS} ms)");
    wait_for(60, "a replacement machine on ams-1", || {
        let machines = cluster.machines();
        live_of(&machines, "near")
            .iter()
            .filter(|m| m["host"] == "ams-1" && m["state"] == "started")
            .count()
            == 2
    });
    println!("replacement started {:?} after the kill", killed.elapsed());

    // The agent comes back: its old machine is reconciled away, not kept as a third.
    cluster.start_agent("ord-1", "ord");
    wait_for(60, "two machines of near again, none duplicated", || {
        let machines = cluster.machines();
        let live = live_of(&machines, "near");
        live.len() == 2 && live.iter().all(|m| m["state"] == "started")
    });

    // NATS down for 30 s under steady traffic: the edges answer from their last table.
    let count = |cluster: &Cluster| {
        let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
        let machines = live_of(&cluster.machines(), "near");
        let versions: Vec<u64> = apps.iter().map(|a| a["app"]["version"].as_u64().unwrap_or(0)).collect();
        (apps.len(), machines.len(), versions)
    };
    let before = count(&cluster);
    let traffic = Traffic::start(&[ord.clone(), ams.clone()]);
    std::thread::sleep(Duration::from_secs(1));
    cluster.kill("nats");
    std::thread::sleep(Duration::from_secs(30));
    cluster.start_nats();
    std::thread::sleep(Duration::from_secs(2 * LEASE_MS / 1000 + 3));
    let (answered, failed) = traffic.finish();
    println!("NATS down 30 s: {answered} requests answered, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "requests failed while NATS was down: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(answered > 100, "too little traffic to show anything: {answered}");
    let after = wait_for(30, "state converged after NATS came back", || count(&cluster) == before);
    println!("state converged {after:?} after NATS returned: {before:?}");

    // A new model revision rolls machine by machine under traffic: nothing fails.
    push_tiny(&cluster, &tmp.path().join("tiny2"), 7);
    let traffic = Traffic::start(&[ord.clone(), ams.clone()]);
    let rolled = Instant::now();
    deploy_near(&cluster, &engine);
    std::thread::sleep(Duration::from_secs(3));
    let (answered, failed) = traffic.finish();
    println!(
        "rolling deploy in {:?}: {answered} requests answered, {} failed",
        rolled.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the rollout: {:?}",
        &failed[..failed.len().min(5)]
    );
    let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
    let near = apps.iter().find(|a| a["app"]["name"] == "near").expect("near in colo apps");
    assert_eq!(near["app"]["version"], 2, "the second deploy of near: {near}");
    let revision = near["app"]["revision"].clone();
    let live = live_of(&cluster.machines(), "near");
    assert_eq!(live.len(), 2);
    assert!(
        live.iter().all(|m| m["revision"] == revision),
        "every machine on the new revision: {live:#?}"
    );

    // A rollout whose new machine cannot start stops with an error; the app keeps its version,
    // revision and machines, and keeps answering.
    push_tiny(&cluster, &tmp.path().join("tiny3"), 9);
    let broken = cluster
        .colo(&deploy_near_args("false {port}"))
        .arg("--data-dir")
        .arg(cluster.data("control"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        !broken.status.success() && stderr.contains("rollout"),
        "a broken rollout must fail: {stderr}"
    );
    let apps: Vec<serde_json::Value> = serde_json::from_str(&cluster.cli(&["apps", "--json"])).unwrap();
    let near = apps.iter().find(|a| a["app"]["name"] == "near").unwrap();
    assert_eq!(near["app"]["version"], 2, "the failed rollout left the version: {near}");
    assert_eq!(near["app"]["revision"], revision, "and the revision");
    // The failed machine is destroyed by its agent a moment after the rollout gives up.
    wait_for(30, "only the two old-revision machines left", || {
        let live = live_of(&cluster.machines(), "near");
        live.len() == 2 && live.iter().all(|m| m["revision"] == revision && m["state"] == "started")
    });
    for edge in [&ord, &ams] {
        assert_eq!(call(&client, edge).0, 200, "still answering after the failed rollout");
    }

    // Rotating the cluster token: the old one is refused at once, the new one works, and the
    // daemons that read the file keep calling each other.
    let old_token = token.trim().to_string();
    cluster.cli(&["token", "rotate"]);
    let new_token = std::fs::read_to_string(control_dir.join("api-token")).unwrap();
    assert_ne!(old_token, new_token.trim());
    assert_eq!(
        http.get(format!("{api}/v1/apps")).bearer_auth(&old_token).send().unwrap().status(),
        401
    );
    assert_eq!(
        http.get(format!("{api}/v1/apps"))
            .bearer_auth(new_token.trim())
            .send()
            .unwrap()
            .status(),
        200
    );
    cluster.cli(&["destroy", "near"]);
    wait_for(30, "near's machines destroyed through the agents", || {
        live_of(&cluster.machines(), "near").is_empty()
    });
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with the openssl CLI.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca = "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=colo-test-ca";
    run(&ca.split(' ').collect::<Vec<_>>());
    run(&"req -newkey rsa:2048 -nodes -keyout host.key -out host.csr -subj /CN=127.0.0.1"
        .split(' ')
        .collect::<Vec<_>>());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign = "x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out host.pem -days 2 -extfile ext.cnf";
    run(&sign.split(' ').collect::<Vec<_>>());
    (dir.join("host.pem"), dir.join("host.key"), dir.join("ca.pem"))
}

#[test]
fn daemons_speak_tls_to_each_other_when_given_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certificates(tmp.path());
    let (mut cluster, api) = start_cluster(tmp.path(), Some(certs.clone()));
    assert!(api.starts_with("https://"), "control serves HTTPS: {api}");
    cluster.start_agent("ord-1", "ord");
    let edge = cluster.start_edge("ord");
    wait_for(20, "the agent up", || cluster.log("ord-1").contains("is up"));
    let agent = run_agent_addr(&cluster, "ord-1");
    assert!(agent.starts_with("https://"), "the agent serves HTTPS: {agent}");

    // Deploy through control (the CLI trusts the CA named in control's colo.json), which
    // creates the machine on the agent over HTTPS; the edge wakes and reaches it.
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);
    let engine = format!("python3 {} --port {{port}}", repo_root().join("tests/py/upstream.py").display());
    cluster.cli(&["deploy", "near", "--model", "tiny", "--engine-cmd", &engine, "--timeout", "120"]);
    let client = reqwest::blocking::Client::new();
    assert_eq!(call(&client, &edge), (200, "ord".to_string()));

    // Plain HTTP is refused, and HTTPS without trusting the CA fails the handshake.
    let token = std::fs::read_to_string(cluster.data("control").join("api-token")).unwrap();
    for url in [&api, &agent] {
        let plain = url.replacen("https://", "http://", 1);
        let answer = client.get(format!("{plain}/v1/apps")).bearer_auth(token.trim()).send();
        assert!(
            answer.is_err() || !answer.unwrap().status().is_success(),
            "{plain} answered plain HTTP"
        );
        let untrusted = client.get(format!("{url}/v1/apps")).bearer_auth(token.trim()).send();
        assert!(untrusted.is_err(), "{url} was trusted without the CA");
    }
    let pem = std::fs::read(&certs.2).unwrap();
    let trusting = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let apps = trusting.get(format!("{api}/v1/apps")).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(apps.status(), 200);
}

/// Deploys app `near` (two machines of model `tiny` with `engine`) and waits for it.
fn deploy_near(cluster: &Cluster, engine: &str) {
    cluster.cli(&deploy_near_args(engine));
}

/// The arguments of `colo deploy` for app `near`: two machines of `tiny` running `engine`.
fn deploy_near_args(engine: &str) -> [&str; 10] {
    [
        "deploy",
        "near",
        "--model",
        "tiny",
        "--machines",
        "2",
        "--engine-cmd",
        engine,
        "--timeout",
        "120",
    ]
}
