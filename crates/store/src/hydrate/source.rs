//! Where a pull reads bytes from: the origin store, and peer hosts of the same region, each of
//! which holds some or all of the model's chunks (a peer still pulling serves the chunks it
//! has verified) and says which through its chunk map.
//!
//! Which chunk comes from where is the schedule's choice (`swarm.rs`); this module only talks
//! to the sources. A peer read that brings no byte for `PEER_STALL` fails, so a stalled peer
//! costs one stall, after which the pull drops it.

use crate::peer::wire::{PeerChunks, PEER_PREFIX};
use crate::store::until_stalled;
use crate::{Store, StoreError};
use bytes::Bytes;
use colo_model::Manifest;
use futures::stream::{BoxStream, StreamExt};
use std::time::Duration;

/// How long a peer may take to send its chunk map.
const MAP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer read may go without a byte (its answer's head included) before the peer
/// counts as stalled.
pub(crate) const PEER_STALL: Duration = Duration::from_secs(5);

/// A ranged read's body, piece by piece as it arrives.
pub(crate) type Frames<E> = BoxStream<'static, Result<Bytes, E>>;

pub(crate) struct Sources {
    store: Store,
    name: String,
    revision: String,
    /// Base URLs of the peers, trailing slash removed.
    peers: Vec<String>,
    http: reqwest::Client,
    token: Option<String>,
}

// === impl Sources ===

impl Sources {
    pub(crate) fn new(
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
        Self {
            store: store.clone(),
            name: manifest.name.clone(),
            revision: manifest.revision.clone(),
            peers: peers.iter().map(|p| p.trim_end_matches('/').to_string()).collect(),
            http,
            token,
        }
    }

    pub(crate) fn peers(&self) -> &[String] {
        &self.peers
    }

    /// Asks every peer at once which chunks of the revision it holds and is reading: its map,
    /// `Ok(None)` when it has none of the revision, `Err(())` when it does not answer in time.
    pub(crate) async fn maps(&self) -> Vec<Result<Option<PeerChunks>, ()>> {
        let asks = self.peers.iter().map(|base| {
            let url = format!("{base}{PEER_PREFIX}/{}/{}/chunks", self.name, self.revision);
            let request = with_token(self.http.get(url).timeout(MAP_TIMEOUT), self.token.as_deref());
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => r.json::<PeerChunks>().await.map(Some).map_err(|_| ()),
                    Ok(r) => {
                        tracing::trace!(peer = %base, status = %r.status(), "peer has none of the model");
                        Ok(None)
                    }
                    Err(e) => {
                        tracing::trace!(peer = %base, error = %e, "peer did not answer");
                        Err(())
                    }
                }
            }
        });
        futures::future::join_all(asks).await
    }

    pub(crate) fn peer_url(&self, peer: usize) -> &str {
        self.peers.get(peer).map_or("", String::as_str)
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

    /// Bytes `[start, end)` of `file` from a peer, as they arrive; a body that brings no byte
    /// for `PEER_STALL` ends with an error. An error says why, for the log.
    pub(crate) async fn peer_stream(&self, peer: usize, file: &str, start: u64, end: u64) -> Result<Frames<String>, String> {
        let base = self.peer_url(peer);
        let url = format!("{base}{PEER_PREFIX}/{}/{}/files/{file}", self.name, self.revision);
        let request = self
            .http
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
        let response = tokio::time::timeout(PEER_STALL, with_token(request, self.token.as_deref()).send())
            .await
            .map_err(|_| format!("sent no answer in {PEER_STALL:?}"))?
            .map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(format!("answered {}", response.status()));
        }
        let body = response.bytes_stream().map(|frame| frame.map_err(|e| e.to_string())).boxed();
        Ok(until_stalled(body, PEER_STALL, || format!("stalled: no byte for {PEER_STALL:?}")))
    }
}

fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}
