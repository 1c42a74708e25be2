//! The discrete-event loop: arrivals at each region's edge, the edge's pick and hold decided by
//! colo-policy (`pick`, `admit_hold`, `check_hold`) exactly as the edge decides them, machines
//! serving in virtual time, and the statistics of what came of each request.

use crate::rng::Rng;
use crate::scenario::{Distribution, Scenario};
use crate::stats::{Histogram, Summary};
use colo_policy::{
    admit_hold, check_hold, pick, AppView, Decision, HoldLimits, LoadReport, MachineView, PickRequest, RegionId, RegionSpan, RouteParams,
};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const NS_PER_MS: f64 = 1e6;

/// A machine as the simulated edge sees it.
#[derive(Clone, Copy, Debug)]
struct Machine {
    region: u16,
    in_flight: u32,
}

impl MachineView for Machine {
    #[inline]
    fn healthy(&self) -> bool {
        true
    }
    #[inline]
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
    #[inline]
    fn report(&self) -> Option<LoadReport> {
        None
    }
}

/// A request waiting at its edge.
#[derive(Clone, Copy, Debug)]
struct Held {
    arrived_ns: u64,
}

/// What happens next, in time order. `machine == ARRIVAL` marks an arrival at `region`'s edge;
/// otherwise the request from `region` that arrived at `arrived_ns` finishes on `machine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at_ns: u64,
    machine: u32,
    region: u16,
    arrived_ns: u64,
}

const ARRIVAL: u32 = u32::MAX;

/// The report of one region, or of the whole world.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Requests that arrived after the warm-up and were answered.
    pub requests: u64,
    /// Time held at the edge before a machine took the request.
    pub wait_ms: Summary,
    /// Arrival to last byte: wait, the RTT to the machine, service.
    pub latency_ms: Summary,
    /// Requests turned away (hold queue full or held too long).
    pub turned_away: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    pub name: String,
    pub machines: u32,
    /// Service time given by this region's machines over their time, after the warm-up.
    pub utilisation: f64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a run came to.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    #[serde(flatten)]
    pub overall: Outcome,
    pub regions: Vec<RegionReport>,
    /// Machine-hours of the run (every machine started throughout).
    pub gpu_hours: f64,
    /// Requests simulated, the warm-up's included.
    pub simulated_requests: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

#[derive(Default)]
struct Tally {
    wait: Histogram,
    latency: Histogram,
    turned_away: u64,
    served_ns: f64,
}

impl Tally {
    fn outcome(&self) -> Outcome {
        Outcome {
            requests: self.latency.count(),
            wait_ms: self.wait.summary(),
            latency_ms: self.latency.summary(),
            turned_away: self.turned_away,
        }
    }
}

struct World<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    machines: Vec<Machine>,
    spans: Vec<RegionSpan>,
    /// RTT in ms from each region's edge to each region, as the pick reads it (whole ms) and as
    /// latency adds it (ns).
    rtt_ms: Vec<Vec<u32>>,
    rtt_ns: Vec<Vec<u64>>,
    /// Regions by RTT from each region: the order in which held requests get a freed machine.
    nearest: Vec<Vec<u16>>,
    queues: Vec<VecDeque<Held>>,
    tallies: Vec<Tally>,
    events: BinaryHeap<Reverse<Event>>,
    params: RouteParams,
    hold: HoldLimits,
    warmup_ns: u64,
    end_ns: u64,
    mean_interarrival_ns: Vec<f64>,
    simulated: u64,
}

/// Runs `scenario` to its end; `progress` is told the fraction of simulated time done, now and
/// then.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(f64)) -> Report {
    let started = std::time::Instant::now();
    let mut world = World::new(scenario);
    world.run(progress);
    let tallies = &world.tallies;
    let mut all = Tally::default();
    for t in tallies {
        all.wait.merge(&t.wait);
        all.latency.merge(&t.latency);
        all.turned_away += t.turned_away;
    }
    let measured_ns = (world.end_ns - world.warmup_ns) as f64;
    let regions = scenario
        .regions
        .iter()
        .enumerate()
        .map(|(r, spec)| RegionReport {
            name: spec.name.clone(),
            machines: spec.machines,
            utilisation: if spec.machines == 0 {
                0.0
            } else {
                tallies[r].served_ns / (spec.machines as f64 * measured_ns)
            },
            outcome: tallies[r].outcome(),
        })
        .collect();
    let machines: u32 = scenario.regions.iter().map(|r| r.machines).sum();
    Report {
        seed: scenario.seed,
        duration_s: scenario.duration_s,
        warmup_s: scenario.warmup_s,
        overall: all.outcome(),
        regions,
        gpu_hours: machines as f64 * scenario.duration_s / 3600.0,
        simulated_requests: world.simulated,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

impl<'a> World<'a> {
    fn new(scenario: &'a Scenario) -> World<'a> {
        let n = scenario.regions.len();
        let known = colo_core::Regions::builtin();
        let default_rtt = scenario.routing.default_rtt_ms;
        let rtt_f: Vec<Vec<f64>> = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| {
                        let (x, y) = (&scenario.regions[a].name, &scenario.regions[b].name);
                        if a == b {
                            default_rtt
                        } else {
                            known.rtt_ms(x, y).unwrap_or(default_rtt)
                        }
                    })
                    .collect()
            })
            .collect();
        let nearest = (0..n)
            .map(|a| {
                let mut order: Vec<u16> = (0..n as u16).collect();
                order.sort_by(|&x, &y| rtt_f[a][x as usize].total_cmp(&rtt_f[a][y as usize]).then(x.cmp(&y)));
                order
            })
            .collect();
        let mut machines = Vec::new();
        let mut spans = Vec::new();
        for (r, spec) in scenario.regions.iter().enumerate() {
            if spec.machines == 0 {
                continue;
            }
            let start = machines.len() as u32;
            machines.extend((0..spec.machines).map(|_| Machine {
                region: r as u16,
                in_flight: 0,
            }));
            spans.push(RegionSpan {
                region: RegionId(r as u16),
                start,
                end: machines.len() as u32,
            });
        }
        let hard = scenario.routing.hard_limit;
        World {
            scenario,
            rng: Rng::new(scenario.seed),
            machines,
            spans,
            rtt_ms: rtt_f.iter().map(|row| row.iter().map(|v| v.round() as u32).collect()).collect(),
            rtt_ns: rtt_f
                .iter()
                .map(|row| row.iter().map(|v| (v * NS_PER_MS) as u64).collect())
                .collect(),
            nearest,
            queues: vec![VecDeque::new(); n],
            tallies: (0..n).map(|_| Tally::default()).collect(),
            events: BinaryHeap::new(),
            params: RouteParams {
                soft_limit: scenario.routing.soft_limit.unwrap_or(hard),
                hard_limit: hard,
                ..RouteParams::default()
            },
            hold: HoldLimits {
                max_held: scenario.routing.max_held,
                max_wait_ms: scenario.routing.max_wait_ms,
                retry_after_s: 1,
            },
            warmup_ns: (scenario.warmup_s * 1e9) as u64,
            end_ns: (scenario.duration_s * 1e9) as u64,
            mean_interarrival_ns: scenario
                .regions
                .iter()
                .map(|r| if r.arrival_rate > 0.0 { 1e9 / r.arrival_rate } else { 0.0 })
                .collect(),
            simulated: 0,
        }
    }

    fn run(&mut self, progress: &mut dyn FnMut(f64)) {
        for r in 0..self.scenario.regions.len() {
            self.next_arrival(r as u16, 0);
        }
        let mut last_report = std::time::Instant::now();
        let mut steps: u32 = 0;
        while let Some(Reverse(event)) = self.events.pop() {
            let now = event.at_ns;
            if event.machine == ARRIVAL {
                self.next_arrival(event.region, now);
                self.simulated += 1;
                self.arrive(event.region, now);
            } else {
                self.finish(event, now);
            }
            steps = steps.wrapping_add(1);
            if steps % 65_536 == 0 && last_report.elapsed().as_millis() >= 200 {
                last_report = std::time::Instant::now();
                progress((now as f64 / self.end_ns as f64).min(1.0));
            }
        }
        progress(1.0);
    }

    fn next_arrival(&mut self, region: u16, now: u64) {
        let mean = self.mean_interarrival_ns[region as usize];
        if mean == 0.0 {
            return;
        }
        let at = now + self.rng.exponential(mean) as u64;
        if at < self.end_ns {
            self.events.push(Reverse(Event {
                at_ns: at,
                machine: ARRIVAL,
                region,
                arrived_ns: at,
            }));
        }
    }

    fn decide(&mut self, region: u16, now: u64) -> Decision {
        let view = AppView {
            started: &self.machines,
            spans: &self.spans,
            dormant: &[],
        };
        let request = PickRequest {
            now_ms: now / 1_000_000,
            rtt_ms: &self.rtt_ms[region as usize],
            steer: Default::default(),
            prefix: &[],
            prefix_blocks: 0,
            seed: self.rng.next_u64(),
            avoid: &[],
            only: None,
        };
        pick(&view, &request, &self.params)
    }

    fn arrive(&mut self, region: u16, now: u64) {
        // Requests already held go first: a new one may not jump the queue.
        if self.queues[region as usize].is_empty() {
            if let Decision::Pick(m) = self.decide(region, now) {
                return self.dispatch(region, m, now, now);
            }
        }
        let held = self.queues[region as usize].len() as u32;
        match admit_hold(held, &self.hold, now / 1_000_000) {
            Ok(_) => self.queues[region as usize].push_back(Held { arrived_ns: now }),
            Err(_) => self.turn_away(region, now),
        }
    }

    fn turn_away(&mut self, region: u16, arrived: u64) {
        if arrived >= self.warmup_ns {
            self.tallies[region as usize].turned_away += 1;
        }
    }

    fn dispatch(&mut self, region: u16, machine: usize, arrived: u64, now: u64) {
        let target = self.machines[machine].region;
        self.machines[machine].in_flight += 1;
        let service = self.service_ns();
        let at = now + self.rtt_ns[region as usize][target as usize] + service;
        if arrived >= self.warmup_ns {
            self.tallies[region as usize].wait.record((now - arrived) as f64 / NS_PER_MS);
            self.tallies[target as usize].served_ns += service as f64;
        }
        self.events.push(Reverse(Event {
            at_ns: at,
            machine: machine as u32,
            region,
            arrived_ns: arrived,
        }));
    }

    fn service_ns(&mut self) -> u64 {
        let service = &self.scenario.service;
        let mean = service.mean_ms * NS_PER_MS;
        let ns = match service.distribution {
            Distribution::Fixed => mean,
            Distribution::Exponential => self.rng.exponential(mean),
            Distribution::Lognormal => {
                // Parameters that give the asked mean: mean = exp(mu + sigma^2 / 2).
                let sigma = service.sigma.unwrap_or(0.0);
                let mu = mean.ln() - sigma * sigma / 2.0;
                (mu + sigma * self.rng.normal()).exp()
            }
        };
        ns as u64
    }

    fn finish(&mut self, event: Event, now: u64) {
        let machine = event.machine as usize;
        self.machines[machine].in_flight -= 1;
        if event.arrived_ns >= self.warmup_ns {
            self.tallies[event.region as usize]
                .latency
                .record((now - event.arrived_ns) as f64 / NS_PER_MS);
        }
        // The freed room goes to held requests, the nearest edges' first.
        let from = self.machines[machine].region as usize;
        for i in 0..self.nearest[from].len() {
            let region = self.nearest[from][i];
            while let Some(&held) = self.queues[region as usize].front() {
                if check_hold(held.arrived_ns / 1_000_000, &self.hold, now / 1_000_000).is_err() {
                    self.queues[region as usize].pop_front();
                    self.turn_away(region, held.arrived_ns);
                    continue;
                }
                match self.decide(region, now) {
                    Decision::Pick(m) => {
                        self.queues[region as usize].pop_front();
                        self.dispatch(region, m, held.arrived_ns, now);
                    }
                    _ => break,
                }
            }
        }
    }
}
