//! Table tests of reconciliation: machines and wants written as short lines, steps compared
//! as the text `Step` displays.

use super::*;
use colo_core::{AppName, Device, GpuChoice};

/// App `chat` serving `tiny@r1` with colo's engine, on GPUs of kind `gpu` when given.
fn app(gpu: Option<&str>) -> App {
    App {
        name: AppName::new("chat").unwrap(),
        model: AppName::new("tiny").unwrap(),
        revision: "r1".into(),
        machines: 1,
        deployed_at_ms: 0,
        version: 1,
        gpus_per_machine: 1,
        gpu: gpu.map(|kind| GpuChoice {
            kind: kind.into(),
            quant: "bf16".into(),
            why: String::new(),
        }),
        soft_limit: None,
        hard_limit: None,
        autostop_secs: None,
        min_running: 0,
        autostop_to: Default::default(),
        route_weights: None,
        keys: Vec::new(),
        deploy_tokens: Vec::new(),
        regions: BTreeMap::new(),
        engine_cmd: None,
        demand: None,
        placement: None,
        route: None,
        engine: None,
    }
}

/// `"[app.]id host region kind revision state[/desired]"`: `-` for no GPU kind; the app is
/// `chat` unless named, the desired state `started` unless given.
fn machine(line: &str) -> (Machine, Option<String>) {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (app, id) = f[0].split_once('.').unwrap_or(("chat", f[0]));
    let (state, desired) = f[5].split_once('/').unwrap_or((f[5], "started"));
    let mut m = Machine::new(
        id.into(),
        AppName::new(app).unwrap(),
        AppName::new("tiny").unwrap(),
        f[4].into(),
        Device::Cpu { slot: 0 },
        f[1].into(),
        f[2].into(),
    );
    m.state = MachineState::parse(state).unwrap();
    m.desired = MachineState::parse(desired).unwrap();
    (m, (f[3] != "-").then(|| f[3].to_string()))
}

/// `"region/host/gpu:count"` (`*` for any) or `"region:count"`.
fn want(line: &str) -> Want {
    let (slot, count) = line.split_once(':').unwrap();
    let mut parts = slot.split('/').map(|p| (p != "*").then(|| p.to_string()));
    Want {
        slot: Slot {
            region: parts.next().flatten(),
            host: parts.next().flatten(),
            gpu: parts.next().flatten(),
        },
        count: count.parse().unwrap(),
    }
}

fn run(app: &App, wants: &[&str], machines: &[&str]) -> Vec<String> {
    let wants: Vec<Want> = wants.iter().map(|w| want(w)).collect();
    let read: Vec<(Machine, Option<String>)> = machines.iter().map(|m| machine(m)).collect();
    let held: Vec<Held> = read
        .iter()
        .map(|(machine, gpu)| Held {
            machine,
            gpu: gpu.as_deref(),
        })
        .collect();
    plan(app, &wants, &held).iter().map(|s| s.to_string()).collect()
}

/// (what, the app's GPU kind, wants, machines on the live hosts, steps)
type PlanCase<'a> = (&'a str, Option<&'a str>, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

#[test]
fn plans_by_table() {
    let cases: &[PlanCase] = &[
        (
            "nothing yet: every wanted machine is created",
            None,
            &["*:2"],
            &[],
            &["create */*/*", "create */*/*"],
        ),
        (
            "in line: nothing to do",
            None,
            &["*:2"],
            &["m1 h1 fra - r1 started", "m2 h2 fra - r1 started"],
            &[],
        ),
        (
            "surplus: stopped ones go first, then those on the hosts with the fewest of the app's machines",
            None,
            &["*:2"],
            &[
                "m1 h1 fra - r1 started",
                "m2 h1 fra - r1 started",
                "m3 h2 fra - r1 started",
                "m4 h1 fra - r1 stopped/stopped",
            ],
            &["destroy m3@h2", "destroy m4@h1"],
        ),
        (
            "a want of none destroys them all",
            None,
            &["*:0"],
            &["m1 h1 fra - r1 started"],
            &["destroy m1@h1"],
        ),
        (
            "kept machines not meant to run, or failed, are started; starting ones are left alone",
            None,
            &["*:3"],
            &["m1 h1 fra - r1 stopped/stopped", "m2 h1 fra - r1 failed", "m3 h2 fra - r1 starting"],
            &["start m1@h1", "start m2@h1"],
        ),
        (
            "rollout: each new machine replaces an old one",
            None,
            &["*:2"],
            &["m1 h1 fra - r0 started", "m2 h2 fra - r0 started"],
            &["replace m1@h1 in */*/*", "replace m2@h2 in */*/*"],
        ),
        (
            "rollout to fewer machines: old ones left over are destroyed last",
            None,
            &["*:1"],
            &["m1 h1 fra - r0 started", "m2 h2 fra - r0 started"],
            &["replace m1@h1 in */*/*", "destroy m2@h2"],
        ),
        (
            "rollout half done: only the old machine is replaced",
            None,
            &["*:2"],
            &["m1 h1 fra - r0 started", "m3 h2 fra - r1 started"],
            &["replace m1@h1 in */*/*"],
        ),
        (
            "per region: a new machine replaces an old one of its own region only",
            None,
            &["ams:1", "fra:1"],
            &["m1 h1 fra - r0 started"],
            &["create ams/*/*", "replace m1@h1 in fra/*/*"],
        ),
        (
            "a region no longer listed: its machine moves, destroyed once the new one exists",
            None,
            &["fra:1"],
            &["m1 h9 ams - r1 started"],
            &["create fra/*/*", "destroy m1@h9"],
        ),
        (
            "old revisions are replaced before machines no want holds",
            None,
            &["fra:2"],
            &["m1 h1 ams - r1 started", "m2 h2 fra - r0 started", "m3 h3 fra - r0 started"],
            &["replace m2@h2 in fra/*/*", "replace m3@h3 in fra/*/*", "destroy m1@h1"],
        ),
        (
            "surplus, then starts, then creates, want by want",
            None,
            &["ams:1", "fra:1"],
            &["m1 h1 ams - r1 stopped/stopped", "m2 h1 ams - r1 started", "m3 h2 fra - r0 started"],
            &["destroy m1@h1", "replace m3@h2 in fra/*/*"],
        ),
        (
            "a machine on a GPU of another kind than the app's is replaced",
            Some("l40s"),
            &["*:1"],
            &["m1 h1 fra a10 r1 started"],
            &["replace m1@h1 in */*/*"],
        ),
        (
            "placement: a machine off its slot moves to the slot, within its region",
            None,
            &["fra/h1/l40s:1", "fra/h2/l40s:1"],
            &["m1 h1 fra l40s r1 started", "m2 h3 fra l40s r1 started"],
            &["replace m2@h3 in fra/h2/l40s"],
        ),
        (
            "placement: a slot does not hold a machine on another GPU kind",
            None,
            &["fra/h1/l40s:1"],
            &["m1 h1 fra a10 r1 started"],
            &["replace m1@h1 in fra/h1/l40s"],
        ),
        (
            "destroyed machines and other apps' machines are not the app's",
            None,
            &["*:1"],
            &["m1 h1 fra - r1 destroyed", "other.m2 h1 fra - r1 started"],
            &["create */*/*"],
        ),
    ];
    for (what, gpu, wants, machines, expected) in cases {
        assert_eq!(run(&app(*gpu), wants, machines), *expected, "{what}");
    }
}

#[test]
fn machines_autostop_parked_are_left_to_the_edges() {
    let autostops = App {
        autostop_secs: Some(60),
        ..app(None)
    };
    let machines = [
        "m1 h1 fra - r1 stopped/stopped",
        "m2 h1 fra - r1 suspended/suspended",
        "m3 h2 fra - r1 failed",
        "m4 h2 fra - r1 started",
    ];
    assert_eq!(run(&autostops, &["*:4"], &machines), ["start m3@h2"]);
    assert_eq!(run(&app(None), &["*:4"], &machines), ["start m1@h1", "start m2@h1", "start m3@h2"]);
}

#[test]
fn another_model_or_engine_is_an_old_machine() {
    let engine = App {
        engine_cmd: Some("serve --port {port}".into()),
        ..app(None)
    };
    assert_eq!(run(&engine, &["*:1"], &["m1 h1 fra - r1 started"]), ["replace m1@h1 in */*/*"]);
    let (mut other_model, _) = machine("m1 h1 fra - r1 started");
    other_model.model = AppName::new("big").unwrap();
    let held = [Held {
        machine: &other_model,
        gpu: None,
    }];
    let steps: Vec<String> = plan(&app(None), &Want::anywhere(1), &held).iter().map(|s| s.to_string()).collect();
    assert_eq!(steps, ["replace m1@h1 in */*/*"]);
    // A redeploy with two cards per machine replaces a machine of one.
    let tensor_parallel = App {
        gpus_per_machine: 2,
        ..app(None)
    };
    assert_eq!(
        run(&tensor_parallel, &["*:1"], &["m1 h1 fra - r1 started"]),
        ["replace m1@h1 in */*/*"]
    );
    assert_eq!(run(&app(None), &["*:1"], &["m1 h1 fra - r1 started"]), Vec::<String>::new());
}

#[test]
fn wants_from_counts_and_placements() {
    let regions: BTreeMap<String, u32> = [("fra".to_string(), 2), ("ams".to_string(), 1)].into_iter().collect();
    assert_eq!(Want::per_region(&regions), [want("ams:1"), want("fra:2")]);
    assert_eq!(Want::anywhere(3), [want("*:3")]);
    let placed = |host: &str, region: &str, gpu: &str| PlacedMachine {
        host: host.into(),
        region: region.into(),
        gpu: gpu.into(),
        n_gpus: 1,
        quant: colo_model::Quant::Bf16,
        usd_per_hour: 1.0,
        serves: BTreeMap::new(),
        load: 0.5,
    };
    let machines = [
        placed("h2", "fra", "l40s"),
        placed("h1", "fra", "l40s"),
        placed("h2", "fra", "l40s"),
        placed("h9", "ams", "a10"),
    ];
    assert_eq!(
        Want::placed(&machines),
        [want("ams/h9/a10:1"), want("fra/h1/l40s:1"), want("fra/h2/l40s:2")]
    );
}

#[test]
fn spreads_by_table() {
    // (rooms as (host, the app's machines, free devices), the order to ask them in)
    type SpreadCase<'a> = (&'a [(&'a str, usize, usize)], &'a [&'a str]);
    let cases: &[SpreadCase] = &[
        (&[], &[]),
        (&[("h1", 1, 2), ("h2", 0, 1)], &["h2", "h1"]),
        (&[("h1", 0, 1), ("h2", 0, 3)], &["h2", "h1"]),
        (&[("h2", 0, 3), ("h1", 0, 3)], &["h1", "h2"]),
        (
            &[("h1", 1, 2), ("h2", 0, 1), ("h3", 0, 3), ("h4", 0, 3), ("h5", 0, 0)],
            &["h3", "h4", "h2", "h5", "h1"],
        ),
    ];
    for (rooms, expected) in cases {
        let rooms: Vec<Room> = rooms
            .iter()
            .map(|&(host, app_machines, free_devices)| Room {
                host,
                app_machines,
                free_devices,
            })
            .collect();
        let order: Vec<&str> = spread(&rooms).into_iter().map(|i| rooms[i].host).collect();
        assert_eq!(order, *expected, "{rooms:?}");
    }
}

fn host(name: &str, heartbeat_ms: u64, lease_ms: u64, lost: bool) -> HostRecord {
    HostRecord {
        name: name.into(),
        region: "fra".into(),
        addr: String::new(),
        devices: Vec::new(),
        cached_models: Vec::new(),
        heartbeat_ms,
        lease_ms,
        lost,
    }
}

#[test]
fn judges_leases_by_table() {
    // (heartbeat, lease, already lost, now, reachable since, lost now)
    let cases = [
        (1_000, 500, false, 1_400, 0, false),
        (1_000, 500, false, 2_000, 0, true),
        (1_000, 500, true, 2_000, 0, false),
        (1_000, 500, false, 2_000, 1_600, false),
        (1_000, 500, false, 2_000, 1_500, false),
        (1_000, 500, false, 2_000, 1_499, true),
        (1_000, 500, false, 2_000, 3_000, false),
    ];
    for (heartbeat, lease, lost, now, since, want) in cases {
        let hosts = [host("h1", heartbeat, lease, lost)];
        let found = lost_hosts(&hosts, now, since);
        assert_eq!(
            !found.is_empty(),
            want,
            "heartbeat {heartbeat} lease {lease} lost {lost} now {now} since {since}"
        );
    }
    let hosts = [
        host("h3", 1_000, 500, false),
        host("h1", 1_000, 5_000, false),
        host("h2", 1_000, 5_000, true),
        host("h0", 1_000, 500, false),
    ];
    assert_eq!(live_hosts(&hosts, 2_000), ["h1"]);
    assert_eq!(live_hosts(&hosts, 1_200), ["h0", "h1", "h3"]);
}
