//! The hosts control drives: agents in this process (`colo up`) or agents that registered in
//! the shared state and answer over HTTP (`colo control`). Reconciliation sees both the same
//! way through [`HostHandle`].

use crate::ControlError;
use async_trait::async_trait;
use colo_agent::{Agent, MachineSpec};
use colo_core::{Catalogue, Device, HostRecord, Machine, MachineState};
use colo_state::StateStore;
use std::sync::Arc;

/// One host, as reconciliation needs it.
#[async_trait]
pub trait HostHandle: Send + Sync {
    fn name(&self) -> &str;
    fn region(&self) -> &str;
    /// Catalogue kinds of the host's GPUs (empty for CPU slots).
    fn gpu_kinds(&self) -> Vec<String>;
    fn device_kind(&self, device: &Device) -> Option<String>;
    /// Every device the host may lease.
    fn devices(&self) -> Vec<Device>;
    /// The host's machines, destroyed ones included.
    async fn machines(&self) -> Result<Vec<Machine>, ControlError>;
    async fn free_devices(&self) -> Result<usize, ControlError>;
    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, ControlError>;
    async fn start(&self, id: &str) -> Result<(), ControlError>;
    async fn destroy(&self, id: &str) -> Result<(), ControlError>;
}

/// Where control finds its hosts.
pub enum Hosts {
    /// Agents running in this process.
    Local(Vec<Arc<Agent>>),
    /// Agents that registered in the shared state, reached over HTTP with the cluster token.
    Remote {
        state: Arc<dyn StateStore>,
        /// The cluster token, read again when its file changes (rotation).
        token: Arc<crate::auth::TokenFile>,
        /// The client agents are called with (trusting their CA when TLS is on).
        http: reqwest::Client,
    },
}

impl Hosts {
    /// The hosts that may take work now: every local agent, or every registered host whose
    /// lease holds and that control has not marked lost.
    pub async fn live(&self) -> Result<Vec<Arc<dyn HostHandle>>, ControlError> {
        match self {
            Hosts::Local(agents) => Ok(agents.iter().map(|a| Arc::new(a.clone()) as Arc<dyn HostHandle>).collect()),
            Hosts::Remote { state, token, http } => {
                let now = crate::now_ms();
                let mut hosts: Vec<HostRecord> = state.hosts().await?;
                hosts.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(hosts
                    .into_iter()
                    .filter(|h| !h.lost && !h.expired(now))
                    .map(|record| {
                        Arc::new(RemoteHost {
                            record,
                            state: state.clone(),
                            token: token.current(),
                            http: http.clone(),
                            catalogue: Catalogue::builtin(),
                        }) as Arc<dyn HostHandle>
                    })
                    .collect())
            }
        }
    }
}

#[async_trait]
impl HostHandle for Arc<Agent> {
    fn name(&self) -> &str {
        self.host()
    }

    fn region(&self) -> &str {
        Agent::region(self)
    }

    fn gpu_kinds(&self) -> Vec<String> {
        Agent::gpu_kinds(self)
    }

    fn device_kind(&self, device: &Device) -> Option<String> {
        Agent::device_kind(self, device)
    }

    fn devices(&self) -> Vec<Device> {
        Agent::devices(self).to_vec()
    }

    async fn machines(&self) -> Result<Vec<Machine>, ControlError> {
        Ok(Agent::machines(self).await?)
    }

    async fn free_devices(&self) -> Result<usize, ControlError> {
        Ok(Agent::free_devices(self).await?)
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, ControlError> {
        Ok(Agent::create_machine(self, spec).await?)
    }

    async fn start(&self, id: &str) -> Result<(), ControlError> {
        Agent::start(self, id).await?;
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), ControlError> {
        Agent::destroy(self, id).await?;
        Ok(())
    }
}

/// A host known from its record in the shared state; its agent's API does the work.
struct RemoteHost {
    record: HostRecord,
    state: Arc<dyn StateStore>,
    token: String,
    http: reqwest::Client,
    catalogue: Catalogue,
}

impl RemoteHost {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, ControlError> {
        let url = format!("{}{path}", self.record.addr.trim_end_matches('/'));
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let failed = |reason: String| ControlError::Host(format!("host {} at {url}: {reason}", self.record.name));
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(failed(format!("{status}: {text}")));
        }
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| failed(format!("answer is not JSON: {e}")))
    }

    async fn app_of(&self, id: &str) -> Result<String, ControlError> {
        let machines = self.machines().await?;
        machines
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.app.to_string())
            .ok_or_else(|| ControlError::Host(format!("host {} has no machine {id}", self.record.name)))
    }
}

#[async_trait]
impl HostHandle for RemoteHost {
    fn name(&self) -> &str {
        &self.record.name
    }

    fn region(&self) -> &str {
        &self.record.region
    }

    fn gpu_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.record.devices.iter().filter_map(|d| self.device_kind(d)).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    fn device_kind(&self, device: &Device) -> Option<String> {
        match device {
            Device::Gpu { name, memory_mib, .. } => self.catalogue.kind_of_device(name, *memory_mib).map(|k| k.kind.clone()),
            Device::Cpu { .. } => None,
        }
    }

    fn devices(&self) -> Vec<Device> {
        self.record.devices.clone()
    }

    async fn machines(&self) -> Result<Vec<Machine>, ControlError> {
        let all = self.state.machines().await?;
        Ok(all.into_iter().filter(|m| m.host == self.record.name).collect())
    }

    async fn free_devices(&self) -> Result<usize, ControlError> {
        let taken = self.machines().await?.iter().filter(|m| m.state != MachineState::Destroyed).count();
        Ok(self.record.devices.len().saturating_sub(taken))
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, ControlError> {
        let body = serde_json::json!({
            "model": spec.model.as_str(),
            "revision": spec.revision,
            "gpu": spec.gpu_kind,
            "engine_cmd": spec.engine_cmd,
        });
        let answer = self
            .call(reqwest::Method::POST, &format!("/v1/apps/{}/machines", spec.app), Some(body))
            .await?;
        serde_json::from_value(answer).map_err(|e| ControlError::Host(format!("host {}: machine record: {e}", self.record.name)))
    }

    async fn start(&self, id: &str) -> Result<(), ControlError> {
        let app = self.app_of(id).await?;
        self.call(reqwest::Method::POST, &format!("/v1/apps/{app}/machines/{id}/start"), None)
            .await?;
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), ControlError> {
        let app = self.app_of(id).await?;
        self.call(reqwest::Method::DELETE, &format!("/v1/apps/{app}/machines/{id}"), None)
            .await?;
        Ok(())
    }
}
