//! Cost of the routing pick among 10, 1,000 and 10,000 started machines.
//!
//! Shapes of fleet: machines spread over 30 regions (the edge's own region holds a 30th of them,
//! the usual case), and every machine in the edge's region with none idle, where an exact pick
//! reads every machine (`scan_limit = 0`) and the default one reads 512 from a rotating start. Loads are busy but under the hard limit and engine reports are
//! fresh, so each machine costs the full load computation. The seed changes every iteration, so
//! the tie-break start moves as it does in service.

use colo_policy::{group_by_region, pick, AppView, LoadReport, MachineLoad, PickRequest, RegionId, RegionSpan, RouteParams, Steer};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

const NOW: u64 = 1_000_000;
const REGIONS: u16 = 30;

/// A fixed pseudo-random sequence (64-bit LCG), so every run measures the same fleet.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(below)) as u32
    }
}

/// `n` busy machines, round-robin over `regions` regions, grouped by region.
fn fleet(n: usize, regions: u16, params: &RouteParams) -> (Vec<MachineLoad>, Vec<RegionSpan>) {
    let mut lcg = Lcg(42);
    let mut machines: Vec<(RegionId, MachineLoad)> = (0..n)
        .map(|i| {
            let load = MachineLoad {
                healthy: lcg.next(100) != 0,
                in_flight: 1 + lcg.next(params.soft_limit),
                report: Some(LoadReport {
                    kv_permille: None,
                    running: 1 + lcg.next(params.hard_limit - 1),
                    waiting: 0,
                    at_ms: NOW - u64::from(lcg.next(900)),
                }),
            };
            (RegionId((i % usize::from(regions)) as u16), load)
        })
        .collect();
    let spans = group_by_region(&mut machines, |m| m.0);
    (machines.into_iter().map(|m| m.1).collect(), spans)
}

fn bench_pick(c: &mut Criterion) {
    let sampled = RouteParams {
        soft_limit: 8,
        hard_limit: 16,
        ..RouteParams::default()
    };
    let exact = RouteParams { scan_limit: 0, ..sampled };
    // RTT from the edge (region 0) to region r: 0, 7, 14, ... ms.
    let rtt: Vec<u32> = (0..u32::from(REGIONS)).map(|r| r * 7).collect();
    let mut group = c.benchmark_group("pick");
    let shapes = [
        ("spread_30_regions", REGIONS, exact),
        ("one_region_busy_exact", 1, exact),
        ("one_region_busy_scan512", 1, sampled),
    ];
    for (shape, regions, params) in shapes {
        for n in [10usize, 1_000, 10_000] {
            let (loads, spans) = fleet(n, regions, &params);
            let app = AppView {
                started: &loads,
                spans: &spans,
                dormant: &[],
            };
            let mut seed = 0u64;
            group.bench_with_input(BenchmarkId::new(shape, n), &n, |b, _| {
                b.iter(|| {
                    seed = seed.wrapping_add(1);
                    let req = PickRequest {
                        now_ms: NOW,
                        rtt_ms: &rtt,
                        steer: Steer::default(),
                        prefix: &[],
                        prefix_blocks: 0,
                        seed,
                        avoid: &[],
                        only: None,
                    };
                    black_box(pick(black_box(&app), &req, &params))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
