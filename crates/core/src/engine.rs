//! Engines: which inference server a machine runs, and what colo knows about each kind (its
//! program, how it tells that it is ready, which metrics carry its load). The agent turns a
//! spec into a command line; the edge reads the kind to know where an engine's load comes from.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The inference servers colo knows how to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// colo's own engine (the `colo engine serve` subcommand): reports its load on every
    /// answer in `colo-load`.
    #[default]
    Colo,
    /// llama.cpp's `llama-server`, on a GGUF file.
    LlamaServer,
    /// vLLM's OpenAI server (`vllm serve`).
    Vllm,
    /// SGLang's server (`python3 -m sglang.launch_server`).
    Sglang,
}

/// Which engine an app's machines run, and how to start it beyond the profile's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSpec {
    pub kind: EngineKind,
    /// The engine's program, where it is not the one the profile names on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<String>,
    /// Arguments appended to the profile's command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The engine runs with its sleep mode on, so that autostop can suspend it (vLLM's
    /// `--enable-sleep-mode`, SGLang's memory saver, llama-server's idle sleep after this many
    /// seconds); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sleep_after_secs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How an engine says it is ready, as its `/health` behaves while it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Connections are refused while it loads, then `/health` answers 200; a 503 after that
    /// means the engine died (vLLM).
    RefusedThenOk,
    /// `/health` answers 503 while it loads, then 200 (llama-server, SGLang, colo's engine).
    UnavailableThenOk,
}

/// The metric names from which an engine's load is read, where it reports no `colo-load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricNames {
    pub running: &'static str,
    pub waiting: &'static str,
    /// The share of the KV cache in use (0 to 1), where the engine exports one.
    pub kv_usage: Option<&'static str>,
    /// Prefix-cache hits and queries (counters, in tokens), where the engine exports them.
    pub prefix_hits: Option<&'static str>,
    pub prefix_queries: Option<&'static str>,
}

// === impl EngineKind ===

impl EngineKind {
    pub const ALL: [EngineKind; 4] = [EngineKind::Colo, EngineKind::LlamaServer, EngineKind::Vllm, EngineKind::Sglang];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Colo => "colo",
            EngineKind::LlamaServer => "llama-server",
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
        }
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The program the profile runs when the deploy names none (`--engine-bin`).
    pub fn default_bin(self) -> &'static str {
        match self {
            EngineKind::Colo => "colo",
            EngineKind::LlamaServer => "llama-server",
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "python3",
        }
    }

    pub fn readiness(self) -> Readiness {
        match self {
            EngineKind::Vllm => Readiness::RefusedThenOk,
            EngineKind::Colo | EngineKind::LlamaServer | EngineKind::Sglang => Readiness::UnavailableThenOk,
        }
    }

    /// Where the engine's load comes from: `None` for colo's engine, whose answers carry it.
    pub fn metrics(self) -> Option<MetricNames> {
        match self {
            EngineKind::Colo => None,
            EngineKind::Vllm => Some(MetricNames {
                running: "vllm:num_requests_running",
                waiting: "vllm:num_requests_waiting",
                kv_usage: Some("vllm:kv_cache_usage_perc"),
                prefix_hits: Some("vllm:prefix_cache_hits"),
                prefix_queries: Some("vllm:prefix_cache_queries"),
            }),
            EngineKind::Sglang => Some(MetricNames {
                running: "sglang:num_running_reqs",
                waiting: "sglang:num_queue_reqs",
                kv_usage: Some("sglang:token_usage"),
                prefix_hits: None,
                prefix_queries: None,
            }),
            EngineKind::LlamaServer => Some(MetricNames {
                running: "llamacpp:requests_processing",
                waiting: "llamacpp:requests_deferred",
                kv_usage: None,
                prefix_hits: None,
                prefix_queries: None,
            }),
        }
    }

    /// Whether the engine takes a GGUF file (llama.cpp) rather than a safetensors directory.
    pub fn wants_gguf(self) -> bool {
        self == EngineKind::LlamaServer
    }

    /// Whether one engine process can use several GPUs (vLLM and SGLang by tensor parallelism,
    /// llama.cpp by splitting the layers); colo's engine runs on one.
    pub fn spans_gpus(self) -> bool {
        self != EngineKind::Colo
    }
}

/// Why a machine of `gpus` cards cannot run the engine a deploy names (`engine`, or the app's
/// own command `engine_cmd`, which gets `{tp}`); `None` when it can.
pub fn gpus_problem(gpus: u32, engine: Option<EngineKind>, engine_cmd: bool) -> Option<String> {
    let kind = engine.unwrap_or(EngineKind::Colo);
    match gpus {
        0 => Some("must be at least 1".into()),
        1 => None,
        n if n > 8 => Some(format!("{n} is more than the 8 GPUs a host has at most")),
        n if !engine_cmd && !kind.spans_gpus() => Some(format!(
            "{kind}'s engine runs a machine on one GPU; {n} GPUs per machine need an engine that spans them \
             (--engine vllm or sglang, tensor parallel; llama-server, layers split)"
        )),
        _ => None,
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl EngineSpec ===

impl EngineSpec {
    /// The program to run: the spec's own, or the profile's.
    pub fn program(&self) -> &str {
        self.bin.as_deref().unwrap_or(self.kind.default_bin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in EngineKind::ALL {
            assert_eq!(EngineKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EngineKind::parse("ollama"), None);
        let spec = EngineSpec {
            kind: EngineKind::Vllm,
            bin: None,
            args: vec![],
            sleep_after_secs: 0,
        };
        assert_eq!(spec.program(), "vllm");
        assert_eq!(EngineKind::Vllm.readiness(), Readiness::RefusedThenOk);
        assert!(EngineKind::Colo.metrics().is_none());
    }
}
