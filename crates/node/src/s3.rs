//! The read-only S3 endpoint over a host's model cache, for engines that load weights from S3
//! (vLLM, boto3): bucket `colo`, keys `<model>/<revision or latest>/<file>`, access key `colo`,
//! and the process's token as the secret.

use crate::error::NodeError;
use colo_agent::Agent;
use std::net::SocketAddr;

/// Serves `agent`'s host cache on `addr` in a task; returns where it listens.
pub(crate) async fn serve_cache(addr: SocketAddr, agent: &Agent, secret: &str) -> Result<SocketAddr, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(NodeError::io(format!("binding the S3 endpoint to {addr}")))?;
    let bound = listener.local_addr().map_err(NodeError::io("reading the S3 endpoint's address"))?;
    let config = colo_store::S3Config {
        bucket: "colo".into(),
        access_key: "colo".into(),
        secret_key: secret.to_string(),
    };
    let (cache, store) = (agent.cache().clone(), agent.store().clone());
    tokio::spawn(async move {
        if let Err(e) = colo_store::serve_s3(listener, cache, store, colo_store::HydrateOptions::default(), config).await {
            tracing::error!(error = %e, "S3 endpoint stopped");
        }
    });
    Ok(bound)
}
