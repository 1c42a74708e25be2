//! The host agent: finds the host's devices, leases whole ones to machines, hydrates their
//! models into the host cache, and runs and supervises one engine process per machine.
//! It never routes requests; it records machine state for the edges to read.

pub mod api;
pub mod client;
mod devices;
mod error;
pub mod facts;
mod forward;
mod landing;
pub mod lease;
mod manage;
mod metrics;
mod profile;
mod supervisor;

pub use colo_store::CacheEntry;
pub use devices::{declared_gpus, discover_devices};
pub use error::AgentError;
pub use manage::UpdateMachine;

use colo_core::{AppName, Device, Machine, MachineState};
use colo_state::StateStore;
use colo_store::{HostCache, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How the agent starts an engine: a program and the arguments before the per-machine flags.
#[derive(Clone, Debug)]
pub struct EngineCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Start colo's own engine while the model is still being pulled, feeding it how far each
    /// weight file has landed (`--landing`), rather than after the whole pull.
    pub load_while_pulling: bool,
}

/// What a new machine runs.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    pub app: AppName,
    pub model: AppName,
    pub revision: String,
    /// Catalogue GPU kind to lease; `None`: any free device.
    pub gpu_kind: Option<String>,
    /// Whole GPUs of this host the machine leases (1, or more for a tensor-parallel engine).
    pub gpus: u32,
    /// The app's own engine command (`{port}`, `{host}`, `{model_dir}` filled in); `None`: colo's engine.
    pub engine_cmd: Option<String>,
    /// The engine profile to run; `None`: colo's engine (or `engine_cmd`).
    pub engine: Option<colo_core::EngineSpec>,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This host's name, recorded on its machines.
    pub host: String,
    /// This host's region code.
    pub region: String,
    /// Where machine logs go: `<data_dir>/machines/<id>/engine.log`.
    pub data_dir: PathBuf,
    pub engine: EngineCommand,
    /// The longest an engine may take from spawn to a passing health check.
    pub start_timeout: Duration,
    /// Time between a machine being told to stop (edges route nothing more to it) and its
    /// engine being signalled, for requests in flight to finish.
    pub stop_grace: Duration,
    /// Time between health checks of a started engine.
    pub health_interval: Duration,
    /// Address engines listen on and machine records give edges (`127.0.0.1` when every edge
    /// runs on this host; the host's own address when edges elsewhere must reach its engines).
    pub engine_host: std::net::IpAddr,
    /// When set, engines listen on loopback and a forwarder on `engine_host` admits only
    /// connections that open with this machine key (`forward.rs`): edges of a multi-host colo.
    pub forward_key: Option<String>,
}

pub struct Agent {
    config: AgentConfig,
    state: Arc<dyn StateStore>,
    store: Store,
    cache: HostCache,
    devices: Vec<Device>,
    /// Names GPU kinds, so machines can ask for one.
    catalogue: colo_core::Catalogue,
    /// Desired-state channels of the supervisors that run, by machine id.
    supervisors: Mutex<HashMap<String, watch::Sender<MachineState>>>,
    /// Machine records the state store refused, by id, to write again.
    unsaved: Mutex<HashMap<String, Machine>>,
    /// Serialises device leasing so two creates never take the same device.
    lease_lock: tokio::sync::Mutex<()>,
    /// Where and how this host pulls models from its region's peers.
    peers: Mutex<PeerConfig>,
    /// When each pending start was asked for (ms since the epoch), by machine id: the start
    /// of the machine's cold-start clock.
    start_requested: Mutex<HashMap<String, u64>>,
    /// Leases on this host's machines (`manage.rs`).
    leases: Mutex<lease::Leases>,
    /// Metadata and cordon marks set through the API, by machine id (`manage.rs`).
    marks: Mutex<HashMap<String, manage::Marks>>,
    /// Held across each write of a machine record, and across the read and write of a change
    /// made through the API, so neither undoes the other.
    writing: tokio::sync::Mutex<()>,
}

/// The peers of this host's region that it reads cached models from.
#[derive(Clone, Debug, Default)]
pub struct PeerConfig {
    /// Base URLs of the peers' APIs (`http://10.0.0.2:7070`).
    pub urls: Vec<String>,
    /// Bearer token their APIs ask for.
    pub token: Option<String>,
    /// The client to reach them with (trusting their CA when they speak TLS).
    pub client: Option<reqwest::Client>,
    /// This host's own cache API as its peers reach it (its share of a pull they make at once).
    pub own_url: Option<String>,
}

pub(crate) use colo_core::unix_ms as now_ms;

// === impl Agent ===

impl Agent {
    pub fn new(config: AgentConfig, state: Arc<dyn StateStore>, store: Store, cache: HostCache, devices: Vec<Device>) -> Arc<Self> {
        Arc::new(Self {
            config,
            state,
            store,
            cache,
            devices,
            catalogue: colo_core::Catalogue::builtin(),
            supervisors: Mutex::new(HashMap::new()),
            lease_lock: Default::default(),
            unsaved: Mutex::default(),
            peers: Mutex::default(),
            start_requested: Mutex::default(),
            leases: Mutex::default(),
            marks: Mutex::default(),
            writing: Default::default(),
        })
    }

    /// Sets the peers this host reads cached models from before the origin.
    pub fn set_peers(&self, peers: PeerConfig) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    pub fn cache(&self) -> &HostCache {
        &self.cache
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn host(&self) -> &str {
        &self.config.host
    }

    /// Records a machine's state; a record the state store refused (it is unreachable) is kept
    /// and written again by the next heartbeat, so an outage never leaves a stale record.
    pub(crate) async fn save_machine(&self, machine: &Machine) -> Result<(), AgentError> {
        let marked = self.marked(machine);
        let machine = marked.as_ref().unwrap_or(machine);
        let result = {
            let _writing = self.writing.lock().await;
            self.state.put_machine(machine).await
        };
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => unsaved.remove(&machine.id),
            Err(_) => unsaved.insert(machine.id.clone(), machine.clone()),
        };
        Ok(result?)
    }

    /// Writes a machine record with its marks, between other writes.
    async fn put(&self, machine: &Machine) -> Result<(), AgentError> {
        let marked = self.marked(machine);
        let _writing = self.writing.lock().await;
        Ok(self.state.put_machine(marked.as_ref().unwrap_or(machine)).await?)
    }

    /// The last `lines` lines (at most 500) of machine `id`'s engine log, from the last 256 KiB of
    /// it; empty before its engine first started.
    pub async fn engine_log(&self, id: &str, lines: usize) -> Result<String, AgentError> {
        self.machine(id).await?;
        let path = self.config.data_dir.join("machines").join(id).join("engine.log");
        let lines = lines.clamp(1, 500);
        tokio::task::spawn_blocking(move || profile::last_lines(&path, lines, 256 * 1024))
            .await
            .map_err(|e| AgentError::Invalid {
                field: "logs",
                reason: e.to_string(),
            })
    }

    /// This host as its record in the shared state says it: the complete revisions in its cache
    /// (read off the disk), its devices, a heartbeat of now.
    pub async fn host_record(&self, addr: &str, lease: Duration) -> colo_core::HostRecord {
        let cache = self.cache.clone();
        let cached_models = tokio::task::spawn_blocking(move || cache.entries())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.complete)
            .map(|e| format!("{}@{}", e.name, e.revision))
            .collect();
        colo_core::HostRecord {
            name: self.config.host.clone(),
            region: self.config.region.clone(),
            addr: addr.to_string(),
            devices: self.devices.clone(),
            cached_models,
            heartbeat_ms: now_ms(),
            lease_ms: lease.as_millis() as u64,
            lost: false,
        }
    }

    /// Registers this host in the shared state and renews the record every third of `lease`,
    /// writing again any machine record an outage kept from the store. `addr` is the base URL
    /// of this agent's API. Runs until the agent is dropped.
    pub fn spawn_heartbeat(self: &Arc<Self>, addr: String, lease: Duration) {
        let agent = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(agent) = agent.upgrade() else { return };
                let record = agent.host_record(&addr, lease).await;
                if let Err(e) = agent.state.put_host(&record).await {
                    tracing::warn!(error = %e, "heartbeat");
                } else {
                    let unsaved: Vec<Machine> = agent.unsaved.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                    for machine in unsaved {
                        // The newest record of a machine wins: one saved since is not overwritten.
                        let _ = agent.save_machine(&machine).await;
                    }
                }
                drop(agent);
                tokio::time::sleep(lease / 3).await;
            }
        });
    }

    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// How this host pulls: tuned concurrency and range size, its peers first.
    pub fn hydrate_options(&self) -> colo_store::HydrateOptions {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        colo_store::HydrateOptions {
            peers: peers.urls,
            peer_token: peers.token,
            peer_client: peers.client,
            self_url: peers.own_url,
            ..Default::default()
        }
    }

    /// Pulls a model revision (the latest when `None`) into this host's cache ahead of traffic.
    pub async fn prefetch(&self, model: &str, revision: Option<&str>) -> Result<colo_core::HydrationReport, AgentError> {
        let manifest = match revision {
            Some(revision) => self.store.manifest_at(model, revision).await?,
            None => self.store.manifest(model).await?,
        };
        let pull = self
            .cache
            .pull(&self.store, &manifest, &self.hydrate_options(), colo_store::no_progress());
        Ok(pull.finish().await?)
    }

    /// Takes the time a start of `id` was asked for, if one was recorded.
    pub(crate) fn take_start_request(&self, id: &str) -> Option<u64> {
        self.start_requested.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
    }

    /// Picks up this host's machines after a restart: those meant to run are started again.
    pub async fn recover(self: &Arc<Self>) -> Result<(), AgentError> {
        for mut machine in self.machines().await? {
            if machine.state == MachineState::Destroyed {
                continue;
            }
            // No engine survives its agent (they die with it), so nothing is running now.
            machine.pid = None;
            machine.addr = None;
            machine.engine_addr = None;
            if machine.desired == MachineState::Started {
                self.spawn_supervisor(machine);
            } else if machine.state != MachineState::Stopped && machine.state != MachineState::Created {
                machine.state = MachineState::Stopped;
                machine.updated_at_ms = now_ms();
                self.put(&machine).await?;
            }
        }
        Ok(())
    }

    /// This host's machines.
    pub async fn machines(&self) -> Result<Vec<Machine>, AgentError> {
        let all = self.state.machines().await?;
        Ok(all.into_iter().filter(|m| m.host == self.config.host).collect())
    }

    pub async fn machine(&self, id: &str) -> Result<Machine, AgentError> {
        self.machines()
            .await?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| AgentError::NoSuchMachine(id.to_string()))
    }

    /// Devices no machine holds (destroyed machines hold none).
    pub async fn free_devices(&self) -> Result<usize, AgentError> {
        Ok(facts::free_devices(&self.devices, &self.machines().await?))
    }

    /// Kinds (catalogue names) of this host's GPUs, sorted, without repeats.
    pub fn gpu_kinds(&self) -> Vec<String> {
        facts::gpu_kinds(&self.catalogue, &self.devices)
    }

    /// The catalogue kind of a GPU device; `None` for CPU slots and unknown GPUs.
    pub fn device_kind(&self, device: &Device) -> Option<String> {
        facts::device_kind(&self.catalogue, device)
    }

    /// Refuses an engine profile whose program this host lacks, naming it and `--engine-bin`.
    pub(crate) fn check_engine(&self, engine: &colo_core::EngineSpec) -> Result<(), AgentError> {
        if engine.kind != colo_core::EngineKind::Colo && profile::find_program(engine.program()).is_none() {
            return Err(AgentError::EngineMissing {
                kind: engine.kind,
                program: engine.program().to_string(),
                host: self.config.host.clone(),
            });
        }
        Ok(())
    }

    /// Creates a machine on a free device (of the spec's GPU kind, when given) and starts it.
    pub async fn create_machine(self: &Arc<Self>, spec: &MachineSpec) -> Result<Machine, AgentError> {
        let (app, model, revision, gpu_kind) = (&spec.app, &spec.model, spec.revision.as_str(), spec.gpu_kind.as_deref());
        // The engine's program and the manifest must exist before a device is taken for them.
        if let (Some(engine), None) = (&spec.engine, &spec.engine_cmd) {
            self.check_engine(engine)?;
        }
        if let Some(reason) = colo_core::gpus_problem(spec.gpus, spec.engine.as_ref().map(|e| e.kind), spec.engine_cmd.is_some()) {
            return Err(AgentError::Invalid { field: "gpus", reason });
        }
        self.store.manifest_at(model.as_str(), revision).await?;
        let _lease = self.lease_lock.lock().await;
        let mut devices = self.free_devices_for(&self.machines().await?, gpu_kind, spec.gpus as usize, &[])?;
        let device = devices.remove(0);
        let id = format!("m-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let machine = Machine {
            gpu_kind: self.device_kind(&device),
            extra_devices: devices,
            engine_cmd: spec.engine_cmd.clone(),
            engine: spec.engine.clone(),
            updated_at_ms: now_ms(),
            ..Machine::new(
                id,
                app.clone(),
                model.clone(),
                revision.to_string(),
                device,
                self.config.host.clone(),
                self.config.region.clone(),
            )
        };
        self.start_requested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(machine.id.clone(), machine.updated_at_ms);
        self.state.put_machine(&machine).await?;
        self.spawn_supervisor(machine.clone());
        Ok(machine)
    }

    /// `n` devices of this host that no machine holds, of one GPU kind (`kind` when given):
    /// `preferred` (a machine's last devices, whose engine state a restart may find warm) when
    /// they are free, else the first free ones (`facts::pick_devices`). Called under
    /// `lease_lock`.
    fn free_devices_for(
        &self,
        machines: &[Machine],
        kind: Option<&str>,
        n: usize,
        preferred: &[Device],
    ) -> Result<Vec<Device>, AgentError> {
        facts::pick_devices(&self.catalogue, &self.devices, machines, kind, n, preferred).ok_or_else(|| AgentError::NoFreeDevice {
            host: self.config.host.clone(),
            kind: kind.unwrap_or("any").to_string(),
            wanted: n.max(1),
            total: self.devices.len(),
        })
    }

    /// Starts a machine. One that holds no device (stopped, or failed) leases one first, its
    /// last when free; with none free the start is refused (`NoFreeDevice`), and the machine
    /// stays as it was.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Machine, AgentError> {
        let machine = self.machine(id).await?;
        if machine.state == MachineState::Destroyed || machine.holds_device() {
            return self.set_desired(id, MachineState::Started).await;
        }
        let _lease = self.lease_lock.lock().await;
        let mut machine = self.machine(id).await?;
        if !machine.holds_device() {
            let kind = machine.gpu_kind.clone();
            let last: Vec<Device> = machine.devices().cloned().collect();
            let mut devices = self.free_devices_for(&self.machines().await?, kind.as_deref(), last.len(), &last)?;
            if devices != last {
                let to: Vec<String> = devices.iter().map(ToString::to_string).collect();
                tracing::info!(machine = %id, from = %machine.device_label(), to = %to.join("+"), "its last device is taken; starting on another");
            }
            machine.device = devices.remove(0);
            machine.extra_devices = devices;
            machine.desired = MachineState::Started;
            // Recorded before the lock is let go, so that no other start takes the same device.
            self.put(&machine).await?;
        }
        self.set_desired(id, MachineState::Started).await
    }

    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<Machine, AgentError> {
        self.set_desired(id, MachineState::Stopped).await
    }

    /// Suspends the machine's engine (it keeps its model and device, and wakes fast); a machine
    /// that does not run stays as it is.
    pub async fn suspend(self: &Arc<Self>, id: &str) -> Result<Machine, AgentError> {
        self.set_desired(id, MachineState::Suspended).await
    }

    /// Stops the machine if it runs, then marks it destroyed and frees its device.
    pub async fn destroy(self: &Arc<Self>, id: &str) -> Result<Machine, AgentError> {
        let machine = self.set_desired(id, MachineState::Destroyed).await?;
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).forget(id);
        Ok(machine)
    }

    async fn set_desired(self: &Arc<Self>, id: &str, desired: MachineState) -> Result<Machine, AgentError> {
        let mut machine = self.machine(id).await?;
        if machine.state == MachineState::Destroyed {
            return Err(AgentError::Destroyed(id.to_string()));
        }
        machine.desired = desired;
        if desired == MachineState::Started && machine.state != MachineState::Started {
            self.start_requested
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.to_string())
                .or_insert_with(now_ms);
        }
        let running = {
            let supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
            match supervisors.get(id) {
                Some(tx) => tx.send(desired).is_ok(),
                None => false,
            }
        };
        if running {
            // The supervisor records the state changes as it makes them.
            let _writing = self.writing.lock().await;
            let mut current = self.machine(id).await?;
            current.desired = desired;
            self.state.put_machine(&current).await?;
            return Ok(current);
        }
        match desired {
            MachineState::Started => {
                self.put(&machine).await?;
                self.spawn_supervisor(machine.clone());
            }
            MachineState::Destroyed | MachineState::Stopped => {
                machine.state = desired;
                machine.updated_at_ms = now_ms();
                self.put(&machine).await?;
            }
            _ => {}
        }
        Ok(machine)
    }

    /// Waits until the machine reaches `state`, fails, or `timeout` passes.
    pub async fn wait(&self, id: &str, state: MachineState, timeout: Duration) -> Result<Machine, AgentError> {
        let mut changes = self.state.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let machine = self.machine(id).await?;
            if machine.state == state {
                return Ok(machine);
            }
            if machine.state == MachineState::Failed || machine.state == MachineState::Destroyed {
                return Err(AgentError::WaitFailed {
                    id: id.to_string(),
                    wanted: state,
                    reached: machine.state,
                    error: machine.last_error,
                });
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Err(AgentError::WaitTimeout {
                    id: id.to_string(),
                    wanted: state,
                    current: machine.state,
                    secs: timeout.as_secs_f64(),
                });
            }
        }
    }

    fn spawn_supervisor(self: &Arc<Self>, machine: Machine) {
        let (tx, rx) = watch::channel(machine.desired);
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        if supervisors.get(&machine.id).is_some_and(|tx| !tx.is_closed()) {
            let _ = supervisors[&machine.id].send(machine.desired);
            return;
        }
        supervisors.insert(machine.id.clone(), tx);
        let agent = self.clone();
        tokio::spawn(supervisor::run(agent, machine, rx));
    }

    /// Ends machine `id`'s supervisor, unless its desired state was changed since the
    /// supervisor last read it (a start that came as it stopped): then it carries on. Decided
    /// under the supervisors' lock, which `set_desired` sends under, so no change is lost.
    pub(crate) fn retire(&self, id: &str, desired: &watch::Receiver<MachineState>) -> bool {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        if desired.has_changed().unwrap_or(false) {
            return false;
        }
        supervisors.remove(id);
        true
    }

    /// Stops every engine this agent runs (on shutdown).
    pub async fn shutdown(&self) {
        let senders: Vec<_> = self
            .supervisors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for tx in &senders {
            // `Stopping` tells a supervisor to stop its engine without changing the desired state.
            let _ = tx.send(MachineState::Stopping);
        }
        for tx in senders {
            let _ = tokio::time::timeout(Duration::from_secs(10), tx.closed()).await;
        }
    }
}
