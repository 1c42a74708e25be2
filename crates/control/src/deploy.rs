//! Deploys: what a deploy may ask for and every way the request can be wrong (`validate`,
//! pure), and `deploy_with`, which sequences validate, choose (GPU kind or placement), record,
//! reconcile, and puts the previous record back when the rollout fails. Also destroying an app.

use crate::error::{Problem, Problems};
use crate::placement::Shape;
use crate::{now_ms, placement, Control, ControlError, HostHandle};
use colo_core::{App, AppName, Demand, GpuChoice, MachineState, Regions};
use colo_model::Manifest;
use colo_policy::{PlacedMachine, Placement};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a deploy may set besides the model and machine count.
#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// GPU kind (`l40s`); the planner chooses among the host's kinds when absent.
    pub gpu: Option<String>,
    /// Whole GPUs of one host per machine, for an engine that spans them (tensor parallel);
    /// 1 when absent.
    pub gpus_per_machine: Option<u32>,
    /// Requests in flight per machine past which edges prefer other machines.
    pub soft_limit: Option<u32>,
    /// Requests in flight per machine at which edges send it no more.
    pub hard_limit: Option<u32>,
    /// Idle seconds after which edges stop a machine (woken again by the next request).
    pub autostop_secs: Option<u64>,
    /// Whether autostop stops or suspends an idle machine.
    pub autostop_to: colo_core::IdleAction,
    /// The weights of the score edges route by; absent: the defaults.
    pub route_weights: Option<colo_core::RouteWeights>,
    /// Machines kept started in each region even when idle.
    pub min_running: u32,
    /// Machines wanted per region code; empty: spread over every host.
    pub regions: BTreeMap<String, u32>,
    /// Traffic per region: the planner places the machines on the live hosts' GPUs (replaces
    /// the machine count; not with `regions`).
    pub demand: Option<Demand>,
    /// The app's own engine command (`{port}`, `{model_dir}`), instead of colo's engine.
    pub engine_cmd: Option<String>,
    /// How edges choose among the app's machines; absent: the edge's default.
    pub route: Option<colo_core::RouteMode>,
    /// The engine profile to run; absent: colo's engine (or `engine_cmd`).
    pub engine: Option<colo_core::EngineSpec>,
}

/// Machines per app at most, to keep a typo from leasing a whole fleet.
pub const MAX_MACHINES_PER_APP: u32 = 64;

// === impl DeployOptions ===

impl DeployOptions {
    /// Every problem with deploying `app` serving `model` on `machines` machines with these
    /// options, when the live hosts are in `live_regions` (one entry per host); or the app's
    /// and the model's names.
    pub fn validate(&self, app: &str, model: &str, machines: u32, live_regions: &[&str]) -> Result<(AppName, AppName), Problems> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, reason: String| problems.push(Problem { field, reason });
        if self.autostop_secs == Some(0) {
            problem("autostop", "must be at least 1 second when given".into());
        }
        let (soft, hard) = (self.soft_limit, self.hard_limit);
        if soft == Some(0) || hard == Some(0) || matches!((soft, hard), (Some(s), Some(h)) if h < s) {
            problem(
                "limits",
                format!("soft limit {soft:?} and hard limit {hard:?}: both at least 1, hard at least soft"),
            );
        }
        let name = AppName::new(app).map_err(|e| problem("app", e.to_string())).ok();
        let model = AppName::new(model).map_err(|e| problem("model", e.to_string())).ok();
        if let Some(demand) = &self.demand {
            if !self.regions.is_empty() {
                problem("demand", "give machines per region or a demand, not both".into());
            }
            let wrong = demand.validate(&Regions::builtin());
            if !wrong.is_empty() {
                problem("demand", wrong.join("; "));
            }
        }
        if !(1..=MAX_MACHINES_PER_APP).contains(&machines) {
            problem("machines", format!("{machines} is outside 1 to {MAX_MACHINES_PER_APP}"));
        }
        for (region, count) in &self.regions {
            if !live_regions.contains(&region.as_str()) {
                problem(
                    "regions",
                    format!("no host in region {region:?} (hosts are in: {})", live_regions.join(", ")),
                );
            } else if *count == 0 {
                problem("regions", format!("{region}=0: a listed region needs at least one machine"));
            }
        }
        if self.engine_cmd.as_deref().is_some_and(|c| !c.contains("{port}")) {
            problem(
                "engine_cmd",
                "the command must contain {port}, where the engine is told to listen".into(),
            );
        }
        if let Some(weights) = &self.route_weights {
            if self.route.is_some_and(|r| r != colo_core::RouteMode::Score) {
                problem("route_weights", "weights apply to --route score only".into());
            }
            if weights.max() > colo_core::ROUTE_WEIGHT_MAX {
                problem(
                    "route_weights",
                    format!("a weight of {} is over the limit of {}", weights.max(), colo_core::ROUTE_WEIGHT_MAX),
                );
            }
        }
        if self.autostop_to == colo_core::IdleAction::Suspend && self.autostop_secs.is_none() {
            problem(
                "autostop_to",
                "suspend needs --autostop SECS, the idle time after which to suspend".into(),
            );
        }
        if let Some(reason) = colo_core::gpus_problem(self.gpus(), self.engine.as_ref().map(|e| e.kind), self.engine_cmd.is_some()) {
            problem("gpus_per_machine", reason);
        }
        if let Some(engine) = &self.engine {
            if self.engine_cmd.is_some() {
                problem("engine", "give an engine profile or an engine command, not both".into());
            }
            if engine.bin.as_deref().is_some_and(|b| b.trim().is_empty()) {
                problem("engine_bin", "an empty program name".into());
            }
        }
        match (name, model) {
            (Some(name), Some(model)) if problems.is_empty() => Ok((name, model)),
            _ => Err(Problems(problems)),
        }
    }

    /// Whole GPUs per machine: as given, else 1.
    pub fn gpus(&self) -> u32 {
        self.gpus_per_machine.unwrap_or(1)
    }

    /// The engine the app runs, with its sleep mode on when autostop suspends: the engine
    /// must be started able to sleep.
    fn engine_for_autostop(&self) -> Option<colo_core::EngineSpec> {
        let mut engine = self.engine.clone()?;
        if self.autostop_to == colo_core::IdleAction::Suspend {
            engine.sleep_after_secs = self.autostop_secs.unwrap_or(0);
        }
        Some(engine)
    }

    /// Whether the model's files suit the engine: llama.cpp reads a GGUF file, the others a
    /// config.json with safetensors weights.
    pub fn check_model(&self, manifest: &colo_model::Manifest) -> Result<(), Problems> {
        let kind = self.engine.as_ref().map_or(colo_core::EngineKind::Colo, |e| e.kind);
        if self.engine_cmd.is_some() {
            return Ok(());
        }
        let has_gguf = manifest.files.iter().any(|f| f.path.ends_with(".gguf"));
        let has_config = manifest.files.iter().any(|f| f.path == "config.json");
        let reason = match (kind.wants_gguf(), has_gguf, has_config) {
            (true, false, _) => format!("{kind} serves a GGUF file and model {} has none", manifest.name),
            (false, _, false) => format!("{kind} serves a config.json and safetensors weights, and model {} has no config.json (a GGUF model runs with --engine llama-server)", manifest.name),
            _ => return Ok(()),
        };
        Err(Problems(vec![Problem { field: "engine", reason }]))
    }

    /// The app's machine count once its placement (with a demand) is known: the placed or
    /// per-region machines in all, or `requested` when neither gives any; and the minimum kept
    /// running, which holds per region, may not exceed the smallest region's count.
    pub fn machine_count(&self, requested: u32, placed: Option<&[PlacedMachine]>) -> Result<u32, Problems> {
        let one = |field: &'static str, reason: String| Problems(vec![Problem { field, reason }]);
        let counts: BTreeMap<&str, u32> = match placed {
            Some(machines) => machines.iter().fold(BTreeMap::new(), |mut counts, m| {
                *counts.entry(m.region.as_str()).or_default() += 1;
                counts
            }),
            None => self.regions.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
        };
        let field = if placed.is_some() { "demand" } else { "regions" };
        let machines = match counts.values().sum::<u32>() {
            0 => requested,
            total if total <= MAX_MACHINES_PER_APP => total,
            total => return Err(one(field, format!("{total} machines in all is more than {MAX_MACHINES_PER_APP}"))),
        };
        let smallest = counts.values().copied().min().unwrap_or(machines);
        if self.min_running > smallest {
            let reason = format!("{} is more than the {smallest} machines the app has in a region", self.min_running);
            return Err(one("min_running", reason));
        }
        Ok(machines)
    }
}

// === impl Control ===

impl Control {
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

    /// `deploy`, with the app's own routing limits, autostop, regions or demand, and engine.
    pub async fn deploy_with(&self, app: &str, model: &str, machines: u32, options: &DeployOptions) -> Result<App, ControlError> {
        let live = self.hosts.live().await?;
        let live_regions: Vec<&str> = live.iter().map(|h| h.region()).collect();
        let (name, model) = options
            .validate(app, model, machines, &live_regions)
            .map_err(ControlError::Invalid)?;
        let manifest = self.store.manifest(model.as_str()).await?;
        options.check_model(&manifest).map_err(ControlError::Invalid)?;
        let (gpu, placement) = self.choose(&name, &manifest, options, &live).await?;
        let machines = options
            .machine_count(machines, placement.as_ref().map(|p| p.machines.as_slice()))
            .map_err(ControlError::Invalid)?;
        let app = App {
            name,
            model,
            revision: manifest.revision,
            machines,
            deployed_at_ms: now_ms(),
            version: 0,
            gpu,
            gpus_per_machine: options.gpus(),
            soft_limit: options.soft_limit,
            hard_limit: options.hard_limit,
            keys: Vec::new(),
            autostop_secs: options.autostop_secs,
            autostop_to: options.autostop_to,
            min_running: options.min_running,
            regions: options.regions.clone(),
            deploy_tokens: Vec::new(),
            engine_cmd: options.engine_cmd.clone(),
            demand: options.demand.clone(),
            placement: placement.as_ref().map(placement::record),
            route: options.route,
            route_weights: options.route_weights,
            engine: options.engine_for_autostop(),
        };
        let (app, previous) = self.record(app).await?;
        if let Err(e) = self.reconcile(&app).await {
            return Err(self.undo(&app, previous, e).await);
        }
        Ok(app)
    }

    /// A deploy is all or nothing: when its reconcile fails (no device free, a new machine
    /// that did not become healthy), a new app is removed with any machine made for it, and a
    /// redeployed one gets its previous record back and is reconciled to it (best effort: the
    /// next pass finishes the job). Returns the error to answer with.
    async fn undo(&self, app: &App, previous: Option<App>, cause: ControlError) -> ControlError {
        let undone = match &previous {
            Some(previous) => match self.state.put_app(previous).await {
                Ok(()) => self.reconcile(previous).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            None => self.remove(&app.name).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        if let Err(e) = &undone {
            tracing::warn!(app = %app.name, error = %e, "undoing a failed deploy");
        }
        match (cause, previous) {
            // Its message says the previous version keeps serving.
            (cause @ ControlError::Rollout { .. }, _) => cause,
            (cause, previous) => ControlError::NotDeployed {
                app: app.name.to_string(),
                kept: previous.map(|p| p.version),
                cause: Box::new(cause),
            },
        }
    }

    /// The deploy's GPU kind, and with a demand its placement: the planner places the machines
    /// (of the named kind, if any) on the live hosts; without one, one kind is chosen for all.
    async fn choose(
        &self,
        name: &AppName,
        manifest: &Manifest,
        options: &DeployOptions,
        live: &[Arc<dyn HostHandle>],
    ) -> Result<(Option<GpuChoice>, Option<Placement>), ControlError> {
        let named = options.gpu.as_deref();
        let Some(demand) = &options.demand else {
            return Ok((self.choose_gpu(manifest, named, options.gpus()).await?, None));
        };
        let gpu = match named {
            Some(_) => self.choose_gpu(manifest, named, options.gpus()).await?,
            None => None,
        };
        let kind = gpu.as_ref().map(|g| g.kind.as_str());
        let placed = self
            .place(
                name,
                &manifest.name,
                &manifest.revision,
                demand,
                Shape {
                    gpu: kind,
                    gpus: options.gpus(),
                },
                live,
            )
            .await?;
        Ok((gpu, Some(placed)))
    }

    /// Records `app`; a redeploy keeps the app's keys and deploy tokens and counts up its
    /// version. Returns the record and the one it replaced.
    async fn record(&self, app: App) -> Result<(App, Option<App>), ControlError> {
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
        Ok((app, previous))
    }

    /// Removes an app and destroys its machines.
    pub async fn destroy_app(&self, app: &str) -> Result<(), ControlError> {
        let name = AppName::new(app).map_err(|e| ControlError::invalid("app", e.to_string()))?;
        if !self.remove(&name).await? {
            return Err(ControlError::NoSuchApp(app.to_string()));
        }
        Ok(())
    }

    /// Deletes app `name`'s record and destroys its machines; false when there was no record.
    async fn remove(&self, name: &AppName) -> Result<bool, ControlError> {
        if !self.state.delete_app(name).await? {
            return Ok(false);
        }
        let hosts = self.hosts.live().await?;
        for machine in Self::machines_on(&hosts).await? {
            if &machine.app == name && machine.state != MachineState::Destroyed {
                Self::host_of(&hosts, &machine.id, &machine.host)?.destroy(&machine.id).await?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
