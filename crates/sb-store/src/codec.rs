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

/// Encodes a value with its format version: `"v"` first, then the value's own fields, in
/// one pass (no intermediate `serde_json::Value`: every write encodes several values).
pub fn encode<T: StoredValue>(value: &T) -> Result<Vec<u8>, CodecError> {
    let unencodable = |reason: String| CodecError::Unencodable { kind: T::KIND, reason };
    #[cfg(debug_assertions)]
    {
        // The reserved field is a property of the type: debug builds (every test) check it.
        let json = serde_json::to_value(value).map_err(|e| unencodable(e.to_string()))?;
        let object = json.as_object().ok_or_else(|| unencodable("it is not a JSON object".into()))?;
        if object.contains_key(FORMAT_VERSION_FIELD) {
            return Err(unencodable("it has a field named \"v\", which the format reserves".into()));
        }
    }
    serde_json::to_vec(&Versioned { v: T::FORMAT_VERSION, value }).map_err(|e| unencodable(e.to_string()))
}

/// A stored value's JSON: its format version, then its own fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    v: u32,
    #[serde(flatten)]
    value: &'a T,
}

/// Decodes a value, upgrading an older format version. A value of the current version is
/// read straight into `T` (which ignores the `"v"` field); only an older one goes through a
/// `serde_json::Value` for [`StoredValue::upgrade`].
pub fn decode<T: StoredValue>(bytes: &[u8]) -> Result<T, CodecError> {
    let malformed = |reason: String| CodecError::Malformed { kind: T::KIND, reason };
    let VersionProbe(found) = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let found = found.ok_or(CodecError::MissingVersion { kind: T::KIND })?;
    if found > T::FORMAT_VERSION {
        return Err(CodecError::TooNew { kind: T::KIND, found, supported: T::FORMAT_VERSION });
    }
    if found == T::FORMAT_VERSION {
        return serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()));
    }
    let mut json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if let Some(object) = json.as_object_mut() {
        object.remove(FORMAT_VERSION_FIELD);
    }
    json = T::upgrade(found, json)?;
    serde_json::from_value(json).map_err(|e| malformed(e.to_string()))
}

/// The `"v"` field of a stored JSON object, when it is a `u32`; every other field is skipped
/// unread. Anything but an object is an error.
struct VersionProbe(Option<u32>);

impl<'de> serde::Deserialize<'de> for VersionProbe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VersionProbe;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VersionProbe, A::Error> {
                let mut version = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == FORMAT_VERSION_FIELD {
                        let value: serde_json::Value = map.next_value()?;
                        version = value.as_u64().and_then(|v| u32::try_from(v).ok());
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(VersionProbe(version))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
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
    fn the_version_comes_first_and_unknown_fields_are_ignored() {
        let bytes = encode(&Sample { name: "a".into(), port: 80 }).unwrap();
        assert_eq!(bytes, br#"{"v":2,"name":"a","port":80}"#);
        let sorted = br#"{"name":"b","port":81,"v":2,"later":{"v":9}}"#;
        assert_eq!(decode::<Sample>(sorted).unwrap(), Sample { name: "b".into(), port: 81 });
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Reserved {
        v: u8,
    }

    impl StoredValue for Reserved {
        const KIND: &'static str = "reserved";
        const FORMAT_VERSION: u32 = 1;
    }

    #[test]
    fn a_type_with_a_v_field_cannot_be_encoded() {
        assert!(matches!(encode(&Reserved { v: 1 }).unwrap_err(), CodecError::Unencodable { .. }));
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
