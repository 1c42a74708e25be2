//! An edge's traffic figures, read off its own Prometheus text: per app, requests, errors by
//! where they came from, latency and time-to-first-token buckets, output tokens, and requests by
//! the region of the machine that answered. Each edge sums its own page into an
//! [`EdgeTraffic`] (small enough to send over a message bus); the dashboard merges those of
//! every edge. Pure: text in, numbers out.

use crate::metrics::sample;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The app label of requests whose app was not found (the edge's `-` bucket): not an app's.
const NO_APP: &str = "-";

/// One app's requests as one edge (or, merged, every edge) counted them since it started: the
/// dashboard turns two of these into rates, and the buckets into percentiles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppTraffic {
    pub requests: u64,
    /// Answers with a 4xx status (the caller's mistake, or a limit) and with a 5xx (no machine,
    /// an engine's failure).
    pub client_errors: u64,
    pub server_errors: u64,
    /// Error answers by where they came from: the edge's own (`client`, `capacity`,
    /// `upstream`, `internal`) and `engine` for a 4xx or 5xx a machine sent.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Time to the response head: (upper bound in seconds, requests at most that long). JSON
    /// writes the last bound, infinity, as `null`.
    #[serde(deserialize_with = "buckets")]
    pub latency_buckets: Vec<(f64, u64)>,
    /// Time to the first generated token of streamed completions, the same way.
    #[serde(default, deserialize_with = "buckets")]
    pub first_token_buckets: Vec<(f64, u64)>,
    /// Tokens generated for the app's callers (a stream's events that carry text, or the
    /// `completion_tokens` of the usage an answer reports).
    #[serde(default)]
    pub output_tokens: u64,
    /// Bytes of machines' answers passed on to callers: the edges' egress.
    #[serde(default)]
    pub response_bytes: u64,
    /// Requests by the region of the machine that answered them.
    #[serde(default)]
    pub by_region: BTreeMap<String, u64>,
}

/// Buckets as JSON has them: a `null` bound is the last, infinite one.
fn buckets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(f64, u64)>, D::Error> {
    let list: Vec<(Option<f64>, u64)> = Deserialize::deserialize(d)?;
    Ok(list.into_iter().map(|(le, n)| (le.unwrap_or(f64::INFINITY), n)).collect())
}

/// What one edge counted, and where it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeTraffic {
    /// The edge's region.
    pub region: String,
    pub apps: BTreeMap<String, AppTraffic>,
}

/// Requests sent from the edges of one region to machines of another (or the same) region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub from: String,
    pub to: String,
    pub requests: u64,
}

/// The traffic in the Prometheus text of the edge of `region` (pure). Lines it does not know are
/// skipped.
pub fn summarize(region: &str, text: &str) -> EdgeTraffic {
    let mut apps: BTreeMap<String, AppTraffic> = BTreeMap::new();
    let mut latency: BTreeMap<String, BTreeMap<u64, (f64, u64)>> = BTreeMap::new();
    let mut first_token: BTreeMap<String, BTreeMap<u64, (f64, u64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(sample) = sample(line) else { continue };
        let Ok(value) = sample.value.parse::<f64>() else { continue };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        let n = value as u64;
        let Some(app) = sample.label("app").filter(|a| a != NO_APP) else {
            continue;
        };
        let bucket = |into: &mut BTreeMap<String, BTreeMap<u64, (f64, u64)>>, app: String| {
            if let Some(le) = sample.label("le").and_then(|l| l.parse::<f64>().ok()) {
                into.entry(app).or_default().entry(le.to_bits()).or_insert((le, 0)).1 += n;
            }
        };
        match sample.name {
            "colo_edge_requests_total" => {
                let t = apps.entry(app).or_default();
                t.requests += n;
                let machine_region = sample.label("region").filter(|r| r != NO_APP);
                let status = sample.label("status").and_then(|s| s.parse::<u16>().ok());
                match status {
                    Some(400..=499) => t.client_errors += n,
                    Some(500..=599) => t.server_errors += n,
                    _ => {}
                }
                // An error status from a machine is the engine's; the edge's own errors are
                // counted by source in their own series.
                if machine_region.is_some() && status.is_some_and(|s| s >= 400) {
                    *t.errors.entry("engine".into()).or_default() += n;
                }
                if let Some(r) = machine_region {
                    *t.by_region.entry(r).or_default() += n;
                }
            }
            "colo_edge_errors_total" => {
                if let Some(source) = sample.label("source") {
                    *apps.entry(app).or_default().errors.entry(source).or_default() += n;
                }
            }
            "colo_edge_output_tokens_total" => apps.entry(app).or_default().output_tokens += n,
            "colo_edge_response_bytes_total" => apps.entry(app).or_default().response_bytes += n,
            "colo_edge_request_seconds_bucket" => bucket(&mut latency, app),
            "colo_edge_first_token_seconds_bucket" => bucket(&mut first_token, app),
            _ => {}
        }
    }
    let sorted = |by_le: BTreeMap<u64, (f64, u64)>| {
        let mut list: Vec<(f64, u64)> = by_le.into_values().collect();
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        list
    };
    for (app, by_le) in latency {
        apps.entry(app).or_default().latency_buckets = sorted(by_le);
    }
    for (app, by_le) in first_token {
        apps.entry(app).or_default().first_token_buckets = sorted(by_le);
    }
    EdgeTraffic {
        region: region.to_string(),
        apps,
    }
}

/// Bucket lists added bound by bound (pure).
fn add_buckets(into: &mut Vec<(f64, u64)>, from: &[(f64, u64)]) {
    for &(le, n) in from {
        match into.iter_mut().find(|(b, _)| b.to_bits() == le.to_bits()) {
            Some(slot) => slot.1 += n,
            None => into.push((le, n)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// Every edge's figures summed per app (pure).
pub fn merge(edges: &[EdgeTraffic]) -> BTreeMap<String, AppTraffic> {
    let mut out: BTreeMap<String, AppTraffic> = BTreeMap::new();
    for (app, t) in edges.iter().flat_map(|e| &e.apps) {
        let sum = out.entry(app.clone()).or_default();
        sum.requests += t.requests;
        sum.client_errors += t.client_errors;
        sum.server_errors += t.server_errors;
        sum.output_tokens += t.output_tokens;
        sum.response_bytes += t.response_bytes;
        for (source, n) in &t.errors {
            *sum.errors.entry(source.clone()).or_default() += n;
        }
        for (region, n) in &t.by_region {
            *sum.by_region.entry(region.clone()).or_default() += n;
        }
        add_buckets(&mut sum.latency_buckets, &t.latency_buckets);
        add_buckets(&mut sum.first_token_buckets, &t.first_token_buckets);
    }
    out
}

/// Requests from each edge region to each machine region, over every app (pure), in order of
/// (from, to).
pub fn flows(edges: &[EdgeTraffic]) -> Vec<Flow> {
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for edge in edges {
        for (to, n) in edge.apps.values().flat_map(|t| &t.by_region) {
            *by.entry((edge.region.clone(), to.clone())).or_default() += n;
        }
    }
    by.into_iter().map(|((from, to), requests)| Flow { from, to, requests }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORD: &str = r#"# TYPE colo_edge_requests counter
colo_edge_requests_total{app="chat",region="ord",status="200"} 7
colo_edge_requests_total{app="chat",region="ord",status="503"} 2
colo_edge_requests_total{app="chat",region="-",status="429"} 1
colo_edge_requests_total{app="-",region="-",status="404"} 5
colo_edge_requests_total{app="odd \"name\"",region="ord",status="200"} 3
colo_edge_errors_total{app="chat",source="client"} 1
colo_edge_errors_total{app="-",source="client"} 5
colo_edge_output_tokens_total{app="chat"} 120
colo_edge_request_seconds_bucket{le="0.001",app="chat",region="ord",status="200"} 1
colo_edge_request_seconds_bucket{le="0.002",app="chat",region="ord",status="200"} 6
colo_edge_request_seconds_bucket{le="+Inf",app="chat",region="ord",status="200"} 7
colo_edge_first_token_seconds_bucket{le="0.016",app="chat"} 4
colo_edge_first_token_seconds_bucket{le="+Inf",app="chat"} 5
colo_edge_in_flight 3
"#;

    const AMS: &str = r#"colo_edge_requests_total{app="chat",region="ord",status="200"} 4
colo_edge_requests_total{app="chat",region="ams",status="200"} 1
colo_edge_request_seconds_bucket{le="0.002",app="chat",region="ams",status="200"} 1
colo_edge_request_seconds_bucket{le="+Inf",app="chat",region="ams",status="200"} 1
colo_edge_output_tokens_total{app="chat"} 30
colo_edge_response_bytes_total{app="chat"} 2048
"#;

    #[test]
    fn one_edge_sums_statuses_regions_and_sources() {
        let t = summarize("ord", ORD);
        assert_eq!(t.region, "ord");
        let chat = &t.apps["chat"];
        assert_eq!((chat.requests, chat.client_errors, chat.server_errors), (10, 1, 2));
        assert_eq!(
            chat.errors,
            [("client".to_string(), 1), ("engine".to_string(), 2)].into_iter().collect()
        );
        assert_eq!(
            chat.by_region,
            [("ord".to_string(), 9)].into_iter().collect(),
            "the edge's own 429 went to no machine"
        );
        assert_eq!(chat.latency_buckets, vec![(0.001, 1), (0.002, 6), (f64::INFINITY, 7)]);
        assert_eq!(chat.first_token_buckets, vec![(0.016, 4), (f64::INFINITY, 5)]);
        assert_eq!(chat.output_tokens, 120);
        assert_eq!(t.apps["odd \"name\""].requests, 3, "escaped quotes in a label");
        assert!(!t.apps.contains_key("-"), "requests for no app are not an app's");
        assert!(summarize("x", "garbage line\n{}\ncolo_edge_requests_total{app=\"a\"} -4\n")
            .apps
            .is_empty());
    }

    #[test]
    fn edges_merge_and_flow_between_regions() {
        let edges = [summarize("ord", ORD), summarize("ams", AMS)];
        let all = merge(&edges);
        let chat = &all["chat"];
        assert_eq!(chat.requests, 15);
        assert_eq!(chat.output_tokens, 150);
        assert_eq!(chat.response_bytes, 2048);
        assert_eq!(chat.latency_buckets, vec![(0.001, 1), (0.002, 7), (f64::INFINITY, 8)]);
        assert_eq!(
            chat.by_region,
            [("ams".to_string(), 1), ("ord".to_string(), 13)].into_iter().collect()
        );
        let f = flows(&edges);
        let pairs: Vec<(&str, &str, u64)> = f.iter().map(|f| (f.from.as_str(), f.to.as_str(), f.requests)).collect();
        assert_eq!(pairs, vec![("ams", "ams", 1), ("ams", "ord", 4), ("ord", "ord", 12)]);
        // It survives the bus: what an edge sends is what the dashboard reads.
        let wire = serde_json::to_vec(&edges[0]).unwrap();
        assert_eq!(serde_json::from_slice::<EdgeTraffic>(&wire).unwrap(), edges[0]);
    }
}
