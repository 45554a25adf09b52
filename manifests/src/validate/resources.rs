//! A container's resource requirements (`validateResourceRequirements`): resource
//! names, quantities, requests within limits, and whole units for extended resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;

use super::names::qualified_name;
use super::{FieldError, NEGATIVE_MESSAGE};
use crate::quantity::{QUANTITY_FORMAT_MESSAGE, Quantity};

/// `standardResources` that may be named without a domain (the quota names too).
const STANDARD_RESOURCES: [&str; 20] = [
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "requests.storage",
    "services.nodeports",
    "services.loadbalancers",
    "storage",
];

pub(super) fn validate_resources(
    resources: &ResourceRequirements,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let empty = BTreeMap::new();
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    let limits_path = format!("{path}.limits");
    let requests_path = format!("{path}.requests");
    let parsed_limits: BTreeMap<&str, Option<Quantity>> = limits
        .iter()
        .map(|(name, value)| {
            resource_name(name, &format!("{limits_path}[{name}]"), errs);
            (
                name.as_str(),
                quantity_value(name, value, &limits_path, errs),
            )
        })
        .collect();
    for (name, value) in requests {
        resource_name(name, &format!("{requests_path}[{name}]"), errs);
        let Some(request) = quantity_value(name, value, &requests_path, errs) else {
            continue;
        };
        match parsed_limits.get(name.as_str()) {
            Some(Some(limit)) => {
                if request != *limit && !overcommit_allowed(name) {
                    errs.push(FieldError::invalid(
                        &requests_path,
                        value.0.as_str(),
                        format!("must be equal to {name} limit of {}", limits[name].0),
                    ));
                } else if request > *limit {
                    errs.push(FieldError::invalid(
                        &requests_path,
                        value.0.as_str(),
                        format!(
                            "must be less than or equal to {name} limit of {}",
                            limits[name].0
                        ),
                    ));
                }
            }
            Some(None) => {}
            None if !overcommit_allowed(name) => errs.push(FieldError::required(
                &limits_path,
                "Limit must be set for non overcommitable resources",
            )),
            None => {}
        }
    }
    let names = limits.keys().chain(requests.keys());
    let (mut huge, mut cpu_or_memory) = (false, false);
    for name in names {
        huge |= name.starts_with("hugepages-");
        cpu_or_memory |= name == "cpu" || name == "memory";
    }
    if huge && !cpu_or_memory {
        errs.push(FieldError::forbidden(
            path,
            "HugePages require cpu or memory",
        ));
    }
}

/// `validateContainerResourceName`: a qualified name; without a domain, one of the
/// container resources; with one, native (`kubernetes.io`) or a valid extended resource.
fn resource_name(name: &str, path: &str, errs: &mut Vec<FieldError>) {
    let msgs = qualified_name(name);
    if !msgs.is_empty() {
        for msg in msgs {
            errs.push(FieldError::invalid(path, name, msg));
        }
    } else if !name.contains('/') && !STANDARD_RESOURCES.contains(&name) && !is_huge_pages(name) {
        errs.push(FieldError::invalid(
            path,
            name,
            "must be a standard resource type or fully qualified",
        ));
    }
    if !name.contains('/') {
        if !is_container_resource(name) {
            errs.push(FieldError::invalid(
                path,
                name,
                "must be a standard resource for containers",
            ));
        }
    } else if !is_native(name) && !is_extended(name) {
        errs.push(FieldError::invalid(
            path,
            name,
            "doesn't follow extended resource name standard",
        ));
    }
}

fn is_huge_pages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

fn is_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || is_huge_pages(name)
}

/// `IsNativeResource`: no domain, or a `kubernetes.io` one.
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// `IsExtendedResourceName`: not native, not `requests.`-prefixed, and a qualified name
/// once prefixed with `requests.` (as its quota name is).
fn is_extended(name: &str) -> bool {
    !is_native(name)
        && !name.starts_with("requests.")
        && qualified_name(&format!("requests.{name}")).is_empty()
}

/// `IsIntegerResourceName` for containers: extended resources come in whole units.
pub(super) fn is_integer_resource(name: &str) -> bool {
    is_extended(name)
}

/// Parses one entry of a resource list, reporting a malformed or negative value.
fn quantity_value(
    name: &str,
    value: &KubeQuantity,
    list_path: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Quantity> {
    let path = format!("{list_path}[{name}]");
    match Quantity::parse(&value.0) {
        Ok(quantity) if quantity.is_negative() => {
            errs.push(FieldError::invalid(
                path,
                value.0.as_str(),
                NEGATIVE_MESSAGE,
            ));
            None
        }
        Ok(quantity) => {
            if let Some(page) = name
                .strip_prefix("hugepages-")
                .and_then(|size| Quantity::parse(size).ok())
            {
                let (value_milli, page_milli) =
                    (quantity.milli_value_ceil(), page.milli_value_ceil());
                if page_milli <= 0 || value_milli % page_milli != 0 {
                    errs.push(FieldError::invalid(
                        &path,
                        value.0.as_str(),
                        format!("{} is not positive integer multiple of {name}", value.0),
                    ));
                }
            }
            if is_integer_resource(name) && quantity.milli_value_ceil() % 1000 != 0 {
                errs.push(FieldError::invalid(
                    path,
                    value.0.as_str(),
                    "must be an integer",
                ));
            }
            Some(quantity)
        }
        Err(e) => {
            let detail = match e {
                crate::QuantityError::Format => QUANTITY_FORMAT_MESSAGE.to_owned(),
                other => other.to_string(),
            };
            errs.push(FieldError::invalid(path, value.0.as_str(), detail));
            None
        }
    }
}

/// Native resources may be overcommitted; hugepages and extended resources
/// (a domain other than `kubernetes.io`) need requests equal to limits.
fn overcommit_allowed(name: &str) -> bool {
    if name.starts_with("hugepages-") {
        return false;
    }
    match name.split_once('/') {
        None => true,
        Some((domain, _)) => domain == "kubernetes.io" || domain.ends_with(".kubernetes.io"),
    }
}
