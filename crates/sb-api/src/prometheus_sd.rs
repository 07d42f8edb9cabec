//! Prometheus HTTP service discovery: `GET /api/v1/prometheus/sd`, the registry view in
//! Prometheus's `http_sd` JSON format (a list of target groups). A thin translator: it
//! reads the registry view and formats it; no registry rule lives here.
//!
//! One target group per enabled instance (`ip:port`, `[v6]:port`), labelled with
//! `__meta_switchboard_namespace`, `_group`, `_service`, `_cluster`, `_healthy`
//! (`true`/`false`, the instance's real health, so a scrape config may keep or drop
//! unhealthy targets), `_ephemeral`, `_weight`, and one `_metadata_<key>` per metadata
//! entry. Metadata keys are sanitised as Prometheus requires of label names: every byte
//! outside `[a-zA-Z0-9_]` becomes `_`; when two keys sanitise to the same name, the first
//! in key order wins. Disabled instances are left out. Optional filters: `namespace`,
//! `group`, `service` (no namespace means every namespace).

use axum::extract::State;
use axum::Json;
use sb_registry::{InstanceEntry, ServiceEntry, ServiceId};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::extract::Params;
use crate::ApiState;

pub const META_PREFIX: &str = "__meta_switchboard_";

/// `metadata key` → the part of a Prometheus label name after `_metadata_`.
pub fn sanitize_label(key: &str) -> String {
    key.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { b as char } else { '_' }).collect()
}

fn target_group(id: &ServiceId, instance: &InstanceEntry) -> Value {
    let mut labels = Map::new();
    let mut put = |name: &str, value: String| {
        labels.entry(format!("{META_PREFIX}{name}")).or_insert(Value::String(value));
    };
    put("namespace", id.namespace.clone());
    put("group", id.group.clone());
    put("service", id.service.clone());
    put("cluster", instance.addr.cluster.clone());
    put("healthy", instance.record.healthy.to_string());
    put("ephemeral", instance.record.ephemeral.to_string());
    put("weight", instance.record.weight.to_string());
    for (key, value) in &instance.record.metadata {
        put(&format!("metadata_{}", sanitize_label(key)), value.clone());
    }
    serde_json::json!({ "targets": [instance.addr.socket()], "labels": labels })
}

fn service_groups(id: &ServiceId, service: &ServiceEntry, out: &mut Vec<Value>) {
    for instance in service.instances.values().filter(|i| i.record.enabled) {
        out.push(target_group(id, instance));
    }
}

/// `GET /api/v1/prometheus/sd?namespace=&group=&service=`.
pub async fn sd(State(api): State<ApiState>, params: Params) -> Result<Json<Value>, ApiError> {
    let filter = |name: &'static str| -> Result<Option<&str>, ApiError> {
        match params.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(value) => {
                sb_registry::names::check_name(name, value)?;
                Ok(Some(value))
            }
        }
    };
    let (namespace, group, service) = (filter("namespace")?, filter("group")?, filter("service")?);
    let state = api.registry.snapshot();
    let mut groups = Vec::new();
    let services: Box<dyn Iterator<Item = (&ServiceId, &ServiceEntry)>> = match namespace {
        Some(ns) => Box::new(state.services_in(ns, group)),
        None => Box::new(
            state
                .services
                .iter()
                .filter(|(id, _)| group.is_none_or(|g| id.group == g))
                .map(|(id, service)| (&**id, service)),
        ),
    };
    for (id, entry) in services.filter(|(id, _)| service.is_none_or(|s| id.service == s)) {
        service_groups(id, entry, &mut groups);
    }
    Ok(Json(Value::Array(groups)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sanitised() {
        assert_eq!(sanitize_label("preserved.heart-beat/x:1"), "preserved_heart_beat_x_1");
        assert_eq!(sanitize_label("ok_Name9"), "ok_Name9");
        assert_eq!(sanitize_label("é"), "__");
    }
}
