//! The simulated world beyond queueing: scale to zero decided by colo-policy's scaler, cold
//! starts from cache, peer and store, a daily arrival curve, the roofline's service times, and
//! what it all costs. Each expectation is worked out by hand from the scenario.

use colo_sim::{run, Roofline, Scenario};

fn scenario(text: &str) -> Scenario {
    Scenario::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes of Llama 3.1 8B in bf16, as the planner counts them.
fn llama_8b_bytes() -> f64 {
    let l40s = colo_core::Catalogue::builtin().get("l40s").unwrap().clone();
    Roofline::new(colo_sim::MODELS[0].1, colo_model_quant_bf16(), &l40s, 1, 100.0, 100.0)
        .unwrap()
        .weights_bytes()
}

fn colo_model_quant_bf16() -> colo_model::Quant {
    colo_model::Quant::Bf16
}

/// Requests far apart, a machine that stops after 60 s idle: nearly every request wakes it,
/// and waits what a cold start from the host's cache takes (weights at 16 Gbit/s + 5 s load).
#[test]
fn a_stopped_machine_is_woken_for_a_request_and_stopped_when_idle() {
    let s = scenario(
        r#"
        seed = 3
        duration_s = 400000
        warmup_s = 1000
        gpu = "l40s"
        [[region]]
        name = "ord"
        scalable = 1
        cached = true
        arrival_rate = 0.001      # one request every 1000 s on average
        [service]
        distribution = "fixed"
        mean_ms = 2000
        [routing]
        hard_limit = 1
        [model]
        name = "llama-3.1-8b"
        [scaling]
        autostop_s = 60
        engine_load_s = 5
        [storage]
        cache_gbps = 16
        "#,
    );
    let report = run(&s, &mut |_| {});
    let wake_ms = llama_8b_bytes() * 8.0 / 16e9 * 1000.0 + 5000.0;
    let o = &report.overall;
    assert!(o.requests > 300, "{}", o.requests);
    // A request finds the machine stopped unless the previous one came less than ~60 s + its
    // service before: P(gap < 67 s) = 1 - exp(-0.067), about 6.5% of requests.
    let woke = report.cold_starts.count as f64 / o.requests as f64;
    assert!((0.90..0.97).contains(&woke), "{woke}: {} cold starts", report.cold_starts.count);
    assert_eq!(report.cold_starts.count, report.cold_starts.from_cache);
    assert!(
        (report.cold_starts.ms.p50 - wake_ms).abs() / wake_ms < 0.02,
        "{:?} vs {wake_ms}",
        report.cold_starts.ms
    );
    assert!((o.wait_ms.p50 - wake_ms).abs() / wake_ms < 0.02, "{:?} vs {wake_ms}", o.wait_ms);
    assert!(o.wait_ms.p99 < wake_ms * 1.02 + 2000.0, "{:?}", o.wait_ms);
    // GPU time: each wake holds the GPU for the start, the service and the 60 s idle.
    let per_wake_h = (wake_ms + 2000.0 + 60_000.0) / 3.6e6;
    let expected = report.cold_starts.count as f64 * per_wake_h;
    assert!(
        (report.gpu_hours - expected).abs() / expected < 0.08,
        "{} vs {expected}",
        report.gpu_hours
    );
    let measured_h = report.measured_s / 3600.0;
    assert!(
        report.gpu_hours < measured_h * 0.1,
        "scale to zero keeps the GPU off most of the time"
    );
    // L40S at the fly-2024 price book's $1.25 an hour.
    assert!((report.cost.gpu_usd - report.gpu_hours * 1.25).abs() < 1e-6, "{:?}", report.cost);
}

/// A host's first start reads the weights from the store (paying its egress across clouds)
/// and later ones from its cache; a second host of the region reads them from its peer.
#[test]
fn cold_starts_read_from_store_then_cache_or_peer() {
    let text = |scalable: u32, min: u32, rate: f64| {
        format!(
            r#"
            seed = 5
            duration_s = 40000
            warmup_s = 0
            gpu = "l40s"
            [[region]]
            name = "fra"
            scalable = {scalable}
            arrival_rate = {rate}
            cloud = "fly"
            [service]
            distribution = "fixed"
            mean_ms = 3000
            [routing]
            hard_limit = 1
            [model]
            name = "llama-3.1-8b"
            [scaling]
            autostop_s = 30
            engine_load_s = 5
            min_running = {min}
            [storage]
            region = "iad"
            cloud = "aws"
            egress = "aws-s3"
            origin_gbps = 1
            remote_gbps = 0.5
            peer_gbps = 10
            "#
        )
    };
    let bytes = llama_8b_bytes();
    // One host, requests far apart: the store once (at its remote rate), then the cache.
    let report = run(&scenario(&text(1, 0, 0.002)), &mut |_| {});
    let c = &report.cold_starts;
    assert_eq!(c.from_origin, 1, "{c:?}");
    assert_eq!(c.from_peer, 0, "{c:?}");
    assert!(c.from_cache > 40, "{c:?}");
    let from_store_ms = bytes * 8.0 / 0.5e9 * 1000.0 + 5000.0;
    let from_cache_ms = bytes * 8.0 / 16e9 * 1000.0 + 5000.0;
    assert!((c.ms.p50 - from_cache_ms).abs() / from_cache_ms < 0.02, "{c:?} vs {from_cache_ms}");
    assert!(
        c.ms.mean * c.count as f64 > from_store_ms + (c.count - 1) as f64 * from_cache_ms * 0.98,
        "{c:?}"
    );
    assert_eq!(report.egress_bytes.weights_bytes, bytes);
    assert!((report.cost.egress_usd - bytes / 1e9 * 0.09).abs() < 1e-9, "{:?}", report.cost);
    // Two hosts, one kept running with the weights: the other's first start reads from it.
    let report = run(&scenario(&text(2, 1, 0.1)), &mut |_| {});
    let c = &report.cold_starts;
    assert_eq!((c.from_origin, c.from_peer), (0, 1), "{c:?}");
    assert!(c.from_cache > 10, "{c:?}");
    assert_eq!(report.egress_bytes.weights_bytes, 0.0);
    assert!(report.overall.turned_away == 0 && report.overall.requests > 3500);
}

/// A daily cosine with a peak four times the trough: the busiest hour gets about four times
/// the quietest's arrivals, at the peak hour of local solar time.
#[test]
fn a_diurnal_curve_peaks_at_the_local_hour() {
    let s = scenario(
        r#"
        seed = 9
        duration_s = 86400
        warmup_s = 0
        [[region]]
        name = "syd"               # longitude 151.18: local noon is about 01:55 UTC
        machines = 50
        arrival_rate = 20
        [arrivals]
        curve = "diurnal"
        peak_to_trough = 4
        peak_hour = 12
        [service]
        distribution = "fixed"
        mean_ms = 10
        [routing]
        hard_limit = 1
        "#,
    );
    let report = run(&s, &mut |_| {});
    let mean = report.simulated_requests as f64 / 86400.0;
    assert!((mean - 20.0).abs() < 0.3, "{mean}");
    let busiest = report
        .timeline
        .iter()
        .max_by(|a, b| a.arrivals_per_s.total_cmp(&b.arrivals_per_s))
        .unwrap();
    let quietest = report
        .timeline
        .iter()
        .min_by(|a, b| a.arrivals_per_s.total_cmp(&b.arrivals_per_s))
        .unwrap();
    let ratio = busiest.arrivals_per_s / quietest.arrivals_per_s;
    assert!((3.3..4.8).contains(&ratio), "{ratio}");
    // The bucket ending at t holds arrivals of the quarter hour before it.
    let peak_utc_h = (12.0 - 151.18 / 15.0 + 24.0) % 24.0;
    let got_h = (busiest.t_s / 3600.0 - 0.125 + 24.0) % 24.0;
    let off = (got_h - peak_utc_h).abs().min(24.0 - (got_h - peak_utc_h).abs());
    assert!(off < 1.5, "peak at {got_h} h UTC, expected {peak_utc_h}");
}

/// The roofline's service: a request alone on an L40S takes its prefill and one decode step
/// per output token at batch 1; eight at once take longer per step but far less than eight
/// times as long.
#[test]
fn roofline_service_times_follow_the_planner() {
    let text = |rate: f64| {
        format!(
            r#"
            seed = 1
            duration_s = 20000
            warmup_s = 100
            gpu = "l40s"
            [[region]]
            name = "ord"
            machines = 1
            arrival_rate = {rate}
            [service]
            distribution = "roofline"
            [model]
            name = "llama-3.1-8b"
            [tokens]
            prompt_mean = 512
            output_mean = 128
            [routing]
            hard_limit = 8
            "#
        )
    };
    let l40s = colo_core::Catalogue::builtin().get("l40s").unwrap().clone();
    let r = Roofline::new(colo_sim::MODELS[0].1, colo_model::Quant::Bf16, &l40s, 8, 512.0, 128.0).unwrap();
    let alone_ms = (r.prefill_s(512) + 128.0 * r.step_s(1)) * 1000.0;
    let light = run(&scenario(&text(0.002)), &mut |_| {});
    assert!(
        (light.overall.latency_ms.p50 - alone_ms).abs() / alone_ms < 0.02,
        "{:?} vs {alone_ms}",
        light.overall.latency_ms
    );
    let ttft_ms = (r.prefill_s(512) + r.step_s(1)) * 1000.0;
    assert!(
        (light.overall.ttft_ms.p50 - ttft_ms).abs() / ttft_ms < 0.02,
        "{:?} vs {ttft_ms}",
        light.overall.ttft_ms
    );
    assert_eq!(light.overall.tokens, 128 * light.overall.requests);
    // Near a full batch: latency grows with the step time, not with the number in flight.
    let busy = run(&scenario(&text(6.0 / (alone_ms / 1000.0))), &mut |_| {});
    let p50 = busy.overall.latency_ms.p50;
    assert!(p50 > alone_ms * 1.01 && p50 < alone_ms * 2.0, "{p50} vs {alone_ms}");
    assert!(busy.utilisation > 0.5, "{}", busy.utilisation);
    // Cost per million tokens: the machine's hours at $1.25 over the tokens answered.
    let expected = busy.gpu_hours * 1.25 / (busy.overall.tokens as f64 / 1e6);
    assert!((busy.cost.usd_per_million_tokens.unwrap() - expected).abs() < 1e-9);
}

#[test]
fn bad_world_fields_are_named() {
    let text = r#"
        duration_s = 100
        gpu = "b300"
        prices = "cheap"
        [[region]]
        name = "ord"
        scalable = 2
        arrival_rate = 1
        egress = "pigeon"
        [arrivals]
        curve = "diurnal"
        peak_to_trough = 0.5
        [service]
        distribution = "roofline"
        mean_ms = 4
        [tokens]
        prompt_mean = 0
        output_mean = 10
        [model]
        name = "gpt-9"
        quant = "fp3"
        [storage]
        origin_gbps = 0
        egress = "nowhere"
    "#;
    let error = Scenario::from_toml(text).unwrap_err().to_string();
    for field in [
        "region[0].gpu",
        "prices",
        "region[0].scalable",
        "region[0].egress",
        "arrivals.peak_to_trough",
        "service.mean_ms",
        "tokens.prompt_mean",
        "model.name",
        "model.quant",
        "storage.origin_gbps",
        "storage.egress",
    ] {
        assert!(error.contains(field), "{field} not named in: {error}");
    }
    // A batch the card's memory cannot hold is refused with the planner's reason.
    let too_big = r#"
        duration_s = 100
        gpu = "a10"
        [[region]]
        name = "ord"
        machines = 1
        arrival_rate = 1
        [service]
        distribution = "roofline"
        [tokens]
        prompt_mean = 4000
        output_mean = 4000
        [model]
        name = "llama-3.1-8b"
        [routing]
        hard_limit = 64
    "#;
    let error = Scenario::from_toml(too_big).unwrap_err().to_string();
    assert!(error.contains("region[0].gpu") && error.contains("a10"), "{error}");
}

/// Machines placed by colo-policy's `place`: the busy hour of each region's callers, on the
/// scenario's hosts within the RTT limit, cheapest first. The run uses exactly the machines
/// the placement chose, and reports demand it could not meet.
#[test]
fn placement_puts_machines_where_the_policy_says() {
    let text = |hosts: &str| {
        format!(
            r#"
            seed = 4
            duration_s = 3600
            warmup_s = 60
            [[region]]
            name = "ord"
            arrival_rate = 3
            [[region]]
            name = "ams"
            arrival_rate = 1
            [[region]]
            name = "syd"
            arrival_rate = 0.5
            [service]
            distribution = "roofline"
            [model]
            name = "llama-3.1-8b"
            [tokens]
            prompt_mean = 512
            output_mean = 128
            [routing]
            hard_limit = 16
            [placement]
            rtt_limit_ms = 120
            {hosts}
            "#
        )
    };
    let hosts = r#"
            [[placement.host]]
            name = "ord-1"
            region = "ord"
            gpus = { l40s = 4, a10 = 4 }
            [[placement.host]]
            name = "ams-1"
            region = "ams"
            gpus = { l40s = 2 }
    "#;
    let s = scenario(&text(hosts));
    let placement = s.place().unwrap();
    let report = run(&s, &mut |_| {});
    let placed_in = |region: &str| placement.machines.iter().filter(|m| m.region == region).count() as u32;
    for r in &report.regions {
        assert_eq!(r.machines, placed_in(&r.name), "{}: {:?}", r.name, placement.machines);
    }
    assert!(placed_in("ord") >= 1 && placed_in("ams") >= 1, "{:?}", placement.machines);
    assert_eq!(report.regions[0].gpu.as_deref(), Some("l40s"), "the cheaper card per request");
    // syd is beyond 120 ms of every host: its demand is unmet, and its callers are served from
    // afar anyway (the edge routes to whatever has room).
    assert_eq!(report.unmet.len(), 1, "{:?}", report.unmet);
    assert_eq!(report.unmet[0].region, "syd");
    assert!(report.regions[2].outcome.requests > 1000 && report.overall.turned_away == 0);
    let expected_usd: f64 = placement.machines.iter().map(|m| m.usd_per_hour).sum::<f64>() * report.measured_s / 3600.0;
    assert!(
        (report.cost.gpu_usd - expected_usd).abs() < 1e-6,
        "{} vs {expected_usd}",
        report.cost.gpu_usd
    );

    let error = Scenario::from_toml(&text("host = []")).unwrap_err().to_string();
    assert!(error.contains("placement"), "{error}");
}
