//! API keys at the edge: an app with keys answers only requests that bear one of them, each
//! within its key's rate limits (`colo_policy::KeyLimits`).

use crate::edge::{lock, Edge};
use crate::routes::RouteTable;
use crate::EdgeError;
use colo_policy::{KeyLimits, RateLimited};
use http::{header, HeaderMap};

// === impl Edge ===

impl Edge {
    /// Checks the bearer key of a request to an app that has keys, and charges the key's rate
    /// limits: one request, and for LLM calls `llm_tokens`. A key of another app gets the same
    /// 404 as an app that does not exist, so keys do not reveal other apps' names.
    pub(crate) fn authorize(&self, table: &RouteTable, app: &str, headers: &HeaderMap, llm_tokens: Option<u32>) -> Result<(), EdgeError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(routes) = table.apps.get(app) else {
            return match presented {
                Some(_) => Err(EdgeError::NotFound { app: app.to_string() }),
                None => Ok(()), // the pick answers with the list of apps
            };
        };
        if routes.keys.is_empty() {
            return Ok(());
        }
        let Some(presented) = presented else {
            return Err(EdgeError::Unauthorized { app: app.to_string() });
        };
        let hash = blake3::hash(presented.trim().as_bytes()).to_hex().to_string();
        let Some(key) = routes.keys.iter().find(|k| k.hash == hash) else {
            return Err(EdgeError::NotFound { app: app.to_string() });
        };
        let now = self.now_ms();
        let mut keys = lock(&self.keys);
        // Buckets of keys no longer in the table are dropped once they outnumber the keys that
        // are, so revoked keys do not pile up.
        if keys.len() > 2 * table.apps.values().map(|r| r.keys.len()).sum::<usize>() + 16 {
            keys.retain(|hash, _| table.apps.values().any(|r| r.keys.iter().any(|k| &k.hash == hash)));
        }
        keys.entry(hash)
            .or_insert_with(|| KeyLimits::new(key.rps, key.tokens_per_minute, now))
            .charge(llm_tokens, now)
            .map_err(
                |RateLimited {
                     what,
                     limit,
                     retry_after_s,
                 }| EdgeError::RateLimited {
                    what,
                    limit,
                    retry_after_s,
                },
            )
    }
}
