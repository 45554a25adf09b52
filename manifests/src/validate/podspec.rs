//! The rest of the pod spec (`validatePodDNSConfig`, `ValidateHostAliases`,
//! `validateTopologySpreadConstraints`, `validateOS`, `validateReadinessGates`,
//! `validateSysctls`, `validateSeccompProfileField`).

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{PodSpec, SeccompProfile};

use super::names::{dns1123_subdomain, qualified_name};
use super::volumes::local_descending_path;
use super::{BadValue, FieldError};

const IP_MESSAGE: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const SEARCH_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '_', '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\\._?[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*')";
const SYSCTL_MESSAGE: &str = "must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$";

pub(super) fn validate_pod_spec_rest(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    validate_dns_config(spec, errs);
    for (i, alias) in spec.host_aliases.iter().flatten().enumerate() {
        let path = format!("spec.hostAliases[{i}]");
        ip(&alias.ip, &format!("{path}.ip"), errs);
        for (j, hostname) in alias.hostnames.iter().flatten().enumerate() {
            for msg in dns1123_subdomain(hostname) {
                errs.push(FieldError::invalid(
                    format!("{path}.hostnames[{j}]"),
                    hostname.as_str(),
                    msg,
                ));
            }
        }
    }
    validate_topology_spread(spec, errs);
    if let Some(os) = &spec.os {
        if os.name.is_empty() {
            errs.push(FieldError::required("spec.os.name", "cannot be empty"));
        } else if os.name != "linux" && os.name != "windows" {
            errs.push(FieldError::not_supported(
                "spec.os",
                os.name.as_str(),
                &["linux", "windows"],
            ));
        }
    }
    for (i, gate) in spec.readiness_gates.iter().flatten().enumerate() {
        for msg in qualified_name(&gate.condition_type) {
            errs.push(FieldError::invalid(
                format!("spec.readinessGates[{i}].conditionType"),
                gate.condition_type.as_str(),
                msg,
            ));
        }
    }
    if let Some(context) = &spec.security_context {
        let mut names = HashSet::new();
        for (i, sysctl) in context.sysctls.iter().flatten().enumerate() {
            let path = format!("spec.securityContext.sysctls[{i}].name");
            if sysctl.name.is_empty() {
                errs.push(FieldError::required(path, ""));
            } else if !valid_sysctl_name(&sysctl.name) {
                errs.push(FieldError::invalid(
                    path,
                    sysctl.name.as_str(),
                    SYSCTL_MESSAGE,
                ));
            } else if names.contains(sysctl.name.as_str()) {
                errs.push(FieldError::duplicate(path, sysctl.name.as_str()));
            }
            names.insert(sysctl.name.as_str());
        }
        if let Some(profile) = &context.seccomp_profile {
            validate_seccomp_profile(profile, "spec.securityContext.seccompProfile", errs);
        }
    }
}

/// `validatePodDNSConfig` beyond the `dnsPolicy: None` requirements.
fn validate_dns_config(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let Some(config) = &spec.dns_config else {
        return;
    };
    let nameservers = config.nameservers.as_deref().unwrap_or_default();
    if nameservers.is_empty() && spec.dns_policy.as_deref() == Some("None") {
        // Reported as required (see `validate_spec`); upstream stops there.
        return;
    }
    if nameservers.len() > 3 {
        errs.push(FieldError::invalid(
            "spec.dnsConfig.nameservers",
            BadValue::List(nameservers.to_vec()),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, server) in nameservers.iter().enumerate() {
        ip(server, &format!("spec.dnsConfig.nameservers[{i}]"), errs);
    }
    let searches = config.searches.as_deref().unwrap_or_default();
    if searches.len() > 32 {
        errs.push(FieldError::invalid(
            "spec.dnsConfig.searches",
            BadValue::List(searches.to_vec()),
            "must not have more than 32 search paths",
        ));
    }
    if searches.join(" ").len() > 2048 {
        errs.push(FieldError::invalid(
            "spec.dnsConfig.searches",
            BadValue::List(searches.to_vec()),
            "must not have more than 2048 characters (including spaces) in the search list",
        ));
    }
    for (i, search) in searches.iter().enumerate() {
        if search == "." {
            continue;
        }
        let trimmed = search.strip_suffix('.').unwrap_or(search);
        let path = format!("spec.dnsConfig.searches[{i}]");
        if trimmed.len() > 253 {
            errs.push(FieldError::invalid(
                &path,
                trimmed,
                "must be no more than 253 characters",
            ));
        }
        if !trimmed.split('.').all(search_label) {
            errs.push(FieldError::invalid(&path, trimmed, SEARCH_MESSAGE));
        }
    }
    for (i, option) in config.options.iter().flatten().enumerate() {
        if option.name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(
                format!("spec.dnsConfig.options[{i}]"),
                "must not be empty",
            ));
        }
    }
}

/// `_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?`.
fn search_label(label: &str) -> bool {
    let label = label.strip_prefix('_').unwrap_or(label);
    sysctl_segment(label)
}

/// `[a-z0-9]([-_a-z0-9]*[a-z0-9])?`.
fn sysctl_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            edge(first) && edge(last) && bytes.iter().all(|b| edge(b) || matches!(b, b'-' | b'_'))
        }
        _ => false,
    }
}

/// `IsValidSysctlName`: segments separated by `.` or `/`.
fn valid_sysctl_name(name: &str) -> bool {
    name.len() <= 253 && name.split(['.', '/']).all(sysctl_segment)
}

/// `IsValidIPForLegacyField`: an IP address; IPv4 without leading zeros.
fn ip(value: &str, path: &str, errs: &mut Vec<FieldError>) {
    if value.parse::<IpAddr>().is_ok() {
        return;
    }
    let sloppy_v4 = value.split('.').count() == 4
        && value
            .split('.')
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    let leading_zero = value.split('.').any(|p| p.len() > 1 && p.starts_with('0'));
    let detail = if sloppy_v4 && leading_zero {
        "must not have leading 0s"
    } else {
        IP_MESSAGE
    };
    errs.push(FieldError::invalid(path, value, detail));
}

/// `validateTopologySpreadConstraints`.
fn validate_topology_spread(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let constraints = spec
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    for (i, constraint) in constraints.iter().enumerate() {
        let path = format!("spec.topologySpreadConstraints[{i}]");
        if constraint.max_skew <= 0 {
            errs.push(FieldError::invalid(
                format!("{path}.maxSkew"),
                constraint.max_skew,
                "must be greater than zero",
            ));
        }
        if constraint.topology_key.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.topologyKey"),
                "can not be empty",
            ));
        } else {
            for msg in qualified_name(&constraint.topology_key) {
                errs.push(FieldError::invalid(
                    format!("{path}.topologyKey"),
                    constraint.topology_key.as_str(),
                    msg,
                ));
            }
        }
        let when = constraint.when_unsatisfiable.as_str();
        if when != "DoNotSchedule" && when != "ScheduleAnyway" {
            errs.push(FieldError::not_supported(
                format!("{path}.whenUnsatisfiable"),
                when,
                &["DoNotSchedule", "ScheduleAnyway"],
            ));
        }
        let repeated = constraints[i + 1..].iter().any(|other| {
            other.topology_key == constraint.topology_key
                && other.when_unsatisfiable == constraint.when_unsatisfiable
        });
        if repeated {
            errs.push(FieldError::duplicate(
                format!("{path}.{{topologyKey, whenUnsatisfiable}}"),
                format!("{{{}, {when}}}", constraint.topology_key).as_str(),
            ));
        }
        if let Some(min_domains) = constraint.min_domains {
            if min_domains <= 0 {
                errs.push(FieldError::invalid(
                    format!("{path}.minDomains"),
                    min_domains,
                    "must be greater than 0",
                ));
            } else if when != "DoNotSchedule" {
                errs.push(FieldError::invalid(
                    format!("{path}.minDomains"),
                    min_domains,
                    "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                ));
            }
        }
    }
}

/// `validateSeccompProfileField`.
pub(super) fn validate_seccomp_profile(
    profile: &SeccompProfile,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    const TYPES: [&str; 3] = ["Localhost", "RuntimeDefault", "Unconfined"];
    let kind = profile.type_.as_str();
    if !TYPES.contains(&kind) {
        errs.push(FieldError::not_supported(
            format!("{path}.type"),
            kind,
            &TYPES,
        ));
    }
    let local_path = format!("{path}.localhostProfile");
    match (kind, profile.localhost_profile.as_deref()) {
        ("Localhost", None) => errs.push(FieldError::required(
            local_path,
            "must be set when seccomp type is Localhost",
        )),
        ("Localhost", Some(local)) => local_descending_path(local, &local_path, errs),
        (_, Some(_)) => errs.push(FieldError::invalid(
            local_path,
            "",
            "can only be set when seccomp type is Localhost",
        )),
        (_, None) => {}
    }
}
