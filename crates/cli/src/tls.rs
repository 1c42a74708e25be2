//! TLS between daemons (rustls, ring): a daemon given a certificate and key serves its API over
//! HTTPS only; every daemon given a CA trusts the daemons it calls by that CA. Off when no
//! certificate is configured (loopback, a private network), on as soon as one is.

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS flags of a daemon.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain this daemon's API presents; with --tls-key, the API speaks HTTPS only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed the other daemons' certificates, trusted when calling them.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server side, when a certificate is configured.
    pub fn server(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("--tls-cert: reading {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("--tls-cert: {} is not a PEM certificate chain", cert.display()))?;
        if chain.is_empty() {
            bail!("--tls-cert: {} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("--tls-key: no PEM private key in {}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("--tls-cert/--tls-key: the key does not match the certificate")?;
        Ok(Some(Arc::new(config)))
    }

    /// `https` when this daemon serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client for calling other daemons, trusting --tls-ca when given.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        client(self.tls_ca.as_deref())
    }
}

/// An HTTP client that trusts `ca` (a PEM file) for HTTPS, if given.
pub fn client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("--tls-ca: reading {}", ca.display()))?;
        let certificate =
            reqwest::Certificate::from_pem(&pem).with_context(|| format!("--tls-ca: {} is not a PEM certificate", ca.display()))?;
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
    }
    Ok(builder.build()?)
}

/// Serves `app` over TLS on `listener` until `stop` resolves; handshakes and connections run in
/// their own tasks, so a slow client holds up no one else.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let service = hyper_util::service::TowerToHyperService::new(app);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::edge_workers::accept(&listener) => accepted,
            _ = &mut stop => return,
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
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
