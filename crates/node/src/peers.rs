//! Where each agent finds the peers of its region, whose caches it reads before the store: in
//! one process, the other agents of the process; as a daemon, the live hosts of its region in
//! the state, followed as they come and go.

use colo_agent::{Agent, PeerConfig};
use colo_control::auth::TokenFile;
use colo_state::StateStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often a daemon agent reads the host records again for its peer list.
const REFRESH_EVERY: Duration = Duration::from_secs(3);

/// Gives each of `agents` the others of its region as peers, and the caches outside the
/// process at `outside`. They all answer on this process's API at `api_addr`, each under
/// `/v1/hosts/<name>`.
pub(crate) fn set_in_process(agents: &[Arc<Agent>], api_addr: SocketAddr, token: &str, outside: &[String]) {
    for agent in agents {
        let urls = agents
            .iter()
            .filter(|peer| peer.region() == agent.region() && peer.host() != agent.host())
            .map(|peer| format!("http://{api_addr}/v1/hosts/{}", peer.host()))
            .chain(outside.iter().map(|url| url.trim_end_matches('/').to_string()))
            .collect();
        agent.set_peers(PeerConfig {
            urls,
            token: Some(token.to_string()),
            client: None,
            own_url: Some(format!("http://{api_addr}/v1/hosts/{}", agent.host())),
        });
    }
}

/// Keeps `agent`'s peer list (the other live hosts of its region, by the host records in
/// `state`) current, every [`REFRESH_EVERY`]. `own_addr` is the agent's own API URL, which the
/// list leaves out.
pub(crate) fn spawn_refresh(
    agent: Arc<Agent>,
    state: Arc<dyn StateStore>,
    token: Arc<TokenFile>,
    own_addr: String,
    client: reqwest::Client,
) {
    tokio::spawn(async move {
        loop {
            if let Ok(hosts) = state.hosts().await {
                let now = colo_core::unix_ms();
                let urls = hosts
                    .iter()
                    .filter(|h| h.region == agent.region() && h.addr != own_addr && h.live(now))
                    .map(|h| h.addr.clone())
                    .collect();
                agent.set_peers(PeerConfig {
                    urls,
                    token: Some(token.current()),
                    client: Some(client.clone()),
                    own_url: Some(own_addr.clone()),
                });
            }
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    });
}
