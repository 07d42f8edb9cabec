//! `switchboard serve`: open the store, join the membership, compact by retention, and
//! leave cleanly on SIGINT or SIGTERM.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sb_store::{Membership, NodeId, NodeRecord};
use sb_store_etcd::{EtcdCompactor, EtcdCompactorOptions};
use tracing::info;

use crate::store_args::StoreArgs;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A stable node id (kept in <data-dir>/node-id); generated on first start.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<String>,
    /// The address other nodes see in the membership view.
    #[arg(long, env = "SWITCHBOARD_ADVERTISE", default_value = "127.0.0.1:8848")]
    advertise: String,
    /// A node that stops without leaving drops out of the membership after this.
    #[arg(long, env = "SWITCHBOARD_MEMBERSHIP_TTL_SECS", default_value_t = 10)]
    membership_ttl_secs: i64,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Listen for signals before anything is announced, so a SIGTERM right after start-up
    // is a graceful stop too.
    let shutdown = shutdown_signal()?;
    std::fs::create_dir_all(&args.store.data_dir)?;
    let node_id = NodeId::load_or_create(&args.store.data_dir, args.node_id.as_deref())?;
    let open = args.store.open().await?;
    // In etcd mode, one node at a time compacts history (the embedded store does its own).
    let compactor = open.embedded.is_none().then(|| {
        let retention = i64::try_from(args.store.retention_revisions).unwrap_or(i64::MAX);
        EtcdCompactor::spawn(open.store.clone(), EtcdCompactorOptions::new(node_id.as_str(), retention))
    });
    let record = NodeRecord {
        id: node_id.to_string(),
        addr: args.advertise.clone(),
        roles: vec!["api".into()],
        started_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        release: env!("CARGO_PKG_VERSION").into(),
    };
    let membership = Membership::join(open.store.clone(), record, args.membership_ttl_secs).await?;
    // Give the membership view a moment to show this node before reporting the count.
    let _ = membership.view().wait_for(open.store.current_revision().await?, Duration::from_secs(2)).await;
    info!(node = %node_id, store = open.store.kind(), nodes = membership.live_nodes().len(), "node ready");
    println!("switchboard: node {node_id} on {}", open.description);
    println!("switchboard: {} live node(s) in the membership view", membership.live_nodes().len());
    println!("switchboard: the state layer is running; stop with Ctrl-C");

    shutdown.await;
    info!(node = %node_id, "shutting down");
    membership.leave().await?;
    if let Some(compactor) = compactor {
        compactor.stop().await;
    }
    if let Some(embedded) = &open.embedded {
        embedded.close().await;
    }
    println!("switchboard: node {node_id} left the membership and stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this is called.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
