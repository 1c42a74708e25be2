//! Only one process may serve an edge address: the edge binds with SO_REUSEPORT (one socket per
//! worker), which would let a second `colo up` of the same user bind the same port and take half
//! the connections. The second must fail at once, naming the address and the process that
//! holds it.

mod common;

use common::Colo;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_second_colo_on_a_served_edge_address_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Colo::up(&dir.path().join("first"));
    let addr = first.edge.trim_start_matches("http://").to_string();
    let mut second = Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(["up", "--edge-addr", &addr, "--data-dir"])
        .arg(dir.path().join("second"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second colo up on {addr} is still running after 30 s: it shares the address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "the second colo up succeeded: {stderr}");
    assert!(stderr.contains(&addr), "the error names the address: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "the error names the process that holds it: {stderr}"
    );
    // The first is untouched.
    let health = reqwest::blocking::get(format!("{}/health", first.edge)).unwrap();
    assert_eq!(health.status(), 200);
    first.stop();
}

/// `colo up --json` says where everything is as one JSON line for the script that started it,
/// and ends its log with "stopped".
#[test]
fn colo_up_json_prints_where_everything_is() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up_with(dir.path(), &["--json"]);
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in\n{log}"));
    let info: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(info["edges"]["local"].as_str(), Some(colo.edge.as_str()), "{info}");
    assert!(info["api"].as_str().unwrap().starts_with("http://"), "{info}");
    assert!(info["hosts"][0]["devices"].as_array().is_some_and(|d| !d.is_empty()), "{info}");
    assert!(!log.contains("colo is up"), "the table-for-people banner is left out: {log}");

    // The edge's own endpoints want the API token, as `colo edge`'s want the cluster token.
    let client = reqwest::blocking::Client::new();
    for path in ["/metrics", "/colo/routes", "/colo/load", "/colo/rtt"] {
        let bare = client.get(format!("{}{path}", colo.edge)).send().unwrap();
        assert_eq!(bare.status(), 401, "{path} without the token");
        let with = client.get(format!("{}{path}", colo.edge)).bearer_auth(colo.token()).send().unwrap();
        assert_eq!(with.status(), 200, "{path} with the token");
    }
    let health = client.get(format!("{}/health", colo.edge)).send().unwrap();
    assert_eq!(health.status(), 200, "/health stays open for load balancers");
    colo.stop();
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert!(log.trim_end().ends_with("colo: stopped"), "{log}");
}
