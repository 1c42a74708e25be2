//! The hosts and edges of one `colo up`: one host and one edge, or a fleet's hosts (each with
//! its own directory under `hosts/<name>`) and its edges (one per region when it names none).

use crate::config::UpConfig;
use colo_core::Device;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CPU slots of a fleet host that does not say.
const FLEET_CPU_SLOTS: u32 = 2;

/// One host this process runs an agent for.
pub(crate) struct HostPlan {
    pub name: String,
    pub region: String,
    /// Machine logs go under it, the host cache in `cache/` beside them.
    pub dir: PathBuf,
    pub devices: Vec<Device>,
}

/// What `colo up` runs.
pub(crate) struct Layout {
    pub hosts: Vec<HostPlan>,
    /// (region, address) of each edge, the one at `edge_addr` first.
    pub edges: Vec<(String, SocketAddr)>,
    /// Added to each request an edge sends to another region.
    pub inter_region_delay: Duration,
}

/// The layout of `config`, whose fleet (if any) has been validated.
pub(crate) fn plan(config: &UpConfig, data_dir: &Path) -> Layout {
    let Some(fleet) = &config.fleet else {
        return Layout {
            hosts: vec![HostPlan {
                name: crate::hostname(),
                region: config.region.clone(),
                dir: data_dir.to_path_buf(),
                devices: colo_agent::discover_devices(config.cpu_slots),
            }],
            edges: vec![(config.region.clone(), config.edge_addr)],
            inter_region_delay: Duration::ZERO,
        };
    };
    let hosts: Vec<HostPlan> = fleet
        .hosts
        .iter()
        .map(|h| HostPlan {
            name: h.name.clone(),
            region: h.region.clone(),
            dir: data_dir.join("hosts").join(&h.name),
            devices: (0..h.cpu_slots.unwrap_or(FLEET_CPU_SLOTS))
                .map(|slot| Device::Cpu { slot })
                .collect(),
        })
        .collect();
    let any_port = SocketAddr::new(config.edge_addr.ip(), 0);
    let edges = if fleet.edges.is_empty() {
        // One edge per run of hosts of one region, in the order the file lists them: fleet
        // files list a region's hosts together.
        let mut regions: Vec<&str> = hosts.iter().map(|h| h.region.as_str()).collect();
        regions.dedup();
        regions
            .into_iter()
            .enumerate()
            .map(|(i, region)| (region.to_string(), if i == 0 { config.edge_addr } else { any_port }))
            .collect()
    } else {
        fleet
            .edges
            .iter()
            // validate() refused addresses that do not parse; a free port stands in for none.
            .map(|edge| {
                (
                    edge.region.clone(),
                    edge.addr.as_deref().and_then(|a| a.parse().ok()).unwrap_or(any_port),
                )
            })
            .collect()
    };
    Layout {
        hosts,
        edges,
        inter_region_delay: Duration::from_millis(fleet.inter_region_delay_ms),
    }
}
