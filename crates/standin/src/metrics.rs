//! `GET /metrics`: the engine's counters and gauges in Prometheus text, under the metric names,
//! labels and suffixes each real engine uses.
//!
//! vLLM and SGLang export through Python's prometheus_client, which writes a counter declared as
//! `vllm:prefix_cache_hits` as the sample `vllm:prefix_cache_hits_total`: a scraper must read the
//! `_total` name, as it must against the real engines. llama-server writes its own text, with
//! `_total` already in the declared names and no labels.

use crate::config::{Config, Flavor};
use std::collections::VecDeque;
use std::fmt::Write as _;

/// vLLM's buckets for time to first token, in seconds.
const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// SGLang's buckets for time to first token, in seconds.
const SGLANG_TTFT_BUCKETS: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0,
];
/// Prefills SGLang's cache hit rate looks back over (the real one reports its recent batches).
const RECENT_PREFILLS: usize = 64;

/// A Prometheus histogram: a count per bucket (not cumulative; summed when written), sum and count.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// What the engine has done since it started.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Prompt tokens of prefilled sequences, cached or not.
    pub prompt_tokens: u64,
    /// Prompt tokens actually computed: those the prefix cache did not hold.
    pub computed_prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Prefix-cache lookups, in prompt tokens, and the tokens found.
    pub cache_queries: u64,
    pub cache_hits: u64,
    pub finished: u64,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    pub ttft: Histogram,
    /// (hits, queries) of the latest lookups.
    recent: VecDeque<(u64, u64)>,
}

impl Stats {
    pub fn new(flavor: Flavor) -> Self {
        Stats {
            prompt_tokens: 0,
            computed_prompt_tokens: 0,
            generation_tokens: 0,
            cache_queries: 0,
            cache_hits: 0,
            finished: 0,
            prompt_seconds: 0.0,
            decode_seconds: 0.0,
            ttft: Histogram::new(if flavor == Flavor::Sglang {
                SGLANG_TTFT_BUCKETS
            } else {
                VLLM_TTFT_BUCKETS
            }),
            recent: VecDeque::new(),
        }
    }

    pub fn record_lookup(&mut self, prompt: usize, hit: usize) {
        self.cache_queries += prompt as u64;
        self.cache_hits += hit as u64;
        if self.recent.len() == RECENT_PREFILLS {
            self.recent.pop_front();
        }
        self.recent.push_back((hit as u64, prompt as u64));
    }

    /// Hit tokens over queried tokens across the latest prefills; 0 before any.
    pub fn recent_hit_rate(&self) -> f64 {
        let (hits, queries) = self.recent.iter().fold((0, 0), |(h, q), (dh, dq)| (h + dh, q + dq));
        if queries == 0 {
            0.0
        } else {
            hits as f64 / queries as f64
        }
    }
}

/// The engine's state at one moment, as the metrics report it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub running: usize,
    /// Queued for a place, or held while the engine wakes.
    pub waiting: usize,
    /// KV tokens held by running sequences (prompt + max_tokens each).
    pub kv_used: usize,
    pub cached_blocks: usize,
    pub stats: Stats,
}

/// The metrics text of `config`'s flavour.
pub fn render(config: &Config, s: &Snapshot) -> String {
    let mut out = String::new();
    let kv_usage = s.kv_used as f64 / config.kv_tokens as f64;
    let st = &s.stats;
    match config.flavor {
        Flavor::Vllm => {
            let labels = format!("engine=\"0\",model_name=\"{}\"", escape(&config.served_name));
            let gauges: [(&str, &str, f64); 3] = [
                (
                    "vllm:num_requests_running",
                    "Number of requests in model execution batches.",
                    s.running as f64,
                ),
                (
                    "vllm:num_requests_waiting",
                    "Number of requests waiting to be processed.",
                    s.waiting as f64,
                ),
                ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage),
            ];
            for (name, help, value) in gauges {
                family(&mut out, name, help, "gauge", &[(name, &labels, value)]);
            }
            let counters: [(&str, &str, u64); 4] = [
                (
                    "vllm:prefix_cache_queries",
                    "Prefix cache queries, in terms of number of queried tokens.",
                    st.cache_queries,
                ),
                (
                    "vllm:prefix_cache_hits",
                    "Prefix cache hits, in terms of number of cached tokens.",
                    st.cache_hits,
                ),
                ("vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens),
                (
                    "vllm:generation_tokens",
                    "Number of generation tokens processed.",
                    st.generation_tokens,
                ),
            ];
            for (name, help, value) in counters {
                family(
                    &mut out,
                    name,
                    help,
                    "counter",
                    &[(&format!("{name}_total"), &labels, value as f64)],
                );
            }
            let success = format!("{labels},finished_reason=\"length\"");
            family(
                &mut out,
                "vllm:request_success",
                "Count of successfully processed requests.",
                "counter",
                &[("vllm:request_success_total", &success, st.finished as f64)],
            );
            histogram(
                &mut out,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &labels,
                &st.ttft,
            );
            let info = format!(
                "{labels},block_size=\"{}\",enable_prefix_caching=\"{}\",num_gpu_blocks=\"{}\"",
                config.block_tokens,
                if config.cache_blocks > 0 { "True" } else { "False" },
                config.kv_tokens / config.block_tokens
            );
            family(
                &mut out,
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
                "gauge",
                &[("vllm:cache_config_info", &info, 1.0)],
            );
        }
        Flavor::Sglang => {
            let labels = format!(
                "engine_type=\"unified\",model_name=\"{}\",tp_rank=\"0\"",
                escape(&config.served_name)
            );
            let gauges: [(&str, &str, f64); 6] = [
                ("sglang:num_running_reqs", "The number of running requests.", s.running as f64),
                (
                    "sglang:num_queue_reqs",
                    "The number of requests in the waiting queue.",
                    s.waiting as f64,
                ),
                ("sglang:num_used_tokens", "The number of used tokens.", s.kv_used as f64),
                ("sglang:token_usage", "The token usage.", kv_usage),
                ("sglang:cache_hit_rate", "The prefix cache hit rate.", st.recent_hit_rate()),
                ("sglang:gen_throughput", "The generation throughput (token/s).", 0.0),
            ];
            for (name, help, value) in gauges {
                family(&mut out, name, help, "gauge", &[(name, &labels, value)]);
            }
            for (name, help, value) in [
                ("sglang:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens),
                (
                    "sglang:generation_tokens",
                    "Number of generation tokens processed.",
                    st.generation_tokens,
                ),
            ] {
                family(
                    &mut out,
                    name,
                    help,
                    "counter",
                    &[(&format!("{name}_total"), &labels, value as f64)],
                );
            }
            histogram(
                &mut out,
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &labels,
                &st.ttft,
            );
        }
        Flavor::Llama => {
            let rate = |tokens: u64, seconds: f64| if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 };
            let families: [(&str, &str, &str, f64); 8] = [
                (
                    "llamacpp:prompt_tokens_total",
                    "counter",
                    "Number of prompt tokens processed.",
                    st.computed_prompt_tokens as f64,
                ),
                ("llamacpp:prompt_seconds_total", "counter", "Prompt process time", st.prompt_seconds),
                (
                    "llamacpp:tokens_predicted_total",
                    "counter",
                    "Number of generation tokens processed.",
                    st.generation_tokens as f64,
                ),
                (
                    "llamacpp:tokens_predicted_seconds_total",
                    "counter",
                    "Predict process time",
                    st.decode_seconds,
                ),
                (
                    "llamacpp:prompt_tokens_seconds",
                    "gauge",
                    "Average prompt throughput in tokens/s.",
                    rate(st.computed_prompt_tokens, st.prompt_seconds),
                ),
                (
                    "llamacpp:predicted_tokens_seconds",
                    "gauge",
                    "Average generation throughput in tokens/s.",
                    rate(st.generation_tokens, st.decode_seconds),
                ),
                (
                    "llamacpp:requests_processing",
                    "gauge",
                    "Number of requests processing.",
                    s.running as f64,
                ),
                (
                    "llamacpp:requests_deferred",
                    "gauge",
                    "Number of requests deferred.",
                    s.waiting as f64,
                ),
            ];
            for (name, kind, help, value) in families {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
            }
        }
    }
    out
}

/// One metric family: HELP and TYPE lines, then its samples as (name, labels, value).
fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(&str, &str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (sample, labels, value) in samples {
        let _ = writeln!(out, "{sample}{{{labels}}} {value:?}");
    }
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in h.bounds.iter().zip(&h.counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound:?}\"}} {:?}", cumulative as f64);
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_count{{{labels}}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", h.sum);
}

/// A label value as Prometheus text writes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_when_written() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.observe(v);
        }
        let mut out = String::new();
        histogram(&mut out, "x", "help", "a=\"b\"", &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 1.0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1.0\"} 3.0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4.0\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4.0\n"), "{out}");
    }

    #[test]
    fn recent_hit_rate_forgets_old_prefills() {
        let mut s = Stats::new(Flavor::Sglang);
        s.record_lookup(100, 0);
        assert_eq!(s.recent_hit_rate(), 0.0);
        for _ in 0..RECENT_PREFILLS {
            s.record_lookup(100, 50);
        }
        assert_eq!(s.recent_hit_rate(), 0.5);
        assert_eq!(
            (s.cache_queries, s.cache_hits),
            (100 * (RECENT_PREFILLS as u64 + 1), 50 * RECENT_PREFILLS as u64)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
