//! What the read-only port says about the node: the Node object (`GET /node`, a
//! nodelet addition while there is no apiserver to post it to) and upstream's stats
//! summary (`GET /stats/summary`), both gathered on request from the runtime, the
//! eviction loop's pressure state, the pod statuses and the cgroup files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nodelet_cgroups::{Allocatable, DirLimits, NodeCapacity, stats};
use nodelet_cri::runtime::ContainerdRuntime;
use tokio::sync::watch;

use crate::node::pressure::{Filesystems, Pressure};
use crate::node::status::{self, NodeInputs};
use crate::node::summary::{
    ContainerInput, CpuRateTracker, FsInput, NodeInput, PodInput, PodReference, Summary,
    VolumeInput, build_summary,
};
use crate::pod::cgroups::PodCgroups;
use crate::pod::status_store::PodStatuses;

/// The node as served.
pub struct NodeView {
    /// The runtime, for images and its version.
    pub runtime: Arc<ContainerdRuntime>,
    /// Name, addresses, capacity and allocatable, pod CIDR at start.
    pub base: NodeInputs,
    /// The pod CIDR in use now (the Node's, once the cluster assigns one).
    pub pod_cidr: watch::Receiver<Option<String>>,
    /// The eviction loop's conditions and taints.
    pub pressure: watch::Receiver<Pressure>,
    /// The pods.
    pub pods: watch::Receiver<PodStatuses>,
    /// The pod cgroups.
    pub cgroups: Arc<PodCgroups>,
    /// The root dir and image filesystem.
    pub fs: Filesystems,
    /// `--root-dir`'s `pods` holds emptyDirs; `--pod-logs-dir` the logs.
    pub pod_logs_dir: std::path::PathBuf,
    /// Turns cumulative CPU time into usageNanoCores between requests.
    pub cpu: Mutex<CpuRateTracker>,
}

impl std::fmt::Debug for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeView").finish_non_exhaustive()
    }
}

/// Capacity and allocatable as node status resource lists.
pub fn resource_lists(
    capacity: &NodeCapacity,
    allocatable: &Allocatable,
    max_pods: i64,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let list = |cpu_milli: i64, memory: i64, storage: i64, hugepages: &BTreeMap<u64, i64>| {
        let mut m = BTreeMap::new();
        let cpu = if cpu_milli % 1000 == 0 {
            (cpu_milli / 1000).to_string()
        } else {
            format!("{cpu_milli}m")
        };
        m.insert("cpu".to_owned(), Quantity(cpu));
        m.insert("memory".to_owned(), Quantity(binary_si(memory)));
        m.insert("ephemeral-storage".to_owned(), Quantity(binary_si(storage)));
        m.insert("pods".to_owned(), Quantity(max_pods.to_string()));
        for (size, bytes) in hugepages {
            let name = format!("hugepages-{}", binary_si(i64::try_from(*size).unwrap_or(0)));
            m.insert(name, Quantity(bytes.to_string()));
        }
        m
    };
    (
        list(
            capacity.cpu_milli,
            capacity.memory,
            capacity.ephemeral_storage,
            &capacity.hugepages,
        ),
        list(
            allocatable.cpu_milli,
            allocatable.memory,
            allocatable.ephemeral_storage,
            &allocatable.hugepages,
        ),
    )
}

/// A byte count in canonical binary-SI form, as Kubernetes prints quantities: the
/// largest of `Ki`…`Ei` that divides it exactly, else plain bytes.
fn binary_si(bytes: i64) -> String {
    if bytes != 0 {
        for (unit, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            if bytes % (1_i64 << shift) == 0 {
                return format!("{}{unit}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

impl NodeView {
    /// The Node object now.
    pub async fn node(&self) -> Node {
        let mut inputs = self.base.clone();
        inputs.pod_cidr = self.pod_cidr.borrow().clone();
        // The image list doubles as upstream's runtime health check: a runtime that
        // can't list its images is down, and the node is not ready.
        let list = self.runtime.containerd().list_images();
        match tokio::time::timeout(std::time::Duration::from_secs(5), list).await {
            Ok(Ok(images)) => inputs.images = images,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the runtime does not answer");
                inputs
                    .not_ready
                    .push("container runtime is down".to_owned());
            }
            Err(_) => {
                tracing::debug!("the runtime did not list its images within 5 s");
                inputs
                    .not_ready
                    .push("container runtime is down".to_owned());
            }
        }
        let pressure = self.pressure.borrow().clone();
        inputs.pressure_conditions = pressure.conditions;
        inputs.taints = pressure.taints;
        status::node(&inputs, jiff::Timestamp::now())
    }

    /// The stats summary now.
    pub fn summary(&self) -> Summary {
        let now = jiff::Timestamp::now();
        let layout = self.cgroups.manager().layout().clone();
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let mut usage = |cg: &str| stats::read(&layout, cg).ok().map(|s| cpu.usage(cg, s, now));
        let root_fs = nodelet_cgroups::statvfs(&self.fs.root_dir).ok();
        let image_fs = nodelet_cgroups::statvfs(&self.fs.image_dir).ok();
        let kubepods = self.cgroups.kubepods_path();
        let pods_container = ContainerInput {
            name: "pods".to_owned(),
            start_time: self.base.ready_since,
            usage: usage(&kubepods),
            rootfs: None,
            logs: None,
        };
        let node = NodeInput {
            node_name: self.base.name.clone(),
            start_time: self.base.ready_since,
            root: usage("/"),
            memory: nodelet_cgroups::node_memory(&layout, Path::new("/proc")).ok(),
            system_containers: vec![pods_container],
            network: None,
            fs: root_fs,
            image_fs: image_fs.map(FsInput::whole),
            container_fs: image_fs.map(FsInput::whole),
            rlimit: crate::node::pressure::pid_counts()
                .and_then(|(max, cur)| Some((i64::try_from(max).ok()?, i64::try_from(cur).ok()?))),
        };
        let limits = DirLimits::default();
        let pods_map = self.pods.borrow().clone();
        let mut pods = Vec::new();
        for pod in pods_map.values() {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            let start_time = status.start_time.as_ref().map_or(now, |t| t.0);
            let cgroup = self.cgroups.pod_cgroup(pod);
            let mut containers = Vec::new();
            for cs in status.container_statuses.iter().flatten() {
                let Some(running) = cs.state.as_ref().and_then(|s| s.running.as_ref()) else {
                    continue;
                };
                let id = cs
                    .container_id
                    .as_deref()
                    .and_then(|id| id.strip_prefix("containerd://"));
                let container_usage = match (&cgroup, id) {
                    (Some(cg), Some(id)) => usage(&self.cgroups.container_cgroup(cg, id)),
                    _ => None,
                };
                let log_dir = self
                    .pod_logs_dir
                    .join(format!("{namespace}_{name}_{uid}"))
                    .join(&cs.name);
                containers.push(ContainerInput {
                    name: cs.name.clone(),
                    start_time: running.started_at.as_ref().map_or(start_time, |t| t.0),
                    usage: container_usage,
                    rootfs: None,
                    logs: nodelet_cgroups::dir_usage(&log_dir, limits)
                        .ok()
                        .map(|u| FsInput::dir(root_fs, u)),
                });
            }
            let volumes = self.volume_usages(&uid, root_fs, limits);
            let pod_logs = nodelet_cgroups::dir_usage(
                &self.pod_logs_dir.join(format!("{namespace}_{name}_{uid}")),
                limits,
            )
            .ok();
            pods.push(PodInput {
                pod_ref: PodReference {
                    name,
                    namespace,
                    uid,
                },
                start_time,
                usage: cgroup.as_deref().and_then(&mut usage),
                containers,
                volumes,
                network: None,
                ephemeral_fs: root_fs,
                pod_logs,
            });
        }
        cpu.end_round();
        build_summary(node, pods, now)
    }

    /// The pod's emptyDir volumes (`<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/*`).
    fn volume_usages(
        &self,
        uid: &str,
        root_fs: Option<nodelet_cgroups::FsStats>,
        limits: DirLimits,
    ) -> Vec<VolumeInput> {
        let dir = self
            .fs
            .root_dir
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let usage = nodelet_cgroups::dir_usage(&e.path(), limits).ok()?;
                Some(VolumeInput {
                    name: e.file_name().to_string_lossy().into_owned(),
                    fs: FsInput::dir(root_fs, usage),
                    ephemeral: true,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_print_like_upstream() {
        let cap = NodeCapacity {
            cpu_milli: 2000,
            memory: 24 << 30,
            ephemeral_storage: 1000,
            pids: 4_194_304,
            hugepages: BTreeMap::from([(2 << 20, 0)]),
        };
        let alloc = Allocatable {
            cpu_milli: 1900,
            memory: (24 << 30) - (100 << 20),
            ephemeral_storage: 900,
            pids: 0,
            hugepages: BTreeMap::new(),
        };
        let (c, a) = resource_lists(&cap, &alloc, 110);
        assert_eq!(c["cpu"].0, "2");
        assert_eq!(c["memory"].0, "24Gi");
        assert_eq!(c["pods"].0, "110");
        assert_eq!(c["hugepages-2Mi"].0, "0");
        assert_eq!(a["cpu"].0, "1900m");
        assert_eq!(a["memory"].0, "24476Mi");
        assert_eq!(a["ephemeral-storage"].0, "900");
    }
}
