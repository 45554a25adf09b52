//! The Node's own events, as upstream's kubelet records them: `Starting` at start
//! (`BirthCry`), `NodeAllocatableEnforced` once the pods' cgroups are limited
//! (the container manager), and the node status setters' events when a condition
//! changes: `NodeHasSufficientMemory`/`NodeHasInsufficientMemory`,
//! `NodeHasNoDiskPressure`/`NodeHasDiskPressure`,
//! `NodeHasSufficientPID`/`NodeHasInsufficientPID`, `NodeReady`/`NodeNotReady`,
//! `NodeSchedulable`/`NodeNotSchedulable` and `Rebooted`. `RegisteredNode` is the
//! node lifecycle controller's, not the kubelet's.
//!
//! The involved object is upstream's node reference (`v1` `Node`, the name, no
//! namespace, so the Event lives in `default`), with the Node's UID, as upstream's
//! `nodeRefWithUID` (v1.37; older kubelets put the node name in the UID);
//! `NodeAllocatableEnforced` has no UID, as upstream's container manager. Upstream
//! records `Starting` before it registers, so for a new Node without a UID, and
//! `kubectl describe node` (which searches by the UID, or the name as a UID) never
//! shows it; here it waits for the registration to return the UID (moments later).

use k8s_openapi::api::core::v1::{Node, NodeStatus};

use crate::events::{EventRecorder, EventType, node_reference, reason};

/// Records events about node `name`.
#[derive(Debug, Clone)]
pub struct NodeEvents {
    recorder: EventRecorder,
    name: String,
}

impl NodeEvents {
    /// Events of node `name` through `recorder`.
    pub fn new(recorder: EventRecorder, name: &str) -> Self {
        Self {
            recorder,
            name: name.to_owned(),
        }
    }

    fn record(&self, uid: Option<&str>, type_: EventType, reason: &str, message: &str) {
        self.recorder.record(
            &node_reference(&self.name, uid),
            type_,
            reason,
            message,
            std::time::SystemTime::now(),
        );
    }

    /// Upstream's container manager after it set the pods' cgroup limits.
    pub fn allocatable_enforced(&self) {
        self.record(
            None,
            EventType::Normal,
            reason::SUCCESSFUL_NODE_ALLOCATABLE_ENFORCEMENT,
            "Updated Node Allocatable limit across pods",
        );
    }

    /// The status poster's events, for the Node once registered.
    pub fn status_events(&self) -> StatusEvents {
        StatusEvents {
            events: self.clone(),
            uid: None,
            created: false,
            first: true,
            unschedulable: false,
            reboot_reported: false,
        }
    }
}

/// The pressure conditions and their events (`True`, `False`), in upstream's
/// setter order.
const PRESSURE_EVENTS: [(&str, &str, &str); 3] = [
    (
        "MemoryPressure",
        "NodeHasInsufficientMemory",
        "NodeHasSufficientMemory",
    ),
    (
        "DiskPressure",
        "NodeHasDiskPressure",
        "NodeHasNoDiskPressure",
    ),
    (
        "PIDPressure",
        "NodeHasInsufficientPID",
        "NodeHasSufficientPID",
    ),
];

fn condition_status<'a>(status: Option<&'a NodeStatus>, type_: &str) -> Option<&'a str> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// The setters' events between `posted` (the Node as the apiserver has it; `None`
/// for upstream's fresh `initialNode`) and `new`, the status about to be posted: a
/// pressure condition that is new or changed, and a Ready that changed.
pub fn condition_events(posted: Option<&NodeStatus>, new: &NodeStatus) -> Vec<&'static str> {
    let mut events = Vec::new();
    for (type_, on, off) in PRESSURE_EVENTS {
        let Some(now) = condition_status(Some(new), type_) else {
            continue;
        };
        if condition_status(posted, type_) != Some(now) {
            events.push(if now == "True" { on } else { off });
        }
    }
    if let (Some(before), Some(now)) = (
        condition_status(posted, "Ready"),
        condition_status(Some(new), "Ready"),
    ) && before != now
    {
        events.push(ready_event(now));
    }
    events
}

fn ready_event(status: &str) -> &'static str {
    if status == "True" {
        reason::NODE_READY
    } else {
        reason::NODE_NOT_READY
    }
}

/// What the status poster has seen, to record each change once.
#[derive(Debug)]
pub struct StatusEvents {
    events: NodeEvents,
    uid: Option<String>,
    created: bool,
    first: bool,
    unschedulable: bool,
    reboot_reported: bool,
}

impl StatusEvents {
    fn status_event(&self, reason: &str) {
        self.events.record(
            self.uid.as_deref(),
            EventType::Normal,
            reason,
            &format!("Node {} status is now: {reason}", self.events.name),
        );
    }

    /// The Node is registered (`created` when this agent made it): upstream's
    /// `BirthCry`, then whether it is cordoned.
    pub fn registered(&mut self, node: &Node, created: bool) {
        self.uid = node.metadata.uid.clone();
        self.created = created;
        self.events.record(
            self.uid.as_deref(),
            EventType::Normal,
            reason::STARTING_KUBELET,
            "Starting kubelet.",
        );
        self.node(node);
    }

    /// Records the events of posting `new` over `posted` (the Node as the apiserver
    /// has it). The first time, the pressure conditions count as new, as upstream's
    /// `initialNode` makes them at every start; and a Node this agent just created
    /// records its Ready state (upstream's registers NotReady and turns Ready a
    /// status update later; this agent's is Ready at creation, so the NodeReady a
    /// user sees for a new node is recorded here).
    pub fn status(&mut self, posted: Option<&NodeStatus>, new: &NodeStatus) {
        let reasons = if std::mem::take(&mut self.first) {
            // Pressure as on a fresh node; Ready against the Node found, or, for
            // one just created, its state.
            let mut reasons = condition_events(None, new);
            let before = if self.created {
                None
            } else {
                condition_status(posted, "Ready")
            };
            match (before, condition_status(Some(new), "Ready")) {
                (None, Some(now)) if self.created => reasons.push(ready_event(now)),
                (Some(before), Some(now)) if before != now => reasons.push(ready_event(now)),
                _ => {}
            }
            reasons
        } else {
            condition_events(posted, new)
        };
        for reason in reasons {
            self.status_event(reason);
        }
        let boot_id = |s: Option<&NodeStatus>| {
            s.and_then(|s| s.node_info.as_ref())
                .map(|i| i.boot_id.clone())
                .unwrap_or_default()
        };
        let (before, now) = (boot_id(posted), boot_id(Some(new)));
        if !self.reboot_reported && !before.is_empty() && !now.is_empty() && before != now {
            self.reboot_reported = true;
            self.events.record(
                self.uid.as_deref(),
                EventType::Warning,
                reason::NODE_REBOOTED,
                &format!(
                    "Node {} has been rebooted, boot id: {now}",
                    self.events.name
                ),
            );
        }
    }

    /// Upstream's `recordNodeSchedulableEvent`: a cordon or uncordon seen on the
    /// Node the apiserver returned.
    pub fn node(&mut self, node: &Node) {
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if unschedulable != self.unschedulable {
            self.unschedulable = unschedulable;
            self.status_event(if unschedulable {
                reason::NODE_NOT_SCHEDULABLE
            } else {
                reason::NODE_SCHEDULABLE
            });
        }
    }
}

#[cfg(test)]
mod tests;
