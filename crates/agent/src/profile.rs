//! Engine profiles as the agent carries them out: the command line that starts each kind of
//! engine on a leased device over a hydrated model, whether its program is there at all, how
//! its health answers read while it loads and once it runs, and the end of its log when it
//! fails.

use crate::EngineCommand;
use colo_core::{Device, EngineKind, EngineSpec, Machine, Readiness};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Lines of an engine's log a failed start reports.
const LOG_TAIL_LINES: usize = 20;

/// What a health check says about an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Still loading: keep waiting.
    Loading,
    Ready,
    /// The engine says it is dead (or answers in a way it never does when alive).
    Dead,
}

/// The program `spec` runs, found: a path that names an executable file, or a name on `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| executable(path))
}

/// The GGUF file llama-server loads from `dir`: the first part of a split file, else the
/// largest `.gguf`.
pub(crate) fn gguf_in(dir: &Path) -> Option<PathBuf> {
    let files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".gguf")))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    if let Some((first, _)) = files
        .iter()
        .find(|(p, _)| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("-00001-of-")))
    {
        return Some(first.clone());
    }
    files.into_iter().max_by_key(|(_, len)| *len).map(|(p, _)| p)
}

/// The command that starts `machine`'s engine, listening on `host:port`, over the model in
/// `dir`: the app's own command, an engine profile's, or colo's engine (`colo_engine`).
pub(crate) fn command(colo_engine: &EngineCommand, machine: &Machine, dir: &Path, host: IpAddr, port: u16) -> Result<Command, String> {
    let app = machine.app.as_str();
    let (host, port) = (host.to_string(), port.to_string());
    let mut command = match (&machine.engine_cmd, &machine.engine) {
        // The app's own engine: a shell command with the port and model directory filled in;
        // `exec` makes the engine the process the agent watches and signals.
        (Some(template), _) => {
            let line = template
                .replace("{port}", &port)
                .replace("{tp}", &machine.devices().count().to_string())
                .replace("{host}", &host)
                .replace("{model_dir}", &dir.display().to_string())
                .replace("{name}", app);
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(format!("exec {line}"));
            command
        }
        (None, Some(spec)) => profile_command(colo_engine, spec, machine, dir, &host, &port)?,
        (None, None) => colo_command(colo_engine, machine, dir, &host, &port),
    };
    // The engine sees only the cards its machine leases; a CPU slot sees none.
    match &machine.device {
        Device::Gpu { .. } => command.env("CUDA_VISIBLE_DEVICES", cuda_visible(machine)),
        Device::Cpu { .. } if machine.engine.is_some() => command.env("CUDA_VISIBLE_DEVICES", ""),
        Device::Cpu { .. } => &mut command,
    };
    Ok(command)
}

/// `CUDA_VISIBLE_DEVICES` for a machine on GPUs: its cards' indices, comma-separated.
fn cuda_visible(machine: &Machine) -> String {
    let indices: Vec<String> = machine
        .devices()
        .filter_map(|d| match d {
            Device::Gpu { index, .. } => Some(index.to_string()),
            Device::Cpu { .. } => None,
        })
        .collect();
    indices.join(",")
}

/// colo's own engine: the agent's program (the `colo` binary, `engine serve`) and its flags.
fn colo_command(colo_engine: &EngineCommand, machine: &Machine, dir: &Path, host: &str, port: &str) -> Command {
    let mut command = Command::new(&colo_engine.program);
    command
        .args(&colo_engine.args)
        .arg("--model-dir")
        .arg(dir)
        .args(["--port", port, "--host", host, "--name", machine.app.as_str()]);
    command
}

fn profile_command(
    colo_engine: &EngineCommand,
    spec: &EngineSpec,
    machine: &Machine,
    dir: &Path,
    host: &str,
    port: &str,
) -> Result<Command, String> {
    let app = machine.app.as_str();
    let on_gpu = matches!(machine.device, Device::Gpu { .. });
    let gpus = machine.devices().count();
    let mut command = match spec.kind {
        // colo's engine takes the profile's extra arguments; its program is the agent's own.
        EngineKind::Colo => colo_command(colo_engine, machine, dir, host, port),
        _ => Command::new(spec.program()),
    };
    let sleep_after = spec.sleep_after_secs;
    match spec.kind {
        EngineKind::LlamaServer => {
            let model = gguf_in(dir).ok_or_else(|| format!("llama-server needs a .gguf file and {} has none", dir.display()))?;
            command
                .arg("-m")
                .arg(model)
                .args(["--host", host, "--port", port, "--alias", app, "--metrics"]);
            if on_gpu {
                // Every layer on the leased card.
                command.args(["-ngl", "999"]);
            }
            if sleep_after > 0 {
                // llama-server unloads itself when idle and reloads on the next request.
                command.args(["--sleep-idle-seconds", &sleep_after.to_string()]);
            }
        }
        EngineKind::Vllm => {
            command
                .arg("serve")
                .arg(dir)
                .args(["--host", host, "--port", port, "--served-model-name", app]);
            if gpus > 1 {
                command.args(["--tensor-parallel-size", &gpus.to_string()]);
            }
            if sleep_after > 0 {
                // The sleep endpoints exist only in vLLM's development mode; the engine listens
                // where only its agent and edges reach it, and the edge never proxies them.
                command.arg("--enable-sleep-mode").env("VLLM_SERVER_DEV_MODE", "1");
            }
        }
        EngineKind::Sglang => {
            if spec.bin.is_none() {
                command.args(["-m", "sglang.launch_server"]);
            }
            command
                .arg("--model-path")
                .arg(dir)
                .args(["--host", host, "--port", port, "--served-model-name", app, "--enable-metrics"]);
            if gpus > 1 {
                command.args(["--tp-size", &gpus.to_string()]);
            }
            if sleep_after > 0 {
                command.arg("--enable-memory-saver");
            }
        }
        EngineKind::Colo => {}
    }
    command.args(&spec.args);
    Ok(command)
}

/// An HTTP call the agent makes to an engine it runs: method, path (with query) and JSON body.
pub(crate) type EngineCall = (&'static str, &'static str, &'static str);

/// How deeply to put `machine`'s engine to sleep: vLLM's level 1 copies the weights to host
/// memory, so it needs `available` bytes of host memory (MemAvailable) for them with a tenth to
/// spare; else level 2, which drops them and reloads them from disk on waking. Unknown sizes
/// take level 1.
pub(crate) fn sleep_level(machine: &Machine, available: Option<u64>) -> u8 {
    let weights = machine.hydration.as_ref().map_or(0, |h| h.bytes_total);
    match available {
        Some(free) if weights > 0 && free < weights + weights / 10 => 2,
        _ => 1,
    }
}

/// How to put `machine`'s engine to sleep at `level`, if its engine can be told to: vLLM's
/// sleep, SGLang's memory release. llama-server sleeps by itself when idle; colo's engine holds
/// no KV cache while idle, so it needs no call.
pub(crate) fn sleep_call(machine: &Machine, level: u8) -> Option<EngineCall> {
    match machine.engine.as_ref().filter(|_| machine.engine_cmd.is_none())?.kind {
        EngineKind::Vllm if level >= 2 => Some(("POST", "/sleep?level=2", "{}")),
        EngineKind::Vllm => Some(("POST", "/sleep?level=1", "{}")),
        EngineKind::Sglang => Some(("POST", "/release_memory_occupation", "{}")),
        EngineKind::LlamaServer | EngineKind::Colo => None,
    }
}

/// The calls that wake `machine`'s engine from the sleep `sleep_call` put it in at `level`: one
/// wake for vLLM's level 1; for level 2 the weights' memory back, the weights reloaded from
/// disk, the KV cache back and the prefix cache emptied.
pub(crate) fn wake_calls(machine: &Machine, level: u8) -> Vec<EngineCall> {
    let Some(engine) = machine.engine.as_ref().filter(|_| machine.engine_cmd.is_none()) else {
        return Vec::new();
    };
    match engine.kind {
        EngineKind::Vllm if level >= 2 => vec![
            ("POST", "/wake_up?tags=weights", "{}"),
            ("POST", "/collective_rpc", r#"{"method":"reload_weights"}"#),
            ("POST", "/wake_up?tags=kv_cache", "{}"),
            ("POST", "/reset_prefix_cache", "{}"),
        ],
        EngineKind::Vllm => vec![("POST", "/wake_up", "{}")],
        EngineKind::Sglang => vec![("POST", "/resume_memory_occupation", "{}")],
        EngineKind::LlamaServer | EngineKind::Colo => Vec::new(),
    }
}

/// How a health check during start reads for an engine of `machine`: `status` is the answer,
/// or `None` when the engine took no connection (or gave no answer).
pub(crate) fn starting(machine: &Machine, status: Option<u16>) -> Health {
    let Some(status) = status else { return Health::Loading };
    if machine.engine_cmd.is_some() {
        // An engine the app brings may have no /health: any answer short of an error will do.
        return if status >= 500 { Health::Loading } else { Health::Ready };
    }
    let readiness = machine.engine.as_ref().map_or(Readiness::UnavailableThenOk, |e| e.kind.readiness());
    match (status, readiness) {
        (200..=299, _) => Health::Ready,
        // vLLM refuses connections until it is ready; once it answers, a 503 means its engine died.
        (500..=599, Readiness::RefusedThenOk) => Health::Dead,
        _ => Health::Loading,
    }
}

/// Whether a health check of a started engine passes.
pub(crate) fn healthy(machine: &Machine, status: Option<u16>) -> bool {
    match (status, &machine.engine_cmd) {
        (Some(status), Some(_)) => status < 500,
        (Some(status), None) => (200..300).contains(&status),
        (None, _) => false,
    }
}

/// The last lines of an engine's log, for an error that says why it did not start.
pub(crate) fn log_tail(path: &Path) -> String {
    last_lines(path, LOG_TAIL_LINES, 16 * 1024)
}

/// The last `n` non-blank lines of the file at `path` found in its last `window` bytes (empty
/// when there is no such file).
pub(crate) fn last_lines(path: &Path, n: usize, window: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(window)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests;
