//! TLS for the API listener: rustls with the ring provider.
//!
//! The certificate and key are loaded (and checked: readable, PEM, within their validity
//! period, matching) at start; a failure names the file. A [`ReloadingResolver`] holds the
//! served [`CertifiedKey`] behind an `ArcSwap`: a reload (the files changed, polled every
//! `--tls-reload-interval-ms`, or SIGHUP) swaps it for new handshakes only, so established
//! connections keep going. A reload that fails keeps the old certificate and logs an error.
//!
//! With `--tls-client-ca`, clients must present a certificate signed by that CA (mTLS); its
//! subject's common name is attached to each request as [`ClientCertSubject`], which
//! authenticates the request when it carries no bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sb_api::auth::ClientCertSubject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::error::{ServerError, ServerResult};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA bundle (mTLS); a client
    /// certificate's subject CN authenticates a request that has no bearer token.
    #[arg(long, env = "SWITCHBOARD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes (0: only on SIGHUP).
    #[arg(long, env = "SWITCHBOARD_TLS_RELOAD_INTERVAL_MS", default_value_t = 2_000)]
    pub tls_reload_interval_ms: u64,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS side of a listener: what accepts handshakes and the resolver reloads swap.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub resolver: Arc<ReloadingResolver>,
}

impl Tls {
    /// Loads and checks everything at start; `None` without `--tls-cert`.
    pub fn from_args(args: &TlsArgs) -> ServerResult<Option<Tls>> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        let provider = provider();
        let loaded = load_certified_key(cert, key, &provider)?;
        let resolver = Arc::new(ReloadingResolver {
            current: ArcSwap::from_pointee(loaded.key),
            cert_path: cert.clone(),
            key_path: key.clone(),
            last_files: std::sync::Mutex::new(loaded.files),
            provider: provider.clone(),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Config(format!("configuring TLS: {e}")))?;
        let mut config = match &args.tls_client_ca {
            None => builder.with_no_client_auth().with_cert_resolver(resolver.clone()),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca, "--tls-client-ca")? {
                    roots.add(cert).map_err(|e| {
                        ServerError::Config(format!(
                            "--tls-client-ca {}: a certificate is unusable: {e}",
                            ca.display()
                        ))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ServerError::Config(format!("--tls-client-ca {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier).with_cert_resolver(resolver.clone())
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), resolver }))
    }
}

/// Serves the current certificate; [`ReloadingResolver::reload`] swaps it.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The certificate and key bytes last tried (loaded or refused), so an unchanged bad
    /// file is reported once rather than at every poll.
    last_files: std::sync::Mutex<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingResolver {
    /// Reads the files again; when they changed (or `force`), loads and swaps them in. A
    /// failure keeps the certificate in service and logs an error.
    pub fn reload(&self, force: bool) {
        let files = match (std::fs::read(&self.cert_path), std::fs::read(&self.key_path)) {
            (Ok(mut cert), Ok(key)) => {
                cert.extend_from_slice(&key);
                cert
            }
            (Err(e), _) => {
                error!(file = %self.cert_path.display(), error = %e, "TLS reload: cannot read --tls-cert; the old certificate stays in service");
                return;
            }
            (_, Err(e)) => {
                error!(file = %self.key_path.display(), error = %e, "TLS reload: cannot read --tls-key; the old certificate stays in service");
                return;
            }
        };
        {
            let mut last = self.last_files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last == files && !force {
                return;
            }
            *last = files;
        }
        match load_certified_key(&self.cert_path, &self.key_path, &self.provider) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded.key));
                info!(cert = %self.cert_path.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(e) => {
                error!(error = %e, "TLS reload failed; the old certificate stays in service");
            }
        }
    }

    /// Polls the files every `interval` (when not zero) and reloads on SIGHUP.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> ServerResult<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup =
            signal(SignalKind::hangup()).map_err(ServerError::io("installing the SIGHUP handler"))?;
        let resolver = Arc::downgrade(self);
        Ok(tokio::spawn(async move {
            let mut ticker = (!interval.is_zero()).then(|| {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            loop {
                let force = tokio::select! {
                    _ = hangup.recv() => true,
                    _ = async {
                        match ticker.as_mut() {
                            Some(ticker) => {
                                ticker.tick().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    } => false,
                };
                let Some(resolver) = resolver.upgrade() else { return };
                if force {
                    info!("SIGHUP: reloading the TLS certificate");
                }
                // File reads and parsing are blocking work: keep them off the runtime.
                let _ = tokio::task::spawn_blocking(move || resolver.reload(force)).await;
            }
        }))
    }
}

struct Loaded {
    key: CertifiedKey,
    /// The certificate file's bytes, then the key file's.
    files: Vec<u8>,
}

fn read_file(path: &Path, flag: &str) -> ServerResult<Vec<u8>> {
    std::fs::read(path).map_err(ServerError::io(format!("reading {flag} {}", path.display())))
}

fn read_certs(path: &Path, flag: &str) -> ServerResult<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path, flag)?;
    parse_certs(&bytes, path, flag)
}

fn parse_certs(bytes: &[u8], path: &Path, flag: &str) -> ServerResult<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
        ServerError::Config(format!("{flag} {}: not a PEM certificate file: {e}", path.display()))
    })?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "{flag} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads and checks a certificate chain and its key: within the validity period, and the
/// key matching the leaf. Every error names the file at fault.
fn load_certified_key(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> ServerResult<Loaded> {
    let cert_bytes = read_file(cert_path, "--tls-cert")?;
    let key_bytes = read_file(key_path, "--tls-key")?;
    let certs = parse_certs(&cert_bytes, cert_path, "--tls-cert")?;
    for (index, cert) in certs.iter().enumerate() {
        check_validity(cert, cert_path, index)?;
    }
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        ServerError::Config(format!("--tls-key {}: holds no usable PEM private key: {e}", key_path.display()))
    })?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        ServerError::Config(format!("--tls-key {}: unsupported private key: {e}", key_path.display()))
    })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        ServerError::Config(format!(
            "--tls-key {} does not match the certificate in --tls-cert {}: {e}",
            key_path.display(),
            cert_path.display()
        ))
    })?;
    let mut files = cert_bytes;
    files.extend_from_slice(&key_bytes);
    Ok(Loaded { key: certified, files })
}

fn check_validity(cert: &CertificateDer<'_>, path: &Path, index: usize) -> ServerResult<()> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        ServerError::Config(format!(
            "--tls-cert {}: certificate #{index} is not valid X.509: {e}",
            path.display()
        ))
    })?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    let subject = parsed.subject().to_string();
    if now > validity.not_after {
        return Err(ServerError::Config(format!(
            "--tls-cert {}: the certificate for {subject:?} expired at {}",
            path.display(),
            validity.not_after
        )));
    }
    if now < validity.not_before {
        return Err(ServerError::Config(format!(
            "--tls-cert {}: the certificate for {subject:?} is not valid before {}",
            path.display(),
            validity.not_before
        )));
    }
    Ok(())
}

/// The common name of a verified client certificate.
fn client_subject(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(Arc::from(cn))
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Accepts TLS connections and serves `router` over HTTP/1.1 on each, until `stop` turns
/// true; then it stops accepting and waits for the open connections to finish their
/// in-flight requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(client_subject);
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                if let Some(subject) = &subject {
                    request.extensions_mut().insert(ClientCertSubject(subject.clone()));
                }
                let mut router = router.clone();
                tower_service::Service::call(&mut router, request)
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
