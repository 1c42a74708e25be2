//! How an edge wakes, stops and suspends machines (`colo_edge::Machines`): through the agents of its own
//! process (`colo up`), or through the API of each machine's agent (`colo edge`). The edge does
//! not wait for an answer, so both act in a task and log what failed; a start that fails is
//! also told to the edge (`colo_edge::Refused`), which then wakes another machine or answers
//! its held requests with the reason.

use colo_agent::client::AgentClient;
use colo_agent::Agent;
use colo_control::auth::TokenFile;
use colo_edge::Refused;
use colo_state::StateStore;
use std::sync::Arc;

/// What the edge asks of a machine.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Start,
    Stop,
    Suspend,
}

/// The agents of this process: the one that has the machine acts.
pub struct AgentMachines(pub Vec<Arc<Agent>>);

/// Agents elsewhere: the machine's host record says where its agent listens, and the cluster
/// token lets the edge in.
pub struct RemoteMachines {
    pub state: Arc<dyn StateStore>,
    pub token: Arc<TokenFile>,
    /// Trusts the agents' CA when they speak TLS.
    pub http: reqwest::Client,
}

// === impl AgentMachines ===

impl AgentMachines {
    fn act(&self, machine_id: &str, verb: Verb, refused: Option<Refused>) {
        let (agents, id) = (self.0.clone(), machine_id.to_string());
        tokio::spawn(async move {
            for agent in agents {
                if agent.machine(&id).await.is_err() {
                    continue;
                }
                let done = match verb {
                    Verb::Start => agent.start(&id).await,
                    Verb::Stop => agent.stop(&id).await,
                    Verb::Suspend => agent.suspend(&id).await,
                };
                if let Err(e) = done {
                    tracing::warn!(machine = %id, error = %e, ?verb, "waking or stopping a machine");
                    if let Some(refused) = refused {
                        refused(e.to_string());
                    }
                }
                return;
            }
        });
    }
}

impl colo_edge::Machines for AgentMachines {
    fn start(&self, machine_id: &str, refused: Refused) {
        self.act(machine_id, Verb::Start, Some(refused));
    }

    fn stop(&self, machine_id: &str) {
        self.act(machine_id, Verb::Stop, None);
    }

    fn suspend(&self, machine_id: &str) {
        self.act(machine_id, Verb::Suspend, None);
    }
}

// === impl RemoteMachines ===

impl RemoteMachines {
    fn act(&self, machine_id: &str, verb: Verb, refused: Option<Refused>) {
        let (state, token, http, id) = (self.state.clone(), self.token.clone(), self.http.clone(), machine_id.to_string());
        tokio::spawn(async move {
            let machines = state.machines().await.unwrap_or_default();
            let Some(machine) = machines.iter().find(|m| m.id == id) else {
                return;
            };
            let hosts = state.hosts().await.unwrap_or_default();
            let Some(host) = hosts.iter().find(|h| h.name == machine.host) else {
                tracing::warn!(machine = %id, host = %machine.host, "no record of the machine's host");
                if let Some(refused) = refused {
                    refused(format!("no record of its host {}", machine.host));
                }
                return;
            };
            let agent = AgentClient::new(&host.addr, token.current(), http);
            let done = match verb {
                Verb::Start => agent.start(machine.app.as_str(), &id).await,
                Verb::Stop => agent.stop(machine.app.as_str(), &id).await,
                Verb::Suspend => agent.suspend(machine.app.as_str(), &id).await,
            };
            if let Err(e) = done {
                tracing::warn!(machine = %id, error = %e, ?verb, "agent refused or unreachable");
                if let Some(refused) = refused {
                    refused(e.reason());
                }
            }
        });
    }
}

impl colo_edge::Machines for RemoteMachines {
    fn start(&self, machine_id: &str, refused: Refused) {
        self.act(machine_id, Verb::Start, Some(refused));
    }

    fn stop(&self, machine_id: &str) {
        self.act(machine_id, Verb::Stop, None);
    }

    fn suspend(&self, machine_id: &str) {
        self.act(machine_id, Verb::Suspend, None);
    }
}
