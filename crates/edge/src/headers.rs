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
