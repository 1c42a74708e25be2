//! Control: apps and deployments. A deploy records the app and its pinned model revision;
//! reconciliation then asks agents for the machines the app needs. Control never proxies
//! traffic.

pub mod api;
pub mod auth;

use colo_agent::{Agent, MachineSpec};
use colo_core::{ApiKey, App, AppName, Catalogue, GpuChoice, Machine, MachineState};
use colo_model::{FactsSource, Manifest, ModelFacts};
use colo_policy::{recommend, PlanRequest};
use colo_state::StateStore;
use colo_store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("app {0:?} not found")]
    NoSuchApp(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] colo_store::StoreError),
    #[error(transparent)]
    State(#[from] colo_state::StateError),
    #[error(transparent)]
    Agent(#[from] colo_agent::AgentError),
}

/// What a deploy may set besides the model and machine count.
#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// GPU kind (`l40s`); the planner chooses among the host's kinds when absent.
    pub gpu: Option<String>,
    /// Requests in flight per machine past which edges prefer other machines.
    pub soft_limit: Option<u32>,
    /// Requests in flight per machine at which edges send it no more.
    pub hard_limit: Option<u32>,
    /// Idle seconds after which edges stop a machine (woken again by the next request).
    pub autostop_secs: Option<u64>,
    /// Machines kept started in each region even when idle.
    pub min_running: u32,
    /// Machines wanted per region code; empty: spread over every host.
    pub regions: BTreeMap<String, u32>,
    /// The app's own engine command (`{port}`, `{model_dir}`), instead of colo's engine.
    pub engine_cmd: Option<String>,
}

/// Machines per app at most, to keep a typo from leasing a whole fleet.
pub const MAX_MACHINES_PER_APP: u32 = 64;

pub struct Control {
    state: Arc<dyn StateStore>,
    store: Store,
    /// Every host's agent, in the order hosts were declared.
    agents: Vec<Arc<Agent>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// === impl Control ===

impl Control {
    pub fn new(state: Arc<dyn StateStore>, store: Store, agents: Vec<Arc<Agent>>) -> Arc<Self> {
        Arc::new(Self { state, store, agents })
    }

    /// The agent of the host that runs `machine`.
    fn agent_of(&self, machine: &Machine) -> Result<&Arc<Agent>, ControlError> {
        self.agents
            .iter()
            .find(|a| a.host() == machine.host)
            .ok_or_else(|| ControlError::Invalid {
                field: "host",
                reason: format!(
                    "machine {} runs on host {:?}, which control does not drive",
                    machine.id, machine.host
                ),
            })
    }

    /// Every machine on the hosts control drives.
    async fn all_machines(&self) -> Result<Vec<Machine>, ControlError> {
        let mut all = Vec::new();
        for agent in &self.agents {
            all.extend(agent.machines().await?);
        }
        Ok(all)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records `app` serving the latest revision of `model` on `machines` machines, then
    /// reconciles. The GPU kind is `gpu` when given, else the planner's recommendation among
    /// the kinds this host has; a host without GPUs runs machines on CPU slots. Returns the app
    /// as recorded.
    pub async fn deploy(&self, app: &str, model: &str, machines: u32, gpu: Option<&str>) -> Result<App, ControlError> {
        let options = DeployOptions {
            gpu: gpu.map(String::from),
            ..Default::default()
        };
        self.deploy_with(app, model, machines, &options).await
    }

    /// `deploy`, with the app's own routing limits and autostop.
    pub async fn deploy_with(&self, app: &str, model: &str, machines: u32, options: &DeployOptions) -> Result<App, ControlError> {
        let (gpu, soft_limit, hard_limit) = (options.gpu.as_deref(), options.soft_limit, options.hard_limit);
        if options.autostop_secs == Some(0) {
            return Err(ControlError::Invalid {
                field: "autostop",
                reason: "must be at least 1 second when given".into(),
            });
        }
        if soft_limit == Some(0) || hard_limit == Some(0) || matches!((soft_limit, hard_limit), (Some(s), Some(h)) if h < s) {
            let reason = format!("soft limit {soft_limit:?} and hard limit {hard_limit:?}: both at least 1, hard at least soft");
            return Err(ControlError::Invalid { field: "limits", reason });
        }
        let name = AppName::new(app).map_err(|e| ControlError::Invalid {
            field: "app",
            reason: e.to_string(),
        })?;
        let model = AppName::new(model).map_err(|e| ControlError::Invalid {
            field: "model",
            reason: e.to_string(),
        })?;
        if !(1..=MAX_MACHINES_PER_APP).contains(&machines) {
            return Err(ControlError::Invalid {
                field: "machines",
                reason: format!("{machines} is outside 1 to {MAX_MACHINES_PER_APP}"),
            });
        }
        let known: Vec<&str> = self.agents.iter().map(|a| a.region()).collect();
        for (region, count) in &options.regions {
            if !known.contains(&region.as_str()) {
                let reason = format!("no host in region {region:?} (hosts are in: {})", known.join(", "));
                return Err(ControlError::Invalid { field: "regions", reason });
            }
            if *count == 0 {
                let reason = format!("{region}=0: a listed region needs at least one machine");
                return Err(ControlError::Invalid { field: "regions", reason });
            }
        }
        let machines = match options.regions.values().sum::<u32>() {
            0 => machines,
            total if total <= MAX_MACHINES_PER_APP => total,
            total => {
                let reason = format!("{total} machines in all is more than {MAX_MACHINES_PER_APP}");
                return Err(ControlError::Invalid { field: "regions", reason });
            }
        };
        // The minimum holds per region, so it may not exceed the smallest region's count.
        let smallest = options.regions.values().copied().min().unwrap_or(machines);
        if options.min_running > smallest {
            let reason = format!(
                "{} is more than the {smallest} machines the app has in a region",
                options.min_running
            );
            return Err(ControlError::Invalid {
                field: "min_running",
                reason,
            });
        }
        if options.engine_cmd.as_deref().is_some_and(|c| !c.contains("{port}")) {
            let reason = "the command must contain {port}, where the engine is told to listen".to_string();
            return Err(ControlError::Invalid {
                field: "engine_cmd",
                reason,
            });
        }
        let manifest = self.store.manifest(model.as_str()).await?;
        let gpu = self.choose_gpu(&manifest, gpu).await?;
        let app = App {
            name,
            model,
            revision: manifest.revision,
            machines,
            deployed_at_ms: now_ms(),
            gpu,
            soft_limit,
            hard_limit,
            keys: Vec::new(),
            autostop_secs: options.autostop_secs,
            min_running: options.min_running,
            regions: options.regions.clone(),
            engine_cmd: options.engine_cmd.clone(),
        };
        // A redeploy keeps the app's keys.
        let app = match self.state.app(&app.name).await? {
            Some(previous) => App {
                keys: previous.keys,
                ..app
            },
            None => app,
        };
        self.state.put_app(&app).await?;
        self.reconcile(&app).await?;
        Ok(app)
    }

    /// The GPU kind for a deploy: checked against the host's GPUs when named, else the
    /// planner's choice among them. `None` when the host has no GPU (CPU slots), or when the
    /// planner cannot read the model and no kind was named (any free device).
    async fn choose_gpu(&self, manifest: &Manifest, named: Option<&str>) -> Result<Option<GpuChoice>, ControlError> {
        let invalid = |reason: String| ControlError::Invalid { field: "gpu", reason };
        let catalogue = Catalogue::builtin();
        let mut host_kinds: Vec<String> = self.agents.iter().flat_map(|a| a.gpu_kinds()).collect();
        host_kinds.sort();
        host_kinds.dedup();
        if let Some(kind) = named {
            if catalogue.kinds.iter().all(|k| k.kind != kind) {
                let known: Vec<&str> = catalogue.kinds.iter().map(|k| k.kind.as_str()).collect();
                return Err(invalid(format!("{kind:?} is not a GPU kind colo knows ({})", known.join(", "))));
            }
            if !host_kinds.iter().any(|k| k == kind) {
                let offered = if host_kinds.is_empty() {
                    "no GPU, only CPU slots".to_string()
                } else {
                    host_kinds.join(", ")
                };
                return Err(invalid(format!("no host has a GPU of kind {kind} (they have {offered})")));
            }
        }
        if host_kinds.is_empty() {
            return Ok(None);
        }
        let facts = match self.model_facts(manifest).await {
            Ok(facts) => facts,
            Err(reason) if named.is_none() => {
                tracing::warn!(model = %manifest.name, %reason, "planner cannot read the model; any free device will do");
                return Ok(None);
            }
            Err(reason) => return Err(invalid(format!("the planner cannot read the model: {reason}"))),
        };
        // One machine leases one whole GPU, so the planner considers single cards.
        let request = PlanRequest {
            gpus: named.map(|k| vec![k.to_string()]).unwrap_or_default(),
            n_gpus: vec![1],
            ..Default::default()
        };
        let choice = recommend(&facts, &catalogue, &request, &host_kinds).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(GpuChoice {
            kind: choice.gpu,
            quant: choice.quant.as_str().to_string(),
            why: choice.why,
        }))
    }

    /// The planner's facts for a pushed model: its config.json with the manifest's exact tensor sizes.
    async fn model_facts(&self, manifest: &Manifest) -> Result<ModelFacts, String> {
        let path = Store::file_path(&manifest.name, &manifest.revision, "config.json");
        let config = self.store.objects().get(&path).await.map_err(|e| format!("{path}: {e}"))?;
        let bytes = config.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        let headers: Vec<_> = manifest.files.iter().filter_map(|f| f.safetensors.clone()).collect();
        let facts = ModelFacts::from_config(&bytes).map_err(|e| e.to_string())?;
        facts.with_tensors(&headers, FactsSource::Manifest).map_err(|e| e.to_string())
    }

    /// Makes a new API key for `app`; returns its record and the key itself (shown only now).
    pub async fn create_key(&self, app: &str, rps: Option<u32>, tokens_per_minute: Option<u32>) -> Result<(ApiKey, String), ControlError> {
        if rps == Some(0) || tokens_per_minute == Some(0) {
            return Err(ControlError::Invalid {
                field: "limits",
                reason: "rps and tokens_per_minute must be at least 1 when given".into(),
            });
        }
        let mut record = self.app(app).await?;
        let secret: String = (0..24).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let key = format!("colo-{secret}");
        let api_key = ApiKey {
            id: format!("k-{}", &secret[..8]),
            hash: blake3::hash(key.as_bytes()).to_hex().to_string(),
            rps,
            tokens_per_minute,
        };
        record.keys.push(api_key.clone());
        self.state.put_app(&record).await?;
        Ok((api_key, key))
    }

    /// Removes one of `app`'s keys.
    pub async fn revoke_key(&self, app: &str, id: &str) -> Result<(), ControlError> {
        let mut record = self.app(app).await?;
        let before = record.keys.len();
        record.keys.retain(|k| k.id != id);
        if record.keys.len() == before {
            return Err(ControlError::Invalid {
                field: "key",
                reason: format!("app {app:?} has no key {id:?}"),
            });
        }
        self.state.put_app(&record).await?;
        Ok(())
    }

    /// Removes an app and destroys its machines.
    pub async fn destroy_app(&self, app: &str) -> Result<(), ControlError> {
        let name = AppName::new(app).map_err(|e| ControlError::Invalid {
            field: "app",
            reason: e.to_string(),
        })?;
        if !self.state.delete_app(&name).await? {
            return Err(ControlError::NoSuchApp(app.to_string()));
        }
        for machine in self.all_machines().await? {
            if machine.app == name && machine.state != MachineState::Destroyed {
                self.agent_of(&machine)?.destroy(&machine.id).await?;
            }
        }
        Ok(())
    }

    /// Brings the app's machines in line with its record: machines of another revision, model,
    /// engine or GPU kind are destroyed, missing ones created, surplus ones destroyed, stopped
    /// ones started. With per-region counts each region is reconciled on its own; without, the
    /// machines are spread over the hosts, each new one going to the host with the fewest of
    /// the app's machines (then the most free devices).
    pub async fn reconcile(&self, app: &App) -> Result<(), ControlError> {
        let mut live = Vec::new();
        for machine in self.all_machines().await? {
            if machine.app != app.name || machine.state == MachineState::Destroyed {
                continue;
            }
            let agent = self.agent_of(&machine)?;
            let wrong_kind = app
                .gpu
                .as_ref()
                .is_some_and(|g| agent.device_kind(&machine.device).as_deref() != Some(g.kind.as_str()));
            if machine.revision != app.revision || machine.model != app.model || machine.engine_cmd != app.engine_cmd || wrong_kind {
                agent.destroy(&machine.id).await?;
            } else {
                live.push(machine);
            }
        }
        live.sort_by_key(|m| (m.state != MachineState::Started, m.id.clone()));
        let wanted: Vec<(Option<&str>, usize)> = if app.regions.is_empty() {
            vec![(None, app.machines as usize)]
        } else {
            app.regions.iter().map(|(r, n)| (Some(r.as_str()), *n as usize)).collect()
        };
        // Machines in regions the app no longer lists go.
        let (mut kept, gone): (Vec<Machine>, Vec<Machine>) = live
            .into_iter()
            .partition(|m| wanted.iter().any(|(r, _)| r.is_none_or(|r| r == m.region)));
        for machine in gone {
            self.agent_of(&machine)?.destroy(&machine.id).await?;
        }
        for (region, want) in wanted {
            let (mine, rest): (Vec<Machine>, Vec<Machine>) = kept.into_iter().partition(|m| region.is_none_or(|r| r == m.region));
            kept = rest;
            for surplus in mine.iter().skip(want) {
                self.agent_of(surplus)?.destroy(&surplus.id).await?;
            }
            for machine in mine.iter().take(want) {
                if machine.desired != MachineState::Started || machine.state == MachineState::Failed {
                    self.agent_of(machine)?.start(&machine.id).await?;
                }
            }
            for _ in mine.len()..want {
                self.create_in(app, region).await?;
            }
        }
        Ok(())
    }

    /// Creates one machine of `app` in `region` (anywhere when `None`), on the host with the
    /// fewest of the app's machines, then the most free devices; the next host is tried when
    /// one has no device of the app's kind free.
    async fn create_in(&self, app: &App, region: Option<&str>) -> Result<Machine, ControlError> {
        let machines = self.all_machines().await?;
        let mut hosts = Vec::new();
        for agent in self.agents.iter().filter(|a| region.is_none_or(|r| r == a.region())) {
            let of_app = machines
                .iter()
                .filter(|m| m.host == agent.host() && m.app == app.name && m.state != MachineState::Destroyed)
                .count();
            hosts.push((
                of_app,
                std::cmp::Reverse(agent.free_devices().await?),
                agent.host().to_string(),
                agent,
            ));
        }
        hosts.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let spec = MachineSpec {
            app: app.name.clone(),
            model: app.model.clone(),
            revision: app.revision.clone(),
            gpu_kind: app.gpu.as_ref().map(|g| g.kind.clone()),
            engine_cmd: app.engine_cmd.clone(),
        };
        let mut last = None;
        for (_, _, _, agent) in hosts {
            match agent.create_machine(&spec).await {
                Ok(machine) => return Ok(machine),
                Err(e @ colo_agent::AgentError::NoFreeDevice { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(match last {
            Some(e) => e.into(),
            None => ControlError::Invalid {
                field: "regions",
                reason: format!("no host in region {:?}", region.unwrap_or("any")),
            },
        })
    }

    /// The machines of the hosts control drives (for tests and `colo ps`).
    pub async fn agent_machines(&self) -> Vec<colo_core::Machine> {
        self.all_machines().await.unwrap_or_default()
    }

    pub async fn apps(&self) -> Result<Vec<App>, ControlError> {
        Ok(self.state.apps().await?)
    }

    pub async fn app(&self, name: &str) -> Result<App, ControlError> {
        let parsed = AppName::new(name).map_err(|_| ControlError::NoSuchApp(name.to_string()))?;
        self.state
            .app(&parsed)
            .await?
            .ok_or_else(|| ControlError::NoSuchApp(name.to_string()))
    }
}
