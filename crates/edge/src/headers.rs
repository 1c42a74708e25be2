//! The header names colo adds to requests and answers, in one place.

use http::HeaderName;

/// An engine's queue as it answers: `running=R;waiting=W`.
pub const COLO_LOAD: HeaderName = HeaderName::from_static("colo-load");
/// An engine asks the edge to send the request elsewhere: `region=`, `instance=`, `elsewhere`.
pub const COLO_REPLAY: HeaderName = HeaderName::from_static("colo-replay");
/// A caller asks for this region first.
pub const COLO_PREFER_REGION: HeaderName = HeaderName::from_static("colo-prefer-region");
/// A caller asks for this region only.
pub const COLO_FORCE_REGION: HeaderName = HeaderName::from_static("colo-force-region");
/// The machine that answered.
pub const COLO_MACHINE: HeaderName = HeaderName::from_static("colo-machine");
/// The region of the machine that answered.
pub const COLO_REGION: HeaderName = HeaderName::from_static("colo-region");
/// On the answer to the request that woke a machine: what the wait was made of.
pub const COLO_COLD_START: HeaderName = HeaderName::from_static("colo-cold-start");

/// Whether a comma-separated header value (`Connection`) lists `token`, in any case, with
/// whitespace around items as RFC 9110's lists allow. Read as bytes: a value holding other bytes
/// than visible ASCII, which `HeaderValue::to_str` refuses, may still carry the token (found by
/// fuzzing the request parser).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}
