//! The stand-in's command line: which engine it plays, the real engines' flag shapes it accepts,
//! and the knobs that set its timing, capacity and failures.

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// The engine the stand-in plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Flavor {
    /// vLLM's OpenAI server (`vllm serve`).
    Vllm,
    /// SGLang's server (`python -m sglang.launch_server`).
    Sglang,
    /// llama.cpp's `llama-server`.
    Llama,
}

impl Flavor {
    /// The port the real engine listens on when none is given.
    pub fn default_port(self) -> u16 {
        match self {
            Flavor::Vllm => 8000,
            Flavor::Sglang => 30000,
            Flavor::Llama => 8080,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Sglang => "sglang",
            Flavor::Llama => "llama",
        }
    }
}

/// The command line as written. `into_config` checks it and turns it into a [`Config`].
#[derive(Parser, Debug, Clone)]
#[command(
    name = "colo-standin",
    about = "A stand-in for vLLM, SGLang or llama-server in tests. It serves their HTTP API, health, metrics \
             and sleep endpoints with simulated timing; it runs no model."
)]
pub struct Cli {
    /// Which engine to play.
    #[arg(long, value_enum)]
    pub flavor: Flavor,
    /// vLLM's shape, `serve MODEL`, or just `MODEL`: the model the engine would load.
    #[arg(value_name = "[serve] MODEL")]
    pub positional: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one); the real engine's default when absent.
    #[arg(long)]
    pub port: Option<u16>,
    /// The model path or name (vLLM `--model`, SGLang `--model-path`, llama-server `-m`).
    #[arg(long, short = 'm', visible_alias = "model-path")]
    pub model: Option<String>,
    /// The name served in `/v1/models` and checked against a request's `model`
    /// (llama-server calls it `--alias`). Defaults to the model, else "standin".
    #[arg(long, visible_alias = "alias")]
    pub served_model_name: Option<String>,

    /// Milliseconds to load the model before answering (and to reload after llama-server's idle sleep).
    #[arg(long, default_value_t = 500)]
    pub load_ms: u64,
    /// Base milliseconds from a sequence's admission to its first token.
    #[arg(long, default_value_t = 20)]
    pub ttft_ms: u64,
    /// Extra microseconds to first token for each prompt token not found in the prefix cache
    /// (tokio's timers round every wait up to a whole millisecond).
    #[arg(long, default_value_t = 50)]
    pub prefill_us_per_token: u64,
    /// Milliseconds between output tokens.
    #[arg(long, default_value_t = 10)]
    pub itl_ms: u64,
    /// Sequences decoded at once; the rest wait (vLLM `--max-num-seqs`, SGLang
    /// `--max-running-requests`, llama-server `--parallel`/`-np`).
    #[arg(long, default_value_t = 16, visible_aliases = ["max-num-seqs", "max-running-requests", "parallel"])]
    pub max_running: usize,
    /// KV-cache budget in tokens; a sequence holds prompt + max_tokens of it while it runs.
    #[arg(long, default_value_t = 65536)]
    pub kv_tokens: usize,
    /// Tokens per prefix-cache block.
    #[arg(long, default_value_t = 16)]
    pub prefix_block_tokens: usize,
    /// Capacity of the prefix cache in blocks (LRU); 0 turns it off. Default: kv_tokens / block.
    #[arg(long)]
    pub prefix_cache_blocks: Option<usize>,
    /// The model's context in tokens; prompt + max_tokens beyond it is a 400.
    #[arg(long, short = 'c', default_value_t = 32768, visible_aliases = ["max-model-len", "context-length", "ctx-size"])]
    pub context: usize,
    /// max_tokens when a request gives none.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: usize,
    /// Fraction of generation requests answered 500, drawn from the seed.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Die after this many generation requests: the last is answered, then the engine dies.
    #[arg(long)]
    pub die_after: Option<u64>,
    /// Milliseconds a dead engine keeps answering (health 503, generation 500) before it exits.
    #[arg(long, default_value_t = 0)]
    pub die_linger_ms: u64,
    /// Seed of the output words and of injected failures.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Milliseconds to wake from sleep (vLLM level 1, SGLang resume); level 2 adds --load-ms.
    #[arg(long, default_value_t = 200)]
    pub wake_ms: u64,

    /// vLLM: allow `/sleep` and `/wake_up` (they also need dev mode).
    #[arg(long)]
    pub enable_sleep_mode: bool,
    /// vLLM: development endpoints (`/sleep`, `/wake_up`, `/is_sleeping`, `/reset_prefix_cache`,
    /// `/collective_rpc`); the real server takes only the environment variable.
    #[arg(long, env = "VLLM_SERVER_DEV_MODE", value_parser = clap::builder::FalseyValueParser::new())]
    pub server_dev_mode: bool,
    /// llama-server: serve `/metrics`.
    #[arg(long)]
    pub metrics: bool,
    /// SGLang: serve `/metrics`.
    #[arg(long)]
    pub enable_metrics: bool,
    /// llama-server: unload after this many idle seconds; the next request reloads. Off when not above 0.
    #[arg(long, allow_negative_numbers = true)]
    pub sleep_idle_seconds: Option<i64>,

    /// Accepted for the real engines' command lines and ignored.
    #[command(flatten)]
    pub ignored: Ignored,
}

/// Flags the real engines take that change nothing here; accepted so that a profile's command line
/// runs unchanged against the stand-in.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Ignored {
    /// vLLM tensor parallelism (ignored).
    #[arg(long, visible_alias = "tp-size")]
    pub tensor_parallel_size: Option<String>,
    /// vLLM GPU memory fraction (ignored).
    #[arg(long, visible_alias = "mem-fraction-static")]
    pub gpu_memory_utilization: Option<String>,
    /// Weight dtype (ignored).
    #[arg(long)]
    pub dtype: Option<String>,
    /// llama-server layers on the GPU, `-ngl` (ignored).
    #[arg(long)]
    pub n_gpu_layers: Option<String>,
    /// (ignored)
    #[arg(long)]
    pub trust_remote_code: bool,
    /// SGLang's memory saver, which its release and resume need; the stand-in needs nothing (ignored).
    #[arg(long)]
    pub enable_memory_saver: bool,
}

/// Rewrites the real engines' multi-letter single-dash flags (`-np 4`, `-ngl 99`, `-tp 2`), which
/// clap cannot parse as short flags, to their long forms.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|arg| match arg.as_str() {
            "-np" => "--parallel".to_string(),
            "-ngl" => "--n-gpu-layers".to_string(),
            "-tp" => "--tensor-parallel-size".to_string(),
            _ => arg,
        })
        .collect()
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub flavor: Flavor,
    pub host: String,
    pub port: u16,
    /// What the engine would load (reported as the model's root).
    pub model_path: String,
    pub served_name: String,
    pub load: Duration,
    pub ttft: Duration,
    pub prefill_per_token: Duration,
    pub itl: Duration,
    pub wake: Duration,
    pub max_running: usize,
    pub kv_tokens: usize,
    pub block_tokens: usize,
    pub cache_blocks: usize,
    pub context: usize,
    pub default_max_tokens: usize,
    pub fail_rate: f64,
    pub die_after: Option<u64>,
    pub die_linger: Duration,
    pub seed: u64,
    /// vLLM sleep endpoints exist (dev mode) and work (sleep mode): `(dev, sleep)`.
    pub dev_mode: bool,
    pub sleep_mode: bool,
    /// `/metrics` is served (always for vLLM; with the flag for the others, as the real ones).
    pub metrics: bool,
    pub idle_sleep: Option<Duration>,
}

impl Cli {
    /// Parses a command line (the program name first), rewriting the real engines' flag shapes.
    pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args))
    }

    /// Checks every knob and returns all problems at once.
    pub fn into_config(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let mut positional = self.positional.clone();
        if positional.first().map(String::as_str) == Some("serve") {
            positional.remove(0);
        }
        if positional.len() > 1 {
            problems.push(format!(
                "expected at most `serve MODEL`, got extra arguments {:?}",
                &positional[1..]
            ));
        }
        let model_path = self.model.clone().or_else(|| positional.first().cloned());
        let served_name = self
            .served_model_name
            .clone()
            .or_else(|| model_path.clone())
            .unwrap_or_else(|| "standin".to_string());
        if !(0.0..=1.0).contains(&self.fail_rate) {
            problems.push(format!("--fail-rate is {}; it must be between 0 and 1", self.fail_rate));
        }
        for (name, value) in [
            ("--max-running", self.max_running),
            ("--kv-tokens", self.kv_tokens),
            ("--prefix-block-tokens", self.prefix_block_tokens),
            ("--context", self.context),
            ("--default-max-tokens", self.default_max_tokens),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.die_after == Some(0) {
            problems.push("--die-after must be at least 1 (leave it out for an engine that lives)".to_string());
        }
        let vllm_only = [("--enable-sleep-mode", self.enable_sleep_mode)];
        for (flag, set) in vllm_only {
            if set && self.flavor != Flavor::Vllm {
                problems.push(format!("{flag} is a vLLM flag; this stand-in plays {}", self.flavor.as_str()));
            }
        }
        if self.metrics && self.flavor != Flavor::Llama {
            problems.push("--metrics is llama-server's flag (vLLM always serves metrics; SGLang takes --enable-metrics)".to_string());
        }
        if self.enable_metrics && self.flavor != Flavor::Sglang {
            problems.push("--enable-metrics is SGLang's flag".to_string());
        }
        if self.sleep_idle_seconds.is_some() && self.flavor != Flavor::Llama {
            problems.push("--sleep-idle-seconds is llama-server's flag".to_string());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let block_tokens = self.prefix_block_tokens;
        Ok(Config {
            flavor: self.flavor,
            host: self.host,
            port: self.port.unwrap_or(self.flavor.default_port()),
            model_path: model_path.unwrap_or_else(|| served_name.clone()),
            served_name,
            load: Duration::from_millis(self.load_ms),
            ttft: Duration::from_millis(self.ttft_ms),
            prefill_per_token: Duration::from_micros(self.prefill_us_per_token),
            itl: Duration::from_millis(self.itl_ms),
            wake: Duration::from_millis(self.wake_ms),
            max_running: self.max_running,
            kv_tokens: self.kv_tokens,
            block_tokens,
            cache_blocks: self.prefix_cache_blocks.unwrap_or(self.kv_tokens / block_tokens),
            context: self.context,
            default_max_tokens: self.default_max_tokens,
            fail_rate: self.fail_rate,
            die_after: self.die_after,
            die_linger: Duration::from_millis(self.die_linger_ms),
            seed: self.seed,
            dev_mode: self.flavor == Flavor::Vllm && self.server_dev_mode,
            sleep_mode: self.enable_sleep_mode,
            metrics: match self.flavor {
                Flavor::Vllm => true,
                Flavor::Sglang => self.enable_metrics,
                Flavor::Llama => self.metrics,
            },
            idle_sleep: self
                .sleep_idle_seconds
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(s.unsigned_abs())),
        })
    }
}

impl Config {
    /// Parses and checks a command line in one step, as tests do.
    pub fn from_args<I, S>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args = std::iter::once("colo-standin".to_string()).chain(args.into_iter().map(Into::into));
        let cli = Cli::parse_args(args).map_err(|e| e.to_string())?;
        cli.into_config().map_err(|problems| problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_serve_shape_names_the_model() {
        let c = Config::from_args([
            "--flavor",
            "vllm",
            "serve",
            "/models/qwen",
            "--port",
            "0",
            "--served-model-name",
            "q",
        ])
        .unwrap();
        assert_eq!((c.model_path.as_str(), c.served_name.as_str(), c.port), ("/models/qwen", "q", 0));
        let c = Config::from_args(["--flavor", "vllm", "serve", "/models/qwen"]).unwrap();
        assert_eq!((c.served_name.as_str(), c.port), ("/models/qwen", 8000));
    }

    #[test]
    fn llama_shapes_parse() {
        let c = Config::from_args([
            "--flavor",
            "llama",
            "-m",
            "/m/x.gguf",
            "-np",
            "4",
            "-ngl",
            "99",
            "--alias",
            "x",
            "-c",
            "4096",
        ])
        .unwrap();
        assert_eq!((c.max_running, c.served_name.as_str(), c.context, c.metrics), (4, "x", 4096, false));
        let c = Config::from_args(["--flavor", "llama", "--sleep-idle-seconds", "-1", "--metrics"]).unwrap();
        assert_eq!((c.idle_sleep, c.metrics), (None, true));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_args(["--flavor", "sglang", "--fail-rate", "2", "--max-running", "0", "--metrics"]).unwrap_err();
        assert!(
            err.contains("--fail-rate") && err.contains("--max-running") && err.contains("--metrics"),
            "{err}"
        );
    }
}
