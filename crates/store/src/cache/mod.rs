//! The host cache: where hydrated models live on a host's disk, one directory per revision,
//! with a capacity, pins for models that machines use, and least-recently-used eviction of
//! the rest. Pulls go through [`HostCache::pull`], which shares one download between callers.

pub(crate) mod boot;
mod key;
mod pull;

pub(crate) use key::valid_component;
pub use pull::{hydrate, Pull};

use crate::StoreError;
use boot::{written_this_boot, COMPLETE_MARKER};
use colo_model::Manifest;
use key::Key;
use pull::Flight;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Clone, Debug)]
pub struct HostCache {
    root: PathBuf,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bytes the cache may hold; unlimited when `None`.
    capacity: Option<u64>,
    pins: Mutex<HashMap<Key, usize>>,
    /// Pulls in flight, one per revision (see `pull`).
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    /// Held while deciding what to evict, so two pulls never count the same free bytes.
    room: Mutex<()>,
}

/// One model revision in the cache, as `colo cache ls` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub name: String,
    pub revision: String,
    /// Bytes on disk (partial files count at their full, reserved size).
    pub bytes: u64,
    /// Every file is present and verified.
    pub complete: bool,
    /// Machines (or other holders) using it now; a pinned model is never evicted.
    pub pins: usize,
    /// A pull of it is running.
    pub pulling: bool,
    /// Milliseconds since the Unix epoch of its last use.
    pub last_used_ms: u64,
}

/// Keeps a model revision pinned in the cache while it lives.
#[derive(Debug)]
pub struct PinGuard {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.inner.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.key);
            }
        }
    }
}

// === impl HostCache ===

impl HostCache {
    /// A cache with no capacity limit.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            inner: Arc::default(),
        }
    }

    /// A cache that holds at most `capacity` bytes, evicting unpinned models as needed.
    pub fn with_capacity(root: impl Into<PathBuf>, capacity: Option<u64>) -> Self {
        Self {
            root: root.into(),
            inner: Arc::new(Inner {
                capacity,
                ..Default::default()
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn capacity(&self) -> Option<u64> {
        self.inner.capacity
    }

    /// The directory that holds (or will hold) one revision of a model.
    pub fn model_dir(&self, name: &str, revision: &str) -> PathBuf {
        self.root.join("models").join(name).join(revision)
    }

    /// The model directory if every file of `manifest` is present and verified (in this boot;
    /// see the boot stamp in `cache::boot`).
    pub fn complete_dir(&self, manifest: &Manifest) -> Option<PathBuf> {
        let dir = self.model_dir(&manifest.name, &manifest.revision);
        boot::complete(&dir).then_some(dir)
    }

    /// The manifest of a complete cached revision, read from its marker.
    pub fn cached_manifest(&self, name: &str, revision: &str) -> Option<Manifest> {
        if !valid_component(name) || !valid_component(revision) {
            return None;
        }
        let dir = self.model_dir(name, revision);
        if !written_this_boot(&dir) {
            return None;
        }
        let bytes = std::fs::read(dir.join(COMPLETE_MARKER)).ok()?;
        Manifest::from_json(&bytes).ok()
    }

    /// Pins a model revision: it is not evicted while the guard lives. Counts as a use.
    pub fn pin(&self, name: &str, revision: &str) -> PinGuard {
        let key = (name.to_string(), revision.to_string());
        *self
            .inner
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        self.touch(name, revision);
        PinGuard {
            inner: self.inner.clone(),
            key,
        }
    }

    /// Records a use of a cached revision (for least-recently-used eviction).
    pub fn touch(&self, name: &str, revision: &str) {
        let marker = self.model_dir(name, revision).join(COMPLETE_MARKER);
        if let Ok(file) = std::fs::File::options().append(true).open(&marker) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Every model revision in the cache, complete or not, least recently used first.
    pub fn entries(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let models = self.root.join("models");
        let pins = self.inner.pins.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let flights: Vec<Key> = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for name_dir in read_dirs(&models)? {
            for rev_dir in read_dirs(&name_dir)? {
                let name = file_name(&name_dir);
                let revision = file_name(&rev_dir);
                let marker = rev_dir.join(COMPLETE_MARKER);
                let complete = boot::complete(&rev_dir);
                let used_at = std::fs::metadata(if complete { &marker } else { &rev_dir })
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let key = (name.clone(), revision.clone());
                out.push(CacheEntry {
                    bytes: dir_bytes(&rev_dir)?,
                    complete,
                    pins: pins.get(&key).copied().unwrap_or(0),
                    pulling: flights.contains(&key),
                    last_used_ms: used_at,
                    name,
                    revision,
                });
            }
        }
        out.sort_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Bytes the cache holds now.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.entries()?.iter().map(|e| e.bytes).sum())
    }

    /// Removes a model's cached revisions (only `revision` when given). A pinned or pulling
    /// revision is refused, and nothing is removed then. Returns what was removed.
    pub fn evict(&self, name: &str, revision: Option<&str>) -> Result<Vec<CacheEntry>, StoreError> {
        let _room = self.inner.room.lock().unwrap_or_else(|p| p.into_inner());
        let chosen: Vec<CacheEntry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.name == name && revision.is_none_or(|r| r == e.revision))
            .collect();
        if chosen.is_empty() {
            return Err(StoreError::NotCached {
                name: name.to_string(),
                revision: revision.map(String::from),
            });
        }
        if let Some(busy) = chosen.iter().find(|e| e.pins > 0 || e.pulling) {
            return Err(StoreError::InUse {
                name: busy.name.clone(),
                revision: busy.revision.clone(),
                pins: busy.pins,
                pulling: busy.pulling,
            });
        }
        for entry in &chosen {
            self.remove(entry)?;
        }
        Ok(chosen)
    }

    fn remove(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let dir = self.model_dir(&entry.name, &entry.revision);
        std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(dir.display(), e))?;
        // The name's directory goes too once its last revision has.
        let _ = std::fs::remove_dir(self.root.join("models").join(&entry.name));
        tracing::info!(model = %entry.name, revision = %entry.revision, bytes = entry.bytes, "evicted from the host cache");
        Ok(())
    }

    /// Makes room for `manifest`'s model by evicting unpinned models, least recently used
    /// first. Refuses (evicting nothing) when the models in use leave too little room.
    pub fn reserve(&self, manifest: &Manifest) -> Result<Vec<CacheEntry>, StoreError> {
        let Some(capacity) = self.inner.capacity else {
            return Ok(Vec::new());
        };
        let _room = self.inner.room.lock().unwrap_or_else(|p| p.into_inner());
        let model = format!("{}@{}", manifest.name, short(&manifest.revision));
        let total = manifest.total_bytes();
        if total > capacity {
            return Err(StoreError::CacheTooSmall {
                model,
                bytes: total,
                capacity,
            });
        }
        let entries = self.entries()?;
        let this = |e: &CacheEntry| e.name == manifest.name && e.revision == manifest.revision;
        let present = entries.iter().filter(|e| this(e)).map(|e| e.bytes).sum::<u64>();
        let needed = total.saturating_sub(present);
        let mut used: u64 = entries.iter().map(|e| e.bytes).sum();
        let evictable: Vec<&CacheEntry> = entries.iter().filter(|e| !this(e) && e.pins == 0 && !e.pulling).collect();
        let freeable: u64 = evictable.iter().map(|e| e.bytes).sum();
        if used - freeable + needed > capacity {
            let held: Vec<String> = entries
                .iter()
                .filter(|e| !this(e) && (e.pins > 0 || e.pulling))
                .map(|e| format!("{}@{} {}", e.name, short(&e.revision), crate::fmt_bytes(e.bytes)))
                .collect();
            return Err(StoreError::CacheFull {
                model,
                needed,
                capacity,
                used,
                in_use: if held.is_empty() { "none".into() } else { held.join(", ") },
            });
        }
        let mut evicted = Vec::new();
        for entry in evictable {
            if used + needed <= capacity {
                break;
            }
            self.remove(entry)?;
            used -= entry.bytes;
            evicted.push(entry.clone());
        }
        Ok(evicted)
    }
}

/// The first 12 characters of a revision, for messages.
fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir.display(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir.display(), e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn dir_bytes(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            // Removed meanwhile (an eviction or a finished rename): counts as empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(current.display(), e)),
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    Ok(total)
}
