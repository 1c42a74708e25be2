//! Bearer tokens. The cluster token guards every daemon's API (control, agents, edges' admin
//! endpoints): made on first start, stored with mode 0600 in the data dir, read again whenever
//! the file changes (so `colo token rotate` takes effect without restarts). Deploy tokens are
//! scoped to one app: control lets them act on that app only, and answers 404 for any other,
//! as if it did not exist.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub const TOKEN_FILE: &str = "api-token";

/// Random bytes in the cluster token.
const TOKEN_BYTES: usize = 32;

/// Reads the token in `data_dir`, creating one if there is none.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::secret::secret(TOKEN_BYTES);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// Replaces the token in `data_dir` with a new one; daemons reading the file pick it up.
pub fn rotate_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let tmp = data_dir.join(format!("{TOKEN_FILE}.new"));
    let _ = std::fs::remove_file(&tmp);
    let token = crate::secret::secret(TOKEN_BYTES);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(token.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// A token file, read again when it changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, String)>,
}

impl TokenFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let token = std::fs::read_to_string(path)?.trim().to_string();
        if token.is_empty() {
            return Err(std::io::Error::other(format!("{} is empty", path.display())));
        }
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path: path.to_path_buf(),
            cached: Mutex::new((mtime, token)),
        })
    }

    /// The token now (the last one read if the file cannot be read).
    pub fn current(&self) -> String {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime != cached.0 {
            if let Ok(token) = std::fs::read_to_string(&self.path) {
                if !token.trim().is_empty() {
                    *cached = (mtime, token.trim().to_string());
                }
            }
        }
        cached.1.clone()
    }
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
/// The key a multi-host colo's edges open each connection to a machine with, and its agents'
/// forwarders check: derived from the cluster token, so the token itself never crosses the wire
/// to a machine. A rotated token gives a new key to daemons started after it.
pub fn machine_key(token: &str) -> String {
    crate::secret::digest(&format!("colo machine key\n{token}"))
}

/// Prefix of the read-only token.
pub const READ_ONLY_PREFIX: &str = "colo-read-";

/// The read-only token: it shows the dashboard (its data and the engine logs) and does nothing
/// else. Derived from the cluster token, so `colo token rotate` replaces it too, and the token
/// cannot be worked back from it.
pub fn read_only_token(token: &str) -> String {
    format!(
        "{READ_ONLY_PREFIX}{}",
        crate::secret::digest(&format!("colo read-only token\n{token}"))
    )
}

/// What the read-only token may do: read the dashboard's data and a machine's engine log.
fn read_only_allows(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == axum::http::Method::GET
        && (path.starts_with("/v1/ui/") || (path.starts_with("/v1/apps/") && path.contains("/machines/") && path.ends_with("/logs")))
}

pub fn same(presented: &str, token: &str) -> bool {
    colo_core::same_secret(presented.as_bytes(), token.as_bytes())
}

fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string())
}

fn unauthorized() -> Response {
    let body = serde_json::json!({"error": "missing or wrong bearer token (see the api-token file in the data dir)"});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// Middleware: refuses requests without the cluster token.
pub async fn require_token(State(token): State<Arc<TokenFile>>, request: Request, next: Next) -> Response {
    match bearer(&request) {
        Some(presented) if same(&presented, &token.current()) => next.run(request).await,
        _ => unauthorized(),
    }
}

/// What control's API accepts: the cluster token for everything, an app's deploy token for
/// that app's own endpoints (`/v1/apps/<app>...`, and deploying `<app>` with `POST /v1/apps`).
pub struct Access {
    pub token: TokenFile,
    pub state: Arc<dyn colo_state::StateStore>,
}

/// Prefix of deploy tokens, which name no app: the app is found by the token's digest.
pub const DEPLOY_TOKEN_PREFIX: &str = "colo-deploy-";

/// Middleware for control's API.
pub async fn require_access(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let Some(presented) = bearer(&request) else { return unauthorized() };
    let token = access.token.current();
    if same(&presented, &token) {
        return next.run(request).await;
    }
    if presented.starts_with(READ_ONLY_PREFIX) && same(&presented, &read_only_token(&token)) {
        if read_only_allows(&request) {
            return next.run(request).await;
        }
        let body = serde_json::json!({"error": "the read-only token shows the dashboard and engine logs only"});
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    if !presented.starts_with(DEPLOY_TOKEN_PREFIX) {
        return unauthorized();
    }
    let digest = crate::secret::digest(&presented);
    let apps = access.state.apps().await.unwrap_or_default();
    let Some(owner) = apps.iter().find(|a| a.deploy_tokens.contains(&digest)) else {
        return unauthorized();
    };
    let owner = owner.name.to_string();
    // The app the request acts on: from the path, or from the body of a deploy.
    let path = request.uri().path().to_string();
    let (target, request) = if let Some(rest) = path.strip_prefix("/v1/apps/") {
        (rest.split('/').next().unwrap_or_default().to_string(), request)
    } else if path == "/v1/apps" && request.method() == axum::http::Method::POST {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
            return unauthorized();
        };
        let name = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(String::from))
            .unwrap_or_default();
        (name, Request::from_parts(parts, axum::body::Body::from(bytes)))
    } else {
        // Listing every app or machine is for the cluster token.
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": format!("a deploy token of app {owner:?} may act on that app only")})),
        )
            .into_response();
    };
    if target != owner {
        let body = serde_json::json!({"error": format!("app {target:?} not found")});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::load_or_create_token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(super::load_or_create_token(dir.path()).unwrap(), first);
        let mode = std::fs::metadata(dir.path().join(super::TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_read_only_token_follows_the_cluster_token_and_reads_the_dashboard_only() {
        let token = "a".repeat(64);
        let read_only = super::read_only_token(&token);
        assert!(read_only.starts_with(super::READ_ONLY_PREFIX));
        assert!(!read_only.contains(&token));
        assert_eq!(read_only, super::read_only_token(&token));
        assert_ne!(read_only, super::read_only_token(&"b".repeat(64)), "a rotated token gives another");
        let allows = |method: &str, path: &str| {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            super::read_only_allows(&request)
        };
        assert!(allows("GET", "/v1/ui/snapshot"));
        assert!(allows("GET", "/v1/apps/chat/machines/m1/logs"));
        assert!(!allows("GET", "/v1/apps"));
        assert!(!allows("GET", "/v1/apps/chat/keys"));
        assert!(!allows("POST", "/v1/ui/snapshot"));
        assert!(!allows("DELETE", "/v1/apps/chat/machines/m1/logs"));
    }
}
