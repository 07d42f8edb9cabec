//! `switchboard backup` and `switchboard restore`, over the state layer's functions.
//!
//! A backup goes through the running server by default (`GET /api/v1/admin/backup`: the
//! embedded store's file is locked while a server uses it). `--offline` opens the store
//! itself instead: a stopped embedded store, or an etcd. A restore is always offline, into
//! an empty store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use reqwest::Method;
use sb_store::backup::{backup_to_file, restore_from_file, verify};
use tokio::io::AsyncWriteExt;

use sb_server::StoreArgs;

use crate::client::{ApiClient, ConnectArgs, NoServer};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The backup file to write.
    #[arg(long)]
    out: PathBuf,
    /// Read the store directly instead of asking the server: a stopped embedded store in
    /// --data-dir, or an etcd (--store etcd://…).
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file to load.
    #[arg(long = "in")]
    input: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    if args.offline {
        return backup_offline(args).await;
    }
    if args.store.store != "embedded" {
        anyhow::bail!(
            "--store {:?} is read only with --offline; without it the backup comes from the server at {}",
            args.store.store,
            args.connect.endpoint
        );
    }
    let client = ApiClient::new(&args.connect, &args.store.data_dir)?;
    let tmp = args.out.with_extension("partial");
    let result = download(&client, &tmp).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            if error.is::<NoServer>() {
                return Err(anyhow::anyhow!(
                    "{error:#}; a stopped embedded store or an etcd is backed up with --offline"
                ));
            }
            return Err(error);
        }
    };
    tokio::fs::rename(&tmp, &args.out)
        .await
        .with_context(|| format!("renaming to {}", args.out.display()))?;
    println!(
        "backed up {} keys at revision {} from the server at {} to {} ({} bytes; leased keys left out)",
        summary.keys,
        summary.revision,
        client.endpoint(),
        args.out.display(),
        summary.bytes
    );
    Ok(())
}

/// Streams the server's backup into `path`, then checks the file whole (trailer and
/// digest) and syncs it: a cut connection never leaves a file that looks complete.
async fn download(client: &ApiClient, path: &Path) -> anyhow::Result<sb_store::backup::BackupSummary> {
    let mut response = client.send(client.request(Method::GET, "/api/v1/admin/backup")).await?;
    let mut file =
        tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("the backup stream from {} broke off", client.endpoint()))?
    {
        file.write_all(&chunk).await.with_context(|| format!("writing {}", path.display()))?;
    }
    file.sync_all().await.with_context(|| format!("syncing {}", path.display()))?;
    drop(file);
    let file = tokio::fs::File::open(path).await.with_context(|| format!("reading {}", path.display()))?;
    verify(file).await.context("the server's backup did not verify")
}

async fn backup_offline(args: BackupArgs) -> anyhow::Result<()> {
    let open = args.store.open().await.map_err(|error| {
        let hint = if args.store.store == "embedded" {
            "; a running server's store is backed up without --offline"
        } else {
            ""
        };
        anyhow::anyhow!("{error}{hint}")
    })?;
    let summary = backup_to_file(open.store.as_ref(), &args.out).await;
    if let Some(embedded) = &open.embedded {
        embedded.close().await;
    }
    let summary = summary?;
    println!(
        "backed up {} keys at revision {} from {} to {} ({} bytes; {} leased keys left out)",
        summary.keys,
        summary.revision,
        open.description,
        args.out.display(),
        summary.bytes,
        summary.skipped_leased
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let open = args.store.open().await?;
    let result = restore_from_file(open.store.as_ref(), &args.input).await;
    if let Some(embedded) = &open.embedded {
        embedded.close().await;
    }
    let summary = result?;
    println!(
        "restored {} keys (backed up at revision {}) into {}; its revision is now {}",
        summary.keys, summary.source_revision, open.description, summary.revision
    );
    Ok(())
}
