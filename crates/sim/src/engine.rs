//! The discrete-event loop: arrivals at each region's edge, the edge's pick and hold decided by
//! colo-policy (`pick`, `admit_hold`, `check_hold`) and its wakes and idle stops decided by
//! colo-policy's `Scaler` (one per region, as each edge runs one), exactly as the edge decides
//! them; machines serving in virtual time; cold starts that read the weights from the host's
//! cache, a peer or the store; and the statistics and costs of what came of it.

use crate::report::{ColdStarts, Costs, Egress, Outcome, RegionReport, Report, Sample};
use crate::rng::Rng;
use crate::roofline::{self, Roofline};
use crate::scenario::{Distribution, Scenario};
use crate::stats::Histogram;
use colo_policy::{
    admit_hold, check_hold, pick, AppView, Decision, HoldLimits, LoadReport, MachineFacts, MachineView, Phase, PickRequest, RegionId,
    RegionSpan, RouteParams, ScaleAction, ScaleConfig, ScaleEvent, Scaler,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const NS_PER_MS: f64 = 1e6;
const NS_PER_S: f64 = 1e9;

/// Where a machine is, as the world sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Stopped,
    Starting,
    Started,
}

/// A machine: one GPU on a host of its own.
#[derive(Clone, Copy, Debug)]
struct Machine {
    region: u16,
    in_flight: u32,
    state: State,
    /// Started and stopped by the scaler (the others are started throughout).
    scalable: bool,
    /// Its host holds the weights.
    cached: bool,
    /// Since when it has held its GPU (starting or started).
    on_since_ns: u64,
}

impl MachineView for Machine {
    #[inline]
    fn healthy(&self) -> bool {
        self.state == State::Started
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

/// A GPU kind machines run on: its roofline (roofline service only) and its price.
#[derive(Clone, Debug)]
struct MachineKind {
    name: Option<String>,
    roofline: Option<Roofline>,
    usd_per_hour: f64,
}

/// A request waiting at its edge.
#[derive(Clone, Copy, Debug)]
struct Held {
    arrived_ns: u64,
}

/// What happens next, in time order; at the same time, starts come first, then finishes, then
/// arrivals, then the scalers' deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at_ns: u64,
    kind: Kind,
    /// The machine started or finishing.
    machine: u32,
    /// The region of the arrival or of the scaler, or the caller's region of a finish.
    region: u16,
    arrived_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Started,
    Finish,
    Arrival,
    Tick,
}

/// What a region's callers saw.
#[derive(Default)]
struct Tally {
    wait: Histogram,
    latency: Histogram,
    ttft: Histogram,
    turned_away: u64,
    tokens: u64,
}

/// What a region's machines did and cost.
#[derive(Default)]
struct Site {
    served_ns: f64,
    on_ns: f64,
    gpu_usd: f64,
    cold: Histogram,
    from_cache: u64,
    from_peer: u64,
    from_origin: u64,
    weights_egress_bytes: f64,
    answer_bytes: f64,
    /// Hosts here that hold the weights: peers for a cold start.
    cached_hosts: u32,
}

/// Where a cold start reads the weights from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Cache,
    Peer,
    Origin,
}

/// The arrival process of one region.
#[derive(Clone, Copy, Debug)]
struct Arrivals {
    /// Mean rate over the day, per ns.
    mean_per_ns: f64,
    /// Relative amplitude of the daily cosine (0: flat).
    amplitude: f64,
    /// Local solar hour at simulated time 0, minus the peak hour.
    phase_h: f64,
}

struct World<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    machines: Vec<Machine>,
    ids: Vec<String>,
    spans: Vec<RegionSpan>,
    /// Regions with machines not started: a request that finds no room is held for them.
    dormant: Vec<RegionId>,
    not_started: Vec<u32>,
    names: Vec<String>,
    /// RTT in ms from each region's edge to each region, as the pick reads it (whole ms) and as
    /// latency adds it (ns).
    rtt_ms: Vec<Vec<u32>>,
    rtt_ns: Vec<Vec<u64>>,
    /// Regions by RTT from each region: the order in which held requests get a freed machine.
    nearest: Vec<Vec<u16>>,
    queues: Vec<VecDeque<Held>>,
    tallies: Vec<Tally>,
    sites: Vec<Site>,
    events: BinaryHeap<Reverse<Event>>,
    params: RouteParams,
    hold: HoldLimits,
    warmup_ns: u64,
    end_ns: u64,
    arrivals: Vec<Arrivals>,
    /// The machines' GPU kinds, and each machine's.
    kinds: Vec<MachineKind>,
    machine_kind: Vec<u16>,
    /// Demand the placement could not meet.
    unmet: Vec<colo_core::Unmet>,
    /// Per region: the scaler its edge runs (scaling only).
    scalers: Vec<Option<Scaler>>,
    /// Per region: the scaler deadline a tick is queued for, ms.
    tick_at: Vec<Option<u64>>,
    weights_bytes: f64,
    /// Per region: USD per GB of answers leaving.
    answer_usd_per_gb: Vec<f64>,
    weights_usd_per_gb: f64,
    /// Per region: whether a cold start from the store there pays its egress.
    pays_weights_egress: Vec<bool>,
    /// Per region: store to host rate, bytes per ns.
    origin_bytes_per_ns: Vec<f64>,
    simulated: u64,
    machines_on: u32,
    timeline: Vec<Sample>,
    bucket_ns: u64,
    bucket_arrivals: u64,
}

/// Runs `scenario` to its end; `progress` is told the fraction of simulated time done, now and
/// then.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(f64)) -> Report {
    let started = std::time::Instant::now();
    let mut world = World::new(scenario);
    world.run(progress);
    world.report(started.elapsed().as_secs_f64())
}

/// A lognormal draw with mean `mean` (sigma 0: the mean itself).
fn lognormal(rng: &mut Rng, mean: f64, sigma: f64) -> f64 {
    if sigma == 0.0 {
        return mean;
    }
    let mu = mean.ln() - sigma * sigma / 2.0;
    (mu + sigma * rng.normal()).exp()
}

impl<'a> World<'a> {
    fn new(scenario: &'a Scenario) -> World<'a> {
        let n = scenario.regions.len();
        let known = colo_core::Regions::builtin();
        let catalogue = colo_core::Catalogue::builtin();
        let egress = colo_core::EgressPrices::builtin();
        let book = colo_core::PriceBook::parse_name(&scenario.prices).unwrap_or(colo_core::PriceBook::Fly2024);
        let default_rtt = scenario.routing.default_rtt_ms;
        let rtt_f: Vec<Vec<f64>> = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| {
                        let (x, y) = (&scenario.regions[a].name, &scenario.regions[b].name);
                        let given = scenario.rtts.iter().find(|r| (&r.a, &r.b) == (x, y) || (&r.a, &r.b) == (y, x));
                        match given {
                            Some(rtt) => rtt.ms,
                            None if a == b => default_rtt,
                            None => known.rtt_ms(x, y).unwrap_or(default_rtt),
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
        let hard = scenario.routing.hard_limit;
        let region_gpu = |r: usize| scenario.regions[r].gpu.as_ref().or(scenario.gpu.as_ref());
        let model = scenario.model_config();
        let roofline_for = |kind: &str| -> Option<Roofline> {
            let tokens = scenario.tokens.as_ref()?;
            let gpu = catalogue.get(kind).ok()?;
            let (config, quant) = model?;
            (scenario.service.distribution == Distribution::Roofline)
                .then(|| Roofline::new(config, quant, gpu, hard, tokens.prompt_mean, tokens.output_mean).ok())
                .flatten()
        };
        // Kinds 0..n are the regions' own machines' (their GPU kind and price); the placement's
        // kinds follow.
        let mut kinds: Vec<MachineKind> = (0..n)
            .map(|r| {
                let spec = &scenario.regions[r];
                let price = spec.usd_per_hour.or_else(|| {
                    let kind = catalogue.get(region_gpu(r)?).ok()?;
                    kind.price(&book).map(|p| p.as_f64())
                });
                MachineKind {
                    name: region_gpu(r).cloned(),
                    roofline: region_gpu(r).and_then(|k| roofline_for(k)),
                    usd_per_hour: price.unwrap_or(0.0),
                }
            })
            .collect();
        // Machines placed by colo-policy, by region: started and stopped by the scalers when
        // the scenario scales, else always on.
        let mut placed: Vec<Vec<usize>> = vec![Vec::new(); n];
        let placement = scenario
            .placement
            .as_ref()
            .map(|_| scenario.place().expect("validated: the placement succeeds"));
        if let Some(placement) = &placement {
            for m in &placement.machines {
                let r = scenario
                    .regions
                    .iter()
                    .position(|spec| spec.name == m.region)
                    .expect("validated: placed in a scenario region");
                let k = match kinds[n..].iter().position(|k| k.name.as_deref() == Some(m.gpu.as_str())) {
                    Some(i) => n + i,
                    None => {
                        kinds.push(MachineKind {
                            name: Some(m.gpu.clone()),
                            roofline: roofline_for(&m.gpu),
                            usd_per_hour: m.usd_per_hour,
                        });
                        kinds.len() - 1
                    }
                };
                placed[r].push(k);
            }
        }
        let scales = scenario.scaling.is_some();
        let mut machines = Vec::new();
        let mut machine_kind = Vec::new();
        let mut spans = Vec::new();
        let mut sites: Vec<Site> = (0..n).map(|_| Site::default()).collect();
        let mut not_started = vec![0; n];
        for (r, spec) in scenario.regions.iter().enumerate() {
            // (scalable, kind) of each machine of the region: always-on first.
            let mut here: Vec<(bool, usize)> = Vec::new();
            here.extend((0..spec.machines).map(|_| (false, r)));
            here.extend((0..spec.scalable).map(|_| (true, r)));
            here.extend(placed[r].iter().map(|&k| (scales, k)));
            if here.is_empty() {
                continue;
            }
            let start = machines.len() as u32;
            let mut min = scenario.scaling.as_ref().map_or(0, |s| s.min_running);
            for (scalable, kind) in here {
                // The minimum a scaler keeps is started from the beginning, as after a deploy.
                let on = !scalable || min > 0;
                if scalable && on {
                    min -= 1;
                }
                machines.push(Machine {
                    region: r as u16,
                    in_flight: 0,
                    state: if on { State::Started } else { State::Stopped },
                    scalable,
                    cached: spec.cached || on,
                    on_since_ns: 0,
                });
                machine_kind.push(kind as u16);
                if !on {
                    not_started[r] += 1;
                }
                if spec.cached || on {
                    sites[r].cached_hosts += 1;
                }
            }
            spans.push(RegionSpan {
                region: RegionId(r as u16),
                start,
                end: machines.len() as u32,
            });
        }
        let weights_bytes = model
            .and_then(|(config, quant)| roofline::weights_bytes(config, quant).ok())
            .unwrap_or(0.0);
        let answer_usd_per_gb = scenario
            .regions
            .iter()
            .map(|r| r.egress.as_deref().and_then(|p| egress.usd_per_gb(p)).unwrap_or(0.0))
            .collect();
        let storage = scenario.storage.as_ref();
        let weights_usd_per_gb = storage
            .and_then(|s| s.egress.as_deref())
            .and_then(|p| egress.usd_per_gb(p))
            .unwrap_or(0.0);
        let pays_weights_egress = scenario
            .regions
            .iter()
            .map(|r| storage.is_some_and(|s| s.cloud != r.cloud))
            .collect();
        let origin_bytes_per_ns = scenario
            .regions
            .iter()
            .map(|r| {
                storage.map_or(0.0, |s| {
                    let local = s.region.as_ref().is_none_or(|at| *at == r.name);
                    let gbps = if local {
                        s.origin_gbps
                    } else {
                        s.remote_gbps.unwrap_or(s.origin_gbps)
                    };
                    gbps / 8.0
                })
            })
            .collect();
        let arrivals = scenario
            .regions
            .iter()
            .map(|r| {
                let lon = known.get(&r.name).map_or(0.0, |g| g.lon);
                Arrivals {
                    mean_per_ns: r.arrival_rate / NS_PER_S,
                    amplitude: scenario.arrivals.amplitude(),
                    phase_h: lon / 15.0 - scenario.arrivals.peak_hour,
                }
            })
            .collect();
        let machines_on = machines.iter().filter(|m| m.state != State::Stopped).count() as u32;
        let end_ns = (scenario.duration_s * NS_PER_S) as u64;
        let mut world = World {
            scenario,
            rng: Rng::new(scenario.seed),
            ids: (0..machines.len()).map(|i| i.to_string()).collect(),
            machines,
            spans,
            dormant: Vec::new(),
            not_started,
            names: scenario.regions.iter().map(|r| r.name.clone()).collect(),
            rtt_ms: rtt_f.iter().map(|row| row.iter().map(|v| v.round() as u32).collect()).collect(),
            rtt_ns: rtt_f
                .iter()
                .map(|row| row.iter().map(|v| (v * NS_PER_MS) as u64).collect())
                .collect(),
            nearest,
            queues: vec![VecDeque::new(); n],
            tallies: (0..n).map(|_| Tally::default()).collect(),
            sites,
            events: BinaryHeap::new(),
            params: RouteParams {
                soft_limit: scenario.routing.soft_limit.unwrap_or(hard),
                hard_limit: hard,
                mode: scenario.routing.mode,
                ..RouteParams::default()
            },
            hold: HoldLimits {
                max_held: scenario.routing.max_held,
                max_wait_ms: scenario.routing.max_wait_ms,
                retry_after_s: 1,
            },
            warmup_ns: (scenario.warmup_s * NS_PER_S) as u64,
            end_ns,
            arrivals,
            kinds,
            machine_kind,
            unmet: placement.map(|p| p.unmet).unwrap_or_default(),
            scalers: vec![None; n],
            tick_at: vec![None; n],
            weights_bytes,
            answer_usd_per_gb,
            weights_usd_per_gb,
            pays_weights_egress,
            origin_bytes_per_ns,
            simulated: 0,
            machines_on,
            timeline: Vec::new(),
            bucket_ns: (end_ns / 96).max(1_000_000_000),
            bucket_arrivals: 0,
        };
        world.update_dormant();
        world.make_scalers();
        world
    }

    /// One scaler per region with callers or scalable machines, knowing every scalable machine
    /// (its own region's as local ones).
    fn make_scalers(&mut self) {
        let Some(scaling) = &self.scenario.scaling else { return };
        let config = ScaleConfig {
            soft_limit: self.params.soft_limit.max(1),
            idle_stop_ms: scaling.autostop_s.map(|s| ((s * 1000.0) as u64).max(1)),
            min_machines_running: scaling.min_running,
            start_timeout_ms: 600_000,
            settle_ms: 2_000,
            idle_action: colo_core::IdleAction::Stop,
        };
        for r in 0..self.names.len() {
            let spec = &self.scenario.regions[r];
            if spec.arrival_rate == 0.0 && spec.scalable == 0 {
                continue;
            }
            let mut scaler = Scaler::new(config);
            for m in 0..self.machines.len() {
                let machine = self.machines[m];
                if !machine.scalable || (machine.region as usize != r && spec.arrival_rate == 0.0) {
                    continue;
                }
                scaler.record(ScaleEvent::MachineAdded(self.facts(r, m)), 0);
            }
            self.scalers[r] = Some(scaler);
        }
        for r in 0..self.names.len() {
            self.scale(r, ScaleEvent::Tick, 0);
        }
    }

    /// Machine `m` as region `r`'s scaler sees it.
    fn facts(&self, r: usize, m: usize) -> MachineFacts {
        let machine = self.machines[m];
        let at = machine.region as usize;
        MachineFacts {
            id: self.ids[m].clone(),
            region: self.names[at].clone(),
            rtt_ms: self.rtt_ms[r][at],
            cached: machine.cached,
            local: at == r,
            phase: match machine.state {
                State::Stopped => Phase::Stopped,
                State::Starting => Phase::Starting,
                State::Started => Phase::Started,
            },
            wake_ms: (self.cold_start(m).0 / NS_PER_MS) as u32,
        }
    }

    fn update_dormant(&mut self) {
        self.dormant.clear();
        for (r, &n) in self.not_started.iter().enumerate() {
            if n > 0 {
                self.dormant.push(RegionId(r as u16));
            }
        }
    }

    fn run(&mut self, progress: &mut dyn FnMut(f64)) {
        for r in 0..self.scenario.regions.len() {
            self.next_arrival(r as u16, 0);
        }
        let mut last_report = std::time::Instant::now();
        let mut steps: u32 = 0;
        let mut next_sample = 0;
        while let Some(Reverse(event)) = self.events.pop() {
            let now = event.at_ns;
            while now >= next_sample && next_sample < self.end_ns {
                self.sample(next_sample);
                next_sample += self.bucket_ns;
            }
            match event.kind {
                Kind::Arrival => {
                    self.next_arrival(event.region, now);
                    self.simulated += 1;
                    self.bucket_arrivals += 1;
                    self.arrive(event.region, now);
                }
                Kind::Finish => self.finish(event, now),
                Kind::Started => self.started(event.machine as usize, now),
                Kind::Tick => {
                    let r = event.region as usize;
                    if self.tick_at[r] == Some(now / 1_000_000) {
                        self.tick_at[r] = None;
                        self.scale(r, ScaleEvent::Tick, now);
                    }
                }
            }
            steps = steps.wrapping_add(1);
            if steps.is_multiple_of(65_536) && last_report.elapsed().as_millis() >= 200 {
                last_report = std::time::Instant::now();
                progress((now as f64 / self.end_ns as f64).min(1.0));
            }
        }
        while next_sample < self.end_ns {
            self.sample(next_sample);
            next_sample += self.bucket_ns;
        }
        progress(1.0);
    }

    /// Closes the timeline's bucket that ends at `at`.
    fn sample(&mut self, at: u64) {
        if at > 0 {
            self.timeline.push(Sample {
                t_s: at as f64 / NS_PER_S,
                arrivals_per_s: self.bucket_arrivals as f64 / (self.bucket_ns as f64 / NS_PER_S),
                machines_on: self.machines_on,
                held: self.queues.iter().map(|q| q.len() as u64).sum(),
            });
        }
        self.bucket_arrivals = 0;
    }

    fn next_arrival(&mut self, region: u16, now: u64) {
        let a = self.arrivals[region as usize];
        if a.mean_per_ns == 0.0 {
            return;
        }
        // Thinning: candidates at the peak rate, each kept with the rate's share of the peak.
        let peak = a.mean_per_ns * (1.0 + a.amplitude);
        let mut at = now;
        loop {
            at += self.rng.exponential(1.0 / peak) as u64;
            if at >= self.end_ns {
                return;
            }
            if a.amplitude == 0.0 {
                break;
            }
            let hours = at as f64 / NS_PER_S / 3600.0 + a.phase_h;
            let rate = a.mean_per_ns * (1.0 + a.amplitude * (std::f64::consts::TAU * hours / 24.0).cos());
            if self.rng.unit() * peak <= rate {
                break;
            }
        }
        self.events.push(Reverse(Event {
            at_ns: at,
            kind: Kind::Arrival,
            machine: 0,
            region,
            arrived_ns: at,
        }));
    }

    fn decide(&mut self, region: u16, now: u64) -> Decision {
        let view = AppView {
            started: &self.machines,
            spans: &self.spans,
            dormant: &self.dormant,
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
            match self.decide(region, now) {
                Decision::Pick(m) => return self.dispatch(region, m, now, now),
                Decision::Reject(_) => return self.turn_away(region, now),
                Decision::Hold => {}
            }
        }
        let held = self.queues[region as usize].len() as u32;
        match admit_hold(held, &self.hold, now / 1_000_000) {
            Ok(_) => {
                self.queues[region as usize].push_back(Held { arrived_ns: now });
                self.scale(region as usize, ScaleEvent::RequestHeld, now);
            }
            Err(_) => self.turn_away(region, now),
        }
    }

    fn turn_away(&mut self, region: u16, arrived: u64) {
        if arrived >= self.warmup_ns {
            self.tallies[region as usize].turned_away += 1;
        }
    }

    fn dispatch(&mut self, region: u16, machine: usize, arrived: u64, now: u64) {
        let target = self.machines[machine].region as usize;
        self.machines[machine].in_flight += 1;
        let batch = self.machines[machine].in_flight;
        if batch == 1 && self.machines[machine].scalable {
            let id = self.ids[machine].clone();
            self.scale(target, ScaleEvent::MachineBusy { id }, now);
        }
        let rtt = self.rtt_ns[region as usize][target];
        let (service, first_token, tokens) = self.service_ns(self.machine_kind[machine] as usize, batch);
        let at = now + rtt + service;
        if arrived >= self.warmup_ns {
            let tally = &mut self.tallies[region as usize];
            tally.wait.record((now - arrived) as f64 / NS_PER_MS);
            tally.ttft.record((now - arrived + rtt + first_token) as f64 / NS_PER_MS);
            tally.tokens += tokens;
            let site = &mut self.sites[target];
            site.served_ns += service as f64;
            if let Some(t) = &self.scenario.tokens {
                site.answer_bytes += tokens as f64 * t.bytes_per_output_token;
            }
        }
        self.events.push(Reverse(Event {
            at_ns: at,
            kind: Kind::Finish,
            machine: machine as u32,
            region,
            arrived_ns: arrived,
        }));
    }

    /// A request's service on a machine of `kind` with `batch` in flight: (service, time to its
    /// first token, output tokens), ns.
    fn service_ns(&mut self, kind: usize, batch: u32) -> (u64, u64, u64) {
        let scenario = self.scenario;
        let tokens = scenario.tokens.as_ref().map(|t| {
            let prompt = lognormal(&mut self.rng, t.prompt_mean, t.prompt_sigma).round().max(1.0) as u64;
            let output = lognormal(&mut self.rng, t.output_mean, t.output_sigma).round().max(1.0) as u64;
            (prompt, output)
        });
        let output = tokens.map_or(0, |(_, o)| o);
        let service = &scenario.service;
        let mean = service.mean_ms.unwrap_or(0.0) * NS_PER_MS;
        let ns = match service.distribution {
            Distribution::Fixed => mean,
            Distribution::Exponential => self.rng.exponential(mean),
            Distribution::Lognormal => lognormal(&mut self.rng, mean, service.sigma.unwrap_or(0.0)),
            Distribution::Roofline => {
                let (Some(roofline), Some((prompt, output))) = (&self.kinds[kind].roofline, tokens) else {
                    unreachable!("validated: a roofline scenario has a model, tokens and a GPU kind wherever it has machines");
                };
                let prefill = roofline.prefill_s(prompt) * NS_PER_S;
                let step = roofline.step_s(batch) * NS_PER_S;
                let total = prefill + output as f64 * step;
                return (total as u64, (prefill + step) as u64, output);
            }
        };
        // Without a token model the whole answer is its first byte.
        (ns as u64, ns as u64, output)
    }

    fn finish(&mut self, event: Event, now: u64) {
        let machine = event.machine as usize;
        self.machines[machine].in_flight -= 1;
        if event.arrived_ns >= self.warmup_ns {
            self.tallies[event.region as usize]
                .latency
                .record((now - event.arrived_ns) as f64 / NS_PER_MS);
        }
        let m = self.machines[machine];
        if m.in_flight == 0 && m.scalable {
            let id = self.ids[machine].clone();
            self.scale(
                m.region as usize,
                ScaleEvent::MachineIdle {
                    id,
                    since_ms: now / 1_000_000,
                },
                now,
            );
        }
        self.release_held(m.region as usize, now);
    }

    /// Gives room on machines of region `from` to held requests, the nearest edges' first.
    fn release_held(&mut self, from: usize, now: u64) {
        for i in 0..self.nearest[from].len() {
            let region = self.nearest[from][i];
            while let Some(&held) = self.queues[region as usize].front() {
                if check_hold(held.arrived_ns / 1_000_000, &self.hold, now / 1_000_000).is_err() {
                    self.queues[region as usize].pop_front();
                    self.scale(region as usize, ScaleEvent::RequestReleased, now);
                    self.turn_away(region, held.arrived_ns);
                    continue;
                }
                match self.decide(region, now) {
                    Decision::Pick(m) => {
                        self.queues[region as usize].pop_front();
                        self.scale(region as usize, ScaleEvent::RequestReleased, now);
                        self.dispatch(region, m, held.arrived_ns, now);
                    }
                    _ => break,
                }
            }
        }
    }

    /// Hands `event` to region `r`'s scaler (if it has one), carries out what it decides, and
    /// queues a tick for its next deadline.
    fn scale(&mut self, r: usize, event: ScaleEvent, now: u64) {
        let Some(scaler) = self.scalers[r].as_mut() else { return };
        let now_ms = now / 1_000_000;
        let actions = scaler.handle(event, now_ms);
        if let Some(deadline) = scaler.next_deadline() {
            let at = deadline.saturating_mul(1_000_000);
            if at < self.end_ns && self.tick_at[r].is_none_or(|t| deadline < t) {
                self.tick_at[r] = Some(deadline);
                self.events.push(Reverse(Event {
                    at_ns: at,
                    kind: Kind::Tick,
                    machine: 0,
                    region: r as u16,
                    arrived_ns: 0,
                }));
            }
        }
        for action in actions {
            self.act(r, action, now);
        }
    }

    /// Tells every scaler what `event_for` says for it.
    fn broadcast(&mut self, event_for: impl Fn(&World, usize) -> ScaleEvent, now: u64) {
        for r in 0..self.scalers.len() {
            if self.scalers[r].is_some() {
                let event = event_for(self, r);
                self.scale(r, event, now);
            }
        }
    }

    fn act(&mut self, r: usize, action: ScaleAction, now: u64) {
        match action {
            ScaleAction::StartMachine(id) => {
                let m: usize = id.parse().expect("the scaler names machines by their index");
                match self.machines[m].state {
                    State::Stopped => self.start(m, now),
                    State::Started => self.scale(r, ScaleEvent::MachineStarted { id }, now),
                    State::Starting => {}
                }
            }
            ScaleAction::StopMachine(id) | ScaleAction::SuspendMachine(id) => {
                let m: usize = id.parse().expect("the scaler names machines by their index");
                let machine = self.machines[m];
                if machine.state != State::Started || machine.in_flight > 0 {
                    return self.scale(r, ScaleEvent::StopAborted { id }, now);
                }
                self.accrue(m, now);
                // A host that keeps nothing (a fresh VM each time) reads the weights again.
                let keeps = self.scenario.hosts_keep_weights();
                if !keeps && machine.cached {
                    self.machines[m].cached = false;
                    self.sites[machine.region as usize].cached_hosts -= 1;
                }
                self.machines[m].state = State::Stopped;
                self.machines_on -= 1;
                self.not_started[machine.region as usize] += 1;
                self.update_dormant();
                self.broadcast(|_, _| ScaleEvent::MachineStopped { id: id.clone() }, now);
            }
        }
    }

    /// How long a cold start of machine `m` takes now, and where it reads the weights from.
    fn cold_start(&self, m: usize) -> (f64, Source) {
        let machine = self.machines[m];
        let region = machine.region as usize;
        let (Some(scaling), Some(storage)) = (&self.scenario.scaling, &self.scenario.storage) else {
            return (0.0, Source::Cache);
        };
        let bytes = self.weights_bytes;
        let peers = self.sites[region].cached_hosts - u32::from(machine.cached);
        let (source, bytes_per_ns) = if machine.cached {
            (Source::Cache, storage.cache_gbps / 8.0)
        } else if storage.peer_gbps > 0.0 && peers > 0 {
            (Source::Peer, storage.peer_gbps / 8.0)
        } else {
            (Source::Origin, self.origin_bytes_per_ns[region])
        };
        (bytes / bytes_per_ns + scaling.engine_load_s * NS_PER_S, source)
    }

    fn start(&mut self, m: usize, now: u64) {
        let (ns, source) = self.cold_start(m);
        let region = self.machines[m].region as usize;
        if now >= self.warmup_ns {
            let site = &mut self.sites[region];
            site.cold.record(ns / NS_PER_MS);
            match source {
                Source::Cache => site.from_cache += 1,
                Source::Peer => site.from_peer += 1,
                Source::Origin => {
                    site.from_origin += 1;
                    if self.pays_weights_egress[region] {
                        site.weights_egress_bytes += self.weights_bytes;
                    }
                }
            }
        }
        let machine = &mut self.machines[m];
        machine.state = State::Starting;
        machine.on_since_ns = now;
        self.machines_on += 1;
        self.events.push(Reverse(Event {
            at_ns: now + ns as u64,
            kind: Kind::Started,
            machine: m as u32,
            region: region as u16,
            arrived_ns: 0,
        }));
        self.broadcast(|world, r| ScaleEvent::MachineAdded(world.facts(r, m)), now);
    }

    fn started(&mut self, m: usize, now: u64) {
        let region = self.machines[m].region as usize;
        let keeps = self.scenario.hosts_keep_weights();
        if keeps && !self.machines[m].cached {
            self.machines[m].cached = true;
            self.sites[region].cached_hosts += 1;
        }
        self.machines[m].state = State::Started;
        self.not_started[region] -= 1;
        self.update_dormant();
        let id = self.ids[m].clone();
        self.broadcast(|_, _| ScaleEvent::MachineStarted { id: id.clone() }, now);
        self.release_held(region, now);
    }

    /// Adds machine `m`'s time on since it started, up to `until`, to its region's GPU time
    /// (within the reported window).
    fn accrue(&mut self, m: usize, until: u64) {
        let machine = self.machines[m];
        let from = machine.on_since_ns.max(self.warmup_ns);
        let to = until.min(self.end_ns);
        if to > from {
            let site = &mut self.sites[machine.region as usize];
            site.on_ns += (to - from) as f64;
            site.gpu_usd += (to - from) as f64 / NS_PER_S / 3600.0 * self.kinds[self.machine_kind[m] as usize].usd_per_hour;
        }
    }

    fn report(mut self, wall_s: f64) -> Report {
        for m in 0..self.machines.len() {
            if self.machines[m].state != State::Stopped {
                self.accrue(m, self.end_ns);
            }
        }
        let scenario = self.scenario;
        let hard = f64::from(self.params.hard_limit.max(1));
        let measured_ns = (self.end_ns - self.warmup_ns) as f64;
        let mut all = Tally::default();
        for t in &self.tallies {
            all.wait.merge(&t.wait);
            all.latency.merge(&t.latency);
            all.ttft.merge(&t.ttft);
            all.turned_away += t.turned_away;
            all.tokens += t.tokens;
        }
        let (mut on_here, mut scalable_here) = (vec![0u32; self.names.len()], vec![0u32; self.names.len()]);
        let mut gpus_here = vec![std::collections::BTreeSet::new(); self.names.len()];
        for (m, machine) in self.machines.iter().enumerate() {
            let r = machine.region as usize;
            match machine.scalable {
                true => scalable_here[r] += 1,
                false => on_here[r] += 1,
            }
            if let Some(name) = &self.kinds[self.machine_kind[m] as usize].name {
                gpus_here[r].insert(name.clone());
            }
        }
        let mut all_cold = Histogram::default();
        let mut regions = Vec::new();
        for (r, spec) in scenario.regions.iter().enumerate() {
            let site = &self.sites[r];
            all_cold.merge(&site.cold);
            let gpu_hours = site.on_ns / NS_PER_S / 3600.0;
            let egress = Egress {
                weights_bytes: site.weights_egress_bytes,
                answer_bytes: site.answer_bytes,
            };
            let gpu_usd = site.gpu_usd;
            let egress_usd =
                site.weights_egress_bytes / 1e9 * self.weights_usd_per_gb + site.answer_bytes / 1e9 * self.answer_usd_per_gb[r];
            regions.push(RegionReport {
                name: spec.name.clone(),
                machines: on_here[r],
                scalable: scalable_here[r],
                gpu: (!gpus_here[r].is_empty()).then(|| gpus_here[r].iter().cloned().collect::<Vec<_>>().join(",")),
                utilisation: if site.on_ns > 0.0 {
                    site.served_ns / (site.on_ns * hard)
                } else {
                    0.0
                },
                gpu_hours,
                cold_starts: ColdStarts {
                    count: site.from_cache + site.from_peer + site.from_origin,
                    from_cache: site.from_cache,
                    from_peer: site.from_peer,
                    from_origin: site.from_origin,
                    ms: site.cold.summary(),
                },
                egress_bytes: egress,
                cost: Costs::new(gpu_usd, egress_usd, self.tallies[r].tokens),
                outcome: self.tallies[r].outcome(),
            });
        }
        let sum = |f: &dyn Fn(&RegionReport) -> f64| regions.iter().map(f).sum::<f64>();
        let on_ns: f64 = self.sites.iter().map(|s| s.on_ns).sum();
        let served_ns: f64 = self.sites.iter().map(|s| s.served_ns).sum();
        let cost = Costs::new(sum(&|r| r.cost.gpu_usd), sum(&|r| r.cost.egress_usd), all.tokens);
        let cold_starts = ColdStarts {
            count: regions.iter().map(|r| r.cold_starts.count).sum(),
            from_cache: regions.iter().map(|r| r.cold_starts.from_cache).sum(),
            from_peer: regions.iter().map(|r| r.cold_starts.from_peer).sum(),
            from_origin: regions.iter().map(|r| r.cold_starts.from_origin).sum(),
            ms: all_cold.summary(),
        };
        Report {
            seed: scenario.seed,
            duration_s: scenario.duration_s,
            warmup_s: scenario.warmup_s,
            overall: all.outcome(),
            gpu_hours: sum(&|r| r.gpu_hours),
            utilisation: if on_ns > 0.0 { served_ns / (on_ns * hard) } else { 0.0 },
            cold_starts,
            egress_bytes: Egress {
                weights_bytes: sum(&|r| r.egress_bytes.weights_bytes),
                answer_bytes: sum(&|r| r.egress_bytes.answer_bytes),
            },
            cost,
            measured_s: measured_ns / NS_PER_S,
            regions,
            timeline: self.timeline,
            unmet: self.unmet,
            simulated_requests: self.simulated,
            wall_s,
        }
    }
}

impl Tally {
    fn outcome(&self) -> Outcome {
        Outcome {
            requests: self.latency.count(),
            wait_ms: self.wait.summary(),
            latency_ms: self.latency.summary(),
            ttft_ms: self.ttft.summary(),
            turned_away: self.turned_away,
            tokens: self.tokens,
        }
    }
}
