//! Pod admission as upstream's predicate admit handler
//! (`pkg/kubelet/lifecycle/predicate.go`): a new pod is refused when the node can't
//! hold it (`maxPods`, allocatable cpu, memory, ephemeral storage, huge pages and
//! extended resources it has, against the requests of the pods already admitted),
//! when its node selector or required node affinity doesn't match the node's labels,
//! when it is bound to another node or wants a host port another pod holds, when (for
//! pods from the apiserver) it doesn't tolerate a `NoExecute` taint, or when its OS
//! isn't this node's.
//! Only the first failure is reported, with upstream's reason and message:
//! `OutOfcpu` / `Node didn't have enough resource: cpu, requested: …, used: …,
//! capacity: …`, `NodeAffinity` / `Predicate NodeAffinity failed`,
//! `TaintToleration` / `Predicate TaintToleration failed`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod, Taint, Toleration};
use nodelet_manifests::{Quantity, is_static_pod};

/// What admission knows about the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmitNode {
    /// The node's name (`matchFields` on `metadata.name`).
    pub name: String,
    /// Allocatable resources (`pods` is `maxPods`).
    pub allocatable: BTreeMap<String, Quantity>,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// The node's taints.
    pub taints: Vec<Taint>,
}

impl AdmitNode {
    /// The node as the agent describes it (`kubernetes.io/hostname`, `os`, `arch`
    /// labels; no taints), with `allocatable` as the node status lists it.
    pub fn from_node(node: &k8s_openapi::api::core::v1::Node) -> Self {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|a| {
                a.iter()
                    .filter_map(|(k, q)| Some((k.clone(), Quantity::parse(&q.0).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        }
    }
}

/// Why a pod was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status and event reason (`OutOfcpu`, `NodeAffinity`, …).
    pub reason: String,
    /// The message.
    pub message: String,
}

/// An amount in the unit upstream's message uses: milli-cores for cpu, whole
/// units (bytes, pods, devices) for everything else.
fn amount(resource: &str, q: Quantity) -> i64 {
    let v = if resource == "cpu" {
        q.milli_value_ceil()
    } else {
        q.nanos().div_euclid(1_000_000_000) + i128::from(q.nanos().rem_euclid(1_000_000_000) != 0)
    };
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn requests(pod: &Pod) -> BTreeMap<String, Quantity> {
    pod.spec
        .as_ref()
        .map(nodelet_cgroups::values::pod_requests)
        .unwrap_or_default()
}

/// Whether `resource` is one the scheduler treats as extended (neither a native
/// resource nor in the `kubernetes.io/` namespace, except `requests.`/hugepages).
fn is_extended(resource: &str) -> bool {
    !matches!(resource, "cpu" | "memory" | "ephemeral-storage" | "pods")
        && !resource.starts_with("hugepages-")
        && (resource.contains('/') && !resource.starts_with("kubernetes.io/"))
}

/// Checks `pod` against `node` with `others` (the pods already admitted and not
/// finished) on it.
///
/// # Errors
/// The first reason the pod can't run here.
pub fn admit(node: &AdmitNode, pod: &Pod, others: &[&Pod]) -> Result<(), Rejection> {
    fits(node, pod, others)?;
    if !matches_node(node, pod) {
        return Err(predicate("NodeAffinity"));
    }
    let spec = pod.spec.as_ref();
    if spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty() && n != node.name)
    {
        return Err(predicate("NodeName"));
    }
    if host_ports_conflict(pod, others) {
        return Err(predicate("NodePorts"));
    }
    if !is_static_pod(pod) && untolerated_no_execute(&node.taints, pod) {
        return Err(predicate("TaintToleration"));
    }
    // Upstream's OS checks, after the general predicates.
    let os_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"));
    if os_label.is_some_and(|os| os != "linux") {
        return Err(Rejection {
            reason: "PodOSSelectorNodeLabelDoesNotMatch".to_owned(),
            message: "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
                .to_owned(),
        });
    }
    if spec
        .and_then(|s| s.os.as_ref())
        .is_some_and(|os| os.name != "linux")
    {
        return Err(Rejection {
            reason: "PodOSNotSupported".to_owned(),
            message: "Failed to admit pod as the OS field doesn't match node OS".to_owned(),
        });
    }
    Ok(())
}

/// The `(protocol, hostIP, hostPort)` a pod's containers ask for.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
                port,
            ))
        })
        .collect()
}

/// Upstream's `NodePorts` predicate: a host port is taken when another pod uses
/// it with the same protocol on the same host IP, or either side binds all IPs.
fn host_ports_conflict(pod: &Pod, others: &[&Pod]) -> bool {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return false;
    }
    let used: Vec<_> = others.iter().flat_map(|p| host_ports(p)).collect();
    wanted.iter().any(|(proto, ip, port)| {
        used.iter().any(|(uproto, uip, uport)| {
            uport == port && uproto == proto && (ip == uip || ip == "0.0.0.0" || uip == "0.0.0.0")
        })
    })
}

fn predicate(name: &str) -> Rejection {
    Rejection {
        reason: name.to_owned(),
        message: format!("Predicate {name} failed"),
    }
}

fn insufficient(resource: &str, requested: i64, used: i64, capacity: i64) -> Rejection {
    Rejection {
        reason: format!("OutOf{resource}"),
        message: format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    }
}

/// Upstream's `noderesources.Fits`: the pod count first, then cpu, memory,
/// ephemeral storage and the scalar resources, in that order.
fn fits(node: &AdmitNode, pod: &Pod, others: &[&Pod]) -> Result<(), Rejection> {
    if let Some(max) = node.allocatable.get("pods") {
        let allowed = amount("pods", *max);
        let used = i64::try_from(others.len()).unwrap_or(i64::MAX);
        if used + 1 > allowed {
            return Err(insufficient("pods", 1, used, allowed));
        }
    }
    let wanted = requests(pod);
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for other in others {
        for (name, q) in requests(other) {
            *used.entry(name.clone()).or_default() += amount(&name, q);
        }
    }
    let mut order: Vec<&String> = wanted.keys().collect();
    let rank = |r: &str| match r {
        "cpu" => 0,
        "memory" => 1,
        "ephemeral-storage" => 2,
        _ => 3,
    };
    order.sort_by_key(|r| (rank(r), r.as_str()));
    for resource in order {
        let requested = amount(resource, wanted[resource]);
        if requested == 0 {
            continue;
        }
        let capacity = match node.allocatable.get(resource) {
            Some(q) => amount(resource, *q),
            // Extended resources the node doesn't know are the cluster's, not ours
            // (upstream's `removeMissingExtendedResources`).
            None if is_extended(resource) => continue,
            None => 0,
        };
        let in_use = used.get(resource).copied().unwrap_or(0);
        if requested > capacity.saturating_sub(in_use) {
            return Err(insufficient(resource, requested, in_use, capacity));
        }
    }
    Ok(())
}

/// `nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution` node affinity
/// (upstream's `GetRequiredNodeAffinity(pod).Match(node)`).
fn matches_node(node: &AdmitNode, pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(selector) = &spec.node_selector
        && !selector
            .iter()
            .all(|(k, v)| node.labels.get(k).is_some_and(|l| l == v))
    {
        return false;
    }
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    // Terms are ORed; an empty term matches nothing.
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| {
                let value = (r.key == "metadata.name").then_some(node.name.as_str());
                requirement_matches(r, value)
            })
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a `NoExecute` taint of the node is not tolerated by the pod.
fn untolerated_no_execute(taints: &[Taint], pod: &Pod) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Upstream's `Toleration.ToleratesTaint`.
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect = tol.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node() -> AdmitNode {
        let q = |s: &str| Quantity::parse(s).unwrap();
        AdmitNode {
            name: "n1".into(),
            allocatable: [
                ("cpu".to_owned(), q("2")),
                ("memory".to_owned(), q("1Gi")),
                ("pods".to_owned(), q("3")),
                ("ephemeral-storage".to_owned(), q("10Gi")),
            ]
            .into_iter()
            .collect(),
            labels: [
                ("kubernetes.io/hostname".to_owned(), "n1".to_owned()),
                ("zone".to_owned(), "a".to_owned()),
                ("cores".to_owned(), "8".to_owned()),
            ]
            .into_iter()
            .collect(),
            taints: vec![],
        }
    }

    fn pod(json: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"kubernetes.io/config.source": "api"}},
            "spec": json
        }))
        .unwrap();
        p.metadata.uid = Some("u".into());
        p
    }

    fn requesting(cpu: &str, memory: &str) -> Pod {
        pod(
            serde_json::json!({"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}),
        )
    }

    #[test]
    fn resources_are_checked_against_what_admitted_pods_request() {
        let n = node();
        let a = requesting("1500m", "100Mi");
        assert_eq!(admit(&n, &a, &[]), Ok(()));
        let b = requesting("600m", "100Mi");
        assert_eq!(
            admit(&n, &b, &[&a]),
            Err(Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000".into()
            })
        );
        let c = requesting("100m", "2Gi");
        let r = admit(&n, &c, &[&a]).unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: memory, requested: 2147483648, used: 104857600, capacity: 1073741824"
        );
        // Extended resources the node doesn't have are the cluster's business.
        let gpu = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"example.com/gpu": "1"}, "limits": {"example.com/gpu": "1"}}}]}),
        );
        assert_eq!(admit(&n, &gpu, &[]), Ok(()));
    }

    #[test]
    fn max_pods_comes_first() {
        let n = node();
        let p = requesting("10", "10Gi");
        let others = [&p, &p, &p];
        let r = admit(&n, &requesting("1m", "1"), &others).unwrap_err();
        assert_eq!(r.reason, "OutOfpods");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
        );
    }

    #[test]
    fn node_selector_and_required_affinity_must_match() {
        let n = node();
        assert_eq!(
            admit(
                &n,
                &pod(serde_json::json!({"containers": [], "nodeSelector": {"zone": "a"}})),
                &[]
            ),
            Ok(())
        );
        let r = admit(
            &n,
            &pod(serde_json::json!({"containers": [], "nodeSelector": {"zone": "b"}})),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            ("NodeAffinity", "Predicate NodeAffinity failed")
        );
        let affinity = |expr: serde_json::Value| {
            pod(
                serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [expr]}
                ]}}}}),
            )
        };
        for (expr, ok) in [
            (
                serde_json::json!({"key": "zone", "operator": "In", "values": ["a", "b"]}),
                true,
            ),
            (
                serde_json::json!({"key": "zone", "operator": "NotIn", "values": ["a"]}),
                false,
            ),
            (
                serde_json::json!({"key": "gpu", "operator": "DoesNotExist"}),
                true,
            ),
            (
                serde_json::json!({"key": "zone", "operator": "Exists"}),
                true,
            ),
            (
                serde_json::json!({"key": "cores", "operator": "Gt", "values": ["4"]}),
                true,
            ),
            (
                serde_json::json!({"key": "cores", "operator": "Lt", "values": ["4"]}),
                false,
            ),
        ] {
            assert_eq!(
                admit(&n, &affinity(expr.clone()), &[]).is_ok(),
                ok,
                "{expr}"
            );
        }
        let by_name = pod(
            serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
            ]}}}}),
        );
        assert_eq!(admit(&n, &by_name, &[]), Ok(()));
    }

    #[test]
    fn host_ports_node_name_and_os_are_checked() {
        let n = node();
        let web = |ip: Option<&str>| {
            let mut port = serde_json::json!({"containerPort": 80, "hostPort": 8080});
            if let Some(ip) = ip {
                port["hostIP"] = ip.into();
            }
            pod(serde_json::json!({"containers": [{"name": "c", "image": "i", "ports": [port]}]}))
        };
        let first = web(None);
        let r = admit(&n, &web(Some("127.0.0.1")), &[&first]).unwrap_err();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            ("NodePorts", "Predicate NodePorts failed")
        );
        let local = web(Some("127.0.0.1"));
        assert_eq!(admit(&n, &web(Some("127.0.0.2")), &[&local]), Ok(()));
        let elsewhere = pod(serde_json::json!({"containers": [], "nodeName": "n2"}));
        assert_eq!(admit(&n, &elsewhere, &[]).unwrap_err().reason, "NodeName");
        let mut windows = pod(serde_json::json!({"containers": [], "os": {"name": "windows"}}));
        assert_eq!(
            admit(&n, &windows, &[]).unwrap_err().reason,
            "PodOSNotSupported"
        );
        windows.spec.as_mut().unwrap().os = None;
        windows.metadata.labels = Some(
            [("kubernetes.io/os".to_owned(), "windows".to_owned())]
                .into_iter()
                .collect(),
        );
        assert_eq!(
            admit(&n, &windows, &[]).unwrap_err().reason,
            "PodOSSelectorNodeLabelDoesNotMatch"
        );
    }

    #[test]
    fn untolerated_no_execute_taints_refuse_api_pods_only() {
        let mut n = node();
        n.taints = vec![
            Taint {
                key: "dedicated".into(),
                value: Some("db".into()),
                effect: "NoExecute".into(),
                ..Default::default()
            },
            Taint {
                key: "other".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
        ];
        let plain = pod(serde_json::json!({"containers": []}));
        let r = admit(&n, &plain, &[]).unwrap_err();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            ("TaintToleration", "Predicate TaintToleration failed")
        );
        let tolerant = pod(serde_json::json!({"containers": [], "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoExecute"}
        ]}));
        assert_eq!(admit(&n, &tolerant, &[]), Ok(()));
        let mut static_pod = plain.clone();
        static_pod
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/config.source".into(), "file".into());
        assert_eq!(admit(&n, &static_pod, &[]), Ok(()));
    }
}
