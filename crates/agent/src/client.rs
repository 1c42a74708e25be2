//! The client of one agent's machines API (`/v1/apps/{app}/machines...`), sending the request
//! types the API itself reads. Control drives remote hosts with it, and `colo edge` starts and
//! stops machines with it.

use crate::api::CreateMachine;
use colo_core::Machine;
use reqwest::{Method, StatusCode};

/// Why a call to an agent failed. Each names the URL called.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request or its answer did not get through (connection refused, reset, TLS).
    #[error("{url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status; `body` is its answer (`{"error": ...}`).
    #[error("{url}: {status}: {body}")]
    Refused { url: String, status: StatusCode, body: String },
    /// The agent answered success with something that is not a machine record.
    #[error("{url}: answer is not a machine record: {source}")]
    Answer {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// What went wrong, for a person: the agent's own message when it refused, else the
    /// whole error.
    pub fn reason(&self) -> String {
        if let ClientError::Refused { body, .. } = self {
            let said = serde_json::from_str::<serde_json::Value>(body).ok();
            if let Some(message) = said.as_ref().and_then(|v| v["error"].as_str()) {
                return message.to_string();
            }
        }
        self.to_string()
    }
}

/// One agent's API, reached at its base URL with the cluster token.
#[derive(Clone, Debug)]
pub struct AgentClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

// === impl AgentClient ===

impl AgentClient {
    /// The agent at `base_url` (`http://10.0.0.5:7070`), called with bearer `token` over `http`
    /// (which trusts the cluster's CA when agents speak TLS).
    pub fn new(base_url: &str, token: String, http: reqwest::Client) -> Self {
        AgentClient {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    /// Creates (and starts) a machine of `app` as `request` says; answers its record.
    pub async fn create(&self, app: &str, request: &CreateMachine) -> Result<Machine, ClientError> {
        self.call(Method::POST, &format!("/v1/apps/{app}/machines"), Some(request)).await
    }

    /// Asks machine `id` of `app` to run.
    pub async fn start(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(Method::POST, &format!("/v1/apps/{app}/machines/{id}/start"), None).await
    }

    /// Asks machine `id` of `app` to stop, after its grace for requests in flight.
    pub async fn stop(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(Method::POST, &format!("/v1/apps/{app}/machines/{id}/stop"), None).await
    }

    /// Asks machine `id` of `app` to suspend its engine.
    pub async fn suspend(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(Method::POST, &format!("/v1/apps/{app}/machines/{id}/suspend"), None)
            .await
    }

    /// Stops machine `id` of `app` if it runs, then destroys it and frees its device.
    pub async fn destroy(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(Method::DELETE, &format!("/v1/apps/{app}/machines/{id}"), None).await
    }

    /// The end of machine `id`'s engine log, `query` being the request's query string (the
    /// agent checks it): the agent's status, content type and body, passed on as they are.
    pub async fn logs(&self, app: &str, id: &str, query: Option<&str>) -> Result<(StatusCode, Option<String>, Vec<u8>), ClientError> {
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        let url = format!("{}/v1/apps/{app}/machines/{id}/logs{query}", self.base);
        let unreachable = |source| ClientError::Unreachable { url: url.clone(), source };
        let response = self.http.get(&url).bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = response.status();
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = response.bytes().await.map_err(unreachable)?.to_vec();
        Ok((status, kind, body))
    }

    async fn call(&self, method: Method, path: &str, body: Option<&CreateMachine>) -> Result<Machine, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |source| ClientError::Unreachable { url: url.clone(), source };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClientError::Refused { url, status, body: text });
        }
        serde_json::from_str(&text).map_err(|source| ClientError::Answer { url, source })
    }
}
