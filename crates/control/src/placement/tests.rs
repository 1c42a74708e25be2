//! Table-driven checks of the fleet control hands the planner, and of what it does with the answer.

use super::*;
use colo_core::RegionDemand;

const ANY_ONE: Shape = Shape { gpu: None, gpus: 1 };

fn gpu(index: u32, kind: &str) -> (Device, Option<String>) {
    let name = Catalogue::builtin().get(kind).unwrap().name.clone();
    (
        Device::Gpu {
            index,
            name,
            memory_mib: 46068,
        },
        Some(kind.to_string()),
    )
}

fn machine(app: &str, host: &str, device: Device, state: MachineState) -> Machine {
    Machine {
        state,
        ..Machine::new(
            format!("m-{app}-{host}"),
            AppName::new(app).unwrap(),
            AppName::new("tiny").unwrap(),
            "r1".into(),
            device,
            host.into(),
            String::new(),
        )
    }
}

fn fleet_of(hosts: &[HostGpus], machines: &[Machine]) -> (Vec<String>, Vec<String>) {
    let (fleet, left_out) = fleet_for(&AppName::new("chat").unwrap(), hosts, machines, &Regions::builtin());
    let hosts = fleet
        .hosts
        .iter()
        .map(|h| format!("{} {}:{:?}", h.name, h.region, h.gpus))
        .collect();
    (hosts, left_out)
}

/// (what, hosts, machines, fleet hosts in order, hosts left out)
type FleetCase<'a> = (&'a str, Vec<HostGpus<'a>>, Vec<Machine>, Vec<&'a str>, usize);

#[test]
fn fleet_by_table() {
    let two_l40s = || vec![gpu(0, "l40s"), gpu(1, "l40s")];
    let l40s0 = gpu(0, "l40s").0;
    let cases: Vec<FleetCase> = vec![
        (
            "free GPUs by kind; CPU slots are not GPUs",
            vec![HostGpus {
                name: "h1",
                region: "ord",
                devices: vec![gpu(0, "l40s"), gpu(1, "a10"), (Device::Cpu { slot: 0 }, None)],
            }],
            vec![],
            vec![r#"h1 ord:{"a10": 1, "l40s": 1}"#],
            0,
        ),
        (
            "another app's machine holds its GPU; a destroyed one holds none",
            vec![HostGpus {
                name: "h1",
                region: "ord",
                devices: two_l40s(),
            }],
            vec![
                machine("other", "h1", l40s0.clone(), MachineState::Started),
                machine("gone", "h1", gpu(1, "l40s").0, MachineState::Destroyed),
            ],
            vec![r#"h1 ord:{"l40s": 1}"#],
            0,
        ),
        (
            "the app's own machines give their GPUs back, and their host goes first",
            vec![
                HostGpus {
                    name: "a",
                    region: "ord",
                    devices: two_l40s(),
                },
                HostGpus {
                    name: "b",
                    region: "ord",
                    devices: two_l40s(),
                },
            ],
            vec![machine("chat", "b", l40s0.clone(), MachineState::Started)],
            vec![r#"b ord:{"l40s": 2}"#, r#"a ord:{"l40s": 2}"#],
            0,
        ),
        (
            "a host in a region the RTT table lacks is left out",
            vec![
                HostGpus {
                    name: "a",
                    region: "local",
                    devices: two_l40s(),
                },
                HostGpus {
                    name: "b",
                    region: "ams",
                    devices: two_l40s(),
                },
            ],
            vec![],
            vec![r#"b ams:{"l40s": 2}"#],
            1,
        ),
    ];
    for (what, hosts, machines, want, left_out) in cases {
        let (got, out) = fleet_of(&hosts, &machines);
        assert_eq!(got, want, "{what}");
        assert_eq!(out.len(), left_out, "{what}: {out:?}");
    }
}

fn facts() -> ModelFacts {
    let path = format!("{}/../../testdata/configs/qwen2.5-0.5b/config.json", env!("CARGO_MANIFEST_DIR"));
    ModelFacts::from_config(&std::fs::read(path).unwrap()).unwrap()
}

fn demand(regions: &[&str]) -> Demand {
    Demand {
        rtt_limit_ms: Some(30.0),
        regions: regions
            .iter()
            .map(|r| RegionDemand {
                region: r.to_string(),
                requests_per_s: 1.0,
                prompt_tokens: 256,
                output_tokens: 64,
            })
            .collect(),
    }
}

fn fleet(hosts: &[(&str, &str, u32)]) -> Fleet {
    Fleet {
        hosts: hosts
            .iter()
            .map(|(name, region, n)| Host {
                name: name.to_string(),
                region: region.to_string(),
                // 0: a host with CPU slots only.
                gpus: [("l40s".to_string(), *n)].into_iter().filter(|(_, n)| *n > 0).collect(),
                cpu_slots: None,
            })
            .collect(),
        edges: Vec::new(),
        inter_region_delay_ms: 0,
    }
}

/// (what, hosts as (name, region, L40S cards), demand regions, machines as host:gpu, unmet
/// regions, what the error says)
type PlacementCase = (
    &'static str,
    Vec<(&'static str, &'static str, u32)>,
    Vec<&'static str>,
    Vec<&'static str>,
    Vec<&'static str>,
    Option<&'static str>,
);

#[test]
fn placement_by_table() {
    let regions = Regions::builtin();
    let cases: Vec<PlacementCase> = vec![
        (
            "each region served from its own host",
            vec![("ord-1", "ord", 2), ("ams-1", "ams", 2)],
            vec!["ord", "ams"],
            vec!["ams-1:l40s", "ord-1:l40s"],
            vec![],
            None,
        ),
        (
            "a region with no host in reach is unmet, the other placed",
            vec![("ord-1", "ord", 2)],
            vec!["ord", "ams"],
            vec!["ord-1:l40s"],
            vec!["ams"],
            None,
        ),
        (
            "nothing in reach at all is an error naming the reason",
            vec![("ord-1", "ord", 2)],
            vec!["ams"],
            vec![],
            vec![],
            Some("ams 1.00 req/s: no host within 30 ms of ams"),
        ),
        (
            "no GPU at all is an error that says how to declare them",
            vec![("ord-1", "ord", 0)],
            vec!["ord"],
            vec![],
            vec![],
            Some("colo agent --gpus"),
        ),
    ];
    for (what, hosts, wanted, machines, unmet, error) in cases {
        match place_demand(&facts(), &demand(&wanted), ANY_ONE, &fleet(&hosts), &regions) {
            Ok(placement) => {
                assert!(error.is_none(), "{what}: placed {placement:?}");
                let mut got: Vec<String> = placement.machines.iter().map(|m| format!("{}:{}", m.host, m.gpu)).collect();
                got.sort();
                assert_eq!(got, machines, "{what}");
                assert!(placement.machines.iter().all(|m| m.n_gpus == 1), "{what}: one card per machine");
                let got: Vec<&str> = placement.unmet.iter().map(|u| u.region.as_str()).collect();
                assert_eq!(got, unmet, "{what}");
                let record = record(&placement);
                assert_eq!(record.machines.len(), machines.len(), "{what}");
            }
            Err(e) => {
                let want = error.unwrap_or_else(|| panic!("{what}: {e}"));
                assert!(matches!(e, Unplaced::NoCapacity(_)), "{what}: {e:?}");
                assert!(e.to_string().contains(want), "{what}: {e}");
            }
        }
    }
    // GPUs that other apps hold all of.
    let mut taken = fleet(&[("ord-1", "ord", 1)]);
    taken.hosts[0].gpus.insert("l40s".into(), 0);
    let err = place_demand(&facts(), &demand(&["ord"]), ANY_ONE, &taken, &regions).unwrap_err();
    assert_eq!(err.to_string(), "every GPU of the live hosts (ord-1) is taken by other apps");
}
