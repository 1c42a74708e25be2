//! Table-driven checks of placement: where machines go, what is shared, what is left unmet.

use super::*;
use colo_core::PriceBook;

fn facts() -> ModelFacts {
    let path = format!("{}/../../testdata/configs/llama-3.1-8b/config.json", env!("CARGO_MANIFEST_DIR"));
    ModelFacts::from_config(&std::fs::read(path).unwrap()).unwrap()
}

fn host(name: &str, region: &str, gpus: &[(&str, u32)]) -> Host {
    Host {
        name: name.into(),
        region: region.into(),
        gpus: gpus.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        cpu_slots: None,
    }
}

fn want(region: &str, requests_per_s: f64) -> RegionDemand {
    RegionDemand {
        region: region.into(),
        requests_per_s,
        prompt_tokens: 1024,
        output_tokens: 256,
    }
}

fn template() -> PlanRequest {
    PlanRequest {
        prices: PriceBook::Fly2024,
        quants: vec![Quant::Bf16],
        ..Default::default()
    }
}

fn run(hosts: Vec<Host>, regions: Vec<RegionDemand>, rtt: f64) -> Result<Placement, PlacementError> {
    let fleet = Fleet {
        hosts,
        edges: Vec::new(),
        inter_region_delay_ms: 0,
    };
    let demand = Demand {
        rtt_limit_ms: None,
        regions,
    };
    place(
        &facts(),
        &Catalogue::builtin(),
        &Regions::builtin(),
        &fleet,
        &demand,
        &template(),
        rtt,
    )
}

/// Machines as "host:gpu xn" strings, sorted, for comparison.
fn shape(p: &Placement) -> Vec<String> {
    let mut out: Vec<String> = p.machines.iter().map(|m| format!("{}:{} x{}", m.host, m.gpu, m.n_gpus)).collect();
    out.sort();
    out
}

/// (what, hosts, demand, RTT limit in ms, machines placed as `host:gpu xN`, unmet regions
/// with words their reason contains)
type PlacementCase<'a> = (&'a str, Vec<Host>, Vec<RegionDemand>, f64, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn placements_by_table() {
    let ord = || host("ord-1", "ord", &[("a10", 8), ("l40s", 2)]);
    let cases: Vec<PlacementCase> = vec![
        (
            "small demand: one cheap machine",
            vec![ord()],
            vec![want("ord", 0.2)],
            50.0,
            vec!["ord-1:l40s x1"],
            vec![],
        ),
        (
            "two regions share one machine in reach",
            vec![ord()],
            vec![want("ord", 0.05), want("iad", 0.05)],
            30.0,
            vec!["ord-1:l40s x1"],
            vec![],
        ),
        (
            "caller too far",
            vec![ord()],
            vec![want("syd", 1.0)],
            50.0,
            vec![],
            vec![("syd", "no host within 50 ms of syd (nearest: ord-1 in ord")],
        ),
        (
            "GPUs run out",
            vec![host("ord-1", "ord", &[("l40s", 1)])],
            vec![want("ord", 50.0)],
            50.0,
            vec!["ord-1:l40s x1"],
            vec![("ord", "the free GPUs within 50 ms of ord ran out")],
        ),
        (
            "nothing in reach has a price (Fly sold no H100s)",
            vec![host("ams-1", "ams", &[("h100-80gb-sxm", 1)]), host("ord-1", "ord", &[("a10", 1)])],
            vec![want("fra", 0.1)],
            20.0,
            vec![],
            vec![("fra", "no GPU kind within reach (h100-80gb-sxm) holds the model with a price")],
        ),
    ];
    for (what, hosts, regions, rtt, machines, unmet) in cases {
        let placement = run(hosts, regions, rtt).unwrap();
        assert_eq!(shape(&placement), machines, "{what}: {placement:#?}");
        assert_eq!(placement.unmet.len(), unmet.len(), "{what}: {:?}", placement.unmet);
        for (u, (region, reason)) in placement.unmet.iter().zip(unmet) {
            assert_eq!(u.region, region, "{what}");
            assert!(u.reason.contains(reason), "{what}: {:?} lacks {reason:?}", u.reason);
        }
        let total: f64 = placement.machines.iter().map(|m| m.usd_per_hour).sum();
        assert!((placement.usd_per_hour - total).abs() < 1e-9);
        assert!(placement.machines.iter().all(|m| m.load > 0.0 && m.load <= 1.0 + 1e-9), "{what}");
    }
}

/// (what, hosts, demand, RTT limit in ms, words the error contains)
type ProblemCase<'a> = (&'a str, Vec<Host>, Vec<RegionDemand>, f64, &'a [&'a str]);

#[test]
fn bad_fleet_and_demand_name_fields() {
    let cases: Vec<ProblemCase> = vec![
        (
            "empty fleet",
            vec![],
            vec![want("ord", 1.0)],
            50.0,
            &["fleet.hosts: the fleet is empty"],
        ),
        (
            "bad host",
            vec![host("", "xyz", &[("tpu", 1)]), host("b", "ord", &[])],
            vec![want("ord", 1.0)],
            50.0,
            &[
                "fleet.hosts[0].name: empty",
                "fleet.hosts[0].region: unknown region \"xyz\"",
                "fleet.hosts[0].gpus.tpu: unknown GPU kind",
            ],
        ),
        (
            "bad demand",
            vec![host("a", "ord", &[("l40s", 1)])],
            vec![RegionDemand {
                region: "mars".into(),
                requests_per_s: f64::NAN,
                prompt_tokens: 0,
                output_tokens: 1,
            }],
            -1.0,
            &[
                "demand.regions[0].region: unknown region \"mars\"",
                "requests_per_s: NaN",
                "prompt_tokens: must be at least 1",
                "rtt_limit_ms: -1",
            ],
        ),
        (
            "no demand",
            vec![host("a", "ord", &[("l40s", 1)])],
            vec![],
            50.0,
            &["demand.regions: no demand"],
        ),
    ];
    for (what, hosts, regions, rtt, needles) in cases {
        let err = run(hosts, regions, rtt).expect_err(what).to_string();
        for needle in needles {
            assert!(err.contains(needle), "{what}: {err} lacks {needle:?}");
        }
    }
}

#[test]
fn fleet_toml_rejects_unknown_keys() {
    let ok: Fleet = toml::from_str("[[hosts]]\nname = \"a\"\nregion = \"ord\"\ngpus = { l40s = 2 }\n").unwrap();
    assert_eq!(ok.hosts[0].gpus["l40s"], 2);
    let err = toml::from_str::<Fleet>("[[hosts]]\nname = \"a\"\nregoin = \"ord\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("regoin"), "{err}");
    let err = toml::from_str::<Demand>("[[regions]]\nregion = \"ord\"\nrequests_per_s = 1\nprompt_tokens = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("output_tokens"), "{err}");
}
