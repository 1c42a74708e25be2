//! What peers say to each other: where the cache API lives and how a host lists the files it
//! has of a model. A leaf, so that hydration (the client side) does not depend on the server
//! side and the host cache behind it.

use serde::{Deserialize, Serialize};

/// Where the cache API lives on a host.
pub const PEER_PREFIX: &str = "/v1/cache/models";

/// What a host has of one model revision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerModel {
    pub name: String,
    pub revision: String,
    pub files: Vec<PeerFile>,
}

/// One file a host has, as a path in the model and its size in bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerFile {
    pub path: String,
    pub size: u64,
}

/// Which chunks of a revision a host holds verified, and which it is reading now, so that the
/// hosts of a region pulling the same model at once can read from each other
/// (`GET {PEER_PREFIX}/{name}/{revision}/chunks`). A host serves only the chunks it lists as
/// held.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerChunks {
    pub name: String,
    pub revision: String,
    /// Every chunk of every file is held (the revision is complete in the host's cache).
    pub complete: bool,
    pub files: Vec<PeerFileChunks>,
}

/// One file's chunks, each list as half-open runs of chunk indices `[first, end)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerFileChunks {
    pub path: String,
    /// Chunks written and matching their digest: the host serves these.
    pub held: Vec<[u64; 2]>,
    /// Chunks the host is reading now (from the origin or a peer): held soon, unless it fails.
    pub pending: Vec<[u64; 2]>,
}

/// Runs `[first, end)` of the indices where `has(i)` holds, for `i` in `0..n`.
pub(crate) fn runs_of(n: u64, has: impl Fn(u64) -> bool) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for i in (0..n).filter(|&i| has(i)) {
        match runs.last_mut() {
            Some(run) if run[1] == i => run[1] = i + 1,
            _ => runs.push([i, i + 1]),
        }
    }
    runs
}

/// The bitmap of `n` chunks that `runs` name; runs past `n` are cut at `n`.
pub(crate) fn bits_of(n: u64, runs: &[[u64; 2]]) -> Vec<bool> {
    let mut bits = vec![false; n as usize];
    for &[first, end] in runs {
        for i in first.min(n)..end.min(n) {
            bits[i as usize] = true;
        }
    }
    bits
}
