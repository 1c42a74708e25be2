//! Serving the host cache to peer hosts of the region over HTTP range reads, so a model that
//! one host has pulled, or is pulling, need not cross the network from the origin again.
//!
//! Complete revisions are served whole (their marker lists the files); of a revision whose pull
//! is in flight, only ranges whose every chunk is verified (the pull's board says which), so no
//! unverified byte is ever served. Only the files the manifest names are served, so a request
//! can never climb out of the cache.
//!
//! `GET {PEER_PREFIX}/{name}/{revision}` answers which files the host has complete;
//! `GET {PEER_PREFIX}/{name}/{revision}/chunks` answers which chunks it holds and is reading;
//! `GET {PEER_PREFIX}/{name}/{revision}/files/{path}` answers bytes, honouring one `Range`.

pub(crate) mod wire;

pub use wire::{PeerChunks, PeerFile, PeerFileChunks, PeerModel, PEER_PREFIX};

use crate::HostCache;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes read from disk per body frame.
const BLOCK: u64 = 4 * 1024 * 1024;

/// The routes peers read from; mount them on the host's API.
pub fn peer_router(cache: HostCache) -> Router {
    Router::new()
        .route(&format!("{PEER_PREFIX}/{{name}}/{{revision}}"), get(model))
        .route(&format!("{PEER_PREFIX}/{{name}}/{{revision}}/chunks"), get(chunks))
        .route(&format!("{PEER_PREFIX}/{{name}}/{{revision}}/files/{{*path}}"), get(file))
        .with_state(cache)
}

async fn model(State(cache): State<HostCache>, Path((name, revision)): Path<(String, String)>) -> Response {
    match cache.cached_manifest(&name, &revision) {
        Some(manifest) => Json(PeerModel {
            name,
            revision,
            files: manifest
                .files
                .iter()
                .map(|f| PeerFile {
                    path: f.path.clone(),
                    size: f.size,
                })
                .collect(),
        })
        .into_response(),
        None => not_found(&name, &revision),
    }
}

async fn chunks(State(cache): State<HostCache>, Path((name, revision)): Path<(String, String)>) -> Response {
    if let Some(manifest) = cache.cached_manifest(&name, &revision) {
        let files = manifest
            .files
            .iter()
            .map(|f| PeerFileChunks {
                path: f.path.clone(),
                held: vec![[0, f.chunks.len() as u64]],
                pending: Vec::new(),
            })
            .collect();
        return Json(PeerChunks {
            name,
            revision,
            complete: true,
            files,
        })
        .into_response();
    }
    match cache.board(&name, &revision) {
        Some(board) => Json(board.wire()).into_response(),
        None => not_found(&name, &revision),
    }
}

async fn file(
    State(cache): State<HostCache>,
    Path((name, revision, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(manifest) = cache.cached_manifest(&name, &revision) else {
        return partial_file(&cache, &name, &revision, &path, range);
    };
    let Some(entry) = manifest.file(&path) else {
        return (StatusCode::NOT_FOUND, format!("model {name}@{revision} has no file {path:?}\n")).into_response();
    };
    let full = cache.model_dir(&name, &revision).join(&entry.path);
    serve_file(full, entry.size, range, "application/octet-stream").await
}

/// One range of a file whose pull is in flight, when every chunk it touches is verified; 416
/// (with the file's size) when some are not yet, 404 when no pull of the revision runs.
fn partial_file(cache: &HostCache, name: &str, revision: &str, path: &str, range: Option<&str>) -> Response {
    let Some(board) = cache.board(name, revision) else {
        return not_found(name, revision);
    };
    let Some(file) = board.file(path) else {
        return (StatusCode::NOT_FOUND, format!("model {name}@{revision} has no file {path:?}\n")).into_response();
    };
    let span = match range {
        None => Ok((0, file.size)),
        Some(r) => parse_range(r, file.size),
    };
    let Some((start, end)) = span.ok().filter(|&(start, end)| file.holds_bytes(start, end)) else {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{}", file.size))],
            "those bytes are not verified in this host's cache yet\n",
        )
            .into_response();
    };
    // The file takes its real name when its last chunk is verified; either name will do.
    let final_path = cache.model_dir(name, revision).join(path);
    match crate::hydrate::open_filling(&final_path) {
        Ok(f) => serve_open(f, file.size, start, end, range.is_some(), "application/octet-stream"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}\n", final_path.display())).into_response(),
    }
}

/// Serves `cache` to peers on `listener` (the peer routes alone, no token asked) until the task
/// is dropped or the listener fails.
pub async fn serve_peers(listener: tokio::net::TcpListener, cache: HostCache) -> std::io::Result<()> {
    axum::serve(listener, peer_router(cache)).await
}

fn not_found(name: &str, revision: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("model {name}@{revision} is not complete in this host's cache\n"),
    )
        .into_response()
}

/// Answers a whole file or one range of it, streaming from disk in blocks.
pub(crate) async fn serve_file(path: std::path::PathBuf, size: u64, range: Option<&str>, content_type: &str) -> Response {
    let (status, start, end) = match range.map(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(())) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    match std::fs::File::open(&path) {
        Ok(file) => serve_open(file, size, start, end, status == StatusCode::PARTIAL_CONTENT, content_type),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}\n", path.display())).into_response(),
    }
}

/// Answers bytes `[start, end)` of an open file of `size` bytes, streamed in blocks: 206 with
/// their range when `ranged`, else 200.
fn serve_open(file: std::fs::File, size: u64, start: u64, end: u64, ranged: bool, content_type: &str) -> Response {
    let status = if ranged { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let blocks = read_blocks(Arc::new(file), start, end);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
    }
    response
        .body(Body::from_stream(blocks))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("building a response: {e}\n")).into_response())
}

/// Bytes `[start, end)` of `file` as a stream of blocks read off the async threads.
pub(crate) fn read_blocks(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
    futures::stream::unfold(start, move |at| {
        let file = file.clone();
        async move {
            if at >= end {
                return None;
            }
            let len = BLOCK.min(end - at);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, at).map(|()| bytes::Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            Some((read, at + len))
        }
    })
}

/// Parses one HTTP byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) of a `size`-byte file
/// into a half-open `[start, end)`.
pub(crate) fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", "") => return Err(()),
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            if b < a {
                return Err(());
            }
            (a, (b + 1).min(size))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    /// A `Range` header's value and the half-open span it names in a 100-byte file, if any.
    type RangeCase = (&'static str, Result<(u64, u64), ()>);

    #[test]
    fn ranges() {
        let cases: &[RangeCase] = &[
            ("bytes=0-9", Ok((0, 10))),
            ("bytes=90-200", Ok((90, 100))),
            ("bytes=10-", Ok((10, 100))),
            ("bytes=-5", Ok((95, 100))),
            ("bytes=-500", Ok((0, 100))),
            ("bytes=100-", Err(())),
            ("bytes=5-4", Err(())),
            ("bytes=-0", Err(())),
            ("bytes=0-1,4-5", Err(())),
            ("items=0-1", Err(())),
            ("bytes=x-1", Err(())),
            ("bytes=-", Err(())),
        ];
        for (value, expected) in cases {
            assert_eq!(&parse_range(value, 100), expected, "{value}");
        }
    }
}
