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
    let taken = machines
        .iter()
        .filter(|m| m.holds_device())
        .map(|m| m.devices().count())
        .sum::<usize>();
    devices.len().saturating_sub(taken)
}

/// `n` of a host's `devices` that none of its `machines` holds, for one machine: of GPU `kind`
/// when given, and all of one kind (the cards of a tensor-parallel machine must match); a CPU
/// slot only alone. `preferred` (a machine's last devices, whose engine state a restart may
/// find warm) when they are all free, else the first that fit in device order. `None` when
/// not enough are free.
pub fn pick_devices(
    catalogue: &Catalogue,
    devices: &[Device],
    machines: &[Machine],
    kind: Option<&str>,
    n: usize,
    preferred: &[Device],
) -> Option<Vec<Device>> {
    let n = n.max(1);
    let taken: Vec<&Device> = machines.iter().filter(|m| m.holds_device()).flat_map(|m| m.devices()).collect();
    let fits = |d: &Device| {
        devices.contains(d)
            && !taken.contains(&d)
            && (n == 1 || matches!(d, Device::Gpu { .. }))
            && kind.is_none_or(|k| device_kind(catalogue, d).as_deref() == Some(k))
    };
    let same_kind = |group: &[&Device]| {
        let kinds: Vec<Option<String>> = group.iter().map(|d| device_kind(catalogue, d)).collect();
        kinds.windows(2).all(|w| w[0] == w[1])
    };
    if preferred.len() == n && preferred.iter().all(fits) && same_kind(&preferred.iter().collect::<Vec<_>>()) {
        return Some(preferred.to_vec());
    }
    let free: Vec<&Device> = devices.iter().filter(|d| fits(d)).collect();
    // The first free device whose kind has `n` free, then the first `n - 1` others of its kind.
    free.iter().find_map(|first| {
        let first_kind = device_kind(catalogue, first);
        let group: Vec<Device> = free
            .iter()
            .filter(|d| device_kind(catalogue, d) == first_kind)
            .take(n)
            .map(|d| (*d).clone())
            .collect();
        (group.len() == n).then_some(group)
    })
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

    #[test]
    fn a_machine_of_several_cards_takes_them_all_of_one_kind() {
        let catalogue = Catalogue::builtin();
        let h100 = |i| gpu(i, "NVIDIA H100 80GB HBM3", 81559);
        let l40s = |i| gpu(i, "NVIDIA L40S", 46068);
        let devices = [l40s(0), h100(1), h100(2), l40s(3), h100(4)];
        let holding = |held: &[Device]| {
            let mut m = Machine::new(
                "m".into(),
                AppName::new("a").unwrap(),
                AppName::new("a").unwrap(),
                "r".into(),
                held[0].clone(),
                "h".into(),
                "fra".into(),
            );
            m.extra_devices = held[1..].to_vec();
            m
        };
        let pick = |machines: &[Machine], kind, n, preferred: &[Device]| pick_devices(&catalogue, &devices, machines, kind, n, preferred);
        // Two cards: the first kind that has two free, in device order (l40s 0 and 3).
        assert_eq!(pick(&[], None, 2, &[]), Some(vec![l40s(0), l40s(3)]));
        assert_eq!(pick(&[], Some("h100-80gb-sxm"), 3, &[]), Some(vec![h100(1), h100(2), h100(4)]));
        assert_eq!(pick(&[], Some("h100-80gb-sxm"), 4, &[]), None);
        // A machine of two cards holds both: one H100 is left.
        let busy = [holding(&[h100(1), h100(4)])];
        assert_eq!(free_devices(&devices, &busy), 3);
        assert_eq!(pick(&busy, Some("h100-80gb-sxm"), 2, &[]), None);
        assert_eq!(pick(&busy, Some("h100-80gb-sxm"), 1, &[]), Some(vec![h100(2)]));
        // Its last cards again when free; others when one of them is taken.
        assert_eq!(pick(&[], None, 2, &[h100(4), h100(2)]), Some(vec![h100(4), h100(2)]));
        let one_taken = [holding(&[h100(2)])];
        assert_eq!(pick(&one_taken, None, 2, &[h100(4), h100(2)]), Some(vec![l40s(0), l40s(3)]));
        // Cards of two kinds never make one machine, and CPU slots only go alone.
        assert_eq!(pick(&[], None, 2, &[l40s(0), h100(1)]), Some(vec![l40s(0), l40s(3)]));
        let cpus = [Device::Cpu { slot: 0 }, Device::Cpu { slot: 1 }];
        assert_eq!(pick_devices(&catalogue, &cpus, &[], None, 2, &[]), None);
        assert_eq!(
            pick_devices(&catalogue, &cpus, &[], None, 1, &[]),
            Some(vec![Device::Cpu { slot: 0 }])
        );
    }
}
