//! Requests and limits turned into cgroup values: pod cgroups, container resources for
//! the CRI, OOM score adjustments and the QoS-level cgroups. Pure functions.
//!
//! Ported from upstream:
//! - `pkg/kubelet/cm/helpers_linux.go` (`MilliCPUToShares`, `MilliCPUToQuota`,
//!   `HugePageLimits`, `ResourceConfigForPod`);
//! - `staging/src/k8s.io/component-helpers/resource/helpers.go` (`PodRequests`,
//!   `PodLimits`: init containers and sidecars, overhead, pod-level resources);
//! - `pkg/kubelet/kuberuntime/kuberuntime_container_linux.go`
//!   (`generateLinuxContainerResources`, `calculateLinuxResources`,
//!   `GetHugepageLimitsFromResources`);
//! - `pkg/kubelet/qos/policy.go` (`GetContainerOOMScoreAdjust`);
//! - `pkg/kubelet/cm/qos_container_manager_linux.go` (`setCPUCgroupConfig`,
//!   `setHugePagesConfig`, `setMemoryQoS`);
//! - `pkg/kubelet/cm/cgroup_manager_linux.go` (`getCPUWeight`, shares → v2 weight).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use nodelet_manifests::quantity::Quantity;

use crate::layout::CgroupVersion;
use crate::qos::{
    QosClass, ResourceList, container_limits, container_requests, is_supported_pod_level_resource,
    pod_level_resources_set, qos_class, requirements_limits, requirements_requests,
};

/// The smallest `cpu.shares` (the kernel's minimum).
pub const MIN_SHARES: u64 = 2;
/// The largest `cpu.shares`.
pub const MAX_SHARES: u64 = 262_144;
/// Shares per whole CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// The default CFS period, 100 ms in microseconds.
pub const QUOTA_PERIOD: u64 = 100_000;
/// The smallest CFS quota the kubelet writes (1 ms).
pub const MIN_QUOTA_PERIOD: i64 = 1000;
/// `memory.min` (cgroup v2).
pub const CGROUP2_MEMORY_MIN: &str = "memory.min";
/// `memory.high` (cgroup v2).
pub const CGROUP2_MEMORY_HIGH: &str = "memory.high";
/// The hugetlb limit upstream gives the QoS cgroups ("unbounded"): `1 << 62`.
pub const UNBOUNDED_HUGEPAGE_LIMIT: i64 = 1 << 62;
/// The default MemoryQoS throttling factor (`memoryThrottlingFactor`).
pub const DEFAULT_MEMORY_THROTTLING_FACTOR: f64 = 0.9;

const MILLI_CPU_TO_CPU: i64 = 1000;
const NANOS: i128 = 1_000_000_000;

/// CPU shares for a CPU request in millicores: `milli * 1024 / 1000`, at least 2 (also
/// for 0, the kernel's real minimum) and at most 262144.
#[must_use]
pub fn milli_cpu_to_shares(milli_cpu: i64) -> u64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    let shares = milli_cpu.saturating_mul(SHARES_PER_CPU as i64) / MILLI_CPU_TO_CPU;
    u64::try_from(shares)
        .unwrap_or(MIN_SHARES)
        .clamp(MIN_SHARES, MAX_SHARES)
}

/// The CFS quota for a CPU limit in millicores over `period` µs: 0 for no limit,
/// otherwise `milli * period / 1000`, at least 1 ms. (Upstream uses `period` only with
/// the `CustomCPUCFSQuotaPeriod` gate, and without it refuses a period other than
/// 100 ms, so taking the period as given is the same.)
#[must_use]
pub fn milli_cpu_to_quota(milli_cpu: i64, period: u64) -> i64 {
    if milli_cpu == 0 {
        return 0;
    }
    let period = i64::try_from(period).unwrap_or(i64::MAX);
    let quota = milli_cpu.saturating_mul(period) / MILLI_CPU_TO_CPU;
    quota.max(MIN_QUOTA_PERIOD)
}

/// cgroup v2 `cpu.weight` for v1 shares: `1 + ((shares - 2) * 9999) / 262142`, mapping
/// [2, 262144] onto [1, 10000] (kubelet `getCPUWeight`, runc's
/// `ConvertCPUSharesToCgroupV2Value` before runc 1.3.2).
#[must_use]
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let shares = shares.max(MIN_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Upstream `cm.ResourceConfig`: what a pod or QoS cgroup is set to. `None` leaves the
/// kernel's value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    /// `cpu.shares` (v1) / converted to `cpu.weight` (v2).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs; −1 is unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; −1 is unlimited.
    pub memory: Option<i64>,
    /// Max number of tasks; −1 is unlimited.
    pub pids_limit: Option<i64>,
    /// Huge page size in bytes → limit in bytes.
    pub hugepage_limit: BTreeMap<u64, i64>,
    /// cgroup v2 files written as is (`memory.min`, ...).
    pub unified: BTreeMap<String, String>,
}

/// A quantity's integer value, rounded up (upstream `Quantity.Value`).
pub(crate) fn value(q: Quantity) -> i64 {
    let n = q.nanos();
    let v = n.div_euclid(NANOS) + i128::from(n.rem_euclid(NANOS) != 0);
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A quantity's milli-value, rounded up (upstream `Quantity.MilliValue`).
pub(crate) fn milli_value(q: Quantity) -> i64 {
    let v = q.milli_value_ceil();
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

fn get(list: &ResourceList, name: &str) -> Option<Quantity> {
    list.get(name).copied()
}

fn add_list(into: &mut ResourceList, from: &ResourceList) {
    for (name, q) in from {
        let sum = into.entry(name.clone()).or_insert(Quantity::from_nanos(0));
        *sum = Quantity::from_nanos(sum.nanos() + q.nanos());
    }
}

fn max_list(into: &mut ResourceList, from: &ResourceList) {
    for (name, q) in from {
        match into.get(name) {
            Some(cur) if cur >= q => {}
            _ => {
                into.insert(name.clone(), *q);
            }
        }
    }
}

/// Whether an init container is a sidecar (`restartPolicy: Always`).
fn is_restartable_init(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// component-helpers `aggregateContainerResourcesByFn`: the sum over app containers and
/// sidecars, then the max with each init container's need (itself plus the sidecars
/// started before it).
fn aggregate(spec: &PodSpec, get: impl Fn(&Container) -> ResourceList) -> ResourceList {
    let mut result = ResourceList::new();
    for c in &spec.containers {
        add_list(&mut result, &get(c));
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for c in spec.init_containers.iter().flatten() {
        let res = get(c);
        let need = if is_restartable_init(c) {
            add_list(&mut result, &res);
            add_list(&mut sidecars, &res);
            sidecars.clone()
        } else {
            let mut combined = res;
            add_list(&mut combined, &sidecars);
            combined
        };
        max_list(&mut init, &need);
    }
    max_list(&mut result, &init);
    result
}

/// The pod's effective requests (upstream `PodRequests` with pod-level resources and
/// overhead).
#[must_use]
pub fn pod_requests(spec: &PodSpec) -> ResourceList {
    let mut reqs = aggregate(spec, container_requests);
    if pod_level_resources_set(spec) {
        for (name, q) in requirements_requests(spec.resources.as_ref()) {
            if is_supported_pod_level_resource(&name) {
                reqs.insert(name, q);
            }
        }
    }
    add_list(&mut reqs, &crate::qos::parse_list(spec.overhead.as_ref()));
    reqs
}

/// The pod's effective limits (upstream `PodLimits`: overhead is added only to
/// non-zero limits).
#[must_use]
pub fn pod_limits(spec: &PodSpec) -> ResourceList {
    let mut limits = aggregate(spec, container_limits);
    if pod_level_resources_set(spec) {
        for (name, q) in requirements_limits(spec.resources.as_ref()) {
            if is_supported_pod_level_resource(&name) {
                limits.insert(name, q);
            }
        }
    }
    for (name, q) in crate::qos::parse_list(spec.overhead.as_ref()) {
        if let Some(cur) = limits.get_mut(&name)
            && cur.nanos() != 0
        {
            *cur = Quantity::from_nanos(cur.nanos() + q.nanos());
        }
    }
    limits
}

/// The page size in bytes of a `hugepages-<size>` resource name.
#[must_use]
pub fn hugepage_size(resource: &str) -> Option<u64> {
    let size = resource.strip_prefix("hugepages-")?;
    let q = Quantity::parse(size).ok()?;
    u64::try_from(value(q)).ok().filter(|s| *s > 0)
}

/// Upstream `HugePageLimits`: page size → summed bytes.
#[must_use]
pub fn hugepage_limits(list: &ResourceList) -> BTreeMap<u64, i64> {
    let mut out = BTreeMap::new();
    for (name, q) in list {
        if let Some(size) = hugepage_size(name) {
            *out.entry(size).or_insert(0) += value(*q);
        }
    }
    out
}

/// The pod cgroup's values, as upstream `ResourceConfigForPod`.
///
/// Guaranteed pods get shares, quota, period and memory; Burstable pods get shares, and
/// quota/period (memory) only when every container, init containers included, sets a
/// cpu (memory) limit, or pod-level limits are set; BestEffort pods get 2 shares. With
/// `enforce_cpu_limits` false the quota is −1. With `enforce_memory_qos` the summed
/// memory request becomes `memory.min`.
#[must_use]
pub fn pod_resources(
    spec: &PodSpec,
    enforce_cpu_limits: bool,
    cpu_period: u64,
    enforce_memory_qos: bool,
) -> ResourceConfig {
    let reqs = pod_requests(spec);
    let limits = pod_limits(spec);

    let mut cpu_limits_declared = true;
    let mut memory_limits_declared = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let l = container_limits(c);
        if get(&l, "cpu").is_none_or(|q| q.nanos() == 0) {
            cpu_limits_declared = false;
        }
        if get(&l, "memory").is_none_or(|q| q.nanos() == 0) {
            memory_limits_declared = false;
        }
    }
    if pod_level_resources_set(spec) {
        let l = requirements_limits(spec.resources.as_ref());
        if get(&l, "cpu").is_some_and(|q| q.nanos() != 0) {
            cpu_limits_declared = true;
        }
        if get(&l, "memory").is_some_and(|q| q.nanos() != 0) {
            memory_limits_declared = true;
        }
    }

    let cpu_requests = get(&reqs, "cpu").map_or(0, milli_value);
    let cpu_limits = get(&limits, "cpu").map_or(0, milli_value);
    let memory_limits = get(&limits, "memory").map_or(0, value);

    let cpu_shares = milli_cpu_to_shares(cpu_requests);
    let cpu_quota = if enforce_cpu_limits {
        milli_cpu_to_quota(cpu_limits, cpu_period)
    } else {
        -1
    };

    let mut result = ResourceConfig::default();
    match qos_class(spec) {
        QosClass::Guaranteed => {
            result.cpu_shares = Some(cpu_shares);
            result.cpu_quota = Some(cpu_quota);
            result.cpu_period = Some(cpu_period);
            result.memory = Some(memory_limits);
        }
        QosClass::Burstable => {
            result.cpu_shares = Some(cpu_shares);
            if cpu_limits_declared {
                result.cpu_quota = Some(cpu_quota);
                result.cpu_period = Some(cpu_period);
            }
            if memory_limits_declared {
                result.memory = Some(memory_limits);
            }
        }
        QosClass::BestEffort => result.cpu_shares = Some(MIN_SHARES),
    }
    result.hugepage_limit = hugepage_limits(&reqs);

    if enforce_memory_qos {
        let memory_min = get(&reqs, "memory").map_or(0, value);
        if memory_min > 0 {
            result
                .unified
                .insert(CGROUP2_MEMORY_MIN.to_owned(), memory_min.to_string());
        }
    }
    result
}

/// What the container-level values depend on besides the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    /// The machine's memory (cadvisor `MemoryCapacity`), for the OOM score.
    pub memory_capacity: i64,
    /// Node allocatable memory, for `memory.high` of a container without a limit.
    pub allocatable_memory: i64,
    /// `--cpu-cfs-quota` (`cpuCFSQuota`).
    pub enforce_cpu_limits: bool,
    /// `--cpu-cfs-quota-period` in µs.
    pub cpu_period: u64,
    /// The node's cgroup version.
    pub cgroup_version: CgroupVersion,
    /// The `MemoryQoS` feature (applies on cgroup v2 only).
    pub memory_qos: bool,
    /// `memoryThrottlingFactor` (0.9 by default).
    pub memory_throttling_factor: f64,
    /// The page size `memory.high` is rounded down to.
    pub page_size: i64,
    /// `singleProcessOOMKill`: when false on cgroup v2 the container gets
    /// `memory.oom.group=1`.
    pub single_process_oom_kill: bool,
    /// The host's huge page sizes in bytes; each gets a limit (0 unless requested).
    pub hugepage_sizes: Vec<u64>,
}

impl ContainerSettings {
    /// Upstream's defaults for a node with `memory_capacity` bytes (also taken as the
    /// allocatable memory until the caller sets it).
    #[must_use]
    pub fn new(memory_capacity: i64, cgroup_version: CgroupVersion) -> Self {
        ContainerSettings {
            memory_capacity,
            allocatable_memory: memory_capacity,
            enforce_cpu_limits: true,
            cpu_period: QUOTA_PERIOD,
            cgroup_version,
            memory_qos: false,
            memory_throttling_factor: DEFAULT_MEMORY_THROTTLING_FACTOR,
            page_size: 4096,
            single_process_oom_kill: false,
            hugepage_sizes: Vec::new(),
        }
    }
}

/// The CRI `LinuxContainerResources` upstream computes for a container. Zero means
/// "not set", as in the CRI message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerResources {
    /// CPU shares (always set; 2 for no request).
    pub cpu_shares: u64,
    /// CFS quota in µs (0 = none).
    pub cpu_quota: i64,
    /// CFS period in µs (0 when quota isn't enforced).
    pub cpu_period: i64,
    /// Memory limit in bytes (0 = none).
    pub memory_limit: i64,
    /// `oom_score_adj` for the container's processes.
    pub oom_score_adj: i64,
    /// Huge page size in bytes → limit in bytes.
    pub hugepage_limits: BTreeMap<u64, i64>,
    /// cgroup v2 files (`memory.min`, `memory.high`, `memory.oom.group`).
    pub unified: BTreeMap<String, String>,
}

/// A container's resources as upstream `generateLinuxContainerResources`.
#[must_use]
pub fn container_resources(
    spec: &PodSpec,
    c: &Container,
    settings: &ContainerSettings,
) -> ContainerResources {
    let raw_requests =
        crate::qos::parse_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
    let limits = container_limits(c);
    let cpu_limit = get(&limits, "cpu");
    let memory_limit = get(&limits, "memory").map_or(0, value);

    // calculateLinuxResources: a missing cpu request defaults to the limit.
    let cpu_request = get(&raw_requests, "cpu").or(cpu_limit);
    let mut out = ContainerResources {
        cpu_shares: milli_cpu_to_shares(cpu_request.map_or(0, milli_value)),
        memory_limit,
        ..Default::default()
    };
    if settings.enforce_cpu_limits {
        out.cpu_period = i64::try_from(settings.cpu_period).unwrap_or(i64::MAX);
        out.cpu_quota = milli_cpu_to_quota(cpu_limit.map_or(0, milli_value), settings.cpu_period);
    }
    let v2 = settings.cgroup_version == CgroupVersion::V2;
    if v2 && !settings.single_process_oom_kill {
        out.unified
            .insert("memory.oom.group".to_owned(), "1".to_owned());
    }
    out.oom_score_adj = oom_score_adj(spec, c, settings.memory_capacity);

    // GetHugepageLimitsFromResources: every host page size, 0 unless limited.
    for size in &settings.hugepage_sizes {
        out.hugepage_limits.insert(*size, 0);
    }
    for (name, q) in &limits {
        if let Some(size) = hugepage_size(name)
            && out.hugepage_limits.contains_key(&size)
        {
            out.hugepage_limits.insert(size, value(*q));
        }
    }

    if settings.memory_qos && v2 {
        let memory_request = get(&container_requests(c), "memory").map_or(0, value);
        if memory_request != 0 {
            out.unified
                .insert(CGROUP2_MEMORY_MIN.to_owned(), memory_request.to_string());
        }
        if memory_request != memory_limit {
            let ceiling = if memory_limit != 0 {
                memory_limit
            } else {
                settings.allocatable_memory
            };
            let mut memory_high = 0;
            if ceiling > 0 && settings.page_size > 0 {
                let page = settings.page_size as f64;
                let high = (memory_request as f64
                    + (ceiling as f64 - memory_request as f64) * settings.memory_throttling_factor)
                    / page;
                memory_high = (high.floor() as i64) * settings.page_size;
            }
            if memory_high != 0 && memory_high > memory_request {
                out.unified
                    .insert(CGROUP2_MEMORY_HIGH.to_owned(), memory_high.to_string());
            }
        }
    }
    out
}

/// `oom_score_adj` of a Guaranteed or node-critical pod's containers.
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// `oom_score_adj` of a BestEffort pod's containers.
pub const BESTEFFORT_OOM_SCORE_ADJ: i64 = 1000;
/// The priority from which a pod counts as critical (`scheduling.SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Whether the pod is node-critical (`types.IsNodeCriticalPod`): priority class
/// `system-node-critical`, and when `priority` is set it is at least the system-critical
/// priority. (Upstream also counts static and mirror pods as critical whatever their
/// priority; every pod this function is asked about carries its resolved class name.)
#[must_use]
pub fn is_node_critical(spec: &PodSpec) -> bool {
    spec.priority_class_name.as_deref() == Some("system-node-critical")
        && spec.priority.is_none_or(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// The container's `oom_score_adj`, as upstream `GetContainerOOMScoreAdjust`.
///
/// Node-critical and Guaranteed: −997; BestEffort: 1000; Burstable:
/// `1000 − 1000·request/capacity` clamped to [3, 999]; a sidecar never scores above the
/// regular container with the smallest memory request.
#[must_use]
pub fn oom_score_adj(spec: &PodSpec, c: &Container, memory_capacity: i64) -> i64 {
    if is_node_critical(spec) {
        return GUARANTEED_OOM_SCORE_ADJ;
    }
    match qos_class(spec) {
        QosClass::Guaranteed => return GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => return BESTEFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {}
    }
    let capacity = memory_capacity.max(1);
    let memory_request = |c: &Container| get(&container_requests(c), "memory").map_or(0, value);
    let score = |request: i64| {
        let scaled = i128::from(request) * 1000 / i128::from(capacity);
        1000 - i64::try_from(scaled).unwrap_or(i64::MAX)
    };
    // Pod-level memory requests: what the containers don't claim is shared equally
    // (upstream `remainingPodMemReqPerContainer`).
    let remaining = if pod_level_requests_set(spec) {
        remaining_pod_memory_per_container(spec)
    } else {
        0
    };
    let mut adj = score(memory_request(c) + remaining);

    let is_sidecar = is_restartable_init(c)
        && spec
            .init_containers
            .iter()
            .flatten()
            .any(|i| i.name == c.name);
    if is_sidecar && let Some(min) = spec.containers.iter().map(memory_request).min() {
        adj = adj.min(score(min + remaining));
    }

    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ {
        return 1000 + GUARANTEED_OOM_SCORE_ADJ;
    }
    if adj == BESTEFFORT_OOM_SCORE_ADJ {
        return adj - 1;
    }
    adj
}

/// component-helpers `IsPodLevelRequestsSet`.
fn pod_level_requests_set(spec: &PodSpec) -> bool {
    spec.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.keys().any(|k| is_supported_pod_level_resource(k)))
}

/// policy.go `remainingPodMemReqPerContainer`: (pod memory request − the containers'
/// aggregated memory requests) / number of containers, init containers included.
fn remaining_pod_memory_per_container(spec: &PodSpec) -> i64 {
    let pod_memory =
        crate::qos::parse_list(spec.resources.as_ref().and_then(|r| r.requests.as_ref()))
            .get("memory")
            .map_or(0, |q| value(*q));
    if pod_memory == 0 {
        return 0;
    }
    let n = spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len);
    let containers = get(&aggregate(spec, container_requests), "memory").map_or(0, value);
    (pod_memory - containers) / i64::try_from(n.max(1)).unwrap_or(1)
}

/// The QoS-level cgroups' values (`/kubepods` itself for Guaranteed, `burstable`,
/// `besteffort`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QosResources {
    /// Extra values for the `kubepods` cgroup (MemoryQoS `memory.min`, hugetlb).
    pub guaranteed: ResourceConfig,
    /// `kubepods/burstable`.
    pub burstable: ResourceConfig,
    /// `kubepods/besteffort`.
    pub besteffort: ResourceConfig,
}

/// The QoS cgroups' values for the active pods, as upstream's QoS container manager
/// `UpdateCgroups`: BestEffort 2 shares, Burstable the shares of the summed burstable
/// requests, every class an unbounded hugetlb limit for each of the host's
/// `hugepage_sizes`, and with MemoryQoS on cgroup v2 `memory.min` = the burstable
/// requests (burstable) and guaranteed + burstable requests (kubepods).
#[must_use]
pub fn qos_level_resources(
    pods: &[&PodSpec],
    cgroup_version: CgroupVersion,
    memory_qos: bool,
    hugepage_sizes: &[u64],
) -> QosResources {
    let mut burstable_cpu = 0_i64;
    let mut burstable_memory = 0_i64;
    let mut guaranteed_memory = 0_i64;
    for spec in pods {
        let class = qos_class(spec);
        if class == QosClass::BestEffort {
            continue;
        }
        let reqs = pod_requests(spec);
        let memory = get(&reqs, "memory").map_or(0, value);
        if class == QosClass::Burstable {
            burstable_cpu += get(&reqs, "cpu").map_or(0, milli_value);
            burstable_memory += memory;
        } else {
            guaranteed_memory += memory;
        }
    }
    let mut out = QosResources::default();
    out.besteffort.cpu_shares = Some(MIN_SHARES);
    out.burstable.cpu_shares = Some(milli_cpu_to_shares(burstable_cpu));
    for rc in [&mut out.guaranteed, &mut out.burstable, &mut out.besteffort] {
        for size in hugepage_sizes {
            rc.hugepage_limit.insert(*size, UNBOUNDED_HUGEPAGE_LIMIT);
        }
    }
    if memory_qos && cgroup_version == CgroupVersion::V2 {
        let guaranteed_min = guaranteed_memory + burstable_memory;
        if burstable_memory > 0 {
            out.burstable
                .unified
                .insert(CGROUP2_MEMORY_MIN.to_owned(), burstable_memory.to_string());
        }
        if guaranteed_min > 0 {
            out.guaranteed
                .unified
                .insert(CGROUP2_MEMORY_MIN.to_owned(), guaranteed_min.to_string());
        }
    }
    out
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
