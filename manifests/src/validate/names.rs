//! Name and value syntax from `apimachinery/pkg/util/validation`: RFC 1123 labels and
//! subdomains, qualified names (label keys, annotation keys, finalizers, resource names),
//! label values, IANA service names, config keys, environment variable names and IDs.

use super::{DNS1123_LABEL_MESSAGE, DNS1123_SUBDOMAIN_MESSAGE};

const QUALIFIED_NAME_MESSAGE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MESSAGE: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
/// `InclusiveRangeError(0, math.MaxInt32)`, for user and group IDs.
pub(super) const ID_RANGE_MESSAGE: &str = "must be between 0 and 2147483647, inclusive";
/// The message of `IsRelaxedEnvVarName`.
pub(super) const RELAXED_ENV_NAME_MESSAGE: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";

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
pub(super) fn iana_svc_name(port: &str) -> Vec<&'static str> {
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

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_shaped(value: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    let bytes = value.as_bytes();
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

/// `IsQualifiedName` (as label keys are checked, the messages say "label key" and
/// "bytes"): an optional DNS subdomain prefix and `/`, then a name of at most 63 bytes. The messages for `value`, empty when it is valid.
#[must_use]
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                msgs.push("prefix part must be non-empty".to_owned());
            } else {
                // Lengths are counted in bytes here, and said so (unlike IsDNS1123Subdomain).
                msgs.extend(
                    dns1123_subdomain(prefix).into_iter().map(|m| {
                        format!("prefix part {}", m.replace("253 characters", "253 bytes"))
                    }),
                );
            }
            *name
        }
        _ => {
            msgs.push(format!(
                "a valid label key {QUALIFIED_NAME_MESSAGE} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return msgs;
        }
    };
    if name.is_empty() {
        msgs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        msgs.push("name part must be no more than 63 bytes".to_owned());
    }
    if !is_qualified_shaped(name) {
        msgs.push(format!("name part {QUALIFIED_NAME_MESSAGE}"));
    }
    msgs
}

/// `IsValidLabelValue`: empty, or a qualified-name-shaped value of at most 63 characters.
#[must_use]
pub fn label_value(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > 63 {
        msgs.push("must be no more than 63 bytes".to_owned());
    }
    if !value.is_empty() && !is_qualified_shaped(value) {
        msgs.push(LABEL_VALUE_MESSAGE.to_owned());
    }
    msgs
}

/// `IsConfigMapKey`: the key of a config map or secret entry.
pub(super) fn config_key(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > 253 {
        msgs.push("must be no more than 253 characters".to_owned());
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        msgs.push(CONFIG_KEY_MESSAGE.to_owned());
    }
    match value {
        "." => msgs.push("must not be '.'".to_owned()),
        ".." => msgs.push("must not be '..'".to_owned()),
        v if v.starts_with("..") => msgs.push("must not start with '..'".to_owned()),
        _ => {}
    }
    msgs
}

/// `IsRelaxedEnvVarName`: printable ASCII other than `=` (relaxed validation is on by
/// default since 1.32).
pub(super) fn relaxed_env_var_name(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.is_empty() {
        msgs.push("environment variable name must be non-empty".to_owned());
    }
    if value.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        msgs.push(RELAXED_ENV_NAME_MESSAGE.to_owned());
    }
    msgs
}

/// `IsValidUserID` and `IsValidGroupID`: 0 to 2^31-1.
pub(super) fn id_in_range(id: i64) -> bool {
    (0..=i64::from(i32::MAX)).contains(&id)
}
