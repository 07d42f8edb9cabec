//! Backup and restore: a consistent snapshot of every key at one revision, streamed to a
//! file, and a restore of it into an empty store of either adapter (also the migration
//! path from embedded to etcd).
//!
//! Only keys and values survive: the target store renumbers revisions and versions.
//! Keys attached to a lease are ephemeral state (`nodes/`, ephemeral instances, worker
//! ids) and are left out.
//!
//! File format v1 (all integers big-endian):
//! ```text
//! magic "SBBACKUP" | u32 format version | i64 revision
//! per key:  u8 1 | u32 key length | key | u32 value length | value
//! trailer:  u8 0xFF | u64 key count | 32-byte SHA-256 of every byte before the trailer
//! ```
//! A restore checks the whole file (trailer and digest) before it writes anything.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::error::{StoreError, StoreResult};
use crate::paging::RangePager;
use crate::store::Store;
use crate::types::{KeyRange, RangeRequest, Revision, Txn, TxnOp};

const MAGIC: &[u8; 8] = b"SBBACKUP";
const FORMAT_VERSION: u32 = 1;
const RECORD: u8 = 1;
const TRAILER: u8 = 0xFF;
/// Keys a restore writes per transaction, below etcd's 128 operations.
const RESTORE_TXN_OPS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// The revision the snapshot was taken at.
    pub revision: Revision,
    pub keys: u64,
    /// Keys left out because they hang on a lease.
    pub skipped_leased: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The revision the backup was taken at, in the source store.
    pub source_revision: Revision,
    pub keys: u64,
    /// The target store's revision after the restore.
    pub revision: Revision,
}

/// Streams every key of `store` that is not on a lease, at one revision, to `out`.
pub async fn backup<W: AsyncWrite + Unpin>(store: &dyn Store, out: W) -> StoreResult<BackupSummary> {
    let mut out = HashingWriter { inner: BufWriter::new(out), digest: Sha256::new(), bytes: 0 };
    let revision = store.current_revision().await?;
    out.write(MAGIC).await?;
    out.write(&FORMAT_VERSION.to_be_bytes()).await?;
    out.write(&revision.to_be_bytes()).await?;
    let mut pager = RangePager::new(store, KeyRange::prefix(Vec::new()), Some(revision));
    let (mut keys, mut skipped_leased) = (0u64, 0u64);
    while let Some(page) = pager.next_page().await? {
        for kv in page {
            if kv.lease.is_some() {
                skipped_leased += 1;
                continue;
            }
            out.write(&[RECORD]).await?;
            out.write(&len_u32(kv.key.len())?.to_be_bytes()).await?;
            out.write(&kv.key).await?;
            out.write(&len_u32(kv.value.len())?.to_be_bytes()).await?;
            out.write(&kv.value).await?;
            keys += 1;
        }
    }
    let digest = out.digest.clone().finalize();
    out.write(&[TRAILER]).await?;
    out.write(&keys.to_be_bytes()).await?;
    out.write(&digest).await?;
    out.inner.flush().await.map_err(io_error)?;
    Ok(BackupSummary { revision, keys, skipped_leased, bytes: out.bytes })
}

/// Writes a backup to `path` atomically: a temp file, synced, then renamed.
pub async fn backup_to_file(store: &dyn Store, path: &Path) -> StoreResult<BackupSummary> {
    let tmp = path.with_extension("partial");
    let file = tokio::fs::File::create(&tmp).await.map_err(io_error)?;
    let summary = backup(store, file).await?;
    let file = tokio::fs::OpenOptions::new().write(true).open(&tmp).await.map_err(io_error)?;
    file.sync_all().await.map_err(io_error)?;
    tokio::fs::rename(&tmp, path).await.map_err(io_error)?;
    Ok(summary)
}

/// Restores a backup file into an empty store. The file is verified whole first, so a
/// truncated or corrupted file writes nothing.
pub async fn restore_from_file(store: &dyn Store, path: &Path) -> StoreResult<RestoreSummary> {
    let open = || async { tokio::fs::File::open(path).await.map_err(io_error) };
    let expected = verify(open().await?).await?;
    let existing = store.range(RangeRequest::prefix(Vec::new()).count_only()).await?;
    if existing.count > 0 {
        return Err(StoreError::NotEmpty(format!(
            "the target store holds {} keys; restore only into an empty store",
            existing.count
        )));
    }
    let limits = store.limits();
    let mut reader = BackupReader::open(open().await?).await?;
    let (mut ops, mut bytes, mut keys) = (Vec::new(), 0usize, 0u64);
    let mut revision = existing.revision;
    while let Some((key, value)) = reader.next_record().await? {
        let size = crate::limits::put_request_bytes(&key, &value) + 8;
        if !ops.is_empty() && (ops.len() >= RESTORE_TXN_OPS || bytes + size > limits.max_request_bytes) {
            revision = store.txn(Txn::new().and_then(std::mem::take(&mut ops))).await?.revision;
            bytes = 0;
        }
        ops.push(TxnOp::put(key, value));
        bytes += size;
        keys += 1;
    }
    if !ops.is_empty() {
        revision = store.txn(Txn::new().and_then(ops)).await?.revision;
    }
    debug_assert_eq!(keys, expected.keys, "verify and restore read the same records");
    Ok(RestoreSummary { source_revision: expected.revision, keys, revision })
}

/// Reads every key and value of a backup file, after checking it whole.
pub async fn read_backup_file(path: &Path) -> StoreResult<(BackupSummary, Vec<(Vec<u8>, Vec<u8>)>)> {
    let file = tokio::fs::File::open(path).await.map_err(io_error)?;
    let mut reader = BackupReader::open(file).await?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().await? {
        records.push(record);
    }
    let summary = BackupSummary {
        revision: reader.revision,
        keys: reader.keys,
        skipped_leased: 0,
        bytes: reader.bytes,
    };
    Ok((summary, records))
}

/// Checks a backup end to end: format, trailer count and digest.
pub async fn verify<R: AsyncRead + Unpin>(input: R) -> StoreResult<BackupSummary> {
    let mut reader = BackupReader::open(input).await?;
    while reader.next_record().await?.is_some() {}
    Ok(BackupSummary { revision: reader.revision, keys: reader.keys, skipped_leased: 0, bytes: reader.bytes })
}

struct HashingWriter<W> {
    inner: BufWriter<W>,
    digest: Sha256,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> HashingWriter<W> {
    async fn write(&mut self, bytes: &[u8]) -> StoreResult<()> {
        self.digest.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes).await.map_err(io_error)
    }
}

struct BackupReader<R> {
    input: BufReader<R>,
    digest: Sha256,
    revision: Revision,
    keys: u64,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> BackupReader<R> {
    async fn open(input: R) -> StoreResult<Self> {
        let mut reader = BackupReader {
            input: BufReader::new(input),
            digest: Sha256::new(),
            revision: 0,
            keys: 0,
            bytes: 0,
        };
        let magic = reader.read_exact(8).await?;
        if magic != MAGIC {
            return Err(corrupt("not a Switchboard backup (bad magic)"));
        }
        let version = u32::from_be_bytes(reader.read_array().await?);
        if version != FORMAT_VERSION {
            return Err(corrupt(&format!("backup format v{version}, this release reads v{FORMAT_VERSION}")));
        }
        reader.revision = i64::from_be_bytes(reader.read_array().await?);
        Ok(reader)
    }

    /// The next key and value; `None` after a valid trailer.
    async fn next_record(&mut self) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        let digest_so_far = self.digest.clone().finalize();
        let [tag] = self.read_array::<1>().await?;
        match tag {
            RECORD => {
                let key_len = u32::from_be_bytes(self.read_array().await?) as usize;
                let key = self.read_exact(key_len).await?;
                let value_len = u32::from_be_bytes(self.read_array().await?) as usize;
                let value = self.read_exact(value_len).await?;
                self.keys += 1;
                Ok(Some((key, value)))
            }
            TRAILER => {
                let count = u64::from_be_bytes(self.read_array().await?);
                let digest: [u8; 32] = self.read_array().await?;
                if count != self.keys {
                    return Err(corrupt(&format!("trailer says {count} keys, file holds {}", self.keys)));
                }
                if digest.as_slice() != digest_so_far.as_slice() {
                    return Err(corrupt("checksum mismatch"));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest).await.map_err(io_error)? != 0 {
                    return Err(corrupt("bytes after the trailer"));
                }
                Ok(None)
            }
            other => Err(corrupt(&format!("unknown record tag {other:#x}"))),
        }
    }

    async fn read_array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf).await?;
        Ok(buf)
    }

    async fn read_exact(&mut self, len: usize) -> StoreResult<Vec<u8>> {
        // Lengths come from the file: never trust them with a huge allocation up front.
        if len > crate::limits::ETCD_MAX_REQUEST_BYTES * 2 {
            return Err(corrupt(&format!("record of {len} bytes is larger than any store accepts")));
        }
        let mut buf = vec![0u8; len];
        self.fill(&mut buf).await?;
        Ok(buf)
    }

    async fn fill(&mut self, buf: &mut [u8]) -> StoreResult<()> {
        self.input.read_exact(buf).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("the file is truncated"),
            _ => io_error(e),
        })?;
        self.digest.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

fn len_u32(len: usize) -> StoreResult<u32> {
    u32::try_from(len).map_err(|_| corrupt(&format!("a key or value of {len} bytes cannot be backed up")))
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt(format!("backup: {reason}"))
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("backup file: {e}"))
}
