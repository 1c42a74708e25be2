//! What the edge may ask of the agents, as the process that runs it supplies: agents in the
//! same process for `colo up`, agents' HTTP APIs for `colo edge`.

/// Told why a start the edge asked for was refused (its host has no device free, say).
pub type Refused = Box<dyn FnOnce(String) + Send>;

/// Wake a stopped or suspended machine for waiting requests, stop or suspend an idle one. Calls
/// return at once; the outcome reaches the edge through the route table, except a start the
/// machine's agent refuses, which is told to `refused` so the edge can wake another machine or
/// answer its held requests with the reason.
pub trait Machines: Send + Sync {
    fn start(&self, machine_id: &str, refused: Refused);
    fn stop(&self, machine_id: &str);
    fn suspend(&self, machine_id: &str);
}
