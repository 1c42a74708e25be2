//! One file being filled in: its preallocated `.colo-partial` file, its `.colo-chunks` record
//! of verified chunks, and the verified prefix that a loader may wait on.

use super::board::FileBoard;
use crate::StoreError;
use colo_model::manifest::{chunk_count, chunk_digest};
use colo_model::FileEntry;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub(crate) struct FileJob {
    pub(crate) entry: FileEntry,
    pub(crate) chunk_size: u64,
    partial: File,
    partial_path: PathBuf,
    record_path: PathBuf,
    final_path: PathBuf,
    inner: Mutex<JobState>,
    /// Verified bytes from the start of the file: readers may use `[0, prefix)`.
    prefix: watch::Sender<u64>,
    /// Which chunks peers may read from this file while it is being filled in.
    board: Arc<FileBoard>,
}

struct JobState {
    record: File,
    verified: Vec<bool>,
    /// Chunks verified from the start without a gap.
    prefix_chunks: u64,
    missing: u64,
}

/// What opening a job found on disk.
pub(crate) struct Opened {
    pub(crate) job: FileJob,
    /// Chunk indices still to fetch, in order.
    pub(crate) missing: Vec<u64>,
}

// === impl FileJob ===

impl FileJob {
    /// Opens (or resumes) the partial file of one entry. Chunks named in the record are
    /// re-hashed from disk, so a record that outlived its data (a power cut between the two
    /// writes) costs a refetch, never a corrupt file. A new partial file gets its full size
    /// reserved up front, so a full disk fails the pull at its start, not midway.
    pub(crate) fn open(
        entry: &FileEntry,
        final_path: PathBuf,
        chunk_size: u64,
        prefix: watch::Sender<u64>,
        board: Arc<FileBoard>,
    ) -> Result<Opened, StoreError> {
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
        let len = partial.metadata().map_err(|e| StoreError::io(partial_path.display(), e))?.len();
        let n_chunks = chunk_count(entry.size, chunk_size);
        let mut verified = vec![false; n_chunks as usize];
        if len == entry.size {
            if let Ok(mut record) = File::open(&record_path) {
                let mut bytes = Vec::new();
                record
                    .read_to_end(&mut bytes)
                    .map_err(|e| StoreError::io(record_path.display(), e))?;
                for raw in bytes.chunks_exact(8) {
                    let mut le = [0u8; 8];
                    le.copy_from_slice(raw);
                    let idx = u64::from_le_bytes(le);
                    if idx < n_chunks && !verified[idx as usize] && chunk_on_disk_matches(&partial, entry, idx, chunk_size) {
                        verified[idx as usize] = true;
                    }
                }
            }
        } else {
            partial.set_len(0).map_err(|e| StoreError::io(partial_path.display(), e))?;
            preallocate(&partial, entry.size).map_err(|e| StoreError::io(partial_path.display(), e))?;
        }
        // Rewrite the record to hold exactly the chunks that checked out.
        let mut record = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&record_path)
            .map_err(|e| StoreError::io(record_path.display(), e))?;
        let bytes: Vec<u8> = (0..n_chunks)
            .filter(|&i| verified[i as usize])
            .flat_map(|i| i.to_le_bytes())
            .collect();
        record.write_all(&bytes).map_err(|e| StoreError::io(record_path.display(), e))?;

        let missing: Vec<u64> = (0..n_chunks).filter(|&i| !verified[i as usize]).collect();
        for i in (0..n_chunks).filter(|&i| verified[i as usize]) {
            board.hold(i);
        }
        let prefix_chunks = verified.iter().take_while(|v| **v).count() as u64;
        let state = JobState {
            record,
            verified,
            prefix_chunks,
            missing: missing.len() as u64,
        };
        let job = FileJob {
            entry: entry.clone(),
            chunk_size,
            partial,
            partial_path,
            record_path,
            final_path,
            inner: Mutex::new(state),
            prefix,
            board,
        };
        job.prefix.send_replace(job.prefix_bytes(prefix_chunks));
        Ok(Opened { job, missing })
    }

    fn prefix_bytes(&self, chunks: u64) -> u64 {
        (chunks * self.chunk_size).min(self.entry.size)
    }

    pub(crate) fn chunk_range(&self, idx: u64) -> (u64, u64) {
        self.entry.chunk_range(idx, self.chunk_size)
    }

    /// Checks `bytes` (chunk `idx`) against the manifest. Returns the actual digest on mismatch.
    pub(crate) fn check(&self, idx: u64, bytes: &[u8]) -> Result<(), String> {
        let actual = chunk_digest(bytes);
        if actual == self.entry.chunks[idx as usize] {
            Ok(())
        } else {
            Err(actual)
        }
    }

    /// Writes `bytes` in place at `offset`. Written is not verified: a chunk counts only once
    /// `record_verified` has recorded it.
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.partial
            .write_all_at(bytes, offset)
            .map_err(|e| StoreError::io(self.partial_path.display(), e))
    }

    /// Records chunk `idx`, written in full and matching its digest. Returns true when it was
    /// the file's last missing chunk (once per file).
    pub(crate) fn record_verified(&self, idx: u64) -> Result<bool, StoreError> {
        // The data was written before its index is recorded, so the record never runs ahead.
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state
            .record
            .write_all(&idx.to_le_bytes())
            .map_err(|e| StoreError::io(self.record_path.display(), e))?;
        let newly = !state.verified[idx as usize];
        if newly {
            state.verified[idx as usize] = true;
            state.missing -= 1;
            self.board.hold(idx);
        }
        let before = state.prefix_chunks;
        while (state.prefix_chunks as usize) < state.verified.len() && state.verified[state.prefix_chunks as usize] {
            state.prefix_chunks += 1;
        }
        if state.prefix_chunks != before {
            self.prefix.send_replace(self.prefix_bytes(state.prefix_chunks));
        }
        Ok(newly && state.missing == 0)
    }

    /// Makes a fully verified file visible under its real name and drops its record. An open
    /// descriptor of the partial file stays valid: the rename keeps the inode.
    pub(crate) fn publish(&self, durable: bool) -> Result<(), StoreError> {
        if durable {
            self.partial
                .sync_all()
                .map_err(|e| StoreError::io(self.partial_path.display(), e))?;
        }
        std::fs::rename(&self.partial_path, &self.final_path).map_err(|e| StoreError::io(self.final_path.display(), e))?;
        let _ = std::fs::remove_file(&self.record_path);
        Ok(())
    }
}

fn chunk_on_disk_matches(file: &File, entry: &FileEntry, idx: u64, chunk_size: u64) -> bool {
    let (start, end) = entry.chunk_range(idx, chunk_size);
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start).is_ok() && chunk_digest(&buf) == entry.chunks[idx as usize]
}

/// Reserves `size` bytes of disk for the file (not a sparse hole), falling back to a plain
/// length where the file system cannot reserve.
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if size > 0 {
        // SAFETY: posix_fallocate on a descriptor we own; it only changes the file's extents.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        match rc {
            0 => return Ok(()),
            libc::EOPNOTSUPP | libc::EINVAL => {}
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
    file.set_len(size)
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = with_suffix(path, ".tmp");
    std::fs::write(&tmp, bytes).map_err(|e| StoreError::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path.display(), e))
}
