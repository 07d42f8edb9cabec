//! The OpenAPI document, generated from the route table; later issues extend the table,
//! and the document follows.

use serde_json::{json, Map, Value};

use crate::routes::ROUTES;

/// `{*key}` (axum) is `{key}` in OpenAPI.
fn openapi_path(template: &str) -> String {
    template.replace("{*", "{")
}

fn path_parameters(template: &str) -> Vec<Value> {
    template
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name.trim_start_matches('*'), "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut operation = json!({
            "operationId": format!("{:?}", route.id),
            "summary": route.summary,
            "tags": [route.resource],
            "x-switchboard-resource": route.resource,
            "x-switchboard-action": route.action.as_str(),
            "x-switchboard-audited": route.audited,
            "parameters": path_parameters(route.path),
            "responses": {
                "200": {"description": "success"},
                "default": {
                    "description": "an error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            }
        });
        if !route.authenticated {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(openapi_path(route.path)).or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Switchboard API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "field": {"type": "string"}
                        }
                    }}
                },
                "KeyValue": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "value": {"type": "string"},
                        "value_encoding": {"enum": ["utf8", "base64"]},
                        "create_revision": {"type": "integer"},
                        "mod_revision": {"type": "integer"},
                        "version": {"type": "integer"},
                        "lease": {"type": ["string", "null"], "description": "a decimal lease id"}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        for route in ROUTES {
            let path = openapi_path(route.path);
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(doc["paths"][&path][&method].is_object(), "{method} {path} is missing");
        }
        assert_eq!(doc["paths"]["/api/v1/kv/{key}"]["put"]["parameters"][0]["name"], "key");
    }
}
