//! What a pod's attachment gives plugins besides their config: the `CNI_ARGS`
//! containerd sets, the capability arguments (`portMappings`), and the checks that
//! refuse what plugins (libcni) would reject.

use serde_json::{Map, Value, json};

use super::{CniError, CniRequest, MAX_IFNAME_LEN};
use crate::podnet::PortMapping;

/// libcni's `CapabilityArgs` for a pod: its hostPorts as `portMappings`, in go-cni's
/// form as containerd fills it (`protocol` lowercase, `hostIP` only when set); nothing
/// when there are none, as containerd then passes no capability.
pub(super) fn capability_args(ports: &[PortMapping]) -> Map<String, Value> {
    let mut caps = Map::new();
    if !ports.is_empty() {
        let list: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol.nft(),
                });
                if let (Some(ip), Some(obj)) = (p.host_ip, m.as_object_mut()) {
                    obj.insert("hostIP".into(), Value::String(ip.to_string()));
                }
                m
            })
            .collect();
        caps.insert("portMappings".into(), Value::Array(list));
    }
    caps
}

/// The `CNI_ARGS` pairs containerd sets for a pod.
pub(super) fn cni_args_pairs<'a>(req: &CniRequest<'a>) -> [[&'a str; 2]; 5] {
    [
        ["IgnoreUnknown", "1"],
        ["K8S_POD_NAMESPACE", req.pod_namespace],
        ["K8S_POD_NAME", req.pod_name],
        ["K8S_POD_INFRA_CONTAINER_ID", req.container_id],
        ["K8S_POD_UID", req.pod_uid],
    ]
}

pub(super) fn cni_args_string(req: &CniRequest<'_>) -> String {
    cni_args_pairs(req)
        .iter()
        .map(|[k, v]| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Rejects what plugins would reject (libcni's `ValidateContainerID` and
/// `ValidateInterfaceName`), and values that would corrupt `CNI_ARGS`.
pub(super) fn validate_request(req: &CniRequest<'_>) -> Result<(), CniError> {
    let invalid = |field, value: &str, reason| CniError::InvalidRequest {
        field,
        value: value.to_string(),
        reason,
    };
    validate_name(req.container_id).map_err(|r| invalid("container_id", req.container_id, r))?;
    validate_ifname(req.ifname).map_err(|r| invalid("ifname", req.ifname, r))?;
    for (field, value) in [
        ("pod_namespace", req.pod_namespace),
        ("pod_name", req.pod_name),
        ("pod_uid", req.pod_uid),
    ] {
        if value.contains(';') {
            return Err(invalid(
                field,
                value,
                "contains ';', which CNI_ARGS cannot carry",
            ));
        }
    }
    Ok(())
}

/// libcni's rule for network names and container IDs: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub(super) fn validate_name(s: &str) -> Result<(), &'static str> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err("is empty"),
        Some(c) if !c.is_ascii_alphanumeric() => Err("must start with a letter or digit"),
        Some(_) if chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => Ok(()),
        Some(_) => Err("may contain only letters, digits, '_', '.' and '-'"),
    }
}

/// libcni's `ValidateInterfaceName`, which is the kernel's rule.
pub(super) fn validate_ifname(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("is empty")
    } else if s.len() > MAX_IFNAME_LEN {
        Err("is longer than 15 bytes")
    } else if s == "." || s == ".." {
        Err("is not a valid interface name")
    } else if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Err("contains '/', ':' or whitespace")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use super::super::tests::req;

    #[test]
    fn cni_args_match_containerd() {
        let ns = PathBuf::from("/run/netns/x");
        assert_eq!(
            cni_args_string(&req(&ns)),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0b2e-11"
        );
    }

    #[test]
    fn requests_plugins_would_reject_are_refused() {
        let ns = PathBuf::from("/run/netns/x");
        assert!(validate_request(&req(&ns)).is_ok());
        for (mutate, field) in [
            (
                (|r: &mut CniRequest<'_>| r.container_id = "-x") as fn(&mut CniRequest<'_>),
                "container_id",
            ),
            (|r| r.container_id = "a/b", "container_id"),
            (|r| r.ifname = "eth0:1", "ifname"),
            (|r| r.ifname = "abcdefghijklmnop", "ifname"),
            (|r| r.pod_name = "a;K8S_POD_UID=x", "pod_name"),
        ] {
            let mut r = req(&ns);
            mutate(&mut r);
            let err = validate_request(&r).expect_err(field);
            assert!(
                matches!(&err, CniError::InvalidRequest { field: f, .. } if *f == field),
                "{err}"
            );
        }
    }
}
