//! How the cache names a model revision, and which names it accepts as path components.

/// A model revision in the cache: (name, revision).
pub(crate) type Key = (String, String);

/// A path component that cannot climb out of its directory or name a hidden file.
pub(crate) fn valid_component(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.contains('\\')
}
