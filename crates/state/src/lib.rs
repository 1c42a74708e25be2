//! Shared state of apps and machines behind one trait, so that every component reads and
//! writes it the same way whether colo runs on one machine or many.
//!
//! `Embedded` keeps the state in memory and persists it to one redb file in the data dir.

mod embedded;

pub use embedded::Embedded;

use async_trait::async_trait;
use colo_core::{App, AppName, Machine};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("state store: {0}")]
    Store(String),
    #[error("state record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
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
    /// A counter that changes after every write.
    fn changes(&self) -> watch::Receiver<u64>;
}
