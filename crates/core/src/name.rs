//! Validated names for apps and models: they end up in URLs, host names and file paths.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest name accepted, so that `<app>.<domain>` stays a valid DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// An app or model name: 1 to 63 characters of `a-z`, `0-9`, `-` and `.`, starting with a
/// letter or digit. The same rule serves apps and models so either can appear in a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name {name:?} is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { name: String, len: usize },
    #[error("name {name:?} has {ch:?} at position {pos}; use a-z, 0-9, '-' and '.', starting with a letter or digit")]
    BadChar { name: String, ch: char, pos: usize },
}

impl AppName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong { name, len });
        }
        for (pos, ch) in name.chars().enumerate() {
            let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || (pos > 0 && (ch == '-' || ch == '.'));
            if !ok {
                return Err(NameError::BadChar { name, ch, pos });
            }
        }
        if name.contains("..") {
            let pos = name.find("..").unwrap_or(0);
            return Err(NameError::BadChar {
                name,
                ch: '.',
                pos: pos + 1,
            });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AppName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AppName> for String {
    fn from(value: AppName) -> Self {
        value.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        let cases: &[(&str, bool)] = &[
            ("minilm", true),
            ("llama-3.1-8b", true),
            ("a", true),
            ("", false),
            ("-x", false),
            ("Upper", false),
            ("a/b", false),
            ("a..b", false),
            ("has space", false),
        ];
        for (name, ok) in cases {
            assert_eq!(AppName::new(*name).is_ok(), *ok, "{name:?}");
        }
        assert!(matches!(AppName::new("x".repeat(64)), Err(NameError::TooLong { len: 64, .. })));
    }
}
