//! The dashboard's snapshot: counts by state, costs at the price book's prices, what it leaves out.

use super::*;
use colo_core::{ApiKey, AppName, GpuChoice};

fn l40s(index: u32) -> Device {
    Device::Gpu {
        index,
        name: "NVIDIA L40S".into(),
        memory_mib: 46068,
    }
}

fn machine(id: &str, app: &str, state: MachineState, device: Device, region: &str) -> Machine {
    let name = AppName::new(app).unwrap();
    let mut m = Machine::new(
        id.into(),
        name.clone(),
        name,
        "r1".into(),
        device,
        format!("{region}-1"),
        region.into(),
    );
    m.state = state;
    m.desired = state;
    m.gpu_kind = matches!(m.device, Device::Gpu { .. }).then(|| "l40s".to_string());
    m
}

fn app(name: &str) -> App {
    App {
        name: AppName::new(name).unwrap(),
        model: AppName::new(name).unwrap(),
        revision: "r1".into(),
        machines: 3,
        deployed_at_ms: 0,
        version: 1,
        gpu: Some(GpuChoice {
            kind: "l40s".into(),
            quant: "bf16".into(),
            why: String::new(),
        }),
        gpus_per_machine: 1,
        soft_limit: None,
        hard_limit: None,
        autostop_secs: Some(60),
        min_running: 0,
        autostop_to: Default::default(),
        keys: vec![ApiKey {
            id: "k-1".into(),
            hash: "secret-digest".into(),
            rps: None,
            tokens_per_minute: None,
        }],
        deploy_tokens: vec!["another-secret-digest".into()],
        regions: Default::default(),
        engine_cmd: None,
        demand: None,
        placement: None,
        engine: None,
        route: None,
        route_weights: None,
    }
}

fn host(name: &str, region: &str, devices: Vec<Device>) -> HostRecord {
    HostRecord {
        name: name.into(),
        region: region.into(),
        addr: String::new(),
        devices,
        cached_models: Vec::new(),
        heartbeat_ms: 0,
        lease_ms: 0,
        lost: false,
    }
}

#[test]
fn counts_costs_and_leaves_secrets_out() {
    let catalogue = Catalogue::builtin();
    let price = catalogue.get("l40s").unwrap().price(&PRICES).unwrap().as_f64();
    let mut two_cards = machine("m-4", "chat", MachineState::Started, l40s(2), "ams");
    two_cards.extra_devices = vec![l40s(3)];
    let machines = vec![
        machine("m-1", "chat", MachineState::Started, l40s(0), "ord"),
        machine("m-2", "chat", MachineState::Stopped, l40s(1), "ord"),
        machine("m-3", "chat", MachineState::Destroyed, l40s(1), "ord"),
        two_cards,
        machine("m-5", "embed", MachineState::Started, Device::Cpu { slot: 0 }, "ord"),
    ];
    let hosts = vec![
        host("ord-1", "ord", vec![l40s(0), l40s(1), Device::Cpu { slot: 0 }]),
        host("ams-1", "ams", vec![l40s(2), l40s(3)]),
        host("dev-1", "local", vec![Device::Cpu { slot: 0 }]),
    ];
    let s = snapshot(&[app("chat"), app("embed")], &machines, &hosts, &Regions::builtin(), &catalogue, 42);
    assert_eq!(s.now_ms, 42);
    // Destroyed machines are gone; a stopped one holds no card, so it costs nothing.
    assert_eq!(s.machines.len(), 4);
    let chat = &s.apps[0];
    assert_eq!(chat.machines, BTreeMap::from([("started".into(), 2), ("stopped".into(), 1)]));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(chat.usd_per_hour.unwrap(), 3.0 * price), "one card and two: {chat:?}");
    assert_eq!(s.apps[1].usd_per_hour, None, "a CPU slot has no price");
    assert!(close(s.usd_per_hour, 3.0 * price));
    let m4 = s.machines.iter().find(|m| m.id == "m-4").unwrap();
    assert_eq!(m4.device, "gpu2+gpu3 (NVIDIA L40S)");
    assert_eq!(s.machines.iter().find(|m| m.id == "m-2").unwrap().device, "-");
    // Regions: all of them, with what is there, and one no table has, which the map cannot place.
    assert_eq!(s.regions.len(), Regions::builtin().regions.len() + 1);
    let local = s.regions.last().unwrap();
    assert_eq!((local.code.as_str(), local.lat, local.hosts), ("local", None, 1));
    let ord = s.regions.iter().find(|r| r.code == "ord").unwrap();
    assert_eq!((ord.hosts, ord.gpu_kinds.clone()), (1, vec!["l40s".to_string()]));
    assert_eq!(ord.machines.get("started"), Some(&2));
    assert!(close(ord.usd_per_hour, price));
    let ord_host = &s.hosts[0];
    assert_eq!((ord_host.devices, ord_host.devices_held, ord_host.cpu_slots), (3, 2, 1));
    // Keys are counted, never shown; deploy tokens are not mentioned at all.
    assert_eq!(chat.api_keys, 1);
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("secret-digest"), "{json}");
}

#[test]
fn the_pages_are_built_in_and_load_nothing_from_elsewhere() {
    assert!(INDEX.contains("/ui/app.js") && INDEX.contains("/ui/app.css"));
    for text in [INDEX, SCRIPT, STYLE] {
        assert!(
            !text.contains("http://") || text.contains("http://www.w3.org/2000/svg"),
            "an outside address"
        );
        assert!(!text.contains("https://"), "an outside address");
    }
    // No inline script or style: the content security policy forbids both.
    assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
}

#[test]
fn the_ledger_adds_gpu_hours_and_dollars_of_machines_holding_cards() {
    let catalogue = Catalogue::builtin();
    let mut two = machine("m2", "chat", MachineState::Started, l40s(0), "ord");
    two.extra_devices = vec![l40s(1)];
    let machines = vec![
        two,
        machine("m3", "chat", MachineState::Stopped, l40s(2), "ord"),
        machine("c1", "cpu", MachineState::Started, Device::Cpu { slot: 0 }, "ord"),
    ];
    let mut ledger = Ledger::default();
    accrue(&mut ledger, &machines, &catalogue, 1_000);
    assert_eq!(
        (ledger.since_ms, ledger.apps.len()),
        (1_000, 0),
        "the first mark only starts the count"
    );
    accrue(&mut ledger, &machines, &catalogue, 1_000 + 1_800_000);
    let chat = &ledger.apps["chat"];
    assert!(
        (chat.gpu_hours - 1.0).abs() < 1e-9,
        "two cards for half an hour, the stopped one none: {chat:?}"
    );
    let price = catalogue.get("l40s").unwrap().price(&PRICES).unwrap().as_f64();
    assert!((chat.usd - price).abs() < 1e-9, "{chat:?} at {price}/h a card");
    assert!(!ledger.apps.contains_key("cpu"), "a CPU slot is no GPU-hour");
    assert_eq!(ledger.until_ms, 1_801_000);
}

#[test]
fn the_board_keeps_each_edges_latest_figures() {
    let board = TrafficBoard::default();
    let figures = |region: &str, requests| EdgeTraffic {
        region: region.into(),
        apps: [(
            "chat".to_string(),
            AppTraffic {
                requests,
                ..AppTraffic::default()
            },
        )]
        .into_iter()
        .collect(),
    };
    board.note("colo.traffic.ord.a".into(), figures("ord", 3));
    board.note("colo.traffic.ord.a".into(), figures("ord", 5));
    board.note("colo.traffic.ams.b".into(), figures("ams", 1));
    let mut read = board.read();
    read.sort_by(|a, b| a.region.cmp(&b.region));
    assert_eq!(read.len(), 2, "one entry per edge, the latest");
    assert_eq!(read[1].apps["chat"].requests, 5);
}
