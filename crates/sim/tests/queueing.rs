//! The simulator against queueing theory (issue 18, item 4): M/M/c mean waits match Erlang C
//! within 3% for several (c, load) pairs up to 90% utilisation, and M/D/1 matches
//! Pollaczek-Khinchine the same way. Every decision in these runs is colo-policy's pick and
//! hold, with the hard limit at one request per machine.

use colo_sim::queueing::{md1_mean_wait, mmc_mean_wait};
use colo_sim::{run, Scenario};

/// An M/x/c scenario: one region, `c` machines with hard limit 1, Poisson arrivals at `rho`
/// utilisation, service `distribution` with mean 10 ms, `requests` arrivals in all.
fn scenario(c: u32, rho: f64, distribution: &str, requests: f64, seed: u64) -> Scenario {
    let mean_ms = 10.0;
    let rate = rho * c as f64 / (mean_ms / 1000.0);
    let duration = requests / rate;
    let text = format!(
        r#"
        seed = {seed}
        duration_s = {duration}
        warmup_s = {warmup}
        [[region]]
        name = "ord"
        machines = {c}
        arrival_rate = {rate}
        [service]
        distribution = "{distribution}"
        mean_ms = {mean_ms}
        [routing]
        hard_limit = 1
        "#,
        warmup = duration / 50.0,
    );
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn mmc_waits_match_erlang_c() {
    // Heavier loads need longer runs for the same precision (waits are strongly correlated).
    let cases = [(1, 0.5, 2e6), (1, 0.9, 1.2e7), (2, 0.8, 4e6), (4, 0.9, 8e6), (16, 0.9, 4e6)];
    for (c, rho, requests) in cases {
        let s = scenario(c, rho, "exponential", requests, 7);
        let report = run(&s, &mut |_| {});
        let rate = s.regions[0].arrival_rate;
        let theory = mmc_mean_wait(c, rate / 1000.0, 10.0);
        let got = report.overall.wait_ms.mean;
        let error = (got - theory).abs() / theory;
        println!(
            "M/M/{c} at {rho}: mean wait {got:.4} ms, Erlang C {theory:.4} ms, error {:.2}% ({} requests, {:.2} s)",
            error * 100.0,
            report.simulated_requests,
            report.wall_s
        );
        assert!(error < 0.03, "M/M/{c} at {rho}: {got} ms against {theory} ms");
        assert!(
            (report.regions[0].utilisation - rho).abs() < 0.01,
            "{}",
            report.regions[0].utilisation
        );
    }
}

#[test]
fn md1_waits_match_pollaczek_khinchine() {
    for (rho, requests) in [(0.5, 2e6), (0.9, 8e6)] {
        let s = scenario(1, rho, "fixed", requests, 11);
        let report = run(&s, &mut |_| {});
        let rate = s.regions[0].arrival_rate;
        let theory = md1_mean_wait(rate / 1000.0, 10.0);
        let got = report.overall.wait_ms.mean;
        let error = (got - theory).abs() / theory;
        println!(
            "M/D/1 at {rho}: mean wait {got:.4} ms, P-K {theory:.4} ms, error {:.2}%",
            error * 100.0
        );
        assert!(error < 0.03, "M/D/1 at {rho}: {got} ms against {theory} ms");
    }
}

#[test]
fn a_seed_gives_the_same_report() {
    let a = run(&scenario(3, 0.7, "exponential", 1e5, 5), &mut |_| {});
    let b = run(&scenario(3, 0.7, "exponential", 1e5, 5), &mut |_| {});
    let c = run(&scenario(3, 0.7, "exponential", 1e5, 6), &mut |_| {});
    assert_eq!(a.overall.wait_ms, b.overall.wait_ms);
    assert_eq!(a.overall.latency_ms, b.overall.latency_ms);
    assert_ne!(a.overall.latency_ms, c.overall.latency_ms);
}

/// Callers of a region without machines are served by another region's, with the RTT between
/// them in their latency (the edge counts a request in flight, against the hard limit, from
/// the moment it is sent until its answer is back, as the real edge does).
#[test]
fn callers_far_from_machines_pay_the_rtt() {
    let text = r#"
        seed = 2
        duration_s = 2000
        warmup_s = 100
        [[region]]
        name = "ams"
        arrival_rate = 5
        [[region]]
        name = "ord"
        machines = 4
        arrival_rate = 20
        [service]
        distribution = "fixed"
        mean_ms = 50
        [routing]
        hard_limit = 1
    "#;
    let scenario = Scenario::from_toml(text).unwrap();
    let report = run(&scenario, &mut |_| {});
    let rtt = colo_core::Regions::builtin().rtt_ms("ams", "ord").unwrap();
    let (ams, ord) = (&report.regions[0], &report.regions[1]);
    assert!(ams.outcome.requests > 8_000 && ord.outcome.requests > 30_000, "{report:?}");
    // Fixed 50 ms service: ord's own callers see 50 ms plus their wait; ams's callers see the
    // RTT on top.
    assert!((ord.outcome.latency_ms.p50 - 50.0).abs() < 2.0, "{:?}", ord.outcome.latency_ms);
    let extra = ams.outcome.latency_ms.p50 - ord.outcome.latency_ms.p50;
    assert!((extra - rtt).abs() < 3.0, "ams pays {extra} ms more; RTT {rtt} ms");
    assert_eq!(ams.machines, 0);
    assert!((ord.utilisation - 25.0 * 0.05 / 4.0).abs() < 0.02, "{}", ord.utilisation);
}
