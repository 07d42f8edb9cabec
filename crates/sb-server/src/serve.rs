//! `serve`: the lifecycle of a node.
//!
//! Start: listen, open the store, bootstrap the admin token, join the membership, load
//! the views, serve. Stop (SIGINT/SIGTERM): stop accepting, let in-flight requests finish
//! (bounded by `--shutdown-grace-secs`), end watch streams, revoke the membership lease,
//! close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sb_api::{Api, ApiConfig, ApiMetrics, IdServices, LogLevelControl, SystemLeases, KV_PREFIX};
use sb_config::{ConfigService, ConfigSettings, ConfigView, Retention};
use sb_ids::{SegmentService, SnowflakeService};
use sb_ratelimit::{GlobalTier, RateLimiter, RuleCatalog};
use sb_ratelimit_redis::{RedisTier, RedisTierOptions};
use sb_registry::{Registry, RegistryOptions};
use sb_store::LeaseId;
use sb_store::{put_request_bytes, KeyRange, Membership, NodeId, NodeRecord, View};
use sb_store_etcd::{EtcdCompactor, EtcdCompactorOptions};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::bootstrap::{bootstrap_admin, first_start_banner, secrets_from_env, Bootstrap, ADMIN_TOKEN_FILE};
use crate::config::ServeArgs;
use crate::error::{ServerError, ServerResult};
use crate::ids;
use crate::node_metrics;

/// Where a node records its registry session lease, to re-adopt it after a restart.
const SESSION_LEASE_FILE: &str = "session-lease";
/// How often expired API tokens are deleted from the store.
const TOKEN_SWEEP: Duration = Duration::from_secs(60);
/// How often idle rate-limit counters are forgotten.
const RATELIMIT_SWEEP: Duration = Duration::from_secs(1);

/// How long start-up waits for the membership view to show this node.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(2);

pub async fn run(args: ServeArgs, log_control: Option<Arc<dyn LogLevelControl>>) -> ServerResult<()> {
    // Listen for signals before anything is announced, so a SIGTERM right after start-up
    // is a graceful stop too.
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(ServerError::io(format!("listening on --listen {}", args.listen)))?;
    let local_addr = listener.local_addr().map_err(ServerError::io("reading the listen address"))?;
    // Certificates are checked before anything else starts: a bad file stops the node here.
    let tls = crate::tls::Tls::from_args(&args.tls)?;
    let tls_reloader = match &tls {
        Some(tls) => {
            Some(tls.resolver.spawn_reloader(Duration::from_millis(args.tls.tls_reload_interval_ms))?)
        }
        None => None,
    };
    let data_dir = &args.store.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(ServerError::io(format!("creating --data-dir {}", data_dir.display())))?;
    let node_id =
        NodeId::load_or_create(data_dir, args.node_id.as_deref()).map_err(ServerError::store("node id"))?;
    // The master keys, before the store is touched: a node that cannot have them stops here.
    let keyring = load_keyring(&args)?;
    let open = args.store.open().await?;
    let store = open.store.clone();
    check_limits(&args, store.limits().max_request_bytes)?;
    // In etcd mode, one node at a time compacts history (the embedded store does its own).
    let compactor = open.embedded.is_none().then(|| {
        let retention = i64::try_from(args.store.retention_revisions).unwrap_or(i64::MAX);
        EtcdCompactor::spawn(store.clone(), EtcdCompactorOptions::new(node_id.as_str(), retention))
    });

    // Weak environment secrets are refused before anything else is written.
    let secrets = secrets_from_env();
    sb_auth::bootstrap::check_secrets(&secrets).map_err(|e| ServerError::Config(e.to_string()))?;
    let auth = Arc::new(
        sb_auth::AuthService::start(store.clone(), auth_options(&args))
            .await
            .map_err(|e| ServerError::Config(format!("loading the access-control views: {e}")))?,
    );
    let bootstrap = bootstrap_admin(&auth, data_dir, node_id.as_str(), secrets).await?;
    let token_sweeper = auth.spawn_token_sweeper(TOKEN_SWEEP);

    let record = NodeRecord {
        id: node_id.to_string(),
        addr: args.advertise.clone().unwrap_or_else(|| local_addr.to_string()),
        roles: vec!["api".into()],
        started_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        release: env!("CARGO_PKG_VERSION").into(),
    };
    let membership = Arc::new(
        Membership::join(store.clone(), record, args.membership_ttl_secs)
            .await
            .map_err(ServerError::store("joining the membership"))?,
    );
    let now = store.current_revision().await.map_err(ServerError::store("reading the revision"))?;
    let _ = membership.view().wait_for(now, MEMBERSHIP_SETTLE).await;

    let kv = View::start(store.clone(), KeyRange::prefix(KV_PREFIX), "kv")
        .await
        .map_err(ServerError::store("loading the kv view"))?;
    let registry = Arc::new(start_registry(&args, &store, node_id.as_str()).await?);
    let config_view =
        ConfigView::start(store.clone()).await.map_err(ServerError::store("loading the config view"))?;
    let max_age =
        (args.config_history_max_age_secs > 0).then(|| Duration::from_secs(args.config_history_max_age_secs));
    let configs = Arc::new(ConfigService::new(
        store.clone(),
        Arc::new(config_view),
        ConfigSettings {
            max_content_bytes: args.config_max_bytes,
            retention: Retention { keep_last: args.config_history_keep as usize, max_age },
            keyring: Some(keyring),
            ..ConfigSettings::default()
        },
    ));
    configs.check_keys().await.map_err(|e| ServerError::Config(e.to_string()))?;
    let reencrypter = configs.spawn_reencrypter(Duration::from_secs(args.reencrypt_interval_secs));
    // Publishes apply retention to their own item; the sweep catches quiet items aging out.
    let config_sweeper = max_age
        .map(|age| configs.spawn_sweeper((age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))));
    let audit_sweeper = spawn_audit_retention(&args, &store, &membership, node_id.as_str());
    let ratelimit = start_ratelimit(&args, &store, &membership).await?;
    let system_leases = Arc::new(SystemLeases::new());
    {
        let membership = Arc::downgrade(&membership);
        system_leases.register(move || membership.upgrade().map(|m| m.lease()));
        let registry = Arc::downgrade(&registry);
        system_leases.register(move || registry.upgrade().map(|r| r.session_lease()));
    }
    let snowflake = Arc::new(
        SnowflakeService::start(
            store.clone(),
            ids::snowflake_options(&args.ids, node_id.as_str()),
            ids::wall_clock(),
        )
        .await
        .map_err(ServerError::ids("starting the Snowflake service"))?,
    );
    let segments = SegmentService::new(store.clone(), ids::segment_options(&args.ids));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nacos_lists = Arc::new(sb_api::nacos_list_cache::NacosListCache::default());
    let naming_push =
        sb_api::nacos_push::NamingPush::start(registry.clone(), nacos_lists.clone(), stop_rx.clone())
            .await
            .map_err(ServerError::io("binding the Nacos UDP push socket"))?;
    let mut metrics = ApiMetrics::new();
    node_metrics::register(&mut metrics, Arc::downgrade(&membership), open.embedded.clone());
    node_metrics::register_registry(&mut metrics, Arc::downgrade(&registry), Arc::downgrade(&naming_push));
    node_metrics::register_config(&mut metrics, Arc::downgrade(&configs));
    ids::register_metrics(&mut metrics, Arc::downgrade(&snowflake), Arc::downgrade(&segments));
    ratelimit.register_metrics(metrics.registry_mut());
    let coord = sb_coord::Coord::new(store.clone());
    coord.register_metrics(metrics.registry_mut());
    let sweeper = ratelimit.spawn_sweeper(RATELIMIT_SWEEP);
    let health = Arc::new(
        sb_health::HealthChecks::start(
            store.clone(),
            registry.clone(),
            membership.clone(),
            node_id.to_string(),
            sb_health::HealthSettings {
                reconcile: Duration::from_millis(args.health_reconcile_ms),
                nacos_interval_ms: args.nacos_check_interval_ms,
                ..Default::default()
            },
        )
        .await
        .map_err(ServerError::store("loading the health checks"))?,
    );
    let dns_stats = Arc::new(sb_dns::DnsStats::default());
    node_metrics::register_edges(&mut metrics, dns_stats.clone(), Arc::downgrade(health.stats()));
    let api = Arc::new(Api {
        config: ApiConfig {
            max_value_bytes: args.max_value_bytes,
            max_key_bytes: args.max_key_bytes,
            trusted_proxies: args.trusted_proxies.clone(),
            ..ApiConfig::default()
        },
        store: store.clone(),
        kv,
        configs,
        auth,
        system_leases,
        coord,
        registry: registry.clone(),
        health: health.clone(),
        naming_push,
        nacos_lists,
        metrics,
        ids: IdServices { snowflake: snowflake.clone(), segments },
        ratelimit,
        log_level: log_control,
        shutdown: stop_rx.clone(),
    });
    let router = sb_api::router(api.clone());
    let dns = start_dns(&args, registry.clone(), dns_stats).await?;

    info!(node = %node_id, store = store.kind(), addr = %local_addr, nodes = membership.live_nodes().len(), "node ready");
    let base_url = format!("{}://{local_addr}", if tls.is_some() { "https" } else { "http" });
    println!("switchboard: node {node_id} on {}", open.description);
    println!("switchboard: {} live node(s) in the membership view", membership.live_nodes().len());
    println!("switchboard: listening on {base_url}; stop with Ctrl-C");
    if let Some(dns) = &dns {
        println!("switchboard: dns on {} (udp+tcp)", dns.local_addr);
    }
    match &bootstrap {
        Bootstrap::Created { token_opt, password_opt } => {
            println!("{}", first_start_banner(token_opt.as_ref(), password_opt.as_ref(), &base_url))
        }
        Bootstrap::AlreadyDone => println!(
            "switchboard: the store was bootstrapped before; the first start wrote its admin token to <data-dir>/{ADMIN_TOKEN_FILE}"
        ),
    }

    let mut graceful_rx = stop_rx;
    let mut server = match tls {
        None => {
            let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = graceful_rx.wait_for(|stop| *stop).await;
                });
            tokio::spawn(std::future::IntoFuture::into_future(server))
        }
        Some(tls) => tokio::spawn(crate::tls::serve(listener, tls.acceptor, router, graceful_rx)),
    };
    let ended_early = tokio::select! {
        _ = shutdown => None,
        result = &mut server => Some(result),
    };
    if let Some(result) = ended_early {
        let error = match result {
            Ok(Ok(())) => "the HTTP server stopped unexpectedly".to_owned(),
            Ok(Err(error)) => format!("the HTTP server failed: {error}"),
            Err(error) => format!("the HTTP server task failed: {error}"),
        };
        warn!(%error, "stopping");
    }
    info!(node = %node_id, "shutting down");
    // Stop accepting, end watch streams, and let in-flight requests finish (bounded).
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        warn!(
            grace_secs = args.shutdown_grace_secs,
            "in-flight requests did not finish in time; closing them"
        );
        server.abort();
    }
    token_sweeper.abort();
    if let Some(reloader) = tls_reloader {
        reloader.abort();
    }
    if let Some(reencrypter) = reencrypter {
        reencrypter.abort();
    }
    if let Some(sweeper) = config_sweeper {
        sweeper.abort();
    }
    audit_sweeper.abort();
    if let Some(dns) = dns {
        dns.stop().await;
    }
    // Stop probing before the registry goes: no health write after the node has left.
    drop(health);
    // Waiters cut off by the stop hand their leases to the coordination cleanup: revoke
    // them now, so their keys do not outlive the node by a TTL.
    api.coord.drain(Duration::from_secs(2)).await;
    drop(api);
    // Give the Snowflake worker id back at once (its high-water mark stays).
    snowflake.stop().await;
    // Keep the session lease (and record it): the next start re-adopts it, so a rolling
    // restart drops no instance.
    registry.stop();
    write_session_lease(data_dir, registry.session_lease());
    drop(registry);
    sweeper.abort();
    // Revoke the membership lease (other nodes see this one leave at once).
    match Arc::try_unwrap(membership) {
        Ok(membership) => membership.leave().await.map_err(ServerError::store("leaving the membership"))?,
        Err(shared) => {
            if let Err(error) = store.lease_revoke(shared.lease()).await {
                warn!(%error, "the membership lease could not be revoked; it expires by itself");
            }
        }
    }
    if let Some(compactor) = compactor {
        compactor.stop().await;
    }
    if let Some(embedded) = &open.embedded {
        embedded.close().await;
    }
    println!("switchboard: node {node_id} left the membership and stopped");
    Ok(())
}

fn auth_options(args: &ServeArgs) -> sb_auth::AuthOptions {
    let auth = &args.auth;
    sb_auth::AuthOptions {
        hash_concurrency: auth.password_hash_concurrency as usize,
        session_ttl_secs: auth.login_session_ttl_secs,
        backoff: sb_auth::BackoffOptions {
            base: Duration::from_millis(auth.login_backoff_base_ms),
            max: Duration::from_millis(auth.login_backoff_max_ms.max(auth.login_backoff_base_ms)),
            free_per_pair: auth.login_free_failures,
            free_per_address: auth.login_free_failures_per_address,
            ..sb_auth::BackoffOptions::default()
        },
        ..sb_auth::AuthOptions::default()
    }
}

/// The DNS interface: on by default at 127.0.0.1:8600, where a taken port is only a
/// warning; an explicitly given address must bind.
async fn start_dns(
    args: &ServeArgs,
    registry: Arc<Registry>,
    stats: Arc<sb_dns::DnsStats>,
) -> ServerResult<Option<sb_dns::DnsServer>> {
    const DEFAULT_DNS: &str = "127.0.0.1:8600";
    let explicit = args.dns_listen.as_deref().map(str::trim);
    if explicit.is_some_and(|l| l.eq_ignore_ascii_case("off")) {
        return Ok(None);
    }
    let text = explicit.unwrap_or(DEFAULT_DNS);
    let listen: SocketAddr = text.parse().map_err(|_| {
        ServerError::Config(format!("--dns-listen {text:?} is not an address like 127.0.0.1:8600 (or off)"))
    })?;
    let options = sb_dns::DnsOptions {
        listen,
        allow: args.dns_allow.clone(),
        ttl_secs: args.dns_ttl_secs,
        tcp_timeout: Duration::from_secs(5),
        per_source_qps: args.dns_per_source_qps,
        per_source_burst: args.dns_per_source_burst.unwrap_or(args.dns_per_source_qps),
        udp_workers: args.dns_udp_workers as usize,
    };
    match sb_dns::DnsServer::start(registry, options, stats).await {
        Ok(dns) => Ok(Some(dns)),
        Err(error) if explicit.is_none() => {
            warn!(%error, addr = DEFAULT_DNS, "the DNS interface is off: its default address cannot be bound");
            Ok(None)
        }
        Err(error) => Err(ServerError::Config(format!("binding the DNS interface on {text}: {error}"))),
    }
}

async fn start_registry(
    args: &ServeArgs,
    store: &sb_store::SharedStore,
    node_id: &str,
) -> ServerResult<Registry> {
    let data_dir = &args.store.data_dir;
    let mut options = RegistryOptions::new(
        node_id,
        Duration::from_millis(args.heartbeat_timeout_ms),
        Duration::from_millis(args.ip_delete_timeout_ms.max(args.heartbeat_timeout_ms)),
    );
    options.session_ttl_secs = args.session_ttl_secs;
    let dir = data_dir.clone();
    options.on_session_change_opt = Some(Arc::new(move |lease| write_session_lease(&dir, lease)));
    options.previous_session_opt = std::fs::read_to_string(data_dir.join(SESSION_LEASE_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(LeaseId);
    let registry = Registry::start(store.clone(), options).await.map_err(|error| match error {
        sb_registry::RegistryError::Store(cause) => {
            ServerError::Store { context: "starting the registry".into(), cause }
        }
        other => ServerError::Config(format!("starting the registry: {other}")),
    })?;
    write_session_lease(data_dir, registry.session_lease());
    Ok(registry)
}

fn write_session_lease(data_dir: &std::path::Path, lease: LeaseId) {
    if let Err(error) = std::fs::write(data_dir.join(SESSION_LEASE_FILE), lease.0.to_string()) {
        warn!(%error, "could not record the session lease; a restart will not re-adopt it");
    }
}

/// The rate limiter: rules through a view, the local tier, and the Redis tier when
/// `--redis` is given (started even if Redis is down: rules then apply their failure
/// policy until it answers). A `local` failure policy divides by the membership view's
/// live nodes.
async fn start_ratelimit(
    args: &ServeArgs,
    store: &sb_store::SharedStore,
    membership: &Arc<Membership>,
) -> ServerResult<Arc<RateLimiter>> {
    let catalog = RuleCatalog::start(store.clone(), ApiConfig::default().read_your_writes_timeout)
        .await
        .map_err(|e| ServerError::Store {
            context: "loading the rate-limit rules".into(),
            cause: into_store_error(e),
        })?;
    let global: Option<Arc<dyn GlobalTier>> = match &args.redis {
        None => None,
        Some(url) => {
            let mut options = RedisTierOptions::new(url.clone());
            options.timeout = Duration::from_millis(args.redis_timeout_ms);
            options.key_prefix = args.redis_key_prefix.clone();
            let tier = RedisTier::start(options).await.map_err(|e| ServerError::Config(e.to_string()))?;
            Some(tier)
        }
    };
    let membership = Arc::downgrade(membership);
    let live_nodes: sb_ratelimit::LiveNodes =
        Arc::new(move || membership.upgrade().map_or(1, |m| m.view().snapshot().entries.len()));
    Ok(Arc::new(RateLimiter::new(Arc::new(catalog), global, live_nodes)))
}

fn into_store_error(error: sb_ratelimit::RateLimitError) -> sb_store::StoreError {
    match error {
        sb_ratelimit::RateLimitError::Store(store) => store,
        other => sb_store::StoreError::Unavailable(other.to_string()),
    }
}

/// The store refuses requests over its limit (etcd's 1.5 MiB): refuse value and key limits
/// that could never be written, at start rather than at the first large put.
fn check_limits(args: &ServeArgs, max_request_bytes: usize) -> ServerResult<()> {
    // A guarded put also carries a compare and a read of the key.
    let overhead = 2 * (args.max_key_bytes + KV_PREFIX.len()) + 64;
    let key = vec![0u8; args.max_key_bytes + KV_PREFIX.len()];
    let value = vec![0u8; args.max_value_bytes];
    let bytes = put_request_bytes(&key, &value) + overhead;
    if bytes > max_request_bytes {
        return Err(ServerError::Config(format!(
            "--max-value-bytes {} with --max-key-bytes {} makes requests of {bytes} bytes, over the store's limit of {max_request_bytes} bytes",
            args.max_value_bytes, args.max_key_bytes
        )));
    }
    let config_overhead = 64 * 1024;
    if args.config_max_bytes + config_overhead > max_request_bytes {
        return Err(ServerError::Config(format!(
            "--config-max-bytes {} leaves no room for a config's metadata in the store's request limit of {max_request_bytes} bytes (at most {})",
            args.config_max_bytes,
            max_request_bytes.saturating_sub(config_overhead)
        )));
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this is called.
fn shutdown_signal() -> ServerResult<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(ServerError::io("installing the SIGINT handler"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(ServerError::io("installing the SIGTERM handler"))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// The master key file's name in the data dir (embedded store).
pub const MASTER_KEY_FILE: &str = "master-key";

/// The master keys: `--master-key-file`, or on the embedded store `<data-dir>/master-key`,
/// created on first start. On etcd every node must be given the same file, so a node
/// without one refuses to start.
fn load_keyring(args: &ServeArgs) -> ServerResult<Arc<sb_config::Keyring>> {
    let embedded = args.store.store == "embedded";
    let path = match (&args.master_key_file, embedded) {
        (Some(path), _) => path.clone(),
        (None, true) => args.store.data_dir.join(MASTER_KEY_FILE),
        (None, false) => {
            return Err(ServerError::Config(format!(
                "--master-key-file is required with --store {}: every node must be given the same key \
                 file, so secret configs sealed by one open on all (create it once with \
                 `switchboard master-key new FILE` and copy it to every node)",
                args.store.store
            )))
        }
    };
    let keyring = if path.exists() || !embedded {
        sb_config::Keyring::load(&path)
    } else {
        let created = sb_config::Keyring::generate(&path);
        if created.is_ok() {
            tracing::info!(path = %path.display(), "created the master key file for secret configs; back it up");
        }
        created
    };
    let keyring = keyring.map_err(|e| ServerError::Config(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the master key file is readable by others than its owner; chmod 600 it");
            }
        }
    }
    Ok(Arc::new(keyring))
}

/// Audit retention, run by one node at a time: the live node with the lowest id (a node
/// that sees itself alone sweeps too). Two nodes briefly both sweeping is harmless: each
/// deletes whole batches of the oldest records.
fn spawn_audit_retention(
    args: &ServeArgs,
    store: &sb_store::SharedStore,
    membership: &Arc<Membership>,
    node_id: &str,
) -> tokio::task::JoinHandle<()> {
    let retention = sb_audit::AuditRetention {
        max_age: (args.audit_retention_days > 0)
            .then(|| Duration::from_secs(args.audit_retention_days * 86_400)),
        max_records: (args.audit_max_records > 0).then_some(args.audit_max_records),
    };
    let membership = Arc::downgrade(membership);
    let me = node_id.to_owned();
    let is_sweeper = Arc::new(move || {
        membership.upgrade().is_some_and(|m| {
            m.live_nodes().iter().map(|n| n.id.as_str()).min().is_none_or(|lowest| lowest == me)
        })
    });
    sb_audit::spawn_retention(
        store.clone(),
        retention,
        Duration::from_secs(args.audit_sweep_secs),
        is_sweeper,
    )
}
