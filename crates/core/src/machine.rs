//! Machines: one engine process on one leased device, and the lifecycle it follows.

use crate::AppName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The lifecycle of a machine, shaped like the Fly Machines API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    /// The engine process keeps the model but has given back what it can (its KV cache, and
    /// for engines that can, the GPU memory of the weights); it wakes much faster than a start.
    /// The machine keeps its device.
    Suspended,
    Destroyed,
    Failed,
}

// === impl MachineState ===

impl MachineState {
    /// Whether the lifecycle allows going from `self` to `next`.
    pub fn can_go_to(self, next: MachineState) -> bool {
        use MachineState::*;
        match (self, next) {
            (Destroyed, _) => false,
            (_, Destroyed) => true,
            (_, Failed) => true,
            (Created | Stopped | Failed, Starting) => true,
            // A crash of a started engine sends it back through `starting` on restart.
            (Started, Starting) => true,
            (Starting, Started) => true,
            (Starting | Started, Stopping) => true,
            (Stopping, Stopped) => true,
            (Created | Failed, Stopped) => true,
            (Started, Suspended) => true,
            // A wake goes through `starting`, so edges count it as coming.
            (Suspended, Starting | Stopping | Stopped) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspended => "suspended",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use MachineState::*;
        [Created, Starting, Started, Stopping, Stopped, Suspended, Destroyed, Failed]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a machine runs on: a whole GPU or one CPU slot. Never a fraction of either (a
/// tensor-parallel machine leases several whole GPUs: `Machine::extra_devices`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Device {
    Gpu { index: u32, name: String, memory_mib: u64 },
    Cpu { slot: u32 },
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Gpu { index, name, .. } => write!(f, "gpu{index} ({name})"),
            Device::Cpu { slot } => write!(f, "cpu{slot}"),
        }
    }
}

/// What one hydration of a model into the host cache moved and how fast.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HydrationReport {
    /// Bytes of the model in total.
    pub bytes_total: u64,
    /// Bytes fetched from the store by this pull.
    pub bytes_fetched: u64,
    /// Bytes already present in the host cache (whole files or verified chunks).
    pub bytes_reused: u64,
    /// Wall-clock seconds of the pull.
    pub seconds: f64,
    /// Bytes found already verified in the host cache.
    #[serde(default)]
    pub bytes_from_cache: u64,
    /// Bytes read from peer hosts in the same region.
    #[serde(default)]
    pub bytes_from_peer: u64,
    /// Bytes read from the origin store: the egress an operator pays for.
    #[serde(default)]
    pub bytes_from_origin: u64,
    /// Bytes read from each peer, by its base URL.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bytes_by_peer: std::collections::BTreeMap<String, u64>,
    /// Ranged reads in flight at the end of the pull (as tuned or as told).
    #[serde(default)]
    pub concurrency: u32,
    /// Bytes per ranged read at the end of the pull (as tuned or as told).
    #[serde(default)]
    pub range_bytes: u64,
}

impl HydrationReport {
    /// Fetch throughput in GB/s (10^9 bytes), zero when nothing was fetched.
    pub fn gb_per_s(&self) -> f64 {
        if self.seconds <= 0.0 || self.bytes_fetched == 0 {
            return 0.0;
        }
        self.bytes_fetched as f64 / 1e9 / self.seconds
    }
}

fn healthy_by_default() -> bool {
    true
}

/// One machine as the agent records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    pub app: AppName,
    pub model: AppName,
    pub revision: String,
    pub state: MachineState,
    /// The state the machine should reach; the supervisor works towards it.
    pub desired: MachineState,
    pub device: Device,
    /// The other cards of a machine that leases several GPUs of its host (tensor parallel,
    /// `colo deploy --gpus-per-machine`), all of `device`'s kind; empty for one card or a CPU
    /// slot. Held and given back with `device`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_devices: Vec<Device>,
    /// Catalogue kind of the leased GPUs (`l40s`); `None` on a CPU slot or a GPU the catalogue
    /// does not know.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// Host name of the agent that runs it.
    pub host: String,
    /// Region code of that host.
    pub region: String,
    /// `ip:port` where edges reach the engine once it listens (a forwarder in front of it on a
    /// host of a multi-host colo).
    pub addr: Option<String>,
    /// The engine's own address on its host, when it differs from `addr` (loopback behind a
    /// forwarder): where its agent checks and calls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_addr: Option<String>,
    /// Process id of the engine while it runs.
    pub pid: Option<u32>,
    /// How many times the engine was restarted after a crash.
    pub restarts: u32,
    pub last_error: Option<String>,
    pub hydration: Option<HydrationReport>,
    /// False from the first failed health check of a started engine until one passes again:
    /// edges route nothing to it meanwhile.
    #[serde(default = "healthy_by_default")]
    pub healthy: bool,
    /// The engine command of the app's deploy, when it brings its own engine.
    #[serde(default)]
    pub engine_cmd: Option<String>,
    /// The engine profile of the app's deploy, when it runs one other than colo's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::EngineSpec>,
    /// Milliseconds since the Unix epoch of the last state change.
    pub updated_at_ms: u64,
    /// How the last start went, phase by phase; absent before the first start.
    #[serde(default)]
    pub cold_start: Option<ColdStart>,
    /// The operator's labels (the machines API's metadata; `check_metadata` says what fits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Out of routing: edges send it nothing and neither wake nor stop it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// How far a start has got while the machine is starting (what `colo deploy` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StartProgress>,
}

/// A start under way: hydrating the weights into the host cache (bytes verified so far), or the
/// engine loading them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartProgress {
    pub phase: StartPhase,
    /// Bytes of the model in the host cache and verified (hydrating).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// When the phase began, ms since the Unix epoch.
    pub since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPhase {
    Hydrating,
    Loading,
}

impl fmt::Display for StartProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            StartPhase::Hydrating if self.bytes_total > 0 => {
                write!(f, "hydrating {}%", self.bytes_done.min(self.bytes_total) * 100 / self.bytes_total)
            }
            StartPhase::Hydrating => f.write_str("hydrating"),
            StartPhase::Loading => f.write_str("loading"),
        }
    }
}

/// Most metadata keys one machine holds.
pub const METADATA_MAX_KEYS: usize = 64;
/// Longest metadata key, in bytes.
pub const METADATA_MAX_KEY: usize = 64;
/// Longest metadata value, in bytes.
pub const METADATA_MAX_VALUE: usize = 1024;

/// Whether `key = value` may be a machine's metadata: keys of 1 to 64 ASCII letters, digits,
/// `_`, `-` and `.`, values of at most 1,024 bytes. The error names the limit.
pub fn check_metadata(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > METADATA_MAX_KEY {
        return Err(format!("key {key:?} is {} bytes; keys are 1 to {METADATA_MAX_KEY}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!("key {key:?} holds {c:?}; keys are ASCII letters, digits, '_', '-' and '.'"));
    }
    if value.len() > METADATA_MAX_VALUE {
        return Err(format!(
            "the value of {key:?} is {} bytes; the limit is {METADATA_MAX_VALUE}",
            value.len()
        ));
    }
    Ok(())
}

impl Machine {
    /// A machine just created on `host` for `app`, not started yet but meant to be: the rest
    /// (address, process, health, history) starts empty.
    pub fn new(id: String, app: AppName, model: AppName, revision: String, device: Device, host: String, region: String) -> Self {
        Machine {
            id,
            app,
            model,
            revision,
            state: MachineState::Created,
            desired: MachineState::Started,
            device,
            extra_devices: Vec::new(),
            gpu_kind: None,
            host,
            region,
            addr: None,
            engine_addr: None,
            pid: None,
            restarts: 0,
            last_error: None,
            hydration: None,
            healthy: true,
            engine_cmd: None,
            engine: None,
            updated_at_ms: 0,
            cold_start: None,
            metadata: BTreeMap::new(),
            cordoned: false,
            progress: None,
        }
    }

    /// Where its agent reaches the engine: its own address, or `addr` when that is the same.
    pub fn local_addr(&self) -> Option<&str> {
        self.engine_addr.as_deref().or(self.addr.as_deref())
    }

    /// Every device it leases (or last leased): `device`, then `extra_devices`.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        std::iter::once(&self.device).chain(&self.extra_devices)
    }

    /// Whether it leases (or last leased) `device`.
    pub fn uses(&self, device: &Device) -> bool {
        self.devices().any(|d| d == device)
    }

    /// Its devices for a table: `gpu0 (NVIDIA H100 80GB HBM3)`, or `gpu0+gpu1 (...)` for a
    /// machine of several cards.
    pub fn device_label(&self) -> String {
        match (&self.device, self.extra_devices.is_empty()) {
            (Device::Gpu { name, .. }, false) => {
                let cards: Vec<String> = self
                    .devices()
                    .map(|d| match d {
                        Device::Gpu { index, .. } => format!("gpu{index}"),
                        Device::Cpu { slot } => format!("cpu{slot}"),
                    })
                    .collect();
                format!("{} ({name})", cards.join("+"))
            }
            _ => self.device.to_string(),
        }
    }

    /// Whether the machine holds its device. A stopped machine gives it back (on a GPU host a
    /// whole card; scale to zero must not keep one) and leases one again when it starts, as
    /// does a machine that failed and is not being restarted; one stopped only because its
    /// agent shut down keeps it, being meant to run. `device` then names the last one held.
    pub fn holds_device(&self) -> bool {
        match self.state {
            MachineState::Destroyed | MachineState::Failed => false,
            MachineState::Stopped => self.desired == MachineState::Started,
            _ => true,
        }
    }
}

/// The phases of one machine start, in milliseconds, as the agent that ran it saw them. The
/// edge reads them (the request that woke the machine gets `colo-cold-start`) but never writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// Milliseconds since the Unix epoch when the start was asked for.
    pub requested_at_ms: u64,
    /// From the request to the supervisor taking it up.
    pub queued_ms: u64,
    /// Making the model's files present in the host cache (zero when they already were).
    pub hydrate_ms: u64,
    /// Bytes the hydration found in the host cache.
    #[serde(default)]
    pub bytes_from_cache: u64,
    /// Bytes the hydration read from peers.
    #[serde(default)]
    pub bytes_from_peer: u64,
    /// Bytes the hydration read from the origin store.
    #[serde(default)]
    pub bytes_from_origin: u64,
    /// From spawning the engine to its first passing health check.
    pub engine_load_ms: u64,
    /// How long the engine's load ran alongside the hydration (colo's engine starts loading
    /// weights as their bytes land): from its spawn to the last byte verified. The phases
    /// add up to the first response less this.
    #[serde(default)]
    pub overlap_ms: u64,
    /// From the request to the engine's first answer: its first passing health check.
    pub first_response_ms: u64,
    /// Whether this start woke a suspended engine (no hydration, no load) rather than starting
    /// one.
    #[serde(default)]
    pub from_suspended: bool,
}

impl ColdStart {
    /// Where the weights came from: `suspended` when a suspended engine was woken (they never
    /// left the machine), else where most of the hydrated bytes came from: `cache`, `peer` or
    /// `origin`.
    pub fn source(&self) -> &'static str {
        if self.from_suspended {
            "suspended"
        } else if self.bytes_from_origin > 0 && self.bytes_from_origin >= self.bytes_from_peer {
            "origin"
        } else if self.bytes_from_peer > 0 {
            "peer"
        } else {
            "cache"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineState::*;

    #[test]
    fn lifecycle_edges() {
        let allowed = [
            (Created, Starting),
            (Starting, Started),
            (Started, Stopping),
            (Stopping, Stopped),
            (Stopped, Starting),
            (Started, Starting),
            (Started, Failed),
            (Stopped, Destroyed),
        ];
        for (a, b) in allowed {
            assert!(a.can_go_to(b), "{a} -> {b}");
        }
        let refused = [(Destroyed, Starting), (Stopped, Started), (Created, Started), (Stopping, Started)];
        for (a, b) in refused {
            assert!(!a.can_go_to(b), "{a} -> {b}");
        }
        for state in [Created, Starting, Started, Stopping, Stopped, Suspended, Destroyed, Failed] {
            assert_eq!(MachineState::parse(state.as_str()), Some(state));
        }
    }
}
