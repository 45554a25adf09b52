//! The Node in the apiserver: registration (create it, or adopt an existing one with
//! the same name and fix the labels the kubelet owns) and the status poster (compute
//! every 10 s, patch the `status` subresource when it changed or every 5 minutes),
//! after upstream's `pkg/kubelet/kubelet_node_status.go`. The object itself comes
//! from the node view (`crate::node::status::node`), the same one `GET /node`
//! serves; this file only adds what belongs to a cluster (flags' labels and taints,
//! the kubelet endpoint, transition times against the posted status).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::cluster::events::node::StatusEvents;
use crate::cluster::{ClusterError, Outage, call};
use crate::node::eviction::messages::pressure_node_condition;
use crate::node::eviction::thresholds::PressureCondition;
use crate::node::view::NodeView;

/// Upstream's `nodeStatusUpdateFrequency` default: how often the status is computed.
pub const STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
/// Upstream's `nodeStatusReportFrequency` default: an unchanged status is still
/// posted this often.
pub const STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);
/// The port reported as `daemonEndpoints.kubeletEndpoint` (upstream's `--port`).
pub const KUBELET_PORT: i32 = 10250;
/// Upstream's registration back-off: 100 ms doubling to 7 s.
const REGISTER_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(7));

/// The labels upstream's kubelet sets and keeps in step on an existing Node
/// (`updateDefaultLabels`).
const DEFAULT_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// `kubernetes.io`/`k8s.io` labels `--node-labels` may set (upstream's
/// `kubeletapis.KubeletLabels()`), besides the allowed namespaces.
const ALLOWED_KUBERNETES_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// `kubernetes.io` label namespaces `--node-labels` may use freely.
const ALLOWED_KUBERNETES_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// What the flags say about registering.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// `--register-node`.
    pub register: bool,
    /// `--node-labels`.
    pub labels: BTreeMap<String, String>,
    /// `--register-with-taints`.
    pub taints: Vec<Taint>,
}

/// Parses `--node-labels` entries (`key=value`), validated as upstream: qualified
/// names, label values, and no `kubernetes.io`/`k8s.io` label outside the allowed set.
///
/// # Errors
/// The first bad entry, with why.
pub fn parse_node_labels(entries: &[String]) -> Result<BTreeMap<String, String>, ClusterError> {
    let mut labels = BTreeMap::new();
    for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
        let bad = |reason: String| ClusterError::NodeLabel {
            label: entry.clone(),
            reason,
        };
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| bad("want key=value".to_owned()))?;
        let (key, value) = (key.trim(), value.trim());
        qualified_name(key).map_err(&bad)?;
        label_value(value).map_err(&bad)?;
        if is_kubernetes_label(key) && !is_allowed_kubelet_label(key) {
            return Err(bad(format!(
                "unknown 'kubernetes.io' or 'k8s.io' label; labels in those namespaces must \
                 begin with an allowed prefix ({}) or be in the specifically allowed set ({})",
                ALLOWED_KUBERNETES_NAMESPACES.join(", "),
                ALLOWED_KUBERNETES_LABELS.join(", ")
            )));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// Parses `--register-with-taints` entries (`key=value:Effect`, `key:Effect`), as
/// upstream's `ParseTaints`.
///
/// # Errors
/// The first bad entry, with why.
pub fn parse_taints(entries: &[String]) -> Result<Vec<Taint>, ClusterError> {
    let mut taints: Vec<Taint> = Vec::new();
    for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
        let bad = |reason: String| ClusterError::Taint {
            taint: entry.clone(),
            reason,
        };
        let Some((kv, effect)) = entry
            .trim()
            .split_once(':')
            .filter(|(_, e)| !e.contains(':'))
        else {
            return Err(bad("invalid taint spec: want key=value:Effect".to_owned()));
        };
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad(format!(
                "invalid taint effect: {effect}, unsupported taint effect"
            )));
        }
        let (key, value) = match kv.split_once('=') {
            Some((_, v)) if v.contains('=') => {
                return Err(bad("invalid taint spec: more than one '='".to_owned()));
            }
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        qualified_name(key).map_err(&bad)?;
        if let Some(v) = value {
            label_value(v).map_err(&bad)?;
        }
        if taints.iter().any(|t| t.key == key && t.effect == effect) {
            return Err(bad(
                "duplicated taints with the same key and effect".to_owned()
            ));
        }
        taints.push(Taint {
            key: key.to_owned(),
            value: value.filter(|v| !v.is_empty()).map(str::to_owned),
            effect: effect.to_owned(),
            time_added: None,
        });
    }
    Ok(taints)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters (upstream's `IsQualifiedName`).
fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let subdomain = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !subdomain {
            return Err(format!(
                "prefix part {p:?} of the key must be a lowercase DNS subdomain"
            ));
        }
    }
    if name.is_empty() || !label_name_chars(name) {
        return Err(format!(
            "name part {name:?} of the key must be 1-63 alphanumeric characters, '-', '_' or \
             '.', starting and ending with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A label value: empty, or like a key's name part (upstream's `IsValidLabelValue`).
fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_name_chars(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?} must be at most 63 alphanumeric characters, '-', '_' or '.', \
             starting and ending with an alphanumeric character"
        ))
    }
}

fn label_name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_kubernetes_label(key: &str) -> bool {
    let Some((ns, _)) = key.rsplit_once('/') else {
        return false;
    };
    ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|d| ns == *d || ns.ends_with(&format!(".{d}")))
}

fn is_allowed_kubelet_label(key: &str) -> bool {
    if ALLOWED_KUBERNETES_LABELS.contains(&key) {
        return true;
    }
    let ns = key.rsplit_once('/').map_or("", |(ns, _)| ns);
    ALLOWED_KUBERNETES_NAMESPACES
        .iter()
        .any(|allowed| ns == *allowed || ns.ends_with(&format!(".{allowed}")))
}

/// The Node to create: the view's labels and status, `--node-labels` over the
/// default labels, `--register-with-taints` as the only taints (the pressure taints
/// are the node lifecycle controller's job in a cluster), and upstream's
/// controller-managed attach/detach annotation. No pod CIDR: the controller manager
/// allocates it.
pub fn registration_node(view: &Node, reg: &Registration, now: jiff::Timestamp) -> Node {
    let mut labels = view.metadata.labels.clone().unwrap_or_default();
    labels.extend(reg.labels.clone());
    let annotations = BTreeMap::from([(
        "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
        "true".to_owned(),
    )]);
    Node {
        metadata: kube::api::ObjectMeta {
            name: view.metadata.name.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(reg.taints.clone()).filter(|t| !t.is_empty()),
            ..Default::default()
        }),
        status: Some(desired_status(view, None, now)),
    }
}

/// The pod CIDRs the cluster gave Node `name` (`spec.podCIDRs`, or `spec.podCIDR`),
/// comma-joined as `--pod-cidr` takes them: upstream's kubelet takes its pod CIDR
/// from the Node in a cluster. `None` when the Node does not exist yet, has none, or
/// the apiserver does not answer within `wait`.
pub async fn assigned_pod_cidrs(
    client: &kube::Client,
    name: &str,
    wait: Duration,
) -> Option<String> {
    let api: Api<Node> = Api::all(client.clone());
    let node = match tokio::time::timeout(wait, api.get_opt(name)).await {
        Ok(Ok(node)) => node?,
        Ok(Err(error)) => {
            debug!(%error, "cannot read the Node's pod CIDRs");
            return None;
        }
        Err(_) => {
            debug!(
                ?wait,
                "the apiserver did not answer for the Node's pod CIDRs"
            );
            return None;
        }
    };
    pod_cidrs_of(&node)
}

/// `spec.podCIDRs` comma-joined, or `spec.podCIDR`; `None` when neither is set.
pub fn pod_cidrs_of(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    let cidrs: Vec<&str> = match &spec.pod_cidrs {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.pod_cidr.as_deref().into_iter().collect(),
    };
    let cidrs: Vec<&str> = cidrs.into_iter().filter(|c| !c.is_empty()).collect();
    (!cidrs.is_empty()).then(|| cidrs.join(","))
}

/// Upstream's `updateDefaultLabels`: the default labels `wanted` has are set to its
/// values on `existing`. Returns the labels to patch (`None` removes one), empty
/// when nothing changed.
pub fn default_label_changes(wanted: &Node, existing: &Node) -> BTreeMap<String, Option<String>> {
    let empty = BTreeMap::new();
    let want = wanted.metadata.labels.as_ref().unwrap_or(&empty);
    let have = existing.metadata.labels.as_ref().unwrap_or(&empty);
    let mut changes = BTreeMap::new();
    for key in DEFAULT_LABELS {
        let Some(value) = want.get(*key) else {
            continue;
        };
        if have.get(*key) != Some(value) {
            let value = Some(value.clone()).filter(|v| !v.is_empty());
            changes.insert((*key).to_owned(), value);
        }
    }
    changes
}

/// The status to post: the view's, with every pressure condition present (the
/// pressure loop publishes after its first measurement), Ready last, transition
/// times kept from `posted` while a condition's status holds and `now` when it
/// flips, and the kubelet endpoint.
pub fn desired_status(
    view: &Node,
    posted: Option<&NodeStatus>,
    now: jiff::Timestamp,
) -> NodeStatus {
    let mut status = view.status.clone().unwrap_or_default();
    let old = |type_: &str| {
        posted
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
    };
    let from_view = status.conditions.take().unwrap_or_default();
    let mut conditions = Vec::new();
    for kind in [
        PressureCondition::MemoryPressure,
        PressureCondition::DiskPressure,
        PressureCondition::PidPressure,
    ] {
        let c = from_view
            .iter()
            .find(|c| c.type_ == kind.as_str())
            .cloned()
            .unwrap_or_else(|| pressure_node_condition(None, kind, false, Time(now)));
        conditions.push(c);
    }
    conditions.extend(
        from_view
            .iter()
            .filter(|c| !conditions.iter().any(|have| have.type_ == c.type_))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for c in &mut conditions {
        c.last_heartbeat_time = Some(Time(now));
        c.last_transition_time = match old(&c.type_) {
            Some(prev) if prev.status == c.status => prev.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
    }
    status.conditions = Some(conditions);
    // The view's port when it serves the kubelet API, upstream's default otherwise.
    status.daemon_endpoints.get_or_insert(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }),
    });
    status
}

/// Upstream's `nodeStatusHasChanged`: any difference but the heartbeat times, in
/// what the agent posts. Fields and conditions others set on the status (the
/// attach/detach controller's `volumesAttached`, a CNI's `NetworkUnavailable`) are
/// not ours to compare, or the status would be patched on every tick.
pub fn status_changed(posted: Option<&NodeStatus>, new: &NodeStatus) -> bool {
    let Some(posted) = posted else { return true };
    let ours: Vec<&str> = new
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        if let Some(cs) = s.conditions.as_mut() {
            cs.retain(|c| ours.contains(&c.type_.as_str()));
            for c in cs.iter_mut() {
                c.last_heartbeat_time = None;
            }
            cs.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
        serde_json::to_value(s).unwrap_or_default()
    };
    let (old, new) = (strip(posted), strip(new));
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return true;
    };
    new.iter()
        .any(|(field, value)| old.get(field) != Some(value))
}

/// The condition `type_` of a status.
pub fn condition<'a>(status: &'a NodeStatus, type_: &str) -> Option<&'a NodeCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Registers the Node and keeps its status posted.
pub struct StatusPoster {
    nodes: Api<Node>,
    name: String,
    registration: Arc<Registration>,
    view: Arc<NodeView>,
    events: Option<std::sync::Mutex<StatusEvents>>,
}

impl StatusPoster {
    /// A poster for node `name`.
    pub fn new(
        client: kube::Client,
        name: String,
        registration: Arc<Registration>,
        view: Arc<NodeView>,
    ) -> Self {
        Self {
            nodes: Api::all(client),
            name,
            registration,
            view,
            events: None,
        }
    }

    /// The same, recording the node status events (`events/node.rs`).
    #[must_use]
    pub fn with_events(mut self, events: StatusEvents) -> Self {
        self.events = Some(std::sync::Mutex::new(events));
        self
    }

    fn events(&self, f: impl FnOnce(&mut StatusEvents)) {
        if let Some(events) = &self.events {
            f(&mut events.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    fn object(&self) -> String {
        format!("Node/{}", self.name)
    }

    /// Registers the node (or, with `--register-node=false`, waits for it to exist),
    /// retrying with upstream's back-off until it works; returns the Node as the
    /// apiserver has it.
    pub async fn register(&self) -> Node {
        let mut delay = REGISTER_BACKOFF.0;
        let mut outage = Outage::default();
        loop {
            match self.try_register().await {
                Ok((node, created)) => {
                    outage.ok("node registration");
                    self.events(|e| e.registered(&node, created));
                    return node;
                }
                Err(e) => outage.failed("node registration", &e),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REGISTER_BACKOFF.1);
        }
    }

    /// Upstream's `tryRegisterWithAPIServer`: the Node, and whether it was created.
    async fn try_register(&self) -> Result<(Node, bool), ClusterError> {
        let view = self.view.node().await;
        let wanted = registration_node(&view, &self.registration, jiff::Timestamp::now());
        if self.registration.register {
            match call(
                "create",
                self.object(),
                self.nodes.create(&PostParams::default(), &wanted),
            )
            .await
            {
                Ok(node) => return Ok((node, true)),
                Err(e) if e.code() == Some(409) => {
                    debug!(node = %self.name, "the Node exists; adopting it");
                }
                Err(e) => return Err(e),
            }
        }
        let existing = call("get", self.object(), self.nodes.get(&self.name)).await?;
        let changes = default_label_changes(&wanted, &existing);
        if changes.is_empty() || !self.registration.register {
            return Ok((existing, false));
        }
        info!(node = %self.name, ?changes, "updating the Node's default labels");
        let patch = serde_json::json!({ "metadata": { "labels": changes } });
        call(
            "patch labels of",
            self.object(),
            self.nodes
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|node| (node, false))
    }

    /// Computes the status every [`STATUS_UPDATE_FREQUENCY`] and patches it when it
    /// changed, when the last patch failed, or every [`STATUS_REPORT_FREQUENCY`].
    pub async fn run(&self, registered: Node) {
        let mut posted = registered.status;
        let mut last_report: Option<Instant> = None;
        let mut outage = Outage::default();
        let mut tick = tokio::time::interval(STATUS_UPDATE_FREQUENCY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let view = self.view.node().await;
            let status = desired_status(&view, posted.as_ref(), jiff::Timestamp::now());
            self.events(|e| e.status(posted.as_ref(), &status));
            let due = last_report.is_none_or(|t| t.elapsed() >= STATUS_REPORT_FREQUENCY)
                || status_changed(posted.as_ref(), &status);
            if !due {
                continue;
            }
            match self.patch_status(&status).await {
                Ok(node) => {
                    outage.ok("node status");
                    self.events(|e| e.node(&node));
                    if last_report.is_none()
                        || condition(&status, "Ready").map(|c| &c.status)
                            != posted
                                .as_ref()
                                .and_then(|p| condition(p, "Ready"))
                                .map(|c| &c.status)
                    {
                        info!(node = %self.name, ready = ?condition(&status, "Ready").map(|c| &c.status), "node status posted");
                    }
                    posted = node.status;
                    last_report = Some(Instant::now());
                }
                Err(e) => outage.failed("node status", &e),
            }
        }
    }

    /// Upstream's `PatchNodeStatus`: a strategic merge patch of the status
    /// subresource (conditions and addresses merge by type, so conditions others
    /// set are kept).
    async fn patch_status(&self, status: &NodeStatus) -> Result<Node, ClusterError> {
        let patch = serde_json::json!({ "status": status });
        call(
            "patch status of",
            self.object(),
            self.nodes.patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            ),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
