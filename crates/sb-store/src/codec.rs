//! The stored-value format: every value Switchboard writes is a JSON object that carries
//! its format version in a `"v"` field, so a later release can read what an earlier one
//! wrote, and operators can read values with `etcdctl get`.
//!
//! `{"v":1,"addr":"10.0.0.1:8848","roles":["api"]}`: `v` is reserved in every stored type.
//! A value newer than this release understands is refused with a clear error, never
//! misread; an older one goes through [`StoredValue::upgrade`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The field that carries the format version.
pub const FORMAT_VERSION_FIELD: &str = "v";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("stored {kind} value is not valid JSON: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("stored {kind} value has no format version field \"v\"")]
    MissingVersion { kind: &'static str },
    #[error(
        "stored {kind} value has format v{found}, this release reads up to v{supported}: upgrade Switchboard"
    )]
    TooNew { kind: &'static str, found: u32, supported: u32 },
    #[error("stored {kind} value has format v{found}, which this release cannot upgrade")]
    TooOld { kind: &'static str, found: u32 },
    #[error("{kind} value cannot be encoded: {reason}")]
    Unencodable { kind: &'static str, reason: String },
}

/// A type Switchboard stores. Its serde form must be a JSON object without a `v` field.
pub trait StoredValue: Serialize + DeserializeOwned {
    /// A short name for errors: `node`, `instance`, `config item`.
    const KIND: &'static str;
    /// The format version this release writes. Bump it when the shape changes, and teach
    /// [`StoredValue::upgrade`] to read the old one.
    const FORMAT_VERSION: u32;

    /// Rewrites a value of an older format version into the current shape.
    fn upgrade(found: u32, value: serde_json::Value) -> Result<serde_json::Value, CodecError> {
        let _ = value;
        Err(CodecError::TooOld { kind: Self::KIND, found })
    }
}

/// Encodes a value with its format version.
pub fn encode<T: StoredValue>(value: &T) -> Result<Vec<u8>, CodecError> {
    let unencodable = |reason: String| CodecError::Unencodable { kind: T::KIND, reason };
    let mut json = serde_json::to_value(value).map_err(|e| unencodable(e.to_string()))?;
    let object = json.as_object_mut().ok_or_else(|| unencodable("it is not a JSON object".into()))?;
    if object.contains_key(FORMAT_VERSION_FIELD) {
        return Err(unencodable("it has a field named \"v\", which the format reserves".into()));
    }
    object.insert(FORMAT_VERSION_FIELD.into(), T::FORMAT_VERSION.into());
    serde_json::to_vec(&json).map_err(|e| unencodable(e.to_string()))
}

/// Decodes a value, upgrading an older format version.
pub fn decode<T: StoredValue>(bytes: &[u8]) -> Result<T, CodecError> {
    let malformed = |reason: String| CodecError::Malformed { kind: T::KIND, reason };
    let mut json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let object = json.as_object_mut().ok_or_else(|| malformed("it is not a JSON object".into()))?;
    let found = object
        .remove(FORMAT_VERSION_FIELD)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(CodecError::MissingVersion { kind: T::KIND })?;
    if found > T::FORMAT_VERSION {
        return Err(CodecError::TooNew { kind: T::KIND, found, supported: T::FORMAT_VERSION });
    }
    if found < T::FORMAT_VERSION {
        json = T::upgrade(found, json)?;
    }
    serde_json::from_value(json).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        port: u16,
    }

    impl StoredValue for Sample {
        const KIND: &'static str = "sample";
        const FORMAT_VERSION: u32 = 2;

        fn upgrade(found: u32, mut value: serde_json::Value) -> Result<serde_json::Value, CodecError> {
            match found {
                1 => {
                    // v1 called the field "addr_port".
                    let object =
                        value.as_object_mut().ok_or(CodecError::TooOld { kind: Self::KIND, found })?;
                    let port = object.remove("addr_port").unwrap_or(serde_json::Value::Null);
                    object.insert("port".into(), port);
                    Ok(value)
                }
                _ => Err(CodecError::TooOld { kind: Self::KIND, found }),
            }
        }
    }

    #[test]
    fn roundtrip_carries_the_format_version() {
        let bytes = encode(&Sample { name: "a".into(), port: 80 }).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 2);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), Sample { name: "a".into(), port: 80 });
    }

    #[test]
    fn older_format_is_upgraded() {
        let old = br#"{"v":1,"name":"a","addr_port":81}"#;
        assert_eq!(decode::<Sample>(old).unwrap(), Sample { name: "a".into(), port: 81 });
    }

    #[test]
    fn newer_format_is_refused_by_name() {
        let err = decode::<Sample>(br#"{"v":3,"name":"a","port":1}"#).unwrap_err();
        assert_eq!(err, CodecError::TooNew { kind: "sample", found: 3, supported: 2 });
        assert!(err.to_string().contains("v3"), "{err}");
    }

    #[test]
    fn missing_version_and_garbage_are_errors() {
        assert_eq!(
            decode::<Sample>(br#"{"name":"a","port":1}"#).unwrap_err(),
            CodecError::MissingVersion { kind: "sample" }
        );
        assert!(matches!(decode::<Sample>(b"\xff").unwrap_err(), CodecError::Malformed { .. }));
        assert!(matches!(decode::<Sample>(b"[1]").unwrap_err(), CodecError::Malformed { .. }));
    }
}
