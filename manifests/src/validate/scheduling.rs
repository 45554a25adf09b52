//! Where a pod may run and as whom: node selector, affinity, tolerations
//! (`ValidateNodeSelector`, `validateAffinity`, `ValidateTolerations`), the pod's hostname
//! and subdomain, and the pod security context's user and group IDs.

use k8s_openapi::api::core::v1::{
    Affinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodAffinityTerm,
    PodSecurityContext, PodSpec, Toleration, WeightedPodAffinityTerm,
};

use super::meta::validate_labels;
use super::names::{ID_RANGE_MESSAGE, dns1123_label, id_in_range, label_value, qualified_name};
use super::{BadValue, FieldError};

pub(super) fn validate_scheduling(spec: &PodSpec, errs: &mut Vec<FieldError>) {
    if let Some(context) = &spec.security_context {
        validate_pod_security_context(context, errs);
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            for msg in dns1123_label(value) {
                errs.push(FieldError::invalid(format!("spec.{field}"), value, msg));
            }
        }
    }
    if let Some(selector) = &spec.node_selector {
        validate_labels(selector, "spec.nodeSelector", errs);
    }
    if let Some(affinity) = &spec.affinity {
        validate_affinity(affinity, errs);
    }
    for (i, toleration) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(toleration, &format!("spec.tolerations[{i}]"), errs);
    }
}

/// `validatePodSpecSecurityContext`: the IDs are 0 to 2^31-1.
fn validate_pod_security_context(context: &PodSecurityContext, errs: &mut Vec<FieldError>) {
    let path = "spec.securityContext";
    for (field, id) in [
        ("fsGroup", context.fs_group),
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
    for (i, gid) in context.supplemental_groups.iter().flatten().enumerate() {
        if !id_in_range(*gid) {
            errs.push(FieldError::invalid(
                format!("{path}.supplementalGroups[{i}]"),
                *gid,
                ID_RANGE_MESSAGE,
            ));
        }
    }
}

fn validate_affinity(affinity: &Affinity, errs: &mut Vec<FieldError>) {
    if let Some(node) = &affinity.node_affinity {
        let path = "spec.affinity.nodeAffinity";
        if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
            validate_node_selector(
                required,
                &format!("{path}.requiredDuringSchedulingIgnoredDuringExecution"),
                errs,
            );
        }
        let preferred = node
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten();
        for (i, term) in preferred.enumerate() {
            let term_path = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            check_weight(term.weight, &term_path, errs);
            validate_node_selector_term(&term.preference, &format!("{term_path}.preference"), errs);
        }
    }
    let pod_affinities = [
        (
            "podAffinity",
            affinity.pod_affinity.as_ref().map(|a| {
                (
                    &a.required_during_scheduling_ignored_during_execution,
                    &a.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
        (
            "podAntiAffinity",
            affinity.pod_anti_affinity.as_ref().map(|a| {
                (
                    &a.required_during_scheduling_ignored_during_execution,
                    &a.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
    ];
    for (field, terms) in pod_affinities {
        let Some((required, preferred)) = terms else {
            continue;
        };
        let path = format!("spec.affinity.{field}");
        for (i, term) in required.iter().flatten().enumerate() {
            validate_pod_affinity_term(
                term,
                &format!("{path}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                errs,
            );
        }
        let preferred: &[WeightedPodAffinityTerm] = preferred.as_deref().unwrap_or_default();
        for (i, term) in preferred.iter().enumerate() {
            let term_path = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            check_weight(term.weight, &term_path, errs);
            validate_pod_affinity_term(
                &term.pod_affinity_term,
                &format!("{term_path}.podAffinityTerm"),
                errs,
            );
        }
    }
}

fn check_weight(weight: i32, term_path: &str, errs: &mut Vec<FieldError>) {
    if !(1..=100).contains(&weight) {
        errs.push(FieldError::invalid(
            format!("{term_path}.weight"),
            weight,
            "must be in the range 1-100",
        ));
    }
}

/// `ValidateNodeSelector`.
fn validate_node_selector(selector: &NodeSelector, path: &str, errs: &mut Vec<FieldError>) {
    if selector.node_selector_terms.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.nodeSelectorTerms"),
            "must have at least one node selector term",
        ));
    }
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        validate_node_selector_term(term, &format!("{path}.nodeSelectorTerms[{i}]"), errs);
    }
}

/// `ValidateNodeSelectorTerm`.
fn validate_node_selector_term(term: &NodeSelectorTerm, path: &str, errs: &mut Vec<FieldError>) {
    for (j, requirement) in term.match_expressions.iter().flatten().enumerate() {
        validate_requirement(requirement, &format!("{path}.matchExpressions[{j}]"), errs);
    }
    for (j, requirement) in term.match_fields.iter().flatten().enumerate() {
        let req_path = format!("{path}.matchFields[{j}]");
        if requirement.key != "metadata.name" {
            errs.push(FieldError::invalid(
                format!("{req_path}.key"),
                requirement.key.as_str(),
                "not a valid field selector key",
            ));
        }
        if requirement.operator != "In" && requirement.operator != "NotIn" {
            errs.push(FieldError::invalid(
                format!("{req_path}.operator"),
                requirement.operator.as_str(),
                "not a valid selector operator",
            ));
        } else if requirement.values.as_ref().is_none_or(|v| v.len() != 1) {
            errs.push(FieldError::required(
                format!("{req_path}.values"),
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            ));
        }
    }
}

/// `ValidateNodeSelectorRequirement`.
fn validate_requirement(
    requirement: &NodeSelectorRequirement,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
            format!("{path}.values"),
            "must be specified when `operator` is 'In' or 'NotIn'",
        )),
        "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
            format!("{path}.values"),
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        )),
        "Gt" | "Lt" if values.len() != 1 => errs.push(FieldError::required(
            format!("{path}.values"),
            "must be specified single value when `operator` is 'Lt' or 'Gt'",
        )),
        "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
        other => errs.push(FieldError::invalid(
            format!("{path}.operator"),
            other,
            "not a valid selector operator",
        )),
    }
    for msg in qualified_name(&requirement.key) {
        errs.push(FieldError::invalid(
            format!("{path}.key"),
            requirement.key.as_str(),
            msg,
        ));
    }
}

/// `validatePodAffinityTerm`: a topology key is required and is a label key.
fn validate_pod_affinity_term(term: &PodAffinityTerm, path: &str, errs: &mut Vec<FieldError>) {
    let key_path = format!("{path}.topologyKey");
    if term.topology_key.is_empty() {
        errs.push(FieldError::required(&key_path, "can not be empty"));
    }
    for msg in qualified_name(&term.topology_key) {
        errs.push(FieldError::invalid(
            &key_path,
            term.topology_key.as_str(),
            msg,
        ));
    }
    for namespace in term.namespaces.iter().flatten() {
        for msg in dns1123_label(namespace) {
            errs.push(FieldError::invalid(
                format!("{path}.namespace"),
                namespace.as_str(),
                msg,
            ));
        }
    }
}

/// One entry of `ValidateTolerations`.
fn validate_toleration(toleration: &Toleration, path: &str, errs: &mut Vec<FieldError>) {
    let key = toleration.key.as_deref().unwrap_or("");
    let operator = toleration.operator.as_deref().unwrap_or("");
    let value = toleration.value.as_deref().unwrap_or("");
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !key.is_empty() {
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid(format!("{path}.key"), key, msg));
        }
    }
    if key.is_empty() && operator != "Exists" {
        errs.push(FieldError::invalid(
            format!("{path}.operator"),
            operator,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        ));
    }
    if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
        errs.push(FieldError::invalid(
            format!("{path}.effect"),
            effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    match operator {
        "Equal" | "" => {
            let msgs = label_value(value);
            if !msgs.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.operator"),
                    value,
                    msgs.join(";"),
                ));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.operator"),
                    BadValue::from(value),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.operator"),
            other,
            &["Equal", "Exists"],
        )),
    }
    if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        errs.push(FieldError::not_supported(
            format!("{path}.effect"),
            effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        ));
    }
}
