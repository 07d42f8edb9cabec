//! Nacos's console export format, both ways, so a team can move in from Nacos (and back):
//! a zip whose entries are `{group}/{dataId}` with the content, plus one metadata entry:
//! - `.metadata.yml` (Nacos ≥ 1.4, "export v2"): `metadata:` a list of `dataId`, `group`,
//!   `type`, `appName`, `desc`;
//! - `.meta.yml` (older): lines `{group}.{dataId with its last '.' as '~'}.app={appName}`.
//!
//! Reading is bounded: the entry count, each entry's size and the total uncompressed size
//! are capped while reading, whatever the zip's headers claim.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};
use crate::format::ConfigFormat;
use crate::service::now_ms;
use crate::transfer::{ExportDoc, ExportItem, EXPORT_KIND, EXPORT_VERSION};

/// The metadata entry of Nacos's newer export.
pub const METADATA_V2: &str = ".metadata.yml";
/// The metadata entry of Nacos's older export.
pub const METADATA_V1: &str = ".meta.yml";
/// More entries than this is not a config export.
pub const MAX_ZIP_ENTRIES: usize = 100_000;
/// The uncompressed total a zip may expand to.
pub const MAX_ZIP_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

/// True when `bytes` starts like a zip file (a local file header, or an empty archive).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NacosMetadataItem {
    data_id: String,
    group: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    content_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    desc: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NacosMetadata {
    #[serde(default)]
    metadata: Vec<NacosMetadataItem>,
}

fn invalid(entry: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::InvalidImport(format!("zip entry {entry:?}: {reason}"))
}

/// Nacos's `type` names our formats by the same words; anything else is text.
fn format_from_nacos(kind: &str) -> ConfigFormat {
    ConfigFormat::parse(kind).unwrap_or(ConfigFormat::Text)
}

/// The format an old export implies by the data id's extension (it has no `type`).
fn format_from_data_id(data_id: &str) -> ConfigFormat {
    match data_id.rsplit_once('.') {
        Some((_, extension)) => format_from_nacos(extension),
        None => ConfigFormat::Text,
    }
}

/// The key of an old export's `.meta.yml` line for a config.
fn v1_meta_key(group: &str, data_id: &str) -> String {
    let data_id = match data_id.rsplit_once('.') {
        Some((stem, extension)) => format!("{stem}~{extension}"),
        None => data_id.to_owned(),
    };
    format!("{group}.{data_id}.app")
}

impl ExportDoc {
    /// Reads a Nacos console export zip as an export of `namespace`. Every entry must be a
    /// `{group}/{dataId}` with UTF-8 content no larger than `max_entry_bytes`; the first that
    /// is not is named in the error, and nothing is imported.
    pub fn from_nacos_zip(bytes: &[u8], namespace: &str, max_entry_bytes: usize) -> ConfigResult<ExportDoc> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| ConfigError::InvalidImport(format!("the file is not a readable zip: {e}")))?;
        if archive.len() > MAX_ZIP_ENTRIES {
            return Err(ConfigError::InvalidImport(format!(
                "the zip has {} entries, over the limit of {MAX_ZIP_ENTRIES}",
                archive.len()
            )));
        }
        let mut total: u64 = 0;
        let mut contents: Vec<(String, String, String)> = Vec::new();
        let mut metadata_v2: Option<String> = None;
        let mut metadata_v1: Option<String> = None;
        for index in 0..archive.len() {
            let mut file = archive
                .by_index(index)
                .map_err(|e| ConfigError::InvalidImport(format!("zip entry #{index} cannot be read: {e}")))?;
            let name = file
                .name()
                .map_err(|e| ConfigError::InvalidImport(format!("zip entry #{index} has a bad name: {e}")))?
                .into_owned();
            if file.is_dir() {
                continue;
            }
            // Read at most one byte past the limit, whatever the header claims.
            let limit = (max_entry_bytes as u64).min(MAX_ZIP_TOTAL_BYTES - total);
            let mut raw = Vec::new();
            (&mut file)
                .take(limit + 1)
                .read_to_end(&mut raw)
                .map_err(|e| invalid(&name, format!("cannot be decompressed: {e}")))?;
            if raw.len() as u64 > limit {
                return Err(if limit < max_entry_bytes as u64 {
                    ConfigError::InvalidImport(format!(
                        "the zip expands to over {MAX_ZIP_TOTAL_BYTES} bytes, the limit (at entry {name:?})"
                    ))
                } else {
                    invalid(&name, format!("it is over {max_entry_bytes} bytes, the config size limit"))
                });
            }
            total += raw.len() as u64;
            let text = String::from_utf8(raw).map_err(|_| invalid(&name, "its content is not UTF-8"))?;
            match name.as_str() {
                METADATA_V2 => metadata_v2 = Some(text),
                METADATA_V1 => metadata_v1 = Some(text),
                _ => {
                    let (group, data_id) = match name.split('/').collect::<Vec<_>>()[..] {
                        [group, data_id] if !group.is_empty() && !data_id.is_empty() => (group, data_id),
                        _ => return Err(invalid(&name, "it is not named {group}/{dataId}")),
                    };
                    contents.push((group.to_owned(), data_id.to_owned(), text));
                }
            }
        }
        // What the metadata says of each config: (format, app name, description).
        let mut described: HashMap<(String, String), (ConfigFormat, String, String)> = HashMap::new();
        let mut app_names_v1: HashMap<String, String> = HashMap::new();
        if let Some(text) = metadata_v2 {
            let docs = yaml_rust2::YamlLoader::load_from_str(&text)
                .map_err(|e| invalid(METADATA_V2, format!("it is not valid YAML: {e}")))?;
            let value = docs.first().map(crate::format::yaml_to_json).unwrap_or(serde_json::Value::Null);
            let metadata: NacosMetadata = serde_json::from_value(value)
                .map_err(|e| invalid(METADATA_V2, format!("it is not Nacos export metadata: {e}")))?;
            for item in metadata.metadata {
                let format = format_from_nacos(&item.content_type);
                described.insert((item.group, item.data_id), (format, item.app_name, item.desc));
            }
        } else if let Some(text) = metadata_v1 {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (key, app) = line
                    .split_once('=')
                    .ok_or_else(|| invalid(METADATA_V1, format!("line {line:?} is not key=value")))?;
                app_names_v1.insert(key.to_owned(), app.to_owned());
            }
        }
        let items = contents
            .into_iter()
            .map(|(group, data_id, content)| {
                let (format, app_name, description) =
                    match described.remove(&(group.clone(), data_id.clone())) {
                        Some(found) => found,
                        None => (
                            format_from_data_id(&data_id),
                            app_names_v1.get(&v1_meta_key(&group, &data_id)).cloned().unwrap_or_default(),
                            String::new(),
                        ),
                    };
                ExportItem {
                    group,
                    data_id,
                    format,
                    content,
                    md5: String::new(),
                    description,
                    tags: Vec::new(),
                    app_name,
                    schema: None,
                    secret: false,
                    sealed_at: None,
                }
            })
            .collect();
        Ok(ExportDoc {
            kind: EXPORT_KIND.into(),
            version: EXPORT_VERSION,
            namespace: namespace.into(),
            group: None,
            exported_at_ms: now_ms(),
            items,
        })
    }

    /// The export as a Nacos console export zip (the newer format, with `.metadata.yml`),
    /// which Nacos's console import and [`ExportDoc::from_nacos_zip`] both read. Tags and
    /// schemas have no place in that format; the YAML export keeps them.
    pub fn to_nacos_zip(&self) -> ConfigResult<Vec<u8>> {
        let corrupt = |e: zip::result::ZipError| ConfigError::Corrupt(format!("writing the zip: {e}"));
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        let sealed = self.items.iter().filter(|i| i.sealed_at.is_some()).count();
        if sealed > 0 {
            return Err(ConfigError::SecretsUnavailable(format!(
                "a Nacos zip cannot carry sealed secrets ({sealed} in this export): export YAML, or ask for plaintext"
            )));
        }
        let mut metadata = NacosMetadata::default();
        for item in &self.items {
            writer.start_file(format!("{}/{}", item.group, item.data_id), options).map_err(corrupt)?;
            writer.write_all(item.content.as_bytes()).map_err(|e| corrupt(e.into()))?;
            metadata.metadata.push(NacosMetadataItem {
                data_id: item.data_id.clone(),
                group: item.group.clone(),
                content_type: item.format.as_str().to_owned(),
                app_name: item.app_name.clone(),
                desc: item.description.clone(),
            });
        }
        let yaml = metadata_yaml(&metadata)?;
        writer.start_file(METADATA_V2, options).map_err(corrupt)?;
        writer.write_all(yaml.as_bytes()).map_err(|e| corrupt(e.into()))?;
        Ok(writer.finish().map_err(corrupt)?.into_inner())
    }
}

fn metadata_yaml(metadata: &NacosMetadata) -> ConfigResult<String> {
    let value = serde_json::to_value(metadata).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&crate::transfer::json_to_yaml(&value))
        .map_err(|e| ConfigError::Corrupt(format!("{e:?}")))?;
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (name, content) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_the_newer_export_with_its_metadata() {
        let bytes = zip_of(&[
            ("DEFAULT_GROUP/app.yaml", "a: 1\n"),
            ("billing/db", "{\"url\":\"x\"}"),
            (
                ".metadata.yml",
                "metadata:\n- dataId: app.yaml\n  group: DEFAULT_GROUP\n  type: yaml\n  appName: shop\n  desc: the app\n\
                 - dataId: db\n  group: billing\n  type: json\n",
            ),
        ]);
        assert!(is_zip(&bytes));
        let doc = ExportDoc::from_nacos_zip(&bytes, "dev", 1024).unwrap();
        assert_eq!(doc.namespace, "dev");
        assert_eq!(doc.items.len(), 2);
        let app = &doc.items[0];
        assert_eq!((app.group.as_str(), app.data_id.as_str()), ("DEFAULT_GROUP", "app.yaml"));
        assert_eq!(
            (app.format, app.app_name.as_str(), app.description.as_str()),
            (ConfigFormat::Yaml, "shop", "the app")
        );
        assert_eq!(doc.items[1].format, ConfigFormat::Json);
    }

    #[test]
    fn reads_the_older_export_by_extension_and_meta_lines() {
        let bytes = zip_of(&[
            ("DEFAULT_GROUP/app.properties", "a=1\n"),
            (".meta.yml", "DEFAULT_GROUP.app~properties.app=shop\r\n"),
        ]);
        let doc = ExportDoc::from_nacos_zip(&bytes, "public", 1024).unwrap();
        assert_eq!(doc.items[0].format, ConfigFormat::Properties);
        assert_eq!(doc.items[0].app_name, "shop");
    }

    #[test]
    fn round_trips_through_its_own_zip() {
        let bytes = zip_of(&[("g/a.json", "{}"), ("g/b", "plain")]);
        let doc = ExportDoc::from_nacos_zip(&bytes, "public", 1024).unwrap();
        let again = ExportDoc::from_nacos_zip(&doc.to_nacos_zip().unwrap(), "public", 1024).unwrap();
        assert_eq!(doc.items, again.items);
    }

    #[test]
    fn names_the_bad_entry() {
        let nested = zip_of(&[("a/b/c", "x")]);
        let error = ExportDoc::from_nacos_zip(&nested, "public", 1024).unwrap_err().to_string();
        assert!(error.contains("\"a/b/c\"") && error.contains("{group}/{dataId}"), "{error}");

        let big = zip_of(&[("g/big", &"x".repeat(2000))]);
        let error = ExportDoc::from_nacos_zip(&big, "public", 1024).unwrap_err().to_string();
        assert!(error.contains("\"g/big\"") && error.contains("1024"), "{error}");

        let error = ExportDoc::from_nacos_zip(b"PK\x03\x04garbage", "public", 1024).unwrap_err().to_string();
        assert!(error.contains("not a readable zip"), "{error}");

        let meta = zip_of(&[("g/a", "x"), (".metadata.yml", "metadata: 3\n")]);
        let error = ExportDoc::from_nacos_zip(&meta, "public", 1024).unwrap_err().to_string();
        assert!(error.contains(".metadata.yml"), "{error}");
    }
}
