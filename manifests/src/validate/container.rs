//! One container (`validateContainerCommon` and the per-list rules of
//! `validateContainers`/`validateInitContainers`): name, image, ports, environment,
//! mounts, pull and termination-message policies, resources, probes and hooks, and the
//! security context.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, ContainerPort, SecurityContext};

use super::names::{ID_RANGE_MESSAGE, dns1123_label, iana_svc_name, id_in_range};
use super::resources::validate_resources;
use super::volumes::validate_mounts;
use super::{FieldError, PORT_RANGE_MESSAGE, env, handlers};

/// Which list a container is in, which decides what it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `spec.containers`.
    Regular,
    /// `spec.initContainers` without `restartPolicy: Always`.
    Init,
    /// `spec.initContainers` with `restartPolicy: Always`.
    Sidecar,
}

pub(super) fn validate_container(
    container: &Container,
    path: &str,
    kind: Kind,
    grace_period: Option<i64>,
    volumes: &HashSet<&str>,
    errs: &mut Vec<FieldError>,
) {
    let name_path = format!("{path}.name");
    if container.name.is_empty() {
        errs.push(FieldError::required(&name_path, ""));
    } else {
        for msg in dns1123_label(&container.name) {
            errs.push(FieldError::invalid(
                &name_path,
                container.name.as_str(),
                msg,
            ));
        }
    }
    let image = container.image.as_deref().unwrap_or("");
    if image.is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    } else if image.trim() != image {
        errs.push(FieldError::invalid(
            format!("{path}.image"),
            image,
            "must not have leading or trailing whitespace",
        ));
    }
    validate_ports(container.ports.as_deref().unwrap_or_default(), path, errs);
    env::validate_env(container, path, errs);
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|c| c.privileged)
        .unwrap_or(false);
    validate_mounts(
        container.volume_mounts.as_deref().unwrap_or_default(),
        path,
        volumes,
        privileged,
        errs,
    );

    let pull_path = format!("{path}.imagePullPolicy");
    match container.image_pull_policy.as_deref().unwrap_or("") {
        "Always" | "IfNotPresent" | "Never" => {}
        "" => errs.push(FieldError::required(pull_path, "")),
        other => errs.push(FieldError::not_supported(
            pull_path,
            other,
            &["Always", "IfNotPresent", "Never"],
        )),
    }
    let message_path = format!("{path}.terminationMessagePolicy");
    match container
        .termination_message_policy
        .as_deref()
        .unwrap_or("")
    {
        "File" | "FallbackToLogsOnError" => {}
        "" => errs.push(FieldError::required(
            message_path,
            "must be 'File' or 'FallbackToLogsOnError'",
        )),
        other => errs.push(FieldError::not_supported(
            message_path,
            other,
            &["File", "FallbackToLogsOnError"],
        )),
    }
    if let Some(resources) = &container.resources {
        validate_resources(resources, &format!("{path}.resources"), errs);
    }
    handlers::validate_probes_and_hooks(container, path, kind, grace_period, errs);
    if let Some(context) = &container.security_context {
        validate_security_context(context, &format!("{path}.securityContext"), errs);
    }
}

/// `ValidateSecurityContext`: user and group IDs in range, and no privileged container
/// that forbids privilege escalation.
fn validate_security_context(context: &SecurityContext, path: &str, errs: &mut Vec<FieldError>) {
    for (field, id) in [
        ("runAsUser", context.run_as_user),
        ("runAsGroup", context.run_as_group),
    ] {
        if let Some(id) = id
            && !id_in_range(id)
        {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                id,
                ID_RANGE_MESSAGE,
            ));
        }
    }
    if let Some(profile) = &context.seccomp_profile {
        super::podspec::validate_seccomp_profile(profile, &format!("{path}.seccompProfile"), errs);
    }
    if context.allow_privilege_escalation == Some(false) {
        if context.privileged == Some(true) {
            errs.push(FieldError::invalid(
                path,
                "",
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let adds = context
            .capabilities
            .iter()
            .flat_map(|c| c.add.iter().flatten());
        for _ in adds.filter(|cap| *cap == "CAP_SYS_ADMIN") {
            errs.push(FieldError::invalid(
                path,
                "",
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
}

pub(super) fn validate_ports(ports: &[ContainerPort], path: &str, errs: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let port_path = format!("{path}.ports[{i}]");
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = iana_svc_name(name);
            if !msgs.is_empty() {
                for msg in msgs {
                    errs.push(FieldError::invalid(format!("{port_path}.name"), name, msg));
                }
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{port_path}.name"), name));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(
                format!("{port_path}.containerPort"),
                "",
            ));
        } else if !(1..=65535).contains(&port.container_port) {
            errs.push(FieldError::invalid(
                format!("{port_path}.containerPort"),
                port.container_port,
                PORT_RANGE_MESSAGE,
            ));
        }
        if let Some(host_port) = port.host_port
            && host_port != 0
            && !(1..=65535).contains(&host_port)
        {
            errs.push(FieldError::invalid(
                format!("{port_path}.hostPort"),
                host_port,
                PORT_RANGE_MESSAGE,
            ));
        }
        match port.protocol.as_deref().unwrap_or("") {
            "TCP" | "UDP" | "SCTP" => {}
            "" => errs.push(FieldError::required(format!("{port_path}.protocol"), "")),
            other => errs.push(FieldError::not_supported(
                format!("{port_path}.protocol"),
                other,
                &["SCTP", "TCP", "UDP"],
            )),
        }
    }
}
