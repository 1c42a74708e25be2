//! Turning names and ids into JetStream KV keys.

/// Escapes `name` into a KV key. KV keys are NATS subject tokens: only `A-Z a-z 0-9 - _ = . /`
/// are allowed, and dots split tokens (so `a..b` or a leading dot is refused). Keeping only
/// `A-Z a-z 0-9 - _` as they are and writing every other byte as `=XX` (uppercase hex, `=` itself
/// included) gives a valid key for any non-empty name, and distinct names give distinct keys.
/// The empty name becomes `=` so that it too is a valid key, distinct from every other name.
pub fn escape_key(name: &str) -> String {
    if name.is_empty() {
        return "=".into();
    }
    let mut key = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            key.push(byte as char);
        } else {
            key.push_str(&format!("={byte:02X}"));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_subjects_do_not_allow() {
        let cases = [
            ("m-1a2b_c", "m-1a2b_c"),
            ("bge.small", "bge=2Esmall"),
            ("a=b", "a=3Db"),
            ("x*>", "x=2A=3E"),
            ("a b\tc", "a=20b=09c"),
            ("héllo", "h=C3=A9llo"),
            (".", "=2E"),
            ("", "="),
        ];
        for (name, want) in cases {
            assert_eq!(escape_key(name), want, "{name:?}");
        }
    }

    #[test]
    fn keys_are_valid_and_distinct() {
        let names = ["a", "A", "a.b", "a=2Eb", "a/b", "", "=", "..", "a..b", "ü"];
        let keys: std::collections::BTreeSet<String> = names.iter().map(|n| escape_key(n)).collect();
        assert_eq!(keys.len(), names.len());
        for key in &keys {
            assert!(!key.is_empty() && !key.starts_with('.') && !key.ends_with('.'));
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)), "{key}");
        }
    }
}
