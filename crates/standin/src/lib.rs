//! # colo-standin: a stand-in engine for tests. It is not an engine.
//!
//! vLLM and SGLang cannot run on colo's test machines (no GPU, no CPU build that installs), so colo's
//! engine profiles for them are tested against this program. It plays vLLM, SGLang or llama.cpp's
//! `llama-server` where a router or a supervisor can see them: their OpenAI API, readiness, health,
//! metric names, and sleep endpoints. It runs no model: its answers are words from a fixed list and
//! its timing is simulated from a few knobs.
//!
//! ## Command line
//!
//! `colo-standin --flavor vllm|sglang|llama [serve] [MODEL] [flags]`. The real engines' shapes work:
//! `colo-standin --flavor vllm serve /models/m --host H --port P --served-model-name N`,
//! `colo-standin --flavor sglang --model-path /models/m --port P --enable-metrics`,
//! `colo-standin --flavor llama -m m.gguf --alias N -np 4 -c 4096 --metrics`. Aliases:
//! `--max-running` is also `--max-num-seqs`, `--max-running-requests` and `--parallel`/`-np`;
//! `--context` is also `--max-model-len`, `--context-length`, `--ctx-size`/`-c`; `--model`/`-m` is
//! also `--model-path`; `--served-model-name` is also `--alias`. `--tensor-parallel-size`/`-tp`,
//! `--tp-size`, `--gpu-memory-utilization`, `--mem-fraction-static`, `--dtype`, `--n-gpu-layers`/
//! `-ngl`, `--trust-remote-code` and `--enable-memory-saver` are accepted and ignored. The port
//! defaults to the real engine's (8000, 30000, 8080); `--port 0` picks a free one, and the binary
//! prints `colo-standin bound http://ADDR` on stdout as soon as the port is taken.
//!
//! Knobs: `--load-ms` (time to ready, and to reload after llama-server's idle sleep), `--ttft-ms`,
//! `--prefill-us-per-token`, `--itl-ms`, `--max-running`, `--kv-tokens`, `--prefix-block-tokens`
//! (16), `--prefix-cache-blocks` (default kv_tokens / block; 0 turns caching off), `--context`,
//! `--default-max-tokens` (16, for completions and chats alike), `--fail-rate`, `--die-after`,
//! `--die-linger-ms`, `--seed`, `--wake-ms`.
//!
//! ## The model
//!
//! - **Tokens.** One token per whitespace-separated word of a prompt. A chat is, per message, one
//!   role token and then the words of its content. A prompt given as token ids is those ids.
//! - **Answers.** `max_tokens` words (there is no end-of-sequence, so `finish_reason` is always
//!   `length`), each chosen from a fixed list by the engine's `--seed`, the whole prompt and the
//!   request's `seed`: the same request gets the same answer, streamed or not.
//! - **Scheduling.** A sequence holds prompt + max_tokens tokens of the KV budget while it runs. At
//!   most `--max-running` run at once; the rest wait first come first served, and a head that does
//!   not fit holds back those behind it. A request that could never fit (more than `--kv-tokens`
//!   or `--context`) is a 400 naming `max_tokens`.
//! - **Time.** Time to first token = queueing + `--ttft-ms` + `--prefill-us-per-token` × the prompt
//!   tokens the prefix cache does not hold. Then one token every `--itl-ms`. Running sequences do
//!   not slow one another down.
//! - **Prefix cache.** The prompt's full blocks of `--prefix-block-tokens` are hashed in a chain
//!   seeded by the served model name. A sequence's hit is its longest run of cached leading blocks,
//!   counting only blocks before its last token (that token is always computed, as in vLLM). Blocks
//!   enter the cache after the prefill, at most `--prefix-cache-blocks`, least recently used first
//!   out (a chain's tail before its head). Sleeping drops the cache. llama-server's real cache is
//!   per slot; the stand-in uses the same block cache for all three.
//!
//! ## Readiness and health
//!
//! - vLLM: the port is bound at once but listened on only after `--load-ms`, so connections are
//!   refused while loading; then `GET /health` is 200, and 503 once the engine is dead.
//! - llama-server: listens at once; every request, `GET /health` too, is 503
//!   `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}` while loading,
//!   then `/health` (and `/v1/health`) is 200 `{"status":"ok"}`.
//! - SGLang: listens at once; `GET /health` and `GET /health_generate` are 503 while loading, then 200.
//!   (The real SGLang may refuse connections before its HTTP server starts; a prober must treat a
//!   refused connection as loading too.) Generation requests while loading are 503.
//!
//! ## Metrics (`GET /metrics`, Prometheus text)
//!
//! - vLLM (always): `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//!   `vllm:kv_cache_usage_perc` (0-1), counters `vllm:prefix_cache_queries` and
//!   `vllm:prefix_cache_hits` (in tokens), `vllm:prompt_tokens`, `vllm:generation_tokens`,
//!   `vllm:request_success`, histogram `vllm:time_to_first_token_seconds`, and
//!   `vllm:cache_config_info`; labels `engine="0"` and `model_name`. Counters are written as Python's
//!   prometheus_client writes them: `# TYPE vllm:prefix_cache_hits counter`, then the sample
//!   `vllm:prefix_cache_hits_total{...}`.
//! - SGLang (with `--enable-metrics`, as the real one): `sglang:num_running_reqs`,
//!   `sglang:num_queue_reqs`, `sglang:num_used_tokens`, `sglang:token_usage`, `sglang:cache_hit_rate`
//!   (over the last 64 prefills), `sglang:gen_throughput` (always 0), `sglang:prompt_tokens_total`,
//!   `sglang:generation_tokens_total`, histogram `sglang:time_to_first_token_seconds`.
//! - llama-server (with `--metrics`; else 501): `llamacpp:requests_processing`,
//!   `llamacpp:requests_deferred`, `llamacpp:prompt_tokens_total` (computed prompt tokens, cache hits
//!   excluded, as llama.cpp counts), `llamacpp:tokens_predicted_total`, their `_seconds_total`
//!   counters and throughput gauges; no labels.
//!
//! ## Sleep
//!
//! - vLLM: the development endpoints exist only in dev mode, which the real server takes from
//!   `VLLM_SERVER_DEV_MODE=1`; the stand-in takes that or `--server-dev-mode`. `/sleep` also needs
//!   `--enable-sleep-mode` (else 500). `POST /sleep?level=1|2[&mode=abort|wait]` aborts the requests
//!   in flight (or waits for them with `mode=wait`) and drops the prefix cache.
//!   `POST /wake_up[?tags=weights|kv_cache]` answers when awake: `--wake-ms`, plus `--load-ms` after
//!   level 2. `GET /is_sleeping` is `{"is_sleeping": bool}`. Also `POST /reset_prefix_cache` and a
//!   no-op `POST /collective_rpc`. While asleep, generation requests fail at once with 503 (they are
//!   not held), as the real engine fails them.
//! - SGLang: `POST /release_memory_occupation` (400 unless idle, as the real one requires) and
//!   `POST /resume_memory_occupation` (takes `--wake-ms`). While released, generation requests are
//!   503 and `/health` stays 200.
//! - llama-server: `--sleep-idle-seconds N` (N > 0) unloads after N seconds without requests and drops
//!   the prefix cache. `GET /props` reports `is_sleeping`; neither it nor `/health` nor `/metrics`
//!   wakes the server. The next generation request reloads, taking `--load-ms`, and is held (counted
//!   as deferred) meanwhile.
//!
//! ## Failures
//!
//! - `--fail-rate F`: each generation request is answered 500 with probability F, drawn from the
//!   seed and the request's arrival number (so a run is reproducible).
//! - `--die-after N`: the Nth generation request is answered; when its answer has been sent the
//!   engine dies: requests in flight fail, `/health` is 503 (vLLM: an empty 503, as `EngineDeadError`)
//!   and generation 500 for `--die-linger-ms` (default 0), then the server closes and the binary
//!   exits with status 1. Requests after the Nth are 500 at once.
//!
//! ## Not modelled
//!
//! Stop strings, `n` > 1, logprobs, tool calls, LoRA, sampling parameters (accepted, ignored), the
//! slowdown of decoding as the batch grows, chunked prefill, and llama-server's `/slots`.

pub mod config;
pub mod engine;
pub mod error;
mod lifecycle;
pub mod metrics;
pub mod openai;
pub mod prefix;
mod server;
pub mod text;

pub use config::{Cli, Config, Flavor};
pub use error::{ApiError, StandinError};
pub use server::{bind, router, Bound, Ended};
