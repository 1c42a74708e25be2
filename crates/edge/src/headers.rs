//! The header names colo adds to requests and answers, in one place, and which headers describe
//! one connection rather than the message.

use http::{header, HeaderMap, HeaderName, HeaderValue};

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

/// Headers that describe one connection rather than the message (RFC 9110's fixed list); a
/// message's `Connection` header may name more (see [`nominated`]).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-authenticate" | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    )
}

/// The headers a message's `Connection` header names as hop-by-hop, beyond the fixed list.
pub(crate) fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        nominated_by(value, &mut names);
    }
    names
}

/// Adds the header names that one `Connection` header value lists to `names`.
pub(crate) fn nominated_by(value: &HeaderValue, names: &mut Vec<HeaderName>) {
    let Ok(value) = value.to_str() else { return };
    let listed = value
        .split(',')
        .map(str::trim)
        // The usual options, which name no header (none is made for them).
        .filter(|token| !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close"))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name));
    names.extend(listed);
}
