//! Control: apps and deployments. A deploy records the app and its pinned model revision;
//! reconciliation then asks agents for the machines the app needs. Control never proxies
//! traffic.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod hosts;
pub mod placement;

pub use hosts::{HostHandle, Hosts};

use colo_agent::{Agent, MachineSpec};
use colo_core::{ApiKey, App, AppName, Catalogue, Demand, GpuChoice, HostRecord, Machine, MachineState, Regions};
use colo_model::{FactsSource, Manifest, ModelFacts};
use colo_policy::{recommend, Placement, PlanRequest};
use colo_state::StateStore;
use colo_store::Store;
use placement::{HostGpus, Unplaced};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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
    #[error("{0}")]
    Host(String),
    #[error("rollout of app {app:?} to revision {revision} stopped: {reason}; the previous version keeps serving")]
    Rollout { app: String, revision: String, reason: String },
    #[error("no machine of app {app:?} can be placed for its demand: {reason}")]
    Unplaced { app: String, reason: String },
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
    /// Traffic per region: the planner places the machines on the live hosts' GPUs (replaces
    /// the machine count; not with `regions`).
    pub demand: Option<Demand>,
    /// The app's own engine command (`{port}`, `{model_dir}`), instead of colo's engine.
    pub engine_cmd: Option<String>,
}

/// Machines per app at most, to keep a typo from leasing a whole fleet.
pub const MAX_MACHINES_PER_APP: u32 = 64;

pub struct Control {
    pub(crate) state: Arc<dyn StateStore>,
    store: Store,
    hosts: Hosts,
    /// One reconciliation at a time: a rollout waits for machines, and a second pass meanwhile
    /// would count them twice.
    reconciling: tokio::sync::Mutex<()>,
    /// How long a new machine of a rollout may take to become healthy.
    pub rollout_timeout: std::time::Duration,
    /// The planner's facts per `(model, revision)`, read once from the store: placement
    /// needs them on every reconcile pass of an app with a demand.
    facts: Mutex<HashMap<(String, String), ModelFacts>>,
    /// The demand each app's last placement left unmet, to log it when it changes.
    unmet: Mutex<HashMap<AppName, Vec<String>>>,
}

pub(crate) use colo_core::unix_ms as now_ms;

/// Machines reconciliation keeps in one place: anywhere, in a region, or on one host with one
/// GPU kind (a placement's slot).
#[derive(Debug, Default)]
struct Want {
    region: Option<String>,
    host: Option<String>,
    gpu: Option<String>,
    count: usize,
}

impl Want {
    /// Whether `machine`, whose device is of GPU kind `kind`, counts towards this want.
    fn holds(&self, machine: &Machine, kind: Option<&str>) -> bool {
        self.region.as_deref().is_none_or(|r| r == machine.region)
            && self.host.as_deref().is_none_or(|h| h == machine.host)
            && self.gpu.as_deref().is_none_or(|g| Some(g) == kind)
    }
}

// === impl Control ===

impl Control {
    /// Control over agents in this process (`colo up`).
    pub fn new(state: Arc<dyn StateStore>, store: Store, agents: Vec<Arc<Agent>>) -> Arc<Self> {
        Self::with_hosts(state, store, Hosts::Local(agents))
    }

    /// Control over the agents registered in the shared state, reached with `http` and the
    /// cluster token.
    pub fn remote(state: Arc<dyn StateStore>, store: Store, token: Arc<auth::TokenFile>, http: reqwest::Client) -> Arc<Self> {
        Self::with_hosts(state.clone(), store, Hosts::Remote { state, token, http })
    }

    fn with_hosts(state: Arc<dyn StateStore>, store: Store, hosts: Hosts) -> Arc<Self> {
        Arc::new(Self {
            state,
            store,
            hosts,
            reconciling: tokio::sync::Mutex::new(()),
            rollout_timeout: std::time::Duration::from_secs(300),
            facts: Mutex::default(),
            unmet: Mutex::default(),
        })
    }

    /// The host that runs `machine`, among `hosts`.
    fn host_of<'a>(hosts: &'a [Arc<dyn HostHandle>], machine: &Machine) -> Result<&'a Arc<dyn HostHandle>, ControlError> {
        hosts
            .iter()
            .find(|h| h.name() == machine.host)
            .ok_or_else(|| ControlError::Host(format!("machine {} runs on host {:?}, which is not live", machine.id, machine.host)))
    }

    /// Every machine on `hosts`.
    async fn machines_on(hosts: &[Arc<dyn HostHandle>]) -> Result<Vec<Machine>, ControlError> {
        let mut all = Vec::new();
        for host in hosts {
            all.extend(host.machines().await?);
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
        if let Some(demand) = &options.demand {
            let invalid = |reason: String| ControlError::Invalid { field: "demand", reason };
            if !options.regions.is_empty() {
                return Err(invalid("give machines per region or a demand, not both".into()));
            }
            let problems = demand.validate(&Regions::builtin());
            if !problems.is_empty() {
                return Err(invalid(problems.join("; ")));
            }
        }
        if !(1..=MAX_MACHINES_PER_APP).contains(&machines) {
            return Err(ControlError::Invalid {
                field: "machines",
                reason: format!("{machines} is outside 1 to {MAX_MACHINES_PER_APP}"),
            });
        }
        let live = self.hosts.live().await?;
        let known: Vec<&str> = live.iter().map(|h| h.region()).collect();
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
        if options.engine_cmd.as_deref().is_some_and(|c| !c.contains("{port}")) {
            let reason = "the command must contain {port}, where the engine is told to listen".to_string();
            return Err(ControlError::Invalid {
                field: "engine_cmd",
                reason,
            });
        }
        let manifest = self.store.manifest(model.as_str()).await?;
        // With a demand the planner places the machines (of the named kind, if any) on the
        // live hosts; otherwise one kind is chosen for all of them.
        let (gpu, placement) = match &options.demand {
            Some(demand) => {
                let gpu = match gpu {
                    Some(_) => self.choose_gpu(&manifest, gpu).await?,
                    None => None,
                };
                let kind = gpu.as_ref().map(|g| g.kind.as_str());
                let placed = self.place(&name, &manifest.name, &manifest.revision, demand, kind, &live).await?;
                (gpu, Some(placed))
            }
            None => (self.choose_gpu(&manifest, gpu).await?, None),
        };
        let counts: BTreeMap<String, u32> = match &placement {
            Some(placed) => placed.machines.iter().fold(BTreeMap::new(), |mut counts, m| {
                *counts.entry(m.region.clone()).or_default() += 1;
                counts
            }),
            None => options.regions.clone(),
        };
        let field = if placement.is_some() { "demand" } else { "regions" };
        let machines = match counts.values().sum::<u32>() {
            0 => machines,
            total if total <= MAX_MACHINES_PER_APP => total,
            total => {
                let reason = format!("{total} machines in all is more than {MAX_MACHINES_PER_APP}");
                return Err(ControlError::Invalid { field, reason });
            }
        };
        // The minimum holds per region, so it may not exceed the smallest region's count.
        let smallest = counts.values().copied().min().unwrap_or(machines);
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
        let app = App {
            name,
            model,
            revision: manifest.revision,
            machines,
            deployed_at_ms: now_ms(),
            version: 0,
            gpu,
            soft_limit,
            hard_limit,
            keys: Vec::new(),
            autostop_secs: options.autostop_secs,
            min_running: options.min_running,
            regions: options.regions.clone(),
            deploy_tokens: Vec::new(),
            engine_cmd: options.engine_cmd.clone(),
            demand: options.demand.clone(),
            placement: placement.as_ref().map(placement::record),
        };
        // A redeploy keeps the app's keys and counts up its version.
        let previous = self.state.app(&app.name).await?;
        let app = match &previous {
            Some(previous) => App {
                keys: previous.keys.clone(),
                deploy_tokens: previous.deploy_tokens.clone(),
                version: previous.version + 1,
                ..app
            },
            None => App { version: 1, ..app },
        };
        self.state.put_app(&app).await?;
        if let Err(e) = self.reconcile(&app).await {
            // A rollout that failed leaves the previous version serving, and on record.
            if let (ControlError::Rollout { .. }, Some(previous)) = (&e, previous) {
                self.state.put_app(&previous).await?;
            }
            return Err(e);
        }
        Ok(app)
    }

    /// The GPU kind for a deploy: checked against the host's GPUs when named, else the
    /// planner's choice among them. `None` when the host has no GPU (CPU slots), or when the
    /// planner cannot read the model and no kind was named (any free device).
    async fn choose_gpu(&self, manifest: &Manifest, named: Option<&str>) -> Result<Option<GpuChoice>, ControlError> {
        let invalid = |reason: String| ControlError::Invalid { field: "gpu", reason };
        let catalogue = Catalogue::builtin();
        let mut host_kinds: Vec<String> = self.hosts.live().await?.iter().flat_map(|h| h.gpu_kinds()).collect();
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

    /// Places `demand` for `app` (serving `model@revision`) on the live `hosts`: their GPUs,
    /// less those other apps' machines hold. No machine placed anywhere is an error.
    async fn place(
        &self,
        app: &AppName,
        model: &str,
        revision: &str,
        demand: &Demand,
        gpu: Option<&str>,
        hosts: &[Arc<dyn HostHandle>],
    ) -> Result<Placement, ControlError> {
        let invalid = |reason: String| ControlError::Invalid { field: "demand", reason };
        let facts = self
            .facts_of(model, revision)
            .await
            .map_err(|reason| invalid(format!("the planner cannot read model {model}@{revision}: {reason}")))?;
        let machines = Self::machines_on(hosts).await?;
        let views: Vec<HostGpus> = hosts
            .iter()
            .map(|h| HostGpus {
                name: h.name(),
                region: h.region(),
                devices: h
                    .devices()
                    .into_iter()
                    .map(|d| {
                        let kind = h.device_kind(&d);
                        (d, kind)
                    })
                    .collect(),
            })
            .collect();
        let regions = Regions::builtin();
        let (fleet, left_out) = placement::fleet_for(app, &views, &machines, &regions);
        if !left_out.is_empty() {
            tracing::debug!(%app, ?left_out, "hosts placement cannot use");
        }
        placement::place_demand(&facts, demand, gpu, &fleet, &regions).map_err(|e| match e {
            Unplaced::Invalid(reason) => invalid(reason),
            Unplaced::NoCapacity(reason) => ControlError::Unplaced {
                app: app.to_string(),
                reason,
            },
        })
    }

    /// The planner's facts for `model@revision`, from the store the first time.
    async fn facts_of(&self, model: &str, revision: &str) -> Result<ModelFacts, String> {
        let key = (model.to_string(), revision.to_string());
        if let Some(facts) = self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(facts.clone());
        }
        let manifest = self.store.manifest_at(model, revision).await.map_err(|e| e.to_string())?;
        let facts = self.model_facts(&manifest).await?;
        let mut cached = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        // A revision per deploy: a long-lived control forgets old ones now and then.
        if cached.len() >= 256 {
            cached.clear();
        }
        cached.insert(key, facts.clone());
        Ok(facts)
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

    /// Makes a deploy token for `app` (shown only now): it lets its holder deploy, inspect and
    /// destroy this app through control, and nothing else.
    pub async fn create_deploy_token(&self, app: &str) -> Result<String, ControlError> {
        let mut record = self.app(app).await?;
        let secret: String = (0..24).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let token = format!("{}{secret}", auth::DEPLOY_TOKEN_PREFIX);
        record.deploy_tokens.push(blake3::hash(token.as_bytes()).to_hex().to_string());
        self.state.put_app(&record).await?;
        Ok(token)
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
        let hosts = self.hosts.live().await?;
        for machine in Self::machines_on(&hosts).await? {
            if machine.app == name && machine.state != MachineState::Destroyed {
                Self::host_of(&hosts, &machine)?.destroy(&machine.id).await?;
            }
        }
        Ok(())
    }

    /// Brings the app's machines in line with its record, on the hosts that are live: surplus
    /// machines are destroyed, stopped ones started, missing ones created. With per-region
    /// counts each region is reconciled on its own; with a demand, each host and GPU kind the
    /// planner's placement names (placed anew on every pass, so a lost host's machines go
    /// elsewhere); with neither, machines are spread over the hosts, each new one going to the
    /// host with the fewest of the app's machines (then the most free devices). Machines of
    /// another revision, model, engine or GPU kind are replaced one at a time: a new machine
    /// must be started and healthy before an old one is destroyed, so the old version keeps
    /// serving; a new machine that fails stops the rollout with an error (and is destroyed),
    /// leaving the old ones in place.
    pub async fn reconcile(&self, app: &App) -> Result<(), ControlError> {
        let _one_at_a_time = self.reconciling.lock().await;
        let hosts = self.hosts.live().await?;
        let (mut current, mut stale) = (Vec::new(), Vec::new());
        for machine in Self::machines_on(&hosts).await? {
            if machine.app != app.name || machine.state == MachineState::Destroyed {
                continue;
            }
            let host = Self::host_of(&hosts, &machine)?;
            let wrong_kind = app
                .gpu
                .as_ref()
                .is_some_and(|g| host.device_kind(&machine.device).as_deref() != Some(g.kind.as_str()));
            if machine.revision != app.revision || machine.model != app.model || machine.engine_cmd != app.engine_cmd || wrong_kind {
                stale.push(machine);
            } else {
                current.push(machine);
            }
        }
        // Surplus goes from the hosts with the most of the app's machines first, stopped or
        // failing ones before started ones.
        let mut per_host: HashMap<String, usize> = HashMap::new();
        for m in &current {
            *per_host.entry(m.host.clone()).or_default() += 1;
        }
        current.sort_by_cached_key(|m| (m.state != MachineState::Started, std::cmp::Reverse(per_host[&m.host]), m.id.clone()));
        let wanted = self.wanted(app, &hosts).await?;
        let kind_of = |m: &Machine| Self::host_of(&hosts, m).ok().and_then(|h| h.device_kind(&m.device));
        // Machines no longer wanted where they are (a region the app no longer lists, a host
        // the placement moved away from) are stale too.
        let (mut kept, gone): (Vec<Machine>, Vec<Machine>) = current
            .into_iter()
            .partition(|m| wanted.iter().any(|w| w.holds(m, kind_of(m).as_deref())));
        stale.extend(gone);
        let mut made: Vec<Machine> = Vec::new();
        for want in &wanted {
            let (mine, rest): (Vec<Machine>, Vec<Machine>) = kept.into_iter().partition(|m| want.holds(m, kind_of(m).as_deref()));
            kept = rest;
            // `mine` is sorted started-first, so the surplus is the tail.
            let (keep, surplus) = mine.split_at(mine.len().min(want.count));
            for machine in surplus {
                Self::host_of(&hosts, machine)?.destroy(&machine.id).await?;
            }
            for machine in keep {
                if machine.desired != MachineState::Started || machine.state == MachineState::Failed {
                    Self::host_of(&hosts, machine)?.start(&machine.id).await?;
                }
            }
            for _ in keep.len()..want.count {
                let replaces = stale.iter().position(|m| want.region.as_deref().is_none_or(|r| r == m.region));
                let new = self.create_in(&hosts, app, want, &made).await?;
                made.push(new.clone());
                let Some(old) = replaces.map(|i| stale.remove(i)) else { continue };
                if let Err(e) = self.wait_healthy(&new).await {
                    if let Ok(host) = Self::host_of(&hosts, &new) {
                        let _ = host.destroy(&new.id).await;
                    }
                    return Err(ControlError::Rollout {
                        app: app.name.to_string(),
                        revision: app.revision.clone(),
                        reason: e,
                    });
                }
                Self::host_of(&hosts, &old)?.destroy(&old.id).await?;
            }
        }
        for machine in stale {
            Self::host_of(&hosts, &machine)?.destroy(&machine.id).await?;
        }
        Ok(())
    }

    /// Where reconciliation wants the app's machines: per-region counts, the placement of its
    /// demand on the live `hosts`, or a count anywhere. Demand the placement cannot meet is
    /// logged when it changes; a placement that meets none is an error, so that a pass never
    /// destroys the machines an app has for want of somewhere better.
    async fn wanted(&self, app: &App, hosts: &[Arc<dyn HostHandle>]) -> Result<Vec<Want>, ControlError> {
        if !app.regions.is_empty() {
            return Ok(app
                .regions
                .iter()
                .map(|(region, n)| Want {
                    region: Some(region.clone()),
                    count: *n as usize,
                    ..Want::default()
                })
                .collect());
        }
        let Some(demand) = &app.demand else {
            return Ok(vec![Want {
                count: app.machines as usize,
                ..Want::default()
            }]);
        };
        let kind = app.gpu.as_ref().map(|g| g.kind.as_str());
        let placed = self.place(&app.name, app.model.as_str(), &app.revision, demand, kind, hosts).await;
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
        let mut slots: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for m in placed?.machines {
            *slots.entry((m.region, m.host, m.gpu)).or_default() += 1;
        }
        Ok(slots
            .into_iter()
            .map(|((region, host, gpu), count)| Want {
                region: Some(region),
                host: Some(host),
                gpu: Some(gpu),
                count,
            })
            .collect())
    }

    /// Waits until `machine` is started and passing health checks, or says why it is not.
    async fn wait_healthy(&self, machine: &Machine) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.rollout_timeout;
        let mut changes = self.state.changes();
        loop {
            let now = self.state.machines().await.map_err(|e| e.to_string())?;
            match now.iter().find(|m| m.id == machine.id) {
                Some(m) if m.state == MachineState::Started && m.healthy => return Ok(()),
                Some(m) if m.state == MachineState::Failed => {
                    return Err(format!(
                        "new machine {} failed: {}",
                        m.id,
                        m.last_error.as_deref().unwrap_or("no reason recorded")
                    ))
                }
                Some(m) if m.state == MachineState::Destroyed => return Err(format!("new machine {} was destroyed", m.id)),
                // Another process wrote the record; this copy of the state may not have it yet.
                None | Some(_) => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("new machine {} not healthy within {:?}", machine.id, self.rollout_timeout));
                }
            }
        }
    }

    /// Creates one machine of `app` where `want` says (a region, a host, a GPU kind; anywhere
    /// when it names none), on the host with the fewest of the app's machines, then the most
    /// free devices; the next host is tried when one has no device of the kind free.
    ///
    /// `made` are machines this pass already created: the state this control reads may not
    /// show them yet when another process wrote them.
    async fn create_in(&self, hosts: &[Arc<dyn HostHandle>], app: &App, want: &Want, made: &[Machine]) -> Result<Machine, ControlError> {
        let mut machines = Self::machines_on(hosts).await?;
        let unseen: Vec<Machine> = made
            .iter()
            .filter(|m| machines.iter().all(|known| known.id != m.id))
            .cloned()
            .collect();
        machines.extend(unseen.iter().cloned());
        let mut candidates = Vec::new();
        let (region, on_host) = (want.region.as_deref(), want.host.as_deref());
        let placed = hosts
            .iter()
            .filter(|h| region.is_none_or(|r| r == h.region()) && on_host.is_none_or(|n| n == h.name()));
        for host in placed {
            let of_app = machines
                .iter()
                .filter(|m| m.host == host.name() && m.app == app.name && m.state != MachineState::Destroyed)
                .count();
            // Devices taken by machines made this pass that the host's record does not show yet.
            let taken = unseen.iter().filter(|m| m.host == host.name()).count();
            let free = host.free_devices().await?.saturating_sub(taken);
            candidates.push((of_app, std::cmp::Reverse(free), host.name().to_string(), host));
        }
        candidates.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let spec = MachineSpec {
            app: app.name.clone(),
            model: app.model.clone(),
            revision: app.revision.clone(),
            gpu_kind: want.gpu.clone().or_else(|| app.gpu.as_ref().map(|g| g.kind.clone())),
            engine_cmd: app.engine_cmd.clone(),
        };
        let mut last = None;
        for (_, free, _, host) in candidates {
            if free.0 == 0 {
                last = Some(ControlError::Host(format!("host {} has no free device", host.name())));
                continue;
            }
            match host.create_machine(&spec).await {
                Ok(machine) => return Ok(machine),
                Err(e @ ControlError::Agent(colo_agent::AgentError::NoFreeDevice { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| match on_host {
            Some(name) => ControlError::Host(format!("host {name} is not live")),
            None => ControlError::Invalid {
                field: "regions",
                reason: format!("no live host in region {:?}", region.unwrap_or("any")),
            },
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

    /// Marks hosts whose lease ran out as lost (their machines leave every route table) and
    /// reconciles whenever the set of live hosts changes, and every `every` besides. Leases
    /// are judged only after the state store has been reachable for a whole lease, so that
    /// control's own outage never condemns hosts whose heartbeats it could not see.
    pub fn spawn_lease_watch(self: &Arc<Self>, reachable: Arc<dyn Fn() -> bool + Send + Sync>, every: std::time::Duration) {
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut reachable_since: Option<u64> = None;
            let mut live_before: Vec<String> = Vec::new();
            let mut last_pass = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let Some(control) = control.upgrade() else { return };
                let now = now_ms();
                if !reachable() {
                    reachable_since = None;
                    continue;
                }
                let since = *reachable_since.get_or_insert(now);
                let Ok(hosts) = control.state.hosts().await else { continue };
                for host in &hosts {
                    if !host.lost && host.expired(now) && now.saturating_sub(since) > host.lease_ms {
                        tracing::warn!(host = %host.name, region = %host.region, "lease ran out; host lost");
                        let lost = HostRecord {
                            lost: true,
                            ..host.clone()
                        };
                        if let Err(e) = control.state.put_host(&lost).await {
                            tracing::warn!(host = %host.name, error = %e, "marking a host lost");
                        }
                    }
                }
                let mut live: Vec<String> = hosts
                    .iter()
                    .filter(|h| !h.lost && !h.expired(now))
                    .map(|h| h.name.clone())
                    .collect();
                live.sort();
                if live != live_before || last_pass.elapsed() >= every {
                    if live != live_before {
                        tracing::info!(?live, "live hosts changed; reconciling");
                    }
                    control.reconcile_all().await;
                    live_before = live;
                    last_pass = tokio::time::Instant::now();
                }
            }
        });
    }

    /// The machines of the hosts control drives (for tests and `colo ps`).
    pub async fn agent_machines(&self) -> Vec<colo_core::Machine> {
        match self.hosts.live().await {
            Ok(hosts) => Self::machines_on(&hosts).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
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
