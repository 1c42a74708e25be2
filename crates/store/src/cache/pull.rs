//! Single-flight pulls: every caller that asks a host cache for the same model revision while
//! it is being pulled joins the one download in flight, and can wait for the whole model or
//! for the first bytes of one file (a loader reading a safetensors header early). `hydrate`
//! is the one pull without sharing, for callers that manage the cache themselves.

use super::key::Key;
use super::HostCache;
use crate::hydrate::{file_prefixes, Board, FilePrefixes, HydrateOptions};
use crate::{Progress, Store, StoreError};
use colo_core::HydrationReport;
use colo_model::Manifest;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

type Outcome = Option<Result<HydrationReport, Arc<StoreError>>>;

/// One pull in flight.
#[derive(Debug)]
pub(crate) struct Flight {
    prefixes: FilePrefixes,
    /// What the pull holds and is reading, for the peers of the region.
    pub(crate) board: Arc<Board>,
    done: watch::Sender<Outcome>,
}

/// A caller's handle on a pull (its own, or one it joined).
#[derive(Clone, Debug)]
pub struct Pull {
    flight: Arc<Flight>,
    joined: bool,
    dir: PathBuf,
}

/// Pulls `manifest`'s model into `cache`, reading from `opts.peers` first and `store` for the
/// rest. Returns what came from where. This is one pull with no sharing: use
/// [`HostCache::pull`] to share one download between callers and keep the cache's capacity.
pub async fn hydrate(
    store: &Store,
    manifest: &Manifest,
    cache: &HostCache,
    opts: &HydrateOptions,
    progress: Progress,
) -> Result<HydrationReport, StoreError> {
    let dir = cache.model_dir(&manifest.name, &manifest.revision);
    crate::hydrate::run(
        store,
        manifest,
        &dir,
        opts,
        progress,
        &file_prefixes(manifest),
        &Board::new(manifest),
    )
    .await
}

// === impl HostCache (pulls) ===

impl HostCache {
    /// Pulls `manifest`'s model into the cache, or joins the pull of it already in flight on
    /// this cache. The pull runs in its own task: it finishes even if every handle is dropped.
    /// Room is made first (see [`HostCache::reserve`]); `progress` sees only a new pull's bytes.
    pub fn pull(&self, store: &Store, manifest: &Manifest, opts: &HydrateOptions, progress: Progress) -> Pull {
        let key: Key = (manifest.name.clone(), manifest.revision.clone());
        let dir = self.model_dir(&manifest.name, &manifest.revision);
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            return Pull {
                flight: flight.clone(),
                joined: true,
                dir,
            };
        }
        let flight = Arc::new(Flight {
            prefixes: file_prefixes(manifest),
            board: Arc::new(Board::new(manifest)),
            done: watch::channel(None).0,
        });
        flights.insert(key.clone(), flight.clone());
        drop(flights);

        let (cache, store, manifest, opts, task_flight) = (self.clone(), store.clone(), manifest.clone(), opts.clone(), flight.clone());
        tokio::spawn(async move {
            let result = async {
                let evicted = {
                    let (cache, manifest) = (cache.clone(), manifest.clone());
                    tokio::task::spawn_blocking(move || cache.reserve(&manifest))
                        .await
                        .map_err(|e| StoreError::Internal(format!("making room: {e}")))??
                };
                if !evicted.is_empty() {
                    tracing::info!(model = %manifest.name, evicted = evicted.len(), "made room in the host cache");
                }
                let dir = cache.model_dir(&manifest.name, &manifest.revision);
                crate::hydrate::run(&store, &manifest, &dir, &opts, progress, &task_flight.prefixes, &task_flight.board).await
            }
            .await;
            if let Err(e) = &result {
                tracing::warn!(model = %manifest.name, revision = %manifest.revision, error = %e, "pull failed");
            }
            // The result is published before the flight leaves the table, so a caller either
            // joins and sees it, or finds the marker (or the error's leftovers) on disk.
            task_flight.done.send_replace(Some(result.map_err(Arc::new)));
            cache.inner.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
        Pull {
            flight,
            joined: false,
            dir,
        }
    }

    /// The board of the pull of `name`@`revision` in flight on this cache, if one is.
    pub(crate) fn board(&self, name: &str, revision: &str) -> Option<Arc<Board>> {
        let key: Key = (name.to_string(), revision.to_string());
        let flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.get(&key).map(|f| f.board.clone())
    }
}

// === impl Pull ===

impl Pull {
    /// Whether this handle joined a pull another caller started.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Verified bytes from the start of `file`, as they grow.
    pub fn file_progress(&self, file: &str) -> Option<watch::Receiver<u64>> {
        self.flight.prefixes.get(file).map(|tx| tx.subscribe())
    }

    /// Where `file`'s bytes are written until all of them are verified (then it is renamed to
    /// its own name in the model's directory).
    pub fn partial_path(&self, file: &str) -> PathBuf {
        crate::hydrate::partial_path(&self.dir.join(file))
    }

    /// The model's directory in the cache, which fills as the pull goes.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Waits for the whole pull. A joined handle gets the same report as the one that started.
    pub async fn finish(&self) -> Result<HydrationReport, StoreError> {
        let mut rx = self.flight.done.subscribe();
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::Internal("the pull task ended without a result".into()))?;
        match outcome.as_ref() {
            Some(Ok(report)) => Ok(report.clone()),
            Some(Err(e)) => Err(StoreError::Shared(e.clone())),
            None => Err(StoreError::Internal("the pull task ended without a result".into())),
        }
    }

    /// Waits until the first `bytes` of `file` are verified, then opens the file (under its
    /// partial name while the rest is still coming). Fails if the pull fails first.
    pub async fn open_prefix(&self, file: &str, bytes: u64) -> Result<std::fs::File, StoreError> {
        let Some(mut prefix) = self.file_progress(file) else {
            return Err(StoreError::Internal(format!("{file} is not a file of this model")));
        };
        let mut done = self.flight.done.subscribe();
        // The watch guards must not live across an await (they are not Send): decide first.
        let pull_ended = tokio::select! {
            ready = prefix.wait_for(|n| *n >= bytes) => ready.is_err(),
            _ = done.wait_for(Option::is_some) => true,
        };
        if pull_ended {
            // Fails if the pull failed; otherwise every byte is there.
            self.finish().await?;
        }
        let final_path = self.dir.join(file);
        crate::hydrate::open_filling(&final_path).map_err(|e| StoreError::io(final_path.display(), e))
    }
}
