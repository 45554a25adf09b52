//! Pod validation with upstream's field paths and messages
//! (`pkg/apis/core/validation/validation.go`, `apimachinery/pkg/util/validation`),
//! by area: [`field`] (the error type), `meta` (labels, annotations, finalizers, the
//! pod-specific annotations), `volumes`, `container` (with `env`, `handlers` for probes
//! and hooks, and `resources`), `scheduling` (node selector, affinity, tolerations,
//! hostname, pod security context) and `names` (the syntax rules they share).
//!
//! Every error is collected, not just the first, and each renders exactly as
//! upstream's `field.Error` does, so users can search for the messages they know.
//! The pod is expected to be defaulted first ([`crate::default_pod`]), as the
//! apiserver and the kubelet do; on a raw pod, unset defaulted fields are
//! reported as required. `manifests/tests/parity.rs` compares the verdicts and field
//! paths with a real kube-apiserver's.

mod container;
mod env;
pub mod field;
mod handlers;
mod meta;
mod names;
mod podspec;
mod resources;
mod scheduling;
#[cfg(test)]
mod tests;
mod volumes;

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use container::{Kind, validate_container};

pub use field::{BadValue, FieldError, FieldErrorKind, go_quote};
pub use meta::TOTAL_ANNOTATION_SIZE_LIMIT;
pub use names::{dns1123_label, dns1123_subdomain, label_value, qualified_name};

/// Upstream's `IsConfigMapKey` messages for a ConfigMap or Secret key (empty: valid).
pub fn config_key_errors(key: &str) -> Vec<String> {
    names::config_key(key)
}

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const NEGATIVE_MESSAGE: &str = "must be greater than or equal to 0";
const FILE_MODE_MESSAGE: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const PORT_RANGE_MESSAGE: &str = "must be between 1 and 65535, inclusive";

/// Validates a (defaulted) pod and returns every problem found, in upstream's
/// order as far as it is practical; an empty list means the pod is valid.
#[must_use]
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Vec::new();
    meta::validate_meta(&pod.metadata, &mut errs);
    match &pod.spec {
        Some(spec) => {
            meta::validate_pod_annotations(&pod.metadata, spec, &mut errs);
            validate_spec(spec, &mut errs);
        }
        None => errs.push(FieldError::required("spec.containers", "")),
    }
    errs
}

fn validate_spec(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let grace = spec.termination_grace_period_seconds;
    let volumes = volumes::validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);

    if spec.containers.is_empty() {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut names = HashSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        validate_container(container, &path, Kind::Regular, grace, &volumes, errs);
        check_unique_name(container, &path, &mut names, errs);
    }
    // Init container names must also differ from every app container's.
    let mut names: HashSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        let kind = if container.restart_policy.as_deref() == Some("Always") {
            Kind::Sidecar
        } else {
            Kind::Init
        };
        validate_container(container, &path, kind, grace, &volumes, errs);
        check_unique_name(container, &path, &mut names, errs);
    }
    check_host_port_conflicts(&spec.containers, errs);

    let restart_policy = spec.restart_policy.as_deref().unwrap_or("");
    match restart_policy {
        "Always" | "OnFailure" | "Never" => {}
        "" => errs.push(FieldError::required("spec.restartPolicy", "")),
        other => errs.push(FieldError::not_supported(
            "spec.restartPolicy",
            other,
            &["Always", "OnFailure", "Never"],
        )),
    }
    let dns_policy = spec.dns_policy.as_deref().unwrap_or("");
    match dns_policy {
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None" => {}
        "" => errs.push(FieldError::required("spec.dnsPolicy", "")),
        other => errs.push(FieldError::not_supported(
            "spec.dnsPolicy",
            other,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        )),
    }
    if spec.host_network == Some(true) {
        validate_host_network_ports(spec, errs);
    }
    if dns_policy == "None" {
        match &spec.dns_config {
            None => errs.push(FieldError::required(
                "spec.dnsConfig",
                "must provide `dnsConfig` when `dnsPolicy` is None",
            )),
            Some(config) if config.nameservers.as_deref().unwrap_or_default().is_empty() => {
                errs.push(FieldError::required(
                    "spec.dnsConfig.nameservers",
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(seconds) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&seconds)
    {
        errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            seconds,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    scheduling::validate_scheduling(spec, errs);
    podspec::validate_pod_spec_rest(spec, errs);
}

fn check_unique_name<'a>(
    container: &'a Container,
    path: &str,
    names: &mut HashSet<&'a str>,
    errs: &mut Vec<FieldError>,
) {
    if names.contains(container.name.as_str()) {
        errs.push(FieldError::duplicate(
            format!("{path}.name"),
            container.name.as_str(),
        ));
    } else if !container.name.is_empty() {
        names.insert(&container.name);
    }
}

/// Two containers may not claim the same host IP, protocol and host port.
fn check_host_port_conflicts(containers: &[Container], errs: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for (ci, container) in containers.iter().enumerate() {
        for (pi, port) in container.ports.iter().flatten().enumerate() {
            let host_port = port.host_port.unwrap_or(0);
            if host_port == 0 {
                continue;
            }
            // Upstream's key: protocol, host IP, port (`TCP//8080`).
            let key = format!(
                "{}/{}/{host_port}",
                port.protocol.as_deref().unwrap_or(""),
                port.host_ip.as_deref().unwrap_or("")
            );
            if !seen.insert(key.clone()) {
                errs.push(FieldError::duplicate(
                    format!("spec.containers[{ci}].ports[{pi}].hostPort"),
                    key.as_str(),
                ));
            }
        }
    }
}

fn validate_host_network_ports(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let groups = [
        ("containers", spec.containers.as_slice()),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (field, containers) in groups {
        for (ci, container) in containers.iter().enumerate() {
            for (pi, port) in container.ports.iter().flatten().enumerate() {
                let host_port = port.host_port.unwrap_or(0);
                if host_port != port.container_port {
                    errs.push(FieldError::invalid(
                        format!("spec.{field}[{ci}].ports[{pi}].hostPort"),
                        host_port,
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
}
