//! Reading a request body up to the edge's limit.

use crate::EdgeError;
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use std::time::Duration;

/// Bodies over the limit are still read, up to this many bytes, before the 413 goes out:
/// a client that is cut off mid-upload often never sees the answer that explains why.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// The whole body, or why it cannot be had: over `limit` bytes (declared or sent), or a wait
/// of more than `progress` for its next bytes.
pub(crate) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize, progress: Duration) -> Result<Bytes, EdgeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body that came as one frame (nearly all: the fast path hands over the bytes read with
    // the head) is passed on as it is; only a second frame starts a copy.
    let mut first: Option<Bytes> = None;
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0u64;
    let too_large = |seen: u64| EdgeError::BodyTooLarge {
        size: declared.unwrap_or(seen).max(seen),
        limit,
    };
    if declared.is_some_and(|size| size > DRAIN_LIMIT) {
        return Err(too_large(0));
    }
    while !hyper::body::Body::is_end_stream(&body) {
        // A small body has usually arrived with its head: take it without arming a timer.
        let next = match futures::FutureExt::now_or_never(body.frame()) {
            Some(next) => Ok(next),
            None => tokio::time::timeout(progress, body.frame()).await,
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(EdgeError::BodyRead(e.to_string())),
            Ok(None) => break,
            Err(_) if seen > limit as u64 => return Err(too_large(seen)),
            Err(_) => return Err(EdgeError::BodyRead("timed out reading the request body".into())),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > DRAIN_LIMIT {
            return Err(too_large(seen));
        }
        if seen <= limit as u64 && declared.is_none_or(|size| size <= limit as u64) {
            match first.take() {
                None if collected.is_empty() => first = Some(data),
                None => collected.extend_from_slice(&data),
                Some(earlier) => {
                    collected.reserve(earlier.len() + data.len());
                    collected.extend_from_slice(&earlier);
                    collected.extend_from_slice(&data);
                }
            }
        }
    }
    if seen > limit as u64 || declared.is_some_and(|size| size > limit as u64) {
        return Err(too_large(seen));
    }
    Ok(first.unwrap_or_else(|| collected.freeze()))
}
