//! Metrics pages as the engines write them, and the load read off each.

use super::*;
use colo_core::EngineKind;

const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="chat"} 3.0
vllm:num_requests_running{engine="1",model_name="chat"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="chat"} 4.0
vllm:num_requests_waiting{engine="1",model_name="chat"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="chat"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="chat"} 0.5
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="chat"} 1200.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="chat"} 900.0
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="chat"} 0.0
"#;

const SGLANG: &str = "sglang:num_running_reqs{model_name=\"a b}\"} 7\nsglang:num_queue_reqs{model_name=\"x\"} 1\nsglang:token_usage{model_name=\"x\"} 0.9 1700000000000\nsglang:cache_hit_rate 0.5\n";

const LLAMA: &str = "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 3\n";

fn read(kind: EngineKind, text: &str) -> Result<Scraped, MetricsError> {
    read_metrics(&kind.metrics().unwrap(), text, 77)
}

#[test]
fn pages_by_table() {
    // (engine, page, running, waiting, kv permille, prefix hits, prefix queries)
    type Case = (EngineKind, &'static str, u32, u32, Option<u16>, Option<f64>, Option<f64>);
    let cases: Vec<Case> = vec![
        (EngineKind::Vllm, VLLM, 5, 4, Some(500), Some(900.0), Some(1200.0)),
        (EngineKind::Sglang, SGLANG, 7, 1, Some(900), None, None),
        (EngineKind::LlamaServer, LLAMA, 2, 3, None, None, None),
    ];
    for (kind, page, running, waiting, kv, hits, queries) in cases {
        let scraped = read(kind, page).unwrap();
        assert_eq!(
            (
                scraped.report.running,
                scraped.report.waiting,
                scraped.report.kv_permille,
                scraped.report.at_ms
            ),
            (running, waiting, kv, 77),
            "{kind}"
        );
        assert_eq!((scraped.prefix_hits, scraped.prefix_queries), (hits, queries), "{kind}");
    }
}

#[test]
fn bad_pages_are_named_errors() {
    assert_eq!(
        read(EngineKind::LlamaServer, "llamacpp:requests_processing 2\n"),
        Err(MetricsError::Missing {
            metric: "llamacpp:requests_deferred"
        })
    );
    assert_eq!(
        read(
            EngineKind::LlamaServer,
            "llamacpp:requests_processing NaN\nllamacpp:requests_deferred 1\n"
        ),
        Err(MetricsError::BadValue {
            metric: "llamacpp:requests_processing".into(),
            value: "NaN".into()
        })
    );
    assert!(read(EngineKind::Vllm, "vllm:num_requests_running{unclosed 3\n").is_err());
    // vLLM's old, deprecated name is not read.
    assert!(read(
        EngineKind::Vllm,
        "vllm:gpu_cache_usage_perc 0.9\nvllm:num_requests_running 1\nvllm:num_requests_waiting 0\n"
    )
    .unwrap()
    .report
    .kv_permille
    .is_none());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_page_is_an_answer_not_a_panic(page in "(?s).{0,300}") {
            for kind in [EngineKind::Vllm, EngineKind::Sglang, EngineKind::LlamaServer] {
                let _ = read(kind, &page);
            }
        }
    }
}
