//! Hydration: making a model's files present in the host cache.
//!
//! Chunks are read with many ranged GETs at once (each range a whole number of chunks), from
//! peers of the region that hold them (whole revisions, or the verified chunks of a pull still
//! running) and from the origin store for the rest; which chunk comes from where is the
//! schedule's choice (`swarm.rs`), and what this pull holds and is reading is published on its
//! board (`board.rs`) for the peers pulling beside it. Bodies
//! are written in place into a preallocated `.colo-partial` file as they arrive and hashed on
//! the way; a chunk counts only once all of it is written and its BLAKE3 digest matches the
//! manifest, when its index is appended to a `.colo-chunks` record, so a killed pull resumes
//! with only the missing chunks. Each file's first chunk (its safetensors
//! header) is fetched before any other chunk, then files front to back, and each file's
//! verified prefix is published on a watch channel, so a loader can start early. A file takes
//! its real name once all its chunks are verified; the model's completion marker comes last.
//! Concurrency and range size are tuned from measured throughput unless given.

mod board;
mod job;
mod source;
mod swarm;
mod tune;

pub(crate) use board::Board;

pub(crate) use job::write_atomic;

/// Where a file's bytes live until all of them are verified.
pub(crate) fn partial_path(final_path: &std::path::Path) -> std::path::PathBuf {
    job::with_suffix(final_path, ".colo-partial")
}

/// Opens a file that a pull may still be filling in: under its real name, else its partial
/// name, else its real name again (the rename may happen between the two opens).
pub(crate) fn open_filling(final_path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(final_path)
        .or_else(|_| std::fs::File::open(partial_path(final_path)))
        .or_else(|_| std::fs::File::open(final_path))
}

use crate::cache::boot;
use crate::peer::wire::{bits_of, PeerChunks};
use crate::{Progress, Store, StoreError};
use colo_core::HydrationReport;
use colo_model::Manifest;
use futures::stream::{FuturesUnordered, StreamExt};
use job::FileJob;
use source::Sources;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::{Answer, Read, Schedule, Share, Slots, Source};
use tokio::sync::watch;
use tune::Tuner;

/// How often a pull with peers asks them again which chunks they hold.
const MAP_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, Default)]
pub struct HydrateOptions {
    /// Ranged reads in flight at once; tuned from measured throughput when `None`.
    pub concurrency: Option<usize>,
    /// Bytes per ranged read, rounded to whole chunks; tuned when `None`.
    pub range_bytes: Option<u64>,
    /// Base URLs (`http://host:port`) of peer hosts in the same region to read from first.
    pub peers: Vec<String>,
    /// Bearer token for the peers' cache API, when they ask for one.
    pub peer_token: Option<String>,
    /// The client peers are reached with; a plain one when `None`.
    pub peer_client: Option<reqwest::Client>,
    /// This host's own base URL as its peers know it: with theirs, it gives the host its share
    /// of the model to read from the origin first when the region's hosts pull at once. When
    /// `None`, a share is chosen from the cache directory's path.
    pub self_url: Option<String>,
    /// Flush each file to disk before it takes its real name. Off by default: files from an
    /// earlier boot are re-verified before use anyway (see the cache's boot stamp), and a flush
    /// per file bounds the pull at the disk's write speed instead of the page cache's.
    pub durable: bool,
}

/// Per-file watch channels of verified-prefix bytes, by file path.
pub(crate) type FilePrefixes = HashMap<String, watch::Sender<u64>>;

pub(crate) fn file_prefixes(manifest: &Manifest) -> FilePrefixes {
    manifest.files.iter().map(|f| (f.path.clone(), watch::channel(0).0)).collect()
}

/// Pulls `manifest`'s model into its revision directory `dir` of a host cache, reading from
/// `opts.peers` what they hold and `store` for the rest, publishing each file's verified prefix
/// on its channel in `prefixes` and each chunk's state on `board`. Returns what came from
/// where.
pub(crate) async fn run(
    store: &Store,
    manifest: &Manifest,
    dir: &std::path::Path,
    opts: &HydrateOptions,
    progress: Progress,
    prefixes: &FilePrefixes,
    board: &Board,
) -> Result<HydrationReport, StoreError> {
    let started = Instant::now();
    let total = manifest.total_bytes();
    let chunk_size = manifest.chunk_size;
    let prefix_of = |path: &str| prefixes.get(path).cloned().unwrap_or_else(|| watch::channel(0).0);
    if boot::complete(dir) {
        for (file, entry) in board.files.iter().zip(&manifest.files) {
            file.hold_all();
            prefix_of(&entry.path).send_replace(entry.size);
        }
        progress(total);
        return Ok(HydrationReport {
            bytes_total: total,
            bytes_reused: total,
            bytes_from_cache: total,
            ..Default::default()
        });
    }
    {
        let (dir, manifest) = (dir.to_path_buf(), manifest.clone());
        tokio::task::spawn_blocking(move || distrust_earlier_boot(&dir, &manifest))
            .await
            .map_err(|e| StoreError::Internal(format!("checking the boot stamp: {e}")))??;
    }

    // Plan: which chunks of which files still need fetching (the schedule orders them).
    let mut jobs: Vec<Option<Arc<FileJob>>> = Vec::new();
    let mut missing: Vec<Vec<u64>> = Vec::new();
    let mut from_cache = 0;
    for (entry, file_board) in manifest.files.iter().zip(&board.files) {
        let final_path = dir.join(&entry.path);
        let prefix = prefix_of(&entry.path);
        if std::fs::metadata(&final_path).map(|m| m.len() == entry.size).unwrap_or(false) {
            prefix.send_replace(entry.size);
            file_board.hold_all();
            from_cache += entry.size;
            jobs.push(None);
            missing.push(Vec::new());
            continue;
        }
        let opened = {
            let (entry, final_path, file_board) = (entry.clone(), final_path.clone(), file_board.clone());
            tokio::task::spawn_blocking(move || FileJob::open(&entry, final_path, chunk_size, prefix, file_board))
                .await
                .map_err(|e| StoreError::Internal(format!("opening a partial file: {e}")))??
        };
        let job = Arc::new(opened.job);
        let missing_bytes: u64 = opened.missing.iter().map(|&i| range_len(&job, i)).sum();
        from_cache += entry.size - missing_bytes;
        if opened.missing.is_empty() {
            job.publish(opts.durable)?;
        }
        jobs.push(Some(job));
        missing.push(opened.missing);
    }
    progress(from_cache);
    let missing_chunks = missing.iter().map(Vec::len).sum::<usize>() as u64;

    let sources = Arc::new(Sources::new(
        store,
        manifest,
        &opts.peers,
        opts.peer_token.clone(),
        opts.peer_client.clone(),
    ));
    let range_chunks = opts.range_bytes.map(|b| (b / chunk_size).max(1));
    let mut tuner = Tuner::new(opts.concurrency, range_chunks, started.elapsed());
    let share = share_of(opts.self_url.as_deref(), sources.peers(), dir);
    let mut schedule = Schedule::new(&missing, sources.peers().len(), share, tuner.range_chunks());
    // Peers' maps: once before the first read, so chunks a peer holds are never read from the
    // origin, then every `MAP_EVERY` while the pull runs (by a task that ends with the pull).
    let (maps_tx, mut maps) = tokio::sync::mpsc::channel(1);
    let _refresher = if sources.peers().is_empty() || missing_chunks == 0 {
        drop(maps_tx);
        None
    } else {
        for (peer, map) in sources.maps().await.into_iter().enumerate() {
            see(&mut schedule, manifest, peer, map, started.elapsed());
        }
        let sources = sources.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAP_EVERY).await;
                if maps_tx.send(sources.maps().await).await.is_err() {
                    break;
                }
            }
        })))
    };

    let writers = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let mut in_flight = FuturesUnordered::new();
    let (mut from_peer, mut from_origin) = (0, 0);
    let mut by_peer: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let slots = Slots {
            origin: tuner.concurrency(),
            peers: tuner.concurrency(),
            range_chunks: tuner.range_chunks(),
        };
        while let Some(read) = schedule.next(slots, started.elapsed()) {
            let Some(job) = jobs[read.file].clone() else {
                return Err(StoreError::Internal(format!(
                    "{}: a read was planned for a file already whole",
                    manifest.files[read.file].path
                )));
            };
            board.files[read.file].reading(read.first, read.n);
            let (sources, writers, durable) = (sources.clone(), writers.clone(), opts.durable);
            in_flight.push(async move {
                let began = Instant::now();
                let fetched = fetch(&sources, &writers, job, read, durable).await;
                (read, began.elapsed().as_secs_f64(), fetched)
            });
        }
        if schedule.left() == 0 && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            Some((read, seconds, fetched)) = in_flight.next(), if !in_flight.is_empty() => {
                board.files[read.file].read_ended(read.first, read.n);
                let fetched = fetched?;
                schedule.finished(read, &fetched.verified, fetched.bytes, seconds);
                tuner.record(fetched.bytes, started.elapsed());
                progress(fetched.bytes);
                match read.source {
                    Source::Origin => from_origin += fetched.bytes,
                    Source::Peer(peer) => {
                        from_peer += fetched.bytes;
                        if fetched.bytes > 0 {
                            *by_peer.entry(sources.peer_url(peer).to_string()).or_default() += fetched.bytes;
                        }
                        if let Some(why) = fetched.peer_failed {
                            if !schedule.peer_down(peer) {
                                tracing::warn!(peer = %sources.peer_url(peer), reason = %why, "peer dropped from this pull");
                            }
                            schedule.drop_peer(peer);
                        }
                    }
                }
            }
            Some(answers) = maps.recv() => {
                for (peer, map) in answers.into_iter().enumerate() {
                    see(&mut schedule, manifest, peer, map, started.elapsed());
                }
            }
            else => return Err(StoreError::Internal("the pull has chunks left and nothing to read them from".into())),
        }
    }

    write_atomic(&dir.join(boot::COMPLETE_MARKER), &manifest.to_json())?;
    let fetched = from_peer + from_origin;
    Ok(HydrationReport {
        bytes_total: total,
        bytes_fetched: fetched,
        bytes_reused: from_cache,
        seconds: started.elapsed().as_secs_f64(),
        bytes_from_cache: from_cache,
        bytes_from_peer: from_peer,
        bytes_from_origin: from_origin,
        bytes_by_peer: by_peer,
        concurrency: tuner.concurrency() as u32,
        range_bytes: tuner.range_chunks() * chunk_size,
    })
}

/// Aborts a task when dropped (the pull's map refresher ends with the pull, errors included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This host's place among itself and its peers: with its own URL, the hosts sorted by URL,
/// each share owned by the host at its place; without, a place chosen from the cache
/// directory's path and no share known to be another's.
fn share_of(self_url: Option<&str>, peers: &[String], dir: &std::path::Path) -> Share {
    match self_url {
        Some(me) => {
            let me = me.trim_end_matches('/');
            let mut all: Vec<&str> = peers.iter().map(String::as_str).chain([me]).collect();
            all.sort_unstable();
            all.dedup();
            Share {
                rank: all.iter().position(|u| *u == me).unwrap_or(0),
                owners: all.iter().map(|u| peers.iter().position(|p| p == u)).collect(),
            }
        }
        None => {
            let hosts = peers.len() + 1;
            let hash = blake3::hash(dir.as_os_str().as_encoded_bytes());
            let mut le = [0u8; 8];
            le.copy_from_slice(&hash.as_bytes()[..8]);
            Share {
                rank: (u64::from_le_bytes(le) % hosts as u64) as usize,
                owners: vec![None; hosts],
            }
        }
    }
}

/// Gives the schedule one peer's answer, its map as per-file bitmaps in the manifest's order.
fn see(schedule: &mut Schedule, manifest: &Manifest, peer: usize, answer: Result<Option<PeerChunks>, ()>, now: Duration) {
    let map = match answer {
        Ok(Some(map)) => map,
        Ok(None) => return schedule.see(peer, Answer::Nothing, now),
        Err(()) => return schedule.see(peer, Answer::Silent, now),
    };
    let (mut held, mut pending) = (Vec::new(), Vec::new());
    for entry in &manifest.files {
        let n = colo_model::manifest::chunk_count(entry.size, manifest.chunk_size);
        let file = map.files.iter().find(|f| f.path == entry.path);
        held.push(match file {
            _ if map.complete => vec![true; n as usize],
            Some(f) => bits_of(n, &f.held),
            None => vec![false; n as usize],
        });
        pending.push(file.map_or_else(|| vec![false; n as usize], |f| bits_of(n, &f.pending)));
    }
    schedule.see(peer, Answer::Map { held, pending }, now);
}

/// Files that an earlier boot wrote may have lost unflushed bytes in a power cut. Each goes
/// back to its partial name with a record naming all its chunks, so opening it re-hashes every
/// chunk and refetches only those that no longer match. Then the directory is stamped with
/// this boot. A pull killed halfway through this redoes it, because the stamp comes last.
fn distrust_earlier_boot(dir: &std::path::Path, manifest: &Manifest) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir.display(), e))?;
    if boot::written_this_boot(dir) {
        return Ok(());
    }
    let marker = dir.join(boot::COMPLETE_MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| StoreError::io(marker.display(), e))?;
    }
    for entry in &manifest.files {
        let final_path = dir.join(&entry.path);
        if !final_path.is_file() {
            continue;
        }
        let record: Vec<u8> = (0..entry.chunks.len() as u64).flat_map(|i| i.to_le_bytes()).collect();
        let record_path = job::with_suffix(&final_path, ".colo-chunks");
        std::fs::write(&record_path, record).map_err(|e| StoreError::io(record_path.display(), e))?;
        let partial = partial_path(&final_path);
        std::fs::rename(&final_path, &partial).map_err(|e| StoreError::io(partial.display(), e))?;
    }
    write_atomic(&dir.join(boot::BOOT_STAMP), boot::boot_id().as_bytes())
}

fn range_len(job: &FileJob, idx: u64) -> u64 {
    let (start, end) = job.chunk_range(idx);
    end - start
}

/// What one read brought: the chunks verified, the bytes they hold, and for a peer read why
/// the peer failed, if it did.
struct Fetched {
    verified: Vec<u64>,
    bytes: u64,
    peer_failed: Option<String>,
}

/// Carries out one read. From a peer: one ranged read, whose chunks that do not verify are left
/// for the schedule to read again (and the peer is dropped). From the origin: one ranged read
/// per run, taken up again where it broke; a chunk the origin gets wrong is read once more,
/// alone, and a chunk it gets wrong twice fails the pull with a digest error and is never
/// recorded.
async fn fetch(
    sources: &Sources,
    writers: &tokio::sync::Semaphore,
    job: Arc<FileJob>,
    read: Read,
    durable: bool,
) -> Result<Fetched, StoreError> {
    let (first, n) = (read.first, read.n);
    let file = job.entry.path.clone();
    if let Source::Peer(peer) = read.source {
        let (start, end) = span(&job, first, n);
        let frames = match sources.peer_stream(peer, &file, start, end).await {
            Ok(frames) => frames,
            Err(why) => {
                return Ok(Fetched {
                    verified: Vec::new(),
                    bytes: 0,
                    peer_failed: Some(why),
                })
            }
        };
        let wrong_length = |got: u64| format!("sent {got} bytes of {}", end - start);
        let got = stream_into(writers, &job, first, n, frames, durable, wrong_length).await?;
        let bytes = got.verified.iter().map(|&i| range_len(&job, i)).sum::<u64>();
        let peer_failed = if got.bad.is_empty() {
            got.error
        } else {
            Some("sent a chunk whose digest does not match the manifest".to_string())
        };
        return Ok(Fetched {
            verified: got.verified,
            bytes,
            peer_failed,
        });
    }
    // Bytes the origin sent: chunks that matched and chunks read again.
    let mut moved = 0;
    let again = from_origin(sources, writers, &job, first, n, durable, &mut moved).await?;
    // Each chunk the origin got wrong is read once more, alone.
    for idx in again {
        if from_origin(sources, writers, &job, idx, 1, durable, &mut moved).await?.is_empty() {
            continue;
        }
        let (c_start, c_end) = job.chunk_range(idx);
        let bytes = sources.origin(&file, c_start, c_end).await?;
        let job2 = job.clone();
        let actual = tokio::task::spawn_blocking(move || job2.check(idx, &bytes))
            .await
            .map_err(|e| StoreError::Internal(format!("verifying a chunk: {e}")))?;
        return Err(match actual {
            Ok(()) => StoreError::Internal(format!(
                "{file}: chunk {idx} matched on a third read after two mismatches; refusing a flaky origin"
            )),
            Err(actual) => StoreError::Digest {
                file,
                chunk: idx,
                start: c_start,
                end: c_end,
                expected: job.entry.chunks[idx as usize].clone(),
                actual,
            },
        });
    }
    Ok(Fetched {
        verified: (first..first + n).collect(),
        bytes: moved,
        peer_failed: None,
    })
}

/// Tries of a ranged read from the origin that fails on the way (a body cut short or stalled,
/// a connection reset): the chunks verified are kept, the rest is read again after a pause.
const ORIGIN_TRIES: u32 = 4;

/// Whether a failed read from the origin may succeed when tried again.
fn worth_retrying(error: &StoreError) -> bool {
    !matches!(
        error,
        StoreError::Object {
            source: object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. },
            ..
        }
    )
}

/// Reads chunks `first .. first + n` from the origin into the file; returns the chunks whose
/// digest did not match. A read that fails part way is taken up again from the first chunk it
/// did not deliver whole, up to `ORIGIN_TRIES` times.
async fn from_origin(
    sources: &Sources,
    writers: &tokio::sync::Semaphore,
    job: &Arc<FileJob>,
    first: u64,
    n: u64,
    durable: bool,
    moved: &mut u64,
) -> Result<Vec<u64>, StoreError> {
    let file = &job.entry.path;
    let mut todo: Vec<u64> = (first..first + n).collect();
    let mut bad = Vec::new();
    let mut tries = 0;
    loop {
        tries += 1;
        let mut failed = None;
        let mut left = Vec::new();
        for (run_first, run_n) in runs(&todo) {
            let (start, end) = span(job, run_first, run_n);
            let frames = match sources.origin_stream(file, start, end).await {
                Ok(frames) => frames,
                Err(e) => {
                    left.extend(run_first..run_first + run_n);
                    failed = Some(e);
                    continue;
                }
            };
            let wrong_length = |got: u64| StoreError::ShortRead {
                file: file.clone(),
                start,
                got,
                expected: end - start,
            };
            let got = stream_into(writers, job, run_first, run_n, frames, durable, wrong_length).await?;
            *moved += got.verified.iter().chain(&got.bad).map(|&i| range_len(job, i)).sum::<u64>();
            bad.extend_from_slice(&got.bad);
            if let Some(e) = got.error {
                left.extend((run_first..run_first + run_n).filter(|i| !got.verified.contains(i) && !got.bad.contains(i)));
                failed = Some(e);
            }
        }
        match failed {
            None => return Ok(bad),
            Some(e) if tries >= ORIGIN_TRIES || !worth_retrying(&e) => return Err(e),
            Some(e) => {
                tracing::warn!(file = %file, error = %e, chunks_left = left.len(), "a read from the store failed part way; reading the rest again");
                tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
                todo = left;
            }
        }
    }
}

/// Byte span of chunks `first .. first + n`.
fn span(job: &FileJob, first: u64, n: u64) -> (u64, u64) {
    (job.chunk_range(first).0, job.chunk_range(first + n - 1).1)
}

/// Runs of consecutive chunk indices, as (first, count).
fn runs(chunks: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &idx in chunks {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == idx => *n += 1,
            _ => runs.push((idx, 1)),
        }
    }
    runs
}

/// What streaming a range into its file came to.
struct Streamed<E> {
    /// Chunks written in full whose digest matched: recorded.
    verified: Vec<u64>,
    /// Chunks written in full whose digest did not match: never recorded, to be read again.
    bad: Vec<u64>,
    /// Why the body stopped early or ran long; chunks it left incomplete are in neither list.
    error: Option<E>,
}

/// Bytes handed to a blocking thread at a time to hash and write (less at a chunk's end).
const BATCH_BYTES: u64 = 1 << 20;

/// Frames at least this long are hashed and written as they are; shorter ones (a server that
/// sends a few KiB at a time) are first copied together, so that hashing runs over long runs
/// of bytes (BLAKE3's SIMD lanes fill only from 16 KiB on) and a batch costs few writes.
const SHORT_FRAME: usize = 64 * 1024;

/// Writes a ranged read's body (chunks `first .. first + n`) in place as it arrives, hashing
/// each chunk on the way; a chunk is recorded only once all of it is written and its digest
/// matches. Frames are gathered into batches of up to `BATCH_BYTES` (short ones copied
/// together, see `SHORT_FRAME`); nothing else is buffered, so memory stays flat whatever the
/// range.
async fn stream_into<E>(
    writers: &tokio::sync::Semaphore,
    job: &Arc<FileJob>,
    first: u64,
    n: u64,
    mut frames: source::Frames<E>,
    durable: bool,
    wrong_length: impl Fn(u64) -> E,
) -> Result<Streamed<E>, StoreError> {
    let (start, end) = span(job, first, n);
    let mut out = Streamed {
        verified: Vec::new(),
        bad: Vec::new(),
        error: None,
    };
    let mut hasher = blake3::Hasher::new();
    let (mut pos, mut chunk) = (start, first);
    let mut batch = Batch::new(start);
    loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                out.error = Some(e);
                break;
            }
            None => {
                if pos != end {
                    out.error = Some(wrong_length(pos - start));
                }
                break;
            }
        };
        if frame.len() as u64 > end - pos {
            out.error = Some(wrong_length(pos - start + frame.len() as u64));
            break;
        }
        // Where chunks end inside the frame: their digests are taken there.
        let mut cut = 0;
        while cut < frame.len() {
            let chunk_end = job.chunk_range(chunk).1;
            let left = (chunk_end - pos) as usize - cut;
            if left > frame.len() - cut {
                break;
            }
            cut += left;
            batch.ends.push((batch.len + cut, chunk));
            chunk += 1;
        }
        pos += frame.len() as u64;
        batch.push(frame);
        if batch.len as u64 >= BATCH_BYTES || !batch.ends.is_empty() {
            let full = std::mem::replace(&mut batch, Batch::new(pos));
            hasher = write_batch(writers, job, full, hasher, durable, &mut out).await?;
        }
    }
    if batch.len > 0 {
        write_batch(writers, job, batch, hasher, durable, &mut out).await?;
    }
    Ok(out)
}

/// Consecutive bytes of a body bound for `at` in the file, as runs (long frames as they came,
/// short ones copied together), and where in them chunks end: (offset just past the chunk's
/// last byte, chunk index).
struct Batch {
    runs: Vec<Run>,
    len: usize,
    at: u64,
    ends: Vec<(usize, u64)>,
}

enum Run {
    Frame(bytes::Bytes),
    Copied(Vec<u8>),
}

impl Run {
    fn bytes(&self) -> &[u8] {
        match self {
            Run::Frame(bytes) => bytes,
            Run::Copied(bytes) => bytes,
        }
    }
}

impl Batch {
    fn new(at: u64) -> Batch {
        Batch {
            runs: Vec::new(),
            len: 0,
            at,
            ends: Vec::new(),
        }
    }

    fn push(&mut self, frame: bytes::Bytes) {
        self.len += frame.len();
        if frame.len() >= SHORT_FRAME {
            self.runs.push(Run::Frame(frame));
            return;
        }
        match self.runs.last_mut() {
            Some(Run::Copied(run)) if run.len() + frame.len() <= run.capacity() => run.extend_from_slice(&frame),
            _ => {
                let mut run = Vec::with_capacity(BATCH_BYTES as usize);
                run.extend_from_slice(&frame);
                self.runs.push(Run::Copied(run));
            }
        }
    }
}

/// Hashes and writes one batch off the async threads, at most one batch per core at a time
/// (more writers than cores only queue on the file's lock in the kernel, spinning there on CPU
/// the reads need). Chunks the batch completes are recorded once it is written and only when
/// their digest matches. Returns the hasher of the chunk the batch leaves unfinished.
async fn write_batch<E>(
    writers: &tokio::sync::Semaphore,
    job: &Arc<FileJob>,
    batch: Batch,
    mut hasher: blake3::Hasher,
    durable: bool,
    out: &mut Streamed<E>,
) -> Result<blake3::Hasher, StoreError> {
    let _writer = writers
        .acquire()
        .await
        .map_err(|e| StoreError::Internal(format!("waiting to write a chunk: {e}")))?;
    let job = job.clone();
    let (hasher, verified, bad) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let (mut verified, mut bad) = (Vec::new(), Vec::new());
        let mut ends = batch.ends.iter().peekable();
        let mut offset = 0;
        for run in &batch.runs {
            let bytes = run.bytes();
            let mut from = 0;
            while let Some(&&(end, idx)) = ends.peek() {
                if end > offset + bytes.len() {
                    break;
                }
                ends.next();
                hasher.update(&bytes[from..end - offset]);
                from = end - offset;
                let digest = hasher.finalize().to_hex();
                hasher.reset();
                if digest.as_str() == job.entry.chunks[idx as usize] {
                    verified.push(idx);
                } else {
                    bad.push(idx);
                }
            }
            hasher.update(&bytes[from..]);
            job.write_at(batch.at + offset as u64, bytes)?;
            offset += bytes.len();
        }
        for &idx in &verified {
            if job.record_verified(idx)? {
                job.publish(durable)?;
            }
        }
        Ok((hasher, verified, bad))
    })
    .await
    .map_err(|e| StoreError::Internal(format!("writing a chunk: {e}")))??;
    out.verified.extend(verified);
    out.bad.extend(bad);
    Ok(hasher)
}
