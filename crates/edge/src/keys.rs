//! API keys at the edge: an app with keys answers only requests that bear one of them, each
//! within its key's rate limits (`colo_policy::KeyLimits`).

use crate::edge::{lock, Edge};
use crate::routes::RouteTable;
use crate::EdgeError;
use colo_policy::{KeyLimits, RateLimited};
use http::{header, HeaderMap};

/// The bearer key a request presents.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// How keys are stored: the hex BLAKE3 digest.
fn key_hash(key: &str) -> String {
    blake3::hash(key.trim().as_bytes()).to_hex().to_string()
}

/// The apps `key` is a key of.
pub(crate) fn apps_of_key<'t>(table: &'t RouteTable, key: &str) -> Vec<&'t str> {
    let hash = key_hash(key);
    table
        .apps
        .iter()
        .filter(|(_, routes)| routes.keys.iter().any(|k| k.hash == hash))
        .map(|(name, _)| name.as_str())
        .collect()
}

// === impl Edge ===

impl Edge {
    /// Checks the bearer key of a request to an app that has keys, and charges the key's rate
    /// limits: one request, and for LLM calls `llm_tokens`. For an app with keys, a missing key
    /// and a wrong one (of no app, or of another app) get the same 401, which names no app. For
    /// a name that is no app, a valid key gets a 404 naming the apps that key is for and no
    /// others; any other key is ignored, as open apps ignore it.
    pub(crate) fn authorize(&self, table: &RouteTable, app: &str, headers: &HeaderMap, llm_tokens: Option<u32>) -> Result<(), EdgeError> {
        let presented = bearer(headers);
        let Some(routes) = table.apps.get(app) else {
            let Some(presented) = presented else {
                return Ok(()); // the pick answers with the list of open apps
            };
            // A key of no app is what clients that must send one send to open apps: the pick
            // answers with the list of open apps, as without a key.
            let keys_apps: Vec<String> = apps_of_key(table, presented).into_iter().map(String::from).collect();
            return match keys_apps.is_empty() {
                true => Ok(()),
                false => Err(EdgeError::NotFound {
                    app: app.to_string(),
                    keys_apps,
                }),
            };
        };
        if routes.keys.is_empty() {
            return Ok(());
        }
        let Some(presented) = presented else {
            return Err(EdgeError::Unauthorized);
        };
        let hash = key_hash(presented);
        let Some(key) = routes.keys.iter().find(|k| k.hash == hash) else {
            return Err(EdgeError::Unauthorized);
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
