//! One KV bucket's in-memory copy and the task that keeps it current.
//!
//! The copy is built from a snapshot (an ordered consumer that delivers the last message of every
//! key) and then follows the same consumer for changes, so there is no gap between the two. After
//! a reconnect the task throws the consumer away and builds a fresh snapshot, which replaces the
//! copy whole: keys deleted during the outage disappear even if their delete markers were since
//! purged, and a server that lost its store is not mistaken for one that kept it.

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

/// Whether the client is connected, and how many times it has come back after losing the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub connected: bool,
    pub reconnects: u64,
}

/// The copy of one bucket. Keys are the escaped KV keys.
pub(crate) struct Bucket<T> {
    /// KV bucket name (`colo_machines`).
    pub name: String,
    /// Subject prefix of its keys (`$KV.colo_machines.`).
    pub prefix: String,
    entries: Mutex<BTreeMap<String, T>>,
    /// Stream sequence of the newest change applied to the copy; writers wait on it to read their
    /// own writes. It may go down after a resync against a server that lost its store.
    applied: watch::Sender<u64>,
    /// How many full snapshots have replaced the copy (the first one included).
    synced: watch::Sender<u64>,
    _values: PhantomData<fn() -> T>,
}

// === impl Bucket ===

impl<T: DeserializeOwned + Clone + Send + 'static> Bucket<T> {
    pub fn new(name: String) -> Self {
        Self {
            prefix: format!("$KV.{name}."),
            name,
            entries: Mutex::new(BTreeMap::new()),
            applied: watch::channel(0).0,
            synced: watch::channel(0).0,
            _values: PhantomData,
        }
    }

    pub fn entries(&self) -> MutexGuard<'_, BTreeMap<String, T>> {
        // No code panics while holding the lock, so poisoning cannot happen; recover anyway.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<T> {
        self.entries().get(key).cloned()
    }

    pub fn values(&self) -> Vec<T> {
        self.entries().values().cloned().collect()
    }

    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Waits (at most `limit`) until the copy has applied stream sequence `revision`, so that a
    /// writer reads its own write. Returns whether it got there.
    pub async fn wait_applied(&self, revision: u64, limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let reached = matches!(timeout(limit, applied.wait_for(|&seen| seen >= revision)).await, Ok(Ok(_)));
        reached
    }

    /// Keeps the copy current for as long as the task lives: snapshot, follow, and after every
    /// reconnect (or a consumer that fails) a fresh snapshot. `changed` is bumped for every
    /// applied change and every snapshot.
    pub async fn follow(
        self: Arc<Self>,
        js: jetstream::Context,
        mut link: watch::Receiver<Link>,
        changed: Arc<watch::Sender<u64>>,
        limit: Duration,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            // Wait for a connection; the reconnect count read here is the one this snapshot serves.
            let seen = match link.wait_for(|l| l.connected).await {
                Ok(l) => l.reconnects,
                Err(_) => return,
            };
            let mut messages = match self.snapshot(&js, limit).await {
                Ok((fresh, last, messages)) => {
                    *self.entries() = fresh;
                    self.applied.send_replace(last);
                    self.synced.send_modify(|n| *n += 1);
                    changed.send_modify(|v| *v += 1);
                    backoff = Duration::from_millis(50);
                    messages
                }
                Err(reason) => {
                    tracing::warn!(bucket = %self.name, %reason, "state snapshot failed; retrying");
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(Ok(message)) => {
                            if let Some(seq) = self.apply(&message) {
                                self.applied.send_modify(|a| *a = (*a).max(seq));
                                changed.send_modify(|v| *v += 1);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(bucket = %self.name, error = %e, "state watch failed; resyncing");
                            break;
                        }
                        None => break,
                    },
                    gone = link.changed() => {
                        if gone.is_err() {
                            return;
                        }
                        if link.borrow().reconnects != seen {
                            tracing::info!(bucket = %self.name, "reconnected to NATS; resyncing state");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Reads the last entry of every key into a fresh map, within `limit`. Returns the map, the
    /// newest stream sequence in it and the consumer, which goes on delivering later changes.
    async fn snapshot(
        &self,
        js: &jetstream::Context,
        limit: Duration,
    ) -> Result<(BTreeMap<String, T>, u64, consumer::push::Ordered), String> {
        let deadline = Instant::now() + limit;
        let work = async {
            let stream = js.get_stream(format!("KV_{}", self.name)).await.map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: js.client().new_inbox(),
                    description: Some("colo state copy".into()),
                    filter_subject: format!("{}>", self.prefix),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    replay_policy: consumer::ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut remaining = consumer.cached_info().num_pending;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            let mut fresh = BTreeMap::new();
            let mut last = 0;
            while remaining > 0 {
                let message = match messages.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("consumer closed during the snapshot".into()),
                };
                let info = message.info().map_err(|e| e.to_string())?;
                remaining = info.pending;
                last = last.max(info.stream_sequence);
                if let Some(key) = message.subject.strip_prefix(self.prefix.as_str()) {
                    match decode::<T>(&self.name, key, operation(&message), &message.payload) {
                        Some(value) => fresh.insert(key.to_string(), value),
                        None => fresh.remove(key),
                    };
                }
            }
            Ok((fresh, last, messages))
        };
        timeout(deadline - Instant::now(), work)
            .await
            .unwrap_or_else(|_| Err(format!("no full snapshot within {} ms", limit.as_millis())))
    }

    /// Applies one watched change; returns its stream sequence.
    fn apply(&self, message: &jetstream::Message) -> Option<u64> {
        let seq = message.info().ok()?.stream_sequence;
        let key = message.subject.strip_prefix(self.prefix.as_str())?;
        let value = decode::<T>(&self.name, key, operation(message), &message.payload);
        let mut entries = self.entries();
        match value {
            Some(value) => entries.insert(key.to_string(), value),
            None => entries.remove(key),
        };
        Some(seq)
    }
}

/// What a KV entry does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Put,
    /// `DEL` or `PURGE` (from any KV client), or a server's marker for an entry removed by limits.
    Remove,
}

fn operation(message: &jetstream::Message) -> Operation {
    let Some(headers) = message.headers.as_ref() else {
        return Operation::Put;
    };
    match headers.get("KV-Operation").map(|v| v.as_str()) {
        Some("DEL" | "PURGE") => Operation::Remove,
        Some(_) => Operation::Put,
        // Servers from 2.11 mark entries removed by limits with a reason instead.
        None if headers.get("Nats-Marker-Reason").is_some() => Operation::Remove,
        None => Operation::Put,
    }
}

/// The value a change leaves under its key: `None` for deletions and for records that do not
/// parse (logged, and left out rather than stopping the copy for every other key).
fn decode<T: DeserializeOwned>(bucket: &str, key: &str, op: Operation, payload: &Bytes) -> Option<T> {
    if op != Operation::Put {
        return None;
    }
    match serde_json::from_slice(payload) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(bucket, key, error = %e, "state record does not parse; left out");
            None
        }
    }
}
