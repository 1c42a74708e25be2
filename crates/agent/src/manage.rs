//! The machine verbs beyond start and stop, in the Fly Machines API's shape: update a
//! machine's configuration, restart it, cordon it out of routing, its metadata, and leases that
//! keep two deployers from changing one machine at once.

use crate::lease::{Lease, LeaseError};
use crate::{now_ms, Agent, AgentError};
use colo_core::{Machine, MachineState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an update or restart waits for the machine to stop before it gives up.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Marks set through the API (metadata, cordon) that every record of the machine carries:
/// a supervisor's copy of its machine predates them, so each write takes them from here.
#[derive(Clone, Debug, Default)]
pub(crate) struct Marks {
    pub metadata: BTreeMap<String, String>,
    pub cordoned: bool,
}

/// The body of `POST /v1/apps/{app}/machines/{id}`: what to change; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    /// Another revision of the machine's model (it must be in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Another engine profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<colo_core::EngineSpec>,
    /// Another engine command (`{port}`, `{model_dir}`); an empty string removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_cmd: Option<String>,
    /// The whole metadata, replacing what the machine had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl UpdateMachine {
    /// Whether the change reaches the engine, so a running machine must restart for it.
    fn restarts(&self) -> bool {
        self.revision.is_some() || self.engine.is_some() || self.engine_cmd.is_some()
    }
}

// === impl Agent ===

impl Agent {
    /// `machine` with the marks set through the API, as every record of it must be written.
    pub(crate) fn marked(&self, machine: &Machine) -> Option<Machine> {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(&machine.id).map(|m| Machine {
            metadata: m.metadata.clone(),
            cordoned: m.cordoned,
            ..machine.clone()
        })
    }

    /// Machine `id`, unless it is destroyed (an error then).
    async fn not_destroyed(&self, id: &str) -> Result<Machine, AgentError> {
        let machine = self.machine(id).await?;
        if machine.state == MachineState::Destroyed {
            return Err(AgentError::Destroyed(id.to_string()));
        }
        Ok(machine)
    }

    /// Changes the marks of machine `id` and records them at once.
    async fn mark(&self, id: &str, change: impl FnOnce(&mut Marks) -> Result<(), AgentError>) -> Result<Machine, AgentError> {
        let _writing = self.writing.lock().await;
        let mut machine = self.not_destroyed(id).await?;
        let mut marks = {
            let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            marks.get(id).cloned().unwrap_or(Marks {
                metadata: machine.metadata.clone(),
                cordoned: machine.cordoned,
            })
        };
        change(&mut marks)?;
        machine.metadata = marks.metadata.clone();
        machine.cordoned = marks.cordoned;
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), marks);
        self.state.put_machine(&machine).await?;
        Ok(machine)
    }

    /// Takes machine `id` out of routing (`true`) or puts it back: edges send a cordoned
    /// machine nothing, and neither wake nor stop it.
    pub async fn cordon(&self, id: &str, cordoned: bool) -> Result<Machine, AgentError> {
        self.mark(id, |marks| {
            marks.cordoned = cordoned;
            Ok(())
        })
        .await
    }

    /// Sets one metadata key of machine `id`.
    pub async fn set_metadata(&self, id: &str, key: &str, value: &str) -> Result<Machine, AgentError> {
        colo_core::check_metadata(key, value).map_err(|reason| AgentError::Invalid { field: "metadata", reason })?;
        self.mark(id, |marks| {
            if !marks.metadata.contains_key(key) && marks.metadata.len() >= colo_core::METADATA_MAX_KEYS {
                return Err(AgentError::Invalid {
                    field: "metadata",
                    reason: format!("a machine holds at most {} keys", colo_core::METADATA_MAX_KEYS),
                });
            }
            marks.metadata.insert(key.to_string(), value.to_string());
            Ok(())
        })
        .await
    }

    /// Removes one metadata key of machine `id`; a key it does not have is an error.
    pub async fn remove_metadata(&self, id: &str, key: &str) -> Result<Machine, AgentError> {
        self.mark(id, |marks| match marks.metadata.remove(key) {
            Some(_) => Ok(()),
            None => Err(AgentError::NoMetadataKey {
                id: id.to_string(),
                key: key.to_string(),
            }),
        })
        .await
    }

    /// Applies `update` to machine `id`: a running machine is stopped, changed and started
    /// again; a stopped one is only changed.
    pub async fn update(self: &Arc<Self>, id: &str, update: UpdateMachine) -> Result<Machine, AgentError> {
        let machine = self.not_destroyed(id).await?;
        if let Some(metadata) = &update.metadata {
            if metadata.len() > colo_core::METADATA_MAX_KEYS {
                return Err(AgentError::Invalid {
                    field: "metadata",
                    reason: format!("{} keys; a machine holds at most {}", metadata.len(), colo_core::METADATA_MAX_KEYS),
                });
            }
            for (key, value) in metadata {
                colo_core::check_metadata(key, value).map_err(|reason| AgentError::Invalid { field: "metadata", reason })?;
            }
        }
        if let Some(revision) = &update.revision {
            self.store.manifest_at(machine.model.as_str(), revision).await?;
        }
        if let Some(engine) = &update.engine {
            self.check_engine(engine)?;
        }
        let running = machine.desired == MachineState::Started && update.restarts();
        if running {
            self.stop(id).await?;
            self.wait(id, MachineState::Stopped, STOP_WAIT).await?;
        }
        {
            let _writing = self.writing.lock().await;
            let mut machine = self.machine(id).await?;
            if let Some(revision) = update.revision {
                machine.revision = revision;
            }
            if let Some(engine) = update.engine {
                machine.engine = Some(engine);
            }
            if let Some(cmd) = update.engine_cmd {
                machine.engine_cmd = Some(cmd).filter(|c| !c.is_empty());
            }
            if let Some(metadata) = update.metadata {
                let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
                let cordoned = marks.get(id).map_or(machine.cordoned, |m| m.cordoned);
                marks.insert(
                    id.to_string(),
                    Marks {
                        metadata: metadata.clone(),
                        cordoned,
                    },
                );
                machine.metadata = metadata;
            }
            machine.updated_at_ms = now_ms();
            self.state.put_machine(&machine).await?;
        }
        if running {
            return self.start(id).await;
        }
        self.machine(id).await
    }

    /// Stops machine `id` (its requests in flight get the stop grace) and starts it again.
    pub async fn restart(self: &Arc<Self>, id: &str) -> Result<Machine, AgentError> {
        let machine = self.not_destroyed(id).await?;
        if machine.state != MachineState::Stopped {
            self.stop(id).await?;
            self.wait(id, MachineState::Stopped, STOP_WAIT).await?;
        }
        self.start(id).await
    }

    /// The lease that holds on machine `id` now.
    pub async fn lease(&self, id: &str) -> Result<Lease, AgentError> {
        self.machine(id).await?;
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(id, now_ms())
            .cloned()
            .ok_or_else(|| AgentError::Lease(LeaseError::NoLease { id: id.to_string() }))
    }

    /// Takes or (with its nonce) extends the lease on machine `id`.
    pub async fn acquire_lease(
        &self,
        id: &str,
        ttl: u64,
        nonce: Option<&str>,
        owner: &str,
        description: &str,
    ) -> Result<Lease, AgentError> {
        self.not_destroyed(id).await?;
        let new_nonce = format!("{:032x}", rand::random::<u128>());
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let ask = crate::lease::Ask {
            ttl,
            nonce,
            owner,
            description,
        };
        Ok(leases.acquire(id, ask, now_ms(), new_nonce)?)
    }

    /// Gives the lease on machine `id` back; only its nonce can.
    pub async fn release_lease(&self, id: &str, nonce: Option<&str>) -> Result<(), AgentError> {
        self.machine(id).await?;
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        Ok(leases.release(id, nonce, now_ms())?)
    }

    /// Whether a change to machine `id` sent with `nonce` may go ahead under its lease.
    pub fn check_lease(&self, id: &str, nonce: Option<&str>) -> Result<(), AgentError> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        Ok(leases.check(id, nonce, now_ms())?)
    }
}
