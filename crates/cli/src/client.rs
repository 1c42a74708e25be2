//! How CLI commands find and call a running `colo up`: its addresses are in
//! `<data dir>/colo.json`, its bearer token in `<data dir>/api-token`.

use anyhow::{bail, Context};
use colo_node::RunInfo;
use serde::de::DeserializeOwned;
use std::path::Path;

#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn connect(data_dir: &Path) -> anyhow::Result<Self> {
        let Some(info) = RunInfo::read(data_dir) else {
            bail!(
                "colo is not running with data dir {} (start it with `colo up --data-dir {}`)",
                data_dir.display(),
                data_dir.display()
            );
        };
        let token_path = data_dir.join(colo_control::auth::TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path).with_context(|| format!("reading {}", token_path.display()))?;
        Ok(Self {
            base: info.api,
            token: token.trim().to_string(),
            http: colo_node::tls::client(info.tls_ca.as_deref().map(Path::new))?,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        let response = response.with_context(|| format!("calling colo at {} (is `colo up` still running?)", self.base))?;
        if !response.status().is_success() {
            bail!("{}", error_text(response).await);
        }
        Ok(())
    }

    /// Waits up to `timeout` for machine `id` of `app` to reach `state`, in waits of at most
    /// the API's 60 s: a 408 with time left waits again.
    pub async fn wait_machine(&self, app: &str, id: &str, state: &str, timeout: std::time::Duration) -> anyhow::Result<colo_core::Machine> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let slice = left.min(std::time::Duration::from_secs(60));
            let url = format!(
                "{}/v1/apps/{app}/machines/{id}/wait?state={state}&timeout={:.3}",
                self.base,
                slice.as_secs_f64()
            );
            let response = self
                .http
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("calling colo at {} (is `colo up` still running?)", self.base))?;
            let status = response.status();
            if status == reqwest::StatusCode::REQUEST_TIMEOUT && left > slice {
                continue;
            }
            if !status.is_success() {
                bail!("{}", error_text(response).await);
            }
            return response.json().await.context("reading colo's answer");
        }
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling colo at {} (is `colo up` still running?)", self.base))?;
        if !response.status().is_success() {
            bail!("{}", error_text(response).await);
        }
        response.json().await.context("reading colo's answer")
    }
}

async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str().map(String::from)))
        .unwrap_or(body);
    format!("{message} (HTTP {status})")
}
