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
