//! HTTPS for the REST API (`restapi.certfile`, `keyfile`, `cafile`,
//! `verify_client`), with rustls.
//!
//! The configuration is read and checked once at start: a missing or
//! unreadable file, a file without a certificate or key, or client
//! verification without a CA is an error naming the file and the key. With
//! `verify_client: required` a client without a certificate signed by the
//! CA is refused during the handshake; with `optional` a certificate is
//! checked when one is presented, and a client without one is served
//! (Patroni additionally answers 403 to its write requests: not done here).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientVerify {
    #[default]
    None,
    Optional,
    Required,
}

/// The REST API's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cafile: Option<PathBuf>,
    pub verify_client: ClientVerify,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("restapi.verify_client is '{0}' but restapi.cafile is not set: client certificates are checked against that CA")]
    NoCa(&'static str),
    #[error("the REST API's TLS settings are not usable: {0}")]
    Rustls(String),
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration from the files.
pub fn server_config(settings: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("restapi.certfile", &settings.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&settings.keyfile)
        .map_err(|e| file_error("restapi.keyfile", &settings.keyfile, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match settings.verify_client {
        ClientVerify::None => builder.with_no_client_auth(),
        mode => {
            let word = if mode == ClientVerify::Required {
                "required"
            } else {
                "optional"
            };
            let cafile = settings.cafile.as_ref().ok_or(TlsError::NoCa(word))?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates("restapi.cafile", cafile)? {
                roots
                    .add(ca)
                    .map_err(|e| file_error("restapi.cafile", cafile, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if mode == ClientVerify::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("restapi.certfile/keyfile: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` over HTTPS on an already-bound listener until `shutdown`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .handle(handle)
    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
    .await
}
