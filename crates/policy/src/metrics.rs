//! An engine's load read off its Prometheus `/metrics` page, for engines that do not send
//! `colo-load` with their answers (vLLM, SGLang, llama-server): the metric names come from the
//! engine's profile (`colo_core::EngineKind::metrics`), the values become one [`LoadReport`].
//!
//! The page is text a machine sends, so it is parsed defensively: unknown lines are skipped,
//! a value that is not a finite, non-negative number is an error naming the metric. Series of
//! the same metric with different labels (one per engine under data parallelism) are summed,
//! except the KV use, of which the fullest counts. Counters may carry the `_total` suffix that
//! Python's client adds.

use crate::route::{permille, LoadReport};
use colo_core::MetricNames;
use thiserror::Error;

/// What one scrape says beyond the load: the prefix cache's counters, where the engine has them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scraped {
    pub report: LoadReport,
    /// Prompt tokens found in the prefix cache, since the engine started.
    pub prefix_hits: Option<f64>,
    /// Prompt tokens looked up in the prefix cache, since the engine started.
    pub prefix_queries: Option<f64>,
}

/// Why a metrics page gave no load.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("the metrics page has no {metric}")]
    Missing { metric: &'static str },
    #[error("{metric} is {value:?}, not a number of requests or a share")]
    BadValue { metric: String, value: String },
}

/// Reads the load the metrics page `text` reports under `names`, received at `at_ms`.
pub fn read_metrics(names: &MetricNames, text: &str, at_ms: u64) -> Result<Scraped, MetricsError> {
    let mut running = None;
    let mut waiting = None;
    let mut kv: Option<f64> = None;
    let mut hits = None;
    let mut queries = None;
    for line in text.lines() {
        let Some(Sample { name, value, .. }) = sample(line) else { continue };
        let add = |slot: &mut Option<f64>, value: f64| *slot = Some(slot.unwrap_or(0.0) + value);
        if name == names.running {
            add(&mut running, number(name, value)?);
        } else if name == names.waiting {
            add(&mut waiting, number(name, value)?);
        } else if names.kv_usage == Some(name) {
            let v = number(name, value)?;
            kv = Some(kv.map_or(v, |k| k.max(v)));
        } else if names.prefix_hits.is_some_and(|m| counter_is(name, m)) {
            add(&mut hits, number(name, value)?);
        } else if names.prefix_queries.is_some_and(|m| counter_is(name, m)) {
            add(&mut queries, number(name, value)?);
        }
    }
    let count = |v: f64| v.round().min(f64::from(u32::MAX)) as u32;
    Ok(Scraped {
        report: LoadReport {
            running: count(running.ok_or(MetricsError::Missing { metric: names.running })?),
            waiting: count(waiting.ok_or(MetricsError::Missing { metric: names.waiting })?),
            kv_permille: kv.map(permille),
            at_ms,
        },
        prefix_hits: hits,
        prefix_queries: queries,
    })
}

/// One sample line of Prometheus' text format, `name{labels} value [timestamp]`, as text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// What is between the braces, unparsed (empty without them).
    pub labels: &'a str,
    pub value: &'a str,
}

/// The sample on `line`; `None` for blank lines, comments and lines that are not samples.
pub fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(at) if line.as_bytes()[at] == b'{' => {
            // Label values may hold spaces and braces inside quotes: find the closing brace
            // outside them.
            let mut quoted = false;
            let mut escaped = false;
            let mut close = None;
            for (i, c) in line[at..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        close = Some(at + i);
                        break;
                    }
                    _ => {}
                }
            }
            let close = close?;
            (&line[..at], &line[at + 1..close], &line[close + 1..])
        }
        Some(at) => (&line[..at], "", &line[at..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?;
    Some(Sample { name, labels, value })
}

// === impl Sample ===

impl Sample<'_> {
    /// The value of label `key`, unescaped; `None` when the sample has no such label (or its
    /// labels are malformed).
    pub fn label(&self, key: &str) -> Option<String> {
        let mut rest = self.labels;
        loop {
            let (name, after) = rest.split_once("=\"")?;
            let mut text = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, 'n') => {
                        text.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        text.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, c) => text.push(c),
                }
            }
            if name.trim_start_matches(',').trim() == key {
                return Some(text);
            }
            rest = &after[end? + 1..];
        }
    }
}

/// Whether sample `name` is counter `metric`, written with or without `_total`.
fn counter_is(name: &str, metric: &str) -> bool {
    name == metric || name.strip_suffix("_total") == Some(metric)
}

fn number(metric: &str, value: &str) -> Result<f64, MetricsError> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(MetricsError::BadValue {
            metric: metric.to_string(),
            value: value.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
