//! `switchboard backup` and `switchboard restore`, over the state layer's functions.

use std::path::PathBuf;

use sb_store::backup::{backup_to_file, restore_from_file};

use sb_server::StoreArgs;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The backup file to write.
    #[arg(long)]
    out: PathBuf,
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
    let open = args.store.open().await?;
    let summary = backup_to_file(open.store.as_ref(), &args.out).await?;
    if let Some(embedded) = &open.embedded {
        embedded.close().await;
    }
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
