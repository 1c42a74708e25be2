//! Table tests of the route table: which machines are routable, what the scaler is told of
//! each, and that loads follow machines from one table to the next.

use super::*;
use colo_core::{AppName, Device, HostRecord};

fn app(name: &str) -> App {
    serde_json::from_value(serde_json::json!({
        "name": name, "model": "m", "revision": "r1", "machines": 1, "deployed_at_ms": 0,
        "soft_limit": 3, "autostop_secs": 60, "min_running": 1,
    }))
    .unwrap()
}

/// A machine of app `a` on `host` in `region`, in `state` (desired `desired`).
fn machine(id: &str, host: &str, region: &str, state: MachineState, desired: MachineState) -> Machine {
    let name = AppName::new("a").unwrap();
    let mut m = Machine::new(
        id.into(),
        name.clone(),
        name,
        "r1".into(),
        Device::Cpu { slot: 0 },
        host.into(),
        region.into(),
    );
    m.state = state;
    m.desired = desired;
    m.addr = (state == MachineState::Started).then(|| format!("127.0.0.1:{}", 9000 + id.len()));
    m
}

fn lost(name: &str) -> HostRecord {
    serde_json::from_value(serde_json::json!({"name": name, "region": "ord", "addr": "http://x", "lost": true})).unwrap()
}

#[test]
fn machines_by_state() {
    use MachineState::*;
    let mut sick = machine("sick", "h1", "ord", Started, Started);
    sick.healthy = false;
    let machines = vec![
        machine("up", "h1", "ord", Started, Started),
        sick,
        machine("draining", "h1", "ord", Started, Stopped),
        machine("booting", "h2", "ams", Starting, Started),
        machine("asked", "h2", "ams", Stopped, Started),
        machine("asleep", "h1", "syd", Stopped, Stopped),
        machine("cold", "h3", "syd", Created, Stopped),
        machine("broken", "h1", "ord", Failed, Started),
        machine("gone", "h1", "ord", Destroyed, Destroyed),
        machine("on-lost", "lost-host", "iad", Started, Started),
    ];
    let table = RouteTable::build_with_hosts(&[app("a")], &machines, &[lost("lost-host")]);
    let routes = &table.apps["a"];
    let routable: Vec<&str> = routes.machines.iter().map(|m| m.machine_id.as_str()).collect();
    assert_eq!(routable, vec!["up"]);
    let fleet: Vec<(&str, Phase, bool)> = routes.fleet.iter().map(|m| (m.machine_id.as_str(), m.phase, m.cached)).collect();
    assert_eq!(
        fleet,
        vec![
            ("up", Phase::Started, true),
            ("sick", Phase::Started, true),
            ("draining", Phase::Stopping, true),
            ("booting", Phase::Starting, true),
            ("asked", Phase::Starting, true),
            ("asleep", Phase::Stopped, true),
            ("cold", Phase::Stopped, false),
            ("broken", Phase::Failed, true),
        ],
        "h1 and h2 have run r1; h3 has not"
    );
    assert_eq!(
        table.regions,
        vec!["ams", "ord", "syd"],
        "the lost host's region is not in the table"
    );
    let dormant: Vec<&str> = routes.dormant.iter().map(|r| table.regions[r.0 as usize].as_str()).collect();
    assert_eq!(dormant, vec!["ams", "syd"]);
    assert_eq!(routes.limits, Limits { soft: Some(3), hard: None });
    assert_eq!(
        routes.autostop,
        Autostop {
            after_secs: Some(60),
            min_running: 1,
            to: colo_core::IdleAction::Stop,
        }
    );
    assert_eq!(routes.index_of("up"), Some(0));
    assert_eq!(routes.index_of("sick"), None);
}

#[test]
fn endpoints_follow_machines_and_loads_do_not_make_tables_differ() {
    use MachineState::*;
    let first = RouteTable::build(&[app("a")], &[machine("m1", "h", "ord", Started, Started)]);
    first.apps["a"].machines[0]
        .load
        .in_flight
        .store(7, std::sync::atomic::Ordering::Relaxed);
    let same = RouteTable::build(&[app("a")], &[machine("m1", "h", "ord", Started, Started)]);
    assert_eq!(first, same, "a fresh load is not a change");
    let mut next = RouteTable::build(
        &[app("a")],
        &[
            machine("m1", "h", "ord", Started, Started),
            machine("m22", "h", "ord", Started, Started),
        ],
    );
    next.adopt_endpoints(&first);
    let routes = &next.apps["a"];
    assert!(
        Arc::ptr_eq(&routes.machines[0], &first.apps["a"].machines[0]),
        "unchanged: the same endpoint"
    );
    assert_eq!(routes.machines[1].load.in_flight.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!((routes.index_of("m1"), routes.index_of("m22")), (Some(0), Some(1)));
    // A machine whose record changed (it restarted) gets a new endpoint; requests under way
    // stay counted on the old one.
    let mut restarted = machine("m1", "h", "ord", Started, Started);
    restarted.updated_at_ms = 99;
    let mut after = RouteTable::build(&[app("a")], &[restarted]);
    after.adopt_endpoints(&next);
    assert!(!Arc::ptr_eq(&after.apps["a"].machines[0], &next.apps["a"].machines[0]));
    assert_eq!(
        after.apps["a"].machines[0]
            .load
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
