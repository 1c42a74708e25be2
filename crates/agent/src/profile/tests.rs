//! The command lines, health readings and log tails of each engine profile.

use super::*;
use colo_core::AppName;

fn machine(engine: Option<EngineSpec>, engine_cmd: Option<&str>, device: Device) -> Machine {
    let name = AppName::new("chat").unwrap();
    let mut m = Machine::new("m-1".into(), name.clone(), name, "r".into(), device, "h".into(), "ord".into());
    m.engine = engine;
    m.engine_cmd = engine_cmd.map(String::from);
    m
}

fn spec(kind: EngineKind, bin: Option<&str>, args: &[&str]) -> Option<EngineSpec> {
    Some(EngineSpec {
        kind,
        bin: bin.map(String::from),
        args: args.iter().map(|a| a.to_string()).collect(),
        sleep_after_secs: 0,
    })
}

/// The command as one line, program first, and its CUDA_VISIBLE_DEVICES.
fn line(machine: &Machine, dir: &Path) -> (String, Option<String>) {
    let colo = EngineCommand {
        program: PathBuf::from("/usr/bin/colo"),
        args: vec!["engine".into(), "serve".into()],
        load_while_pulling: false,
    };
    let command = command(&colo, machine, dir, "127.0.0.1".parse().unwrap(), 9000).unwrap();
    let std = command.as_std();
    let mut words = vec![std.get_program().to_string_lossy().into_owned()];
    words.extend(std.get_args().map(|a| a.to_string_lossy().into_owned()));
    let cuda = std
        .get_envs()
        .find(|(k, _)| *k == "CUDA_VISIBLE_DEVICES")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()));
    (words.join(" "), cuda)
}

#[test]
fn command_lines_by_profile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.gguf"), [0u8; 10]).unwrap();
    std::fs::write(dir.path().join("model-q4.gguf"), [0u8; 100]).unwrap();
    let d = dir.path().display().to_string();
    let gpu = Device::Gpu {
        index: 3,
        name: "NVIDIA L40S".into(),
        memory_mib: 46068,
    };
    let cpu = Device::Cpu { slot: 0 };
    // A tensor-parallel machine: cards 3 and 5 of the host.
    let two = |mut m: Machine| {
        m.extra_devices = vec![Device::Gpu {
            index: 5,
            name: "NVIDIA L40S".into(),
            memory_mib: 46068,
        }];
        m
    };
    let cases: Vec<(&str, Machine, String, Option<&str>)> = vec![
        (
            "colo's engine",
            machine(None, None, cpu.clone()),
            format!("/usr/bin/colo engine serve --model-dir {d} --port 9000 --host 127.0.0.1 --name chat"),
            None,
        ),
        (
            "colo's engine with extra arguments",
            machine(spec(EngineKind::Colo, None, &["--max-batch", "8"]), None, cpu.clone()),
            format!("/usr/bin/colo engine serve --model-dir {d} --port 9000 --host 127.0.0.1 --name chat --max-batch 8"),
            Some(""),
        ),
        (
            "llama-server on the largest GGUF, every layer on the card",
            machine(spec(EngineKind::LlamaServer, None, &["--parallel", "4"]), None, gpu.clone()),
            format!("llama-server -m {d}/model-q4.gguf --host 127.0.0.1 --port 9000 --alias chat --metrics -ngl 999 --parallel 4"),
            Some("3"),
        ),
        (
            "vLLM",
            machine(spec(EngineKind::Vllm, Some("/opt/vllm/bin/vllm"), &[]), None, gpu.clone()),
            format!("/opt/vllm/bin/vllm serve {d} --host 127.0.0.1 --port 9000 --served-model-name chat"),
            Some("3"),
        ),
        (
            "SGLang through python",
            machine(spec(EngineKind::Sglang, None, &[]), None, gpu.clone()),
            format!(
                "python3 -m sglang.launch_server --model-path {d} --host 127.0.0.1 --port 9000 --served-model-name chat --enable-metrics"
            ),
            Some("3"),
        ),
        (
            "SGLang through its own launcher",
            machine(spec(EngineKind::Sglang, Some("sglang-serve"), &["--tp", "1"]), None, cpu.clone()),
            format!("sglang-serve --model-path {d} --host 127.0.0.1 --port 9000 --served-model-name chat --enable-metrics --tp 1"),
            Some(""),
        ),
        (
            "vLLM on two cards, tensor parallel",
            two(machine(spec(EngineKind::Vllm, None, &[]), None, gpu.clone())),
            format!("vllm serve {d} --host 127.0.0.1 --port 9000 --served-model-name chat --tensor-parallel-size 2"),
            Some("3,5"),
        ),
        (
            "SGLang on two cards",
            two(machine(spec(EngineKind::Sglang, None, &[]), None, gpu.clone())),
            format!(
                "python3 -m sglang.launch_server --model-path {d} --host 127.0.0.1 --port 9000 --served-model-name chat --enable-metrics --tp-size 2"
            ),
            Some("3,5"),
        ),
        (
            "llama-server splits the layers over both cards by itself",
            two(machine(spec(EngineKind::LlamaServer, None, &[]), None, gpu.clone())),
            format!("llama-server -m {d}/model-q4.gguf --host 127.0.0.1 --port 9000 --alias chat --metrics -ngl 999"),
            Some("3,5"),
        ),
        (
            "the app's own command gets the card count",
            two(machine(None, Some("serve --port {port} --tp {tp}"), gpu.clone())),
            "/bin/sh -c exec serve --port 9000 --tp 2".to_string(),
            Some("3,5"),
        ),
        (
            "the app's own command",
            machine(None, Some("serve --port {port} --dir {model_dir}"), cpu.clone()),
            format!("/bin/sh -c exec serve --port 9000 --dir {d}"),
            None,
        ),
    ];
    for (what, machine, expected, cuda) in cases {
        assert_eq!(line(&machine, dir.path()), (expected, cuda.map(String::from)), "{what}");
    }
    let empty = tempfile::tempdir().unwrap();
    let llama = machine(spec(EngineKind::LlamaServer, None, &[]), None, cpu);
    let colo = EngineCommand {
        program: PathBuf::from("colo"),
        args: vec![],
        load_while_pulling: false,
    };
    let err = command(&colo, &llama, empty.path(), "127.0.0.1".parse().unwrap(), 1).unwrap_err();
    assert!(err.contains("needs a .gguf file"), "{err}");
}

#[test]
fn health_readings_by_profile() {
    let cpu = Device::Cpu { slot: 0 };
    let vllm = machine(spec(EngineKind::Vllm, None, &[]), None, cpu.clone());
    let llama = machine(spec(EngineKind::LlamaServer, None, &[]), None, cpu.clone());
    let colo = machine(None, None, cpu.clone());
    let own = machine(None, Some("x --port {port}"), cpu);
    // (machine, status while starting, reading)
    let cases: Vec<(&Machine, Option<u16>, Health)> = vec![
        (&vllm, None, Health::Loading),
        (&vllm, Some(200), Health::Ready),
        (&vllm, Some(503), Health::Dead),
        (&llama, Some(503), Health::Loading),
        (&llama, Some(200), Health::Ready),
        (&colo, Some(503), Health::Loading),
        (&own, Some(404), Health::Ready),
        (&own, Some(500), Health::Loading),
    ];
    for (machine, status, expected) in cases {
        assert_eq!(starting(machine, status), expected, "{:?} {status:?}", machine.engine);
    }
    assert!(healthy(&vllm, Some(200)) && !healthy(&vllm, Some(503)) && !healthy(&vllm, None));
    assert!(healthy(&own, Some(404)) && !healthy(&own, Some(502)));
}

#[test]
fn programs_are_found_on_the_path_or_by_path() {
    assert!(find_program("sh").is_some());
    assert!(find_program("/bin/sh").is_some());
    assert!(find_program("no-such-engine-anywhere").is_none());
    assert!(find_program("/nonexistent/llama-server").is_none());
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "x").unwrap();
    assert!(find_program(plain.to_str().unwrap()).is_none());
}

#[test]
fn a_log_tail_is_its_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&log, text).unwrap();
    let tail = log_tail(&log);
    assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
    assert!(tail.starts_with("line 80") && tail.ends_with("line 99"), "{tail}");
    assert_eq!(log_tail(&dir.path().join("missing.log")), "");
}

#[test]
fn sleep_depth_follows_host_memory_and_wakes_undo_it() {
    let vllm = |bytes: u64| {
        let mut m = machine(spec(EngineKind::Vllm, None, &[]), None, Device::Cpu { slot: 0 });
        m.hydration = Some(colo_core::HydrationReport {
            bytes_total: bytes,
            ..Default::default()
        });
        m
    };
    let gib = 1 << 30;
    // Level 1 copies the weights to host memory: only when they fit there with room to spare.
    assert_eq!(sleep_level(&vllm(16 * gib), Some(64 * gib)), 1);
    assert_eq!(sleep_level(&vllm(16 * gib), Some(17 * gib)), 2);
    assert_eq!(sleep_level(&vllm(16 * gib), None), 1, "unknown memory: level 1");
    assert_eq!(sleep_level(&vllm(0), Some(1)), 1, "unknown weights: level 1");
    let m = vllm(16 * gib);
    assert_eq!(sleep_call(&m, 1), Some(("POST", "/sleep?level=1", "{}")));
    assert_eq!(sleep_call(&m, 2), Some(("POST", "/sleep?level=2", "{}")));
    let paths = |level| wake_calls(&m, level).into_iter().map(|(_, p, _)| p).collect::<Vec<_>>();
    assert_eq!(paths(1), vec!["/wake_up"]);
    assert_eq!(
        paths(2),
        vec![
            "/wake_up?tags=weights",
            "/collective_rpc",
            "/wake_up?tags=kv_cache",
            "/reset_prefix_cache"
        ]
    );
    let sglang = machine(spec(EngineKind::Sglang, None, &[]), None, Device::Cpu { slot: 0 });
    assert_eq!(sleep_call(&sglang, 2), Some(("POST", "/release_memory_occupation", "{}")));
    assert_eq!(wake_calls(&sglang, 2), vec![("POST", "/resume_memory_occupation", "{}")]);
    // llama-server sleeps by itself; an engine command is the app's own: no calls.
    let llama = machine(spec(EngineKind::LlamaServer, None, &[]), None, Device::Cpu { slot: 0 });
    assert_eq!(sleep_call(&llama, 1), None);
    let own = machine(
        spec(EngineKind::Vllm, None, &[]),
        Some("serve --port {port}"),
        Device::Cpu { slot: 0 },
    );
    assert_eq!(sleep_call(&own, 1), None);
    assert!(wake_calls(&own, 1).is_empty());
}
