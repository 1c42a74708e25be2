//! Autostop: which of an app's started machines to stop because they sat idle, keeping a
//! minimum running. Pure: the caller passes each machine's in-flight count and idle time.

/// What the caller knows of one started machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    pub in_flight: u32,
    /// Milliseconds since the machine last had a request in flight (or since it started).
    pub idle_ms: u64,
}

/// Indexes of the machines to stop: idle for at least `after_ms` with nothing in flight, the
/// longest idle first, never leaving fewer than `min_running` started.
pub fn idle_to_stop(machines: &[Idle], after_ms: u64, min_running: u32) -> Vec<usize> {
    let mut idle: Vec<usize> = (0..machines.len())
        .filter(|&i| machines[i].in_flight == 0 && machines[i].idle_ms >= after_ms)
        .collect();
    idle.sort_by_key(|&i| std::cmp::Reverse(machines[i].idle_ms));
    let may_stop = machines.len().saturating_sub(min_running as usize);
    idle.truncate(may_stop);
    idle
}

#[cfg(test)]
mod tests {
    use super::{idle_to_stop, Idle};

    #[test]
    fn stops_by_table() {
        let m = |in_flight, idle_ms| Idle { in_flight, idle_ms };
        let cases: Vec<(Vec<Idle>, u64, u32, Vec<usize>)> = vec![
            (vec![], 1000, 0, vec![]),
            (vec![m(0, 999)], 1000, 0, vec![]),
            (vec![m(0, 1000)], 1000, 0, vec![0]),
            (vec![m(1, 5000)], 1000, 0, vec![]),
            (vec![m(0, 5000)], 1000, 1, vec![]),
            (vec![m(0, 2000), m(0, 5000), m(0, 3000)], 1000, 1, vec![1, 2]),
            (vec![m(0, 2000), m(2, 5000), m(0, 3000)], 1000, 0, vec![2, 0]),
        ];
        for (machines, after, min, expected) in cases {
            assert_eq!(
                idle_to_stop(&machines, after, min),
                expected,
                "{machines:?} after {after} min {min}"
            );
        }
    }
}
