//! Table tests of the routing pick: situations and the decision each should get.

use super::*;

const AMS: u16 = 0;
const FRA: u16 = 1;
const LHR: u16 = 2;
const IAD: u16 = 3;
/// RTT from an edge in ams; region 7 is past the end of the row.
const RTT: [u32; 4] = [0, 8, 8, 80];
const NOW: u64 = 100_000;

/// One started machine of a situation.
#[derive(Clone, Copy)]
struct M {
    name: &'static str,
    region: u16,
    load: MachineLoad,
}

fn m(name: &'static str, region: u16, in_flight: u32) -> M {
    M {
        name,
        region,
        load: MachineLoad {
            healthy: true,
            in_flight,
            report: None,
        },
    }
}

impl M {
    /// An engine report of no requests and this KV use (thousandths), received just now.
    fn kv(mut self, permille: u16) -> M {
        self.load.report = Some(LoadReport {
            running: 0,
            waiting: 0,
            kv_permille: Some(permille),
            at_ms: NOW,
        });
        self
    }
    fn sick(mut self) -> M {
        self.load.healthy = false;
        self
    }
    /// An engine report of `requests` running, received `age_ms` before `NOW`.
    fn reported(mut self, requests: u32, age_ms: u64) -> M {
        self.load.report = Some(LoadReport {
            kv_permille: None,
            running: requests,
            waiting: 0,
            at_ms: NOW - age_ms,
        });
        self
    }
}

fn params() -> RouteParams {
    RouteParams {
        soft_limit: 2,
        hard_limit: 4,
        report_fresh_ms: 1_000,
        report_stale_ms: 5_000,
        local_rtt_ms: 0,
        mode: RouteMode::Score,
        weights: ScoreWeights::default(),
        scan_limit: 0,
    }
}

/// A situation beyond its machines: steering, affinity, machines avoided or required, regions
/// with machines not started.
#[derive(Clone, Default)]
struct Extra {
    steer: Steer,
    /// Machines that served the prompt's start: (name, blocks of the prompt's 4).
    prefix: Vec<(&'static str, u32)>,
    mode: Option<RouteMode>,
    dormant: Vec<RegionId>,
    avoid: Vec<&'static str>,
    only: Option<&'static str>,
    local_rtt_ms: Option<u32>,
    weights: Option<ScoreWeights>,
}

fn run(machines: &[M], extra: &Extra, seed: u64) -> String {
    let mut sorted = machines.to_vec();
    let spans = group_by_region(&mut sorted, |m| RegionId(m.region));
    let loads: Vec<MachineLoad> = sorted.iter().map(|m| m.load).collect();
    let mut p = params();
    if let Some(local) = extra.local_rtt_ms {
        p.local_rtt_ms = local;
    }
    if let Some(mode) = extra.mode {
        p.mode = mode;
    }
    if let Some(weights) = extra.weights {
        p.weights = weights;
    }
    let app = AppView {
        started: &loads,
        spans: &spans,
        dormant: &extra.dormant,
    };
    let position = |name: &str| sorted.iter().position(|m| m.name == name);
    let avoid: Vec<usize> = extra.avoid.iter().filter_map(|name| position(name)).collect();
    let prefix: Vec<(usize, u32)> = extra.prefix.iter().filter_map(|(name, n)| Some((position(name)?, *n))).collect();
    let req = PickRequest {
        now_ms: NOW,
        rtt_ms: &RTT,
        steer: extra.steer,
        prefix: &prefix,
        prefix_blocks: 4,
        seed,
        avoid: &avoid,
        only: extra.only.and_then(position),
    };
    match pick(&app, &req, &p) {
        Decision::Pick(idx) => format!("pick {}", sorted[idx].name),
        Decision::Hold => "hold".to_string(),
        Decision::Reject(reason) => format!("reject: {reason}"),
    }
}

#[test]
fn picks_by_table() {
    let prefer = |r| Extra {
        steer: Steer {
            prefer: Some(RegionId(r)),
            force: None,
        },
        ..Extra::default()
    };
    let force = |r| Extra {
        steer: Steer {
            prefer: None,
            force: Some(RegionId(r)),
        },
        ..Extra::default()
    };
    let affine = |name| Extra {
        prefix: vec![(name, 4)],
        ..Extra::default()
    };
    let half = |name| Extra {
        prefix: vec![(name, 2)],
        ..Extra::default()
    };
    let least_loaded = |name| Extra {
        mode: Some(RouteMode::LeastLoaded),
        ..affine(name)
    };
    let local_band = Extra {
        local_rtt_ms: Some(10),
        ..Extra::default()
    };
    let half_in_band = |name| Extra {
        local_rtt_ms: Some(10),
        ..half(name)
    };
    let rtt_heavy = |name| Extra {
        weights: Some(ScoreWeights {
            rtt: 100,
            ..ScoreWeights::default()
        }),
        ..half_in_band(name)
    };
    let none = Extra::default();
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<M>, Extra, &str)> = vec![
        ("no machines at all", vec![], none.clone(), "reject: the app has no machines"),
        ("least loaded local", vec![m("a", AMS, 1), m("b", AMS, 0)], none.clone(), "pick b"),
        ("under soft before over soft", vec![m("a", AMS, 3), m("b", AMS, 1)], none.clone(), "pick b"),
        ("local over soft beats remote idle", vec![m("a", AMS, 3), m("b", FRA, 0)], none.clone(), "pick a"),
        ("spill when local at hard", vec![m("a", AMS, 4), m("b", FRA, 1)], none.clone(), "pick b"),
        ("spill when local unhealthy", vec![m("a", AMS, 0).sick(), m("b", FRA, 3)], none.clone(), "pick b"),
        ("spill to the next-closest", vec![m("a", AMS, 4), m("c", IAD, 0), m("b", FRA, 3)], none.clone(), "pick b"),
        ("equal-RTT regions pool", vec![m("a", AMS, 4), m("b", FRA, 2), m("c", LHR, 1)], none.clone(), "pick c"),
        ("local band pools near regions", vec![m("a", AMS, 3), m("b", FRA, 0)], local_band.clone(), "pick b"),
        ("in a pool, RTT breaks load ties", vec![m("b", FRA, 1), m("a", AMS, 1)], local_band.clone(), "pick a"),
        ("unknown region is farthest", vec![m("a", AMS, 4), m("x", 7, 0), m("c", IAD, 3)], none.clone(), "pick c"),
        ("prefer region first", vec![m("a", AMS, 0), m("b", FRA, 1)], prefer(FRA), "pick b"),
        ("preferred region full: nearest", vec![m("a", AMS, 2), m("b", FRA, 4), m("c", IAD, 0)], prefer(FRA), "pick a"),
        ("force region", vec![m("a", AMS, 0), m("c", IAD, 3)], force(IAD), "pick c"),
        ("forced region full: hold", vec![m("a", AMS, 0), m("c", IAD, 4)], force(IAD), "hold"),
        ("forced region empty: reject", vec![m("a", AMS, 0)], force(IAD), "reject: the app has no machine in the forced region RegionId(3)"),
        ("fresh report counts", vec![m("a", AMS, 0).reported(3, 500), m("b", AMS, 1)], none.clone(), "pick b"),
        ("stale report ignored", vec![m("a", AMS, 0).reported(9, 6_000), m("b", AMS, 1)], none.clone(), "pick a"),
        ("ageing report counts half", vec![m("a", AMS, 0).reported(4, 3_000), m("b", AMS, 1)], none.clone(), "pick b"),
        ("ageing report nearly gone", vec![m("a", AMS, 0).reported(4, 4_500), m("b", AMS, 1)], none.clone(), "pick a"),
        ("in flight above report wins", vec![m("a", AMS, 3).reported(1, 0), m("b", AMS, 2)], none.clone(), "pick b"),
        ("report at hard excludes", vec![m("a", AMS, 0).reported(4, 0), m("b", FRA, 3)], none.clone(), "pick b"),
        ("prefix beats a lighter machine", vec![m("a", AMS, 0), m("b", AMS, 1)], affine("b"), "pick b"),
        ("half a prefix beats a lighter machine", vec![m("a", AMS, 0), m("b", AMS, 1)], half("b"), "pick b"),
        ("a whole prefix is worth more than a soft limit of load", vec![m("a", AMS, 1), m("b", AMS, 3)], affine("b"), "pick b"),
        ("and no more than a soft limit and a half", vec![m("a", AMS, 0), m("b", AMS, 3)], affine("b"), "pick a"),
        ("half a prefix against a soft limit of load", vec![m("a", AMS, 0), m("b", AMS, 2)], half("b"), "pick a"),
        ("prefix in a farther region of the pool", vec![m("a", AMS, 0), m("b", FRA, 0)], half_in_band("b"), "pick b"),
        ("prefix in a farther region, RTT weighed heavily", vec![m("a", AMS, 0), m("b", FRA, 0)], rtt_heavy("b"), "pick a"),
        ("least loaded ignores the prefix", vec![m("a", AMS, 0), m("b", AMS, 1)], least_loaded("b"), "pick a"),
        ("prefix against a full KV cache", vec![m("a", AMS, 0).kv(0), m("b", AMS, 1).kv(1000)], half("b"), "pick a"),
        ("prefix outside the pool", vec![m("a", AMS, 1), m("b", FRA, 0)], affine("b"), "pick a"),
        ("prefix at hard", vec![m("a", AMS, 3), m("b", AMS, 4)], affine("b"), "pick a"),
        ("prefix unhealthy", vec![m("a", AMS, 1), m("b", AMS, 0).sick()], affine("b"), "pick a"),
        ("all full, nothing stopped: hold", vec![m("a", AMS, 4), m("b", FRA, 5)], none.clone(), "hold"),
        ("all unhealthy: hold", vec![m("a", AMS, 0).sick()], none.clone(), "hold"),
    ];
    for (what, machines, extra, expected) in cases {
        assert_eq!(run(&machines, &extra, 0), expected, "{what}");
    }
}

#[test]
fn holds_and_rejects_by_table() {
    let full = vec![m("a", AMS, 4)];
    let dormant = |regions: &[u16]| Extra {
        dormant: regions.iter().map(|&r| RegionId(r)).collect(),
        ..Extra::default()
    };
    let forced = |region: u16, regions: &[u16]| Extra {
        steer: Steer {
            prefer: None,
            force: Some(RegionId(region)),
        },
        ..dormant(regions)
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<M>, Extra, &str)> = vec![
        ("full, machines stopped elsewhere: hold", full.clone(), dormant(&[IAD]), "hold"),
        ("no started machine, one stopped: hold", vec![], dormant(&[FRA]), "hold"),
        ("nothing at all", vec![], dormant(&[]), "reject: the app has no machines"),
        ("room left", vec![m("a", AMS, 3)], dormant(&[AMS]), "pick a"),
        ("forced region dormant: hold", full.clone(), forced(IAD, &[IAD]), "hold"),
        ("forced region with nothing", full.clone(), forced(IAD, &[FRA]), "reject: the app has no machine in the forced region RegionId(3)"),
    ];
    for (what, machines, extra, expected) in cases {
        assert_eq!(run(&machines, &extra, 0), expected, "{what}");
    }
}

#[test]
fn avoided_and_required_machines_by_table() {
    let machines = vec![m("a", AMS, 0), m("b", AMS, 1), m("c", FRA, 0)];
    let avoid = |names: &[&'static str]| Extra {
        avoid: names.to_vec(),
        ..Extra::default()
    };
    let only = |name: &'static str| Extra {
        only: Some(name),
        ..Extra::default()
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<M>, Extra, &str)> = vec![
        ("the failed machine is passed over", machines.clone(), avoid(&["a"]), "pick b"),
        ("every local one failed: spill", machines.clone(), avoid(&["a", "b"]), "pick c"),
        ("all failed: hold", machines.clone(), avoid(&["a", "b", "c"]), "hold"),
        ("bound to a busier machine", machines.clone(), only("b"), "pick b"),
        ("bound to a machine elsewhere", machines.clone(), only("c"), "pick c"),
        ("bound to a full machine: hold", vec![m("a", AMS, 0), m("b", AMS, 4)], only("b"), "hold"),
        ("prefix on an avoided machine", machines.clone(), Extra { prefix: vec![("b", 4)], ..avoid(&["b"]) }, "pick a"),
    ];
    for (what, machines, extra, expected) in cases {
        assert_eq!(run(&machines, &extra, 0), expected, "{what}");
    }
}

#[test]
fn round_robin_takes_machines_in_turn_whatever_their_load() {
    let machines = vec![m("a", AMS, 0), m("b", AMS, 3), m("c", AMS, 1), m("d", AMS, 4), m("far", IAD, 0)];
    let rr = Extra {
        mode: Some(RouteMode::RoundRobin),
        ..Extra::default()
    };
    let turns: Vec<String> = (0..5).map(|seed| run(&machines, &rr, seed)).collect();
    // d is at its hard limit and is passed over; the far region is not used while ams has room.
    assert_eq!(turns, vec!["pick a", "pick b", "pick c", "pick a", "pick a"]);
}

/// Packing fills the fullest machine still under the soft limit (2 here), so an idle one stays
/// idle; past the soft limit everywhere, the least loaded; never one at the hard limit (4).
#[test]
fn pack_fills_one_machine_before_the_next() {
    let pack = Extra {
        mode: Some(RouteMode::Pack),
        ..Extra::default()
    };
    let picks = |machines: &[M]| -> Vec<String> { (0..6).map(|seed| run(machines, &pack, seed)).collect() };
    assert!(picks(&[m("idle", AMS, 0), m("one", AMS, 1), m("far", IAD, 1)])
        .iter()
        .all(|p| p == "pick one"));
    assert!(picks(&[m("idle", AMS, 0), m("full", AMS, 2)]).iter().all(|p| p == "pick idle"));
    assert!(picks(&[m("busy", AMS, 3), m("full", AMS, 2), m("max", AMS, 4)])
        .iter()
        .all(|p| p == "pick full"));
    // Ties go the same way whatever the seed: idle machines are filled in one order.
    assert!(picks(&[m("a", AMS, 0), m("b", AMS, 0), m("c", AMS, 0)])
        .iter()
        .all(|p| p == "pick a"));
    // Locality first, as in every mode: a half-full machine far away loses to an idle local one.
    assert!(picks(&[m("idle", AMS, 0), m("far", IAD, 1)]).iter().all(|p| p == "pick idle"));
}

#[test]
fn ties_rotate_with_the_seed() {
    let machines = vec![m("a", AMS, 1), m("b", AMS, 1), m("c", AMS, 1), m("d", AMS, 3)];
    let mut seen: Vec<String> = (0..64).map(|seed| run(&machines, &Extra::default(), seed)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["pick a", "pick b", "pick c"]);
}

#[test]
fn scan_limit_samples_but_never_holds_with_room() {
    let limited = |limit: u32| {
        let mut p = params();
        p.scan_limit = limit;
        p
    };
    let pick_with = |machines: &[M], p: &RouteParams, seed: u64| {
        let loads: Vec<MachineLoad> = machines.iter().map(|m| m.load).collect();
        let spans = [RegionSpan {
            region: RegionId(AMS),
            start: 0,
            end: loads.len() as u32,
        }];
        let app = AppView {
            started: &loads,
            spans: &spans,
            dormant: &[],
        };
        let req = PickRequest {
            now_ms: NOW,
            rtt_ms: &RTT,
            steer: Steer::default(),
            prefix: &[],
            prefix_blocks: 0,
            seed,
            avoid: &[],
            only: None,
        };
        match pick(&app, &req, p) {
            Decision::Pick(i) => machines[i].name,
            other => panic!("expected a pick, got {other:?}"),
        }
    };
    let one_with_room = [m("a", AMS, 4), m("b", AMS, 5), m("c", AMS, 3), m("d", AMS, 4).sick()];
    let graded = [m("a", AMS, 1), m("b", AMS, 2), m("c", AMS, 3)];
    let mut sampled: Vec<&str> = Vec::new();
    for seed in 0..32 {
        assert_eq!(pick_with(&one_with_room, &limited(1), seed), "c", "seed {seed}");
        assert_eq!(pick_with(&graded, &limited(0), seed), "a", "unlimited is exact, seed {seed}");
        assert_eq!(
            pick_with(&graded, &limited(3), seed),
            "a",
            "a limit the pool fits is exact, seed {seed}"
        );
        sampled.push(pick_with(&graded, &limited(1), seed));
    }
    sampled.sort();
    sampled.dedup();
    assert_eq!(
        sampled,
        vec!["a", "b", "c"],
        "a limit of one takes the machine at the rotating start"
    );
}

#[test]
fn groups_spans_by_region() {
    let mut regions = vec![RegionId(2), RegionId(0), RegionId(2), RegionId(1)];
    let spans = group_by_region(&mut regions, |r| *r);
    let expected = vec![
        RegionSpan {
            region: RegionId(0),
            start: 0,
            end: 1,
        },
        RegionSpan {
            region: RegionId(1),
            start: 1,
            end: 2,
        },
        RegionSpan {
            region: RegionId(2),
            start: 2,
            end: 4,
        },
    ];
    assert_eq!(spans, expected);
    assert!(group_by_region(&mut Vec::<RegionId>::new(), |r| *r).is_empty());
}

#[test]
fn spans_past_the_end_are_skipped() {
    let loads = [MachineLoad {
        healthy: true,
        in_flight: 0,
        report: None,
    }];
    let spans = [
        RegionSpan {
            region: RegionId(AMS),
            start: 0,
            end: 5,
        },
        RegionSpan {
            region: RegionId(FRA),
            start: 0,
            end: 1,
        },
    ];
    let app = AppView {
        started: &loads,
        spans: &spans,
        dormant: &[],
    };
    let req = PickRequest {
        now_ms: NOW,
        rtt_ms: &RTT,
        steer: Steer::default(),
        prefix: &[(99, 4)],
        prefix_blocks: 4,
        seed: 3,
        avoid: &[],
        only: None,
    };
    assert_eq!(pick(&app, &req, &params()), Decision::Pick(0));
}

#[test]
fn load_header_by_table() {
    type Expected = Result<(u32, u32), LoadHeaderError>;
    let cases: Vec<(&str, Expected)> = vec![
        ("running=3;waiting=2;kv_used_bytes=10;kv_budget_bytes=99", Ok((3, 2))),
        (" waiting = 1 ; running = 0 ", Ok((0, 1))),
        ("running=1;waiting=1;", Ok((1, 1))),
        ("running=1", Err(LoadHeaderError::Missing { key: "waiting" })),
        ("", Err(LoadHeaderError::Missing { key: "running" })),
        (
            "running=1;waiting",
            Err(LoadHeaderError::NotKeyValue {
                field: "waiting".to_string(),
            }),
        ),
        (
            "running=-1;waiting=0",
            Err(LoadHeaderError::NotANumber {
                key: "running".to_string(),
                value: "-1".to_string(),
            }),
        ),
        (
            "unknown",
            Err(LoadHeaderError::NotKeyValue {
                field: "unknown".to_string(),
            }),
        ),
    ];
    for (header, expected) in cases {
        let got = LoadReport::parse(header, 7).map(|r| {
            assert_eq!(r.at_ms, 7);
            (r.running, r.waiting)
        });
        assert_eq!(got, expected, "{header:?}");
    }
}

#[test]
fn effective_load_by_table() {
    let report = |requests, at_ms| {
        Some(LoadReport {
            kv_permille: None,
            running: requests,
            waiting: 0,
            at_ms,
        })
    };
    let cases: Vec<(&str, u32, Option<LoadReport>, u32)> = vec![
        ("no report", 3, None, 3),
        ("fresh report above", 1, report(8, NOW - 1_000), 8),
        ("report from the future is fresh", 1, report(8, NOW + 50), 8),
        ("three quarters stale", 0, report(8, NOW - 4_000), 2),
        ("stale", 2, report(8, NOW - 5_000), 2),
    ];
    for (what, in_flight, report, expected) in cases {
        assert_eq!(effective_load(in_flight, report, NOW, &params()), expected, "{what}");
    }
}

#[test]
fn validate_lists_every_problem() {
    let bad = RouteParams {
        soft_limit: 0,
        hard_limit: 0,
        report_fresh_ms: 10,
        report_stale_ms: 5,
        ..params()
    };
    assert_eq!(bad.validate().len(), 2);
    let inverted = RouteParams {
        soft_limit: 5,
        hard_limit: 4,
        ..params()
    };
    assert_eq!(inverted.validate().len(), 1);
    assert!(RouteParams::default().validate().is_empty());
    let parsed: RouteParams = toml::from_str(
        "soft_limit = 4\nhard_limit = 8\nreport_fresh_ms = 1000\nreport_stale_ms = 5000\nlocal_rtt_ms = 5\nmode = \"least-loaded\"\n[weights]\nprefix = 5\n",
    )
    .expect("valid route params");
    assert_eq!(parsed.hard_limit, 8);
    assert_eq!(parsed.mode, RouteMode::LeastLoaded);
    assert_eq!(
        parsed.weights,
        ScoreWeights {
            prefix: 5,
            kv: 2,
            queue: 2,
            rtt: 1
        }
    );
    assert!(toml::from_str::<RouteParams>("soft_limt = 4").is_err());
    let partial: RouteParams = toml::from_str("hard_limit = 32").expect("defaults fill the rest");
    assert_eq!((partial.soft_limit, partial.hard_limit), (8, 32));
}
