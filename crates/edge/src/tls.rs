//! TLS at the edge (rustls with ring): one certificate per app host name, picked by the name
//! the client asks for (SNI), reloaded when its files change, and HTTP/2 for clients that offer
//! it (ALPN). HTTP/1.1 over TLS goes through the same fast path as plain connections.
//!
//! The host names of each certificate are read from it (its DNS subject alternative names,
//! wildcards included); the first certificate given also answers clients that send no name or
//! one no certificate covers.

use crate::edge::Edge;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How often the certificate files are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The first byte of every TLS connection: a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Streams one HTTP/2 connection may carry at once (nginx's default is 128).
const H2_STREAMS: u32 = 128;

/// One certificate of the edge: its PEM chain and the PEM private key that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the edge's certificates could not be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("edge TLS: no certificate given")]
    Empty,
    #[error("TLS certificate {path}: not a readable PEM certificate chain")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS certificate {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS certificate {path}: its first certificate does not parse ({reason})")]
    Parse { path: PathBuf, reason: String },
    #[error("TLS key {path}: no readable PEM private key")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS key {path}: not a key type the edge can sign with")]
    KeyType {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS key {key} does not match certificate {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider offers none of the protocol versions rustls considers safe.
    #[error("TLS protocol versions")]
    Protocol(#[source] rustls::Error),
}

/// The certificates in force, by the names they cover.
#[derive(Debug)]
struct Certs {
    /// The first certificate given: for clients that name no host or one nothing covers.
    default: Arc<CertifiedKey>,
    /// Exact names (lower case).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Wildcards by the part after `*.` (lower case).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The host names of each certificate, in the order given, for the log.
    names: Vec<Vec<String>>,
}

impl Certs {
    fn load(files: &[CertFiles]) -> Result<Certs, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut loaded = Vec::with_capacity(files.len());
        let mut names = Vec::with_capacity(files.len());
        for pair in files {
            let (key, cert_names) = load_pair(pair, &provider)?;
            names.push(cert_names);
            loaded.push(key);
        }
        let default = loaded.first().cloned().ok_or(TlsError::Empty)?;
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        // The first certificate to name a host keeps it.
        for (key, cert_names) in loaded.iter().zip(&names) {
            for name in cert_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert_with(|| key.clone()),
                    None => exact.entry(name).or_insert_with(|| key.clone()),
                };
            }
        }
        Ok(Certs {
            default,
            exact,
            wildcard,
            names,
        })
    }

    /// The certificate for a client that asked for `name`.
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        // A wildcard covers exactly one label.
        if let Some((_, rest)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(rest) {
                return key.clone();
            }
        }
        self.default.clone()
    }
}

/// Reads one certificate chain and its key; the DNS names the certificate covers.
fn load_pair(pair: &CertFiles, provider: &rustls::crypto::CryptoProvider) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let bad_cert = |source| TlsError::Certificate {
        path: pair.cert.clone(),
        source,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(bad_cert)?
        .collect::<Result<_, _>>()
        .map_err(bad_cert)?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: pair.cert.clone() });
    };
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| TlsError::Parse {
            path: pair.cert.clone(),
            reason: e.to_string(),
        })?
        .valid_dns_names()
        .map(str::to_string)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|source| TlsError::Key {
        path: pair.key.clone(),
        source,
    })?;
    let signer = provider.key_provider.load_private_key(key).map_err(|source| TlsError::KeyType {
        path: pair.key.clone(),
        source,
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|source| TlsError::Mismatch {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
        source,
    })?;
    Ok((Arc::new(certified), names))
}

/// What a file looked like when last read: a change in any of it means read it again.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Picks the certificate of each handshake from those in force.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<Certs>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(certs.pick(hello.server_name()))
    }
}

/// The edge's TLS: its certificates (reloadable) and the rustls config that serves them.
pub struct EdgeTls {
    files: Vec<CertFiles>,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    /// The files as they were at the last load (or the last failed try).
    stamps: Mutex<Vec<(Stamp, Stamp)>>,
}

impl std::fmt::Debug for EdgeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeTls").field("files", &self.files).finish_non_exhaustive()
    }
}

// === impl EdgeTls ===

impl EdgeTls {
    /// Loads `files` (the first is the default certificate). HTTP/2 is offered before HTTP/1.1.
    pub fn load(files: Vec<CertFiles>) -> Result<Arc<EdgeTls>, TlsError> {
        let stamps = Self::stamps_of(&files);
        let certs = Certs::load(&files)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certs)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(EdgeTls {
            files,
            resolver,
            config: Arc::new(config),
            stamps: Mutex::new(stamps),
        }))
    }

    fn stamps_of(files: &[CertFiles]) -> Vec<(Stamp, Stamp)> {
        files.iter().map(|f| (stamp(&f.cert), stamp(&f.key))).collect()
    }

    /// The host names each certificate covers, in the order given.
    pub fn names(&self) -> Vec<Vec<String>> {
        self.current().names.clone()
    }

    fn current(&self) -> Arc<Certs> {
        self.resolver.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again if any changed since they were last read. `Ok(true)`: the new
    /// certificates are in force for the next handshake. On an error the old ones stay (a
    /// renewal may have written the certificate but not yet its key); the next change is tried.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = Self::stamps_of(&self.files);
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *stamps == now {
                return Ok(false);
            }
            *stamps = now;
        }
        let certs = Certs::load(&self.files)?;
        *self.resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        Ok(true)
    }

    /// Looks at the files every `every` on the current runtime and reloads them when they
    /// change, until the last other holder of `tls` lets it go.
    pub fn watch(tls: &Arc<EdgeTls>, every: Duration) {
        let weak: Weak<EdgeTls> = Arc::downgrade(tls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                // Reading files blocks; they are small, but not on a runtime thread.
                let result = tokio::task::spawn_blocking({
                    let tls = tls.clone();
                    move || tls.reload_if_changed()
                })
                .await;
                match result {
                    Ok(Ok(true)) => tracing::info!(names = ?tls.names(), "edge TLS certificates reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %with_causes(&e), "edge TLS certificates changed but do not load; the previous ones stay")
                    }
                    Err(e) => tracing::warn!(error = %e, "reloading the edge's TLS certificates"),
                }
            }
        });
    }
}

/// An error and each of its causes, on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

/// The answer to plain HTTP on an address that speaks TLS.
fn plain_on_tls() -> Vec<u8> {
    let body = r#"{"error":{"message":"this address speaks HTTPS: use an https:// URL","type":"invalid_request_error","param":null,"code":"https_required"}}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one client connection over TLS: the handshake (within the head timeout), then HTTP/2
/// when the client chose it, else the HTTP/1.1 path plain connections take. Plain HTTP is told
/// to use HTTPS.
pub(crate) async fn serve(edge: Arc<Edge>, tls: Arc<EdgeTls>, mut stream: TcpStream, stop: watch::Receiver<bool>) {
    let limit = edge.config.limits.head_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => return crate::server::answer_and_close(&mut stream, &plain_on_tls(), limit).await,
        _ => return,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(edge, stream, stop).await;
    } else {
        crate::server::serve_connection(edge, stream, stop).await;
    }
}

/// Serves one HTTP/2 connection with hyper, every stream through [`crate::handle`].
async fn serve_h2<S>(edge: Arc<Edge>, stream: S, stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle = edge.config.limits.idle_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let edge = edge.clone();
        async move { Ok::<_, std::convert::Infallible>(crate::handle(edge, request.map(axum::body::Body::new)).await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size(crate::server::MAX_HEAD as u32)
        // A connection whose client stopped answering pings is closed.
        .keep_alive_interval(Some(idle))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = crate::server::stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(names: &[&[&str]]) -> Certs {
        // Keys are never used to sign here: one placeholder per certificate, told apart by its
        // chain.
        let provider = rustls::crypto::ring::default_provider();
        let der = rcgen_free_key();
        let signer = provider.key_provider.load_private_key(der).unwrap();
        let keys: Vec<Arc<CertifiedKey>> = (0..names.len())
            .map(|i| Arc::new(CertifiedKey::new(vec![CertificateDer::from(vec![i as u8])], signer.clone())))
            .collect();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (key, list) in keys.iter().zip(names) {
            for name in *list {
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert_with(|| key.clone()),
                    None => exact.entry(name.to_string()).or_insert_with(|| key.clone()),
                };
            }
        }
        Certs {
            default: keys[0].clone(),
            exact,
            wildcard,
            names: vec![],
        }
    }

    /// A PKCS#8 P-256 key made by ring.
    fn rcgen_free_key() -> PrivateKeyDer<'static> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into())
    }

    fn which(certs: &Certs, name: Option<&str>) -> u8 {
        certs.pick(name).cert[0].as_ref()[0]
    }

    #[test]
    fn names_pick_exact_then_wildcard_then_the_default() {
        let certs = certs(&[&["edge.test"], &["chat.apps.test"], &["*.apps.test"]]);
        let cases = [
            (None, 0, "no name: the default"),
            (Some("chat.apps.test"), 1, "exact beats wildcard"),
            (Some("CHAT.Apps.Test."), 1, "names are case-blind, a trailing dot ignored"),
            (Some("embed.apps.test"), 2, "wildcard covers one label"),
            (Some("a.b.apps.test"), 0, "wildcard covers one label only"),
            (Some("apps.test"), 0, "wildcard does not cover its own base"),
            (Some("other.test"), 0, "nothing covers it: the default"),
        ];
        for (name, want, why) in cases {
            assert_eq!(which(&certs, name), want, "{name:?}: {why}");
        }
    }
}
