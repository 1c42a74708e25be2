//! Where a pull reads bytes from: peer hosts of the same region that have the model's files
//! in their cache, spread range by range, and the origin store for everything else.
//!
//! A peer that fails once (refused connection, timeout, short body, wrong digest) is dropped
//! for the rest of the pull and what it did not deliver of its range goes to the origin, so a
//! dying peer costs one range's delay, not one per chunk.

use crate::peer::wire::{PeerModel, PEER_PREFIX};
use crate::{Store, StoreError};
use bytes::Bytes;
use colo_model::Manifest;
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a peer may take to say which files it has.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may take to answer one ranged read before the origin is asked instead.
const PEER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A ranged read's body, piece by piece as it arrives.
pub(crate) type Frames<E> = BoxStream<'static, Result<Bytes, E>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum From {
    Peer(usize),
    Origin,
}

struct Peer {
    base: String,
    files: HashSet<String>,
    down: AtomicBool,
}

pub(crate) struct Sources {
    store: Store,
    name: String,
    revision: String,
    peers: Vec<Peer>,
    http: reqwest::Client,
    token: Option<String>,
    next: AtomicUsize,
}

// === impl Sources ===

impl Sources {
    /// Asks every peer, at once, which of the model's files it holds; peers that do not
    /// answer in time are left out.
    pub(crate) async fn discover(
        store: &Store,
        manifest: &Manifest,
        peers: &[String],
        token: Option<String>,
        client: Option<reqwest::Client>,
    ) -> Self {
        let http = client.unwrap_or_else(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default()
        });
        let asks = peers.iter().map(|base| {
            let base = base.trim_end_matches('/').to_string();
            let url = format!("{base}{PEER_PREFIX}/{}/{}", manifest.name, manifest.revision);
            let request = with_token(http.get(url).timeout(DISCOVER_TIMEOUT), token.as_deref());
            async move {
                let answer = match request.send().await {
                    Ok(r) if r.status().is_success() => r.json::<PeerModel>().await.ok(),
                    Ok(r) => {
                        tracing::debug!(peer = %base, status = %r.status(), "peer does not have the model");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(peer = %base, error = %e, "peer did not answer");
                        None
                    }
                };
                answer.map(|model| Peer {
                    base,
                    files: model.files.into_iter().map(|f| f.path).collect(),
                    down: AtomicBool::new(false),
                })
            }
        });
        let peers: Vec<Peer> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .filter(|p| !p.files.is_empty())
            .collect();
        Self {
            store: store.clone(),
            name: manifest.name.clone(),
            revision: manifest.revision.clone(),
            peers,
            http,
            token,
            next: AtomicUsize::new(0),
        }
    }

    /// The next live peer that has `file`, round robin; the origin when none has it.
    pub(crate) fn pick(&self, file: &str) -> From {
        let n = self.peers.len();
        if n == 0 {
            return From::Origin;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&i| !self.peers[i].down.load(Ordering::Relaxed) && self.peers[i].files.contains(file))
            .map(From::Peer)
            .unwrap_or(From::Origin)
    }

    pub(crate) fn mark_down(&self, peer: usize, why: &str) {
        if let Some(p) = self.peers.get(peer) {
            if !p.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(peer = %p.base, reason = why, "peer dropped from this pull; reading from the origin instead");
            }
        }
    }

    /// Reads bytes `[start, end)` of `file` from the origin.
    pub(crate) async fn origin(&self, file: &str, start: u64, end: u64) -> Result<Bytes, StoreError> {
        let path = Store::file_path(&self.name, &self.revision, file);
        let bytes = self.store.read_range(&path, start..end).await?;
        if bytes.len() as u64 != end - start {
            return Err(StoreError::ShortRead {
                file: file.to_string(),
                start,
                got: bytes.len() as u64,
                expected: end - start,
            });
        }
        Ok(bytes)
    }

    /// Bytes `[start, end)` of `file` from the origin, as they arrive.
    pub(crate) async fn origin_stream(&self, file: &str, start: u64, end: u64) -> Result<Frames<StoreError>, StoreError> {
        let path = Store::file_path(&self.name, &self.revision, file);
        self.store.read_range_stream(&path, start..end).await
    }

    /// Bytes `[start, end)` of `file` from a peer, as they arrive; an error says why, for the
    /// log.
    pub(crate) async fn peer_stream(&self, peer: usize, file: &str, start: u64, end: u64) -> Result<Frames<String>, String> {
        let p = &self.peers[peer];
        let url = format!("{}{PEER_PREFIX}/{}/{}/files/{file}", p.base, self.name, self.revision);
        let request = self
            .http
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1))
            .timeout(PEER_READ_TIMEOUT);
        let response = with_token(request, self.token.as_deref()).send().await.map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(format!("answered {}", response.status()));
        }
        Ok(response.bytes_stream().map(|frame| frame.map_err(|e| e.to_string())).boxed())
    }
}

fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}
