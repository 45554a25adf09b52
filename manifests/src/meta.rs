//! Validation of `metadata.labels` and `metadata.annotations` as upstream's
//! `ValidateObjectMeta` does it (`apimachinery/pkg/api/validation/objectmeta.go`,
//! `apimachinery/pkg/util/validation`): qualified-name keys, label values, and the
//! 256 KiB limit on all annotations together (`ValidateAnnotationsSize`), which
//! keeps a pod with a 10 MB annotation from being run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::{FieldError, dns1123_subdomain};

/// Upstream's `TotalAnnotationSizeLimitB`: keys and values of all annotations
/// together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
const LABEL_VALUE_MAX_LENGTH: usize = 63;
const QUALIFIED_NAME_MESSAGE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_EXAMPLES: &str = "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Checks label keys and values, annotation keys, and the annotations' total size.
pub fn validate_labels_and_annotations(meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    for (key, value) in meta.labels.iter().flatten() {
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid("metadata.labels", key.as_str(), msg));
        }
        for msg in label_value(value) {
            errs.push(FieldError::invalid("metadata.labels", value.as_str(), msg));
        }
    }
    let mut total = 0usize;
    for (key, value) in meta.annotations.iter().flatten() {
        // Upstream: a qualified name, except that case does not matter.
        for msg in qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                key.as_str(),
                msg,
            ));
        }
        total = total.saturating_add(key.len() + value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(
            "metadata.annotations",
            TOTAL_ANNOTATION_SIZE_LIMIT,
        ));
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first)
                && alnum(last)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Upstream `IsQualifiedName`: `[prefix/]name`, the prefix a DNS subdomain.
fn qualified_name(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                msgs.push("prefix part must be non-empty".to_owned());
            } else {
                msgs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            msgs.push(format!(
                "a qualified name {QUALIFIED_NAME_MESSAGE} {QUALIFIED_NAME_EXAMPLES} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return msgs;
        }
    };
    if name.is_empty() {
        msgs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        msgs.push(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX_LENGTH} characters"
        ));
    }
    if !name.is_empty() && !is_qualified_name_part(name) {
        msgs.push(format!(
            "name part {QUALIFIED_NAME_MESSAGE} {QUALIFIED_NAME_EXAMPLES}"
        ));
    }
    msgs
}

/// Upstream `IsValidLabelValue`.
fn label_value(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        msgs.push(format!(
            "must be no more than {LABEL_VALUE_MAX_LENGTH} characters"
        ));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        msgs.push(LABEL_VALUE_MESSAGE.to_owned());
    }
    msgs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn errors(labels: &[(&str, &str)], annotations: &[(&str, String)]) -> Vec<String> {
        let map =
            |pairs: Vec<(String, String)>| Some(pairs.into_iter().collect::<BTreeMap<_, _>>());
        let meta = ObjectMeta {
            labels: map(labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()),
            annotations: map(annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()),
            ..ObjectMeta::default()
        };
        let mut errs = Vec::new();
        validate_labels_and_annotations(&meta, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn annotations_may_total_256_kib() {
        let at_limit = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1);
        assert_eq!(errors(&[], &[("a", at_limit)]), Vec::<String>::new());
        let over = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        assert_eq!(
            errors(&[], &[("a", over)]),
            ["metadata.annotations: Too long: must have at most 262144 bytes"]
        );
        // Across several annotations, keys counted.
        let half = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT / 2);
        assert_eq!(errors(&[], &[("a", half.clone()), ("b", half)]).len(), 1);
        let ten_mb = "x".repeat(10 << 20);
        assert_eq!(errors(&[], &[("big", ten_mb)]).len(), 1);
    }

    #[test]
    fn keys_and_values_as_upstream() {
        assert_eq!(
            errors(
                &[("app", "web"), ("example.com/tier", "a_b.c-1"), ("e", "")],
                &[("Example.COM/Mixed_Case", String::new())]
            ),
            Vec::<String>::new()
        );
        let errs = errors(
            &[("bad key", "v"), ("k", "-bad"), ("k2", &"v".repeat(64))],
            &[("/x", String::new()), ("a/b/c", String::new())],
        );
        assert_eq!(
            errs,
            [
                "metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned().as_str(),
                &format!("metadata.labels: Invalid value: \"{}\": must be no more than 63 characters", "v".repeat(64)),
                "metadata.annotations: Invalid value: \"/x\": prefix part must be non-empty",
                "metadata.annotations: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
            ]
        );
    }
}
