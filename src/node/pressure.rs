//! The agent's eviction loop: every `--eviction-monitoring-interval`, and at once when a
//! memory cgroup notification fires, it measures the node (memory, the `kubepods`
//! cgroup, the root and image filesystems, process IDs) and each pod (its cgroup's
//! working set and processes, its containers' working sets), hands the numbers to the
//! [`EvictionManager`], publishes the pressure conditions and taints, and sends the
//! pod it picks an eviction.
//!
//! Notifications are nodelet's addition (upstream has them behind
//! `--kernel-memcg-notification`, off by default): on cgroup v1 a threshold eventfd on
//! the `kubepods` cgroup at the `allocatableMemory.available` threshold, and on the
//! root cgroup for `memory.available` when `--cgroup-root` is `/`; on v2 a PSI trigger.
//! nodelet only registers on cgroups it owns, so a node with another `--cgroup-root`
//! relies on the poll for `memory.available`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_cgroups::notify::{MemoryNotifier, PsiTrigger, usage_threshold};
use nodelet_cgroups::{CgroupVersion, Layout, QosClass, qos_class, stats};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::node::eviction::manager::POD_CLEANUP_TIMEOUT;
use crate::node::eviction::ranking::{ContainerUsage, PodStats};
use crate::node::eviction::signals::{AllocatableMemoryStats, FsStats, MemoryStats, PidStats};
use crate::node::eviction::thresholds::{Amount, PressureCondition, Signal};
use crate::node::eviction::{
    Eviction, EvictionManager, NodeStats, Observations, PodUsage, Qos, messages,
};
use crate::pod::cgroups::PodCgroups;
use crate::pod::status_store::PodStatuses;

/// The node's pressure as the eviction manager last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    /// MemoryPressure, DiskPressure and PIDPressure, with their transition times.
    pub conditions: Vec<NodeCondition>,
    /// The matching `NoSchedule` taints.
    pub taints: Vec<Taint>,
}

/// Something the pod manager carries out for another part of the agent.
#[derive(Debug)]
pub enum PodCommand {
    /// Evict the pod: kill it within `grace`, then show it `Failed`/`Evicted`.
    Evict {
        /// The pod's UID.
        uid: String,
        /// Upstream's eviction message.
        message: String,
        /// The grace period for its containers.
        grace: Duration,
    },
}

/// One measurement of the node: the eviction signals' inputs, plus the usage and
/// working set of the root and `kubepods` memory cgroups that the notifiers'
/// thresholds are computed from.
struct Sample {
    stats: NodeStats,
    root_memory: Option<(u64, u64)>,
    kubepods_memory: Option<(u64, u64)>,
}

/// What the loop reads besides the pods.
#[derive(Debug, Clone)]
pub struct Filesystems {
    /// `--root-dir` (nodefs).
    pub root_dir: PathBuf,
    /// containerd's root (imagefs).
    pub image_dir: PathBuf,
}

/// The eviction loop.
pub struct PressureMonitor {
    manager: EvictionManager,
    layout: Layout,
    cgroups: Arc<PodCgroups>,
    fs: Filesystems,
    pods: watch::Receiver<PodStatuses>,
    pressure: watch::Sender<Pressure>,
    commands: mpsc::Sender<PodCommand>,
    notifiers: Vec<(Signal, MemoryNotifier)>,
    image_reclaim: Option<crate::image::gc::ReclaimRequests>,
    events: Option<crate::events::EventRecorder>,
}

impl std::fmt::Debug for PressureMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressureMonitor").finish_non_exhaustive()
    }
}

impl PressureMonitor {
    /// A loop over `manager`'s thresholds.
    pub fn new(
        manager: EvictionManager,
        cgroups: Arc<PodCgroups>,
        fs: Filesystems,
        pods: watch::Receiver<PodStatuses>,
        pressure: watch::Sender<Pressure>,
        commands: mpsc::Sender<PodCommand>,
    ) -> Self {
        let layout = cgroups.manager().layout().clone();
        PressureMonitor {
            manager,
            layout,
            cgroups,
            fs,
            pods,
            pressure,
            commands,
            notifiers: Vec::new(),
            image_reclaim: None,
            events: None,
        }
    }

    /// Records upstream's `EvictionThresholdMet` node event through `events`.
    #[must_use]
    pub fn with_events(mut self, events: crate::events::EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    /// Node-level reclaim of images goes to the image GC manager.
    #[must_use]
    pub fn with_image_reclaim(mut self, requests: crate::image::gc::ReclaimRequests) -> Self {
        self.image_reclaim = Some(requests);
        self
    }

    /// Upstream's `reclaimNodeLevelResources`: dead containers, then unused images.
    /// Dead containers here are only each container's last instance (kept for its
    /// status and logs, as upstream's `MaxPerPodContainer` 1), so images are what
    /// can be freed.
    async fn reclaim_node_level(&self, what: &[crate::node::eviction::manager::NodeReclaim]) {
        for r in what {
            match r {
                crate::node::eviction::manager::NodeReclaim::ImageGc => {
                    let Some(requests) = &self.image_reclaim else {
                        continue;
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if requests.send(tx).await.is_err() {
                        continue;
                    }
                    match tokio::time::timeout(Duration::from_secs(120), rx).await {
                        Ok(Ok(freed)) => info!(freed, "node-level reclaim: unused images removed"),
                        _ => warn!("node-level reclaim: image GC did not answer"),
                    }
                }
                crate::node::eviction::manager::NodeReclaim::ContainerGc => {
                    debug!("node-level reclaim: no dead containers beyond each container's last");
                }
            }
        }
    }

    /// Runs until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let interval = self.manager.config().monitoring_interval;
        loop {
            let started = Instant::now();
            let sample = self.node_stats();
            let pods = self.pod_usages();
            let outcome = self.manager.synchronize(
                Instant::now(),
                &Observations::from_stats(&sample.stats),
                &pods,
            );
            let decided = started.elapsed();
            self.publish(&outcome.node_conditions);
            if let (Some(signal), Some(events)) = (outcome.reclaiming, &self.events) {
                record_reclaim(events, signal);
            }
            let mut eviction = outcome.evict;
            if !outcome.reclaim.is_empty() {
                // Node-level reclaim first, then look again before evicting.
                self.reclaim_node_level(&outcome.reclaim).await;
                let again = self.node_stats();
                let pods = self.pod_usages();
                eviction = self
                    .manager
                    .after_node_reclaim(&Observations::from_stats(&again.stats), &pods);
            }
            if let Some(e) = eviction {
                info!(
                    pod = %format!("{}/{}", e.namespace, e.name),
                    signal = %e.signal,
                    decided_in = ?decided,
                    message = %e.message,
                    "evicting pod"
                );
                crate::server::metrics::observe_eviction(&e.signal.to_string());
                self.evict(e, &cancel).await;
            }
            self.rearm(&sample);
            let wake = self.wait_notification();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                signal = wake => {
                    if let Some(signal) = signal {
                        debug!(%signal, "memory threshold notification");
                    }
                }
            }
        }
    }

    /// The next notification from any registered notifier (never, without one).
    async fn wait_notification(&mut self) -> Option<Signal> {
        if self.notifiers.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.notifiers.iter_mut().map(|(signal, n)| {
            let signal = *signal;
            Box::pin(async move { (signal, n.notified().await) })
        });
        let ((signal, result), _, _) = futures::future::select_all(waits).await;
        if let Err(e) = result {
            warn!(%signal, error = %e, "memory notification failed; polling only");
            self.notifiers.retain(|(s, _)| *s != signal);
        }
        Some(signal)
    }

    /// (Re)registers the memory notifiers at the current thresholds (upstream
    /// recomputes them every sync, since the kernel counts inactive file pages).
    fn rearm(&mut self, sample: &Sample) {
        if !self.manager.config().kernel_memcg_notification {
            return;
        }
        let kubepods = self.cgroups.kubepods_path();
        let targets: Vec<(Signal, String)> = self
            .manager
            .memory_thresholds()
            .filter(|t| t.is_hard())
            .filter_map(|t| match t.signal {
                Signal::AllocatableMemoryAvailable => Some((t.signal, kubepods.clone())),
                Signal::MemoryAvailable if self.cgroups.cgroup_root() == "/" => {
                    Some((t.signal, "/".to_owned()))
                }
                _ => None,
            })
            .collect();
        for (signal, cgroup) in targets {
            let Some(threshold) = self
                .manager
                .memory_thresholds()
                .find(|t| t.signal == signal && t.is_hard())
                .cloned()
            else {
                continue;
            };
            let (capacity, measured) = match signal {
                Signal::AllocatableMemoryAvailable => (
                    sample.stats.allocatable_memory.map(|a| a.allocatable_bytes),
                    sample.kubepods_memory,
                ),
                _ => (
                    sample.stats.memory.map(|m| m.capacity_bytes),
                    sample.root_memory,
                ),
            };
            let Some(capacity) = capacity else { continue };
            let (usage, working_set) = measured.unwrap_or((0, 0));
            let bytes = usage_threshold(
                capacity,
                threshold.amount_against(capacity),
                usage,
                working_set,
            );
            let existing = self.notifiers.iter_mut().find(|(s, _)| *s == signal);
            let result = match (self.layout.version(), existing) {
                (CgroupVersion::V1, Some((_, n))) => n.rearm_v1(bytes),
                (CgroupVersion::V1, None) => {
                    MemoryNotifier::threshold_v1(&self.layout, &cgroup, bytes)
                        .map(|n| self.notifiers.push((signal, n)))
                }
                (CgroupVersion::V2, Some(_)) => Ok(()),
                (CgroupVersion::V2, None) => MemoryNotifier::psi_v2(
                    &self.layout,
                    &cgroup,
                    PsiTrigger {
                        full: false,
                        stall: Duration::from_millis(100),
                        window: Duration::from_secs(2),
                    },
                )
                .map(|n| self.notifiers.push((signal, n))),
            };
            if let Err(e) = result {
                warn!(%signal, %cgroup, error = %e, "memory notification not registered; polling only");
            }
        }
    }

    /// Publishes the pressure conditions (transition times kept across syncs) and taints.
    fn publish(&self, under: &std::collections::BTreeSet<PressureCondition>) {
        let now = Time(jiff::Timestamp::now());
        let previous = self.pressure.borrow().clone();
        let conditions: Vec<NodeCondition> = PressureCondition::ALL
            .iter()
            .map(|kind| {
                let prev = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == kind.as_str());
                messages::pressure_node_condition(prev, *kind, under.contains(kind), now.clone())
            })
            .collect();
        let taints = under.iter().map(|k| messages::pressure_taint(*k)).collect();
        for c in &conditions {
            let was = previous.conditions.iter().find(|p| p.type_ == c.type_);
            if was.map(|p| &p.status) != Some(&c.status) {
                info!(condition = %c.type_, status = %c.status, "node condition changed");
            }
        }
        self.pressure.send_replace(Pressure { conditions, taints });
    }

    /// Sends the eviction and waits (bounded) for the pod to stop, as upstream waits
    /// for its cleanup before the next sync.
    async fn evict(&mut self, e: Eviction, cancel: &CancellationToken) {
        let grace =
            Duration::from_secs(u64::try_from(e.grace_period_override_seconds).unwrap_or(0));
        let uid = e.pod_uid.clone();
        if self
            .commands
            .send(PodCommand::Evict {
                uid: uid.clone(),
                message: e.message,
                grace,
            })
            .await
            .is_err()
        {
            return;
        }
        let stopped = |pods: &PodStatuses| {
            pods.get(&uid).is_none_or(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase.as_deref() == Some("Failed"))
            })
        };
        let mut pods = self.pods.clone();
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(POD_CLEANUP_TIMEOUT) => {
                warn!(uid = %uid, "evicted pod not cleaned up in time");
            }
            _ = pods.wait_for(stopped) => {}
        }
    }

    /// The node-level numbers.
    fn node_stats(&self) -> Sample {
        let now = Instant::now();
        let node_memory =
            nodelet_cgroups::node_memory(&self.layout, std::path::Path::new("/proc")).ok();
        let memory = node_memory.as_ref().map(|m| MemoryStats {
            capacity_bytes: m.capacity,
            working_set_bytes: m.working_set,
        });
        let kubepods = stats::read(&self.layout, &self.cgroups.kubepods_path()).ok();
        let allocatable_memory = kubepods.as_ref().and_then(|s| {
            // Upstream: the pods' cgroup's available bytes (its limit, i.e. allocatable
            // when `pods` is enforced) plus its working set.
            let working_set = s.memory_working_set?;
            let limit = s
                .memory_limit
                .unwrap_or_else(|| self.cgroups.allocatable_memory());
            Some(AllocatableMemoryStats {
                allocatable_bytes: limit,
                pods_working_set_bytes: working_set,
            })
        });
        let fs = |path: &std::path::Path| {
            nodelet_cgroups::statvfs(path).ok().map(|f| FsStats {
                capacity_bytes: f.capacity,
                available_bytes: f.available,
                inodes: Some(f.inodes),
                inodes_free: Some(f.inodes_free),
            })
        };
        Sample {
            stats: NodeStats {
                time: Some(now),
                memory,
                allocatable_memory,
                node_fs: fs(&self.fs.root_dir),
                image_fs: fs(&self.fs.image_dir),
                container_fs: None,
                pids: pid_counts().map(|(max, running)| PidStats { max, running }),
            },
            root_memory: node_memory.map(|m| (m.usage, m.working_set)),
            kubepods_memory: kubepods.and_then(|s| {
                let usage = s.memory_usage?;
                Some((usage, s.memory_working_set.unwrap_or(usage)))
            }),
        }
    }

    /// The active pods with their measured usage.
    fn pod_usages(&self) -> Vec<PodUsage> {
        let pods = self.pods.borrow().clone();
        pods.values()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Failed" | "Succeeded"))
            })
            .map(|p| self.pod_usage(p))
            .collect()
    }

    fn pod_usage(&self, pod: &Pod) -> PodUsage {
        let spec = pod.spec.clone().unwrap_or_default();
        let stats = self.cgroups.pod_cgroup(pod).and_then(|cg| {
            let s = stats::read(&self.layout, &cg).ok()?;
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .map(|c| {
                    let id = container_id(pod, &c.name);
                    let usage = id.and_then(|id| {
                        stats::read(&self.layout, &self.cgroups.container_cgroup(&cg, &id)).ok()
                    });
                    let request = |name: &str| {
                        c.resources
                            .as_ref()
                            .and_then(|r| r.requests.as_ref())
                            .and_then(|r| r.get(name))
                            .and_then(|q| Amount::parse(&q.0).ok())
                    };
                    ContainerUsage {
                        name: c.name.clone(),
                        memory_working_set_bytes: usage.and_then(|u| u.memory_working_set),
                        rootfs: None,
                        logs: None,
                        memory_request: request("memory"),
                        ephemeral_storage_request: request("ephemeral-storage"),
                    }
                })
                .collect();
            Some(PodStats {
                memory_working_set_bytes: s.memory_working_set,
                process_count: s.pids,
                containers,
                volumes: Vec::new(),
            })
        });
        PodUsage {
            stats,
            ..pod_identity(pod)
        }
    }
}

/// A pod as the eviction manager ranks it, without measured usage.
fn pod_identity(pod: &Pod) -> PodUsage {
    let spec = pod.spec.clone().unwrap_or_default();
    let requests = nodelet_cgroups::values::pod_requests(&spec);
    let bytes = |name: &str| {
        requests.get(name).map_or(0, |q| {
            i64::try_from(q.nanos() / 1_000_000_000).unwrap_or(i64::MAX)
        })
    };
    PodUsage {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        qos: match qos_class(&spec) {
            QosClass::Guaranteed => Qos::Guaranteed,
            QosClass::Burstable => Qos::Burstable,
            QosClass::BestEffort => Qos::BestEffort,
        },
        priority: spec.priority.unwrap_or(0),
        priority_class_name: spec.priority_class_name.clone(),
        // Pods from a file, URL or push source are static (upstream's
        // `IsStaticPod`); those bound through the apiserver are not.
        is_static: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(nodelet_manifests::CONFIG_SOURCE_ANNOTATION))
            .is_none_or(|s| s != nodelet_manifests::API_SOURCE),
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        memory_request_bytes: bytes("memory"),
        ephemeral_storage_request_bytes: bytes("ephemeral-storage"),
        pod_memory_request: spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory"))
            .and_then(|q| Amount::parse(&q.0).ok()),
        stats: None,
    }
}

/// Upstream's admission under node pressure (the eviction manager's `Admit`), from the
/// published conditions: under memory pressure alone only best-effort pods that
/// don't tolerate the memory-pressure taint are refused; under other pressure every
/// pod that isn't critical is.
///
/// # Errors
/// The rejection: reason `Evicted`, message `The node had condition: [...]. `.
pub fn admit(
    pressure: &Pressure,
    pod: &Pod,
    evict_static_pods: bool,
) -> Result<(), crate::node::eviction::manager::AdmitRejection> {
    let conditions = pressure
        .conditions
        .iter()
        .filter(|c| c.status == "True")
        .filter_map(|c| {
            PressureCondition::ALL
                .iter()
                .find(|k| k.as_str() == c.type_)
                .copied()
        })
        .collect();
    let identity = pod_identity(pod);
    let tolerates = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| ts.iter().any(tolerates_memory_pressure));
    crate::node::eviction::manager::admit(
        &conditions,
        identity.qos,
        identity.is_critical(evict_static_pods),
        tolerates,
    )
}

/// Whether a toleration tolerates `node.kubernetes.io/memory-pressure:NoSchedule`
/// (upstream's `ToleratesTaint`).
fn tolerates_memory_pressure(t: &k8s_openapi::api::core::v1::Toleration) -> bool {
    const KEY: &str = "node.kubernetes.io/memory-pressure";
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == "NoSchedule");
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => effect_ok && (key.is_empty() || key == KEY),
        _ => effect_ok && key == KEY && t.value.as_deref().unwrap_or("").is_empty(),
    }
}

/// The containerd ID of container `name` from the pod's published status.
fn container_id(pod: &Pod, name: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| s.name == name)?
        .container_id
        .as_deref()?
        .strip_prefix("containerd://")
        .map(str::to_owned)
}

/// `pid_max` and the number of tasks (`/proc/loadavg`'s total): upstream's rlimit stats,
/// which feed `pid.available` and the summary's `rlimit`.
pub fn pid_counts() -> Option<(u64, u64)> {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let running = loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()?;
    Some((max, running))
}

/// Upstream's event as its eviction manager starts reclaiming the resource of
/// `signal` (every synchronisation that does; the correlator counts them).
fn record_reclaim(events: &crate::events::EventRecorder, signal: Signal) {
    events.for_node(
        crate::events::EventType::Warning,
        crate::events::reason::EVICTION_THRESHOLD_MET,
        &format!("Attempting to reclaim {}", signal.resource().as_str()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaiming_records_upstreams_node_event() {
        let events = crate::events::EventRecorder::new("node-1", 10);
        record_reclaim(&events, Signal::AllocatableMemoryAvailable);
        record_reclaim(&events, Signal::AllocatableMemoryAvailable);
        record_reclaim(&events, Signal::NodeFsAvailable);
        let items = events.list(None).items;
        assert_eq!(items.len(), 2);
        let e = &items[0];
        assert_eq!(e.reason.as_deref(), Some("EvictionThresholdMet"));
        assert_eq!(e.message.as_deref(), Some("Attempting to reclaim memory"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.count, Some(2));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(e.involved_object.name.as_deref(), Some("node-1"));
        assert_eq!(e.involved_object.uid, None);
        assert_eq!(
            items[1].message.as_deref(),
            Some("Attempting to reclaim ephemeral-storage")
        );
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn under(kinds: &[&str]) -> Pressure {
        Pressure {
            conditions: kinds
                .iter()
                .map(|k| NodeCondition {
                    type_: (*k).to_owned(),
                    status: "True".to_owned(),
                    ..Default::default()
                })
                .collect(),
            taints: Vec::new(),
        }
    }

    #[test]
    fn admission_follows_upstream_under_pressure() {
        let best_effort = pod(serde_json::json!({
            "metadata": {"name": "be", "uid": "1"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }));
        let burstable = pod(serde_json::json!({
            "metadata": {"name": "b", "uid": "2"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"memory": "1Mi"}}}]}
        }));
        let tolerating = pod(serde_json::json!({
            "metadata": {"name": "t", "uid": "3"},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                "tolerations": [{"key": "node.kubernetes.io/memory-pressure",
                    "operator": "Exists", "effect": "NoSchedule"}]}
        }));
        assert!(admit(&Pressure::default(), &best_effort, true).is_ok());
        let memory = under(&["MemoryPressure"]);
        let rejected = admit(&memory, &best_effort, true).expect_err("rejected");
        assert_eq!(rejected.reason, "Evicted");
        assert_eq!(
            rejected.message,
            "The node had condition: [MemoryPressure]. "
        );
        assert!(admit(&memory, &burstable, true).is_ok());
        assert!(admit(&memory, &tolerating, true).is_ok());
        // Static pods are critical upstream: admitted unless --evict-static-pods.
        assert!(admit(&memory, &best_effort, false).is_ok());
        assert!(admit(&under(&["DiskPressure"]), &burstable, true).is_err());
        // A condition that is False doesn't count.
        let mut cleared = under(&["MemoryPressure"]);
        cleared.conditions[0].status = "False".to_owned();
        assert!(admit(&cleared, &best_effort, true).is_ok());
    }
}
