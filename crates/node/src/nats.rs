//! The daemons' side of NATS: connecting with a client name, and carrying the edges'
//! load-report gossip (`colo_edge::gossip::Bus`) over plain subjects.

use crate::error::NodeError;
use bytes::Bytes;
use colo_edge::gossip::{Bus, Message};
use colo_state::{Nats, NatsOptions, StateError};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;

/// Creates the daemon's data dir, connects to NATS at `url` as `client_name`, and returns the
/// connection with the data dir's canonical path.
pub(crate) async fn connect(url: &str, data_dir: &Path, client_name: &str) -> Result<(Arc<Nats>, std::path::PathBuf), NodeError> {
    std::fs::create_dir_all(data_dir).map_err(NodeError::io(format!("creating {}", data_dir.display())))?;
    let options = NatsOptions {
        client_name: Some(client_name.to_string()),
        ..NatsOptions::default()
    };
    let nats = Nats::connect(url, options).await?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(NodeError::io(format!("resolving {}", data_dir.display())))?;
    Ok((Arc::new(nats), data_dir))
}

/// NATS as the edges' gossip bus.
pub struct NatsBus(pub Arc<Nats>);

impl Bus for NatsBus {
    type Error = StateError;

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), StateError> {
        self.0.publish(subject, payload).await
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Message>, StateError> {
        let messages = self.0.subscribe(subject).await?;
        Ok(messages
            .map(|m| Message {
                subject: m.subject,
                payload: m.payload,
            })
            .boxed())
    }
}
