//! The kubelet's `/stats/summary` answer: the JSON types of
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1` (staging/src/k8s.io/kubelet/pkg/apis/stats/
//! v1alpha1/types.go) with upstream's field names and `omitempty`, the CPU rate
//! (`usageNanoCores`) from successive cumulative samples, and a pure builder that turns
//! what `nodelet_cgroups` reads into a [`Summary`].
//!
//! The figures follow kubernetes `pkg/kubelet/stats/helper.go`
//! (`cadvisorInfoToContainerStats`: a cgroup's `availableBytes` is its memory limit
//! minus its working set, omitted when it has no limit; the node's is capacity minus
//! working set) and `calcEphemeralStorage` (a pod's ephemeral storage is its containers'
//! writable layers + its ephemeral volumes + its logs, on the node filesystem). The CPU
//! rate is `Δ cumulative ns / Δ wall ns × 1e9` as in `pkg/kubelet/stats/
//! cri_stats_provider.go` (`getAndUpdateContainerUsageNanoCores`).

use std::collections::HashMap;

use jiff::Timestamp;
use nodelet_cgroups::{CgroupStats, DirUsage, NodeMemory};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `metav1.Time`: RFC 3339 in UTC with whole seconds, as upstream writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Timestamp>()
            .map(Time)
            .map_err(serde::de::Error::custom)
    }
}

/// `Summary`: the node and its pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// `NodeStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_containers: Vec<ContainerStats>,
    pub start_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
}

/// `RuntimeStats`: the image filesystem and (when split) the containers' writable-layer
/// filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_fs: Option<FsStats>,
}

/// `RlimitStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlimitStats {
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxpid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curproc: Option<i64>,
}

/// `PodStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: Time,
    pub containers: Vec<ContainerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(rename = "volume", default, skip_serializing_if = "Vec::is_empty")]
    pub volume_stats: Vec<VolumeStats>,
    #[serde(
        rename = "ephemeral-storage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ephemeral_storage: Option<FsStats>,
    #[serde(
        rename = "process_stats",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub process_stats: Option<ProcessStats>,
}

/// `ProcessStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// `PodReference`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// `ContainerStats` (without accelerators and user-defined metrics, which upstream
/// omits when empty and this agent never has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

/// `InterfaceStats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// `NetworkStats`: the default interface inline, then every interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStats {
    pub time: Time,
    #[serde(flatten)]
    pub default_interface: InterfaceStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

/// `CPUStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// `MemoryStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

/// `VolumeStats`: the volume's name and its `FsStats` inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStats {
    #[serde(flatten)]
    pub fs: FsStats,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_ref: Option<PvcReference>,
}

/// `PVCReference`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvcReference {
    pub name: String,
    pub namespace: String,
}

/// `FsStats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

/// Turns successive cumulative CPU samples per key (a cgroup path) into a rate in
/// nanocores. Call [`CpuRateTracker::observe`] for every cgroup of a sampling round,
/// then [`CpuRateTracker::end_round`], which forgets keys not observed in that round
/// (deleted pods and containers).
#[derive(Debug, Default)]
pub struct CpuRateTracker {
    last: HashMap<String, Sample>,
}

#[derive(Debug)]
struct Sample {
    cumulative_ns: u64,
    at: Timestamp,
    seen_this_round: bool,
}

impl CpuRateTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `cumulative_ns` for `key` taken at `at`, and returns the rate since the
    /// previous sample of `key`: None for the first sample, when time didn't advance,
    /// or when the counter went backwards (the cgroup was recreated).
    pub fn observe(&mut self, key: &str, cumulative_ns: u64, at: Timestamp) -> Option<u64> {
        let new = Sample {
            cumulative_ns,
            at,
            seen_this_round: true,
        };
        let prev = match self.last.get_mut(key) {
            Some(prev) => std::mem::replace(prev, new),
            None => {
                self.last.insert(key.to_owned(), new);
                return None;
            }
        };
        let dt = at.as_nanosecond() - prev.at.as_nanosecond();
        let dcpu = cumulative_ns.checked_sub(prev.cumulative_ns)?;
        if dt <= 0 {
            return None;
        }
        let dt = u128::try_from(dt).ok()?;
        u64::try_from(u128::from(dcpu) * 1_000_000_000 / dt).ok()
    }

    /// [`CpuRateTracker::observe`] on a cgroup's stats read at `at`, packed as the
    /// builder's input (`key` is the cgroup path).
    pub fn usage(&mut self, key: &str, stats: CgroupStats, at: Timestamp) -> CgroupUsage {
        let cpu_nano_cores = stats
            .cpu_usage_nanos
            .and_then(|total| self.observe(key, total, at));
        CgroupUsage {
            stats,
            cpu_nano_cores,
        }
    }

    /// Ends a sampling round: forgets every key not observed since the previous call.
    pub fn end_round(&mut self) {
        self.last
            .retain(|_, s| std::mem::take(&mut s.seen_this_round));
    }

    /// How many keys are tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

/// One cgroup's usage as read in a sampling round: its stats and CPU rate (from
/// [`CpuRateTracker::observe`] on `stats.cpu_usage_nanos`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupUsage {
    pub stats: CgroupStats,
    pub cpu_nano_cores: Option<u64>,
}

/// A filesystem figure: the filesystem's totals (from `statvfs`) and what the object
/// itself uses on it (from `dir_usage`, or from the runtime for writable layers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsInput {
    pub filesystem: Option<nodelet_cgroups::FsStats>,
    pub used_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
}

impl FsInput {
    /// A whole filesystem: its own used bytes and inodes.
    pub fn whole(fs: nodelet_cgroups::FsStats) -> Self {
        FsInput {
            filesystem: Some(fs),
            used_bytes: Some(fs.used),
            inodes_used: Some(fs.inodes_used),
        }
    }

    /// A directory tree on a filesystem.
    pub fn dir(filesystem: Option<nodelet_cgroups::FsStats>, usage: DirUsage) -> Self {
        FsInput {
            filesystem,
            used_bytes: Some(usage.bytes),
            inodes_used: Some(usage.inodes),
        }
    }
}

/// A container of a pod (or a node system container such as `kubelet` or `pods`).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInput {
    pub name: String,
    pub start_time: Timestamp,
    pub usage: Option<CgroupUsage>,
    pub rootfs: Option<FsInput>,
    pub logs: Option<FsInput>,
}

/// A volume of a pod. `ephemeral` volumes (emptyDir not in memory, configMap, secret,
/// downwardAPI, projected) count towards the pod's ephemeral storage.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInput {
    pub name: String,
    pub fs: FsInput,
    pub ephemeral: bool,
}

/// A pod, as the integrator gathers it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInput {
    pub pod_ref: PodReference,
    pub start_time: Timestamp,
    /// The pod cgroup's usage.
    pub usage: Option<CgroupUsage>,
    pub containers: Vec<ContainerInput>,
    pub volumes: Vec<VolumeInput>,
    pub network: Option<NetworkStats>,
    /// The filesystem ephemeral storage lives on (the node fs): its totals.
    pub ephemeral_fs: Option<nodelet_cgroups::FsStats>,
    /// The pod's log directory; when None the containers' `logs` are summed instead.
    pub pod_logs: Option<DirUsage>,
}

/// The node, as the integrator gathers it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInput {
    pub node_name: String,
    pub start_time: Timestamp,
    /// The root cgroup's usage (for CPU).
    pub root: Option<CgroupUsage>,
    /// From `nodelet_cgroups::node_memory`.
    pub memory: Option<NodeMemory>,
    pub system_containers: Vec<ContainerInput>,
    pub network: Option<NetworkStats>,
    /// The filesystem of the kubelet root directory.
    pub fs: Option<nodelet_cgroups::FsStats>,
    pub image_fs: Option<FsInput>,
    pub container_fs: Option<FsInput>,
    /// `kernel.pid_max` and the number of running processes.
    pub rlimit: Option<(i64, i64)>,
}

fn cpu_stats(u: &CgroupUsage, now: Time) -> Option<CpuStats> {
    let total = u.stats.cpu_usage_nanos?;
    Some(CpuStats {
        time: now,
        usage_nano_cores: u.cpu_nano_cores,
        usage_core_nano_seconds: Some(total),
    })
}

fn memory_stats(s: &CgroupStats, now: Time) -> Option<MemoryStats> {
    let usage = s.memory_usage?;
    let available = match (s.memory_limit, s.memory_working_set) {
        (Some(limit), Some(ws)) => Some(limit.saturating_sub(ws)),
        _ => None,
    };
    Some(MemoryStats {
        time: now,
        available_bytes: available,
        usage_bytes: Some(usage),
        working_set_bytes: s.memory_working_set,
        rss_bytes: s.memory_rss,
        page_faults: s.page_faults,
        major_page_faults: s.major_page_faults,
    })
}

fn fs_stats(f: &FsInput, now: Time) -> FsStats {
    let total = f.filesystem;
    FsStats {
        time: now,
        available_bytes: total.map(|t| t.available),
        capacity_bytes: total.map(|t| t.capacity),
        used_bytes: f.used_bytes,
        inodes_free: total.map(|t| t.inodes_free),
        inodes: total.map(|t| t.inodes),
        inodes_used: f.inodes_used,
    }
}

fn container_stats(c: &ContainerInput, now: Time) -> ContainerStats {
    ContainerStats {
        name: c.name.clone(),
        start_time: Time(c.start_time),
        cpu: c.usage.as_ref().and_then(|u| cpu_stats(u, now)),
        memory: c.usage.as_ref().and_then(|u| memory_stats(&u.stats, now)),
        rootfs: c.rootfs.as_ref().map(|f| fs_stats(f, now)),
        logs: c.logs.as_ref().map(|f| fs_stats(f, now)),
    }
}

/// Adds what may be unknown, as upstream's `addUsage`: unknown plus known is known.
fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}

fn ephemeral_storage(p: &PodInput, now: Time) -> Option<FsStats> {
    let fs = p.ephemeral_fs?;
    let mut used = None;
    let mut inodes_used = None;
    for c in &p.containers {
        if let Some(r) = &c.rootfs {
            used = add(used, r.used_bytes);
            inodes_used = add(inodes_used, r.inodes_used);
        }
        if p.pod_logs.is_none()
            && let Some(l) = &c.logs
        {
            used = add(used, l.used_bytes);
            inodes_used = add(inodes_used, l.inodes_used);
        }
    }
    for v in p.volumes.iter().filter(|v| v.ephemeral) {
        used = add(used, v.fs.used_bytes);
        inodes_used = add(inodes_used, v.fs.inodes_used);
    }
    if let Some(l) = p.pod_logs {
        used = add(used, Some(l.bytes));
        inodes_used = add(inodes_used, Some(l.inodes));
    }
    Some(FsStats {
        time: now,
        available_bytes: Some(fs.available),
        capacity_bytes: Some(fs.capacity),
        used_bytes: used,
        inodes_free: Some(fs.inodes_free),
        inodes: Some(fs.inodes),
        inodes_used,
    })
}

/// Builds the `/stats/summary` answer from what was read at `now`.
pub fn build_summary(node: NodeInput, pods: Vec<PodInput>, now: Timestamp) -> Summary {
    let now = Time(now);
    let node_stats = NodeStats {
        node_name: node.node_name,
        system_containers: node
            .system_containers
            .iter()
            .map(|c| container_stats(c, now))
            .collect(),
        start_time: Time(node.start_time),
        cpu: node.root.as_ref().and_then(|u| cpu_stats(u, now)),
        memory: node.memory.map(|m| MemoryStats {
            time: now,
            available_bytes: Some(m.available),
            usage_bytes: Some(m.usage),
            working_set_bytes: Some(m.working_set),
            rss_bytes: m.rss,
            page_faults: m.page_faults,
            major_page_faults: m.major_page_faults,
        }),
        network: node.network,
        fs: node.fs.map(|f| fs_stats(&FsInput::whole(f), now)),
        runtime: (node.image_fs.is_some() || node.container_fs.is_some()).then(|| RuntimeStats {
            image_fs: node.image_fs.as_ref().map(|f| fs_stats(f, now)),
            container_fs: node.container_fs.as_ref().map(|f| fs_stats(f, now)),
        }),
        rlimit: node.rlimit.map(|(maxpid, curproc)| RlimitStats {
            time: now,
            maxpid: Some(maxpid),
            curproc: Some(curproc),
        }),
    };
    let pods = pods
        .iter()
        .map(|p| PodStats {
            pod_ref: p.pod_ref.clone(),
            start_time: Time(p.start_time),
            containers: p
                .containers
                .iter()
                .map(|c| container_stats(c, now))
                .collect(),
            cpu: p.usage.as_ref().and_then(|u| cpu_stats(u, now)),
            memory: p.usage.as_ref().and_then(|u| memory_stats(&u.stats, now)),
            network: p.network.clone(),
            volume_stats: p
                .volumes
                .iter()
                .map(|v| VolumeStats {
                    fs: fs_stats(&v.fs, now),
                    name: v.name.clone(),
                    pvc_ref: None,
                })
                .collect(),
            ephemeral_storage: ephemeral_storage(p, now),
            process_stats: p
                .usage
                .as_ref()
                .and_then(|u| u.stats.pids)
                .map(|n| ProcessStats {
                    process_count: Some(n),
                }),
        })
        .collect();
    Summary {
        node: node_stats,
        pods,
    }
}

#[cfg(test)]
#[path = "summary_tests.rs"]
mod tests;
