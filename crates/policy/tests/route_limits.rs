//! Property tests of the routing pick: it never sends a request to a machine at its hard limit,
//! never holds one while a machine in scope has room, never leaves a nearer pool with room, and
//! within a pool takes the best-ranked machine (or, when scoring, a machine that served the
//! prompt's start) whenever the pool fits the scan limit, never sends a request to a machine it
//! must avoid, and rejects only when nothing in scope could ever take the request.

use colo_policy::{
    effective_load, group_by_region, pick, AppView, Decision, LoadReport, MachineLoad, PickRequest, RegionId, RouteMode, RouteParams,
    ScoreWeights, Steer,
};
use proptest::prelude::*;

const NOW: u64 = 50_000;

#[derive(Clone, Debug)]
struct Situation {
    machines: Vec<(u16, MachineLoad)>,
    rtt: Vec<u32>,
    params: RouteParams,
    steer: Steer,
    prefix: Vec<(usize, u32)>,
    dormant: Vec<RegionId>,
    avoid: Vec<usize>,
    only: Option<usize>,
    seed: u64,
}

fn machine() -> impl Strategy<Value = (u16, MachineLoad)> {
    let report = prop::option::of((0u32..10, 0u32..4, 0u64..8_000, prop::option::of(0u16..1200)).prop_map(
        |(running, waiting, age, kv)| LoadReport {
            running,
            waiting,
            kv_permille: kv,
            at_ms: NOW - age,
        },
    ));
    // Region 5 is past the end of the RTT row.
    (0u16..6, prop::bool::weighted(0.85), 0u32..9, report).prop_map(|(region, healthy, in_flight, report)| {
        (
            region,
            MachineLoad {
                healthy,
                in_flight,
                report,
            },
        )
    })
}

fn situation() -> impl Strategy<Value = Situation> {
    let scan_limit = prop_oneof![Just(0u32), 1u32..8];
    let params = (1u32..5, 0u32..5, 0u64..3_000, 0u64..5_000, 0u32..30, 0u32..4, scan_limit).prop_map(
        |(soft, extra, fresh, more, local, slack, scan_limit)| RouteParams {
            soft_limit: soft,
            hard_limit: soft + extra,
            report_fresh_ms: fresh,
            report_stale_ms: fresh + more,
            local_rtt_ms: local,
            mode: RouteMode::ALL[slack as usize % RouteMode::ALL.len()],
            weights: ScoreWeights {
                prefix: slack as u16,
                ..ScoreWeights::default()
            },
            scan_limit,
        },
    );
    let steer = (prop::option::of(0u16..6), prop::option::of(0u16..6)).prop_map(|(prefer, force)| Steer {
        prefer: prefer.map(RegionId),
        force: force.map(RegionId),
    });
    let dormant = prop::collection::vec((0u16..6).prop_map(RegionId), 0..4);
    let bound = (prop::collection::vec(0usize..45, 0..3), prop::option::weighted(0.2, 0usize..45));
    (
        prop::collection::vec(machine(), 0..40),
        prop::collection::vec(0u32..100, 5),
        params,
        steer,
        prop::collection::vec((0usize..45, 1u32..6), 0..4),
        dormant,
        bound,
        any::<u64>(),
    )
        .prop_map(|(machines, rtt, params, steer, prefix, dormant, (avoid, only), seed)| Situation {
            machines,
            rtt,
            params,
            steer,
            prefix,
            dormant,
            avoid,
            only,
            seed,
        })
}

/// The pool tier of a region as the rules define it, `None` when a forced region excludes it.
fn tier(s: &Situation, region: u16) -> Option<u64> {
    if s.steer.force.is_some_and(|f| f != RegionId(region)) {
        return None;
    }
    let rtt = s.rtt.get(usize::from(region)).copied().unwrap_or(u32::MAX);
    Some(if s.steer.prefer == Some(RegionId(region)) {
        0
    } else if rtt <= s.params.local_rtt_ms {
        1
    } else {
        u64::from(rtt) + 1
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn picks_respect_limits_and_locality(mut s in situation()) {
        let spans = group_by_region(&mut s.machines, |m| RegionId(m.0));
        let loads: Vec<MachineLoad> = s.machines.iter().map(|m| m.1).collect();
        let app = AppView { started: &loads, spans: &spans, dormant: &s.dormant };
        let req = PickRequest {
            now_ms: NOW, rtt_ms: &s.rtt, steer: s.steer, prefix: &s.prefix, prefix_blocks: 5, seed: s.seed, avoid: &s.avoid, only: s.only,
        };
        let decision = pick(&app, &req, &s.params);

        let load = |i: usize| effective_load(loads[i].in_flight, loads[i].report, NOW, &s.params);
        let allowed = |i: usize| !s.avoid.contains(&i) && s.only.is_none_or(|o| o == i);
        let has_room = |i: usize| loads[i].healthy && load(i) < s.params.hard_limit && allowed(i);
        let roomy: Vec<(usize, u64)> = (0..loads.len())
            .filter(|&i| has_room(i))
            .filter_map(|i| tier(&s, s.machines[i].0).map(|t| (i, t)))
            .collect();
        match decision {
            Decision::Pick(i) => {
                prop_assert!(i < loads.len());
                prop_assert!(has_room(i), "picked machine {i} without room: load {}", load(i));
                let picked_tier = tier(&s, s.machines[i].0);
                prop_assert!(picked_tier.is_some(), "picked outside the forced region");
                let picked_tier = picked_tier.unwrap();
                prop_assert!(roomy.iter().all(|&(_, t)| t >= picked_tier), "left a nearer pool with room");
                let rank = |j: usize| {
                    let rtt = s.rtt.get(usize::from(s.machines[j].0)).copied().unwrap_or(u32::MAX);
                    let (l, soft) = (load(j), s.params.soft_limit);
                    // Packing ranks machines under the soft limit fullest first.
                    let key = if s.params.mode == RouteMode::Pack && l < soft { soft - 1 - l } else { l };
                    (l >= soft, key, rtt)
                };
                let best = roomy.iter().filter(|&&(_, t)| t == picked_tier).map(|&(j, _)| rank(j)).min().unwrap();
                let pool_size = s.machines.iter().filter(|m| tier(&s, m.0) == Some(picked_tier)).count();
                let exact = s.params.scan_limit == 0 || pool_size <= s.params.scan_limit as usize;
                if !exact {
                    // A sampled pick: only the limits and locality above hold.
                } else if s.params.mode == RouteMode::RoundRobin {
                    // Round robin weighs room only: the pool and limits above are what hold.
                } else if rank(i) != best {
                    // Only a machine that served the prompt's start may beat the best-ranked one, and
                    // only by as much load as its prefix and KV headroom (and the best one's
                    // RTT) are worth: load is a term of the score.
                    prop_assert_eq!(s.params.mode, RouteMode::Score, "least loaded takes the best");
                    prop_assert!(s.prefix.iter().any(|(p, _)| *p == i), "machine {} is neither best nor a prefix match", i);
                    let w = s.params.weights;
                    let more = f64::from(rank(i).1) - f64::from(best.1);
                    let worth = f64::from(w.prefix) + f64::from(w.kv) + f64::from(w.rtt) * f64::from(best.2.min(100_000)) / 100.0;
                    prop_assert!(
                        f64::from(w.queue) * more <= worth * f64::from(s.params.soft_limit) + 1e-9,
                        "a prefix match took {} more requests than its terms are worth", more
                    );
                } else {
                    prop_assert_eq!(rank(i), best, "not the best-ranked machine of its pool");
                }
            }
            Decision::Hold => {
                prop_assert!(roomy.is_empty(), "held while machines {:?} have room", roomy);
                let in_scope = s.machines.iter().any(|m| tier(&s, m.0).is_some()) || s.dormant.iter().any(|r| tier(&s, r.0).is_some());
                prop_assert!(in_scope, "held with nothing in scope that could take it");
            }
            Decision::Reject(_) => {
                prop_assert!(roomy.is_empty());
                prop_assert!(s.machines.iter().all(|m| tier(&s, m.0).is_none()));
                prop_assert!(s.dormant.iter().all(|r| tier(&s, r.0).is_none()));
            }
        }
    }

    #[test]
    fn load_header_parse_never_panics(header in ".{0,80}", at in any::<u64>()) {
        let _ = LoadReport::parse(&header, at);
    }

    #[test]
    fn load_header_round_trips(running in any::<u32>(), waiting in any::<u32>(), kv in any::<u64>()) {
        let header = format!("running={running};waiting={waiting};kv_used_bytes={kv};kv_budget_bytes={kv}");
        let report = LoadReport::parse(&header, 1).expect("engine's own format");
        prop_assert_eq!((report.running, report.waiting), (running, waiting));
    }
}
