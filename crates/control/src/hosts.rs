//! The hosts control drives: agents in this process (`colo up`) or agents that registered in
//! the shared state and answer over HTTP (`colo control`). Reconciliation sees both the same
//! way through [`HostHandle`].

use crate::ControlError;
use async_trait::async_trait;
use colo_agent::api::CreateMachine;
use colo_agent::client::{AgentClient, ClientError};
use colo_agent::{facts, Agent, MachineSpec};
use colo_core::{Catalogue, Device, HostRecord, Machine};
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
        /// Names the hosts' GPUs by kind; built once, not per host per pass.
        catalogue: Arc<Catalogue>,
    },
}

// === impl Hosts ===

impl Hosts {
    /// The agents registered in `state`, reached over `http` with the cluster token.
    pub fn remote(state: Arc<dyn StateStore>, token: Arc<crate::auth::TokenFile>, http: reqwest::Client) -> Self {
        Hosts::Remote {
            state,
            token,
            http,
            catalogue: Arc::new(Catalogue::builtin()),
        }
    }

    /// The hosts that may take work now: every local agent, or every registered host whose
    /// lease holds and that control has not marked lost.
    pub async fn live(&self) -> Result<Vec<Arc<dyn HostHandle>>, ControlError> {
        match self {
            Hosts::Local(agents) => Ok(agents.iter().map(|a| Arc::new(a.clone()) as Arc<dyn HostHandle>).collect()),
            Hosts::Remote {
                state,
                token,
                http,
                catalogue,
            } => {
                let now = crate::now_ms();
                let mut hosts: Vec<HostRecord> = state.hosts().await?;
                hosts.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(hosts
                    .into_iter()
                    .filter(|h| h.live(now))
                    .map(|record| {
                        Arc::new(RemoteHost {
                            client: AgentClient::new(&record.addr, token.current(), http.clone()),
                            record,
                            state: state.clone(),
                            catalogue: catalogue.clone(),
                        }) as Arc<dyn HostHandle>
                    })
                    .collect())
            }
        }
    }
}

impl Hosts {
    /// The agent of host `name`, registered in the state: for calls the host handles do not
    /// make (an engine's log). `None` for agents in this process, which serve their own API.
    pub async fn agent_of(&self, name: &str) -> Result<Option<AgentClient>, ControlError> {
        let Hosts::Remote { state, token, http, .. } = self else {
            return Ok(None);
        };
        let hosts = state.hosts().await?;
        let Some(record) = hosts.into_iter().find(|h| h.name == name) else {
            return Err(ControlError::HostGone { host: name.to_string() });
        };
        Ok(Some(AgentClient::new(&record.addr, token.current(), http.clone())))
    }
}

// === impl HostHandle for Arc<Agent> ===

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
    client: AgentClient,
    catalogue: Arc<Catalogue>,
}

// === impl RemoteHost ===

impl RemoteHost {
    /// The app of machine `id`, which the agent's API paths name.
    async fn app_of(&self, id: &str) -> Result<String, ControlError> {
        let machines = self.machines().await?;
        machines
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.app.to_string())
            .ok_or_else(|| ControlError::NoSuchMachine {
                host: self.record.name.clone(),
                machine: id.to_string(),
            })
    }

    fn failed(&self, source: ClientError) -> ControlError {
        ControlError::AgentCall {
            host: self.record.name.clone(),
            source,
        }
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
        facts::gpu_kinds(&self.catalogue, &self.record.devices)
    }

    fn device_kind(&self, device: &Device) -> Option<String> {
        facts::device_kind(&self.catalogue, device)
    }

    fn devices(&self) -> Vec<Device> {
        self.record.devices.clone()
    }

    async fn machines(&self) -> Result<Vec<Machine>, ControlError> {
        let all = self.state.machines().await?;
        Ok(all.into_iter().filter(|m| m.host == self.record.name).collect())
    }

    async fn free_devices(&self) -> Result<usize, ControlError> {
        Ok(facts::free_devices(&self.record.devices, &self.machines().await?))
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, ControlError> {
        let request = CreateMachine::from(spec);
        self.client.create(spec.app.as_str(), &request).await.map_err(|e| self.failed(e))
    }

    async fn start(&self, id: &str) -> Result<(), ControlError> {
        let app = self.app_of(id).await?;
        self.client.start(&app, id).await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), ControlError> {
        let app = self.app_of(id).await?;
        self.client.destroy(&app, id).await.map_err(|e| self.failed(e))?;
        Ok(())
    }
}
