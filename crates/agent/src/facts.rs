//! What a host's devices are in catalogue terms, and how many are free: one answer for the
//! agent (its own devices) and for control (a host known from its record in the state).

use colo_core::{Catalogue, Device, Machine};

/// The catalogue kind of a device (`l40s`); `None` for CPU slots and GPUs the catalogue does
/// not know.
pub fn device_kind(catalogue: &Catalogue, device: &Device) -> Option<String> {
    match device {
        Device::Gpu { name, memory_mib, .. } => catalogue.kind_of_device(name, *memory_mib).map(|k| k.kind.clone()),
        Device::Cpu { .. } => None,
    }
}

/// The catalogue kinds of `devices`' GPUs, sorted, each once (empty for CPU slots).
pub fn gpu_kinds(catalogue: &Catalogue, devices: &[Device]) -> Vec<String> {
    let mut kinds: Vec<String> = devices.iter().filter_map(|d| device_kind(catalogue, d)).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// How many of a host's `devices` no machine holds, given the host's `machines`
/// (`Machine::holds_device`: destroyed, stopped and failed machines hold none).
pub fn free_devices(devices: &[Device], machines: &[Machine]) -> usize {
    let taken = machines.iter().filter(|m| m.holds_device()).count();
    devices.len().saturating_sub(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::AppName;

    fn gpu(index: u32, name: &str, memory_mib: u64) -> Device {
        Device::Gpu {
            index,
            name: name.into(),
            memory_mib,
        }
    }

    #[test]
    fn kinds_are_sorted_and_each_once() {
        let catalogue = Catalogue::builtin();
        let devices = [
            gpu(0, "NVIDIA L40S", 46068),
            gpu(1, "NVIDIA A10", 23028),
            gpu(2, "NVIDIA L40S", 46068),
            gpu(3, "Some Unknown GPU", 1),
            Device::Cpu { slot: 0 },
        ];
        assert_eq!(gpu_kinds(&catalogue, &devices), ["a10", "l40s"]);
        assert_eq!(device_kind(&catalogue, &devices[0]).as_deref(), Some("l40s"));
        assert_eq!(device_kind(&catalogue, &devices[3]), None);
        assert_eq!(device_kind(&catalogue, &devices[4]), None);
        assert!(gpu_kinds(&catalogue, &[Device::Cpu { slot: 0 }]).is_empty());
    }

    #[test]
    fn only_machines_meant_to_run_hold_a_device() {
        use colo_core::MachineState::{self, *};
        let devices = [Device::Cpu { slot: 0 }, Device::Cpu { slot: 1 }];
        let machine = |(state, desired)| Machine {
            state,
            desired,
            ..Machine::new(
                "m".into(),
                AppName::new("a").unwrap(),
                AppName::new("a").unwrap(),
                "r".into(),
                Device::Cpu { slot: 0 },
                "h".into(),
                "fra".into(),
            )
        };
        // ((state, desired) of each machine, free devices)
        let cases: &[(&[(MachineState, MachineState)], usize)] = &[
            (&[], 2),
            (&[(Started, Started)], 1),
            (&[(Started, Started), (Destroyed, Destroyed)], 1),
            // Scaled to zero, and failed for good: both give their device back.
            (&[(Stopped, Stopped), (Failed, Started)], 2),
            // Stopped by a shutdown of its agent, or about to start: still its device.
            (&[(Stopped, Started)], 1),
            (&[(Suspended, Suspended), (Stopping, Stopped)], 0),
            (&[(Started, Started), (Started, Started), (Started, Started)], 0),
        ];
        for (states, free) in cases {
            let machines: Vec<Machine> = states.iter().map(|s| machine(*s)).collect();
            assert_eq!(free_devices(&devices, &machines), *free, "{states:?}");
        }
    }
}
