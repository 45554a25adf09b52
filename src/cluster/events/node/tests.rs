//! Node events: which condition changes record what, with upstream's messages and
//! node reference.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn status(conditions: &[(&str, &str)], boot_id: &str) -> NodeStatus {
    NodeStatus {
        conditions: Some(
            conditions
                .iter()
                .map(|(t, s)| NodeCondition {
                    type_: (*t).to_owned(),
                    status: (*s).to_owned(),
                    ..NodeCondition::default()
                })
                .collect(),
        ),
        node_info: Some(NodeSystemInfo {
            boot_id: boot_id.to_owned(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn healthy(ready: &str) -> NodeStatus {
    status(
        &[
            ("MemoryPressure", "False"),
            ("DiskPressure", "False"),
            ("PIDPressure", "False"),
            ("Ready", ready),
        ],
        "boot-1",
    )
}

fn node(uid: &str, unschedulable: Option<bool>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("node-1".to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            unschedulable,
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// (reason, message, uid) of every event recorded, oldest first.
fn recorded(r: &EventRecorder) -> Vec<(String, String, Option<String>)> {
    r.list(None)
        .items
        .into_iter()
        .map(|e| {
            assert_eq!(e.involved_object.kind.as_deref(), Some("Node"));
            assert_eq!(e.involved_object.api_version.as_deref(), Some("v1"));
            assert_eq!(e.involved_object.name.as_deref(), Some("node-1"));
            assert_eq!(e.involved_object.namespace, None);
            assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
            (
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
                e.involved_object.uid,
            )
        })
        .collect()
}

fn reasons(r: &EventRecorder) -> Vec<String> {
    recorded(r).into_iter().map(|(reason, ..)| reason).collect()
}

#[test]
fn transitions_record_upstreams_events() {
    let before = healthy("True");
    let after = status(
        &[
            ("MemoryPressure", "True"),
            ("DiskPressure", "False"),
            ("PIDPressure", "True"),
            ("Ready", "False"),
        ],
        "boot-1",
    );
    assert_eq!(
        condition_events(Some(&before), &after),
        [
            "NodeHasInsufficientMemory",
            "NodeHasInsufficientPID",
            "NodeNotReady"
        ]
    );
    assert_eq!(
        condition_events(Some(&after), &before),
        [
            "NodeHasSufficientMemory",
            "NodeHasSufficientPID",
            "NodeReady"
        ]
    );
    assert!(condition_events(Some(&before), &before).is_empty());
    // Unknown (the lifecycle controller's, while the agent was away) to anything
    // is a change.
    let unknown = status(
        &[
            ("MemoryPressure", "Unknown"),
            ("DiskPressure", "Unknown"),
            ("PIDPressure", "Unknown"),
            ("Ready", "Unknown"),
        ],
        "",
    );
    assert_eq!(
        condition_events(Some(&unknown), &before),
        [
            "NodeHasSufficientMemory",
            "NodeHasNoDiskPressure",
            "NodeHasSufficientPID",
            "NodeReady"
        ]
    );
    // No Ready posted before: no Ready event (upstream's setter on a fresh node).
    assert_eq!(
        condition_events(None, &before),
        [
            "NodeHasSufficientMemory",
            "NodeHasNoDiskPressure",
            "NodeHasSufficientPID"
        ]
    );
}

#[test]
fn a_node_this_agent_created_records_pressure_and_ready_once() {
    let r = EventRecorder::new("node-1", 100);
    let node_events = NodeEvents::new(r.clone(), "node-1");
    node_events.allocatable_enforced();
    let mut s = node_events.status_events();
    let created = healthy("True");
    s.registered(&node("uid-1", None), true);
    s.status(Some(&created), &healthy("True"));
    s.status(Some(&created), &healthy("True"));
    let got = recorded(&r);
    assert_eq!(
        got.iter().map(|(r, ..)| r.as_str()).collect::<Vec<_>>(),
        [
            "NodeAllocatableEnforced",
            "Starting",
            "NodeHasSufficientMemory",
            "NodeHasNoDiskPressure",
            "NodeHasSufficientPID",
            "NodeReady"
        ]
    );
    assert_eq!(got[0].1, "Updated Node Allocatable limit across pods");
    assert_eq!(got[0].2, None, "upstream's container manager has no UID");
    assert_eq!(got[1].1, "Starting kubelet.");
    assert_eq!(got[1].2.as_deref(), Some("uid-1"));
    assert_eq!(got[5].1, "Node node-1 status is now: NodeReady");
    assert_eq!(got[5].2.as_deref(), Some("uid-1"));
    assert!(
        r.list(None).items.iter().all(|e| e.count == Some(1)),
        "each once"
    );

    // Later: only changes.
    s.status(Some(&healthy("True")), &healthy("False"));
    assert_eq!(reasons(&r).last().map(String::as_str), Some("NodeNotReady"));
}

#[test]
fn an_adopted_node_records_pressure_at_start_and_ready_only_when_it_changed() {
    let r = EventRecorder::new("node-1", 100);
    let mut s = NodeEvents::new(r.clone(), "node-1").status_events();
    s.registered(&node("uid-1", None), false);
    s.status(Some(&healthy("True")), &healthy("True"));
    assert_eq!(
        reasons(&r),
        [
            "Starting",
            "NodeHasSufficientMemory",
            "NodeHasNoDiskPressure",
            "NodeHasSufficientPID"
        ]
    );

    let r = EventRecorder::new("node-1", 100);
    let mut s = NodeEvents::new(r.clone(), "node-1").status_events();
    s.registered(&node("uid-1", None), false);
    s.status(Some(&healthy("Unknown")), &healthy("True"));
    assert_eq!(reasons(&r).last().map(String::as_str), Some("NodeReady"));
}

#[test]
fn a_cordon_and_a_new_boot_id_are_recorded_once() {
    let r = EventRecorder::new("node-1", 100);
    let mut s = NodeEvents::new(r.clone(), "node-1").status_events();
    s.registered(&node("uid-1", Some(true)), false);
    s.node(&node("uid-1", Some(true)));
    s.node(&node("uid-1", Some(false)));
    assert_eq!(
        reasons(&r),
        ["Starting", "NodeNotSchedulable", "NodeSchedulable"]
    );

    let mut rebooted = healthy("True");
    rebooted.node_info = Some(NodeSystemInfo {
        boot_id: "boot-2".to_owned(),
        ..NodeSystemInfo::default()
    });
    s.status(Some(&healthy("True")), &rebooted);
    s.status(Some(&healthy("True")), &rebooted);
    let reboots: Vec<_> = r
        .list(None)
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Rebooted"))
        .collect();
    assert_eq!(reboots.len(), 1);
    assert_eq!(reboots[0].count, Some(1));
    assert_eq!(reboots[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        reboots[0].message.as_deref(),
        Some("Node node-1 has been rebooted, boot id: boot-2")
    );
}
