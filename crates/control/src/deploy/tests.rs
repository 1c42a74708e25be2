//! Table tests of a deploy's checks: every problem at once, each naming its field.

use super::*;
use colo_core::RegionDemand;

fn demand(region: &str, requests_per_s: f64) -> Demand {
    Demand {
        rtt_limit_ms: None,
        regions: vec![RegionDemand {
            region: region.into(),
            requests_per_s,
            prompt_tokens: 256,
            output_tokens: 64,
        }],
    }
}

fn engine(kind: colo_core::EngineKind, bin: Option<&str>) -> colo_core::EngineSpec {
    colo_core::EngineSpec {
        kind,
        bin: bin.map(String::from),
        args: Vec::new(),
        sleep_after_secs: 0,
    }
}

fn regions(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

#[test]
fn validates_by_table() {
    let live = ["ord", "ord", "ams"];
    // (what, options, app, machines, the problems as `field: reason` beginnings; none: valid)
    let cases: Vec<(&str, DeployOptions, &str, u32, Vec<&str>)> = vec![
        ("the defaults", DeployOptions::default(), "chat", 1, vec![]),
        (
            "everything that can be given, right",
            DeployOptions {
                gpu: Some("l40s".into()),
                gpus_per_machine: Some(2),
                soft_limit: Some(2),
                hard_limit: Some(2),
                autostop_secs: Some(1),
                min_running: 1,
                regions: regions(&[("ord", 2), ("ams", 1)]),
                demand: None,
                engine_cmd: Some("serve --port {port}".into()),
                route: Some(colo_core::RouteMode::RoundRobin),
                engine: None,
                autostop_to: colo_core::IdleAction::Stop,
                route_weights: None,
            },
            "chat",
            3,
            vec![],
        ),
        (
            "a demand alone",
            DeployOptions {
                demand: Some(demand("ord", 2.0)),
                ..Default::default()
            },
            "chat",
            1,
            vec![],
        ),
        (
            "weights for a mode that has none",
            DeployOptions {
                route: Some(colo_core::RouteMode::RoundRobin),
                route_weights: Some(colo_core::RouteWeights::default()),
                ..Default::default()
            },
            "chat",
            1,
            vec!["route_weights: weights apply to --route score only"],
        ),
        (
            "a weight over the limit",
            DeployOptions {
                route_weights: Some(colo_core::RouteWeights {
                    prefix: 500,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "chat",
            1,
            vec!["route_weights: a weight of 500 is over the limit of 100"],
        ),
        (
            "suspend without autostop",
            DeployOptions {
                autostop_to: colo_core::IdleAction::Suspend,
                ..Default::default()
            },
            "chat",
            1,
            vec!["autostop_to: suspend needs --autostop"],
        ),
        (
            "autostop of zero",
            DeployOptions {
                autostop_secs: Some(0),
                ..Default::default()
            },
            "chat",
            1,
            vec!["autostop: must be at least 1 second"],
        ),
        (
            "a hard limit under the soft one",
            DeployOptions {
                soft_limit: Some(4),
                hard_limit: Some(2),
                ..Default::default()
            },
            "chat",
            1,
            vec!["limits: soft limit Some(4) and hard limit Some(2)"],
        ),
        (
            "two GPUs per machine for colo's engine",
            DeployOptions {
                gpus_per_machine: Some(2),
                ..Default::default()
            },
            "chat",
            1,
            vec!["gpus_per_machine: colo's engine runs a machine on one GPU"],
        ),
        (
            "two GPUs per machine for vLLM, and none",
            DeployOptions {
                gpus_per_machine: Some(0),
                engine: Some(colo_core::EngineSpec {
                    kind: colo_core::EngineKind::Vllm,
                    bin: None,
                    args: Vec::new(),
                    sleep_after_secs: 0,
                }),
                ..Default::default()
            },
            "chat",
            1,
            vec!["gpus_per_machine: must be at least 1"],
        ),
        (
            "nine GPUs per machine",
            DeployOptions {
                gpus_per_machine: Some(9),
                engine_cmd: Some("serve --port {port} --tp {tp}".into()),
                ..Default::default()
            },
            "chat",
            1,
            vec!["gpus_per_machine: 9 is more than the 8"],
        ),
        (
            "a zero limit",
            DeployOptions {
                hard_limit: Some(0),
                ..Default::default()
            },
            "chat",
            1,
            vec!["limits: "],
        ),
        ("a bad app name", DeployOptions::default(), "Chat", 1, vec!["app: "]),
        (
            "no machine",
            DeployOptions::default(),
            "chat",
            0,
            vec!["machines: 0 is outside 1 to 64"],
        ),
        (
            "too many machines",
            DeployOptions::default(),
            "chat",
            65,
            vec!["machines: 65 is outside 1 to 64"],
        ),
        (
            "a region without a live host",
            DeployOptions {
                regions: regions(&[("syd", 1)]),
                ..Default::default()
            },
            "chat",
            1,
            vec!["regions: no host in region \"syd\" (hosts are in: ord, ord, ams)"],
        ),
        (
            "a region of none",
            DeployOptions {
                regions: regions(&[("ord", 0)]),
                ..Default::default()
            },
            "chat",
            1,
            vec!["regions: ord=0: a listed region needs at least one machine"],
        ),
        (
            "an engine command without {port}",
            DeployOptions {
                engine_cmd: Some("serve".into()),
                ..Default::default()
            },
            "chat",
            1,
            vec!["engine_cmd: the command must contain {port}"],
        ),
        (
            "an engine profile",
            DeployOptions {
                engine: Some(engine(colo_core::EngineKind::Vllm, Some("/opt/vllm/bin/vllm"))),
                ..Default::default()
            },
            "chat",
            1,
            vec![],
        ),
        (
            "an engine profile and an engine command",
            DeployOptions {
                engine: Some(engine(colo_core::EngineKind::Vllm, None)),
                engine_cmd: Some("serve --port {port}".into()),
                ..Default::default()
            },
            "chat",
            1,
            vec!["engine: give an engine profile or an engine command, not both"],
        ),
        (
            "an empty engine program",
            DeployOptions {
                engine: Some(engine(colo_core::EngineKind::LlamaServer, Some(" "))),
                ..Default::default()
            },
            "chat",
            1,
            vec!["engine_bin: an empty program name"],
        ),
        (
            "a demand and regions",
            DeployOptions {
                demand: Some(demand("ord", 2.0)),
                regions: regions(&[("ord", 1)]),
                ..Default::default()
            },
            "chat",
            1,
            vec!["demand: give machines per region or a demand, not both"],
        ),
        (
            "a wrong demand names its own fields",
            DeployOptions {
                demand: Some(demand("ord", 0.0)),
                ..Default::default()
            },
            "chat",
            1,
            vec!["demand: demand.regions[0].requests_per_s: 0 must be above zero"],
        ),
        (
            "every problem at once, in order",
            DeployOptions {
                autostop_secs: Some(0),
                soft_limit: Some(0),
                regions: regions(&[("ams", 0), ("syd", 1)]),
                engine_cmd: Some("serve".into()),
                ..Default::default()
            },
            "-x",
            0,
            vec![
                "autostop: ",
                "limits: ",
                "app: ",
                "machines: ",
                "regions: ams=0",
                "regions: no host in region \"syd\"",
                "engine_cmd: ",
            ],
        ),
    ];
    for (what, options, app, machines, expected) in cases {
        let problems = match options.validate(app, "tiny", machines, &live) {
            Ok((name, model)) => {
                assert_eq!((name.as_str(), model.as_str()), (app, "tiny"), "{what}");
                Vec::new()
            }
            Err(Problems(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(problems.len(), expected.len(), "{what}: {problems:?}");
        for (problem, start) in problems.iter().zip(&expected) {
            assert!(problem.starts_with(start), "{what}: {problem:?} should start with {start:?}");
        }
    }
    // Problems read as one line: `field: reason; field: reason`.
    let both = DeployOptions {
        autostop_secs: Some(0),
        ..Default::default()
    }
    .validate("chat", "tiny", 0, &live);
    assert_eq!(
        ControlError::Invalid(both.unwrap_err()).to_string(),
        "autostop: must be at least 1 second when given; machines: 0 is outside 1 to 64"
    );
}

#[test]
fn counts_machines_by_table() {
    let placed = |region: &str| PlacedMachine {
        host: format!("{region}-1"),
        region: region.into(),
        gpu: "l40s".into(),
        n_gpus: 1,
        quant: colo_model::Quant::Bf16,
        usd_per_hour: 1.0,
        serves: BTreeMap::new(),
        load: 0.5,
    };
    let many: Vec<PlacedMachine> = (0..65).map(|_| placed("ord")).collect();
    let two = [placed("ord"), placed("ams"), placed("ord")];
    // (per-region counts, placed machines, min running, requested, machines or the problem)
    type Case<'a> = (BTreeMap<String, u32>, Option<&'a [PlacedMachine]>, u32, u32, Result<u32, &'a str>);
    let cases: Vec<Case> = vec![
        (regions(&[]), None, 0, 3, Ok(3)),
        (regions(&[("ord", 2), ("ams", 1)]), None, 0, 1, Ok(3)),
        (regions(&[("ord", 2), ("ams", 1)]), None, 1, 1, Ok(3)),
        (
            regions(&[("ord", 2), ("ams", 1)]),
            None,
            2,
            1,
            Err("min_running: 2 is more than the 1 machines the app has in a region"),
        ),
        (regions(&[]), None, 4, 3, Err("min_running: 4 is more than the 3 machines")),
        (
            regions(&[("ord", 40), ("ams", 25)]),
            None,
            0,
            1,
            Err("regions: 65 machines in all is more than 64"),
        ),
        (regions(&[]), Some(&two), 1, 1, Ok(3)),
        (regions(&[]), Some(&two), 2, 1, Err("min_running: 2 is more than the 1 machines")),
        (regions(&[]), Some(&many), 0, 1, Err("demand: 65 machines in all is more than 64")),
    ];
    for (regions, placed, min_running, requested, expected) in cases {
        let options = DeployOptions {
            regions: regions.clone(),
            min_running,
            ..Default::default()
        };
        match (options.machine_count(requested, placed), expected) {
            (Ok(n), Ok(want)) => assert_eq!(n, want, "{regions:?}"),
            (Err(problems), Err(start)) => assert!(problems.to_string().starts_with(start), "{problems} / {start}"),
            (got, want) => panic!("{regions:?} min {min_running}: {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn engines_need_models_in_their_format() {
    use colo_core::EngineKind::*;
    let files = |paths: &[&str]| {
        let files = paths
            .iter()
            .map(|p| colo_model::FileEntry {
                path: p.to_string(),
                size: 1,
                chunks: Vec::new(),
                safetensors: None,
                gguf: None,
            })
            .collect();
        colo_model::Manifest::new("tiny", 1 << 20, files, 0)
    };
    let safetensors = files(&["config.json", "model.safetensors"]);
    let gguf = files(&["tiny-q4.gguf"]);
    // (engine, model, the problem's start; none: it suits)
    let cases: Vec<(Option<colo_core::EngineKind>, &colo_model::Manifest, Option<&str>)> = vec![
        (None, &safetensors, None),
        (Some(Vllm), &safetensors, None),
        (Some(Sglang), &safetensors, None),
        (Some(LlamaServer), &gguf, None),
        (
            Some(LlamaServer),
            &safetensors,
            Some("engine: llama-server serves a GGUF file and model tiny has none"),
        ),
        (Some(Vllm), &gguf, Some("engine: vllm serves a config.json")),
        (None, &gguf, Some("engine: colo serves a config.json")),
    ];
    for (kind, manifest, expected) in cases {
        let options = DeployOptions {
            engine: kind.map(|k| engine(k, None)),
            ..Default::default()
        };
        let got = options.check_model(manifest).map_err(|Problems(p)| p[0].to_string());
        match expected {
            None => assert!(got.is_ok(), "{kind:?}: {got:?}"),
            Some(start) => assert!(got.as_ref().is_err_and(|e| e.starts_with(start)), "{kind:?}: {got:?}"),
        }
    }
    // An engine the app brings takes whatever the model holds.
    let own = DeployOptions {
        engine_cmd: Some("serve --port {port}".into()),
        ..Default::default()
    };
    assert!(own.check_model(&gguf).is_ok());
}
