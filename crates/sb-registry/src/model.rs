//! What the registry stores: a service's settings and an instance's description, in the
//! stored-value format (JSON with a `"v"` format version), and the checks on them.

use std::collections::BTreeMap;
use std::time::Duration;

use sb_store::codec::StoredValue;
use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, RegistryResult};
use crate::names::{InstanceAddr, ServiceId};

pub const MAX_WEIGHT: f64 = 10_000.0;
/// The largest metadata map, counted as the bytes of its keys and values.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Nacos's per-instance heartbeat settings, in milliseconds, in the instance's metadata.
pub const META_BEAT_INTERVAL: &str = "preserved.heart.beat.interval";
pub const META_BEAT_TIMEOUT: &str = "preserved.heart.beat.timeout";
pub const META_DELETE_TIMEOUT: &str = "preserved.ip.delete.timeout";

pub type Metadata = BTreeMap<String, String>;

/// `registry/services/{ns}/{group}/{service}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// 0 to 1: when healthy/total is at or below it, queries return every instance.
    pub protect_threshold: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
}

impl Default for ServiceRecord {
    fn default() -> Self {
        ServiceRecord { protect_threshold: 0.0, metadata: Metadata::new() }
    }
}

impl StoredValue for ServiceRecord {
    const KIND: &'static str = "service";
    const FORMAT_VERSION: u32 = 1;
}

/// `registry/instances/{ns}/{group}/{service}/{cluster}/{ip}:{port}`. An ephemeral
/// instance hangs on its owner node's session lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub weight: f64,
    pub enabled: bool,
    pub healthy: bool,
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
    /// The node that registered it and tracks its beats.
    pub owner: String,
    /// It takes Nacos's default health check when no other applies (a persistent
    /// instance registered through the Nacos API): derived by `sb_health::effective_check`,
    /// never stored as a check of its own. A re-registration keeps it; deleting the
    /// instance's check clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_check: bool,
}

#[cfg(test)]
impl InstanceRecord {
    /// A test instance: weight 1, enabled, owned by node `n`, no metadata, no default check.
    pub(crate) fn for_test(ephemeral: bool, healthy: bool) -> InstanceRecord {
        InstanceRecord {
            weight: 1.0,
            enabled: true,
            healthy,
            ephemeral,
            metadata: Metadata::new(),
            owner: "n".into(),
            default_check: false,
        }
    }
}

impl StoredValue for InstanceRecord {
    const KIND: &'static str = "instance";
    const FORMAT_VERSION: u32 = 1;
}

/// A registration, as the protocols hand it to the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSpec {
    pub service: ServiceId,
    pub addr: InstanceAddr,
    pub weight: f64,
    pub enabled: bool,
    pub healthy: bool,
    pub ephemeral: bool,
    pub metadata: Metadata,
    /// Takes Nacos's default health check (see [`InstanceRecord::default_check`]).
    pub default_check: bool,
}

impl InstanceSpec {
    /// An enabled, healthy, ephemeral instance of weight 1 with no metadata.
    pub fn new(service: ServiceId, addr: InstanceAddr) -> Self {
        InstanceSpec {
            service,
            addr,
            weight: 1.0,
            enabled: true,
            healthy: true,
            ephemeral: true,
            metadata: Metadata::new(),
            default_check: false,
        }
    }

    pub fn check(&self) -> RegistryResult<()> {
        check_weight(self.weight)?;
        check_metadata(&self.metadata)
    }
}

pub fn check_weight(weight: f64) -> RegistryResult<()> {
    if !weight.is_finite() || !(0.0..=MAX_WEIGHT).contains(&weight) {
        return Err(RegistryError::invalid(
            "weight",
            format!("weight is {weight}, expected 0 to {MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

pub fn check_threshold(threshold: f64) -> RegistryResult<()> {
    if !threshold.is_finite() || !(0.0..=1.0).contains(&threshold) {
        return Err(RegistryError::invalid(
            "protect_threshold",
            format!("protect threshold is {threshold}, expected 0 to 1"),
        ));
    }
    Ok(())
}

pub fn check_metadata(metadata: &Metadata) -> RegistryResult<()> {
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(RegistryError::invalid(
            "metadata",
            format!("metadata is {bytes} bytes, limit is {MAX_METADATA_BYTES} bytes (16 KiB)"),
        ));
    }
    for key in [META_BEAT_INTERVAL, META_BEAT_TIMEOUT, META_DELETE_TIMEOUT] {
        if let Some(value) = metadata.get(key) {
            if value.trim().parse::<u64>().map_or(true, |ms| ms == 0) {
                return Err(RegistryError::invalid(
                    "metadata",
                    format!("metadata {key} is {value:?}, expected a positive number of milliseconds"),
                ));
            }
        }
    }
    Ok(())
}

/// An instance's heartbeat settings: the node's defaults, overridden by Nacos's
/// `preserved.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeatTimeouts {
    /// How often a client is told to beat.
    pub interval: Duration,
    /// Unhealthy after this long without a beat.
    pub unhealthy_after: Duration,
    /// Deleted after this long without a beat.
    pub delete_after: Duration,
}

impl BeatTimeouts {
    pub fn for_metadata(&self, metadata: &Metadata) -> BeatTimeouts {
        let ms = |key: &str, default: Duration| {
            metadata
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map_or(default, Duration::from_millis)
        };
        BeatTimeouts {
            interval: ms(META_BEAT_INTERVAL, self.interval),
            unhealthy_after: ms(META_BEAT_TIMEOUT, self.unhealthy_after),
            delete_after: ms(META_DELETE_TIMEOUT, self.delete_after),
        }
    }
}

/// Parses metadata as Nacos does: a JSON object, or `k=v,k=v`.
pub fn parse_metadata(text: &str) -> RegistryResult<Metadata> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Metadata::new());
    }
    if text.starts_with('{') {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| RegistryError::invalid("metadata", format!("metadata is not a JSON object: {e}")))?;
        return Ok(value
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect());
    }
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            pair.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).ok_or_else(|| {
                RegistryError::invalid("metadata", format!("metadata entry {pair:?} is not key=value"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert!(check_weight(10_000.0).is_ok());
        assert!(check_weight(10_000.5).is_err());
        assert!(check_weight(-1.0).is_err());
        assert!(check_weight(f64::NAN).is_err());
        let mut big = Metadata::new();
        big.insert("k".into(), "x".repeat(MAX_METADATA_BYTES));
        assert!(check_metadata(&big).is_err());
        assert!(check_threshold(1.1).is_err());
    }

    #[test]
    fn metadata_overrides_timeouts() {
        let defaults = BeatTimeouts {
            interval: Duration::from_secs(5),
            unhealthy_after: Duration::from_secs(15),
            delete_after: Duration::from_secs(30),
        };
        let meta = parse_metadata(r#"{"preserved.heart.beat.timeout":"3000","a":1}"#).unwrap();
        assert_eq!(meta["a"], "1");
        let t = defaults.for_metadata(&meta);
        assert_eq!(t.unhealthy_after, Duration::from_secs(3));
        assert_eq!(t.delete_after, Duration::from_secs(30));
        assert_eq!(parse_metadata("a=1, b=2").unwrap().len(), 2);
        assert!(parse_metadata("nope").is_err());
    }
}
