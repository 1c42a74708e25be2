//! Carrying out reconciliation: control reads the live hosts' machines and the app's wants
//! (per-region counts, its demand's placement, or a count anywhere), asks
//! `colo_policy::reconcile::plan` for the steps, and does them in order: destroying, starting,
//! creating on the host `colo_policy::reconcile::spread` puts first, and for a replacement
//! waiting until the new machine is healthy before destroying the old one.

use crate::error::NotHealthy;
use crate::placement::Shape;
use crate::{Control, ControlError, HostHandle};
use colo_agent::MachineSpec;
use colo_core::{App, Machine, MachineState};
use colo_policy::reconcile::{self, Held, MachineRef, Room, Slot, Step, Want};
use std::sync::Arc;

// === impl Control ===

impl Control {
    /// Brings the app's machines in line with its record, on the hosts that are live, as
    /// `colo_policy::reconcile::plan` decides: surplus machines are destroyed, stopped ones
    /// started, missing ones created. With per-region counts each region is reconciled on its
    /// own; with a demand, each host and GPU kind the planner's placement names (placed anew on
    /// every pass, so a lost host's machines go elsewhere); with neither, machines are spread
    /// over the hosts. Machines of another revision, model, engine or GPU kind are replaced one
    /// at a time: a new machine must be started and healthy before an old one is destroyed, so
    /// the old version keeps serving; a new machine that fails stops the rollout with an error
    /// (and is destroyed), leaving the old ones in place.
    pub async fn reconcile(&self, app: &App) -> Result<(), ControlError> {
        let _one_at_a_time = self.reconciling.lock().await;
        let hosts = self.hosts.live().await?;
        let machines = Self::machines_on(&hosts).await?;
        // Every machine was read from one of `hosts`, so its host is among them.
        let kinds: Vec<Option<String>> = machines
            .iter()
            .map(|m| Self::host_of(&hosts, &m.id, &m.host).ok().and_then(|h| h.device_kind(&m.device)))
            .collect();
        let held: Vec<Held> = machines
            .iter()
            .zip(&kinds)
            .map(|(machine, gpu)| Held {
                machine,
                gpu: gpu.as_deref(),
            })
            .collect();
        let wants = self.wanted(app, &hosts).await?;
        // Machines this pass made: the state this control reads may not show them yet when
        // another process wrote them.
        let mut made: Vec<Machine> = Vec::new();
        for step in reconcile::plan(app, &wants, &held) {
            match step {
                Step::Destroy(m) => {
                    Self::host_of(&hosts, &m.id, &m.host)?.destroy(&m.id).await?;
                }
                Step::Start(m) => Self::host_of(&hosts, &m.id, &m.host)?.start(&m.id).await?,
                Step::Create(slot) => {
                    let new = self.create_in(&hosts, app, &slot, &made).await?;
                    made.push(new);
                }
                Step::Replace { slot, old } => {
                    let new = self.create_in(&hosts, app, &slot, &made).await?;
                    made.push(new.clone());
                    self.replace(&hosts, app, &new, &old).await?;
                }
            }
        }
        Ok(())
    }

    /// Destroys `old` once `new` is started and healthy; destroys `new` instead, and stops the
    /// rollout, when it is not.
    async fn replace(&self, hosts: &[Arc<dyn HostHandle>], app: &App, new: &Machine, old: &MachineRef) -> Result<(), ControlError> {
        if let Err(reason) = self.wait_healthy(new).await {
            if let Ok(host) = Self::host_of(hosts, &new.id, &new.host) {
                // The rollout's error says what went wrong; a failed clean-up is for the next
                // pass, which sees the machine as surplus.
                let _ = host.destroy(&new.id).await;
            }
            return Err(ControlError::Rollout {
                app: app.name.to_string(),
                revision: app.revision.clone(),
                reason,
            });
        }
        Self::host_of(hosts, &old.id, &old.host)?.destroy(&old.id).await
    }

    /// Where reconciliation wants the app's machines: per-region counts, the placement of its
    /// demand on the live `hosts`, or a count anywhere. Demand the placement cannot meet is
    /// logged when it changes; a placement that meets none is an error, so that a pass never
    /// destroys the machines an app has for want of somewhere better.
    async fn wanted(&self, app: &App, hosts: &[Arc<dyn HostHandle>]) -> Result<Vec<Want>, ControlError> {
        if !app.regions.is_empty() {
            return Ok(Want::per_region(&app.regions));
        }
        let Some(demand) = &app.demand else {
            return Ok(Want::anywhere(app.machines as usize));
        };
        let kind = app.gpu.as_ref().map(|g| g.kind.as_str());
        let placed = self
            .place(
                &app.name,
                app.model.as_str(),
                &app.revision,
                demand,
                Shape {
                    gpu: kind,
                    gpus: app.gpus_per_machine,
                },
                hosts,
            )
            .await;
        let unmet: Vec<String> = match &placed {
            Ok(placed) => placed
                .unmet
                .iter()
                .map(|u| format!("{} {:.2} req/s: {}", u.region, u.requests_per_s, u.reason))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        let mut last = self.unmet.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&app.name) != Some(&unmet) {
            if !unmet.is_empty() {
                tracing::warn!(app = %app.name, ?unmet, "demand the live hosts cannot meet");
            }
            last.insert(app.name.clone(), unmet);
        }
        drop(last);
        Ok(Want::placed(&placed?.machines))
    }

    /// Waits until `machine` is started and passing health checks, or says why it is not.
    async fn wait_healthy(&self, machine: &Machine) -> Result<(), NotHealthy> {
        let deadline = tokio::time::Instant::now() + self.rollout_timeout;
        let mut changes = self.state.changes();
        loop {
            let now = self.state.machines().await?;
            match now.iter().find(|m| m.id == machine.id) {
                Some(m) if m.state == MachineState::Started && m.healthy => return Ok(()),
                Some(m) if m.state == MachineState::Failed => {
                    return Err(NotHealthy::Failed {
                        machine: m.id.clone(),
                        error: m.last_error.clone(),
                    })
                }
                Some(m) if m.state == MachineState::Destroyed => return Err(NotHealthy::Destroyed { machine: m.id.clone() }),
                // Another process wrote the record; this copy of the state may not have it yet.
                None | Some(_) => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NotHealthy::Timeout { machine: machine.id.clone(), timeout: self.rollout_timeout });
                }
            }
        }
    }

    /// Creates one machine of `app` in `slot` (a region, a host, a GPU kind; anywhere when it
    /// names none) on the first host in `colo_policy::reconcile::spread`'s order that takes
    /// it: a host with no device free is not asked, and the next host is tried when one has
    /// no device of the kind free.
    ///
    /// `made` are machines this pass already created: the state this control reads may not
    /// show them yet when another process wrote them.
    async fn create_in(&self, hosts: &[Arc<dyn HostHandle>], app: &App, slot: &Slot, made: &[Machine]) -> Result<Machine, ControlError> {
        let mut machines = Self::machines_on(hosts).await?;
        let unseen: Vec<Machine> = made
            .iter()
            .filter(|m| machines.iter().all(|known| known.id != m.id))
            .cloned()
            .collect();
        machines.extend(unseen.iter().cloned());
        let allowed: Vec<&Arc<dyn HostHandle>> = hosts.iter().filter(|h| slot.allows(h.name(), h.region())).collect();
        let mut rooms = Vec::with_capacity(allowed.len());
        for host in &allowed {
            let app_machines = machines
                .iter()
                .filter(|m| m.host == host.name() && m.app == app.name && m.state != MachineState::Destroyed)
                .count();
            // Devices taken by machines made this pass that the host's record does not show yet;
            // a machine of the app takes `gpus_per_machine` of what is left.
            let taken: usize = unseen.iter().filter(|m| m.host == host.name()).map(|m| m.devices().count()).sum();
            let free_devices = host.free_devices().await?.saturating_sub(taken) / app.gpus_per_machine.max(1) as usize;
            rooms.push(Room {
                host: host.name(),
                app_machines,
                free_devices,
            });
        }
        let spec = MachineSpec {
            app: app.name.clone(),
            model: app.model.clone(),
            revision: app.revision.clone(),
            gpu_kind: slot.gpu.clone().or_else(|| app.gpu.as_ref().map(|g| g.kind.clone())),
            gpus: app.gpus_per_machine.max(1),
            engine_cmd: app.engine_cmd.clone(),
            engine: app.engine.clone(),
        };
        let mut last = None;
        for i in reconcile::spread(&rooms) {
            let host = allowed[i];
            if rooms[i].free_devices == 0 {
                last = Some(ControlError::HostFull {
                    host: host.name().to_string(),
                });
                continue;
            }
            match host.create_machine(&spec).await {
                Ok(machine) => return Ok(machine),
                Err(e @ ControlError::Agent(colo_agent::AgentError::NoFreeDevice { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| match &slot.host {
            Some(name) => ControlError::HostGone { host: name.clone() },
            None => ControlError::invalid(
                "regions",
                format!("no live host in region {:?}", slot.region.as_deref().unwrap_or("any")),
            ),
        }))
    }

    /// Reconciles every app, logging (not failing on) an app that cannot be brought in line.
    pub async fn reconcile_all(&self) {
        let apps = match self.state.apps().await {
            Ok(apps) => apps,
            Err(e) => return tracing::warn!(error = %e, "reading apps to reconcile"),
        };
        for app in apps {
            if let Err(e) = self.reconcile(&app).await {
                tracing::warn!(app = %app.name, error = %e, "reconciling");
            }
        }
    }
}
