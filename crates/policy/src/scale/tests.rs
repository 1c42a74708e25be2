//! Table tests of the scaler: scenarios as steps of (time, event) and the actions and next
//! deadline each step should leave.

use super::*;

fn config() -> ScaleConfig {
    ScaleConfig {
        soft_limit: 2,
        idle_stop_ms: Some(1_000),
        min_machines_running: 0,
        start_timeout_ms: 5_000,
        settle_ms: 100,
        idle_action: IdleAction::Stop,
    }
}

fn machine(id: &str, rtt_ms: u32, cached: bool, local: bool, phase: Phase) -> ScaleEvent {
    ScaleEvent::MachineAdded(MachineFacts {
        id: id.to_string(),
        region: if local { "ord".to_string() } else { format!("r{rtt_ms}") },
        rtt_ms,
        cached,
        local,
        phase,
        wake_ms: expected_wake_ms(phase, cached, None),
    })
}

fn stopped(id: &str, cached: bool) -> ScaleEvent {
    machine(id, 0, cached, true, Phase::Stopped)
}

fn started(id: &str) -> ScaleEvent {
    machine(id, 0, true, true, Phase::Started)
}

fn id(s: &str) -> String {
    s.to_string()
}

fn show(actions: &[ScaleAction]) -> String {
    actions
        .iter()
        .map(|a| match a {
            ScaleAction::StartMachine(id) => format!("start {id}"),
            ScaleAction::StopMachine(id) => format!("stop {id}"),
            ScaleAction::SuspendMachine(id) => format!("suspend {id}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// (time, event, actions expected, next deadline expected after the step)
type Step = (u64, ScaleEvent, &'static str, Option<u64>);

fn run(what: &str, config: ScaleConfig, steps: Vec<Step>) {
    let mut scaler = Scaler::new(config);
    for (n, (now, event, expected, deadline)) in steps.into_iter().enumerate() {
        let got = show(&scaler.handle(event.clone(), now));
        assert_eq!(got, expected, "{what}, step {n} ({event:?} at {now})");
        assert_eq!(scaler.next_deadline(), deadline, "{what}, deadline after step {n}");
    }
}

#[test]
fn scenarios_by_table() {
    use ScaleEvent::*;
    let with_min = |min| ScaleConfig {
        min_machines_running: min,
        ..config()
    };
    let never_stop = ScaleConfig {
        idle_stop_ms: None,
        ..config()
    };
    #[rustfmt::skip]
    let scenarios: Vec<(&str, ScaleConfig, Vec<Step>)> = vec![
        ("held requests wake cached machines first, one per soft limit", config(), vec![
            (0, stopped("m1", false), "", None),
            (0, stopped("m2", true), "", None),
            (0, stopped("m3", true), "", None),
            (1, RequestHeld, "start m2", Some(5_001)),
            (2, RequestHeld, "", Some(5_001)),
            (3, RequestHeld, "start m3", Some(5_001)),
            (4, RequestHeld, "", Some(5_001)),
            (5, RequestHeld, "start m1", Some(5_001)),
            (6, RequestHeld, "", Some(5_001)),
            (7, RequestHeld, "", Some(5_001)),
        ]),
        ("the nearest region breaks cache ties", config(), vec![
            (0, machine("far", 80, true, false, Phase::Stopped), "", None),
            (0, machine("near", 8, true, false, Phase::Stopped), "", None),
            (0, machine("local", 0, false, true, Phase::Stopped), "", None),
            (1, RequestHeld, "start near", Some(5_001)),
        ]),
        ("a settling machine absorbs the queue", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, stopped("m2", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (0, RequestHeld, "", Some(5_000)),
            (500, MachineStarted { id: id("m1") }, "", Some(600)),
            (510, MachineBusy { id: id("m1") }, "", Some(600)),
            (510, RequestReleased, "", Some(600)),
            (520, RequestReleased, "", None),
            (800, MachineIdle { id: id("m1"), since_ms: 800 }, "", Some(1_800)),
            (1_800, Tick, "stop m1", None),
        ]),
        ("a queue left after settling wakes another", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, stopped("m2", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (500, MachineStarted { id: id("m1") }, "", Some(600)),
            (600, Tick, "start m2", Some(5_600)),
        ]),
        ("a failed start wakes another", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, stopped("m2", false), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (10, MachineFailed { id: id("m1") }, "start m2", Some(5_010)),
            (20, MachineStopped { id: id("m1") }, "", Some(5_010)),
        ]),
        ("a start that times out wakes another", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, stopped("m2", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (5_000, Tick, "start m2", Some(10_000)),
            (5_001, RequestReleased, "", None),
        ]),
        ("idle machines stop after the idle time", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (999, Tick, "", Some(1_000)),
            (1_000, Tick, "stop m1", None),
            (1_200, MachineStopped { id: id("m1") }, "", None),
        ]),
        ("a busy machine is not stopped", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (10, MachineBusy { id: id("m1") }, "", None),
            (5_000, Tick, "", None),
            (6_000, MachineIdle { id: id("m1"), since_ms: 5_900 }, "", Some(6_900)),
            (6_900, Tick, "stop m1", None),
        ]),
        ("the minimum protects the most recently idle", with_min(1), vec![
            (0, started("m1"), "", None),
            (0, started("m2"), "", Some(1_000)),
            (0, MachineIdle { id: id("m2"), since_ms: 0 }, "", Some(1_000)),
            (0, MachineIdle { id: id("m1"), since_ms: 50 }, "", Some(1_000)),
            (1_100, Tick, "stop m2", None),
        ]),
        ("the minimum is started when machines appear", with_min(2), vec![
            (0, stopped("m1", false), "start m1", None),
            (0, stopped("m2", true), "start m2", None),
            (0, stopped("m3", true), "", None),
            (0, machine("remote", 9, true, false, Phase::Stopped), "", None),
            (900, MachineStopped { id: id("m1") }, "start m3", None),
        ]),
        ("no stops while requests are held", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (0, RequestHeld, "", Some(100)),
            (2_000, Tick, "", None),
            (2_001, RequestReleased, "stop m1", None),
        ]),
        ("remote machines are woken but never stopped", config(), vec![
            (0, machine("r1", 20, true, false, Phase::Stopped), "", None),
            (0, RequestHeld, "start r1", Some(5_000)),
            (100, MachineStarted { id: id("r1") }, "", Some(200)),
            (110, RequestReleased, "", None),
            (9_000, Tick, "", None),
        ]),
        ("no autostop configured", never_stop, vec![
            (0, started("m1"), "", None),
            (99_000, Tick, "", None),
        ]),
        ("unknown machines are ignored", config(), vec![
            (0, MachineStarted { id: id("ghost") }, "", None),
            (0, MachineIdle { id: id("ghost"), since_ms: 0 }, "", None),
            (0, MachineRemoved { id: id("ghost") }, "", None),
            (0, RequestReleased, "", None),
        ]),
    ];
    for (what, config, steps) in scenarios {
        run(what, config, steps);
    }
}

/// The wake order and the region-bound queue: which machine a held request wakes.
#[test]
fn wakes_by_table() {
    use ScaleEvent::*;
    let far = |id: &str, rtt: u32, cached: bool| machine(id, rtt, cached, false, Phase::Stopped);
    #[rustfmt::skip]
    let scenarios: Vec<(&str, ScaleConfig, Vec<Step>)> = vec![
        ("cached far beats uncached near", config(), vec![
            (0, far("ams", 10, false), "", None),
            (0, far("iad", 90, true), "", None),
            (1, RequestHeld, "start iad", Some(5_001)),
        ]),
        ("nearest among uncached", config(), vec![
            (0, far("iad", 90, false), "", None),
            (0, far("fra", 20, false), "", None),
            (1, RequestHeld, "start fra", Some(5_001)),
        ]),
        ("smallest id among equals", config(), vec![
            (0, far("b", 20, true), "", None),
            (0, far("a", 20, true), "", None),
            (1, RequestHeld, "start a", Some(5_001)),
        ]),
        ("a request held for one region wakes only that region", config(), vec![
            (0, far("ams", 10, true), "", None),
            (0, far("iad", 90, false), "", None),
            (1, RequestHeldIn { region: "r90".into() }, "start iad", Some(5_001)),
            // The machine starting for it absorbs the next unbound request too (soft limit 2).
            (2, RequestHeld, "", Some(5_001)),
            (3, RequestHeld, "start ams", Some(5_001)),
            (4, RequestReleasedIn { region: "r90".into() }, "", Some(5_001)),
        ]),
        ("a region-bound request with nothing to wake there wakes nothing", config(), vec![
            (0, far("ams", 10, true), "", None),
            (1, RequestHeldIn { region: "r90".into() }, "", None),
        ]),
        ("a report made before the start was seen does not undo it", config(), vec![
            (0, stopped("m1", true), "", None),
            (1, RequestHeld, "start m1", Some(5_001)),
            (2, stopped("m1", true), "", Some(5_001)),
            (3, RequestHeld, "", Some(5_001)),
            (9, machine("m1", 0, true, true, Phase::Starting), "", Some(5_009)),
        ]),
        ("idle reports from before a wake do not stop the woken machine", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (100, MachineStarted { id: id("m1") }, "", Some(200)),
            (100, RequestReleased, "", Some(1_100)),
            (150, MachineIdle { id: id("m1"), since_ms: 0 }, "", Some(1_100)),
            (1_100, Tick, "stop m1", None),
        ]),
        ("an idle report older than the last busy one counts from the busy one", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (400, MachineBusy { id: id("m1") }, "", None),
            (600, MachineIdle { id: id("m1"), since_ms: 0 }, "", Some(1_400)),
        ]),
        ("a stop a request interrupted leaves the machine started", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (1_000, Tick, "stop m1", None),
            (1_000, StopAborted { id: id("m1") }, "", None),
            (1_500, MachineIdle { id: id("m1"), since_ms: 1_500 }, "", Some(2_500)),
        ]),
        ("a stop never confirmed is undone at the next event", config(), vec![
            (0, started("m1"), "", Some(1_000)),
            (1_000, Tick, "stop m1", None),
            (6_000, Tick, "", Some(7_000)),
            (7_000, Tick, "stop m1", None),
        ]),
        ("a start that timed out may be asked for again", config(), vec![
            (0, stopped("m1", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (5_000, Tick, "start m1", Some(10_000)),
        ]),
        ("a failed machine is not woken until it is reported stopped", config(), vec![
            (0, machine("m1", 0, true, true, Phase::Failed), "", None),
            (1, RequestHeld, "", None),
            (2, stopped("m1", true), "start m1", Some(5_002)),
        ]),
    ];
    for (what, config, steps) in scenarios {
        run(what, config, steps);
    }
}

#[test]
fn idle_machines_suspend_and_suspended_ones_wake_first() {
    use ScaleEvent::*;
    let suspending = ScaleConfig {
        idle_action: IdleAction::Suspend,
        ..config()
    };
    #[rustfmt::skip]
    let scenarios: Vec<(&str, ScaleConfig, Vec<Step>)> = vec![
        ("an idle machine is suspended, then woken when a request waits", suspending, vec![
            (0, started("m1"), "", Some(1_000)),
            (1_000, Tick, "suspend m1", None),
            (1_100, machine("m1", 0, true, true, Phase::Suspended), "", None),
            (2_000, RequestHeld, "start m1", Some(7_000)),
        ]),
        ("a suspended machine wakes before a stopped, cached, nearer one", config(), vec![
            (0, stopped("near", true), "", None),
            (0, machine("far", 90, false, false, Phase::Suspended), "", None),
            (1, RequestHeld, "start far", Some(5_001)),
            (2, RequestHeld, "", Some(5_001)),
            (3, RequestHeld, "start near", Some(5_001)),
        ]),
        ("a wake of a suspended machine that never comes falls back to suspended", config(), vec![
            (0, machine("m1", 0, true, true, Phase::Suspended), "", None),
            (0, stopped("m2", true), "", None),
            (0, RequestHeld, "start m1", Some(5_000)),
            (5_000, Tick, "start m2", Some(10_000)),
        ]),
    ];
    for (what, config, steps) in scenarios {
        run(what, config, steps);
    }
}

/// A machine of `phase` whose expected wake is `wake_ms`, as measured from its last start.
fn costed(id: &str, rtt_ms: u32, cached: bool, phase: Phase, wake_ms: u32) -> ScaleEvent {
    ScaleEvent::MachineAdded(MachineFacts {
        id: id.to_string(),
        region: format!("r{rtt_ms}"),
        rtt_ms,
        cached,
        local: rtt_ms == 0,
        phase,
        wake_ms,
    })
}

#[test]
fn the_cheapest_wake_goes_first() {
    use ScaleEvent::*;
    #[rustfmt::skip]
    let scenarios: Vec<(&str, Vec<Step>)> = vec![
        ("cached weights far away before a hydration nearby", vec![
            (0, stopped("near", false), "", None),
            (0, machine("far", 150, true, false, Phase::Stopped), "", None),
            (1, RequestHeld, "start far", Some(5_001)),
        ]),
        ("a stopped machine that loads in 300 ms before a suspended one measured at 4 s", vec![
            (0, costed("slow-wake", 0, true, Phase::Suspended, 4_000), "", None),
            (0, costed("quick-load", 0, true, Phase::Stopped, 300), "", None),
            (1, RequestHeld, "start quick-load", Some(5_001)),
        ]),
        ("equal wakes: the nearer", vec![
            (0, costed("b", 40, true, Phase::Stopped, 2_000), "", None),
            (0, costed("a", 80, true, Phase::Stopped, 2_000), "", None),
            (1, RequestHeld, "start b", Some(5_001)),
        ]),
    ];
    for (what, steps) in scenarios {
        run(what, config(), steps);
    }
}

#[test]
fn expected_wakes_come_from_the_last_start_or_the_defaults() {
    let cold = |hydrate_ms, engine_load_ms, from_suspended| colo_core::ColdStart {
        hydrate_ms,
        engine_load_ms,
        from_suspended,
        ..Default::default()
    };
    let cases = [
        ("suspended, never woken", Phase::Suspended, true, None, DEFAULT_SUSPENDED_WAKE_MS),
        ("suspended, woke in 250 ms", Phase::Suspended, true, Some(cold(0, 250, true)), 250),
        (
            "suspended, last start was cold",
            Phase::Suspended,
            true,
            Some(cold(900, 7_000, false)),
            DEFAULT_SUSPENDED_WAKE_MS,
        ),
        ("stopped, cached, never started", Phase::Stopped, true, None, DEFAULT_ENGINE_LOAD_MS),
        (
            "stopped, cached, loaded in 2 s",
            Phase::Stopped,
            true,
            Some(cold(5_000, 2_000, false)),
            2_000,
        ),
        (
            "stopped, not cached, never started",
            Phase::Stopped,
            false,
            None,
            DEFAULT_ENGINE_LOAD_MS + DEFAULT_HYDRATE_MS,
        ),
        (
            "stopped, not cached, hydrated in 5 s",
            Phase::Stopped,
            false,
            Some(cold(5_000, 2_000, false)),
            7_000,
        ),
        (
            "stopped after a wake from suspend",
            Phase::Stopped,
            true,
            Some(cold(0, 250, true)),
            DEFAULT_ENGINE_LOAD_MS,
        ),
        ("started", Phase::Started, false, None, 0),
    ];
    for (what, phase, cached, last, expected) in cases {
        assert_eq!(expected_wake_ms(phase, cached, last.as_ref()), expected, "{what}");
    }
}

#[test]
fn phases_follow_actions() {
    let mut scaler = Scaler::new(config());
    scaler.handle(stopped("m1", true), 0);
    assert_eq!(scaler.handle(ScaleEvent::RequestHeld, 0), vec![ScaleAction::StartMachine(id("m1"))]);
    assert_eq!(scaler.phase("m1"), Some(Phase::Starting));
    assert_eq!(scaler.held(), 1);
    scaler.handle(ScaleEvent::MachineStarted { id: id("m1") }, 10);
    scaler.handle(ScaleEvent::RequestReleased, 10);
    assert_eq!(scaler.handle(ScaleEvent::Tick, 1_010), vec![ScaleAction::StopMachine(id("m1"))]);
    assert_eq!(scaler.phase("m1"), Some(Phase::Stopping));
    assert_eq!(scaler.phase("nope"), None);
}

#[test]
fn validate_lists_every_problem() {
    let bad = ScaleConfig {
        soft_limit: 0,
        idle_stop_ms: Some(0),
        min_machines_running: 0,
        start_timeout_ms: 0,
        settle_ms: 0,
        idle_action: IdleAction::Stop,
    };
    assert_eq!(bad.validate().len(), 3);
    assert!(ScaleConfig::default().validate().is_empty());
}

/// A start the host refuses (no device free) wakes another machine instead; with none left to
/// try the app is stuck, with the reasons, until the refusal ages out and the start is tried
/// again.
#[test]
fn refused_starts_try_another_machine_then_say_why() {
    let mut scaler = Scaler::new(config());
    scaler.handle(stopped("a", true), 0);
    scaler.handle(stopped("b", false), 0);
    let refused = |id: &str| ScaleEvent::StartRefused {
        id: id.to_string(),
        reason: format!("host of {id} has no free device"),
    };
    assert_eq!(
        show(&scaler.handle(ScaleEvent::RequestHeld, 10)),
        "start a",
        "the cached machine first"
    );
    assert!(scaler.stuck(10).is_empty(), "a is starting");
    assert_eq!(show(&scaler.handle(refused("a"), 20)), "start b", "a refused: b is woken instead");
    assert_eq!(scaler.phase("a"), Some(Phase::Stopped));
    assert!(scaler.stuck(20).is_empty(), "b is starting");
    assert_eq!(show(&scaler.handle(refused("b"), 30)), "", "nothing left to wake");
    let stuck = scaler.stuck(30);
    assert_eq!(
        stuck,
        [
            ("a", Some("host of a has no free device")),
            ("b", Some("host of b has no free device"))
        ]
    );
    assert_eq!(
        scaler.next_deadline(),
        Some(20 + REFUSED_RETRY_MS),
        "a is tried again when its refusal ages out"
    );
    assert_eq!(show(&scaler.handle(ScaleEvent::Tick, 20 + REFUSED_RETRY_MS)), "start a");
    assert!(scaler.stuck(20 + REFUSED_RETRY_MS).is_empty());
    // A start that goes through clears the mark.
    scaler.handle(ScaleEvent::MachineStarted { id: id("a") }, 20 + REFUSED_RETRY_MS + 5);
    scaler.handle(ScaleEvent::RequestReleased, 20 + REFUSED_RETRY_MS + 6);
    assert!(scaler.stuck(20 + REFUSED_RETRY_MS + 6).is_empty(), "nothing held");
}

/// An app whose every machine failed is stuck as soon as a request is held; one with no
/// machines at all is not (a deploy may be making them).
#[test]
fn failed_machines_leave_held_requests_stuck() {
    let mut scaler = Scaler::new(config());
    scaler.handle(ScaleEvent::RequestHeld, 0);
    assert!(scaler.stuck(0).is_empty(), "no machines yet");
    scaler.handle(machine("f", 0, true, true, Phase::Failed), 1);
    assert_eq!(scaler.stuck(1), [("f", None)]);
    scaler.handle(stopped("s", true), 2);
    assert!(scaler.stuck(2).is_empty(), "s is being woken");
}

#[test]
fn forgotten_refusals_are_tried_again_at_once() {
    let mut scaler = Scaler::new(config());
    scaler.handle(stopped("a", true), 0);
    assert_eq!(show(&scaler.handle(ScaleEvent::RequestHeld, 1)), "start a");
    let refused = ScaleEvent::StartRefused {
        id: id("a"),
        reason: "full".into(),
    };
    assert_eq!(show(&scaler.handle(refused, 2)), "");
    assert_eq!(scaler.stuck(3), [("a", Some("full"))]);
    scaler.forget_refusals();
    assert_eq!(show(&scaler.handle(ScaleEvent::Tick, 4)), "start a");
}
