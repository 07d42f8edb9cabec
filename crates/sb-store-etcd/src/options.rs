//! How to reach etcd: endpoints, namespace, credentials, TLS and timeouts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use sb_store::{Limits, StoreError, StoreResult};

/// TLS to etcd (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`), from PEM files. With TLS
/// the endpoints must be `https://` URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate; `None` trusts nothing beyond the CA given
    /// (etcd-client is built without system roots).
    pub ca_cert: Option<PathBuf>,
    /// A client certificate, for etcd's `--client-cert-auth`; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl EtcdTls {
    pub(crate) async fn client_config(&self) -> StoreResult<TlsOptions> {
        let mut config = TlsOptions::new();
        if let Some(ca) = &self.ca_cert {
            config = config.ca_certificate(Certificate::from_pem(read_pem(ca, "--etcd-cacert").await?));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let cert = read_pem(cert, "--etcd-cert").await?;
                let key = read_pem(key, "--etcd-key").await?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::InvalidArgument(
                    "an etcd client certificate needs both --etcd-cert and --etcd-key".into(),
                ))
            }
        }
        Ok(config)
    }
}

async fn read_pem(path: &Path, flag: &str) -> StoreResult<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .map_err(|e| StoreError::InvalidArgument(format!("cannot read {flag} file {}: {e}", path.display())))
}

#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// etcd client URLs, for example `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every port key is stored under this prefix and stripped on the way out, as
    /// etcd's namespace package does: for example `b"/switchboard/"`.
    pub namespace: Vec<u8>,
    /// etcd user and password, for a cluster with auth enabled.
    pub user: Option<(String, String)>,
    pub tls: Option<EtcdTls>,
    /// The limits to check before sending; they must not exceed the cluster's
    /// `--max-request-bytes` and `--max-txn-ops`.
    pub limits: Limits,
    pub connect_timeout: Duration,
    /// Each unary request (range, txn, lease calls, compaction) fails as unavailable
    /// after this long.
    pub request_timeout: Duration,
    /// Watch batches buffered per watch before etcd's stream is back-pressured.
    pub watch_buffer: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            namespace: Vec::new(),
            user: None,
            tls: None,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_buffer: 256,
        }
    }

    pub fn with_namespace(mut self, namespace: impl Into<Vec<u8>>) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub(crate) fn keep_alive_interval(&self) -> Duration {
        (self.request_timeout / 2).max(Duration::from_secs(1))
    }
}

/// Debug without the password.
impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("namespace", &String::from_utf8_lossy(&self.namespace))
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch_buffer", &self.watch_buffer)
            .finish()
    }
}
