//! The machines API in Fly's shape, through a real `colo up`: every verb colo has, called the
//! way a deployer would (list filters, update, restart, wait with its 60 s limit and 408, leases
//! with a nonce, cordon, metadata), and docs/MACHINES-API.md walked row by row against Fly's
//! published list of paths: each `yes` row was called here, each `no` row answers 404 or 405.
//! The machine runs `colo-standin` playing vLLM (see up_engines.rs).

mod common;

use common::Colo;
use reqwest::blocking::{Client, Response};
use reqwest::Method;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Fly's Machines API as published (fly-go's flaps client and fly.io/docs/machines/api): verb and
/// path, under `/v1/apps/{app}/machines` unless it starts with `/v1/`.
const FLY: &[(&str, &str)] = &[
    ("GET", ""),
    ("POST", ""),
    ("GET", "/{id}"),
    ("POST", "/{id}"),
    ("DELETE", "/{id}"),
    ("POST", "/{id}/start"),
    ("POST", "/{id}/stop"),
    ("POST", "/{id}/suspend"),
    ("POST", "/{id}/restart"),
    ("POST", "/{id}/signal"),
    ("GET", "/{id}/wait"),
    ("GET", "/{id}/lease"),
    ("POST", "/{id}/lease"),
    ("DELETE", "/{id}/lease"),
    ("POST", "/{id}/cordon"),
    ("POST", "/{id}/uncordon"),
    ("GET", "/{id}/metadata"),
    ("POST", "/{id}/metadata/{key}"),
    ("DELETE", "/{id}/metadata/{key}"),
    ("POST", "/{id}/exec"),
    ("GET", "/{id}/ps"),
    ("GET", "/v1/platform/regions"),
    ("GET", "/v1/platform/placements"),
];

/// The rows of docs/MACHINES-API.md's table: (verb, path, whether colo has it).
fn documented() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(common::repo_root().join("docs/MACHINES-API.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| GET") || l.starts_with("| POST") || l.starts_with("| DELETE"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").map(|c| c.trim_matches(|c| c == '|' || c == ' ')).collect();
            let path = cells[1].trim_matches('`').to_string();
            let has = match cells[2] {
                "yes" => true,
                "no" => false,
                other => panic!("docs/MACHINES-API.md: colo column is yes or no, not {other:?}: {l}"),
            };
            (cells[0].to_string(), path, has)
        })
        .collect()
}

/// A client of the API that remembers which (verb, path) it called.
struct Api {
    client: Client,
    base: String,
    token: String,
    app: String,
    called: BTreeSet<(String, String)>,
}

impl Api {
    /// Calls `path` (a template of FLY's kind) with `{id}` and `{key}` filled in.
    fn call(&mut self, verb: &str, path: &str, id: &str, nonce: Option<&str>, body: Option<serde_json::Value>) -> Response {
        self.called.insert((verb.to_string(), path.split('?').next().unwrap().to_string()));
        let filled = path.replace("{id}", id).replace("{key}", "team");
        let url = if filled.starts_with("/v1/") {
            format!("{}{filled}", self.base)
        } else {
            format!("{}/v1/apps/{}/machines{filled}", self.base, self.app)
        };
        let mut request = self
            .client
            .request(Method::from_bytes(verb.as_bytes()).unwrap(), url)
            .bearer_auth(&self.token);
        if let Some(nonce) = nonce {
            request = request.header("fly-machine-lease-nonce", nonce);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().expect("a call to the machines API")
    }

    fn ok(&mut self, verb: &str, path: &str, id: &str, nonce: Option<&str>, body: Option<serde_json::Value>) -> serde_json::Value {
        let r = self.call(verb, path, id, nonce, body);
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "{verb} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Expects `status` and returns the error text.
    fn fails(&mut self, status: u16, verb: &str, path: &str, id: &str, nonce: Option<&str>, body: Option<serde_json::Value>) -> String {
        let r = self.call(verb, path, id, nonce, body);
        let got = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(got, status, "{verb} {path}: {text}");
        text
    }

    fn wait(&mut self, id: &str, state: &str) -> serde_json::Value {
        self.ok("GET", &format!("/{{id}}/wait?state={state}&timeout=30"), id, None, None)
    }
}

fn complete(client: &Client, edge: &str) -> u16 {
    client
        .post(format!("{edge}/v1/completions"))
        .json(&serde_json::json!({"model": "fa", "prompt": "hello", "max_tokens": 2}))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn the_machines_api_has_flys_shape_and_the_docs_say_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(&dir.path().join("data"), &["--cpu-slots", "2"]);
    colo.push_tiny("tiny");
    colo.deploy_standin("fa", "tiny", "vllm", "--flavor vllm --load-ms 50 --ttft-ms 2 --itl-ms 2", &[]);
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(colo.data_dir.join("colo.json")).unwrap()).unwrap();
    let client = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut api = Api {
        client: client.clone(),
        base: info["api"].as_str().unwrap().to_string(),
        token: std::fs::read_to_string(colo.data_dir.join("api-token")).unwrap().trim().to_string(),
        app: "fa".into(),
        called: BTreeSet::new(),
    };

    // List, with Fly's filters; a filter it does not know is named.
    let all = api.ok("GET", "", "", None, None);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let id = all[0]["id"].as_str().unwrap().to_string();
    let started = api.ok("GET", "?state=started", "", None, None);
    assert_eq!(started.as_array().unwrap().len(), 1);
    let elsewhere = api.ok("GET", "?region=nowhere", "", None, None);
    assert!(elsewhere.as_array().unwrap().is_empty());
    let err = api.fails(400, "GET", "?colour=blue", "", None, None);
    assert!(err.contains("colour"), "{err}");
    assert_eq!(api.ok("GET", "/{id}", &id, None, None)["id"], id.as_str());

    // A lease: held by one deployer, proved by its nonce.
    let lease = api.ok(
        "POST",
        "/{id}/lease",
        &id,
        None,
        Some(serde_json::json!({"ttl": 60, "owner": "deployer", "description": "rollout"})),
    );
    assert_eq!(lease["status"], "success");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_string();
    assert_eq!(api.ok("GET", "/{id}/lease", &id, None, None)["data"]["owner"], "deployer");
    let err = api.fails(409, "POST", "/{id}/lease", &id, None, None);
    assert!(err.contains("deployer"), "who holds it is named: {err}");
    let extended = api.ok("POST", "/{id}/lease?ttl=120", &id, Some(&nonce), None);
    assert_eq!(extended["data"]["nonce"], nonce.as_str());
    let err = api.fails(400, "POST", "/{id}/lease?ttl=0", &id, Some(&nonce), None);
    assert!(err.contains("ttl"), "{err}");

    // Metadata: writes need the nonce; bad keys and values are named.
    let value = serde_json::json!({"value": "search"});
    api.fails(409, "POST", "/{id}/metadata/{key}", &id, None, Some(value.clone()));
    api.fails(409, "POST", "/{id}/metadata/{key}", &id, Some("not-the-nonce"), Some(value.clone()));
    let r = api.call("POST", "/{id}/metadata/{key}", &id, Some(&nonce), Some(value));
    assert_eq!(r.status(), 204);
    assert_eq!(
        api.ok("GET", "/{id}/metadata", &id, None, None),
        serde_json::json!({"team": "search"})
    );
    assert_eq!(api.ok("GET", "?metadata.team=search", "", None, None).as_array().unwrap().len(), 1);
    assert!(api.ok("GET", "?metadata.team=other", "", None, None).as_array().unwrap().is_empty());
    let long = serde_json::json!({"value": "x".repeat(2000)});
    let err = api.fails(400, "POST", "/{id}/metadata/{key}", &id, Some(&nonce), Some(long));
    assert!(err.contains("metadata") && err.contains("1024"), "{err}");

    // Cordon: out of routing while started, back in on uncordon.
    assert_eq!(complete(&client, &colo.edge), 200);
    assert_eq!(api.ok("POST", "/{id}/cordon", &id, Some(&nonce), None)["cordoned"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let began = Instant::now();
        match complete(&client, &colo.edge) {
            200 => assert!(Instant::now() < deadline, "a cordoned machine is still routed to"),
            status => {
                assert_eq!(status, 503, "an app whose machines are all cordoned is answered 503");
                assert!(began.elapsed() < Duration::from_secs(2), "answered at once, not held");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        api.ok("GET", "/{id}", &id, None, None)["state"],
        "started",
        "cordon leaves the state alone"
    );
    api.ok("POST", "/{id}/uncordon", &id, Some(&nonce), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while complete(&client, &colo.edge) != 200 {
        assert!(Instant::now() < deadline, "an uncordoned machine is not routed to again");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Update: new engine arguments restart the running machine with them.
    let mut engine = api.ok("GET", "/{id}", &id, None, None)["engine"].clone();
    engine["args"] = serde_json::json!(["--flavor", "vllm", "--load-ms", "60", "--ttft-ms", "3"]);
    api.fails(409, "POST", "/{id}", &id, None, Some(serde_json::json!({"engine": engine.clone()})));
    let err = api.fails(400, "POST", "/{id}", &id, Some(&nonce), Some(serde_json::json!({"gpu": "h100"})));
    assert!(err.contains("gpu"), "{err}");
    let before = api.ok("GET", "/{id}", &id, None, None)["cold_start"]["requested_at_ms"]
        .as_u64()
        .unwrap();
    api.ok("POST", "/{id}", &id, Some(&nonce), Some(serde_json::json!({"engine": engine})));
    let updated = api.wait(&id, "started");
    assert_eq!(updated["engine"]["args"][3], "60", "{updated}");
    assert_eq!(updated["metadata"]["team"], "search", "metadata survives an update");
    let after = updated["cold_start"]["requested_at_ms"].as_u64().unwrap();
    assert!(after > before, "the update restarted the machine");

    // Restart, under the lease.
    api.fails(409, "POST", "/{id}/restart", &id, None, None);
    api.ok("POST", "/{id}/restart", &id, Some(&nonce), None);
    let restarted = api.wait(&id, "started");
    assert!(restarted["cold_start"]["requested_at_ms"].as_u64().unwrap() > after);

    // Logs (colo's own route): the end of the engine log as text, as many lines as asked.
    let r = api.call("GET", "/{id}/logs?lines=2", &id, None, None);
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().unwrap();
    assert!(!text.is_empty() && text.lines().count() <= 2, "{text:?}");
    api.fails(400, "GET", "/{id}/logs?lines=many", &id, None, None);

    // Wait: at most 60 s, 408 when the state does not come.
    let err = api.fails(400, "GET", "/{id}/wait?timeout=61", &id, None, None);
    assert!(err.contains("timeout") && err.contains("60"), "{err}");
    api.fails(408, "GET", "/{id}/wait?state=stopped&timeout=0.2", &id, None, None);

    // Start, stop and suspend are the edges' verbs: a lease does not hold them back.
    api.ok("POST", "/{id}/stop", &id, None, None);
    api.wait(&id, "stopped");
    api.ok("POST", "/{id}/start", &id, None, None);
    api.wait(&id, "started");
    api.ok("POST", "/{id}/suspend", &id, None, None);
    api.wait(&id, "suspended");
    api.ok("POST", "/{id}/start", &id, None, None);
    api.wait(&id, "started");
    assert_eq!(complete(&client, &colo.edge), 200);

    // Metadata removal, lease release, destroy.
    let r = api.call("DELETE", "/{id}/metadata/{key}", &id, Some(&nonce), None);
    assert_eq!(r.status(), 204);
    api.fails(404, "DELETE", "/{id}/metadata/{key}", &id, Some(&nonce), None);
    api.fails(409, "DELETE", "/{id}", &id, None, None);
    api.fails(409, "DELETE", "/{id}/lease", &id, Some("not-the-nonce"), None);
    api.ok("DELETE", "/{id}/lease", &id, Some(&nonce), None);
    api.fails(404, "GET", "/{id}/lease", &id, None, None);
    api.ok("DELETE", "/{id}", &id, None, None);
    api.wait(&id, "destroyed");

    // Create, as the last verb: a machine of the app on the free slot.
    let created = api.ok("POST", "", "", None, Some(serde_json::json!({"model": "tiny"})));
    let new_id = created["id"].as_str().unwrap().to_string();
    api.wait(&new_id, "started");

    // The docs: every path of Fly's list is a row, every `yes` was called above, every `no`
    // is absent.
    let rows = documented();
    for (verb, path) in FLY {
        assert!(
            rows.iter().any(|(v, p, _)| v == verb && p == path),
            "docs/MACHINES-API.md has no row for Fly's {verb} {path}"
        );
    }
    for (verb, path, has) in &rows {
        if *has {
            assert!(
                api.called.contains(&(verb.clone(), path.clone())),
                "docs/MACHINES-API.md says colo has {verb} {path:?}, and this test never called it"
            );
        } else {
            let r = api.call(verb, path, &new_id, None, Some(serde_json::json!({})));
            let status = r.status().as_u16();
            assert!(
                status == 404 || status == 405,
                "{verb} {path} is documented as absent and answered {status}"
            );
        }
    }
    colo.stop();
}
