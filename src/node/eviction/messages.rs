//! The words of eviction: the message an evicted pod carries, the status the pod worker
//! gives it, and the node conditions and taints pressure shows as.
//!
//! Ported from upstream `pkg/kubelet/eviction/helpers.go` (`evictionMessage`,
//! `getThresholdMetInfo`, the message formats and event annotation keys),
//! `eviction_manager.go` (the `DisruptionTarget` condition with reason
//! `TerminationByKubelet`), `pkg/kubelet/nodestatus/setters.go`
//! (`MemoryPressureCondition`, `DiskPressureCondition`, `PIDPressureCondition`) and the
//! `node.kubernetes.io/*-pressure` taints of `k8s.io/api/core/v1/well_known_taints.go`.
//!
//! Upstream puts the annotations (`offending_containers`, ...) on the eviction *event*,
//! not on the pod; [`eviction_message`] returns them for whoever records events.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeCondition, PodCondition, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ranking::PodUsage;
use super::signals::Observations;
use super::thresholds::{Amount, Format, PressureCondition, Resource, Threshold};

/// The pod status reason of an evicted pod (upstream `eviction.Reason`).
pub const REASON: &str = "Evicted";
/// The pod condition type the eviction adds.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
/// The `DisruptionTarget` reason for a pod the kubelet terminated.
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
/// Event annotation: containers over their request.
pub const OFFENDING_CONTAINERS_KEY: &str = "offending_containers";
/// Event annotation: those containers' usage.
pub const OFFENDING_CONTAINERS_USAGE_KEY: &str = "offending_containers_usage";
/// Event annotation: the pod, when it has a pod-level request.
pub const OFFENDING_POD_KEY: &str = "offending_pod";
/// Event annotation: the pod's usage.
pub const OFFENDING_POD_USAGE_KEY: &str = "offending_pod_usage";
/// Event annotation: the starved resource.
pub const STARVED_RESOURCE_KEY: &str = "starved_resource";

/// The threshold quantity and the available amount behind an eviction for `resource`
/// (upstream `getThresholdMetInfo`: the first met threshold on a signal of that
/// resource that has an observation).
pub fn threshold_met_info(
    resource: Resource,
    thresholds: &[Threshold],
    met: &[usize],
    observations: &Observations,
) -> Option<(Amount, Amount)> {
    met.iter().find_map(|&i| {
        let t = &thresholds[i];
        if t.signal.resource() != resource {
            return None;
        }
        let observed = observations.get(t.signal)?;
        let format = match resource {
            Resource::Memory | Resource::EphemeralStorage => Format::BinarySi,
            Resource::Inodes | Resource::Pids => Format::DecimalSi,
        };
        Some((
            t.value.quantity(observed.capacity),
            Amount::int(i128::from(observed.available), format),
        ))
    })
}

/// Upstream's eviction message and event annotations (`evictionMessage`):
/// `The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.
/// Container x was using 300Mi, request is 0, has larger consumption of memory. `
/// (each sentence ends with a space, as upstream's).
pub fn eviction_message(
    resource: Resource,
    pod: &PodUsage,
    threshold_info: Option<(Amount, Amount)>,
) -> (String, BTreeMap<String, String>) {
    let mut annotations = BTreeMap::new();
    let mut message = format!("The node was low on resource: {resource}. ");
    if let Some((quantity, available)) = threshold_info {
        message += &format!("Threshold quantity: {quantity}, available: {available}. ");
    }
    let Some(stats) = &pod.stats else {
        return (message, annotations);
    };
    if resource == Resource::Memory
        && let (Some(request), Some(ws)) = (pod.pod_memory_request, stats.memory_working_set_bytes)
    {
        let usage = Amount::int(i128::from(ws), Format::BinarySi);
        message += &format!(
            "Pod {} was using {usage}, request is {request}, has larger consumption of {resource}. ",
            pod.name
        );
        annotations.insert(OFFENDING_POD_KEY.to_owned(), pod.name.clone());
        annotations.insert(OFFENDING_POD_USAGE_KEY.to_owned(), usage.to_string());
    }
    let mut exceeded = Vec::new();
    let mut usages = Vec::new();
    for c in &stats.containers {
        let request = match resource {
            Resource::Memory => c.memory_request,
            Resource::EphemeralStorage => c.ephemeral_storage_request,
            Resource::Inodes | Resource::Pids => None,
        }
        .unwrap_or(Amount::int(0, Format::DecimalSi));
        let usage = match resource {
            Resource::Memory => c.memory_working_set_bytes,
            Resource::EphemeralStorage => match (c.rootfs, c.logs) {
                (Some(r), Some(l)) => r
                    .used_bytes
                    .zip(l.used_bytes)
                    .map(|(r, l)| r.saturating_add(l)),
                _ => None,
            },
            Resource::Inodes | Resource::Pids => None,
        }
        .map(|u| Amount::int(i128::from(u), Format::BinarySi));
        if let Some(usage) = usage
            && usage.nanos() > request.nanos()
        {
            message += &format!(
                "Container {} was using {usage}, request is {request}, has larger consumption of {resource}. ",
                c.name
            );
            exceeded.push(c.name.clone());
            usages.push(usage.to_string());
        }
    }
    annotations.insert(OFFENDING_CONTAINERS_KEY.to_owned(), exceeded.join(","));
    annotations.insert(OFFENDING_CONTAINERS_USAGE_KEY.to_owned(), usages.join(","));
    annotations.insert(STARVED_RESOURCE_KEY.to_owned(), resource.to_string());
    (message, annotations)
}

/// The `DisruptionTarget` condition upstream adds to an evicted pod.
pub fn disruption_target_condition(message: &str, now: Time) -> PodCondition {
    PodCondition {
        type_: DISRUPTION_TARGET.to_owned(),
        status: "True".to_owned(),
        reason: Some(TERMINATION_BY_KUBELET.to_owned()),
        message: Some(message.to_owned()),
        last_transition_time: Some(now),
        ..PodCondition::default()
    }
}

/// Makes `status` an evicted pod's: phase `Failed`, reason `Evicted`, the eviction
/// message, and the `DisruptionTarget` condition (added, or updated keeping its
/// transition time when it was already true).
pub fn apply_evicted_status(status: &mut PodStatus, message: &str, now: Time) {
    status.phase = Some("Failed".to_owned());
    status.reason = Some(REASON.to_owned());
    status.message = Some(message.to_owned());
    let mut condition = disruption_target_condition(message, now);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == DISRUPTION_TARGET) {
        if existing.status == "True" {
            condition.last_transition_time = existing.last_transition_time.clone();
        }
        *existing = condition;
    } else {
        conditions.push(condition);
    }
}

/// Whether a pod status is an eviction's (upstream `PodIsEvicted`).
#[cfg(test)]
pub fn pod_is_evicted(status: &PodStatus) -> bool {
    status.phase.as_deref() == Some("Failed") && status.reason.as_deref() == Some(REASON)
}

/// `(reason, message)` of a pressure condition, as upstream's node status setters.
pub fn condition_words(
    kind: PressureCondition,
    under_pressure: bool,
) -> (&'static str, &'static str) {
    match (kind, under_pressure) {
        (PressureCondition::MemoryPressure, true) => (
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        ),
        (PressureCondition::MemoryPressure, false) => (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (PressureCondition::DiskPressure, true) => {
            ("KubeletHasDiskPressure", "kubelet has disk pressure")
        }
        (PressureCondition::DiskPressure, false) => {
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        }
        (PressureCondition::PidPressure, true) => (
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        ),
        (PressureCondition::PidPressure, false) => (
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    }
}

/// The node condition for `kind`, updated from `previous` as upstream's setters do:
/// the heartbeat is `now`; status, reason, message and transition time change only
/// when the status flips (a new condition starts as `Unknown`, so it always flips).
pub fn pressure_node_condition(
    previous: Option<&NodeCondition>,
    kind: PressureCondition,
    under_pressure: bool,
    now: Time,
) -> NodeCondition {
    let mut c = previous.cloned().unwrap_or_else(|| NodeCondition {
        type_: kind.as_str().to_owned(),
        status: "Unknown".to_owned(),
        ..NodeCondition::default()
    });
    c.last_heartbeat_time = Some(now.clone());
    let want = if under_pressure { "True" } else { "False" };
    if c.status != want {
        let (reason, message) = condition_words(kind, under_pressure);
        c.status = want.to_owned();
        c.reason = Some(reason.to_owned());
        c.message = Some(message.to_owned());
        c.last_transition_time = Some(now);
    }
    c
}

/// The `NoSchedule` taint a node under `kind` pressure gets
/// (`node.kubernetes.io/memory-pressure` and so on).
pub fn pressure_taint(kind: PressureCondition) -> Taint {
    let key = match kind {
        PressureCondition::MemoryPressure => "node.kubernetes.io/memory-pressure",
        PressureCondition::DiskPressure => "node.kubernetes.io/disk-pressure",
        PressureCondition::PidPressure => "node.kubernetes.io/pid-pressure",
    };
    Taint {
        key: key.to_owned(),
        effect: "NoSchedule".to_owned(),
        ..Taint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::eviction::ranking::tests::pod;
    use crate::node::eviction::ranking::{ContainerUsage, FsUsage};
    use crate::node::eviction::signals::Observation;
    use crate::node::eviction::thresholds::{Signal, ThresholdValue};
    use std::time::Duration;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("time"))
    }

    /// upstream eviction_manager_test.go's memory eviction message.
    #[test]
    fn memory_message_as_upstream() {
        let thresholds = vec![Threshold {
            signal: Signal::MemoryAvailable,
            value: ThresholdValue::Quantity(Amount::parse("100Mi").expect("q")),
            grace_period: Duration::ZERO,
            min_reclaim: None,
        }];
        let mut obs = Observations::default();
        obs.insert(
            Signal::MemoryAvailable,
            Observation {
                available: 50 * 1024 * 1024,
                capacity: 2 * 1024 * 1024 * 1024,
                time: None,
            },
        );
        let info = threshold_met_info(Resource::Memory, &thresholds, &[0], &obs);
        let mut p = pod("x", 0, 0, Some(300));
        let (msg, ann) = eviction_message(Resource::Memory, &p, info);
        assert_eq!(
            msg,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container x was using 300Mi, request is 0, has larger consumption of memory. "
        );
        assert_eq!(ann[OFFENDING_CONTAINERS_KEY], "x");
        assert_eq!(ann[OFFENDING_CONTAINERS_USAGE_KEY], "300Mi");
        assert_eq!(ann[STARVED_RESOURCE_KEY], "memory");

        // Within its request: no container sentence; no stats: only the first ones.
        let within = pod("y", 0, 500, Some(300));
        let (msg, ann) = eviction_message(Resource::Memory, &within, None);
        assert_eq!(msg, "The node was low on resource: memory. ");
        assert_eq!(ann[OFFENDING_CONTAINERS_KEY], "");
        p.stats = None;
        let (msg, ann) = eviction_message(Resource::Memory, &p, info);
        assert!(msg.ends_with("available: 50Mi. "));
        assert!(ann.is_empty());
    }

    #[test]
    fn disk_message_sums_rootfs_and_logs() {
        let mut p = pod("d", 0, 0, Some(1));
        p.stats = p.stats.map(|mut s| {
            s.containers = vec![ContainerUsage {
                name: "c".into(),
                rootfs: Some(FsUsage {
                    used_bytes: Some(1024 * 1024 * 1024),
                    inodes_used: None,
                }),
                logs: Some(FsUsage {
                    used_bytes: Some(1024 * 1024 * 1024),
                    inodes_used: None,
                }),
                ephemeral_storage_request: Some(Amount::parse("1Gi").expect("q")),
                ..ContainerUsage::default()
            }];
            s
        });
        let (msg, _) = eviction_message(Resource::EphemeralStorage, &p, None);
        assert_eq!(
            msg,
            "The node was low on resource: ephemeral-storage. Container c was using 2Gi, request is 1Gi, has larger consumption of ephemeral-storage. "
        );
    }

    #[test]
    fn evicted_pod_status() {
        let mut status = PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        };
        apply_evicted_status(&mut status, "The node was low on resource: memory. ", t(10));
        assert!(pod_is_evicted(&status));
        let conds = status.conditions.as_deref().expect("conditions");
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].type_, "DisruptionTarget");
        assert_eq!(conds[0].reason.as_deref(), Some("TerminationByKubelet"));
        assert_eq!(conds[0].status, "True");
        apply_evicted_status(&mut status, "again", t(20));
        let conds = status.conditions.as_deref().expect("conditions");
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Some(t(10)));
        assert_eq!(conds[0].message.as_deref(), Some("again"));
    }

    #[test]
    fn node_conditions_and_taints() {
        let c = pressure_node_condition(None, PressureCondition::MemoryPressure, true, t(1));
        assert_eq!(c.type_, "MemoryPressure");
        assert_eq!(c.status, "True");
        assert_eq!(c.reason.as_deref(), Some("KubeletHasInsufficientMemory"));
        assert_eq!(
            c.message.as_deref(),
            Some("kubelet has insufficient memory available")
        );
        // Still under pressure: only the heartbeat moves.
        let c2 = pressure_node_condition(Some(&c), PressureCondition::MemoryPressure, true, t(5));
        assert_eq!(c2.last_transition_time, Some(t(1)));
        assert_eq!(c2.last_heartbeat_time, Some(t(5)));
        let c3 = pressure_node_condition(Some(&c2), PressureCondition::MemoryPressure, false, t(9));
        assert_eq!(c3.status, "False");
        assert_eq!(c3.reason.as_deref(), Some("KubeletHasSufficientMemory"));
        assert_eq!(c3.last_transition_time, Some(t(9)));
        let d = pressure_node_condition(None, PressureCondition::DiskPressure, false, t(1));
        assert_eq!(d.reason.as_deref(), Some("KubeletHasNoDiskPressure"));
        assert_eq!(d.message.as_deref(), Some("kubelet has no disk pressure"));
        let p = pressure_node_condition(None, PressureCondition::PidPressure, true, t(1));
        assert_eq!(p.type_, "PIDPressure");
        assert_eq!(p.reason.as_deref(), Some("KubeletHasInsufficientPID"));
        let taint = pressure_taint(PressureCondition::DiskPressure);
        assert_eq!(
            (taint.key.as_str(), taint.effect.as_str()),
            ("node.kubernetes.io/disk-pressure", "NoSchedule")
        );
        assert_eq!(
            pressure_taint(PressureCondition::PidPressure).key,
            "node.kubernetes.io/pid-pressure"
        );
    }
}
