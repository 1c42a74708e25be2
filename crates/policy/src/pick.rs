//! Choosing the machine for one request among an app's started machines.
//!
//! This first policy is least in-flight: the machine with the fewest requests the edge has
//! sent it and not yet seen answered. Ties go to the machine that was least recently picked
//! (a round robin among equals), so that idle machines share a light load instead of one
//! machine taking it all. The selector has no side effects: the caller commits the pick.

/// What the policy knows about one machine at the moment of the pick.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub machine_id: &'a str,
    /// Requests in flight to this machine from this edge.
    pub in_flight: u32,
    /// When the edge last picked this machine, in any monotonic unit the caller chooses.
    pub last_picked: u64,
    /// Whether health checks pass; unhealthy machines are never picked.
    pub healthy: bool,
}

/// Returns the index in `candidates` of the machine that should take the request, or `None`
/// when no healthy machine exists (the caller then holds the request or wakes a machine).
pub fn pick_machine(candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.healthy)
        .min_by_key(|(_, c)| (c.in_flight, c.last_picked, c.machine_id))
        .map(|(idx, _)| idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(machine_id: &str, in_flight: u32, last_picked: u64, healthy: bool) -> Candidate<'_> {
        Candidate {
            machine_id,
            in_flight,
            last_picked,
            healthy,
        }
    }

    #[test]
    fn picks_by_table() {
        let cases: Vec<(&str, Vec<Candidate>, Option<&str>)> = vec![
            ("empty", vec![], None),
            ("all unhealthy", vec![c("a", 0, 0, false)], None),
            (
                "least in flight",
                vec![c("a", 3, 0, true), c("b", 1, 9, true), c("c", 2, 0, true)],
                Some("b"),
            ),
            (
                "tie: least recently picked",
                vec![c("a", 1, 5, true), c("b", 1, 2, true)],
                Some("b"),
            ),
            (
                "unhealthy skipped even if idle",
                vec![c("a", 0, 0, false), c("b", 7, 0, true)],
                Some("b"),
            ),
            ("full tie: stable by id", vec![c("b", 0, 0, true), c("a", 0, 0, true)], Some("a")),
        ];
        for (what, candidates, expected) in cases {
            let got = pick_machine(&candidates).map(|i| candidates[i].machine_id);
            assert_eq!(got, expected, "{what}");
        }
    }
}
