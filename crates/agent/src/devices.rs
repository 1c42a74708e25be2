//! Device discovery: NVIDIA GPUs through NVML when the driver is present, CPU slots otherwise.

use colo_core::Device;

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
}
