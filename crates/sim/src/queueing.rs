//! Closed forms of queueing theory the simulator is checked against.

/// Erlang C: the probability that an arrival waits in an M/M/c queue with offered load
/// `a = lambda / mu` (requires `a < c`).
pub fn erlang_c(c: u32, a: f64) -> f64 {
    // Erlang B by its recurrence, then C from B: stable for large c.
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / c as f64;
    b / (1.0 - rho * (1.0 - b))
}

/// Mean wait in queue of M/M/c, in the unit of `mean_service`.
pub fn mmc_mean_wait(c: u32, arrival_rate: f64, mean_service: f64) -> f64 {
    let a = arrival_rate * mean_service;
    erlang_c(c, a) * mean_service / (c as f64 - a)
}

/// Mean wait in queue of M/D/1 (Pollaczek-Khinchine), in the unit of `service`.
pub fn md1_mean_wait(arrival_rate: f64, service: f64) -> f64 {
    let rho = arrival_rate * service;
    rho * service / (2.0 * (1.0 - rho))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // M/M/1: the wait probability is the utilisation.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        // M/M/1 mean wait: rho / (mu - lambda).
        assert!((mmc_mean_wait(1, 0.5, 1.0) - 1.0).abs() < 1e-12);
        // A textbook M/M/2 with a = 1.5: C = 0.642857...
        assert!((erlang_c(2, 1.5) - 0.642_857_142_857).abs() < 1e-9);
        assert!((md1_mean_wait(0.5, 1.0) - 0.5).abs() < 1e-12);
    }
}
