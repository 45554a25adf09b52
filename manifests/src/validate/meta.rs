//! Object metadata (`ValidateObjectMeta`): name, namespace, labels, annotations and
//! finalizers; and the annotations only a pod has meaning for
//! (`ValidatePodSpecificAnnotations`: AppArmor, seccomp, deletion cost).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::FieldError;
use super::names::{dns1123_label, dns1123_subdomain, label_value, qualified_name};
use super::volumes::local_descending_path;

/// `TotalAnnotationSizeLimitB`: 256 KiB of keys and values together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const APPARMOR_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// `helper.IsStandardFinalizerName`.
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

pub(super) fn validate_meta(meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    match meta.name.as_deref().unwrap_or("") {
        "" if meta.generate_name.as_deref().unwrap_or("").is_empty() => errs.push(
            FieldError::required("metadata.name", "name or generateName is required"),
        ),
        "" => {}
        name => {
            for msg in dns1123_subdomain(name) {
                errs.push(FieldError::invalid("metadata.name", name, msg));
            }
        }
    }
    match meta.namespace.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required("metadata.namespace", "")),
        namespace => {
            for msg in dns1123_label(namespace) {
                errs.push(FieldError::invalid("metadata.namespace", namespace, msg));
            }
        }
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", errs);
    }
    if let Some(annotations) = &meta.annotations {
        validate_annotations(annotations, errs);
    }
    for (i, finalizer) in meta.finalizers.iter().flatten().enumerate() {
        let path = "metadata.finalizers";
        for msg in qualified_name(finalizer) {
            errs.push(FieldError::invalid(path, finalizer.as_str(), msg));
        }
        if !finalizer.contains('/') && !STANDARD_FINALIZERS.contains(&finalizer.as_str()) {
            // Upstream reports this one on the item's own path.
            errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                finalizer.as_str(),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

/// `ValidateLabels`: qualified-name keys and label values, reported on the map's path.
pub(super) fn validate_labels(
    labels: &BTreeMap<String, String>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for (key, value) in labels {
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid(path, key.as_str(), msg));
        }
        for msg in label_value(value) {
            errs.push(FieldError::invalid(path, value.as_str(), msg));
        }
    }
}

/// `ValidateAnnotations`: keys are qualified names once lower-cased; the keys and values
/// together stay within [`TOTAL_ANNOTATION_SIZE_LIMIT`].
fn validate_annotations(annotations: &BTreeMap<String, String>, errs: &mut Vec<FieldError>) {
    let path = "metadata.annotations";
    let mut total = 0usize;
    for (key, value) in annotations {
        for msg in qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(path, key.as_str(), msg));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

/// `ValidatePodSpecificAnnotations`: the AppArmor annotations name a container of the pod
/// and a valid profile, the seccomp annotations a valid profile, and the deletion cost is a
/// 32-bit integer.
pub(super) fn validate_pod_annotations(
    meta: &ObjectMeta,
    spec: &PodSpec,
    errs: &mut Vec<FieldError>,
) {
    let Some(annotations) = &meta.annotations else {
        return;
    };
    let key_path = |key: &str| format!("metadata.annotations[{key}]");
    if let Some(cost) = annotations.get(DELETION_COST_ANNOTATION)
        && !valid_deletion_cost(cost)
    {
        errs.push(FieldError::invalid(
            key_path(DELETION_COST_ANNOTATION),
            cost.as_str(),
            "must be a 32bit integer",
        ));
    }
    for (key, value) in annotations {
        if key == SECCOMP_POD_ANNOTATION || key.starts_with(SECCOMP_CONTAINER_PREFIX) {
            // Upstream names these with `Child`, not `Key`: `metadata.annotations.<key>`.
            validate_seccomp_profile(value, &format!("metadata.annotations.{key}"), errs);
        }
    }
    for (key, profile) in annotations {
        let Some(container) = key.strip_prefix(APPARMOR_PREFIX) else {
            continue;
        };
        if !has_container(spec, container) {
            errs.push(FieldError::invalid(
                key_path(key),
                container,
                "container not found",
            ));
        }
        if !(profile.is_empty()
            || profile == "runtime/default"
            || profile == "unconfined"
            || profile.starts_with("localhost/"))
        {
            errs.push(FieldError::invalid(
                key_path(key),
                profile.as_str(),
                format!(
                    "invalid AppArmor profile name: {}",
                    super::go_quote(profile)
                ),
            ));
        }
    }
}

fn has_container(spec: &PodSpec, name: &str) -> bool {
    let regular = spec.containers.iter().map(|c| c.name.as_str());
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str());
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str());
    regular.chain(init).chain(ephemeral).any(|n| n == name)
}

/// `GetDeletionCostFromPodAnnotations`: a decimal 32-bit integer, optionally negative.
fn valid_deletion_cost(value: &str) -> bool {
    value
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        && value.parse::<i32>().is_ok()
}

/// `ValidateSeccompProfile`.
fn validate_seccomp_profile(profile: &str, path: &str, errs: &mut Vec<FieldError>) {
    match profile {
        "runtime/default" | "docker/default" | "unconfined" => {}
        p => match p.strip_prefix("localhost/") {
            Some(local) => local_descending_path(local, path, errs),
            None => errs.push(FieldError::invalid(
                path,
                p,
                "must be a valid seccomp profile",
            )),
        },
    }
}
