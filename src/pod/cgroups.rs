//! The agent's side of the cgroup hierarchy: at start the `kubepods` QoS hierarchy
//! limited to node allocatable; per pod, its `pod<uid>` cgroup with the pod's summed
//! limits and `--pod-max-pids`, made before the sandbox and removed after the last
//! container; per container, the values runc writes. The QoS levels' shares follow the
//! active pods, as upstream's QoS container manager updates them on each pod sync.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use nodelet_cgroups::values::{self, container_resources, qos_level_resources};
use nodelet_cgroups::{
    CgroupDriver, CgroupError, CgroupManager, ContainerSettings, Layout, QosClass, ResourceConfig,
    pod_cgroup_name, qos_class,
};
use tracing::{debug, warn};

use crate::cli::resources::ResourceSettings;

/// The pod cgroups of this node.
#[derive(Debug)]
pub struct PodCgroups {
    manager: CgroupManager,
    cgroup_root: String,
    settings: ResourceSettings,
    container: ContainerSettings,
    kubepods: ResourceConfig,
    /// The pods with a cgroup, by UID, for the QoS levels' values (the worker's own
    /// copy of the pod, shared).
    active: Mutex<BTreeMap<String, Arc<Pod>>>,
    /// Held from reading `active` to the end of writing the QoS levels, so the last
    /// write is always from the latest set of pods: two pods starting together each
    /// update the levels, and without it the one whose snapshot lacked the other could
    /// write last (the Burstable level left at 2 shares beside a Burstable pod).
    qos_writes: Mutex<()>,
}

impl PodCgroups {
    /// Creates (or updates) the QoS hierarchy under `cgroup_root`: `kubepods` with
    /// `kubepods` (node allocatable), then `burstable` and `besteffort`. With the
    /// systemd driver, connects to systemd on the system bus first.
    ///
    /// # Errors
    /// systemd's bus can't be reached, a cgroup can't be made or the kernel (or
    /// systemd) refuses a value.
    pub fn setup(
        layout: Layout,
        cgroup_root: &str,
        settings: ResourceSettings,
        container: ContainerSettings,
        kubepods: ResourceConfig,
    ) -> Result<Self, CgroupError> {
        let mut manager =
            CgroupManager::new(layout).with_hugepage_sizes(container.hugepage_sizes.clone());
        if settings.cgroup_driver == CgroupDriver::Systemd {
            let bus = nodelet_cgroups::SystemdBus::system()?;
            manager = manager.with_systemd(std::sync::Arc::new(bus));
        }
        let this = PodCgroups {
            manager,
            cgroup_root: cgroup_root.to_owned(),
            settings,
            container,
            kubepods,
            active: Mutex::new(BTreeMap::new()),
            qos_writes: Mutex::new(()),
        };
        if this.settings.cgroups_per_qos {
            this.update_qos(&[])?;
        }
        Ok(this)
    }

    /// The manager (for stats and the eviction manager's notifier).
    pub fn manager(&self) -> &CgroupManager {
        &self.manager
    }

    /// The `kubepods` cgroup's memory limit (node allocatable when `pods` is enforced).
    pub fn allocatable_memory(&self) -> u64 {
        self.kubepods
            .memory
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(u64::MAX)
    }

    /// `--cgroup-root`.
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The pod's cgroup in the driver's form (upstream's `cgroupManager.Name`):
    /// `/kubepods/burstable/pod<uid>`, or with the systemd driver
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
    /// (the runtime turns that into runc's `slice:cri-containerd:<id>`). `None`
    /// without `--cgroups-per-qos`.
    pub fn pod_cgroup(&self, pod: &Pod) -> Option<String> {
        if !self.settings.cgroups_per_qos {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let uid = pod.metadata.uid.as_deref()?;
        let name = pod_cgroup_name(&self.cgroup_root, qos_class(spec), uid);
        Some(self.manager.path(&name))
    }

    /// The `kubepods` cgroup in the driver's form (`/kubepods`, `/kubepods.slice`), for
    /// stats and memory notifications.
    pub fn kubepods_path(&self) -> String {
        self.manager
            .path(&nodelet_cgroups::manager::kubepods_name(&self.cgroup_root))
    }

    /// Where the runtime puts container `id` of the pod whose cgroup is `pod_cgroup`
    /// (from [`PodCgroups::pod_cgroup`]): `<pod>/<id>`, or with the systemd driver
    /// runc's scope `<pod slice>/cri-containerd-<id>.scope`.
    pub fn container_cgroup(&self, pod_cgroup: &str, id: &str) -> String {
        let pod_cgroup = pod_cgroup.trim_end_matches('/');
        match self.manager.driver() {
            CgroupDriver::Cgroupfs => format!("{pod_cgroup}/{id}"),
            CgroupDriver::Systemd => format!(
                "{pod_cgroup}/{}-{id}.scope",
                nodelet_cri::runtime::spec::SYSTEMD_SCOPE_PREFIX
            ),
        }
    }

    /// Makes the pod's cgroup with its values (upstream's `podContainerManager.EnsureExists`)
    /// and brings the QoS levels up to date.
    ///
    /// # Errors
    /// A cgroup that can't be made or a value the kernel refuses.
    pub fn ensure_pod(&self, pod: &Arc<Pod>) -> Result<(), CgroupError> {
        let (Some(name), Some(spec), Some(uid)) = (
            self.pod_cgroup(pod),
            pod.spec.as_ref(),
            pod.metadata.uid.as_deref(),
        ) else {
            return Ok(());
        };
        let mut rc = values::pod_resources(
            spec,
            self.settings.cpu_cfs_quota,
            self.settings.cpu_period_us,
            self.settings.memory_qos,
        );
        rc.pids_limit = self.settings.pod_pids_limit;
        let newly = {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            active.insert(uid.to_owned(), Arc::clone(pod)).is_none()
        };
        if newly {
            self.update_qos_from_active()?;
        }
        if self.manager.exists(&name) {
            self.manager.update(&name, &rc)
        } else {
            debug!(cgroup = %name, "creating the pod cgroup");
            self.manager.create(&name, &rc)
        }
    }

    /// Removes a pod's cgroups (with whatever runc left in them) once its containers
    /// are gone, and updates the QoS levels.
    pub fn remove_pod(&self, uid: &str, cgroups: &[String]) {
        for name in cgroups {
            self.kill_left_processes(name);
            if let Err(e) = self.manager.destroy(name) {
                warn!(cgroup = %name, error = %e, "pod cgroup not removed");
            }
        }
        let removed = {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            active.remove(uid).is_some()
        };
        if removed && let Err(e) = self.update_qos_from_active() {
            warn!(error = %e, "QoS cgroups not updated");
        }
    }

    /// Kills what is left in a pod's cgroup (a pause process whose shim died, a
    /// process moved in by hand) so that the cgroup can go, as upstream's
    /// `podContainerManager.Destroy` does (`tryKillingCgroupProcesses`): SIGKILL to
    /// every process of the cgroup and its children, up to five rounds. Only the
    /// pod's own cgroup, which nodelet made under its `kubepods` hierarchy.
    fn kill_left_processes(&self, name: &str) {
        // Nothing outside this pod's own `pod<uid>` cgroup under the hierarchy this
        // agent made, whatever a label said.
        let ours = [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .iter()
        .any(|class| {
            // `<root>/kubepods[/<qos>]/pod`, then the UID.
            let prefix = pod_cgroup_name(&self.cgroup_root, *class, "");
            name.strip_prefix(&prefix)
                .is_some_and(|uid| !uid.is_empty() && !uid.contains('/'))
        });
        if !ours {
            return;
        }
        let mut pause = std::time::Duration::from_millis(50);
        for round in 0..5 {
            let pids = self.manager.pids(name);
            if pids.is_empty() {
                return;
            }
            if round == 0 {
                warn!(cgroup = %name, ?pids, "killing processes left in the pod cgroup");
            }
            for pid in pids {
                match nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                ) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => warn!(cgroup = %name, pid, error = %e, "cannot kill a process"),
                }
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
    }

    /// The runtime values of container `c` of a pod with `spec`.
    pub fn container_resources(
        &self,
        spec: &PodSpec,
        c: &Container,
    ) -> nodelet_cri::runtime::ContainerResources {
        let r = container_resources(spec, c, &self.container);
        nodelet_cri::runtime::ContainerResources {
            cpu_period: u64::try_from(r.cpu_period).ok().filter(|p| *p > 0),
            cpu_quota: (r.cpu_quota != 0).then_some(r.cpu_quota),
            cpu_shares: Some(r.cpu_shares),
            memory_limit: (r.memory_limit != 0).then_some(r.memory_limit),
            oom_score_adj: i32::try_from(r.oom_score_adj).ok(),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|(size, limit)| (*size, u64::try_from(*limit).unwrap_or(0)))
                .collect(),
            unified: r.unified.into_iter().collect(),
        }
    }

    fn update_qos_from_active(&self) -> Result<(), CgroupError> {
        if !self.settings.cgroups_per_qos {
            return Ok(());
        }
        let _writing = self.qos_writes.lock().unwrap_or_else(|e| e.into_inner());
        let pods: Vec<Arc<Pod>> = {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            active.values().cloned().collect()
        };
        let refs: Vec<&PodSpec> = pods.iter().filter_map(|p| p.spec.as_ref()).collect();
        self.update_qos(&refs)
    }

    fn update_qos(&self, pods: &[&PodSpec]) -> Result<(), CgroupError> {
        let qos = qos_level_resources(
            pods,
            self.manager.layout().version(),
            self.settings.memory_qos,
            &self.container.hugepage_sizes,
        );
        self.manager
            .ensure_qos_hierarchy(&self.cgroup_root, &self.kubepods, &qos)
    }
}

/// A pod cgroup manager on a temp-dir cgroupfs, for tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub fn settings() -> ResourceSettings {
        ResourceSettings {
            cgroup_driver: nodelet_cgroups::CgroupDriver::Cgroupfs,
            cgroups_per_qos: true,
            cpu_cfs_quota: true,
            cpu_period_us: 100_000,
            enforce_pods: true,
            pod_pids_limit: Some(64),
            max_pods: 110,
            memory_qos: false,
            kube_reserved: String::new(),
            system_reserved: String::new(),
        }
    }

    /// A fake v1 cgroupfs: each controller a directory with its control files.
    pub fn fake_v1() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().expect("tempdir");
        let controllers = ["cpu", "cpuacct", "cpuset", "memory", "pids"];
        for c in controllers {
            std::fs::create_dir_all(dir.path().join(c)).expect("mkdir");
        }
        std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").expect("cpus");
        std::fs::write(dir.path().join("cpuset/cpuset.mems"), "0\n").expect("mems");
        let layout = Layout::v1_at(dir.path(), &controllers);
        (dir, layout)
    }

    /// Pod cgroups with the QoS hierarchy on a fake v1 cgroupfs (keep the dir).
    pub fn fake_pod_cgroups() -> (tempfile::TempDir, PodCgroups) {
        let (dir, layout) = fake_v1();
        let container = ContainerSettings::new(1 << 30, nodelet_cgroups::CgroupVersion::V1);
        let pc = PodCgroups::setup(
            layout,
            "/t",
            settings(),
            container,
            ResourceConfig::default(),
        )
        .expect("setup");
        (dir, pc)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{fake_v1, settings};
    use super::*;
    use nodelet_cgroups::CgroupVersion;

    fn pod(uid: &str, cpu: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "uid": uid},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .expect("pod"),
        )
    }

    fn read(dir: &tempfile::TempDir, rel: &str) -> String {
        std::fs::read_to_string(dir.path().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .trim()
            .to_owned()
    }

    #[test]
    fn pods_get_their_cgroup_and_move_the_burstable_shares() {
        let (dir, layout) = fake_v1();
        let kubepods = ResourceConfig {
            cpu_shares: Some(2048),
            ..Default::default()
        };
        let container = ContainerSettings::new(1 << 30, CgroupVersion::V1);
        let pc = PodCgroups::setup(layout, "/t", settings(), container, kubepods).expect("setup");
        assert_eq!(read(&dir, "cpu/t/kubepods/cpu.shares"), "2048");
        assert_eq!(read(&dir, "cpu/t/kubepods/besteffort/cpu.shares"), "2");
        assert_eq!(read(&dir, "cpu/t/kubepods/burstable/cpu.shares"), "2");

        let a = pod("a", "250m");
        pc.ensure_pod(&a).expect("pod a");
        assert_eq!(
            pc.pod_cgroup(&a).as_deref(),
            Some("/t/kubepods/burstable/poda")
        );
        assert_eq!(
            read(&dir, "cpu/t/kubepods/burstable/poda/cpu.shares"),
            "256"
        );
        assert_eq!(read(&dir, "pids/t/kubepods/burstable/poda/pids.max"), "64");
        assert_eq!(read(&dir, "cpu/t/kubepods/burstable/cpu.shares"), "256");
        pc.ensure_pod(&pod("b", "500m")).expect("pod b");
        assert_eq!(read(&dir, "cpu/t/kubepods/burstable/cpu.shares"), "768");

        let cgroups: Vec<String> = pc.pod_cgroup(&a).into_iter().collect();
        // (A fake tree's directories hold regular files, so rmdir leaves them; the
        // real-kernel removal is what the e2e tests check.)
        pc.remove_pod("a", &cgroups);
        assert_eq!(read(&dir, "cpu/t/kubepods/burstable/cpu.shares"), "512");
    }

    // The driver's forms of the names the agent hands out (no bus needed for names).
    #[test]
    fn names_follow_the_driver() {
        let (_dir, layout) = fake_v1();
        let container = ContainerSettings::new(1 << 30, CgroupVersion::V1);
        let mut settings = settings();
        settings.cgroup_driver = CgroupDriver::Systemd;
        let pc = PodCgroups {
            manager: CgroupManager::new(layout).with_driver(CgroupDriver::Systemd),
            cgroup_root: "/".to_owned(),
            settings,
            container,
            kubepods: ResourceConfig::default(),
            active: Mutex::new(BTreeMap::new()),
            qos_writes: Mutex::new(()),
        };
        let cg = pc.pod_cgroup(&pod("ab-cd", "100m")).expect("pod cgroup");
        assert_eq!(
            cg,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice"
        );
        assert_eq!(
            pc.container_cgroup(&cg, "c0ffee"),
            format!("{cg}/cri-containerd-c0ffee.scope")
        );
        assert_eq!(pc.kubepods_path(), "/kubepods.slice");
        assert_eq!(
            nodelet_cri::runtime::spec::cgroups_path(&cg, "c0ffee"),
            "kubepods-burstable-podab_cd.slice:cri-containerd:c0ffee"
        );
        // The manager takes the slice path back as a name.
        assert_eq!(pc.manager().path(&cg), cg);
    }

    #[test]
    fn container_values_become_runtime_values() {
        let (_dir, layout) = fake_v1();
        let container = ContainerSettings::new(1 << 30, CgroupVersion::V1);
        let pc = PodCgroups::setup(
            layout,
            "/",
            settings(),
            container,
            ResourceConfig::default(),
        )
        .expect("setup");
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "g", "uid": "g"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {
                "requests": {"cpu": "500m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "64Mi"}}}]}
        }))
        .expect("pod");
        let spec = p.spec.as_ref().expect("spec");
        let r = pc.container_resources(spec, &spec.containers[0]);
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.memory_limit, Some(67_108_864));
        assert_eq!(r.oom_score_adj, Some(-997));
    }

    #[test]
    fn without_cgroups_per_qos_pods_have_no_cgroup() {
        let (dir, layout) = fake_v1();
        let mut s = settings();
        s.cgroups_per_qos = false;
        let container = ContainerSettings::new(1 << 30, CgroupVersion::V1);
        let pc = PodCgroups::setup(layout, "/t", s, container, ResourceConfig::default())
            .expect("setup");
        let a = pod("a", "1");
        assert_eq!(pc.pod_cgroup(&a), None);
        pc.ensure_pod(&a).expect("no-op");
        assert!(!dir.path().join("cpu/t").exists());
    }
}
