//! Whole GPUs leased as data: an agent that declares four H100s (`--gpus`, as on a host whose
//! cards NVML cannot see), a deploy of machines of two cards each (`--gpus-per-machine`), and
//! what the engine is told: `CUDA_VISIBLE_DEVICES` with both of its cards and `{tp}`. Real
//! processes on loopback (nats-server, s3s-fs, `colo control`, `colo agent`); the engine is the
//! tests' stand-in (tests/py/upstream.py) behind a shell line that writes down what it was told.

mod common;

use common::cluster::*;
use std::collections::BTreeSet;

#[test]
fn machines_of_two_cards_lease_them_whole_and_the_engine_sees_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, api) = start_cluster(tmp.path(), None);
    cluster.start_agent_at("ord-1", "ord", &Place::loopback(), &["--gpus", "h100-80gb-sxm=4"]);
    cluster.wait_hosts(&api, 1);
    push_tiny(&cluster, &tmp.path().join("tiny"), 0);

    let ledger = tmp.path().join("told");
    let engine = format!(
        "sh -c 'echo \"$CUDA_VISIBLE_DEVICES tp={{tp}}\" >> {}; exec {}'",
        ledger.display(),
        upstream_engine("")
    );
    let deploy = |app: &str, machines: &str, gpus: &str, engine: Option<&str>| {
        let mut args = vec![
            "deploy",
            app,
            "--model",
            "tiny",
            "--machines",
            machines,
            "--gpus-per-machine",
            gpus,
            "--timeout",
            "60",
        ];
        if let Some(engine) = engine {
            args.extend(["--engine-cmd", engine]);
        }
        cluster.cli_output(&args)
    };

    // Two machines of two cards: the planner picks the host's kind for that shape, and the four
    // cards go two and two.
    let out = deploy("big", "2", "2", Some(&engine));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("gpu h100-80gb-sxm x2 per machine"), "{stdout}");
    let machines = live_of(&cluster.machines(), "big");
    assert_eq!(machines.len(), 2, "{machines:#?}");
    let mut cards = BTreeSet::new();
    for m in &machines {
        assert_eq!(m["gpu_kind"], "h100-80gb-sxm", "{m:#}");
        let extra = m["extra_devices"].as_array().expect("a machine of two cards lists its second");
        assert_eq!(extra.len(), 1, "{m:#}");
        for device in std::iter::once(&m["device"]).chain(extra) {
            assert_eq!(device["kind"], "gpu", "{m:#}");
            assert!(cards.insert(device["index"].as_u64().unwrap()), "card leased twice: {machines:#?}");
        }
    }
    assert_eq!(cards.len(), 4);
    let told: BTreeSet<String> = std::fs::read_to_string(&ledger).unwrap().lines().map(String::from).collect();
    assert_eq!(
        told,
        BTreeSet::from(["0,1 tp=2".to_string(), "2,3 tp=2".to_string()]),
        "what the engines were told"
    );
    let table = cluster.cli(&["ps"]);
    assert!(table.contains("gpu0+gpu1") && table.contains("gpu2+gpu3"), "{table}");

    // Every card is held: another machine of two has nowhere to go, and the deploy says so.
    let out = deploy("more", "1", "2", Some(&engine));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a fifth and sixth card do not exist");
    assert!(stderr.contains("ord-1"), "names the full host: {stderr}");

    // colo's engine runs on one GPU: refused before anything is leased, naming the field.
    let out = deploy("solo", "1", "2", None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("gpus_per_machine") && stderr.contains("one GPU"), "{stderr}");

    // Destroyed, the machines give their cards back: one machine of all four fits.
    // `colo destroy` returns once they are destroyed, so the next deploy finds the cards free.
    cluster.cli(&["destroy", "big"]);
    assert!(live_of(&cluster.machines(), "big").is_empty(), "{:#?}", cluster.machines());
    let out = deploy("wide", "1", "4", Some(&engine));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wide = live_of(&cluster.machines(), "wide");
    assert_eq!(wide[0]["extra_devices"].as_array().map(Vec::len), Some(3), "{wide:#?}");
    let told = std::fs::read_to_string(&ledger).unwrap();
    assert!(told.lines().any(|l| l == "0,1,2,3 tp=4"), "{told}");
}
