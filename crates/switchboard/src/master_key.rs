//! `switchboard master-key new|rotate FILE`: the key files secret configs are sealed with.
//! Works on the file alone, with no server: `new` creates one (mode 0600) to give every node
//! of an etcd cluster; `rotate` adds a key and makes it active (then give the file to every
//! node and restart them; each re-encrypts in the background, and `config keys` shows when
//! the old key seals nothing and can be removed).

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct MasterKeyArgs {
    #[command(subcommand)]
    command: MasterKeyCommand,
}

#[derive(clap::Subcommand)]
enum MasterKeyCommand {
    /// Create a new key file with one random key; refuses to overwrite a file.
    New { file: PathBuf },
    /// Add a random key to a key file and make it the active one; old keys stay readable.
    Rotate { file: PathBuf },
}

pub fn run(args: MasterKeyArgs) -> anyhow::Result<()> {
    match args.command {
        MasterKeyCommand::New { file } => {
            let keys = sb_config::Keyring::generate(&file)
                .with_context(|| format!("creating the key file {}", file.display()))?;
            println!(
                "created {} with key {} (active); give every node this file",
                file.display(),
                keys.active()
            );
        }
        MasterKeyCommand::Rotate { file } => {
            let id = sb_config::Keyring::rotate_file(&file)
                .with_context(|| format!("rotating the key file {}", file.display()))?;
            println!(
                "added key {id} to {} and made it active; give every node the file and restart it",
                file.display()
            );
        }
    }
    Ok(())
}
