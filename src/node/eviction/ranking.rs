//! What the eviction manager knows of each active pod ([`PodUsage`]), and the orders
//! pods are evicted in under each pressure.
//!
//! Ported from upstream `pkg/kubelet/eviction/helpers.go`: `rankMemoryPressure`
//! (`exceedMemoryRequests`, `priority`, `memory`), `rankDiskPressureFunc`
//! (`exceedDiskRequests`, `priority`, `disk`), `rankPIDPressure` (`priority`, `process`),
//! `orderedBy`'s comparator chain and `buildSignalToRankFunc`'s choice of what each disk
//! signal measures. Pods without stats are ranked first, as upstream.

use std::cmp::Ordering;

use super::thresholds::{Amount, Resource, Signal};

/// Upstream `scheduling.SystemCriticalPriority`: pods at or above it are critical.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A pod's QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// `Guaranteed`
    Guaranteed,
    /// `Burstable`
    Burstable,
    /// `BestEffort`
    BestEffort,
}

/// Disk usage of one container filesystem area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes used, when known.
    pub used_bytes: Option<u64>,
    /// Inodes used, when known.
    pub inodes_used: Option<u64>,
}

/// One container's usage and requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerUsage {
    /// The container name (regular or init container).
    pub name: String,
    /// Memory working set, bytes.
    pub memory_working_set_bytes: Option<u64>,
    /// The writable layer's usage.
    pub rootfs: Option<FsUsage>,
    /// The container's log files' usage.
    pub logs: Option<FsUsage>,
    /// `resources.requests.memory`, as written in the spec.
    pub memory_request: Option<Amount>,
    /// `resources.requests.ephemeral-storage`, as written in the spec.
    pub ephemeral_storage_request: Option<Amount>,
}

/// One volume's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    /// The volume name.
    pub name: String,
    /// Whether it consumes node-local storage (hostPath, or emptyDir not in memory,
    /// configMap, secret-less local ephemeral volumes: upstream `localVolumeNames`).
    pub local: bool,
    /// Usage.
    pub usage: FsUsage,
}

/// Measured usage of a pod (upstream's summary `PodStats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStats {
    /// The pod cgroup's memory working set, bytes.
    pub memory_working_set_bytes: Option<u64>,
    /// Processes in the pod.
    pub process_count: Option<u64>,
    /// Per container, in the order upstream's stats list them.
    pub containers: Vec<ContainerUsage>,
    /// Per volume.
    pub volumes: Vec<VolumeUsage>,
}

/// An active pod as the eviction manager sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodUsage {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The QoS class.
    pub qos: Qos,
    /// `spec.priority` (0 when unset, as upstream `PodPriority`).
    pub priority: i32,
    /// `spec.priorityClassName`.
    pub priority_class_name: Option<String>,
    /// A static (file/URL) or mirror pod.
    pub is_static: bool,
    /// `spec.terminationGracePeriodSeconds`.
    pub termination_grace_period_seconds: Option<i64>,
    /// The pod's effective memory request, bytes (upstream
    /// `GetResourceRequestQuantity`: containers summed, init containers maxed, overhead).
    pub memory_request_bytes: i64,
    /// The pod's effective ephemeral-storage request, bytes.
    pub ephemeral_storage_request_bytes: i64,
    /// Pod-level `spec.resources.requests.memory` (PodLevelResources), if set.
    pub pod_memory_request: Option<Amount>,
    /// Measured usage; `None` when the stats don't know the pod (ranked first).
    pub stats: Option<PodStats>,
}

impl PodUsage {
    /// Whether upstream would refuse to evict the pod (`kubelettypes.IsCriticalPod`:
    /// static and mirror pods, and priority ≥ [`SYSTEM_CRITICAL_PRIORITY`]). With
    /// `evict_static_pods` (nodelet only), a static pod is critical only when its
    /// priority class is `system-node-critical` or `system-cluster-critical`.
    pub fn is_critical(&self, evict_static_pods: bool) -> bool {
        if self.priority >= SYSTEM_CRITICAL_PRIORITY {
            return true;
        }
        if self.is_static {
            return !evict_static_pods
                || matches!(
                    self.priority_class_name.as_deref(),
                    Some("system-node-critical" | "system-cluster-critical")
                );
        }
        false
    }
}

/// Which parts of a pod's disk usage a disk signal counts (upstream `fsStatsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsStatsType {
    /// Containers' writable layers.
    Root,
    /// Containers' logs.
    Logs,
    /// Node-local volumes.
    LocalVolumeSource,
}

/// How pods are ordered for one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranking {
    /// `rankMemoryPressure`.
    Memory,
    /// `rankPIDPressure`.
    Pid,
    /// `rankDiskPressureFunc(measure, resource)`; resource is bytes or inodes.
    Disk(Vec<FsStatsType>, Resource),
}

impl Ranking {
    /// The ranking upstream's `buildSignalToRankFunc` gives `signal`. With a dedicated
    /// image filesystem, nodefs counts logs and local volumes and imagefs (and
    /// containerfs) the writable layers; without one, every disk signal counts all.
    pub fn for_signal(signal: Signal, dedicated_image_fs: bool) -> Ranking {
        use FsStatsType::{LocalVolumeSource, Logs, Root};
        let resource = signal.resource();
        match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Ranking::Memory,
            Signal::PidAvailable => Ranking::Pid,
            Signal::NodeFsAvailable | Signal::NodeFsInodesFree if dedicated_image_fs => {
                Ranking::Disk(vec![Logs, LocalVolumeSource], resource)
            }
            _ if dedicated_image_fs => Ranking::Disk(vec![Root], resource),
            _ => Ranking::Disk(vec![Root, Logs, LocalVolumeSource], resource),
        }
    }

    /// Sorts `pods` into eviction order: the first is evicted first.
    pub fn rank(&self, pods: &mut [&PodUsage]) {
        match self {
            Ranking::Memory => pods.sort_by(|a, b| {
                exceed_memory_requests(a, b)
                    .then_with(|| priority(a, b))
                    .then_with(|| memory(a, b))
            }),
            Ranking::Pid => pods.sort_by(|a, b| priority(a, b).then_with(|| process(a, b))),
            Ranking::Disk(measure, resource) => pods.sort_by(|a, b| {
                exceed_disk_requests(a, b, measure, *resource)
                    .then_with(|| priority(a, b))
                    .then_with(|| disk(a, b, measure, *resource))
            }),
        }
    }
}

/// Upstream `cmpBool`: `true` sorts first.
fn cmp_bool(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// Upstream's `if !p1Found || !p2Found` prelude: pods without stats sort first.
fn with_stats(
    a: &PodUsage,
    b: &PodUsage,
    f: impl FnOnce(&PodStats, &PodStats) -> Ordering,
) -> Ordering {
    match (&a.stats, &b.stats) {
        (Some(sa), Some(sb)) => f(sa, sb),
        (sa, sb) => cmp_bool(sa.is_none(), sb.is_none()),
    }
}

/// Lower priority first.
fn priority(a: &PodUsage, b: &PodUsage) -> Ordering {
    a.priority.cmp(&b.priority)
}

fn memory_usage(s: &PodStats) -> i128 {
    i128::from(s.memory_working_set_bytes.unwrap_or(0))
}

/// Pods using more memory than they request first.
fn exceed_memory_requests(a: &PodUsage, b: &PodUsage) -> Ordering {
    with_stats(a, b, |sa, sb| {
        cmp_bool(
            memory_usage(sa) > i128::from(a.memory_request_bytes),
            memory_usage(sb) > i128::from(b.memory_request_bytes),
        )
    })
}

/// Larger memory usage above request first.
fn memory(a: &PodUsage, b: &PodUsage) -> Ordering {
    with_stats(a, b, |sa, sb| {
        let ua = memory_usage(sa) - i128::from(a.memory_request_bytes);
        let ub = memory_usage(sb) - i128::from(b.memory_request_bytes);
        ub.cmp(&ua)
    })
}

/// More processes first.
fn process(a: &PodUsage, b: &PodUsage) -> Ordering {
    with_stats(a, b, |sa, sb| {
        sb.process_count
            .unwrap_or(0)
            .cmp(&sa.process_count.unwrap_or(0))
    })
}

/// A pod's disk usage in `resource` (bytes or inodes) over the measured areas
/// (upstream `podDiskUsage`).
pub fn pod_disk_usage(stats: &PodStats, measure: &[FsStatsType], resource: Resource) -> i128 {
    let pick = |u: &Option<FsUsage>| -> i128 {
        let u = u.unwrap_or_default();
        i128::from(match resource {
            Resource::Inodes => u.inodes_used.unwrap_or(0),
            _ => u.used_bytes.unwrap_or(0),
        })
    };
    let mut total = 0;
    for c in &stats.containers {
        if measure.contains(&FsStatsType::Root) {
            total += pick(&c.rootfs);
        }
        if measure.contains(&FsStatsType::Logs) {
            total += pick(&c.logs);
        }
    }
    if measure.contains(&FsStatsType::LocalVolumeSource) {
        for v in stats.volumes.iter().filter(|v| v.local) {
            total += pick(&Some(v.usage));
        }
    }
    total
}

/// The pod's request of `resource` (upstream `GetResourceRequestQuantity`; nothing
/// requests inodes, so that request is 0).
fn disk_request(p: &PodUsage, resource: Resource) -> i128 {
    match resource {
        Resource::EphemeralStorage => i128::from(p.ephemeral_storage_request_bytes),
        _ => 0,
    }
}

/// Pods using more disk than they request first.
fn exceed_disk_requests(
    a: &PodUsage,
    b: &PodUsage,
    measure: &[FsStatsType],
    resource: Resource,
) -> Ordering {
    with_stats(a, b, |sa, sb| {
        cmp_bool(
            pod_disk_usage(sa, measure, resource) > disk_request(a, resource),
            pod_disk_usage(sb, measure, resource) > disk_request(b, resource),
        )
    })
}

/// Larger disk usage above request first. Upstream subtracts the ephemeral-storage
/// request here even when ranking inodes; so does this.
fn disk(a: &PodUsage, b: &PodUsage, measure: &[FsStatsType], resource: Resource) -> Ordering {
    with_stats(a, b, |sa, sb| {
        let ua =
            pod_disk_usage(sa, measure, resource) - i128::from(a.ephemeral_storage_request_bytes);
        let ub =
            pod_disk_usage(sb, measure, resource) - i128::from(b.ephemeral_storage_request_bytes);
        ub.cmp(&ua)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MI: u64 = 1024 * 1024;

    /// A pod with a memory request and working set, priority and a disk footprint.
    pub(crate) fn pod(
        name: &str,
        priority: i32,
        request_mi: i64,
        usage_mi: Option<u64>,
    ) -> PodUsage {
        PodUsage {
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            name: name.into(),
            qos: if request_mi > 0 {
                Qos::Burstable
            } else {
                Qos::BestEffort
            },
            priority,
            priority_class_name: None,
            is_static: false,
            termination_grace_period_seconds: Some(30),
            memory_request_bytes: request_mi * 1024 * 1024,
            ephemeral_storage_request_bytes: 0,
            pod_memory_request: None,
            stats: usage_mi.map(|u| PodStats {
                memory_working_set_bytes: Some(u * MI),
                process_count: None,
                containers: vec![ContainerUsage {
                    name: name.into(),
                    memory_working_set_bytes: Some(u * MI),
                    memory_request: (request_mi > 0)
                        .then(|| Amount::parse(&format!("{request_mi}Mi")).expect("q")),
                    ..ContainerUsage::default()
                }],
                volumes: vec![],
            }),
        }
    }

    fn names(pods: &[&PodUsage]) -> Vec<String> {
        pods.iter().map(|p| p.name.clone()).collect()
    }

    /// upstream helpers_test.go `TestOrderedByExceedsRequestMemory`,
    /// `TestOrderedByPriority`, `TestOrderedbyMemory` and `TestSortByEvictionPriority`'s
    /// memory table: exceeding requests, then priority, then usage − request.
    #[test]
    fn rank_memory_pressure() {
        let below = pod("below-requests", 0, 200, Some(100));
        let above = pod("above-requests", 0, 100, Some(200));
        let mut pods = vec![&below, &above];
        Ranking::Memory.rank(&mut pods);
        assert_eq!(names(&pods), ["above-requests", "below-requests"]);

        let low = pod("low-priority", -1, 0, Some(100));
        let high = pod("high-priority", 100, 0, Some(500));
        let mid = pod("mid-priority", 10, 0, Some(300));
        let mut pods = vec![&high, &mid, &low];
        Ranking::Memory.rank(&mut pods);
        assert_eq!(
            names(&pods),
            ["low-priority", "mid-priority", "high-priority"]
        );

        // Same priority, all above requests: the biggest usage above request first.
        let p1 = pod("p1", 0, 0, Some(500));
        let p2 = pod("p2", 0, 100, Some(500));
        let p3 = pod("p3", 0, 50, Some(600));
        let no_stats = pod("no-stats", 1000, 0, None);
        let mut pods = vec![&p2, &no_stats, &p1, &p3];
        Ranking::Memory.rank(&mut pods);
        assert_eq!(names(&pods), ["no-stats", "p3", "p1", "p2"]);

        // A best-effort pod above its (zero) request beats a guaranteed one within it,
        // even at higher priority.
        let burst = pod("burstable-over", 100, 10, Some(20));
        let guaranteed = pod("guaranteed-within", 0, 1000, Some(900));
        let mut pods = vec![&guaranteed, &burst];
        Ranking::Memory.rank(&mut pods);
        assert_eq!(names(&pods), ["burstable-over", "guaranteed-within"]);
    }

    fn with_processes(mut p: PodUsage, n: u64) -> PodUsage {
        if let Some(s) = p.stats.as_mut() {
            s.process_count = Some(n);
        }
        p
    }

    /// upstream `TestOrderedByPriorityProcess`: priority, then the most processes.
    #[test]
    fn rank_pid_pressure() {
        let a = with_processes(pod("a", 0, 0, Some(1)), 10);
        let b = with_processes(pod("b", 0, 0, Some(1)), 20);
        let c = with_processes(pod("c", -5, 0, Some(1)), 1);
        let d = with_processes(pod("d", 5, 0, Some(1)), 1000);
        let mut pods = vec![&a, &b, &c, &d];
        Ranking::Pid.rank(&mut pods);
        assert_eq!(names(&pods), ["c", "b", "a", "d"]);
    }

    fn with_disk(mut p: PodUsage, rootfs: u64, logs: u64, volume: u64, request: i64) -> PodUsage {
        p.ephemeral_storage_request_bytes = request;
        if let Some(s) = p.stats.as_mut() {
            s.containers[0].rootfs = Some(FsUsage {
                used_bytes: Some(rootfs),
                inodes_used: Some(rootfs / 10),
            });
            s.containers[0].logs = Some(FsUsage {
                used_bytes: Some(logs),
                inodes_used: Some(logs / 10),
            });
            s.volumes = vec![
                VolumeUsage {
                    name: "local".into(),
                    local: true,
                    usage: FsUsage {
                        used_bytes: Some(volume),
                        inodes_used: Some(volume / 10),
                    },
                },
                VolumeUsage {
                    name: "nfs".into(),
                    local: false,
                    usage: FsUsage {
                        used_bytes: Some(1 << 40),
                        inodes_used: Some(1 << 30),
                    },
                },
            ];
        }
        p
    }

    /// upstream `TestOrderedbyDisk`, `TestOrderedbyInodes`,
    /// `TestOrderedByExceedsRequestDisk`, with and without a dedicated imagefs.
    #[test]
    fn rank_disk_pressure() {
        let a = with_disk(pod("a", 0, 0, Some(1)), 500, 0, 0, 1000); // within request
        let b = with_disk(pod("b", 0, 0, Some(1)), 100, 100, 100, 0); // 300 over
        let c = with_disk(pod("c", 0, 0, Some(1)), 0, 50, 400, 100); // 350 over
        let d = with_disk(pod("d", -1, 0, Some(1)), 10, 0, 0, 0); // low priority
        let shared = Ranking::for_signal(Signal::NodeFsAvailable, false);
        let mut pods = vec![&a, &b, &c, &d];
        shared.rank(&mut pods);
        assert_eq!(names(&pods), ["d", "c", "b", "a"]);

        // Dedicated imagefs: imagefs counts only writable layers. `b` and `d` exceed
        // their requests; `c` (0 − 100) then outranks `a` (500 − 1000).
        let image = Ranking::for_signal(Signal::ImageFsAvailable, true);
        assert_eq!(
            image,
            Ranking::Disk(vec![FsStatsType::Root], Resource::EphemeralStorage)
        );
        let mut pods = vec![&a, &b, &c, &d];
        image.rank(&mut pods);
        assert_eq!(names(&pods), ["d", "b", "c", "a"]);

        // Inodes: nothing requests inodes, so every pod using any "exceeds"; then
        // usage − the ephemeral-storage request, as upstream's `disk` comparator does:
        // b 30, c 45 − 100, a 50 − 1000.
        let inodes = Ranking::for_signal(Signal::NodeFsInodesFree, false);
        let mut pods = vec![&a, &b, &c, &d];
        inodes.rank(&mut pods);
        assert_eq!(names(&pods), ["d", "b", "c", "a"]);
    }

    #[test]
    fn critical_pods() {
        let mut p = pod("p", 0, 0, Some(1));
        assert!(!p.is_critical(false));
        p.priority = SYSTEM_CRITICAL_PRIORITY;
        assert!(p.is_critical(false) && p.is_critical(true));
        p.priority = 0;
        p.is_static = true;
        assert!(p.is_critical(false));
        assert!(!p.is_critical(true));
        p.priority_class_name = Some("system-node-critical".into());
        assert!(p.is_critical(true));
        p.priority_class_name = Some("system-cluster-critical".into());
        assert!(p.is_critical(true));
        p.priority_class_name = Some("high".into());
        assert!(!p.is_critical(true));
    }
}
