//! Secrets an app's record holds only as digests: API keys (with their rate limits) and
//! deploy tokens.

use crate::secret::{digest, secret};
use crate::{auth, Control, ControlError};
use colo_core::ApiKey;

/// Random bytes in an API key or a deploy token.
const KEY_BYTES: usize = 24;

// === impl Control ===

impl Control {
    /// Makes a new API key for `app`; returns its record and the key itself (shown only now).
    pub async fn create_key(&self, app: &str, rps: Option<u32>, tokens_per_minute: Option<u32>) -> Result<(ApiKey, String), ControlError> {
        if rps == Some(0) || tokens_per_minute == Some(0) {
            return Err(ControlError::invalid(
                "limits",
                "rps and tokens_per_minute must be at least 1 when given",
            ));
        }
        let mut record = self.app(app).await?;
        let secret = secret(KEY_BYTES);
        let key = format!("colo-{secret}");
        let api_key = ApiKey {
            id: format!("k-{}", &secret[..8]),
            hash: digest(&key),
            rps,
            tokens_per_minute,
        };
        record.keys.push(api_key.clone());
        self.state.put_app(&record).await?;
        Ok((api_key, key))
    }

    /// Makes a deploy token for `app` (shown only now): it lets its holder deploy, inspect and
    /// destroy this app through control, and nothing else.
    pub async fn create_deploy_token(&self, app: &str) -> Result<String, ControlError> {
        let mut record = self.app(app).await?;
        let token = format!("{}{}", auth::DEPLOY_TOKEN_PREFIX, secret(KEY_BYTES));
        record.deploy_tokens.push(digest(&token));
        self.state.put_app(&record).await?;
        Ok(token)
    }

    /// Removes one of `app`'s keys.
    pub async fn revoke_key(&self, app: &str, id: &str) -> Result<(), ControlError> {
        let mut record = self.app(app).await?;
        let before = record.keys.len();
        record.keys.retain(|k| k.id != id);
        if record.keys.len() == before {
            return Err(ControlError::invalid("key", format!("app {app:?} has no key {id:?}")));
        }
        self.state.put_app(&record).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hex_of_their_length_and_differ() {
        let (a, b) = (secret(24), secret(24));
        assert_eq!(a.len(), 48);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        // A digest is the same for the same secret (so the edge can look a key up by it) and
        // 32 bytes of hex.
        assert_eq!(digest("colo-x"), digest("colo-x"));
        assert_eq!(digest("colo-x").len(), 64);
        assert_ne!(digest("colo-x"), digest("colo-y"));
    }
}
