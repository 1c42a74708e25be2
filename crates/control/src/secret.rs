//! How every secret of control is made (`secret`) and digested (`digest`): API keys, deploy
//! tokens and the cluster token.

/// `n_bytes` random bytes as lowercase hex: keys, deploy tokens and the cluster token.
pub(crate) fn secret(n_bytes: usize) -> String {
    (0..n_bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// The hex BLAKE3 digest an app's record keeps of one of its secrets.
pub(crate) fn digest(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}
