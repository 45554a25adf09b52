//! A container's environment (`ValidateEnv`, `validateEnvVarValueFrom`, `ValidateEnvFrom`):
//! names, the one source of a `valueFrom`, the downward API fields and resources an
//! environment variable may read, and `envFrom` prefixes and sources.

use k8s_openapi::api::core::v1::{
    ConfigMapKeySelector, Container, EnvVarSource, ObjectFieldSelector, ResourceFieldSelector,
    SecretKeySelector,
};

use super::FieldError;
use super::names::{config_key, dns1123_subdomain, qualified_name, relaxed_env_var_name};
use crate::quantity::Quantity;

/// `validEnvDownwardAPIFieldPathExpressions`.
const ENV_FIELD_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];
/// `validContainerResourceFieldPathExpressions`.
const RESOURCE_FIELDS: [&str; 6] = [
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

pub(super) fn validate_env(container: &Container, path: &str, errs: &mut Vec<FieldError>) {
    for (i, env) in container.env.iter().flatten().enumerate() {
        let env_path = format!("{path}.env[{i}]");
        if env.name.is_empty() {
            errs.push(FieldError::required(format!("{env_path}.name"), ""));
        } else {
            for msg in relaxed_env_var_name(&env.name) {
                errs.push(FieldError::invalid(
                    format!("{env_path}.name"),
                    env.name.as_str(),
                    msg,
                ));
            }
        }
        if let Some(source) = &env.value_from {
            let has_value = env.value.as_deref().is_some_and(|v| !v.is_empty());
            validate_value_from(source, has_value, &format!("{env_path}.valueFrom"), errs);
        }
    }
    for (i, from) in container.env_from.iter().flatten().enumerate() {
        let from_path = format!("{path}.envFrom[{i}]");
        if let Some(prefix) = from.prefix.as_deref().filter(|p| !p.is_empty()) {
            for msg in relaxed_env_var_name(prefix) {
                errs.push(FieldError::invalid(
                    format!("{from_path}.prefix"),
                    prefix,
                    msg,
                ));
            }
        }
        let mut sources = 0;
        if let Some(config_map) = &from.config_map_ref {
            sources += 1;
            object_name(&config_map.name, &format!("{from_path}.configMapRef"), errs);
        }
        if let Some(secret) = &from.secret_ref {
            sources += 1;
            object_name(&secret.name, &format!("{from_path}.secretRef"), errs);
        }
        let list_path = format!("{path}.envFrom");
        if sources == 0 {
            errs.push(FieldError::invalid(
                list_path,
                "",
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid(
                list_path,
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
}

/// The name of a referenced config map or secret: required, a DNS subdomain.
fn object_name(name: &str, path: &str, errs: &mut Vec<FieldError>) {
    let name_path = format!("{path}.name");
    if name.is_empty() {
        errs.push(FieldError::required(name_path, ""));
    } else {
        for msg in dns1123_subdomain(name) {
            errs.push(FieldError::invalid(&name_path, name, msg));
        }
    }
}

fn validate_value_from(
    source: &EnvVarSource,
    has_value: bool,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let mut sources = 0;
    if let Some(field_ref) = &source.field_ref {
        sources += 1;
        field_selector(field_ref, &format!("{path}.fieldRef"), errs);
    }
    if let Some(resource_ref) = &source.resource_field_ref {
        sources += 1;
        resource_selector(resource_ref, &format!("{path}.resourceFieldRef"), errs);
    }
    if let Some(ConfigMapKeySelector { name, key, .. }) = &source.config_map_key_ref {
        sources += 1;
        key_selector(name, key, &format!("{path}.configMapKeyRef"), errs);
    }
    if let Some(SecretKeySelector { name, key, .. }) = &source.secret_key_ref {
        sources += 1;
        key_selector(name, key, &format!("{path}.secretKeyRef"), errs);
    }
    if sources == 0 {
        errs.push(FieldError::invalid(
            path,
            "",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef` or `fileKeyRef`",
        ));
    } else if has_value {
        errs.push(FieldError::invalid(
            path,
            "",
            "may not be specified when `value` is not empty",
        ));
    } else if sources > 1 {
        errs.push(FieldError::invalid(
            path,
            "",
            "may not have more than one field specified at a time",
        ));
    }
}

/// `validateObjectFieldSelector` with the fields an environment variable may read.
fn field_selector(selector: &ObjectFieldSelector, path: &str, errs: &mut Vec<FieldError>) {
    let field_path = format!("{path}.fieldPath");
    let api_version = selector.api_version.as_deref().unwrap_or("");
    if api_version.is_empty() {
        errs.push(FieldError::required(format!("{path}.apiVersion"), ""));
        return;
    }
    let wanted = selector.field_path.as_str();
    if wanted.is_empty() {
        errs.push(FieldError::required(field_path, ""));
        return;
    }
    if api_version != "v1" {
        errs.push(FieldError::invalid(
            field_path,
            wanted,
            format!("error converting fieldPath: unsupported pod version: {api_version}"),
        ));
        return;
    }
    // `metadata.labels['key']` and `metadata.annotations['key']` name one entry.
    let subscripted = wanted.strip_suffix("']").and_then(|w| w.split_once("['"));
    match subscripted {
        Some(("metadata.labels", key)) => {
            for msg in qualified_name(key) {
                errs.push(FieldError::invalid(path, key, msg));
            }
        }
        Some(("metadata.annotations", key)) => {
            for msg in qualified_name(&key.to_lowercase()) {
                errs.push(FieldError::invalid(path, key, msg));
            }
        }
        Some((other, _)) => errs.push(FieldError::not_supported(
            path,
            other,
            &["metadata.annotations", "metadata.labels"],
        )),
        // `spec.host` is the old name of `spec.nodeName`, still converted.
        None if ENV_FIELD_PATHS.contains(&wanted) || wanted == "spec.host" => {}
        None if matches!(wanted, "metadata.labels" | "metadata.annotations") => errs.push(
            FieldError::not_supported(field_path, wanted, &ENV_FIELD_PATHS),
        ),
        None => errs.push(FieldError::invalid(
            field_path,
            wanted,
            format!("error converting fieldPath: field label not supported: {wanted}"),
        )),
    }
}

/// `validateContainerResourceFieldSelector` for environment variables, with
/// `validateContainerResourceDivisor`.
fn resource_selector(selector: &ResourceFieldSelector, path: &str, errs: &mut Vec<FieldError>) {
    let resource = selector.resource.as_str();
    let divisor = selector.divisor.as_ref().map(|d| d.0.as_str());
    if let Some(divisor) = divisor.filter(|d| Quantity::parse(d).is_ok_and(|q| q.nanos() != 0)) {
        const MEMORY: [&str; 13] = [
            "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
        ];
        let same = |allowed: &str| Quantity::parse(allowed).ok() == Quantity::parse(divisor).ok();
        let (allowed, what): (&[&str], &str) = match resource {
            "limits.cpu" | "requests.cpu" => {
                (&["1m", "1"], "1m and 1 are supported with the cpu resource")
            }
            "limits.memory" | "requests.memory" => (
                &MEMORY,
                "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the memory resource",
            ),
            "limits.ephemeral-storage" | "requests.ephemeral-storage" => (
                &MEMORY,
                "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the local ephemeral storage resource",
            ),
            _ => (&[], ""),
        };
        if !what.is_empty() && !allowed.iter().any(|a| same(a)) {
            errs.push(FieldError::invalid(
                format!("{path}.divisor"),
                resource,
                format!("only divisor's values {what}"),
            ));
        }
    }
    if resource.is_empty() {
        errs.push(FieldError::required(format!("{path}.resource"), ""));
    } else if !RESOURCE_FIELDS.contains(&resource)
        && !resource.starts_with("limits.hugepages-")
        && !resource.starts_with("requests.hugepages-")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.resource"),
            resource,
            &RESOURCE_FIELDS,
        ));
    }
}

/// `validateConfigMapKeySelector` and `validateSecretKeySelector`.
fn key_selector(name: &str, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    object_name(name, path, errs);
    let key_path = format!("{path}.key");
    if key.is_empty() {
        errs.push(FieldError::required(key_path, ""));
    } else {
        for msg in config_key(key) {
            errs.push(FieldError::invalid(&key_path, key, msg));
        }
    }
}
