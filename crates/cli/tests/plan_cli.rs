//! `colo plan` as a user runs it: the real binary over the config.json fixtures, its JSON
//! interface, its table, and its errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn colo(args: &[&str]) -> Output {
    let data_dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir.path())
        .current_dir(repo())
        .env_remove("COLUMNS")
        .output()
        .expect("running colo")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = colo(args);
    assert!(out.status.success(), "colo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("colo {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Llama-3.1-8B's config on one H100 in bf16, as JSON: one option.
const LLAMA_8B_ON_ONE_H100: [&str; 9] = [
    "plan",
    "testdata/configs/llama-3.1-8b",
    "--json",
    "--gpu",
    "h100-80gb-sxm",
    "--n-gpus",
    "1",
    "--quant",
    "bf16",
];

#[test]
fn json_interface_for_a_config_only_directory() {
    let v = json(&LLAMA_8B_ON_ONE_H100);
    let model = &v["model"];
    assert_eq!(model["params"].as_u64(), Some(8_030_261_248));
    assert_eq!(model["weights_bytes"].as_u64(), Some(2 * 8_030_261_248));
    assert_eq!(model["kv_bytes_per_token"].as_u64(), Some(131_072));
    let options = v["options"].as_array().unwrap();
    assert_eq!(options.len(), 1, "--gpu, --n-gpus and --quant restrict the options");
    let o = &options[0];
    for key in [
        "gpu",
        "n_gpus",
        "quant",
        "fits",
        "why_not",
        "kv_budget_bytes",
        "kv_capacity_tokens",
        "max_concurrency",
        "decode_tokens_per_s",
        "usd_per_hour",
        "usd_per_million_tokens",
    ] {
        assert!(o.get(key).is_some(), "option lacks {key}: {o}");
    }
    assert_eq!(
        (o["gpu"].as_str(), o["n_gpus"].as_u64(), o["quant"].as_str(), o["fits"].as_bool()),
        (Some("h100-80gb-sxm"), Some(1), Some("bf16"), Some(true))
    );
    let kv_gib = o["kv_budget_bytes"].as_f64().unwrap() / (1u64 << 30) as f64;
    assert!((kv_gib / 51.38 - 1.0).abs() < 0.05, "{kv_gib}");
    assert_eq!(&v["recommended"], o);
}

#[test]
fn seventy_b_table_says_why_and_recommends() {
    let out = colo(&["plan", "testdata/configs/llama-3.1-70b/config.json", "--prices", "fly-2024"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("does not fit:"), "{text}");
    assert!(text.contains("a10 x1 bf16: weights"), "{text}");
    assert!(text.contains("recommended (fly-2024 prices): "), "{text}");
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let missing = write(
        "missing/config.json",
        r#"{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": -8, "torch_dtype": "float7"}"#,
    );
    let empty_fleet = write("fleet.toml", "hosts = []\n");
    let demand = write(
        "demand.toml",
        "[[regions]]\nregion = \"ord\"\nrequests_per_s = 1\nprompt_tokens = 100\noutput_tokens = 100\n",
    );
    let prices = write("prices.toml", "l40s = -1\n");
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["plan", &missing],
            &[
                "num_hidden_layers: missing",
                "num_attention_heads: -8",
                "torch_dtype: unknown dtype",
                "vocab_size: missing",
            ],
        ),
        (
            vec![
                "plan",
                "testdata/configs/llama-3.1-8b",
                "--fleet",
                &empty_fleet,
                "--demand",
                &demand,
            ],
            &["fleet.hosts: the fleet is empty"],
        ),
        (
            vec!["plan", "testdata/configs/llama-3.1-8b", "--quant", "int3"],
            &["--quant \"int3\""],
        ),
        (
            vec!["plan", "testdata/configs/llama-3.1-8b", "--context", "0"],
            &["context: must be at least 1"],
        ),
        (
            vec!["plan", "testdata/configs/llama-3.1-8b", "--gpu", "tpu"],
            &["unknown GPU kind \"tpu\""],
        ),
        (
            vec!["plan", "testdata/configs/llama-3.1-8b", "--prices", &prices],
            &["l40s", "not a price"],
        ),
        (vec!["plan", "no-such-model"], &["no-such-model", "store"]),
    ];
    for (args, needles) in cases {
        let out = colo(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {err} lacks {needle:?}");
        }
    }
}

#[test]
fn placement_from_fleet_and_demand_files() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        "[[hosts]]\nname = \"ord-1\"\nregion = \"ord\"\ngpus = { l40s = 2, a10 = 4 }\n",
    )
    .unwrap();
    let demand = dir.path().join("demand.toml");
    std::fs::write(&demand, "rtt_limit_ms = 40\n[[regions]]\nregion = \"ord\"\nrequests_per_s = 0.5\nprompt_tokens = 1024\noutput_tokens = 256\n[[regions]]\nregion = \"syd\"\nrequests_per_s = 1\nprompt_tokens = 1024\noutput_tokens = 256\n").unwrap();
    let (fleet, demand) = (fleet.display().to_string(), demand.display().to_string());
    let v = json(&[
        "plan",
        "testdata/configs/llama-3.1-8b",
        "--json",
        "--prices",
        "fly-2024",
        "--quant",
        "bf16",
        "--fleet",
        &fleet,
        "--demand",
        &demand,
    ]);
    assert_eq!(v["machines"][0]["host"].as_str(), Some("ord-1"), "{v}");
    assert_eq!(v["unmet"][0]["region"].as_str(), Some("syd"), "{v}");
    assert!(
        v["unmet"][0]["reason"].as_str().unwrap().contains("no host within 40 ms of syd"),
        "{v}"
    );
}

#[test]
fn deploy_refuses_a_bad_demand_file_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[[regions]]\nregion = \"ord\"\nrequests_per_s = 1\nprompt_tokens = 256\noutput_tokens = 64\n";
    // (file contents, what stderr must name)
    let cases = [
        (
            good.replace("requests_per_s = 1", "requests_per_s = -2"),
            "demand.regions[0].requests_per_s",
        ),
        (good.replace("ord", "xyz"), "demand.regions[0].region: unknown region \"xyz\""),
        (good.replace("requests_per_s", "request_per_s"), "request_per_s"),
        (good.replace("prompt_tokens = 256\n", ""), "prompt_tokens"),
        ("rtt_limit_ms = 0\n".to_string() + good, "demand.rtt_limit_ms"),
        ("regions = []\n".to_string(), "demand.regions: no demand"),
    ];
    for (i, (text, names)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("demand-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        // The file is checked before any colo is looked for, so none needs to run.
        let out = colo(&["deploy", "chat", "--model", "tiny", "--demand", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            stderr.contains(names) && stderr.contains(&format!("demand-{i}.toml")),
            "{names}: {stderr}"
        );
    }
    let out = colo(&["deploy", "chat", "--model", "tiny", "--demand", "x.toml", "--region", "ord=1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "--demand with --region"
    );
}

/// A GGUF file's bytes with a Llama's hyperparameters and one Q4_K tensor of `rows` rows.
fn gguf_file(rows: u64) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let hyper = [
        ("llama.context_length", 8192u32),
        ("llama.block_count", 32),
        ("llama.embedding_length", 4096),
        ("llama.attention.head_count", 32),
        ("llama.attention.head_count_kv", 8),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&(1 + hyper.len() as u64).to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    for (key, value) in hyper {
        string(&mut out, key);
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    string(&mut out, "blk.0.ffn_down.weight");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&4096u64.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&12u32.to_le_bytes()); // Q4_K
    out.extend_from_slice(&0u64.to_le_bytes());
    let data = 4096 * rows / 256 * 144;
    out.resize(out.len().next_multiple_of(32) + data as usize, 0);
    out
}

#[test]
fn a_gguf_model_is_planned_as_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama-q4");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("llama-q4_k.gguf"), gguf_file(4096)).unwrap();
    let args = ["plan", model.to_str().unwrap(), "--json", "--gpu", "l4", "--n-gpus", "1"];
    let v = json(&args);
    assert_eq!(v["model"]["gguf"], "Q4_K");
    assert_eq!(v["model"]["source"], "gguf");
    assert_eq!(v["model"]["params"].as_u64(), Some(4096 * 4096));
    let options = v["options"].as_array().unwrap();
    assert_eq!(options.len(), 1, "a GGUF file is planned only as stored");
    assert_eq!(options[0]["quant"], "gguf");
    assert_eq!(options[0]["weights_bytes_per_gpu"].as_u64(), Some(4096 * 4096 / 256 * 144));
    // The file itself plans the same; a lying file is refused naming it.
    let file = model.join("llama-q4_k.gguf");
    let v = json(&["plan", file.to_str().unwrap(), "--json", "--gpu", "l4", "--n-gpus", "1"]);
    assert_eq!(v["options"][0]["quant"], "gguf");
    let mut bad = gguf_file(4096);
    bad.truncate(bad.len() - 100);
    std::fs::write(&file, bad).unwrap();
    let out = colo(&["plan", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llama-q4_k.gguf") && err.contains("past its end"), "{err}");
}

/// `colo plan ... | head -1`: the reader goes away and colo ends quietly (killed
/// by SIGPIPE, as Unix tools are), not with a panic and exit code 101.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(["plan", "testdata/configs/llama-3.1-70b"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running colo");
    // The reader is gone before colo writes a byte.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(status.signal() == Some(libc::SIGPIPE), "colo ended with {status:?}: {stderr}");
}

/// An encoder is planned by what it does: embeddings per second and the time to embed one
/// input, with its (small) price per million input tokens in enough digits to read; no KV
/// columns; hidden rows are said to be hidden; memory in GiB throughout.
#[test]
fn encoders_are_planned_by_embeddings() {
    let out = colo(&["plan", "testdata/configs/all-minilm-l6-v2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("EMBEDDINGS/S (128 TOKENS)") && text.contains("MS PER INPUT"),
        "{text}"
    );
    assert!(
        !text.contains("KV") && !text.contains("DECODE"),
        "no KV or decode figures for an encoder:\n{text}"
    );
    assert!(text.contains("GiB of weights") && !text.contains(" GB"), "one unit system:\n{text}");
    assert!(text.contains("more options that fit are not shown"), "{text}");
    let recommended = text.lines().find(|l| l.starts_with("recommended")).unwrap();
    assert!(
        !recommended.contains("$0.000 ") && !recommended.contains("$0.000)"),
        "{recommended}"
    );
    let price: f64 = recommended.split("($").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    assert!(price > 0.0 && price < 0.01, "{recommended}");

    let v = json(&["plan", "testdata/configs/all-minilm-l6-v2", "--json"]);
    let best = &v["recommended"];
    let embeddings = best["embeddings_per_s"].as_f64().unwrap();
    let tokens = best["tokens_per_s"].as_f64().unwrap();
    assert!((embeddings * 128.0 - tokens).abs() < 1e-6 * tokens, "{best}");
}

/// Tables fit the terminal: at 80 columns no line is wider, the columns that matter most come
/// first, and the line after says which were left out; into a pipe every column is there.
#[test]
fn tables_fit_the_terminal_width() {
    let data_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(["plan", "testdata/configs/llama-3.1-8b", "--data-dir"])
        .arg(data_dir.path())
        .current_dir(repo())
        .env("COLUMNS", "80")
        .output()
        .expect("running colo");
    let text = String::from_utf8(out.stdout).unwrap();
    let table: Vec<&str> = text.lines().skip(1).take_while(|l| !l.starts_with("(")).collect();
    assert!(table.iter().all(|l| l.chars().count() <= 80), "{text}");
    assert!(table[0].contains("$/M OUTPUT") && table[0].contains("$/H"), "{text}");
    assert!(text.contains("left out to fit 80 columns; --json has every field"), "{text}");
    let piped = String::from_utf8(colo(&["plan", "testdata/configs/llama-3.1-8b"]).stdout).unwrap();
    assert!(piped.contains("KV TOKENS") && !piped.contains("left out"), "{piped}");
}

/// A push whose config.json contradicts its weights is refused, naming each tensor that
/// disagrees (an engine would fail to load it at deploy); a consistent one goes through.
#[test]
fn push_refuses_a_config_that_contradicts_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_colo"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .expect("running colo")
    };
    let model = dir.path().join("tiny");
    assert!(run(&["model", "synth", model.to_str().unwrap()]).status.success());
    let pushed = run(&["model", "push", model.to_str().unwrap(), "--name", "tiny"]);
    assert!(pushed.status.success());
    let note = String::from_utf8_lossy(&pushed.stderr);
    assert!(
        note.contains("note: no colo is running with data dir") && note.contains("--store URL"),
        "a push into a data dir no colo uses says so: {note}"
    );
    let config = model.join("config.json");
    let mut fields: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    fields["hidden_size"] = serde_json::json!(fields["hidden_size"].as_u64().unwrap() * 2);
    fields["num_hidden_layers"] = serde_json::json!(7);
    std::fs::write(&config, fields.to_string()).unwrap();
    let out = run(&["model", "push", model.to_str().unwrap(), "--name", "wrong"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a contradicting config.json must be refused");
    assert!(
        stderr.contains("config.json contradicts the weights")
            && stderr.contains("model.embed_tokens.weight is [512, 64]")
            && stderr.contains("the weights have 2 layers, and config.json says num_hidden_layers = 7"),
        "{stderr}"
    );
    let listed = String::from_utf8(run(&["model", "ls"]).stdout).unwrap();
    assert!(!listed.contains("wrong"), "nothing stored: {listed}");

    // A truncated weights file: the reason once, not repeated by its cause.
    let weights = model.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = run(&["model", "push", model.to_str().unwrap(), "--name", "cut"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("past its end").count(), 1, "{stderr}");
}

#[test]
fn max_batch_gives_the_speed_of_one_stream_and_of_a_batch() {
    let at = |batch: &str| json(&[&LLAMA_8B_ON_ONE_H100[..], &["--max-batch", batch]].concat())["options"][0].clone();
    let (one, sixteen) = (at("1"), at("16"));
    assert_eq!(one["batch"].as_u64(), Some(1));
    assert_eq!(sixteen["batch"].as_u64(), Some(16));
    let speed = |o: &serde_json::Value, key: &str| o[key].as_f64().unwrap();
    assert_eq!(speed(&one, "decode_tokens_per_s"), speed(&one, "decode_tokens_per_s_per_sequence"));
    // Memory-bound: sixteen streams share each read of the weights, so the batch goes far
    // faster in all and each stream a little slower.
    assert!(speed(&sixteen, "decode_tokens_per_s") > 10.0 * speed(&one, "decode_tokens_per_s"));
    assert!(speed(&sixteen, "decode_tokens_per_s_per_sequence") < speed(&one, "decode_tokens_per_s_per_sequence"));
    let out = colo(&["plan", "testdata/configs/llama-3.1-8b", "--max-batch", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-batch"));
}
