//! A node's stable identity: generated into the data dir on first start, or set by flag.

use std::path::Path;

use crate::error::{StoreError, StoreResult};

/// The file in the data dir that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";
pub const MAX_NODE_ID_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Validates a node id: 1 to 64 characters of `a-z`, `0-9`, `-` and `_`.
    pub fn parse(id: &str) -> StoreResult<NodeId> {
        let valid_chars =
            id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if id.is_empty() || id.len() > MAX_NODE_ID_LEN || !valid_chars {
            return Err(StoreError::InvalidArgument(format!(
                "node id {id:?} must be 1 to {MAX_NODE_ID_LEN} characters of a-z, 0-9, '-' and '_'"
            )));
        }
        Ok(NodeId(id.to_owned()))
    }

    /// Reads the node id from `data_dir`, or generates and stores one on first start. A
    /// given id (from a flag) wins, and is stored so later starts keep it.
    pub fn load_or_create(data_dir: &Path, given: Option<&str>) -> StoreResult<NodeId> {
        let path = data_dir.join(NODE_ID_FILE);
        let io = |e: std::io::Error| StoreError::Unavailable(format!("node id file {}: {e}", path.display()));
        if let Some(given) = given {
            let id = NodeId::parse(given)?;
            write_atomically(&path, id.as_str()).map_err(io)?;
            return Ok(id);
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => NodeId::parse(text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeId(format!("node-{}", hex::encode(rand::random::<[u8; 6]>())));
                std::fs::create_dir_all(data_dir).map_err(io)?;
                write_atomically(&path, id.as_str()).map_err(io)?;
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeId::load_or_create(dir.path(), None).unwrap();
        let second = NodeId::load_or_create(dir.path(), None).unwrap();
        assert_eq!(first, second);
        assert!(first.as_str().starts_with("node-"));
    }

    #[test]
    fn given_id_wins_and_sticks() {
        let dir = tempfile::tempdir().unwrap();
        NodeId::load_or_create(dir.path(), None).unwrap();
        let given = NodeId::load_or_create(dir.path(), Some("edge-1")).unwrap();
        assert_eq!(given.as_str(), "edge-1");
        assert_eq!(NodeId::load_or_create(dir.path(), None).unwrap(), given);
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "Upper", "a/b", &"x".repeat(65)] {
            let err = NodeId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("node id"), "{err}");
        }
    }
}
