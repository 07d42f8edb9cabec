//! The etcd adapter of the store port: [`EtcdStore`] maps every port call onto a real
//! etcd (3.4 or later) through etcd-client, inside a key namespace.
//!
//! It refuses what etcd would refuse before sending it (request size, operations per
//! transaction, duplicate keys), reads large ranges in pages at one revision under the
//! client's 4 MiB decode limit, reassembles fragmented watch responses so that a consumer
//! never sees half a revision, and resumes broken watches from the last delivered
//! revision. [`EtcdCompactor`] keeps etcd's history bounded, one node at a time.
//!
//! Architecture invariant: this crate is the only one that knows etcd-client. Nothing
//! above the port sees an etcd type.
#![forbid(unsafe_code)]

mod compactor;
mod convert;
mod failure;
mod keep_alive;
mod kv;
mod namespace;
mod options;
mod watch;

use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions};
use sb_store::{
    granted_ttl, DeleteResponse, KeyRange, KeyValue, LeaseGrant, LeaseId, LeaseInfo, Limits, RangeRequest,
    RangeResponse, Revision, Store, StoreError, StoreResult, Txn, TxnResponse, WatchRequest, WatchStream,
};

pub use compactor::{EtcdCompactor, EtcdCompactorOptions};
pub use options::{EtcdOptions, EtcdTls};

use failure::{timed, Failure};
use keep_alive::KeepAliveMux;
use namespace::Namespace;

/// The store port over a real etcd. Cheap to share: every call clones etcd-client's
/// handles, which share one HTTP/2 channel.
pub struct EtcdStore {
    client: Client,
    ns: Namespace,
    options: EtcdOptions,
    keep_alive: KeepAliveMux,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers within the connect timeout.
    pub async fn connect(options: EtcdOptions) -> StoreResult<Arc<EtcdStore>> {
        if options.endpoints.is_empty() {
            return Err(StoreError::InvalidArgument("no etcd endpoint given".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            // HTTP/2 pings find a dead connection even while a watch is idle.
            .with_keep_alive(options.keep_alive_interval(), options.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone()).with_auto_token_refresh(true);
        }
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls.client_config().await?);
        }
        let client =
            tokio::time::timeout(options.connect_timeout, Client::connect(&options.endpoints, Some(connect)))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "etcd at {} did not answer within {} ms",
                        options.endpoints.join(","),
                        options.connect_timeout.as_millis()
                    ))
                })?
                .map_err(|e| Failure::classify(&e).into_store_error())?;
        let store = EtcdStore {
            keep_alive: KeepAliveMux::spawn(client.lease_client(), options.request_timeout),
            ns: Namespace::new(options.namespace.clone()),
            client,
            options,
        };
        // Fail at start, with the endpoint in the message, rather than at the first request.
        let probe = tokio::time::timeout(store.options.connect_timeout, store.current_revision()).await;
        match probe {
            Ok(Ok(_)) => Ok(Arc::new(store)),
            Ok(Err(StoreError::Unavailable(reason))) => Err(StoreError::Unavailable(format!(
                "cannot reach etcd at {}: {reason}",
                store.options.endpoints.join(",")
            ))),
            Ok(Err(other)) => Err(other),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {} ms",
                store.options.endpoints.join(","),
                store.options.connect_timeout.as_millis()
            ))),
        }
    }

    pub(crate) fn namespace(&self) -> &Namespace {
        &self.ns
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        self.options.request_timeout
    }

    /// The store's current revision, for error messages that need it.
    async fn revision_now(&self) -> Revision {
        self.current_revision().await.unwrap_or(0)
    }

    /// Turns a failure into the port's error, with the revision the request asked for.
    async fn revision_error(&self, failure: Failure, requested: Revision) -> StoreError {
        match failure {
            Failure::Compacted => StoreError::Compacted { requested, compacted: None },
            Failure::FutureRevision => {
                StoreError::FutureRevision { requested, current: self.revision_now().await }
            }
            other => other.into_store_error(),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn limits(&self) -> Limits {
        self.options.limits
    }

    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        kv::range(self, request).await
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        kv::txn(self, txn).await
    }

    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseGrant> {
        let ttl = granted_ttl(ttl_secs)?;
        let mut lease = self.client.lease_client();
        let granted =
            timed(self.request_timeout(), lease.grant(ttl, None)).await.map_err(Failure::into_store_error)?;
        Ok(LeaseGrant { id: LeaseId(granted.id()), ttl_secs: granted.ttl() })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        self.keep_alive.keep_alive(id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        let mut lease = self.client.lease_client();
        match timed(self.request_timeout(), lease.revoke(id.0)).await {
            Ok(_) => Ok(()),
            Err(Failure::LeaseNotFound) => Err(StoreError::LeaseNotFound(id)),
            Err(other) => Err(other.into_store_error()),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> StoreResult<LeaseInfo> {
        let mut lease = self.client.lease_client();
        let options = with_keys.then(|| etcd_client::LeaseTimeToLiveOptions::new().with_keys());
        let answer = match timed(self.request_timeout(), lease.time_to_live(id.0, options)).await {
            Ok(answer) => answer,
            Err(Failure::LeaseNotFound) => return Err(StoreError::LeaseNotFound(id)),
            Err(other) => return Err(other.into_store_error()),
        };
        // etcd answers an unknown (expired, revoked) lease with TTL -1.
        if answer.ttl() < 0 {
            return Err(StoreError::LeaseNotFound(id));
        }
        let mut keys: Vec<Vec<u8>> = answer
            .0
            .keys
            .into_iter()
            .filter(|key| self.ns.contains(key))
            .map(|key| self.ns.strip(key))
            .collect();
        keys.sort();
        Ok(LeaseInfo { id, granted_ttl_secs: answer.0.granted_ttl, remaining_ttl_secs: answer.0.ttl, keys })
    }

    async fn watch(&self, request: WatchRequest) -> StoreResult<WatchStream> {
        watch::watch(self, request).await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        if revision <= 0 {
            return Err(StoreError::InvalidArgument(format!(
                "compaction revision is {revision}, it must be positive"
            )));
        }
        let mut kv = self.client.kv_client();
        match timed(self.request_timeout(), kv.compact(revision, None)).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(self.revision_error(failure, revision).await),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> StoreResult<Revision> {
        kv::put(self, key, value, lease).await
    }

    async fn get(&self, key: &[u8]) -> StoreResult<Option<KeyValue>> {
        Ok(self.range(RangeRequest::key(key)).await?.kvs.into_iter().next())
    }

    async fn delete(&self, range: KeyRange) -> StoreResult<DeleteResponse> {
        kv::delete(self, range).await
    }
}
