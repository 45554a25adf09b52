//! The cgroup manager on this host's real cgroup v1 hierarchies: the QoS hierarchy and
//! a Guaranteed pod cgroup under `/nodelet-cgtest-<pid>` (a parent this test creates in
//! every hierarchy and removes at the end, even on failure), with the values read back
//! from the kernel. Fails, saying why, when not root or not on cgroup v1: it never
//! passes without running.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nodelet_cgroups::allocatable::{NodeCapacity, Reserved, kubepods_resources};
use nodelet_cgroups::manager::{CgroupError, CgroupManager, pod_cgroup_name};
use nodelet_cgroups::values::{QUOTA_PERIOD, ResourceConfig, pod_resources, qos_level_resources};
use nodelet_cgroups::{CgroupVersion, Layout, qos_class};

/// Removes the test's parent cgroup from every hierarchy when dropped.
struct CgroupGuard<'a> {
    mgr: &'a CgroupManager,
    root: String,
}

impl Drop for CgroupGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.mgr.destroy(&self.root) {
            eprintln!("cleanup of {} failed: {e}", self.root);
        }
    }
}

/// Kills and reaps the child (by its own handle) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn guaranteed() -> PodSpec {
    let limits: BTreeMap<String, Quantity> = [("cpu", "500m"), ("memory", "64Mi")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect();
    PodSpec {
        containers: vec![Container {
            name: "c".to_owned(),
            resources: Some(ResourceRequirements {
                limits: Some(limits),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn qos_hierarchy_and_guaranteed_pod_on_real_v1() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates cgroups in the host's v1 hierarchies"
    );
    let layout = Layout::detect().expect("cgroup layout");
    assert_eq!(
        layout.version(),
        CgroupVersion::V1,
        "this test checks cgroup v1 files; the host runs cgroup v2"
    );
    let mgr = CgroupManager::new(layout.clone());
    let root = format!("/nodelet-cgtest-{}", std::process::id());
    assert!(!mgr.exists(&root), "{root} exists already");
    let guard = CgroupGuard {
        mgr: &mgr,
        root: root.clone(),
    };

    let capacity = NodeCapacity::read(Path::new("/")).expect("capacity");
    let kubepods = kubepods_resources(
        &capacity,
        &Reserved::parse("cpu=100m,memory=100Mi").expect("reserved"),
        &Reserved::default(),
        true,
    );
    let spec = guaranteed();
    let qos = qos_level_resources(&[&spec], CgroupVersion::V1, false, &[]);
    mgr.ensure_qos_hierarchy(&root, &kubepods, &qos)
        .expect("qos hierarchy");
    let name = pod_cgroup_name(&root, qos_class(&spec), "0000-1111");
    assert_eq!(name, format!("{root}/kubepods/pod0000-1111"));
    mgr.create(&name, &pod_resources(&spec, true, QUOTA_PERIOD, false))
        .expect("pod cgroup");
    assert!(mgr.exists(&name));

    let dir = |c: &str, n: &str| layout.dir(c, n).expect("mounted");
    let kp = format!("{root}/kubepods");
    assert_eq!(
        read(&dir("cpu", &kp).join("cpu.shares")),
        kubepods.cpu_shares.expect("shares").to_string()
    );
    assert_eq!(
        read(&dir("cpu", &format!("{kp}/besteffort")).join("cpu.shares")),
        "2"
    );
    let page = 4096;
    let want_mem = kubepods.memory.expect("memory") / page * page;
    assert_eq!(
        read(&dir("memory", &kp).join("memory.limit_in_bytes")),
        want_mem.to_string()
    );
    assert_eq!(
        read(&dir("pids", &kp).join("pids.max")),
        kubepods.pids_limit.expect("pids").to_string()
    );

    let cpu = dir("cpu", &name);
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(&dir("memory", &name).join("memory.limit_in_bytes")),
        "67108864"
    );
    let cpuset = dir("cpuset", &name);
    assert_eq!(
        read(&cpuset.join("cpuset.cpus")),
        read(&dir("cpuset", "/").join("cpuset.cpus"))
    );
    assert!(!read(&cpuset.join("cpuset.mems")).is_empty());
    for c in ["devices", "freezer", "blkio", "name=systemd", "cpuacct"] {
        if let Some(d) = layout.dir(c, &name) {
            assert!(d.is_dir(), "{}", d.display());
        }
    }

    // A shorter period with a quota: libcontainer's order (period, quota) is accepted.
    let rc = ResourceConfig {
        cpu_quota: Some(10_000),
        cpu_period: Some(20_000),
        ..Default::default()
    };
    mgr.update(&name, &rc).expect("update period");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "20000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "10000");
    // libcontainer's EINVAL retry: under a parent limited to 0.5 CPU, a child at
    // 50000/100000 moving to 10000/20000 has its new period refused first (50000/20000
    // would exceed the parent), so the quota goes in and the period is written again.
    let parent = format!("{root}/period");
    let half = ResourceConfig {
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        ..Default::default()
    };
    mgr.create(&parent, &half).expect("limited parent");
    let child_name = format!("{parent}/child");
    mgr.create(&child_name, &half).expect("child");
    let rc = ResourceConfig {
        cpu_quota: Some(10_000),
        cpu_period: Some(20_000),
        ..Default::default()
    };
    let child = dir("cpu", &child_name);
    std::fs::write(child.join("cpu.cfs_period_us"), "20000")
        .expect_err("the kernel refuses this period before the quota changes");
    mgr.update(&child_name, &rc).expect("period after quota");
    assert_eq!(read(&child.join("cpu.cfs_period_us")), "20000");
    assert_eq!(read(&child.join("cpu.cfs_quota_us")), "10000");

    // Unlimited.
    let rc = ResourceConfig {
        cpu_quota: Some(-1),
        memory: Some(-1),
        pids_limit: Some(-1),
        ..Default::default()
    };
    mgr.update(&name, &rc).expect("update unlimited");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(read(&dir("pids", &name).join("pids.max")), "max");

    // A process in the pod cgroup: seen by pids(), and destroy is refused (EBUSY)
    // naming the directory until it has exited.
    assert!(mgr.pids(&name).is_empty());
    let child = ChildGuard(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = i32::try_from(child.0.id()).expect("pid");
    std::fs::write(dir("memory", &name).join("cgroup.procs"), pid.to_string())
        .expect("move the child");
    assert_eq!(mgr.pids(&root), vec![pid]);
    match mgr.destroy(&name) {
        Err(CgroupError::Remove { path, source }) => {
            assert_eq!(path, dir("memory", &name));
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{source}");
        }
        other => panic!("destroy of a busy cgroup: {other:?}"),
    }
    drop(child);

    mgr.destroy(&root).expect("destroy");
    for hierarchy in layout.hierarchy_roots() {
        let d = hierarchy.join(root.trim_start_matches('/'));
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!mgr.exists(&name));
    drop(guard);
}
