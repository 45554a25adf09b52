//! ConfigMap and Secret documents beside standalone pods (beyond upstream, whose
//! static pods can't use either): defaulted as the apiserver would store them
//! (namespace `default`, a Secret's `stringData` folded into `data`, type `Opaque`)
//! and validated as upstream's `ValidateConfigMap` and `ValidateSecret` (name, keys,
//! no key twice, at most 1 MiB of data).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::parse::ApiObject;
use crate::validate::{FieldError, dns1123_subdomain};

/// Upstream's `MaxSecretSize` and the ConfigMap limit (`RuntimeObjectsMaxSize`).
pub const MAX_OBJECT_DATA: usize = 1024 * 1024;

/// The object's name (empty when it has none).
pub fn name(object: &ApiObject) -> &str {
    let meta = match object {
        ApiObject::ConfigMap(c) => &c.metadata,
        ApiObject::Secret(s) => &s.metadata,
    };
    meta.name.as_deref().unwrap_or_default()
}

/// Defaults as the apiserver does on create.
pub fn default_object(object: &mut ApiObject) {
    let meta = match object {
        ApiObject::ConfigMap(c) => &mut c.metadata,
        ApiObject::Secret(s) => &mut s.metadata,
    };
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
    if let ApiObject::Secret(s) = object {
        if let Some(strings) = s.string_data.take() {
            let data = s.data.get_or_insert_with(Default::default);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        if s.type_.as_deref().is_none_or(str::is_empty) {
            s.type_ = Some("Opaque".to_owned());
        }
    }
}

fn key_errors(path: &str, key: &str) -> Vec<FieldError> {
    crate::validate::config_key_errors(key)
        .into_iter()
        .map(|m| FieldError::invalid(format!("{path}[{key}]"), key, m))
        .collect()
}

/// Upstream's `ValidateConfigMap` / `ValidateSecret`, for what a standalone pod uses.
pub fn validate_object(object: &ApiObject) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = name(object);
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in dns1123_subdomain(name) {
            errors.push(FieldError::invalid("metadata.name", name, m));
        }
    }
    let mut total = 0usize;
    match object {
        ApiObject::ConfigMap(ConfigMap {
            data, binary_data, ..
        }) => {
            for (k, v) in data.iter().flatten() {
                errors.extend(key_errors("data", k));
                total += v.len();
            }
            for (k, v) in binary_data.iter().flatten() {
                errors.extend(key_errors("binaryData", k));
                if data.as_ref().is_some_and(|d| d.contains_key(k)) {
                    errors.push(FieldError::invalid(
                        format!("data[{k}]"),
                        k.as_str(),
                        "duplicate of key present in binaryData",
                    ));
                }
                total += v.0.len();
            }
            // Upstream's ValidateConfigMap names the whole object (`field.NewPath("")`,
            // which the apiserver prints as `[]`); ValidateSecret names `data`.
            if total > MAX_OBJECT_DATA {
                errors.push(FieldError::too_long("[]", MAX_OBJECT_DATA));
            }
        }
        ApiObject::Secret(Secret { data, .. }) => {
            for (k, v) in data.iter().flatten() {
                errors.extend(key_errors("data", k));
                total += v.0.len();
            }
            if total > MAX_OBJECT_DATA {
                errors.push(FieldError::too_long("data", MAX_OBJECT_DATA));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: serde_json::Value) -> ApiObject {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "Secret" {
            ApiObject::Secret(serde_json::from_value(v).expect("secret"))
        } else {
            ApiObject::ConfigMap(serde_json::from_value(v).expect("configmap"))
        }
    }

    #[test]
    fn secrets_get_string_data_namespace_and_type() {
        let mut s = object(serde_json::json!({
            "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "eA=="}, "stringData": {"b": "y"}
        }));
        default_object(&mut s);
        let ApiObject::Secret(s) = s else {
            panic!("a secret")
        };
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let data = s.data.expect("data");
        assert_eq!(data["a"].0, b"x");
        assert_eq!(data["b"].0, b"y");
        assert!(s.string_data.is_none());
    }

    #[test]
    fn bad_names_keys_and_sizes_are_field_errors() {
        let big = "x".repeat(MAX_OBJECT_DATA + 1);
        let cm = object(serde_json::json!({
            "kind": "ConfigMap", "metadata": {"name": "Bad_Name"},
            "data": {"ok.key": "1", "bad/key": "2", "dup": "3", "big": big},
            "binaryData": {"dup": "eA=="}
        }));
        let errors: Vec<String> = validate_object(&cm)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("metadata.name: Invalid value: \"Bad_Name\"")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("data[bad/key]: Invalid value")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("duplicate of key present in binaryData")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("[]: Too long")),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        let ok = object(
            serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "fine"}, "data": {"a": "1"}}),
        );
        assert!(validate_object(&ok).is_empty());
    }
}
