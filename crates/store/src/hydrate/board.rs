//! What a pull in flight holds and is reading, chunk by chunk, shared between the pull (which
//! writes it) and the peer API (which serves held chunks to the region's other hosts and tells
//! them what is held and pending). A chunk is marked held only after its bytes are written and
//! its digest matched, so nothing unverified is ever served from a partial file.

use crate::peer::wire::{runs_of, PeerChunks, PeerFileChunks};
use colo_model::manifest::chunk_count;
use colo_model::Manifest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const MISSING: u8 = 0;
const PENDING: u8 = 1;
const HELD: u8 = 2;

/// The chunk states of one file of a pull.
#[derive(Debug)]
pub(crate) struct FileBoard {
    pub(crate) path: String,
    pub(crate) size: u64,
    chunk_size: u64,
    states: Vec<AtomicU8>,
}

/// The chunk states of every file of one pull.
#[derive(Debug)]
pub(crate) struct Board {
    pub(crate) name: String,
    pub(crate) revision: String,
    pub(crate) files: Vec<Arc<FileBoard>>,
    by_path: HashMap<String, usize>,
}

// === impl FileBoard ===

impl FileBoard {
    /// Marks chunk `idx` written and verified. Never undone for this pull.
    pub(crate) fn hold(&self, idx: u64) {
        if let Some(state) = self.states.get(idx as usize) {
            state.store(HELD, Ordering::Release);
        }
    }

    /// Marks every chunk held (a file found whole on disk).
    pub(crate) fn hold_all(&self) {
        for state in &self.states {
            state.store(HELD, Ordering::Release);
        }
    }

    /// Marks chunks being read (those not held already).
    pub(crate) fn reading(&self, first: u64, n: u64) {
        for state in self.states.iter().skip(first as usize).take(n as usize) {
            let _ = state.compare_exchange(MISSING, PENDING, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A read ended: its chunks that did not become held are missing again.
    pub(crate) fn read_ended(&self, first: u64, n: u64) {
        for state in self.states.iter().skip(first as usize).take(n as usize) {
            let _ = state.compare_exchange(PENDING, MISSING, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Whether every chunk that bytes `[start, end)` touch is held.
    pub(crate) fn holds_bytes(&self, start: u64, end: u64) -> bool {
        if end <= start || end > self.size {
            return false;
        }
        let (first, last) = (start / self.chunk_size, (end - 1) / self.chunk_size);
        (first..=last).all(|i| self.states.get(i as usize).is_some_and(|s| s.load(Ordering::Acquire) == HELD))
    }

    fn wire(&self) -> PeerFileChunks {
        let n = self.states.len() as u64;
        let state = |i: u64| self.states[i as usize].load(Ordering::Acquire);
        PeerFileChunks {
            path: self.path.clone(),
            held: runs_of(n, |i| state(i) == HELD),
            pending: runs_of(n, |i| state(i) == PENDING),
        }
    }
}

// === impl Board ===

impl Board {
    /// Every chunk of `manifest`, missing.
    pub(crate) fn new(manifest: &Manifest) -> Self {
        let files: Vec<Arc<FileBoard>> = manifest
            .files
            .iter()
            .map(|f| {
                Arc::new(FileBoard {
                    path: f.path.clone(),
                    size: f.size,
                    chunk_size: manifest.chunk_size,
                    states: (0..chunk_count(f.size, manifest.chunk_size))
                        .map(|_| AtomicU8::new(MISSING))
                        .collect(),
                })
            })
            .collect();
        let by_path = files.iter().enumerate().map(|(i, f)| (f.path.clone(), i)).collect();
        Self {
            name: manifest.name.clone(),
            revision: manifest.revision.clone(),
            files,
            by_path,
        }
    }

    pub(crate) fn file(&self, path: &str) -> Option<&Arc<FileBoard>> {
        self.by_path.get(path).map(|&i| &self.files[i])
    }

    /// What peers are told: held and pending runs of each file.
    pub(crate) fn wire(&self) -> PeerChunks {
        PeerChunks {
            name: self.name.clone(),
            revision: self.revision.clone(),
            complete: false,
            files: self.files.iter().map(|f| f.wire()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_model::FileEntry;

    fn board() -> Board {
        let file = |path: &str, size: u64| FileEntry {
            path: path.into(),
            size,
            chunks: vec!["x".into(); size.div_ceil(100) as usize],
            safetensors: None,
            gguf: None,
        };
        Board::new(&Manifest::new("m", 100, vec![file("a", 450), file("b", 100)], 0))
    }

    #[test]
    fn only_held_chunks_are_served_and_reads_that_fail_leave_no_mark() {
        let board = board();
        let a = board.file("a").unwrap();
        a.reading(0, 3);
        a.hold(0);
        a.hold(1);
        a.read_ended(0, 3);
        assert!(a.holds_bytes(0, 200));
        assert!(a.holds_bytes(150, 200));
        assert!(!a.holds_bytes(150, 201), "chunk 2 was read but never held");
        assert!(!a.holds_bytes(0, 0));
        assert!(!a.holds_bytes(0, 451), "past the file's end");
        a.reading(3, 2);
        let wire = board.wire();
        assert_eq!(wire.files[0].held, vec![[0, 2]]);
        assert_eq!(wire.files[0].pending, vec![[3, 5]]);
        assert!(wire.files[1].held.is_empty());
        // Held is never undone by a read ending.
        a.hold(4);
        a.read_ended(3, 2);
        let wire = board.wire();
        assert_eq!(wire.files[0].held, vec![[0, 2], [4, 5]]);
        assert!(wire.files[0].pending.is_empty());
        assert!(a.holds_bytes(400, 450));
    }
}
