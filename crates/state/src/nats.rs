//! The distributed state store: one JetStream KV bucket each for apps, machines and hosts, read
//! from an in-memory copy that KV watches keep current.
//!
//! Reads never touch the network, so they are fast and keep answering from the last known state
//! while NATS is unreachable (fail static). Writes go to NATS and wait for JetStream's
//! acknowledgement and then, up to `write_timeout` more, for the local copy to show them, so a
//! writer reads its own write unless its copy is still catching up after a reconnect; while
//! the connection is down they fail at once, and otherwise within `write_timeout`.

mod bucket;

use crate::key::escape_key;
use crate::{StateError, StateStore};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream, stream::DiscardPolicy, stream::StorageType};
use async_nats::{connection::State, ConnectOptions, Event, HeaderMap};
use async_trait::async_trait;
use bucket::{Bucket, Link};
use bytes::Bytes;
use colo_core::{App, AppName, HostRecord, Machine};
use futures::stream::{BoxStream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// How a `Nats` store connects and names its buckets.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Prefix of the bucket names (`<prefix>_apps`, `<prefix>_machines`, `<prefix>_hosts`), so
    /// that several colo clusters can share one NATS server. Letters, digits, `-` and `_`.
    pub bucket_prefix: String,
    /// How long a write waits for JetStream's acknowledgement before it fails.
    pub write_timeout: Duration,
    /// How long `connect` waits for the server, the buckets and the first full copy of the state.
    /// A resync after a reconnect gets the same time per bucket.
    pub connect_timeout: Duration,
    /// Name the server shows for this connection (its monitoring lists it).
    pub client_name: Option<String>,
    /// Replicas of buckets this client creates (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Wait between reconnect attempts after the first, which is immediate. Bounds how long a
    /// client stays on its last known state after the server is back.
    pub reconnect_delay: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            bucket_prefix: "colo".into(),
            write_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            client_name: None,
            replicas: 1,
            reconnect_delay: Duration::from_millis(500),
        }
    }
}

/// A message on a plain NATS subject (load reports, events): fire and forget, no history.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub subject: String,
    pub payload: Bytes,
}

/// The state store over NATS JetStream KV. Dropping it stops its watches.
pub struct Nats {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    write_timeout: Duration,
    apps: Arc<Bucket<App>>,
    machines: Arc<Bucket<Machine>>,
    hosts: Arc<Bucket<HostRecord>>,
    link: watch::Receiver<Link>,
    version: Arc<watch::Sender<u64>>,
    tasks: Vec<JoinHandle<()>>,
}

// === impl Nats ===

impl Nats {
    /// Connects to `url` (`nats://host:4222`, or several separated by commas), creates the
    /// buckets that are missing and waits until the copy holds every bucket's current state.
    /// Fails if the server cannot be reached within `options.connect_timeout`; after that, the
    /// client reconnects by itself for as long as it lives.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, StateError> {
        let unreachable = |reason: String| StateError::NatsUnreachable {
            url: url.to_string(),
            reason,
        };
        let failed = |op: &str, reason: String| StateError::Nats {
            url: url.to_string(),
            op: op.to_string(),
            reason,
        };
        let deadline = Instant::now() + options.connect_timeout;

        let (link_tx, link) = watch::channel(Link {
            connected: true,
            reconnects: 0,
        });
        let link_tx = Arc::new(link_tx);
        let events = link_tx.clone();
        let reconnect_delay = options.reconnect_delay;
        let mut connect = ConnectOptions::new()
            .connection_timeout(options.connect_timeout)
            .max_reconnects(None)
            // A fixed, short wait rather than async-nats's default backoff (up to 4 s), so that
            // copies converge soon after the server is back.
            .reconnect_delay_callback(move |attempts| if attempts <= 1 { Duration::ZERO } else { reconnect_delay })
            .event_callback(move |event| {
                let events = events.clone();
                async move { track(&events, &event) }
            });
        if let Some(name) = &options.client_name {
            connect = connect.name(name);
        }
        let client = match timeout(options.connect_timeout, connect.connect(url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} ms",
                    options.connect_timeout.as_millis()
                )))
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(options.write_timeout)
            .build(client.clone());

        let bucket = |what: &str| format!("{}_{what}", options.bucket_prefix);
        let apps = Arc::new(Bucket::new(bucket("apps")));
        let machines = Arc::new(Bucket::new(bucket("machines")));
        let hosts = Arc::new(Bucket::new(bucket("hosts")));
        for name in [&apps.name, &machines.name, &hosts.name] {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, ensure_bucket(&js, name, options.replicas)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(failed(&format!("creating KV bucket {name}"), reason)),
                Err(_) => return Err(unreachable(format!("no answer creating KV bucket {name}"))),
            }
        }

        let version = Arc::new(watch::channel(0).0);
        let mut synced = vec![apps.synced(), machines.synced(), hosts.synced()];
        let tasks = vec![
            tokio::spawn(
                apps.clone()
                    .follow(js.clone(), link.clone(), version.clone(), options.connect_timeout),
            ),
            tokio::spawn(
                machines
                    .clone()
                    .follow(js.clone(), link.clone(), version.clone(), options.connect_timeout),
            ),
            tokio::spawn(
                hosts
                    .clone()
                    .follow(js.clone(), link.clone(), version.clone(), options.connect_timeout),
            ),
        ];
        let store = Self {
            url: url.to_string(),
            client,
            js,
            write_timeout: options.write_timeout,
            apps,
            machines,
            hosts,
            link,
            version,
            tasks,
        };
        for rx in &mut synced {
            let left = deadline.saturating_duration_since(Instant::now());
            let reached = matches!(timeout(left, rx.wait_for(|&n| n > 0)).await, Ok(Ok(_)));
            if !reached {
                return Err(unreachable(format!(
                    "no full copy of the state within {} ms",
                    options.connect_timeout.as_millis()
                )));
            }
        }
        Ok(store)
    }

    /// Whether the connection to NATS is up right now. Reads work either way.
    pub fn connected(&self) -> bool {
        self.link.borrow().connected && self.client.connection_state() == State::Connected
    }

    /// How many times the client has come back after losing the server.
    pub fn reconnects(&self) -> u64 {
        self.link.borrow().reconnects
    }

    /// Sends `payload` on a plain subject (no history, no acknowledgement: for load reports and
    /// events, where the next report supersedes a lost one). Fails at once while disconnected.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), StateError> {
        self.ensure_connected()?;
        self.client
            .publish(subject.to_string(), payload)
            .await
            .map_err(|e| StateError::Nats {
                url: self.url.clone(),
                op: format!("publishing on {subject}"),
                reason: e.to_string(),
            })
    }

    /// Messages published on `subject` (wildcards `*` and `>` allowed) from when this returns:
    /// it returns once the server has the subscription (on this server; a cluster spreads
    /// interest to its other servers shortly after). The subscription survives reconnects;
    /// messages sent while disconnected are not delivered.
    pub async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, Published>, StateError> {
        self.ensure_connected()?;
        let failed = |reason: String| StateError::Nats {
            url: self.url.clone(),
            op: format!("subscribing to {subject}"),
            reason,
        };
        let subscriber = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| failed(e.to_string()))?;
        // The server handles one connection's operations in order, so once a message sent to
        // ourselves after the subscription comes back, the subscription is in place.
        let probe = self.client.new_inbox();
        let mut echo = self.client.subscribe(probe.clone()).await.map_err(|e| failed(e.to_string()))?;
        self.client.publish(probe, Bytes::new()).await.map_err(|e| failed(e.to_string()))?;
        if !matches!(timeout(self.write_timeout, echo.next()).await, Ok(Some(_))) {
            return Err(self.unreachable(format!("subscription not confirmed within {} ms", self.write_timeout.as_millis())));
        }
        Ok(subscriber
            .map(|m| Published {
                subject: m.subject.to_string(),
                payload: m.payload,
            })
            .boxed())
    }

    /// Waits until everything published so far has reached the server (bounded by the write timeout).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.ensure_connected()?;
        match timeout(self.write_timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.unreachable(e.to_string())),
            Err(_) => Err(self.unreachable(format!("no flush within {} ms", self.write_timeout.as_millis()))),
        }
    }

    fn unreachable(&self, reason: String) -> StateError {
        StateError::NatsUnreachable {
            url: self.url.clone(),
            reason,
        }
    }

    fn ensure_connected(&self) -> Result<(), StateError> {
        if self.connected() {
            Ok(())
        } else {
            Err(self.unreachable("not connected (reconnecting in the background); the last known state is still readable".into()))
        }
    }

    /// Puts (`Some`) or deletes (`None`) `name` in `bucket`, then waits for the copy to show it.
    async fn write<T: DeserializeOwned + Clone + Send + 'static>(
        &self,
        bucket: &Bucket<T>,
        name: &str,
        value: Option<Bytes>,
    ) -> Result<(), StateError> {
        self.ensure_connected()?;
        let subject = format!("{}{}", bucket.prefix, escape_key(name));
        let op = if value.is_some() { "put" } else { "delete" };
        let failed = |reason: String| StateError::Nats {
            url: self.url.clone(),
            op: format!("{op} {name:?} in KV bucket {}", bucket.name),
            reason,
        };
        let send = async {
            let ack = match value {
                Some(bytes) => self.js.publish(subject, bytes).await,
                None => {
                    let mut headers = HeaderMap::new();
                    headers.insert("KV-Operation", "DEL");
                    self.js.publish_with_headers(subject, headers, Bytes::new()).await
                }
            };
            ack?.await
        };
        // JetStream's own ack timeout is the same; the outer one also bounds the send itself.
        let no_ack = || self.unreachable(format!("no acknowledgement within {} ms", self.write_timeout.as_millis()));
        let ack = match timeout(self.write_timeout, send).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) if e.kind() == PublishErrorKind::TimedOut => return Err(no_ack()),
            Ok(Err(e)) if !self.connected() => return Err(self.unreachable(e.to_string())),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(no_ack()),
        };
        // The write is durable now, so it succeeded whatever the copy does: failing it would
        // have the caller undo or redo a write that happened. If the copy lags past the wait (a
        // resync after a reconnect), this client reads the old value until the copy catches
        // up; that breaks read-your-writes for a while, which is worth an operator's notice.
        if !bucket.wait_applied(ack.sequence, self.write_timeout).await {
            tracing::warn!(
                bucket = %bucket.name,
                name,
                wait_ms = self.write_timeout.as_millis() as u64,
                "write acknowledged but not yet in this client's copy; reads here show the old value until it catches up"
            );
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Records connection events: a `Connected` after a loss counts as a reconnect, which makes the
/// bucket copies resync.
fn track(link: &watch::Sender<Link>, event: &Event) {
    match event {
        Event::Connected => link.send_if_modified(|l| {
            if l.connected {
                return false;
            }
            l.connected = true;
            l.reconnects += 1;
            true
        }),
        Event::Disconnected | Event::Closed => link.send_if_modified(|l| std::mem::replace(&mut l.connected, false)),
        _ => false,
    };
}

/// Opens bucket `name`, creating it (one value per key, on disk) if it is missing. The stream is
/// laid out as every KV client expects (`KV_<name>` over `$KV.<name>.>`), so the `nats` CLI can
/// inspect it; it is created here rather than through async-nats's KV helper because that helper
/// first reads account fields that servers before 2.10 do not send.
async fn ensure_bucket(js: &jetstream::Context, name: &str, replicas: usize) -> Result<(), String> {
    let stream = format!("KV_{name}");
    if js.get_stream(&stream).await.is_ok() {
        return Ok(());
    }
    let config = stream::Config {
        name: stream.clone(),
        description: Some("colo state".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => Ok(()),
        // Another client may have created it meanwhile.
        Err(e) => js.get_stream(&stream).await.map(|_| ()).map_err(|_| e.to_string()),
    }
}

fn encode(value: &impl Serialize) -> Bytes {
    // Apps, machines and hosts are plain data: serialisation cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("state records serialise"))
}

#[async_trait]
impl StateStore for Nats {
    async fn apps(&self) -> Result<Vec<App>, StateError> {
        Ok(self.apps.values())
    }

    async fn app(&self, name: &AppName) -> Result<Option<App>, StateError> {
        Ok(self.apps.get(&escape_key(name.as_str())))
    }

    async fn put_app(&self, app: &App) -> Result<(), StateError> {
        self.write(&self.apps, app.name.as_str(), Some(encode(app))).await
    }

    async fn delete_app(&self, name: &AppName) -> Result<bool, StateError> {
        let existed = self.apps.get(&escape_key(name.as_str())).is_some();
        self.write(&self.apps, name.as_str(), None).await?;
        Ok(existed)
    }

    async fn machines(&self) -> Result<Vec<Machine>, StateError> {
        Ok(self.machines.values())
    }

    async fn put_machine(&self, machine: &Machine) -> Result<(), StateError> {
        self.write(&self.machines, &machine.id, Some(encode(machine))).await
    }

    async fn delete_machine(&self, id: &str) -> Result<(), StateError> {
        self.write(&self.machines, id, None).await
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StateError> {
        Ok(self.hosts.values())
    }

    async fn put_host(&self, host: &HostRecord) -> Result<(), StateError> {
        self.write(&self.hosts, &host.name, Some(encode(host))).await
    }

    async fn delete_host(&self, name: &str) -> Result<bool, StateError> {
        let existed = self.hosts.get(&escape_key(name)).is_some();
        self.write(&self.hosts, name, None).await?;
        Ok(existed)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
