//! A simulated burst against stopped machines, in virtual time: 1,000 held requests with soft
//! limit S wake exactly ceil(1000 / S) machines (at most the N there are), however the edge
//! interleaves its start reports and releases, and the machines stop again once idle.

use colo_policy::{MachineFacts, Phase, ScaleAction, ScaleConfig, ScaleEvent, Scaler};

const BURST: u32 = 1_000;
const START_MS: u64 = 4_000;
const IDLE_STOP_MS: u64 = 60_000;

/// How the edge orders what it tells the scaler once machines come up.
#[derive(Clone, Copy, Debug)]
enum Edge {
    /// Each machine's start, then the held requests it takes.
    ReleaseAfterEachStart,
    /// Every start first (all in the same millisecond), then all releases 100 ms later: within
    /// the scaler's settle time, as an edge that releases on seeing a start always is.
    StartsThenReleases,
}

struct Sim {
    scaler: Scaler,
    starts: Vec<String>,
    stops: Vec<String>,
}

impl Sim {
    fn handle(&mut self, event: ScaleEvent, now: u64) {
        for action in self.scaler.handle(event, now) {
            match action {
                ScaleAction::StartMachine(id) => self.starts.push(id),
                ScaleAction::StopMachine(id) | ScaleAction::SuspendMachine(id) => self.stops.push(id),
            }
        }
    }

    /// Ticks at every deadline up to `until`.
    fn run_until(&mut self, until: u64) {
        while let Some(t) = self.scaler.next_deadline().filter(|&t| t <= until) {
            self.handle(ScaleEvent::Tick, t);
        }
    }
}

fn simulate(n_machines: u32, soft_limit: u32, edge: Edge) -> (usize, usize) {
    let config = ScaleConfig {
        soft_limit,
        idle_stop_ms: Some(IDLE_STOP_MS),
        min_machines_running: 0,
        start_timeout_ms: 30_000,
        settle_ms: 500,
        idle_action: colo_policy::IdleAction::Stop,
    };
    let mut sim = Sim {
        scaler: Scaler::new(config),
        starts: Vec::new(),
        stops: Vec::new(),
    };
    for i in 0..n_machines {
        let facts = MachineFacts {
            id: format!("m{i:04}"),
            region: "ord".to_string(),
            rtt_ms: i % 7,
            cached: i % 3 == 0,
            local: true,
            phase: Phase::Stopped,
            wake_ms: colo_policy::expected_wake_ms(Phase::Stopped, i % 3 == 0, None),
        };
        sim.handle(ScaleEvent::MachineAdded(facts), 0);
    }
    // The burst: one request per virtual millisecond.
    for t in 0..u64::from(BURST) {
        sim.handle(ScaleEvent::RequestHeld, t);
    }
    let woken = sim.starts.clone();
    // Each woken machine is up START_MS after its start and takes `soft_limit` held requests.
    let mut now = u64::from(BURST) + START_MS;
    let mut held = BURST;
    let mut releases: Vec<(String, u32)> = Vec::new();
    for id in &woken {
        if let Edge::ReleaseAfterEachStart = edge {
            now += 1;
        }
        sim.run_until(now);
        sim.handle(ScaleEvent::MachineStarted { id: id.clone() }, now);
        let take = held.min(soft_limit);
        held -= take;
        releases.push((id.clone(), take));
        if let Edge::ReleaseAfterEachStart = edge {
            release(&mut sim, id, take, now);
        }
    }
    if let Edge::StartsThenReleases = edge {
        now += 100;
        sim.run_until(now);
        for (id, take) in &releases {
            release(&mut sim, id, *take, now);
        }
    }
    // What no machine could take waits out its deadline and is turned away.
    now += 10_000;
    sim.run_until(now);
    for _ in 0..held {
        sim.handle(ScaleEvent::RequestReleased, now);
    }
    // The requests finish; every machine goes idle and is stopped an idle period later.
    now += 1_000;
    for id in &woken {
        sim.handle(
            ScaleEvent::MachineIdle {
                id: id.clone(),
                since_ms: now,
            },
            now,
        );
    }
    sim.run_until(now + IDLE_STOP_MS + 1);
    assert_eq!(sim.scaler.next_deadline(), None, "quiet after the burst");
    (sim.starts.len(), sim.stops.len())
}

fn release(sim: &mut Sim, id: &str, take: u32, now: u64) {
    if take > 0 {
        sim.handle(ScaleEvent::MachineBusy { id: id.to_string() }, now);
    }
    for _ in 0..take {
        sim.handle(ScaleEvent::RequestReleased, now);
    }
}

#[test]
fn burst_wakes_only_what_the_load_needs() {
    // (machines, soft limit, starts expected)
    let cases: Vec<(u32, u32, usize)> = vec![
        (200, 10, 100),
        (100, 10, 100),
        (50, 10, 50),
        (400, 3, 334),
        (1_200, 1, 1_000),
        (10, 1, 10),
        (5, 1_000, 1),
        (8, 7, 8),
        (0, 4, 0),
    ];
    for (n, soft, expected) in cases {
        for edge in [Edge::ReleaseAfterEachStart, Edge::StartsThenReleases] {
            let (starts, stops) = simulate(n, soft, edge);
            assert_eq!(starts, expected, "{n} machines, soft limit {soft}, {edge:?}: starts");
            assert_eq!(stops, expected, "{n} machines, soft limit {soft}, {edge:?}: idle stops");
        }
    }
}

#[test]
fn burst_prefers_cached_machines() {
    // Ten machines, every third cached (m0000, m0003, m0006, m0009); a burst needing four
    // machines wakes exactly the cached ones.
    let mut scaler = Scaler::new(ScaleConfig {
        soft_limit: 250,
        ..ScaleConfig::default()
    });
    for i in 0..10u32 {
        let facts = MachineFacts {
            id: format!("m{i:04}"),
            region: "ord".to_string(),
            rtt_ms: 10 - i,
            cached: i % 3 == 0,
            local: true,
            phase: Phase::Stopped,
            wake_ms: colo_policy::expected_wake_ms(Phase::Stopped, i % 3 == 0, None),
        };
        scaler.handle(ScaleEvent::MachineAdded(facts), 0);
    }
    let mut started: Vec<ScaleAction> = (0..BURST)
        .flat_map(|t| scaler.handle(ScaleEvent::RequestHeld, u64::from(t)))
        .collect();
    started.sort();
    let expected: Vec<ScaleAction> = ["m0000", "m0003", "m0006", "m0009"]
        .iter()
        .map(|id| ScaleAction::StartMachine(id.to_string()))
        .collect();
    assert_eq!(started, expected);
}
