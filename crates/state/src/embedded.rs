//! The single-machine state store: an in-memory copy for reads, a redb file for durability.
//!
//! A write commits to the file first (on a blocking thread, since a commit waits for the
//! disk), then updates the copy, then bumps the change counter, so a watcher the bump wakes
//! reads the new value, and a failed commit changes nothing. Writes run one at a time from
//! commit to bump, so the copy ends as the file does when two writers race.

use crate::{StateError, StateStore};
use async_trait::async_trait;
use colo_core::{App, AppName, HostRecord, Machine};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");

pub struct Embedded {
    shared: Arc<Shared>,
}

/// What a write's blocking task needs; it runs to its end even if the caller stops waiting.
struct Shared {
    db: Database,
    cache: Mutex<Cache>,
    version: watch::Sender<u64>,
    /// Held by a write from its commit to its bump.
    writer: Mutex<()>,
}

#[derive(Default)]
struct Cache {
    apps: BTreeMap<String, App>,
    machines: BTreeMap<String, Machine>,
    hosts: BTreeMap<String, HostRecord>,
}

fn store_err(e: impl std::fmt::Display) -> StateError {
    StateError::Store(e.to_string())
}

// === impl Embedded ===

impl Embedded {
    /// Opens (or creates) the state file. A second process on the same file is refused.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |reason: String| StateError::Open {
            path: path.display().to_string(),
            reason,
        };
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => open_err("already in use by another colo process on this data dir".into()),
            other => open_err(other.to_string()),
        })?;
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(APPS).map_err(store_err)?;
        txn.open_table(MACHINES).map_err(store_err)?;
        txn.open_table(HOSTS).map_err(store_err)?;
        txn.commit().map_err(store_err)?;

        let cache = Cache {
            apps: load(&db, APPS)?,
            machines: load(&db, MACHINES)?,
            hosts: load(&db, HOSTS)?,
        };
        let (version, _) = watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                cache: Mutex::new(cache),
                version,
                writer: Mutex::new(()),
            }),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.shared.cache()
    }

    /// Puts (`Some`) or removes (`None`) `key` in `table`, then applies the same change to the
    /// in-memory copy with `apply`, then bumps the change counter. Returns what `apply` returns.
    async fn write<R: Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
        value: Option<Vec<u8>>,
        apply: impl FnOnce(&mut Cache) -> R + Send + 'static,
    ) -> Result<R, StateError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            commit(&shared.db, table, &key, value.as_deref())?;
            let applied = apply(&mut shared.cache());
            shared.version.send_modify(|v| *v += 1);
            Ok(applied)
        })
        .await
        .map_err(|e| StateError::Store(format!("a write's task ended early: {e}")))?
    }
}

// === impl Shared ===

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The lock is never held across a panic-prone call, so poisoning cannot happen; recover anyway.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One redb transaction that puts or removes one key, committed to disk.
fn commit(db: &Database, table: TableDefinition<&str, &[u8]>, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
    let txn = db.begin_write().map_err(store_err)?;
    {
        let mut t = txn.open_table(table).map_err(store_err)?;
        match value {
            Some(bytes) => {
                t.insert(key, bytes).map_err(store_err)?;
            }
            None => {
                t.remove(key).map_err(store_err)?;
            }
        }
    }
    txn.commit().map_err(store_err)
}

fn load<T: DeserializeOwned>(db: &Database, table: TableDefinition<&str, &[u8]>) -> Result<BTreeMap<String, T>, StateError> {
    let txn = db.begin_read().map_err(store_err)?;
    let t = txn.open_table(table).map_err(store_err)?;
    let mut out = BTreeMap::new();
    for row in t.iter().map_err(store_err)? {
        let (k, v) = row.map_err(store_err)?;
        let value = serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt {
            key: k.value().to_string(),
            reason: e.to_string(),
        })?;
        out.insert(k.value().to_string(), value);
    }
    Ok(out)
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    // Apps, machines and hosts are plain data: serialisation cannot fail.
    serde_json::to_vec(value).expect("state records serialise")
}

#[async_trait]
impl StateStore for Embedded {
    async fn apps(&self) -> Result<Vec<App>, StateError> {
        Ok(self.cache().apps.values().cloned().collect())
    }

    async fn app(&self, name: &AppName) -> Result<Option<App>, StateError> {
        Ok(self.cache().apps.get(name.as_str()).cloned())
    }

    async fn put_app(&self, app: &App) -> Result<(), StateError> {
        let app = app.clone();
        let name = app.name.to_string();
        self.write(APPS, name.clone(), Some(encode(&app)), move |c| {
            c.apps.insert(name, app);
        })
        .await
    }

    async fn delete_app(&self, name: &AppName) -> Result<bool, StateError> {
        let name = name.to_string();
        self.write(APPS, name.clone(), None, move |c| c.apps.remove(&name).is_some()).await
    }

    async fn machines(&self) -> Result<Vec<Machine>, StateError> {
        Ok(self.cache().machines.values().cloned().collect())
    }

    async fn put_machine(&self, machine: &Machine) -> Result<(), StateError> {
        let machine = machine.clone();
        self.write(MACHINES, machine.id.clone(), Some(encode(&machine)), move |c| {
            c.machines.insert(machine.id.clone(), machine);
        })
        .await
    }

    async fn delete_machine(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_string();
        self.write(MACHINES, id.clone(), None, move |c| {
            c.machines.remove(&id);
        })
        .await
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StateError> {
        Ok(self.cache().hosts.values().cloned().collect())
    }

    async fn put_host(&self, host: &HostRecord) -> Result<(), StateError> {
        let host = host.clone();
        self.write(HOSTS, host.name.clone(), Some(encode(&host)), move |c| {
            c.hosts.insert(host.name.clone(), host);
        })
        .await
    }

    async fn delete_host(&self, name: &str) -> Result<bool, StateError> {
        let name = name.to_string();
        self.write(HOSTS, name.clone(), None, move |c| c.hosts.remove(&name).is_some())
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::{Device, MachineState};

    fn machine(id: &str) -> Machine {
        Machine {
            state: MachineState::Started,
            addr: Some("127.0.0.1:1".into()),
            ..Machine::new(
                id.into(),
                AppName::new("a").unwrap(),
                AppName::new("m").unwrap(),
                "r".into(),
                Device::Cpu { slot: 0 },
                "h".into(),
                "local".into(),
            )
        }
    }

    fn host(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            region: "local".into(),
            addr: "http://127.0.0.1:1".into(),
            devices: vec![Device::Cpu { slot: 0 }],
            cached_models: vec!["m@r".into()],
            heartbeat_ms: 1,
            lease_ms: 10,
            lost: false,
        }
    }

    fn app(version: u64) -> App {
        App {
            name: AppName::new("a").unwrap(),
            model: AppName::new("m").unwrap(),
            revision: "r".into(),
            machines: 1,
            deployed_at_ms: 5,
            version,
            gpus_per_machine: 1,
            gpu: None,
            soft_limit: None,
            hard_limit: None,
            keys: Vec::new(),
            autostop_secs: None,
            min_running: 0,
            autostop_to: Default::default(),
            route_weights: None,
            regions: Default::default(),
            deploy_tokens: Vec::new(),
            engine_cmd: None,
            demand: None,
            placement: None,
            route: None,
            engine: None,
        }
    }

    /// A watcher that the n-th write wakes reads at least that write: the copy is updated
    /// before the counter moves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_reads_the_write_that_woke_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = std::sync::Arc::new(Embedded::open(&dir.path().join("state.redb")).unwrap());
        let mut changes = state.changes();
        let watcher = {
            let state = state.clone();
            tokio::spawn(async move {
                let name = AppName::new("a").unwrap();
                loop {
                    let seen = *changes.borrow_and_update();
                    if seen > 0 {
                        let version = state.app(&name).await.unwrap().map_or(0, |a| a.version);
                        assert!(version >= seen, "woken by write {seen}, read version {version}");
                    }
                    if seen == 200 {
                        return;
                    }
                    changes.changed().await.unwrap();
                }
            })
        };
        for version in 1..=200 {
            state.put_app(&app(version)).await.unwrap();
        }
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn survives_reopen_and_signals_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let state = Embedded::open(&path).unwrap();
            let mut changes = state.changes();
            let app = App {
                name: AppName::new("a").unwrap(),
                model: AppName::new("m").unwrap(),
                revision: "r".into(),
                machines: 1,
                deployed_at_ms: 5,
                version: 1,
                gpus_per_machine: 1,
                gpu: None,
                soft_limit: None,
                hard_limit: None,
                keys: Vec::new(),
                autostop_secs: None,
                min_running: 0,
                autostop_to: Default::default(),
                route_weights: None,
                regions: Default::default(),
                deploy_tokens: Vec::new(),
                engine_cmd: None,
                demand: None,
                placement: None,
                route: None,
                engine: None,
            };
            state.put_app(&app).await.unwrap();
            state.put_machine(&machine("m1")).await.unwrap();
            state.put_machine(&machine("m2")).await.unwrap();
            state.delete_machine("m2").await.unwrap();
            state.put_host(&host("h1")).await.unwrap();
            state.put_host(&host("h2")).await.unwrap();
            assert!(state.delete_host("h2").await.unwrap());
            assert!(!state.delete_host("h2").await.unwrap());
            assert!(changes.has_changed().unwrap());
            assert_eq!(*changes.borrow_and_update(), 8);
            assert!(Embedded::open(&path).is_err(), "a second open of the same file must be refused");
        }
        let state = Embedded::open(&path).unwrap();
        assert_eq!(state.apps().await.unwrap().len(), 1);
        let machines = state.machines().await.unwrap();
        assert_eq!(machines, vec![machine("m1")]);
        assert_eq!(state.hosts().await.unwrap(), vec![host("h1")]);
    }
}
