//! Which store a command opens: the flags shared by `serve`, `backup` and `restore`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sb_store::SharedStore;
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};
use sb_store_etcd::{EtcdOptions, EtcdStore, EtcdTls};

use crate::error::{ServerError, ServerResult};

/// The embedded store's file inside the data dir.
pub const EMBEDDED_FILE: &str = "store.redb";

#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Where the node id and the embedded store live.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./switchboard-data")]
    pub data_dir: PathBuf,
    /// `embedded`, or `etcd://host:port[,host:port...]`.
    #[arg(long, env = "SWITCHBOARD_STORE", default_value = "embedded")]
    pub store: String,
    /// etcd only: every key lives under this prefix.
    #[arg(long, env = "SWITCHBOARD_ROOT_PREFIX", default_value = "/switchboard/")]
    pub root_prefix: String,
    /// etcd only: CA certificate (PEM) to verify etcd with.
    #[arg(long, env = "SWITCHBOARD_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// etcd only: client certificate (PEM).
    #[arg(long, env = "SWITCHBOARD_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// etcd only: client key (PEM).
    #[arg(long, env = "SWITCHBOARD_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd only: user name.
    #[arg(long, env = "SWITCHBOARD_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd only: password (prefer the environment variable).
    #[arg(long, env = "SWITCHBOARD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// History kept by automatic compaction, in revisions.
    #[arg(long, env = "SWITCHBOARD_RETENTION_REVISIONS", default_value_t = 50_000)]
    pub retention_revisions: u64,
    /// Embedded only: redb's page cache, in MiB. The current state is in memory anyway
    /// (but for the values of cold keys); the cache serves reads of cold values and of past
    /// revisions, watch catch-up, checkpoints and compaction (the OS page cache backs it).
    /// 1 MiB by default: on the config RSS bench (10k configs) 4 MiB cost 1.8 MiB more
    /// resident memory and no publish throughput.
    #[arg(long, env = "SWITCHBOARD_EMBEDDED_CACHE_MIB", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub embedded_cache_mib: u64,
}

/// Keys whose values the embedded store keeps only in its files, not in memory: the bulk
/// of the data, which is either served from a view that keeps what reads need (config
/// items and their current content, gray releases, instances and their health checks) or
/// rarely read (config history, audit records). Nothing reads their values from the store
/// on a hot path (a publish or a delete may read its item: a write path, behind a durable
/// commit). Everything else stays in memory too.
pub const COLD_PREFIXES: [&str; 4] = [
    sb_config::CONFIG_PREFIX,
    sb_audit::AUDIT_PREFIX,
    sb_registry::names::INSTANCES_PREFIX,
    sb_health::CHECKS_PREFIX,
];

/// An open store, and the embedded store behind it when there is one (to close it).
pub struct OpenStore {
    pub store: SharedStore,
    pub embedded: Option<Arc<EmbeddedStore>>,
    pub description: String,
}

impl StoreArgs {
    pub fn etcd_endpoints(&self) -> ServerResult<Option<Vec<String>>> {
        if self.store == "embedded" {
            return Ok(None);
        }
        let Some(hosts) = self.store.strip_prefix("etcd://") else {
            return Err(ServerError::Config(format!(
                "--store is {:?}: use `embedded` or `etcd://host:port[,host:port...]`",
                self.store
            )));
        };
        let endpoints: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("http://{h}")).collect();
        if endpoints.is_empty() {
            return Err(ServerError::Config(format!("--store {:?} names no etcd endpoint", self.store)));
        }
        Ok(Some(endpoints))
    }

    pub async fn open(&self) -> ServerResult<OpenStore> {
        match self.etcd_endpoints()? {
            None => {
                let path = self.data_dir.join(EMBEDDED_FILE);
                let mut options = EmbeddedOptions::new(&path);
                options.retention_revisions = self.retention_revisions;
                options.cache_bytes = (self.embedded_cache_mib as usize) << 20;
                options.cold_prefixes = COLD_PREFIXES.iter().map(|p| p.as_bytes().to_vec()).collect();
                let store = EmbeddedStore::open(options).await.map_err(ServerError::store(format!(
                    "opening the embedded store {} (is another switchboard using it?)",
                    path.display()
                )))?;
                Ok(OpenStore {
                    store: store.clone(),
                    embedded: Some(store),
                    description: format!("the embedded store at {}", path.display()),
                })
            }
            Some(mut endpoints) => {
                let tls = (self.etcd_cacert.is_some() || self.etcd_cert.is_some()).then(|| EtcdTls {
                    ca_cert: self.etcd_cacert.clone(),
                    client_cert: self.etcd_cert.clone(),
                    client_key: self.etcd_key.clone(),
                });
                if tls.is_some() {
                    endpoints = endpoints.iter().map(|e| e.replacen("http://", "https://", 1)).collect();
                }
                let mut options =
                    EtcdOptions::new(endpoints.clone()).with_namespace(self.root_prefix.as_bytes());
                options.tls = tls;
                options.user = match (&self.etcd_user, &self.etcd_password) {
                    (Some(user), Some(password)) => Some((user.clone(), password.clone())),
                    (Some(_), None) => {
                        return Err(ServerError::Config(
                            "--etcd-user needs --etcd-password (or SWITCHBOARD_ETCD_PASSWORD)".into(),
                        ))
                    }
                    _ => None,
                };
                options.connect_timeout = Duration::from_secs(5);
                let store = EtcdStore::connect(options)
                    .await
                    .map_err(ServerError::store(format!("connecting to etcd at {}", endpoints.join(","))))?;
                Ok(OpenStore {
                    store,
                    embedded: None,
                    description: format!("etcd at {} under {:?}", endpoints.join(","), self.root_prefix),
                })
            }
        }
    }
}
