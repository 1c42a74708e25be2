//! Shared state of apps, machines and hosts behind one trait, so that every component reads and
//! writes it the same way whether colo runs on one machine or many.
//!
//! `Embedded` keeps the state in memory and persists it to one redb file in the data dir.
//! `Nats` keeps it in NATS JetStream KV buckets and serves reads from an in-memory copy that KV
//! watches keep current, so that readers keep working from the last known state while NATS is
//! unreachable.

#![forbid(unsafe_code)]

mod embedded;
mod key;
mod nats;

pub use embedded::Embedded;
pub use key::escape_key;
pub use nats::{Nats, NatsOptions, Published};

use async_trait::async_trait;
use colo_core::{App, AppName, HostRecord, Machine};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("state store: {0}")]
    Store(String),
    #[error("state record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// NATS cannot be reached (never was, or the connection is down): reads still serve the last
    /// known state, writes fail until it is back.
    #[error("NATS at {url} is unreachable: {reason}")]
    NatsUnreachable { url: String, reason: String },
    /// NATS answered, but not with success.
    #[error("NATS at {url}: {op}: {reason}")]
    Nats { url: String, op: String, reason: String },
}

/// Reads and writes of the shared state. Every write bumps the counter seen by `changes()`,
/// which is how edges learn that their route table is stale.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    async fn apps(&self) -> Result<Vec<App>, StateError>;
    async fn app(&self, name: &AppName) -> Result<Option<App>, StateError>;
    async fn put_app(&self, app: &App) -> Result<(), StateError>;
    /// Returns whether the app existed.
    async fn delete_app(&self, name: &AppName) -> Result<bool, StateError>;
    async fn machines(&self) -> Result<Vec<Machine>, StateError>;
    async fn put_machine(&self, machine: &Machine) -> Result<(), StateError>;
    async fn delete_machine(&self, id: &str) -> Result<(), StateError>;
    /// Every registered host, lost or not; `HostRecord::expired` says whose lease has run out.
    async fn hosts(&self) -> Result<Vec<HostRecord>, StateError>;
    /// Registers a host or renews its record (a heartbeat is a put).
    async fn put_host(&self, host: &HostRecord) -> Result<(), StateError>;
    /// Returns whether the host was registered.
    async fn delete_host(&self, name: &str) -> Result<bool, StateError>;
    /// A counter that changes after every write (for `Nats`: every write seen by its watches,
    /// from any client, and every resync after a reconnect).
    fn changes(&self) -> watch::Receiver<u64>;
}
