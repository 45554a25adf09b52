//! Pod validation with upstream's field paths and messages
//! (`pkg/apis/core/validation/validation.go`, `apimachinery/pkg/util/validation`).
//!
//! Every error is collected, not just the first, and each renders exactly as
//! upstream's `field.Error` does, so users can search for the messages they know.
//! The pod is expected to be defaulted first ([`crate::default_pod`]), as the
//! apiserver and the kubelet do; on a raw pod, unset defaulted fields are
//! reported as required.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, KeyToPath, Pod, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::defaults::volume_sources;
use crate::quantity::{QUANTITY_FORMAT_MESSAGE, Quantity};

/// The volume sources nodelet can set up; the rest are reported as unsupported.
pub const SUPPORTED_VOLUME_SOURCES: [&str; 6] = [
    "configMap",
    "downwardAPI",
    "emptyDir",
    "hostPath",
    "projected",
    "secret",
];

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const RELAXED_ENV_NAME_MESSAGE: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";
const NEGATIVE_MESSAGE: &str = "must be greater than or equal to 0";
const FILE_MODE_MESSAGE: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const PORT_RANGE_MESSAGE: &str = "must be between 1 and 65535, inclusive";

/// A rejected value, printed as upstream prints it (strings quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// A string value.
    Str(String),
    /// An integer value.
    Int(i64),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => f.write_str(&go_quote(s)),
            Self::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<i64> for BadValue {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<i32> for BadValue {
    fn from(i: i32) -> Self {
        Self::Int(i.into())
    }
}

/// The kind of a field error (upstream `field.ErrorType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// "Required value".
    Required,
    /// "Invalid value".
    Invalid {
        /// The rejected value.
        value: BadValue,
    },
    /// "Duplicate value".
    Duplicate {
        /// The repeated value.
        value: BadValue,
    },
    /// "Unsupported value"; the detail lists `allowed`.
    NotSupported {
        /// The rejected value.
        value: BadValue,
        /// The accepted values.
        allowed: Vec<String>,
    },
    /// "Not found": a reference to something that does not exist.
    NotFound {
        /// The dangling reference.
        value: BadValue,
    },
    /// "Forbidden".
    Forbidden,
    /// "Too long": the detail says the limit.
    TooLong,
}

/// One problem with one field, e.g. `spec.containers[0].image: Required value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Upstream's field path (`spec.containers[1].ports[0].containerPort`).
    pub path: String,
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The explanation, possibly empty.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, value) = match &self.kind {
            FieldErrorKind::Required => ("Required value", None),
            FieldErrorKind::Invalid { value } => ("Invalid value", Some(value)),
            FieldErrorKind::Duplicate { value } => ("Duplicate value", Some(value)),
            FieldErrorKind::NotSupported { value, .. } => ("Unsupported value", Some(value)),
            FieldErrorKind::NotFound { value } => ("Not found", Some(value)),
            FieldErrorKind::Forbidden => ("Forbidden", None),
            FieldErrorKind::TooLong => ("Too long", None),
        };
        write!(f, "{}: {name}", self.path)?;
        if let Some(value) = value {
            write!(f, ": {value}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl FieldError {
    /// `field.Required`.
    pub fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    /// `field.Invalid`.
    pub fn invalid(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
            },
            detail: detail.into(),
        }
    }

    /// `field.Duplicate`.
    pub fn duplicate(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Duplicate {
                value: value.into(),
            },
            detail: String::new(),
        }
    }

    /// `field.NotSupported`: the detail lists the quoted allowed values.
    pub fn not_supported(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        allowed: &[&str],
    ) -> Self {
        let detail = if allowed.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = allowed.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self {
            path: path.into(),
            kind: FieldErrorKind::NotSupported {
                value: value.into(),
                allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
            },
            detail,
        }
    }

    /// `field.NotFound`.
    pub fn not_found(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::NotFound {
                value: value.into(),
            },
            detail: String::new(),
        }
    }

    /// `field.TooLong` with the value omitted, as upstream reports sizes:
    /// `Too long: must have at most <limit> bytes`.
    pub fn too_long(path: impl Into<String>, limit: usize) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::TooLong,
            detail: format!("must have at most {limit} bytes"),
        }
    }

    /// `field.Forbidden`.
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }
}

/// Validates a (defaulted) pod and returns every problem found, in upstream's
/// order as far as it is practical; an empty list means the pod is valid.
#[must_use]
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(&pod.metadata, &mut errs);
    match &pod.spec {
        Some(spec) => validate_spec(spec, &mut errs),
        None => errs.push(FieldError::required("spec.containers", "")),
    }
    errs
}

fn validate_meta(meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
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
    crate::meta::validate_labels_and_annotations(meta, errs);
}

fn validate_spec(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);

    if spec.containers.is_empty() {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut names = HashSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        validate_container(container, &path, &volumes, errs);
        check_unique_name(container, &path, &mut names, errs);
    }
    // Init container names must also differ from every app container's.
    let mut names: HashSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        validate_container(container, &path, &volumes, errs);
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
    if let Some(seconds) = spec.termination_grace_period_seconds
        && seconds < 0
    {
        errs.push(FieldError::invalid(
            "spec.terminationGracePeriodSeconds",
            seconds,
            NEGATIVE_MESSAGE,
        ));
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

/// Validates the volumes and returns the names of the valid ones, which are
/// the ones mounts may refer to (as upstream does).
fn validate_volumes<'a>(volumes: &'a [Volume], errs: &mut Vec<FieldError>) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let mut volume_errs = Vec::new();
        validate_volume_source(volume, &path, &mut volume_errs);
        let name_path = format!("{path}.name");
        if volume.name.is_empty() {
            volume_errs.push(FieldError::required(&name_path, ""));
        } else {
            for msg in dns1123_label(&volume.name) {
                volume_errs.push(FieldError::invalid(&name_path, volume.name.as_str(), msg));
            }
        }
        if names.contains(volume.name.as_str()) {
            volume_errs.push(FieldError::duplicate(&name_path, volume.name.as_str()));
        }
        if volume_errs.is_empty() {
            names.insert(volume.name.as_str());
        }
        errs.append(&mut volume_errs);
    }
    names
}

fn validate_volume_source(volume: &Volume, path: &str, errs: &mut Vec<FieldError>) {
    let sources = volume_sources(volume);
    let Some((first, others)) = sources.split_first() else {
        errs.push(FieldError::required(path, "must specify a volume type"));
        return;
    };
    for other in others {
        errs.push(FieldError::forbidden(
            format!("{path}.{other}"),
            "may not specify more than 1 volume type",
        ));
    }
    let source_path = format!("{path}.{first}");
    match *first {
        "emptyDir" => {}
        "hostPath" => {
            if let Some(host_path) = &volume.host_path {
                if host_path.path.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.path"), ""));
                    return;
                }
                no_backsteps(&host_path.path, &format!("{source_path}.path"), errs);
                let kind = host_path.type_.as_deref().unwrap_or("");
                const TYPES: [&str; 8] = [
                    "",
                    "BlockDevice",
                    "CharDevice",
                    "Directory",
                    "DirectoryOrCreate",
                    "File",
                    "FileOrCreate",
                    "Socket",
                ];
                if !TYPES.contains(&kind) {
                    errs.push(FieldError::not_supported(
                        format!("{source_path}.type"),
                        kind,
                        &TYPES,
                    ));
                }
            }
        }
        "secret" => {
            if let Some(secret) = &volume.secret {
                if secret.secret_name.as_deref().unwrap_or("").is_empty() {
                    errs.push(FieldError::required(
                        format!("{source_path}.secretName"),
                        "",
                    ));
                }
                file_mode(
                    secret.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                key_to_paths(secret.items.as_deref(), &source_path, errs);
            }
        }
        "configMap" => {
            if let Some(config_map) = &volume.config_map {
                if config_map.name.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.name"), ""));
                }
                file_mode(
                    config_map.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                key_to_paths(config_map.items.as_deref(), &source_path, errs);
            }
        }
        "downwardAPI" => {
            if let Some(downward) = &volume.downward_api {
                file_mode(
                    downward.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                for (i, item) in downward.items.iter().flatten().enumerate() {
                    let item_path = format!("{source_path}.items[{i}]");
                    if item.path.is_empty() {
                        errs.push(FieldError::required(format!("{item_path}.path"), ""));
                    }
                    local_non_reserved_path(&item.path, &format!("{item_path}.path"), errs);
                    file_mode(item.mode, &format!("{item_path}.mode"), errs);
                }
            }
        }
        "projected" => {
            if let Some(projected) = &volume.projected {
                file_mode(
                    projected.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
            }
        }
        unsupported => errs.push(FieldError::not_supported(
            path,
            unsupported,
            &SUPPORTED_VOLUME_SOURCES,
        )),
    }
}

fn key_to_paths(items: Option<&[KeyToPath]>, source_path: &str, errs: &mut Vec<FieldError>) {
    for (i, item) in items.unwrap_or_default().iter().enumerate() {
        let path = format!("{source_path}.items[{i}]");
        if item.key.is_empty() {
            errs.push(FieldError::required(format!("{path}.key"), ""));
        }
        if item.path.is_empty() {
            errs.push(FieldError::required(format!("{path}.path"), ""));
        }
        local_non_reserved_path(&item.path, &format!("{path}.path"), errs);
        file_mode(item.mode, &format!("{path}.mode"), errs);
    }
}

fn file_mode(mode: Option<i32>, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(mode) = mode
        && !(0..=0o777).contains(&mode)
    {
        errs.push(FieldError::invalid(path, mode, FILE_MODE_MESSAGE));
    }
}

fn validate_container(
    container: &Container,
    path: &str,
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
    for (i, env) in container.env.iter().flatten().enumerate() {
        let env_path = format!("{path}.env[{i}].name");
        if env.name.is_empty() {
            errs.push(FieldError::required(env_path, ""));
        } else if env
            .name
            .chars()
            .any(|c| !(' '..='~').contains(&c) || c == '=')
        {
            // RelaxedEnvironmentVariableValidation is on by default since 1.32.
            errs.push(FieldError::invalid(
                env_path,
                env.name.as_str(),
                RELAXED_ENV_NAME_MESSAGE,
            ));
        }
    }
    validate_mounts(
        container.volume_mounts.as_deref().unwrap_or_default(),
        path,
        volumes,
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
}

fn validate_ports(ports: &[ContainerPort], path: &str, errs: &mut Vec<FieldError>) {
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

/// Two containers may not claim the same host IP, protocol and host port.
fn check_host_port_conflicts(containers: &[Container], errs: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for (ci, container) in containers.iter().enumerate() {
        for (pi, port) in container.ports.iter().flatten().enumerate() {
            let host_port = port.host_port.unwrap_or(0);
            if host_port == 0 {
                continue;
            }
            let key = format!(
                "{}/{}/{host_port}",
                port.host_ip.as_deref().unwrap_or(""),
                port.protocol.as_deref().unwrap_or("")
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

fn validate_mounts(
    mounts: &[VolumeMount],
    path: &str,
    volumes: &HashSet<&str>,
    errs: &mut Vec<FieldError>,
) {
    let mounts_path = format!("{path}.volumeMounts");
    let mut mount_points = HashSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let mount_path = format!("{mounts_path}[{i}]");
        if mount.name.is_empty() {
            errs.push(FieldError::required(format!("{mount_path}.name"), ""));
        }
        if !volumes.contains(mount.name.as_str()) {
            errs.push(FieldError::not_found(
                format!("{mount_path}.name"),
                mount.name.as_str(),
            ));
        }
        if mount.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mount_path}.mountPath"), ""));
        }
        if !mount_points.insert(mount.mount_path.as_str()) {
            errs.push(FieldError::invalid(
                format!("{mount_path}.mountPath"),
                mount.mount_path.as_str(),
                "must be unique",
            ));
        }
        // Upstream reports subPath problems on the list's path, without the
        // index (`volumeMounts.subPath`); kept so messages match.
        let sub_path = mount.sub_path.as_deref().unwrap_or("");
        if !sub_path.is_empty() {
            local_descending_path(sub_path, &format!("{mounts_path}.subPath"), errs);
        }
        let sub_path_expr = mount.sub_path_expr.as_deref().unwrap_or("");
        if !sub_path_expr.is_empty() {
            if !sub_path.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{mount_path}.subPathExpr"),
                    sub_path_expr,
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            local_descending_path(sub_path_expr, &format!("{mounts_path}.subPathExpr"), errs);
        }
    }
}

fn validate_resources(resources: &ResourceRequirements, path: &str, errs: &mut Vec<FieldError>) {
    let empty = BTreeMap::new();
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    let limits_path = format!("{path}.limits");
    let requests_path = format!("{path}.requests");
    let parsed_limits: BTreeMap<&str, Option<Quantity>> = limits
        .iter()
        .map(|(name, value)| {
            (
                name.as_str(),
                quantity_value(name, value, &limits_path, errs),
            )
        })
        .collect();
    for (name, value) in requests {
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
        Ok(quantity) => Some(quantity),
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

/// `validateLocalDescendingPath`.
fn local_descending_path(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    if target.starts_with('/') {
        errs.push(FieldError::invalid(path, target, "must be a relative path"));
    }
    no_backsteps(target, path, errs);
}

/// `validateLocalNonReservedPath`: also no leading `..` (reserved for the
/// atomic writer's hidden directories).
fn local_non_reserved_path(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    local_descending_path(target, path, errs);
    if target.starts_with("..") && !target.starts_with("../") {
        errs.push(FieldError::invalid(
            path,
            target,
            "must not start with '..'",
        ));
    }
}

/// `validatePathNoBacksteps`: one error however many `..` there are.
fn no_backsteps(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    if target.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(path, target, "must not contain '..'"));
    }
}

fn is_label_shaped(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && (last.is_ascii_lowercase() || last.is_ascii_digit())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// `IsDNS1123Label`: the messages for `value`, empty when it is valid.
#[must_use]
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > 63 {
        msgs.push("must be no more than 63 characters".to_owned());
    }
    if !is_label_shaped(value) {
        if value.split('.').all(is_label_shaped) {
            msgs.push("must not contain dots".to_owned());
        } else {
            msgs.push(DNS1123_LABEL_MESSAGE.to_owned());
        }
    }
    msgs
}

/// `IsDNS1123Subdomain`: the messages for `value`, empty when it is valid.
#[must_use]
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > 253 {
        msgs.push("must be no more than 253 characters".to_owned());
    }
    if !value.split('.').all(is_label_shaped) {
        msgs.push(DNS1123_SUBDOMAIN_MESSAGE.to_owned());
    }
    msgs
}

/// `IsValidPortName` (an IANA service name).
fn iana_svc_name(port: &str) -> Vec<&'static str> {
    let mut msgs = Vec::new();
    if port.len() > 15 {
        msgs.push("must be no more than 15 characters");
    }
    if !port
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        msgs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !port.bytes().any(|b| b.is_ascii_lowercase()) {
        msgs.push("must contain at least one letter (a-z)");
    }
    if port.contains("--") {
        msgs.push("must not contain consecutive hyphens");
    }
    if port.starts_with('-') || port.ends_with('-') {
        msgs.push("must not begin or end with a hyphen");
    }
    msgs
}

/// Quotes like Go's `%q`: double quotes, backslash escapes for quotes,
/// backslashes and control characters; printable Unicode kept as is.
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::defaults::default_pod;
    use serde_json::{Value, json};

    /// A valid, defaulted pod with `patch` merged into its JSON.
    fn pod(patch: Value) -> Pod {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "app", "image": "busybox:1.36",
                    "ports": [{"name": "http", "containerPort": 80}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }]
            }
        });
        merge(&mut base, patch);
        let mut pod: Pod = serde_json::from_value(base).unwrap();
        default_pod(&mut pod);
        pod
    }

    /// JSON merge patch (RFC 7386), enough to tweak the base pod per case.
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }

    fn messages(pod: &Pod) -> Vec<String> {
        validate_pod(pod).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_base_pod_is_valid() {
        assert_eq!(messages(&pod(json!({}))), Vec::<String>::new());
    }

    #[test]
    fn error_table() {
        let container = |extra: Value| {
            let mut c = json!({"name": "app", "image": "busybox:1.36"});
            merge(&mut c, extra);
            c
        };
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "bad name",
                json!({"metadata": {"name": "Web_1"}}),
                vec![
                    r#"metadata.name: Invalid value: "Web_1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
                ],
            ),
            (
                "missing name",
                json!({"metadata": {"name": null}}),
                vec!["metadata.name: Required value: name or generateName is required"],
            ),
            (
                "bad namespace",
                json!({"metadata": {"namespace": "kube.system"}}),
                vec![r#"metadata.namespace: Invalid value: "kube.system": must not contain dots"#],
            ),
            (
                "namespace underscore",
                json!({"metadata": {"namespace": "a_b"}}),
                vec![
                    r#"metadata.namespace: Invalid value: "a_b": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
                ],
            ),
            (
                "no containers",
                json!({"spec": {"containers": []}}),
                vec!["spec.containers: Required value"],
            ),
            (
                "missing image and duplicate name",
                json!({"spec": {"containers": [container(json!({})), container(json!({"image": null}))]}}),
                vec![
                    "spec.containers[1].image: Required value",
                    r#"spec.containers[1].name: Duplicate value: "app""#,
                ],
            ),
            (
                "init container clashes with app container",
                json!({"spec": {"containers": [container(json!({}))], "initContainers": [container(json!({}))]}}),
                vec![r#"spec.initContainers[0].name: Duplicate value: "app""#],
            ),
            (
                "empty and bad container names",
                json!({"spec": {"containers": [container(json!({"name": ""})), container(json!({"name": "App"}))]}}),
                vec![
                    "spec.containers[0].name: Required value",
                    r#"spec.containers[1].name: Invalid value: "App": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
                ],
            ),
            (
                "ports",
                json!({"spec": {"containers": [container(json!({"ports": [
                    {"containerPort": 0},
                    {"containerPort": 70000, "protocol": "ICMP"},
                    {"name": "http", "containerPort": 1},
                    {"name": "http", "containerPort": 2},
                    {"name": "Web--", "containerPort": 3},
                    {"containerPort": 4, "hostPort": -1}
                ]}))]}}),
                vec![
                    "spec.containers[0].ports[0].containerPort: Required value",
                    "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                    r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
                    r#"spec.containers[0].ports[3].name: Duplicate value: "http""#,
                    r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                    r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must not contain consecutive hyphens"#,
                    r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must not begin or end with a hyphen"#,
                    "spec.containers[0].ports[5].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive",
                ],
            ),
            (
                "host port conflict",
                json!({"spec": {"containers": [
                    container(json!({"ports": [{"containerPort": 80, "hostPort": 8080}]})),
                    container(json!({"name": "b", "ports": [{"containerPort": 81, "hostPort": 8080}]}))
                ]}}),
                vec![r#"spec.containers[1].ports[0].hostPort: Duplicate value: "/TCP/8080""#],
            ),
            (
                "policies",
                json!({"spec": {"restartPolicy": "Sometimes", "dnsPolicy": "Google"}}),
                vec![
                    r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#,
                    r#"spec.dnsPolicy: Unsupported value: "Google": supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None""#,
                ],
            ),
            (
                "dns none needs config",
                json!({"spec": {"dnsPolicy": "None"}}),
                vec![
                    "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None",
                ],
            ),
            (
                "grace period",
                json!({"spec": {"terminationGracePeriodSeconds": -5}}),
                vec![
                    "spec.terminationGracePeriodSeconds: Invalid value: -5: must be greater than or equal to 0",
                ],
            ),
            (
                "volumes",
                json!({"spec": {"volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "data", "emptyDir": {}},
                    {"name": "nfs", "nfs": {"server": "s", "path": "/"}},
                    {"name": "two", "emptyDir": {}, "hostPath": {"path": "/x"}},
                    {"name": "hp", "hostPath": {"path": "/a/../b", "type": "Dir"}},
                    {"name": "sec", "secret": {"defaultMode": 4095}},
                    {"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}}
                ]}}),
                vec![
                    r#"spec.volumes[1].name: Duplicate value: "data""#,
                    r#"spec.volumes[2]: Unsupported value: "nfs": supported values: "configMap", "downwardAPI", "emptyDir", "hostPath", "projected", "secret""#,
                    "spec.volumes[3].hostPath: Forbidden: may not specify more than 1 volume type",
                    r#"spec.volumes[4].hostPath.path: Invalid value: "/a/../b": must not contain '..'"#,
                    r#"spec.volumes[4].hostPath.type: Unsupported value: "Dir": supported values: "", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket""#,
                    "spec.volumes[5].secret.secretName: Required value",
                    "spec.volumes[5].secret.defaultMode: Invalid value: 4095: must be a number between 0 and 0777 (octal), both inclusive",
                    r#"spec.volumes[6].configMap.items[0].path: Invalid value: "/abs": must be a relative path"#,
                ],
            ),
            (
                "mounts",
                json!({"spec": {"containers": [container(json!({"volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "data", "mountPath": "/data", "subPath": "../x"},
                    {"name": "gone", "mountPath": ""},
                    {"name": "data", "mountPath": "/b", "subPath": "/abs", "subPathExpr": "$(X)"}
                ]}))]}}),
                vec![
                    r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/data": must be unique"#,
                    r#"spec.containers[0].volumeMounts.subPath: Invalid value: "../x": must not contain '..'"#,
                    r#"spec.containers[0].volumeMounts[2].name: Not found: "gone""#,
                    "spec.containers[0].volumeMounts[2].mountPath: Required value",
                    r#"spec.containers[0].volumeMounts.subPath: Invalid value: "/abs": must be a relative path"#,
                    r#"spec.containers[0].volumeMounts[3].subPathExpr: Invalid value: "$(X)": subPathExpr and subPath are mutually exclusive"#,
                ],
            ),
            (
                "env names",
                json!({"spec": {"containers": [container(json!({"env": [
                    {"name": "OK_1.x-y"}, {"name": ""}, {"name": "A=B"}, {"name": "tab\there"}
                ]}))]}}),
                vec![
                    "spec.containers[0].env[1].name: Required value",
                    r#"spec.containers[0].env[2].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
                    r#"spec.containers[0].env[3].name: Invalid value: "tab\there": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
                ],
            ),
            (
                "resources",
                json!({"spec": {"containers": [container(json!({"resources": {
                    "limits": {"cpu": "500m", "memory": "1Gi", "example.com/gpu": "1", "bad": "1x"},
                    "requests": {"cpu": "0.6", "memory": "-1", "example.com/gpu": "2", "vendor.io/fpga": "1"}
                }}))]}}),
                vec![
                    r#"spec.containers[0].resources.limits[bad]: Invalid value: "1x": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#,
                    // Defaulting copied the limit into requests, so it is reported twice, as upstream would.
                    r#"spec.containers[0].resources.requests[bad]: Invalid value: "1x": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#,
                    r#"spec.containers[0].resources.requests: Invalid value: "0.6": must be less than or equal to cpu limit of 500m"#,
                    r#"spec.containers[0].resources.requests: Invalid value: "2": must be equal to example.com/gpu limit of 1"#,
                    r#"spec.containers[0].resources.requests[memory]: Invalid value: "-1": must be greater than or equal to 0"#,
                    "spec.containers[0].resources.limits: Required value: Limit must be set for non overcommitable resources",
                ],
            ),
            (
                "host network ports must match",
                json!({"spec": {"hostNetwork": true, "containers": [container(json!({"ports": [{"containerPort": 80, "hostPort": 81}]}))]}}),
                vec![
                    "spec.containers[0].ports[0].hostPort: Invalid value: 81: must match `containerPort` when `hostNetwork` is true",
                ],
            ),
        ];
        for (name, patch, expected) in cases {
            assert_eq!(messages(&pod(patch)), expected, "{name}");
        }
    }

    #[test]
    fn undefaulted_fields_are_required() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        assert_eq!(
            messages(&pod),
            [
                "spec.containers[0].imagePullPolicy: Required value",
                "spec.containers[0].terminationMessagePolicy: Required value: must be 'File' or 'FallbackToLogsOnError'",
                "spec.restartPolicy: Required value",
                "spec.dnsPolicy: Required value",
            ]
        );
    }

    #[test]
    fn names_table() {
        let long_label = "a".repeat(64);
        let cases: &[(&str, usize, usize)] = &[
            ("a", 0, 0),
            ("a-1", 0, 0),
            ("1a", 0, 0),
            ("a.b", 1, 0),
            ("-a", 1, 1),
            ("a-", 1, 1),
            ("", 1, 1),
            (&long_label, 1, 0),
            ("a..b", 1, 1),
        ];
        for (value, label_errs, subdomain_errs) in cases {
            assert_eq!(dns1123_label(value).len(), *label_errs, "label {value:?}");
            assert_eq!(
                dns1123_subdomain(value).len(),
                *subdomain_errs,
                "subdomain {value:?}"
            );
        }
        assert_eq!(
            dns1123_subdomain(&"a".repeat(254)),
            ["must be no more than 253 characters"]
        );
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
    }
}
