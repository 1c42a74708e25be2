//! TLS between daemons (rustls, ring): a daemon given a certificate and key serves its API over
//! HTTPS only; every daemon given a CA trusts the daemons it calls by that CA. Off when no
//! certificate is configured (loopback, a private network), on as soon as one is.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call to another daemon may take in all.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The TLS files of a daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain the daemon's API presents; with `key`, the API speaks HTTPS only.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificate that signed the other daemons' certificates, trusted when calling them.
    pub ca: Option<PathBuf>,
}

/// Why a TLS file could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: not a readable PEM certificate chain")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS certificate {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS key {path}: no readable PEM private key")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
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
    #[error("TLS CA {path}: reading it")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS CA {path} is not a PEM certificate")]
    Ca {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("building an HTTP client")]
    Client(#[source] reqwest::Error),
}

// === impl TlsFiles ===

impl TlsFiles {
    /// The server side, when a certificate is configured.
    pub fn server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let bad_cert = |source| TlsError::Certificate {
            path: cert.clone(),
            source,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(bad_cert)?
            .collect::<Result<_, _>>()
            .map_err(bad_cert)?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert.clone() });
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.clone(), source })?;
        let mismatch = |source| TlsError::Mismatch {
            cert: cert.clone(),
            key: key.clone(),
            source,
        };
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(mismatch)?;
        Ok(Some(Arc::new(config)))
    }

    /// `https` when the daemon serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client for calling other daemons, trusting `ca` when given.
    pub fn client(&self) -> Result<reqwest::Client, TlsError> {
        client(self.ca.as_deref())
    }
}

/// An HTTP client that trusts `ca` (a PEM file) for HTTPS, if given.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder().timeout(CLIENT_TIMEOUT);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|source| TlsError::ReadCa {
            path: ca.to_path_buf(),
            source,
        })?;
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|source| TlsError::Ca {
            path: ca.to_path_buf(),
            source,
        })?;
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
    }
    builder.build().map_err(TlsError::Client)
}

/// Serves `app` over TLS on `listener` until `stop` resolves; handshakes and connections run in
/// their own tasks, so a slow client holds up no one else.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    stop: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let service = hyper_util::service::TowerToHyperService::new(app);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = colo_edge::serve::accept(&listener) => accepted,
            _ = &mut stop => return,
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
