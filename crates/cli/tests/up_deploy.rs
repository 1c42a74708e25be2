//! `colo deploy` as a person sees it on a terminal (issue 15, item 4): while the machines start
//! it shows how far they have got (hydrating: bytes and rate; then the engine loading), and
//! `colo ps` shows the phase of a starting machine.

mod common;

use common::{standin, Colo};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `colo ARGS` on a pseudo-terminal (util-linux `script`), returning what it printed.
fn on_a_terminal(colo: &Colo, args: &[&str]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect();
    let line = format!(
        "{} {} --data-dir '{}'",
        env!("CARGO_BIN_EXE_colo"),
        quoted.join(" "),
        colo.data_dir.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("COLUMNS", "160")
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "colo {args:?} on a terminal failed: {text}");
    text
}

#[test]
fn deploy_shows_the_start_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let colo = Colo::up(dir.path());
    colo.push_tiny("tiny");
    let standin = standin();
    let engine = ["--engine", "vllm", "--engine-bin", standin.to_str().unwrap()];

    let mut args = vec!["deploy", "slow", "--model", "tiny"];
    args.extend_from_slice(&engine);
    args.extend_from_slice(&["--engine-args", "--flavor vllm --load-ms 1500"]);
    let shown = on_a_terminal(&colo, &args);
    assert!(shown.contains("slow: 0/1 started"), "{shown}");
    assert!(shown.contains("loading the engine"), "{shown}");
    assert!(shown.contains("deployed slow"), "{shown}");

    // Detached, the start's phase shows in `colo ps`.
    let mut args = vec!["deploy", "later", "--model", "tiny", "--detach"];
    args.extend_from_slice(&engine);
    args.extend_from_slice(&["--engine-args", "--flavor vllm --load-ms 3000"]);
    colo.ok(&args);
    let deadline = Instant::now() + Duration::from_secs(3);
    let row = loop {
        let table = colo.ok(&["ps"]);
        if let Some(row) = table.lines().find(|l| l.contains("later") && l.contains("starting: loading")) {
            break row.to_string();
        }
        assert!(Instant::now() < deadline, "no starting: loading in\n{table}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(row.contains("later"), "{row}");
    colo.stop();
}
