//! Device discovery: NVIDIA GPUs through NVML when the driver is present, CPU slots otherwise;
//! or GPUs the operator declares.

use colo_core::{Catalogue, Device};

/// Lists the devices machines can lease. With no NVIDIA driver (or no GPU), offers
/// `cpu_slots` CPU slots instead, each one a whole device to the scheduler.
pub fn discover_devices(cpu_slots: u32) -> Vec<Device> {
    match gpus() {
        Ok(gpus) if !gpus.is_empty() => gpus,
        Ok(_) => cpu(cpu_slots),
        Err(reason) => {
            tracing::info!(%reason, slots = cpu_slots, "no NVIDIA GPU found; offering CPU slots");
            cpu(cpu_slots)
        }
    }
}

/// GPUs the operator declares (`colo agent --gpus l40s=2`) instead of discovering them: for
/// hosts whose GPUs NVML cannot see, and for tests on machines without any. Each card gets its
/// kind's catalogue name and memory, so control and placement read it as that kind. An engine
/// is told its card's index as for a discovered one; colo's engine built without CUDA computes
/// on the CPU whatever it is told.
pub fn declared_gpus(catalogue: &Catalogue, counts: &[(String, u32)]) -> Result<Vec<Device>, String> {
    let mut out = Vec::new();
    for (kind, n) in counts {
        let Ok(spec) = catalogue.get(kind) else {
            let known: Vec<&str> = catalogue.kinds.iter().map(|k| k.kind.as_str()).collect();
            return Err(format!("{kind:?} is not a GPU kind colo knows ({})", known.join(", ")));
        };
        let memory_mib = spec.usable_mib.unwrap_or((spec.memory_gb * 1e9 / (1024.0 * 1024.0)) as u64);
        for _ in 0..*n {
            out.push(Device::Gpu {
                index: out.len() as u32,
                name: spec.name.clone(),
                memory_mib,
            });
        }
    }
    if out.is_empty() {
        return Err("no GPUs declared (every count is 0)".into());
    }
    Ok(out)
}

fn cpu(slots: u32) -> Vec<Device> {
    (0..slots.max(1)).map(|slot| Device::Cpu { slot }).collect()
}

fn gpus() -> Result<Vec<Device>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let name = device.name().unwrap_or_else(|_| "unknown".into());
        let memory_mib = device.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0);
        out.push(Device::Gpu { index, name, memory_mib });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_fallback_offers_whole_slots() {
        let devices = super::cpu(3);
        assert_eq!(devices.len(), 3);
        assert_eq!(super::cpu(0).len(), 1, "at least one slot");
    }

    #[test]
    fn declared_gpus_read_as_their_kind() {
        let catalogue = colo_core::Catalogue::builtin();
        let devices = super::declared_gpus(&catalogue, &[("l40s".into(), 2), ("a10".into(), 1)]).unwrap();
        let kinds: Vec<&str> = devices
            .iter()
            .map(|d| match d {
                colo_core::Device::Gpu { name, memory_mib, .. } => catalogue.kind_of_device(name, *memory_mib).unwrap().kind.as_str(),
                colo_core::Device::Cpu { .. } => "cpu",
            })
            .collect();
        assert_eq!(kinds, ["l40s", "l40s", "a10"]);
        let indices: Vec<u32> = devices
            .iter()
            .filter_map(|d| match d {
                colo_core::Device::Gpu { index, .. } => Some(*index),
                colo_core::Device::Cpu { .. } => None,
            })
            .collect();
        assert_eq!(indices, [0, 1, 2]);
        let err = super::declared_gpus(&catalogue, &[("l40x".into(), 1)]).unwrap_err();
        assert!(err.contains("\"l40x\" is not a GPU kind") && err.contains("l40s"), "{err}");
        assert!(super::declared_gpus(&catalogue, &[("l40s".into(), 0)]).is_err());
    }
}
