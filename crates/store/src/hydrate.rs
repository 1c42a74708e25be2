//! Hydration: making a model's files present in the host cache.
//!
//! Every chunk is read with its own ranged GET, many at once, verified against the manifest's
//! BLAKE3 digest, and written in place into a preallocated `.colo-partial` file. The index of
//! each verified chunk is then appended to a `.colo-chunks` record beside it, so a pull that is
//! killed resumes with only the missing chunks. A file is renamed to its real name only when
//! all its chunks are verified, so a crash never leaves a half file that looks whole.

use crate::{HostCache, Progress, Store, StoreError};
use colo_core::HydrationReport;
use colo_model::manifest::{chunk_count, chunk_digest};
use colo_model::{FileEntry, Manifest};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct HydrateOptions {
    /// Ranged reads in flight at once.
    pub concurrency: usize,
}

impl Default for HydrateOptions {
    fn default() -> Self {
        Self { concurrency: 16 }
    }
}

/// One file being filled in: its partial file and its record of verified chunks.
struct FileJob {
    entry: FileEntry,
    partial: File,
    partial_path: PathBuf,
    record: Mutex<File>,
    record_path: PathBuf,
    final_path: PathBuf,
}

/// Pulls `manifest`'s model from `store` into `cache`. Returns what was fetched and reused.
pub async fn hydrate(
    store: &Store,
    manifest: &Manifest,
    cache: &HostCache,
    opts: &HydrateOptions,
    progress: Progress,
) -> Result<HydrationReport, StoreError> {
    let started = Instant::now();
    let total = manifest.total_bytes();
    if cache.complete_dir(manifest).is_some() {
        return Ok(HydrationReport {
            bytes_total: total,
            bytes_fetched: 0,
            bytes_reused: total,
            seconds: 0.0,
        });
    }
    let dir = cache.model_dir(&manifest.name, &manifest.revision);
    let chunk_size = manifest.chunk_size;

    // Plan: which chunks of which files still need fetching.
    let mut jobs = Vec::new();
    let mut work = Vec::new();
    for entry in &manifest.files {
        let final_path = dir.join(&entry.path);
        if std::fs::metadata(&final_path).map(|m| m.len() == entry.size).unwrap_or(false) {
            progress(entry.size);
            continue;
        }
        let (job, missing) = open_job(entry, final_path, chunk_size)?;
        let job = Arc::new(job);
        if missing.is_empty() {
            publish(&job)?;
            continue;
        }
        progress(entry.size - missing.iter().map(|&i| range_len(entry, i, chunk_size)).sum::<u64>());
        work.extend(missing.into_iter().map(|idx| (job.clone(), idx)));
        jobs.push(job);
    }

    let fetched: Vec<u64> = futures::stream::iter(work.into_iter().map(|(job, idx)| {
        let progress = progress.clone();
        async move {
            let n = fetch_chunk(store, manifest, &job, idx).await?;
            progress(n);
            Ok::<_, StoreError>(n)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .try_collect()
    .await?;

    for job in &jobs {
        publish(job)?;
    }
    let marker = cache.marker_path(manifest);
    write_atomic(&marker, &manifest.to_json())?;

    let bytes_fetched = fetched.iter().sum();
    Ok(HydrationReport {
        bytes_total: total,
        bytes_fetched,
        bytes_reused: total - bytes_fetched,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn range_len(entry: &FileEntry, idx: u64, chunk_size: u64) -> u64 {
    let (start, end) = entry.chunk_range(idx, chunk_size);
    end - start
}

/// Opens (or resumes) the partial file of one entry and returns the chunks still missing.
/// Chunks named in the record are re-hashed from disk, so a record that outlived its data
/// (a power cut between the two writes) costs a refetch, never a corrupt file.
fn open_job(entry: &FileEntry, final_path: PathBuf, chunk_size: u64) -> Result<(FileJob, Vec<u64>), StoreError> {
    let partial_path = with_suffix(&final_path, ".colo-partial");
    let record_path = with_suffix(&final_path, ".colo-chunks");
    if let Some(parent) = final_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent.display(), e))?;
    }
    let partial = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial_path)
        .map_err(|e| StoreError::io(partial_path.display(), e))?;
    let resumable = partial.metadata().map_err(|e| StoreError::io(partial_path.display(), e))?.len() == entry.size;
    let mut verified = HashSet::new();
    if resumable {
        if let Ok(mut record) = File::open(&record_path) {
            let mut bytes = Vec::new();
            record
                .read_to_end(&mut bytes)
                .map_err(|e| StoreError::io(record_path.display(), e))?;
            for idx in bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunks")))
            {
                if idx < entry.chunks.len() as u64 && chunk_on_disk_matches(&partial, entry, idx, chunk_size) {
                    verified.insert(idx);
                }
            }
        }
    } else {
        partial.set_len(entry.size).map_err(|e| StoreError::io(partial_path.display(), e))?;
    }
    // Rewrite the record to hold exactly the chunks that checked out.
    let mut record = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&record_path)
        .map_err(|e| StoreError::io(record_path.display(), e))?;
    let mut sorted: Vec<u64> = verified.iter().copied().collect();
    sorted.sort_unstable();
    let bytes: Vec<u8> = sorted.iter().flat_map(|i| i.to_le_bytes()).collect();
    record.write_all(&bytes).map_err(|e| StoreError::io(record_path.display(), e))?;

    let missing = (0..chunk_count(entry.size, chunk_size)).filter(|i| !verified.contains(i)).collect();
    let job = FileJob {
        entry: entry.clone(),
        partial,
        partial_path,
        record: Mutex::new(record),
        record_path,
        final_path,
    };
    Ok((job, missing))
}

fn chunk_on_disk_matches(file: &File, entry: &FileEntry, idx: u64, chunk_size: u64) -> bool {
    let (start, end) = entry.chunk_range(idx, chunk_size);
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start).is_ok() && chunk_digest(&buf) == entry.chunks[idx as usize]
}

/// Fetches one chunk with a ranged GET, verifies it, writes it in place and records it.
async fn fetch_chunk(store: &Store, manifest: &Manifest, job: &Arc<FileJob>, idx: u64) -> Result<u64, StoreError> {
    let entry = &job.entry;
    let (start, end) = entry.chunk_range(idx, manifest.chunk_size);
    let path = Store::file_path(&manifest.name, &manifest.revision, &entry.path);
    let bytes = store
        .objects()
        .get_range(&path, start..end)
        .await
        .map_err(|e| StoreError::object(&path, e))?;
    if bytes.len() as u64 != end - start {
        return Err(StoreError::ShortRead {
            file: entry.path.clone(),
            chunk: idx,
            got: bytes.len() as u64,
            expected: end - start,
        });
    }
    let job = job.clone();
    tokio::task::spawn_blocking(move || {
        let entry = &job.entry;
        let actual = chunk_digest(&bytes);
        let expected = &entry.chunks[idx as usize];
        if &actual != expected {
            return Err(StoreError::Digest {
                file: entry.path.clone(),
                chunk: idx,
                start,
                end,
                expected: expected.clone(),
                actual,
            });
        }
        job.partial
            .write_all_at(&bytes, start)
            .map_err(|e| StoreError::io(job.partial_path.display(), e))?;
        // The data is written before its index is recorded, so the record never runs ahead.
        let mut record = job.record.lock().unwrap_or_else(|p| p.into_inner());
        record
            .write_all(&idx.to_le_bytes())
            .map_err(|e| StoreError::io(job.record_path.display(), e))?;
        Ok(end - start)
    })
    .await
    .expect("chunk writer does not panic")
}

/// Makes a fully verified file visible under its real name and drops its record.
fn publish(job: &FileJob) -> Result<(), StoreError> {
    job.partial.sync_all().map_err(|e| StoreError::io(job.partial_path.display(), e))?;
    std::fs::rename(&job.partial_path, &job.final_path).map_err(|e| StoreError::io(job.final_path.display(), e))?;
    let _ = std::fs::remove_file(&job.record_path);
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = with_suffix(path, ".tmp");
    std::fs::write(&tmp, bytes).map_err(|e| StoreError::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path.display(), e))
}
