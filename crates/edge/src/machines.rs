//! What the edge may ask of the agents, as the process that runs it supplies: agents in the
//! same process for `colo up`, agents' HTTP APIs for `colo edge`.

/// Wake a stopped or suspended machine for waiting requests, stop or suspend an idle one. Calls
/// return at once; the outcome reaches the edge through the route table.
pub trait Machines: Send + Sync {
    fn start(&self, machine_id: &str);
    fn stop(&self, machine_id: &str);
    fn suspend(&self, machine_id: &str);
}
