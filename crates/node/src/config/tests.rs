//! Table tests of the configs' validation: each bad input is refused with a problem naming its
//! field, every problem of a config is reported at once, and the defaults are valid.

use super::*;

/// The fields `result` names, in order.
fn fields(result: Result<(), Problems>) -> Vec<&'static str> {
    result.err().map(|p| p.0.iter().map(|p| p.field).collect()).unwrap_or_default()
}

fn agent() -> AgentDaemonConfig {
    AgentDaemonConfig {
        nats: "nats://127.0.0.1:4222".into(),
        store: "/srv/store".into(),
        region: "ord".into(),
        token_file: "/srv/control/api-token".into(),
        ..AgentDaemonConfig::default()
    }
}

fn edge() -> EdgeDaemonConfig {
    EdgeDaemonConfig {
        nats: "nats://127.0.0.1:4222".into(),
        region: "ord".into(),
        token_file: "/srv/control/api-token".into(),
        ..EdgeDaemonConfig::default()
    }
}

fn control() -> ControlConfig {
    ControlConfig {
        nats: "nats://127.0.0.1:4222".into(),
        store: "s3://models".into(),
        ..ControlConfig::default()
    }
}

fn fleet(text: &str) -> Option<colo_policy::Fleet> {
    Some(toml::from_str(text).unwrap())
}

#[test]
fn defaults_filled_in_are_valid() {
    assert_eq!(UpConfig::default().validate(), Ok(()));
    assert_eq!(agent().validate(), Ok(()));
    assert_eq!(edge().validate(), Ok(()));
    assert_eq!(control().validate(), Ok(()));
    assert_eq!(EdgeSettings::default().validate(), Ok(()));
}

#[test]
fn each_bad_edge_setting_names_its_field() {
    let cases: Vec<(&str, EdgeSettings, &str, &str)> = vec![
        (
            "soft limit 0",
            EdgeSettings {
                soft_limit: 0,
                ..EdgeSettings::default()
            },
            "edge.limits",
            "soft_limit",
        ),
        (
            "hard below soft",
            EdgeSettings {
                soft_limit: 8,
                hard_limit: 4,
                ..EdgeSettings::default()
            },
            "edge.limits",
            "hard_limit",
        ),
        (
            "no domain",
            EdgeSettings {
                domain: String::new(),
                ..EdgeSettings::default()
            },
            "edge.domain",
            "empty",
        ),
        (
            "no head timeout",
            EdgeSettings {
                head_timeout_secs: 0,
                ..EdgeSettings::default()
            },
            "edge.head_timeout_secs",
            "outside 1 to 86400",
        ),
        (
            "a per-address cap over the edge's",
            EdgeSettings {
                max_connections: 10,
                max_connections_per_addr: 11,
                ..EdgeSettings::default()
            },
            "edge.max_connections_per_addr",
            "more than the edge's cap of 10",
        ),
    ];
    for (case, settings, field, says) in cases {
        let problems = settings.validate().expect_err(case);
        assert_eq!(problems.0.len(), 1, "{case}: {problems}");
        assert_eq!(problems.0[0].field, field, "{case}");
        assert!(problems.0[0].reason.contains(says), "{case}: {problems}");
    }
}

#[test]
fn each_bad_up_setting_names_its_field() {
    type Case = (&'static str, fn(&mut UpConfig), &'static str);
    let cases: Vec<Case> = vec![
        ("health too fast", |c| c.health_interval_secs = 0.01, "health_interval_secs"),
        ("health too slow", |c| c.health_interval_secs = 61.0, "health_interval_secs"),
        ("health not a number", |c| c.health_interval_secs = f64::NAN, "health_interval_secs"),
        ("negative cache", |c| c.cache_gb = Some(-1.0), "cache_gb"),
        ("infinite cache", |c| c.cache_gb = Some(f64::INFINITY), "cache_gb"),
        ("no region", |c| c.region = String::new(), "region"),
        ("no engine", |c| c.engine.program = PathBuf::new(), "engine.program"),
        ("edge limits", |c| c.edge.hard_limit = 1, "edge.limits"),
        ("empty fleet", |c| c.fleet = fleet(""), "fleet"),
        (
            "fleet edge address",
            |c| c.fleet = fleet("[[hosts]]\nname = \"a\"\nregion = \"ord\"\n[[edges]]\nregion = \"ord\"\naddr = \"nowhere\"\n"),
            "fleet",
        ),
    ];
    for (case, change, field) in cases {
        let mut config = UpConfig::default();
        change(&mut config);
        assert_eq!(fields(config.validate()), vec![field], "{case}");
    }
}

#[test]
fn each_bad_agent_setting_names_its_field() {
    type Case = (&'static str, fn(&mut AgentDaemonConfig), &'static str);
    let cases: Vec<Case> = vec![
        ("no nats", |c| c.nats = String::new(), "nats"),
        ("no store", |c| c.store = " ".into(), "store"),
        ("no region", |c| c.region = String::new(), "region"),
        ("empty name", |c| c.name = Some(String::new()), "name"),
        ("no token file", |c| c.token_file = PathBuf::new(), "token_file"),
        ("short lease", |c| c.lease_ms = 299, "lease_ms"),
        ("health too fast", |c| c.health_interval_secs = 0.0, "health_interval_secs"),
        ("negative cache", |c| c.cache_gb = Some(-0.5), "cache_gb"),
        ("unknown gpu kind", |c| c.gpus = vec![("nosuchgpu".into(), 1)], "gpus"),
        ("no gpu counted", |c| c.gpus = vec![("l40s".into(), 0)], "gpus"),
        ("certificate without key", |c| c.tls.cert = Some("/srv/cert.pem".into()), "tls.key"),
        ("key without certificate", |c| c.tls.key = Some("/srv/key.pem".into()), "tls.cert"),
        ("no engine", |c| c.engine.program = PathBuf::new(), "engine.program"),
    ];
    for (case, change, field) in cases {
        let mut config = agent();
        change(&mut config);
        assert_eq!(fields(config.validate()), vec![field], "{case}");
    }
}

#[test]
fn each_bad_edge_daemon_and_control_setting_names_its_field() {
    type EdgeCase = (&'static str, fn(&mut EdgeDaemonConfig), &'static str);
    let cases: Vec<EdgeCase> = vec![
        ("no nats", |c| c.nats = String::new(), "nats"),
        ("no region", |c| c.region = String::new(), "region"),
        ("no token file", |c| c.token_file = PathBuf::new(), "token_file"),
        ("soft limit 0", |c| c.edge.soft_limit = 0, "edge.limits"),
    ];
    for (case, change, field) in cases {
        let mut config = edge();
        change(&mut config);
        assert_eq!(fields(config.validate()), vec![field], "edge: {case}");
    }
    type ControlCase = (&'static str, fn(&mut ControlConfig), &'static str);
    let cases: Vec<ControlCase> = vec![
        ("no nats", |c| c.nats = String::new(), "nats"),
        ("no store", |c| c.store = String::new(), "store"),
        ("key without certificate", |c| c.tls.key = Some("/srv/key.pem".into()), "tls.cert"),
    ];
    for (case, change, field) in cases {
        let mut config = control();
        change(&mut config);
        assert_eq!(fields(config.validate()), vec![field], "control: {case}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let config = AgentDaemonConfig {
        lease_ms: 10,
        health_interval_secs: 100.0,
        cache_gb: Some(-1.0),
        ..agent()
    };
    assert_eq!(fields(config.validate()), vec!["lease_ms", "health_interval_secs", "cache_gb"]);
    let problems = config.validate().unwrap_err();
    assert!(
        problems
            .to_string()
            .starts_with("lease_ms: must be at least 300 (got 10); health_interval_secs: "),
        "{problems}"
    );
}

#[test]
fn configs_read_from_toml_refuse_unknown_keys_and_fill_defaults() {
    let config: EdgeDaemonConfig =
        toml::from_str("nats = \"nats://n:4222\"\nregion = \"ams\"\ntoken_file = \"/t\"\n[edge]\nmax_held = 10\nsse_keepalive_ms = 0\n")
            .unwrap();
    assert_eq!(config.validate(), Ok(()));
    assert_eq!((config.edge.max_held, config.edge.soft_limit), (10, 32));
    let typo = toml::from_str::<EdgeDaemonConfig>("nats = \"n\"\n[edge]\nsoft_limt = 3\n").unwrap_err();
    assert!(typo.to_string().contains("soft_limt"), "{typo}");
}

#[test]
fn edge_settings_make_the_edge_config() {
    let settings = EdgeSettings {
        domain: "example.com".into(),
        soft_limit: 2,
        hard_limit: 3,
        hold_timeout_secs: 7,
        max_body: 1000,
        max_held: 5,
        sse_keepalive_ms: 0,
        drain_timeout_secs: 1,
        workers: 1,
        head_timeout_secs: 5,
        max_connections: 10,
        max_connections_per_addr: 2,
        ..EdgeSettings::default()
    };
    let config = settings.edge_config("ams", Duration::from_millis(40), None);
    assert_eq!(config.domain, "example.com");
    assert_eq!(config.region, "ams");
    assert_eq!((config.route.soft_limit, config.route.hard_limit), (2, 3));
    assert_eq!(config.hold_timeout, Duration::from_secs(7));
    assert_eq!((config.max_body, config.max_held), (1000, 5));
    assert_eq!(config.sse_keepalive, Duration::ZERO);
    assert_eq!(config.inter_region_delay, Duration::from_millis(40));
    assert!(config.admin_token.is_none());
    assert_eq!(config.limits.head_timeout, Duration::from_secs(5));
    assert_eq!((config.limits.max_connections, config.limits.max_connections_per_addr), (10, 2));
    assert_eq!(config.limits.idle_timeout, colo_edge::Limits::DEFAULT.idle_timeout);
}
