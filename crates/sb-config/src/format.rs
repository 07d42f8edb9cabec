//! Content formats and their validation: a publish whose content does not parse in its
//! format is refused, with the line and column of the first error.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    #[default]
    Text,
    Json,
    Yaml,
    Toml,
    Properties,
    Xml,
    Html,
}

impl ConfigFormat {
    pub const ALL: [ConfigFormat; 7] = [
        ConfigFormat::Text,
        ConfigFormat::Json,
        ConfigFormat::Yaml,
        ConfigFormat::Toml,
        ConfigFormat::Properties,
        ConfigFormat::Xml,
        ConfigFormat::Html,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigFormat::Text => "text",
            ConfigFormat::Json => "json",
            ConfigFormat::Yaml => "yaml",
            ConfigFormat::Toml => "toml",
            ConfigFormat::Properties => "properties",
            ConfigFormat::Xml => "xml",
            ConfigFormat::Html => "html",
        }
    }

    /// A format name as clients write it (case-insensitive; `yml`, `txt` and `htm` too).
    pub fn parse(name: &str) -> Result<ConfigFormat, ConfigError> {
        let lower = name.trim().to_ascii_lowercase();
        let format = match lower.as_str() {
            "text" | "txt" => ConfigFormat::Text,
            "json" => ConfigFormat::Json,
            "yaml" | "yml" => ConfigFormat::Yaml,
            "toml" => ConfigFormat::Toml,
            "properties" => ConfigFormat::Properties,
            "xml" => ConfigFormat::Xml,
            "html" | "htm" => ConfigFormat::Html,
            _ => return Err(ConfigError::UnknownFormat(name.to_owned())),
        };
        Ok(format)
    }

    /// Whether a JSON Schema applies to the format's content.
    pub fn has_json_model(self) -> bool {
        matches!(self, ConfigFormat::Json | ConfigFormat::Yaml | ConfigFormat::Toml)
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why content does not parse: the format, 1-based line and column, and the parser's
/// reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentError {
    pub format: ConfigFormat,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "content is not valid {} at line {} column {}: {}",
            self.format, self.line, self.column, self.reason
        )
    }
}

/// Parses `content` in `format`. For json, yaml and toml the parsed document comes back as
/// JSON, so a JSON Schema can check it.
pub fn validate_content(
    format: ConfigFormat,
    content: &str,
) -> Result<Option<serde_json::Value>, ContentError> {
    let error = |line: usize, column: usize, reason: String| ContentError { format, line, column, reason };
    match format {
        ConfigFormat::Text => Ok(None),
        ConfigFormat::Json => serde_json::from_str::<serde_json::Value>(content)
            .map(Some)
            .map_err(|e| error(e.line(), e.column(), strip_position(&e.to_string()))),
        ConfigFormat::Yaml => {
            let docs = yaml_rust2::YamlLoader::load_from_str(content)
                .map_err(|e| error(e.marker().line(), e.marker().col() + 1, e.info().to_owned()))?;
            Ok(Some(match docs.first() {
                Some(doc) => yaml_to_json(doc),
                None => serde_json::Value::Null,
            }))
        }
        ConfigFormat::Toml => match toml::from_str::<toml::Table>(content) {
            Ok(table) => Ok(Some(serde_json::to_value(table).unwrap_or(serde_json::Value::Null))),
            Err(e) => {
                let (line, column) = e.span().map_or((1, 1), |span| line_column(content, span.start));
                Err(error(line, column, e.message().trim().to_owned()))
            }
        },
        ConfigFormat::Properties => {
            java_properties::read(content.as_bytes())
                .map_err(|e| error(e.line_number().unwrap_or(1), 1, e.to_string()))?;
            Ok(None)
        }
        ConfigFormat::Xml => roxmltree::Document::parse(content).map(|_| None).map_err(|e| {
            let pos = e.pos();
            error(pos.row as usize, pos.col as usize, strip_position(&e.to_string()))
        }),
        ConfigFormat::Html => {
            let emitter = html5gum::DefaultEmitter::<usize>::new_with_span();
            for token in html5gum::Tokenizer::new_with_emitter(content, emitter) {
                let Ok(token) = token;
                if let html5gum::Token::Error(spanned) = token {
                    let (line, column) = line_column(content, spanned.span.start);
                    return Err(error(line, column, spanned.value.to_string()));
                }
            }
            Ok(None)
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parsers append " at line X column Y"; the error already carries both.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

pub(crate) fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> serde_json::Value {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Real(r) => r.clone(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(format: ConfigFormat, content: &str) -> ContentError {
        validate_content(format, content).expect_err(content)
    }

    #[test]
    fn every_format_accepts_valid_content() {
        let cases = [
            (ConfigFormat::Text, "anything { at all"),
            (ConfigFormat::Json, "{\"a\": [1, 2]}"),
            (ConfigFormat::Yaml, "a:\n  b: 1\n"),
            (ConfigFormat::Toml, "[server]\nport = 80\n"),
            (ConfigFormat::Properties, "a=1\nb = two\n"),
            (ConfigFormat::Xml, "<a><b x=\"1\"/></a>"),
            (ConfigFormat::Html, "<!DOCTYPE html><html><body><p class=\"x\">hi</p></body></html>"),
        ];
        for (format, content) in cases {
            assert!(validate_content(format, content).is_ok(), "{format}: {content}");
        }
    }

    #[test]
    fn errors_carry_line_and_column() {
        let json = fails(ConfigFormat::Json, "{\n  \"a\": 1,\n  \"b\": }\n");
        assert_eq!((json.line, json.column), (3, 8), "{json}");
        let yaml = fails(ConfigFormat::Yaml, "a: 1\nb: [1, 2\n");
        assert_eq!(yaml.line, 3, "{yaml}");
        let toml = fails(ConfigFormat::Toml, "a = 1\nb = = 2\n");
        assert_eq!((toml.line, toml.column), (2, 5), "{toml}");
        let xml = fails(ConfigFormat::Xml, "<a>\n  <b></c>\n</a>");
        assert_eq!(xml.line, 2, "{xml}");
        let html = fails(ConfigFormat::Html, "<p>\n<a href=\"x\" href=\"y\">");
        assert_eq!(html.line, 2, "{html}");
        assert!(json.to_string().contains("line 3 column 8"), "{json}");
    }

    #[test]
    fn yaml_and_toml_become_json_for_schemas() {
        let yaml = validate_content(ConfigFormat::Yaml, "port: 80\nname: x\n").unwrap().unwrap();
        assert_eq!(yaml, serde_json::json!({"port": 80, "name": "x"}));
        let toml = validate_content(ConfigFormat::Toml, "port = 80\n").unwrap().unwrap();
        assert_eq!(toml, serde_json::json!({"port": 80}));
    }

    #[test]
    fn format_names() {
        assert_eq!(ConfigFormat::parse("YML").unwrap(), ConfigFormat::Yaml);
        assert!(matches!(ConfigFormat::parse("ini"), Err(ConfigError::UnknownFormat(_))));
    }
}
