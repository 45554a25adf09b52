//! Unit tests of the flag parsing and the Node objects registration posts.

use super::*;
use crate::node::status::{NodeInputs, node};

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn node_labels_parse_and_validate_like_upstream() {
    let l = parse_node_labels(&strings(&[
        "role=worker",
        "example.com/tier=",
        "node.kubernetes.io/pool=a",
        "kubelet.kubernetes.io/x=y",
        "topology.kubernetes.io/zone=z1",
    ]))
    .expect("valid");
    assert_eq!(l["role"], "worker");
    assert_eq!(l["example.com/tier"], "");
    assert_eq!(l.len(), 5);
    for bad in [
        "novalue",
        "-bad=x",
        "Upper.Example.com/x=y",
        "k=bad value",
        "k=-x",
        "node-role.kubernetes.io/master=",
        "foo.k8s.io/x=y",
    ] {
        let err = parse_node_labels(&strings(&[bad])).expect_err(bad);
        assert!(
            err.to_string()
                .starts_with(&format!("--node-labels {bad:?}")),
            "{err}"
        );
    }
    let long = format!("k={}", "a".repeat(64));
    assert!(parse_node_labels(&[long]).is_err());
    assert!(
        parse_node_labels(&strings(&["", " "]))
            .expect("empty")
            .is_empty()
    );
}

#[test]
fn taints_parse_and_validate_like_upstream() {
    let t = parse_taints(&strings(&[
        "dedicated=gpu:NoSchedule",
        "example.com/spot:PreferNoSchedule",
        "k=:NoExecute",
    ]))
    .expect("valid");
    assert_eq!(t.len(), 3);
    assert_eq!(
        (
            t[0].key.as_str(),
            t[0].value.as_deref(),
            t[0].effect.as_str()
        ),
        ("dedicated", Some("gpu"), "NoSchedule")
    );
    assert_eq!(t[1].value, None);
    assert_eq!(t[2].value, None);
    for bad in [
        "dedicated=gpu",
        "k=v:Sometimes",
        "k=v=w:NoSchedule",
        "k:v:NoSchedule",
        "bad key=v:NoSchedule",
        "k=bad value:NoSchedule",
    ] {
        let err = parse_taints(&strings(&[bad])).expect_err(bad);
        assert!(err.to_string().contains(bad), "{err}");
    }
    let dup = parse_taints(&strings(&["k=a:NoSchedule", "k=b:NoSchedule"])).expect_err("dup");
    assert!(dup.to_string().contains("duplicated"), "{dup}");
}

fn view_node() -> Node {
    let inputs = NodeInputs {
        name: "n1".to_owned(),
        ip: "10.0.0.5".to_owned(),
        hostname: "host1".to_owned(),
        runtime_version: "1.7.24".to_owned(),
        pod_cidr: Some("10.88.0.0/16".to_owned()),
        taints: vec![Taint {
            key: "node.kubernetes.io/memory-pressure".to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    };
    node(&inputs, jiff::Timestamp::UNIX_EPOCH)
}

#[test]
fn registration_object_has_labels_taints_addresses_and_all_conditions() {
    let reg = Registration {
        register: true,
        labels: BTreeMap::from([("role".to_owned(), "worker".to_owned())]),
        taints: parse_taints(&strings(&["dedicated=gpu:NoSchedule"])).expect("taint"),
    };
    let now = jiff::Timestamp::from_second(1_000).expect("time");
    let n = registration_node(&view_node(), &reg, now);
    let labels = n.metadata.labels.clone().expect("labels");
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["beta.kubernetes.io/os"], "linux");
    assert!(labels.contains_key("kubernetes.io/arch"));
    assert_eq!(labels["role"], "worker");
    assert_eq!(
        n.metadata.annotations.expect("annotations")["volumes.kubernetes.io/controller-managed-attach-detach"],
        "true"
    );
    let spec = n.spec.expect("spec");
    // Only the flag's taints: pressure taints are the node lifecycle controller's.
    let taints = spec.taints.expect("taints");
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, "dedicated");
    assert_eq!(spec.pod_cidr, None);
    let status = n.status.expect("status");
    let types: Vec<&str> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(
        types,
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    );
    let mem = condition(&status, "MemoryPressure").expect("memory");
    assert_eq!(
        (
            mem.status.as_str(),
            mem.reason.as_deref(),
            mem.message.as_deref()
        ),
        (
            "False",
            Some("KubeletHasSufficientMemory"),
            Some("kubelet has sufficient memory available")
        )
    );
    let ready = condition(&status, "Ready").expect("ready");
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("kubelet is posting ready status")
    );
    assert_eq!(ready.last_transition_time, Some(Time(now)));
    assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
    let addresses: Vec<(&str, &str)> = status
        .addresses
        .iter()
        .flatten()
        .map(|a| (a.type_.as_str(), a.address.as_str()))
        .collect();
    assert_eq!(
        addresses,
        [("InternalIP", "10.0.0.5"), ("Hostname", "host1")]
    );
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(10250)
    );
    let info = status.node_info.expect("node info");
    assert_eq!(info.container_runtime_version, "containerd://1.7.24");
    assert!(
        info.kubelet_version
            .starts_with(crate::node::status::KUBELET_VERSION)
    );
}

#[test]
fn transition_times_hold_until_a_condition_flips_and_heartbeats_are_not_changes() {
    let t0 = jiff::Timestamp::from_second(1_000).expect("time");
    let t1 = jiff::Timestamp::from_second(1_010).expect("time");
    let view = view_node();
    let first = desired_status(&view, None, t0);
    let second = desired_status(&view, Some(&first), t1);
    let ready = condition(&second, "Ready").expect("ready");
    assert_eq!(ready.last_transition_time, Some(Time(t0)));
    assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
    assert!(!status_changed(Some(&first), &second));
    assert!(status_changed(None, &second));
    // A node the lifecycle controller marked Unknown flips back to True now.
    let mut unknown = first.clone();
    for c in unknown.conditions.iter_mut().flatten() {
        if c.type_ == "Ready" {
            c.status = "Unknown".to_owned();
        }
    }
    let back = desired_status(&view, Some(&unknown), t1);
    assert_eq!(
        condition(&back, "Ready").and_then(|c| c.last_transition_time.clone()),
        Some(Time(t1))
    );
    assert!(status_changed(Some(&unknown), &back));
    // What others set on the status is not a change of ours.
    let mut others = second.clone();
    others.volumes_attached = Some(Vec::new());
    others
        .conditions
        .get_or_insert_with(Vec::new)
        .push(NodeCondition {
            type_: "NetworkUnavailable".to_owned(),
            status: "False".to_owned(),
            ..Default::default()
        });
    assert!(!status_changed(Some(&others), &second));
    // Capacity changes are changes.
    let mut more = second.clone();
    more.capacity.get_or_insert_with(BTreeMap::new).insert(
        "pods".to_owned(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("111".to_owned()),
    );
    assert!(status_changed(Some(&second), &more));
}

#[test]
fn default_labels_are_fixed_on_an_adopted_node_and_others_left_alone() {
    let wanted = registration_node(
        &view_node(),
        &Registration::default(),
        jiff::Timestamp::UNIX_EPOCH,
    );
    let mut existing = wanted.clone();
    let labels = existing.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("kubernetes.io/hostname".to_owned(), "old".to_owned());
    labels.remove("kubernetes.io/os");
    labels.insert("someone/else".to_owned(), "x".to_owned());
    let changes = default_label_changes(&wanted, &existing);
    assert_eq!(
        changes,
        BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), Some("n1".to_owned())),
            ("kubernetes.io/os".to_owned(), Some("linux".to_owned())),
        ])
    );
    assert!(default_label_changes(&wanted, &wanted).is_empty());
}

#[test]
fn pod_cidrs_of_prefers_the_list_and_falls_back_to_pod_cidr() {
    let with = |pod_cidr: Option<&str>, pod_cidrs: Option<Vec<&str>>| Node {
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(str::to_owned),
            pod_cidrs: pod_cidrs.map(|l| l.into_iter().map(str::to_owned).collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        pod_cidrs_of(&with(
            Some("10.244.1.0/24"),
            Some(vec!["10.244.1.0/24", "fd00:10:244:1::/64"])
        ))
        .as_deref(),
        Some("10.244.1.0/24,fd00:10:244:1::/64")
    );
    assert_eq!(
        pod_cidrs_of(&with(Some("10.244.1.0/24"), None)).as_deref(),
        Some("10.244.1.0/24")
    );
    assert_eq!(pod_cidrs_of(&with(None, Some(vec![]))), None);
    assert_eq!(pod_cidrs_of(&Node::default()), None);
}

#[test]
fn the_node_view_lists_each_pod_cidr_once() {
    let inputs = NodeInputs {
        name: "n1".to_owned(),
        pod_cidr: Some("10.88.0.0/16,fd00:88::/64".to_owned()),
        ..Default::default()
    };
    let spec = node(&inputs, jiff::Timestamp::UNIX_EPOCH)
        .spec
        .expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.88.0.0/16"));
    assert_eq!(
        spec.pod_cidrs,
        Some(vec!["10.88.0.0/16".to_owned(), "fd00:88::/64".to_owned()])
    );
}
